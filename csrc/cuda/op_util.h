#pragma once
// What the tensor-level ops around the CUDA kernels share (attention_op.h, sampling_op.h), for the CUDA build and the
// emulated build alike: typed data pointers of ATen tensors and the float32 / bfloat16 / float16 dispatch.
#include <ATen/ATen.h>

#include "cuda/compat.h"

namespace chameleon_lite::cuda_kernels {

// The data of a tensor of ATen type A as the kernels' type T (same layout: float, bf16 or fp16).
template <typename T, typename A>
const T* in_ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr<A>());
}
template <typename T, typename A>
T* out_ptr(at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr<A>());
}

// Calls run(kernel type tag, ATen type tag) for float32, bfloat16 or float16; any other dtype is an error naming op.
template <typename Run>
void dispatch_float_types(at::ScalarType dt, const char* op, const Run& run) {
  if (dt == at::kFloat) {
    run(float(), float());
  } else if (dt == at::kBFloat16) {
    run(bf16_t(), at::BFloat16());
  } else {
    TORCH_CHECK_VALUE(dt == at::kHalf, op, ": dtype must be float32, bfloat16 or float16, got ", dt);
    run(half_t(), at::Half());
  }
}

}  // namespace chameleon_lite::cuda_kernels
