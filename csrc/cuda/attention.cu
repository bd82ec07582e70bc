// CUDA launchers of the modality-aware attention kernels (bodies in attention.cuh), registered under the same
// schemas as the CPU kernels. Checks here; the kernels assume valid input.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/attention.cuh"

namespace ck = chameleon_lite::cuda_kernels;

#define CHECK_DEVICE(x) TORCH_CHECK_VALUE((x).is_cuda(), #x " must be a CUDA tensor")
#define CHECK_SHAPE(x, ...) \
  TORCH_CHECK_VALUE((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ "), got ", (x).sizes())

namespace {

template <typename T, typename A>
const T* cptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr<A>());
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
  auto out = at::empty_like(q);
  auto lse = at::empty({B, Hq, L}, q.options().dtype(at::kFloat));
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (q.scalar_type() == at::kFloat) {
    ck::run_attention_fwd<float>(q.const_data_ptr<float>(), k.const_data_ptr<float>(), v.const_data_ptr<float>(),
                                 doc.const_data_ptr<int32_t>(), span.const_data_ptr<int32_t>(), out.data_ptr<float>(),
                                 lse.data_ptr<float>(), B, L, Hq, Hkv, D, static_cast<float>(scale), stream);
  } else {
    TORCH_CHECK_VALUE(q.scalar_type() == at::kBFloat16, "attention_fwd: dtype must be float32 or bfloat16");
    ck::run_attention_fwd<ck::bf16_t>(cptr<ck::bf16_t, at::BFloat16>(q), cptr<ck::bf16_t, at::BFloat16>(k),
                                      cptr<ck::bf16_t, at::BFloat16>(v), doc.const_data_ptr<int32_t>(),
                                      span.const_data_ptr<int32_t>(),
                                      reinterpret_cast<ck::bf16_t*>(out.data_ptr<at::BFloat16>()), lse.data_ptr<float>(), B,
                                      L, Hq, Hkv, D, static_cast<float>(scale), stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {out, lse};
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
  auto part = at::empty({B * Hq * ck::decode_max_chunks(max_len) * Lq * (D + 2)}, q.options().dtype(at::kFloat));
  auto out = at::empty_like(q);
  const auto stream = at::cuda::getCurrentCUDAStream();
  if (q.scalar_type() == at::kFloat) {
    ck::run_attention_decode<float>(q.const_data_ptr<float>(), kc.const_data_ptr<float>(), vc.const_data_ptr<float>(),
                                    lens.const_data_ptr<int32_t>(), part.data_ptr<float>(), out.data_ptr<float>(), B, Lq, Hq,
                                    Hkv, D, kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1),
                                    vc.stride(2), max_len, static_cast<float>(scale), stream);
  } else {
    TORCH_CHECK_VALUE(q.scalar_type() == at::kBFloat16, "attention_decode: dtype must be float32 or bfloat16");
    ck::run_attention_decode<ck::bf16_t>(
        cptr<ck::bf16_t, at::BFloat16>(q), cptr<ck::bf16_t, at::BFloat16>(kc), cptr<ck::bf16_t, at::BFloat16>(vc),
        lens.const_data_ptr<int32_t>(), part.data_ptr<float>(), reinterpret_cast<ck::bf16_t*>(out.data_ptr<at::BFloat16>()),
        B, Lq, Hq, Hkv, D, kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2), max_len,
        static_cast<float>(scale), stream);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(chameleon_lite, CUDA, m) {
  m.impl("attention_fwd", &attention_fwd_cuda);
  m.impl("attention_decode", &attention_decode_cuda);
}
