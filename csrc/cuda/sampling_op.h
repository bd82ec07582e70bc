#pragma once
// The `sample` op around the CUDA sampling kernel (sampling.cuh), shared by the CUDA launcher (sampling.cu) and the
// emulated build (emu/emu_ops.cpp), so the tests run the argument handling that ships too. Argument checks are the
// CPU op's (common/sampling_args.h): the per-row settings, ranges and penalty ids are small and read on the host for
// them; the per-row status comes back with the ids (a caller reads the ids on the host anyway). Rows are read
// through their stride (a [B, L, V] view's last position is used in place); the kernel's fp32 workspace is [B, V].
#include <ATen/ATen.h>

#include <optional>
#include <tuple>

#include "common/sampling_args.h"
#include "cuda/op_util.h"
#include "cuda/sampling.cuh"

namespace chameleon_lite::cuda_kernels {

inline std::tuple<at::Tensor, at::Tensor> sample_op(
    const at::Tensor& logits_in, const std::optional<at::Tensor>& uncond_in, const at::Tensor& temperature,
    const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& cfg_scale,
    const at::Tensor& penalty, const std::optional<at::Tensor>& ranges_in, const std::optional<at::Tensor>& penalty_ids_in,
    int64_t seed, int64_t step, cl_stream_t stream) {
  namespace sa = chameleon_lite::sampling_args;
  sa::check_logits(logits_in, uncond_in, seed, step);
  const int64_t batch = logits_in.size(0), vocab = logits_in.size(1);
  const sa::Settings st = sa::read_settings(batch, temperature, top_k, top_p, min_p, cfg_scale, penalty);
  const at::Tensor ranges_host = ranges_in.has_value() ? sa::check_ranges(*ranges_in, batch, vocab) : at::Tensor();
  const at::Tensor pen_host = penalty_ids_in.has_value() ? sa::check_penalty_ids(*penalty_ids_in, batch, vocab) : at::Tensor();
  const at::Tensor logits = logits_in.stride(1) == 1 ? logits_in : logits_in.contiguous();
  at::Tensor uncond;
  if (uncond_in.has_value()) uncond = uncond_in->stride(1) == 1 ? *uncond_in : uncond_in->contiguous();
  auto packed = at::empty({batch, kSettingFloats}, at::kFloat);
  float* pk = packed.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) {
    const float row[kSettingFloats] = {st.temperature[b], st.top_p[b], st.min_p[b], st.cfg_scale[b], st.penalty[b]};
    for (int j = 0; j < kSettingFloats; ++j) pk[b * kSettingFloats + j] = row[j];
  }
  const auto dev = logits.options();
  const at::Tensor settings = packed.to(logits.device());
  const at::Tensor top_k_t = at::tensor(st.top_k, at::kLong).to(logits.device());
  const at::Tensor ranges = ranges_host.defined() ? ranges_host.to(logits.device()) : at::Tensor();
  const at::Tensor pen = pen_host.defined() ? pen_host.to(logits.device()) : at::Tensor();
  auto ids = at::empty({batch}, dev.dtype(at::kLong));
  auto logprobs = at::empty({batch}, dev.dtype(at::kFloat));
  if (batch == 0) return {ids, logprobs};
  auto status = at::empty({batch}, dev.dtype(at::kInt));
  auto work = at::empty({batch, vocab}, dev.dtype(at::kFloat));
  const int R = ranges.defined() ? static_cast<int>(ranges.size(1)) : 0;
  const int P = pen.defined() ? static_cast<int>(pen.size(1)) : 0;
  const int64_t* rp = ranges.defined() ? ranges.const_data_ptr<int64_t>() : nullptr;
  const int64_t* pp = pen.defined() ? pen.const_data_ptr<int64_t>() : nullptr;
  const int64_t ld = logits.stride(0), ldu = uncond.defined() ? uncond.stride(0) : 0;
  const auto run = [&](auto tag, auto atag) {
    using T = decltype(tag);
    using A = decltype(atag);
    run_sample<T>(in_ptr<T, A>(logits), ld, uncond.defined() ? in_ptr<T, A>(uncond) : nullptr, ldu, batch, vocab,
                  settings.const_data_ptr<float>(), top_k_t.const_data_ptr<int64_t>(), rp, R, pp, P,
                  static_cast<uint64_t>(seed), static_cast<uint64_t>(step), work.data_ptr<float>(),
                  ids.data_ptr<int64_t>(), logprobs.data_ptr<float>(), status.data_ptr<int>(), stream);
  };
  dispatch_float_types(logits.scalar_type(), "sample", run);
  const at::Tensor status_host = status.cpu();
  sa::raise_row_status(status_host.const_data_ptr<int>(), batch);
  return {ids, logprobs};
}

}  // namespace chameleon_lite::cuda_kernels
