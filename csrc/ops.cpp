// Operator schemas of the chameleon_lite library and the registration of its CPU kernels (declared in
// cpu/kernels.h; registered here so that only this file parses <torch/library.h>). The CUDA kernels register
// themselves with TORCH_LIBRARY_IMPL in csrc/cuda/.
#include <torch/library.h>

#include "common/py_module.h"
#include "cpu/kernels.h"

CHAMELEON_LITE_PY_MODULE(_C)

namespace {

// The CPU build an op's loops run on this machine (see cpu/kernels.h); "portable" for the ops with one build.
std::string kernel_variant(const std::string& op, std::optional<at::ScalarType> dtype) {
  namespace cpu = chameleon_lite::cpu;
  if (op == "attention" || op == "attention_decode")
    return cpu::attention_variant(op == "attention" && dtype == at::kBFloat16);
  if (op == "linear_bf16w") return cpu::linear_variant();
  if (op == "snake") return cpu::snake_variant();
  if (op == "sample") return chameleon_lite::sampling_cpu::sampling_variant();
  if (op == "rms_norm" || op == "rope") return "portable";
  TORCH_CHECK(false, "kernel_variant: unknown op '", op, "'");
}

}  // namespace

TORCH_LIBRARY(chameleon_lite, m) {
  // Modality-aware attention (ARCHITECTURE §5). q: [B, L, Hq, D]; k, v: [B, L, Hkv, D]; doc_ids, span_ids:
  // [B, L] int32. Forward -> (out like q, lse fp32 [B, Hq, L]; -inf on fully masked rows, whose out is 0).
  m.def("attention_fwd(Tensor q, Tensor k, Tensor v, Tensor doc_ids, Tensor span_ids, float scale) -> (Tensor, Tensor)");
  // Backward from the saved log-sum-exp -> (dq like q, dk like k, dv like v); GQA heads reduced into dk/dv.
  m.def(
      "attention_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor doc_ids, "
      "Tensor span_ids, float scale) -> (Tensor, Tensor, Tensor)");
  // Decode against a KV cache. q: [B, Lq, Hq, D] (the Lq newest positions, causal among themselves);
  // k_cache, v_cache: [B, S_max, Hkv, D]; cache_lens: [B] int32 valid length incl. the new positions -> out like q.
  m.def("attention_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor cache_lens, float scale) -> Tensor");
  // Fused constrained sampling (ARCHITECTURE §6), one decode step: -> (ids int64 [B], logprobs fp32 [B]).
  // Settings are [B] tensors or one broadcast value; see chameleon_lite/ops/sampling.py.
  m.def(
      "sample(Tensor logits, Tensor? uncond_logits, Tensor temperature, Tensor top_k, Tensor top_p, "
      "Tensor min_p, Tensor cfg_scale, Tensor repetition_penalty, Tensor? allowed_ranges, Tensor? penalty_ids, "
      "int seed, int step) -> (Tensor, Tensor)");
  // The Philox uniform sample() draws for each given row at (seed, step): float64, shaped like rows.
  m.def("sampling_uniforms(Tensor rows, int seed, int step) -> Tensor");
  // Raw Philox4x32-10 blocks (uint32 words held in int64) for known-answer tests.
  m.def("philox4x32(Tensor ctr, Tensor key) -> Tensor");
  // Snake activation of the audio codec: x [B, C, T], log_alpha [C] (any shape holding C values) ->
  // x + sin(a x)^2 / a with a = exp(log_alpha) per channel.
  m.def("snake(Tensor x, Tensor log_alpha) -> Tensor");
  // Its backward -> (grad x, grad log_alpha shaped like log_alpha).
  m.def("snake_bwd(Tensor grad, Tensor x, Tensor log_alpha) -> (Tensor, Tensor)");
  // Weight-only bf16 linear of decode steps: x float32 [..., K], weight bfloat16 [N, K] -> x @ weight^T float32
  // [..., N] (float32 accumulation).
  m.def("linear_bf16w(Tensor x, Tensor weight) -> Tensor");
  // Inference RMSNorm of float32 rows: x [..., D], weight [D] -> x / sqrt(mean(x^2) + eps) * weight.
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  // Training RMSNorm (CPU): x [..., D] float32 or bfloat16, weight [D] float32 -> (y in x's dtype, rstd [rows]
  // float32), and its backward -> (grad x in x's dtype, grad weight float32 [D]).
  m.def("rms_norm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)");
  m.def("rms_norm_bwd(Tensor grad, Tensor x, Tensor weight, Tensor rstd) -> (Tensor, Tensor)");
  // Rotary embedding: x [B, L, H, D] float32 or bfloat16, cos/sin [B, L, D/2] float32 -> x rotated in (first half,
  // second half) pairs (its backward: the same op with -sin).
  m.def("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor");
  // Which CPU build of an op's inner loops runs here for a dtype ("avx512", "avx2" or "portable"; attention's bf16
  // forward and backward products add "+avx512bf16"), for `chameleon-lite doctor`.
  m.def("kernel_variant(str op, ScalarType? dtype=None) -> str", &kernel_variant);
}

TORCH_LIBRARY_IMPL(chameleon_lite, CPU, m) {
  namespace cpu = chameleon_lite::cpu;
  namespace sampling = chameleon_lite::sampling_cpu;
  m.impl("attention_fwd", &cpu::attention_fwd_cpu);
  m.impl("attention_bwd", &cpu::attention_bwd_cpu);
  m.impl("attention_decode", &cpu::attention_decode_cpu);
  m.impl("linear_bf16w", &cpu::linear_bf16w_cpu);
  m.impl("rms_norm", &cpu::rms_norm_cpu);
  m.impl("rms_norm_fwd", &cpu::rms_norm_fwd_cpu);
  m.impl("rms_norm_bwd", &cpu::rms_norm_bwd_cpu);
  m.impl("rope", &cpu::rope_cpu);
  m.impl("sample", &sampling::sample_cpu);
  m.impl("sampling_uniforms", &sampling::sampling_uniforms_cpu);
  m.impl("philox4x32", &sampling::philox4x32_cpu);
  m.impl("snake", &cpu::snake_cpu);
  m.impl("snake_bwd", &cpu::snake_bwd_cpu);
}
