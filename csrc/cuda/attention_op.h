#pragma once
// Tensor-level launches of the attention kernels (attention.cuh), shared by the CUDA launcher (attention.cu, which
// checks the arguments and sets the device first) and the emulated build (emu/emu_ops.cpp), so the tests run the
// launch code that ships: allocate outputs and workspaces, dispatch on the dtype, call the run_* helper.
// Inputs: q, k, v, dout, out, lse contiguous; doc / span / lens int32 and contiguous; caches contiguous in D.
#include <ATen/ATen.h>

#include <tuple>

#include "cuda/attention.cuh"
#include "cuda/op_util.h"

namespace chameleon_lite::cuda_kernels {

inline std::tuple<at::Tensor, at::Tensor> attention_fwd_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                           const at::Tensor& doc, const at::Tensor& span, double scale,
                                                           cl_stream_t stream, bool tensor_cores) {
  const int B = q.size(0), L = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  auto out = at::empty_like(q);
  auto lse = at::empty({B, Hq, L}, q.options().dtype(at::kFloat));
  dispatch_float_types(q.scalar_type(), "attention_fwd", [&](auto tag, auto atag) {
    using T = decltype(tag);
    using A = decltype(atag);
    run_attention_fwd<T>(in_ptr<T, A>(q), in_ptr<T, A>(k), in_ptr<T, A>(v), doc.const_data_ptr<int32_t>(),
                         span.const_data_ptr<int32_t>(), out_ptr<T, A>(out), lse.data_ptr<float>(), B, L, Hq, Hkv, D,
                         static_cast<float>(scale), stream, tensor_cores && mma_supports(D));
  });
  return {out, lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_op(
    const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
    const at::Tensor& lse, const at::Tensor& doc, const at::Tensor& span, double scale, cl_stream_t stream,
    bool tensor_cores) {
  const int B = q.size(0), L = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  auto delta = at::empty({B, Hq, L}, q.options().dtype(at::kFloat));
  dispatch_float_types(q.scalar_type(), "attention_bwd", [&](auto tag, auto atag) {
    using T = decltype(tag);
    using A = decltype(atag);
    run_attention_bwd<T>(in_ptr<T, A>(dout), in_ptr<T, A>(q), in_ptr<T, A>(k), in_ptr<T, A>(v), in_ptr<T, A>(out),
                         lse.const_data_ptr<float>(), doc.const_data_ptr<int32_t>(), span.const_data_ptr<int32_t>(),
                         out_ptr<T, A>(dq), out_ptr<T, A>(dk), out_ptr<T, A>(dv), delta.data_ptr<float>(), B, L, Hq,
                         Hkv, D, static_cast<float>(scale), stream, tensor_cores && mma_supports(D));
  });
  return {dq, dk, dv};
}

// max_len: an upper bound of lens (it sizes the split-KV workspace).
inline at::Tensor attention_decode_op(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc,
                                      const at::Tensor& lens, double scale, int max_len, cl_stream_t stream) {
  const int B = q.size(0), Lq = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = kc.size(2);
  auto part = at::empty({B * Hq * decode_max_chunks(max_len) * Lq * (D + 2)}, q.options().dtype(at::kFloat));
  auto out = at::empty_like(q);
  dispatch_float_types(q.scalar_type(), "attention_decode", [&](auto tag, auto atag) {
    using T = decltype(tag);
    using A = decltype(atag);
    run_attention_decode<T>(in_ptr<T, A>(q), in_ptr<T, A>(kc), in_ptr<T, A>(vc), lens.const_data_ptr<int32_t>(),
                            part.data_ptr<float>(), out_ptr<T, A>(out), B, Lq, Hq, Hkv, D, kc.stride(0), kc.stride(1),
                            kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2), max_len, static_cast<float>(scale),
                            stream);
  });
  return out;
}

}  // namespace chameleon_lite::cuda_kernels
