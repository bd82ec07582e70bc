// Fused constrained sampling, CPU: one call per decode step, rows in parallel, one fp32 row buffer per
// thread. Semantics and the threshold search live in common/sampling.h (shared with the CUDA kernel);
// the per-row body is in cpu/sampling_row.h, compiled here for any CPU, in sampling_avx2.cpp for AVX2/FMA and
// in sampling_avx512.cpp for AVX-512, the widest the CPU has chosen at run time.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/ATen.h>: see cpu/kernels.h
#define CL_SAMPLING_ISA portable
#include "cpu/sampling_row.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/Parallel.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <vector>

#include "common/philox.h"
#include "common/sampling_args.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"

namespace chameleon_lite {
namespace sampling_cpu {

RowResult sample_row_default(const RowJob& job, float* buf, Scratch& scratch) {
  return portable::sample_row(job, buf, scratch);
}

namespace {

using RowFn = RowResult (*)(const RowJob&, float*, Scratch&);

// The widest build this CPU runs; CHAMELEON_LITE_SAMPLING_ISA=portable or =avx2 caps it (the tests compare them).
RowFn row_kernel() {
  switch (cpu::widest_build("CHAMELEON_LITE_SAMPLING_ISA")) {
    case 2: return &sample_row_avx512;
    case 1: return &sample_row_avx2;
    default: return &sample_row_default;
  }
}

// Rows are read through their own stride, so a view such as logits[:, -1, :] of [B, L, V] is used in place
// instead of being copied into a [B, V] temporary; only rows that are not unit-stride get copied.
at::Tensor unit_stride_rows(const at::Tensor& t) { return t.stride(1) == 1 ? t : t.contiguous(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> sample_cpu(const at::Tensor& logits_in, const std::optional<at::Tensor>& uncond_in,
                                              const at::Tensor& temperature_t, const at::Tensor& top_k_t,
                                              const at::Tensor& top_p_t, const at::Tensor& min_p_t,
                                              const at::Tensor& cfg_scale_t, const at::Tensor& penalty_t,
                                              const std::optional<at::Tensor>& ranges_in,
                                              const std::optional<at::Tensor>& penalty_ids_in, int64_t seed,
                                              int64_t step) {
  namespace sa = sampling_args;
  sa::check_logits(logits_in, uncond_in, seed, step);
  const at::ScalarType dt = logits_in.scalar_type();
  const int64_t batch = logits_in.size(0), vocab = logits_in.size(1);
  const at::Tensor logits = unit_stride_rows(logits_in);
  const at::Tensor uncond = uncond_in.has_value() ? unit_stride_rows(*uncond_in) : at::Tensor();
  const sa::Settings st = sa::read_settings(batch, temperature_t, top_k_t, top_p_t, min_p_t, cfg_scale_t, penalty_t);
  const at::Tensor ranges = ranges_in.has_value() ? sa::check_ranges(*ranges_in, batch, vocab) : at::Tensor();
  const int64_t num_ranges = ranges.defined() ? ranges.size(1) : 0;
  const at::Tensor penalty_ids = penalty_ids_in.has_value() ? sa::check_penalty_ids(*penalty_ids_in, batch, vocab) : at::Tensor();
  const int64_t num_penalty = penalty_ids.defined() ? penalty_ids.size(1) : 0;

  auto ids = at::empty({batch}, logits.options().dtype(at::kLong));
  auto logprobs = at::empty({batch}, logits.options().dtype(at::kFloat));
  if (batch == 0) return {ids, logprobs};
  int64_t* ids_p = ids.data_ptr<int64_t>();
  float* lp_p = logprobs.data_ptr<float>();
  std::vector<int> status(batch, kRowOk);

  const LogitDtype ldt = dt == at::kFloat ? LogitDtype::kFloat : dt == at::kBFloat16 ? LogitDtype::kBFloat16 : LogitDtype::kHalf;
  const int64_t esize = logits.element_size();
  const char* base = static_cast<const char*>(logits.data_ptr());
  const char* ubase = uncond.defined() ? static_cast<const char*>(uncond.data_ptr()) : nullptr;
  const int64_t* rbase = ranges.defined() ? ranges.data_ptr<int64_t>() : nullptr;
  const int64_t* pbase = penalty_ids.defined() ? penalty_ids.data_ptr<int64_t>() : nullptr;
  const RowFn row_fn = row_kernel();

  at::parallel_for(0, batch, 1, [&](int64_t b0, int64_t b1) {
    // The one row buffer of this thread, kept across calls so decode steps do not page-fault it in again.
    thread_local std::vector<float> buf;
    thread_local std::unique_ptr<Scratch> scratch = std::make_unique<Scratch>();
    if (static_cast<int64_t>(buf.size()) < vocab) buf.resize(vocab);
    for (int64_t b = b0; b < b1; ++b) {
      RowJob job;
      job.logits = base + b * logits.stride(0) * esize;
      job.uncond = ubase != nullptr ? ubase + b * uncond.stride(0) * esize : nullptr;
      job.dtype = ldt;
      job.vocab = vocab;
      job.ranges = rbase != nullptr ? rbase + b * num_ranges * 2 : nullptr;
      job.num_ranges = num_ranges;
      job.penalty_ids = pbase != nullptr ? pbase + b * num_penalty : nullptr;
      job.num_penalty = num_penalty;
      job.settings = sampling::RowSettings{st.temperature[b], st.top_p[b], st.min_p[b], st.cfg_scale[b], st.penalty[b],
                                           st.top_k[b]};
      job.uniform = philox::sampling_uniform(static_cast<uint64_t>(seed), static_cast<uint64_t>(step),
                                             static_cast<uint64_t>(b));
      const RowResult r = row_fn(job, buf.data(), *scratch);
      ids_p[b] = r.id;
      lp_p[b] = r.logprob;
      status[b] = r.status;
    }
  });
  sa::raise_row_status(status.data(), batch);
  return {ids, logprobs};
}

at::Tensor sampling_uniforms_cpu(const at::Tensor& rows_in, int64_t seed, int64_t step) {
  TORCH_CHECK_VALUE(rows_in.scalar_type() == at::kLong, "sampling_uniforms: rows must be int64, got ",
                    rows_in.scalar_type());
  TORCH_CHECK_VALUE(seed >= 0 && step >= 0, "sampling_uniforms: seed and step must be >= 0");
  const at::Tensor rows = rows_in.contiguous();
  auto out = at::empty(rows.sizes(), rows.options().dtype(at::kDouble));
  const int64_t* r = rows.data_ptr<int64_t>();
  double* o = out.data_ptr<double>();
  for (int64_t i = 0; i < rows.numel(); ++i) {
    TORCH_CHECK_VALUE(r[i] >= 0, "sampling_uniforms: row indices must be >= 0, got ", r[i]);
    o[i] = philox::sampling_uniform(static_cast<uint64_t>(seed), static_cast<uint64_t>(step),
                                    static_cast<uint64_t>(r[i]));
  }
  return out;
}

// Raw Philox4x32-10 blocks for known-answer tests: ctr [N, 4], key [N, 2] (int64 holding uint32) -> [N, 4].
at::Tensor philox4x32_cpu(const at::Tensor& ctr_in, const at::Tensor& key_in) {
  TORCH_CHECK_VALUE(ctr_in.dim() == 2 && ctr_in.size(1) == 4 && key_in.dim() == 2 && key_in.size(1) == 2 &&
                        ctr_in.size(0) == key_in.size(0) && ctr_in.scalar_type() == at::kLong &&
                        key_in.scalar_type() == at::kLong,
                    "philox4x32: expects int64 ctr [N, 4] and key [N, 2]");
  const at::Tensor ctr = ctr_in.contiguous(), key = key_in.contiguous();
  auto out = at::empty_like(ctr);
  const int64_t *c = ctr.data_ptr<int64_t>(), *k = key.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  for (int64_t i = 0; i < ctr.size(0); ++i) {
    philox::U32x4 x;
    for (int j = 0; j < 4; ++j) x.v[j] = static_cast<uint32_t>(c[4 * i + j]);
    const philox::U32x4 y = philox::philox4x32_10(x, static_cast<uint32_t>(k[2 * i]), static_cast<uint32_t>(k[2 * i + 1]));
    for (int j = 0; j < 4; ++j) o[4 * i + j] = static_cast<int64_t>(y.v[j]);
  }
  return out;
}

const char* sampling_variant() {
  const RowFn fn = row_kernel();
  return fn == &sample_row_avx512 ? "avx512" : fn == &sample_row_avx2 ? "avx2" : "portable";
}

}  // namespace sampling_cpu
}  // namespace chameleon_lite
