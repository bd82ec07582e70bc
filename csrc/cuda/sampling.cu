// CUDA registration of the fused constrained sampling (op in sampling_op.h, kernel in sampling.cuh) under the CPU
// kernel's schema.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/sampling_op.h"

namespace ck = chameleon_lite::cuda_kernels;

namespace {

std::tuple<at::Tensor, at::Tensor> sample_cuda(const at::Tensor& logits, const std::optional<at::Tensor>& uncond,
                                               const at::Tensor& temperature, const at::Tensor& top_k,
                                               const at::Tensor& top_p, const at::Tensor& min_p,
                                               const at::Tensor& cfg_scale, const at::Tensor& penalty,
                                               const std::optional<at::Tensor>& ranges,
                                               const std::optional<at::Tensor>& penalty_ids, int64_t seed, int64_t step) {
  TORCH_CHECK_VALUE(logits.is_cuda(), "sample: logits must be a CUDA tensor");
  const c10::cuda::CUDAGuard guard(logits.device());
  auto out = ck::sample_op(logits, uncond, temperature, top_k, top_p, min_p, cfg_scale, penalty, ranges, penalty_ids,
                           seed, step, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(chameleon_lite, CUDA, m) { m.impl("sample", &sample_cuda); }
