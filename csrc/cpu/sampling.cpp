// Fused constrained sampling, CPU: one call per decode step, rows in parallel, one fp32 row buffer per
// thread. Semantics and the threshold search live in common/sampling.h (shared with the CUDA kernel);
// the per-row body is in cpu/sampling_row.h, compiled here for any CPU and in sampling_avx512.cpp for
// AVX-512, chosen at run time.
#define CL_SAMPLING_ISA portable
#include "cpu/sampling_row.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <vector>

#include "common/philox.h"

namespace chameleon_lite {
namespace sampling_cpu {

RowResult sample_row_default(const RowJob& job, float* buf, Scratch& scratch) {
  return portable::sample_row(job, buf, scratch);
}

namespace {

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
#else
  return false;
#endif
}

// CHAMELEON_LITE_SAMPLING_ISA=portable forces the portable build (tests compare the two).
bool use_avx512() {
  const char* isa = std::getenv("CHAMELEON_LITE_SAMPLING_ISA");
  if (isa != nullptr && std::strcmp(isa, "portable") == 0) return false;
  return cpu_has_avx512();
}

// A per-row setting given as [B] or as one broadcast value, read as fp32 (or int64 for top_k).
template <typename T>
std::vector<T> setting(const at::Tensor& t, int64_t batch, const char* name) {
  TORCH_CHECK_VALUE(t.dim() <= 1 && (t.numel() == batch || t.numel() == 1), "sample: ", name,
                    " must be a scalar or a [B] tensor with B = ", batch, ", got shape ", t.sizes());
  const at::ScalarType want = std::is_same_v<T, int64_t> ? at::kLong : at::kFloat;
  if (std::is_same_v<T, int64_t>) {
    TORCH_CHECK_VALUE(!t.is_floating_point() && t.scalar_type() != at::kBool, "sample: ", name,
                      " must be an integer tensor, got ", t.scalar_type());
  } else {
    TORCH_CHECK_VALUE(t.is_floating_point(), "sample: ", name, " must be a floating-point tensor, got ",
                      t.scalar_type());
  }
  const bool ready = t.device().is_cpu() && t.scalar_type() == want && t.is_contiguous();
  const at::Tensor c = ready ? t : t.to(at::kCPU, want).contiguous();
  const T* p = c.data_ptr<T>();
  std::vector<T> out(batch);
  for (int64_t b = 0; b < batch; ++b) out[b] = p[c.numel() == 1 ? 0 : b];
  return out;
}

// Rows are read through their own stride, so a view such as logits[:, -1, :] of [B, L, V] is used in place
// instead of being copied into a [B, V] temporary; only rows that are not unit-stride get copied.
at::Tensor unit_stride_rows(const at::Tensor& t) { return t.stride(1) == 1 ? t : t.contiguous(); }

void check_settings(const std::vector<float>& temperature, const std::vector<int64_t>& top_k,
                    const std::vector<float>& top_p, const std::vector<float>& min_p,
                    const std::vector<float>& cfg_scale, const std::vector<float>& penalty) {
  for (size_t b = 0; b < temperature.size(); ++b) {
    TORCH_CHECK_VALUE(std::isfinite(temperature[b]) && temperature[b] >= 0.0f, "sample: temperature[", b,
                      "] = ", temperature[b], " must be finite and >= 0 (0 = greedy)");
    TORCH_CHECK_VALUE(top_k[b] >= 0, "sample: top_k[", b, "] = ", top_k[b], " must be >= 0 (0 = off)");
    TORCH_CHECK_VALUE(top_p[b] > 0.0f && top_p[b] <= 1.0f, "sample: top_p[", b, "] = ", top_p[b],
                      " must be in (0, 1] (1 = off)");
    TORCH_CHECK_VALUE(min_p[b] >= 0.0f && min_p[b] <= 1.0f, "sample: min_p[", b, "] = ", min_p[b],
                      " must be in [0, 1] (0 = off)");
    TORCH_CHECK_VALUE(std::isfinite(cfg_scale[b]), "sample: cfg_scale[", b, "] = ", cfg_scale[b],
                      " must be finite");
    TORCH_CHECK_VALUE(std::isfinite(penalty[b]) && penalty[b] > 0.0f, "sample: repetition_penalty[", b,
                      "] = ", penalty[b], " must be finite and > 0 (1 = off)");
  }
}

std::tuple<at::Tensor, at::Tensor> sample_cpu(const at::Tensor& logits_in, const std::optional<at::Tensor>& uncond_in,
                                              const at::Tensor& temperature_t, const at::Tensor& top_k_t,
                                              const at::Tensor& top_p_t, const at::Tensor& min_p_t,
                                              const at::Tensor& cfg_scale_t, const at::Tensor& penalty_t,
                                              const std::optional<at::Tensor>& ranges_in,
                                              const std::optional<at::Tensor>& penalty_ids_in, int64_t seed,
                                              int64_t step) {
  TORCH_CHECK_VALUE(logits_in.dim() == 2 && logits_in.size(1) > 0, "sample: logits must be [B, V] with V > 0, got ",
                    logits_in.sizes());
  const at::ScalarType dt = logits_in.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
                    "sample: logits must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(seed >= 0 && step >= 0, "sample: seed and step must be >= 0, got seed=", seed, " step=", step);
  const int64_t batch = logits_in.size(0), vocab = logits_in.size(1);
  TORCH_CHECK_VALUE(vocab <= std::numeric_limits<int32_t>::max(), "sample: V = ", vocab, " exceeds 2^31 - 1");
  const at::Tensor logits = unit_stride_rows(logits_in);
  at::Tensor uncond;
  if (uncond_in.has_value()) {
    TORCH_CHECK_VALUE(uncond_in->sizes() == logits_in.sizes() && uncond_in->scalar_type() == dt,
                      "sample: uncond_logits must match logits (", logits_in.sizes(), ", ", dt, "), got ",
                      uncond_in->sizes(), ", ", uncond_in->scalar_type());
    uncond = unit_stride_rows(*uncond_in);
  }
  const auto temperature = setting<float>(temperature_t, batch, "temperature");
  const auto top_k = setting<int64_t>(top_k_t, batch, "top_k");
  const auto top_p = setting<float>(top_p_t, batch, "top_p");
  const auto min_p = setting<float>(min_p_t, batch, "min_p");
  const auto cfg_scale = setting<float>(cfg_scale_t, batch, "cfg_scale");
  const auto penalty = setting<float>(penalty_t, batch, "repetition_penalty");
  check_settings(temperature, top_k, top_p, min_p, cfg_scale, penalty);

  at::Tensor ranges;
  int64_t num_ranges = 0;
  if (ranges_in.has_value()) {
    TORCH_CHECK_VALUE(ranges_in->dim() == 3 && ranges_in->size(0) == batch && ranges_in->size(2) == 2 &&
                          ranges_in->size(1) > 0 && ranges_in->scalar_type() == at::kLong,
                      "sample: allowed_ranges must be int64 [B, R, 2] with B = ", batch, " and R >= 1, got ",
                      ranges_in->scalar_type(), " ", ranges_in->sizes());
    ranges = ranges_in->contiguous();
    num_ranges = ranges.size(1);
    const int64_t* r = ranges.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      bool any = false;
      for (int64_t k = 0; k < num_ranges; ++k) {
        const int64_t lo = r[(b * num_ranges + k) * 2], hi = r[(b * num_ranges + k) * 2 + 1];
        TORCH_CHECK_VALUE(0 <= lo && lo <= hi && hi <= vocab, "sample: allowed_ranges[", b, ", ", k, "] = [", lo,
                          ", ", hi, ") is not a half-open range inside [0, ", vocab, ")");
        any = any || hi > lo;
      }
      TORCH_CHECK_VALUE(any, "sample: row ", b, " has no allowed id (every allowed_ranges slot is empty)");
    }
  }
  at::Tensor penalty_ids;
  int64_t num_penalty = 0;
  if (penalty_ids_in.has_value()) {
    TORCH_CHECK_VALUE(penalty_ids_in->dim() == 2 && penalty_ids_in->size(0) == batch &&
                          penalty_ids_in->scalar_type() == at::kLong,
                      "sample: penalty_ids must be int64 [B, P] with B = ", batch, ", got ",
                      penalty_ids_in->scalar_type(), " ", penalty_ids_in->sizes());
    penalty_ids = penalty_ids_in->contiguous();
    num_penalty = penalty_ids.size(1);
    const int64_t* p = penalty_ids.data_ptr<int64_t>();
    for (int64_t i = 0; i < batch * num_penalty; ++i)
      TORCH_CHECK_VALUE(p[i] == -1 || (0 <= p[i] && p[i] < vocab), "sample: penalty_ids[", i / num_penalty, ", ",
                        i % num_penalty, "] = ", p[i], " is neither -1 (padding) nor an id in [0, ", vocab, ")");
  }

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
  const auto row_fn = use_avx512() ? &sample_row_avx512 : &sample_row_default;

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
      job.settings = sampling::RowSettings{temperature[b], top_p[b], min_p[b], cfg_scale[b], penalty[b], top_k[b]};
      job.uniform = philox::sampling_uniform(static_cast<uint64_t>(seed), static_cast<uint64_t>(step),
                                             static_cast<uint64_t>(b));
      const RowResult r = row_fn(job, buf.data(), *scratch);
      ids_p[b] = r.id;
      lp_p[b] = r.logprob;
      status[b] = r.status;
    }
  });
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK_VALUE(status[b] != kRowNaN, "sample: row ", b, " has a NaN logit among its allowed ids");
    TORCH_CHECK_VALUE(status[b] != kRowPosInf, "sample: row ", b, " has a +inf logit among its allowed ids");
    TORCH_CHECK_VALUE(status[b] != kRowEmpty, "sample: row ", b,
                      " has no allowed id with a finite logit (every candidate is -inf)");
  }
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

}  // namespace

TORCH_LIBRARY_IMPL(chameleon_lite, CPU, m) {
  m.impl("sample", &sample_cpu);
  m.impl("sampling_uniforms", &sampling_uniforms_cpu);
  m.impl("philox4x32", &philox4x32_cpu);
}

}  // namespace sampling_cpu
}  // namespace chameleon_lite
