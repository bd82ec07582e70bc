// CUDA launchers of the modality-aware attention kernels (bodies in attention.cuh), registered under the same
// schemas as the CPU kernels. Checks here; the kernels assume valid input.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/attention_op.h"

namespace ck = chameleon_lite::cuda_kernels;

#define CHECK_DEVICE(x) TORCH_CHECK_VALUE((x).is_cuda(), #x " must be a CUDA tensor")
#define CHECK_SHAPE(x, ...) \
  TORCH_CHECK_VALUE((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ "), got ", (x).sizes())

namespace {

// Tensor cores for 16-bit inputs on sm_80 and newer, head dims a multiple of 16.
bool use_tensor_cores(int64_t D) {
  return ck::mma_supports(static_cast<int>(D)) && at::cuda::getCurrentDeviceProperties()->major >= 8;
}

std::tuple<at::Tensor, at::Tensor> attention_fwd_cuda(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                      const at::Tensor& doc_, const at::Tensor& span_, double scale) {
  for (const auto* t : {&q_, &k_, &v_, &doc_, &span_}) CHECK_DEVICE(*t);
  TORCH_CHECK_VALUE(q_.dim() == 4 && k_.dim() == 4, "attention_fwd: q, k, v must be [B, L, H, D]");
  const int64_t B = q_.size(0), L = q_.size(1), Hq = q_.size(2), D = q_.size(3), Hkv = k_.size(2);
  CHECK_SHAPE(k_, B, L, Hkv, D);
  CHECK_SHAPE(v_, B, L, Hkv, D);
  CHECK_SHAPE(doc_, B, L);
  CHECK_SHAPE(span_, B, L);
  TORCH_CHECK_VALUE(Hkv > 0 && Hq % Hkv == 0, "attention_fwd: Hq=", Hq, " must be a multiple of Hkv=", Hkv);
  TORCH_CHECK_VALUE(D <= ck::kMaxD, "attention_fwd: head dim ", D, " > ", ck::kMaxD);
  TORCH_CHECK_VALUE(q_.scalar_type() == k_.scalar_type() && q_.scalar_type() == v_.scalar_type(),
                    "attention_fwd: q, k, v must share a dtype");
  TORCH_CHECK_VALUE(doc_.scalar_type() == at::kInt && span_.scalar_type() == at::kInt,
                    "attention_fwd: doc_ids and span_ids must be int32");
  const c10::cuda::CUDAGuard guard(q_.device());
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto doc = doc_.contiguous(), span = span_.contiguous();
  auto result = ck::attention_fwd_op(q, k, v, doc, span, scale, at::cuda::getCurrentCUDAStream(), use_tensor_cores(D));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return result;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cuda(const at::Tensor& dout_, const at::Tensor& q_,
                                                                  const at::Tensor& k_, const at::Tensor& v_,
                                                                  const at::Tensor& out_, const at::Tensor& lse_,
                                                                  const at::Tensor& doc_, const at::Tensor& span_,
                                                                  double scale) {
  for (const auto* t : {&dout_, &q_, &k_, &v_, &out_, &lse_, &doc_, &span_}) CHECK_DEVICE(*t);
  TORCH_CHECK_VALUE(q_.dim() == 4 && k_.dim() == 4, "attention_bwd: q, k, v must be [B, L, H, D]");
  const int64_t B = q_.size(0), L = q_.size(1), Hq = q_.size(2), D = q_.size(3), Hkv = k_.size(2);
  CHECK_SHAPE(k_, B, L, Hkv, D);
  CHECK_SHAPE(v_, B, L, Hkv, D);
  CHECK_SHAPE(dout_, B, L, Hq, D);
  CHECK_SHAPE(out_, B, L, Hq, D);
  CHECK_SHAPE(lse_, B, Hq, L);
  CHECK_SHAPE(doc_, B, L);
  CHECK_SHAPE(span_, B, L);
  TORCH_CHECK_VALUE(Hkv > 0 && Hq % Hkv == 0, "attention_bwd: Hq=", Hq, " must be a multiple of Hkv=", Hkv);
  TORCH_CHECK_VALUE(D <= ck::kMaxD, "attention_bwd: head dim ", D, " > ", ck::kMaxD);
  const auto dt = q_.scalar_type();
  TORCH_CHECK_VALUE(k_.scalar_type() == dt && v_.scalar_type() == dt && dout_.scalar_type() == dt && out_.scalar_type() == dt,
                    "attention_bwd: dout, q, k, v and out must share a dtype");
  TORCH_CHECK_VALUE(lse_.scalar_type() == at::kFloat, "attention_bwd: lse must be float32");
  TORCH_CHECK_VALUE(doc_.scalar_type() == at::kInt && span_.scalar_type() == at::kInt,
                    "attention_bwd: doc_ids and span_ids must be int32");
  const c10::cuda::CUDAGuard guard(q_.device());
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous(), dout = dout_.contiguous(),
             out = out_.contiguous(), lse = lse_.contiguous(), doc = doc_.contiguous(), span = span_.contiguous();
  auto grads = ck::attention_bwd_op(dout, q, k, v, out, lse, doc, span, scale, at::cuda::getCurrentCUDAStream(),
                                    use_tensor_cores(D));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return grads;
}

at::Tensor attention_decode_cuda(const at::Tensor& q_, const at::Tensor& kc, const at::Tensor& vc,
                                 const at::Tensor& lens_, double scale) {
  for (const auto* t : {&q_, &kc, &vc, &lens_}) CHECK_DEVICE(*t);
  TORCH_CHECK_VALUE(q_.dim() == 4 && kc.dim() == 4 && kc.sizes() == vc.sizes(),
                    "attention_decode: q [B, Lq, Hq, D] and caches [B, S, Hkv, D] expected");
  const int64_t B = q_.size(0), Lq = q_.size(1), Hq = q_.size(2), D = q_.size(3), Hkv = kc.size(2);
  TORCH_CHECK_VALUE(kc.size(0) == B && kc.size(3) == D, "attention_decode: cache must be [", B, ", S, Hkv, ", D, "]");
  CHECK_SHAPE(lens_, B);
  TORCH_CHECK_VALUE(lens_.scalar_type() == at::kInt, "attention_decode: cache_lens must be int32");
  TORCH_CHECK_VALUE(Hkv > 0 && Hq % Hkv == 0, "attention_decode: Hq must be a multiple of Hkv");
  TORCH_CHECK_VALUE(D <= ck::kMaxD && Lq <= ck::kMaxDecodeQ, "attention_decode: head dim <= ", ck::kMaxD,
                    " and at most ", ck::kMaxDecodeQ, " new queries");
  TORCH_CHECK_VALUE(kc.stride(3) == 1 && vc.stride(3) == 1, "attention_decode: caches must be contiguous in D");
  TORCH_CHECK_VALUE(q_.scalar_type() == kc.scalar_type() && q_.scalar_type() == vc.scalar_type(),
                    "attention_decode: q and caches must share a dtype");
  const c10::cuda::CUDAGuard guard(q_.device());
  const auto q = q_.contiguous();
  const auto lens = lens_.contiguous();
  // The split count is sized for the whole cache so no length has to be read back to the host.
  const int max_len = static_cast<int>(kc.size(1));
  auto out = ck::attention_decode_op(q, kc, vc, lens, scale, max_len, at::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(chameleon_lite, CUDA, m) {
  m.impl("attention_fwd", &attention_fwd_cuda);
  m.impl("attention_bwd", &attention_bwd_cuda);
  m.impl("attention_decode", &attention_decode_cuda);
}
