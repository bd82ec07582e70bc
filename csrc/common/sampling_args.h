#pragma once
// Host-side argument checks of the `sample` op, shared by the CPU kernel (cpu/sampling.cpp) and the CUDA launcher
// (cuda/sampling.cu) so both refuse the same inputs with the same messages. Host C++ only (ATen); the small
// per-row tensors are read on the host (a device copy for CUDA inputs).
#include <ATen/core/Tensor.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include "common/sampling.h"

namespace chameleon_lite {
namespace sampling_args {

using sampling::kRowEmpty;
using sampling::kRowNaN;
using sampling::kRowPosInf;

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

struct Settings {
  std::vector<float> temperature, top_p, min_p, cfg_scale, penalty;
  std::vector<int64_t> top_k;
};

inline Settings read_settings(int64_t batch, const at::Tensor& temperature_t, const at::Tensor& top_k_t,
                              const at::Tensor& top_p_t, const at::Tensor& min_p_t, const at::Tensor& cfg_scale_t,
                              const at::Tensor& penalty_t) {
  Settings s;
  s.temperature = setting<float>(temperature_t, batch, "temperature");
  s.top_k = setting<int64_t>(top_k_t, batch, "top_k");
  s.top_p = setting<float>(top_p_t, batch, "top_p");
  s.min_p = setting<float>(min_p_t, batch, "min_p");
  s.cfg_scale = setting<float>(cfg_scale_t, batch, "cfg_scale");
  s.penalty = setting<float>(penalty_t, batch, "repetition_penalty");
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK_VALUE(std::isfinite(s.temperature[b]) && s.temperature[b] >= 0.0f, "sample: temperature[", b,
                      "] = ", s.temperature[b], " must be finite and >= 0 (0 = greedy)");
    TORCH_CHECK_VALUE(s.top_k[b] >= 0, "sample: top_k[", b, "] = ", s.top_k[b], " must be >= 0 (0 = off)");
    TORCH_CHECK_VALUE(s.top_p[b] > 0.0f && s.top_p[b] <= 1.0f, "sample: top_p[", b, "] = ", s.top_p[b],
                      " must be in (0, 1] (1 = off)");
    TORCH_CHECK_VALUE(s.min_p[b] >= 0.0f && s.min_p[b] <= 1.0f, "sample: min_p[", b, "] = ", s.min_p[b],
                      " must be in [0, 1] (0 = off)");
    TORCH_CHECK_VALUE(std::isfinite(s.cfg_scale[b]), "sample: cfg_scale[", b, "] = ", s.cfg_scale[b],
                      " must be finite");
    TORCH_CHECK_VALUE(std::isfinite(s.penalty[b]) && s.penalty[b] > 0.0f, "sample: repetition_penalty[", b,
                      "] = ", s.penalty[b], " must be finite and > 0 (1 = off)");
  }
  return s;
}

// logits [B, V] float32/bfloat16/float16, uncond_logits like it; seed and step non-negative.
inline void check_logits(const at::Tensor& logits, const std::optional<at::Tensor>& uncond, int64_t seed, int64_t step) {
  TORCH_CHECK_VALUE(logits.dim() == 2 && logits.size(1) > 0, "sample: logits must be [B, V] with V > 0, got ",
                    logits.sizes());
  const at::ScalarType dt = logits.scalar_type();
  TORCH_CHECK_VALUE(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
                    "sample: logits must be float32, bfloat16 or float16, got ", dt);
  TORCH_CHECK_VALUE(seed >= 0 && step >= 0, "sample: seed and step must be >= 0, got seed=", seed, " step=", step);
  TORCH_CHECK_VALUE(logits.size(1) <= std::numeric_limits<int32_t>::max(), "sample: V = ", logits.size(1),
                    " exceeds 2^31 - 1");
  if (uncond.has_value()) {
    TORCH_CHECK_VALUE(uncond->sizes() == logits.sizes() && uncond->scalar_type() == dt,
                      "sample: uncond_logits must match logits (", logits.sizes(), ", ", dt, "), got ", uncond->sizes(),
                      ", ", uncond->scalar_type());
    TORCH_CHECK_VALUE(uncond->device() == logits.device(), "sample: uncond_logits must be on ", logits.device(),
                      ", got ", uncond->device());
  }
}

// allowed_ranges: int64 [B, R, 2] of half-open ranges inside [0, V), at least one non-empty per row.
// Returns the contiguous host copy.
inline at::Tensor check_ranges(const at::Tensor& ranges_in, int64_t batch, int64_t vocab) {
  TORCH_CHECK_VALUE(ranges_in.dim() == 3 && ranges_in.size(0) == batch && ranges_in.size(2) == 2 &&
                        ranges_in.size(1) > 0 && ranges_in.scalar_type() == at::kLong,
                    "sample: allowed_ranges must be int64 [B, R, 2] with B = ", batch, " and R >= 1, got ",
                    ranges_in.scalar_type(), " ", ranges_in.sizes());
  const at::Tensor ranges = ranges_in.to(at::kCPU).contiguous();
  const int64_t num_ranges = ranges.size(1);
  const int64_t* r = ranges.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    bool any = false;
    for (int64_t k = 0; k < num_ranges; ++k) {
      const int64_t lo = r[(b * num_ranges + k) * 2], hi = r[(b * num_ranges + k) * 2 + 1];
      TORCH_CHECK_VALUE(0 <= lo && lo <= hi && hi <= vocab, "sample: allowed_ranges[", b, ", ", k, "] = [", lo, ", ",
                        hi, ") is not a half-open range inside [0, ", vocab, ")");
      any = any || hi > lo;
    }
    TORCH_CHECK_VALUE(any, "sample: row ", b, " has no allowed id (every allowed_ranges slot is empty)");
  }
  return ranges;
}

// penalty_ids: int64 [B, P], each -1 (padding) or an id in [0, V). Returns the contiguous host copy.
inline at::Tensor check_penalty_ids(const at::Tensor& ids_in, int64_t batch, int64_t vocab) {
  TORCH_CHECK_VALUE(ids_in.dim() == 2 && ids_in.size(0) == batch && ids_in.scalar_type() == at::kLong,
                    "sample: penalty_ids must be int64 [B, P] with B = ", batch, ", got ", ids_in.scalar_type(), " ",
                    ids_in.sizes());
  const at::Tensor ids = ids_in.to(at::kCPU).contiguous();
  const int64_t num = ids.size(1);
  const int64_t* p = ids.data_ptr<int64_t>();
  for (int64_t i = 0; i < batch * num; ++i)
    TORCH_CHECK_VALUE(p[i] == -1 || (0 <= p[i] && p[i] < vocab), "sample: penalty_ids[", i / num, ", ", i % num,
                      "] = ", p[i], " is neither -1 (padding) nor an id in [0, ", vocab, ")");
  return ids;
}

// Turns a kernel's per-row status codes into the op's errors.
inline void raise_row_status(const int* status, int64_t batch) {
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK_VALUE(status[b] != kRowNaN, "sample: row ", b, " has a NaN logit among its allowed ids");
    TORCH_CHECK_VALUE(status[b] != kRowPosInf, "sample: row ", b, " has a +inf logit among its allowed ids");
    TORCH_CHECK_VALUE(status[b] != kRowEmpty, "sample: row ", b,
                      " has no allowed id with a finite logit (every candidate is -inf)");
  }
}

}  // namespace sampling_args
}  // namespace chameleon_lite
