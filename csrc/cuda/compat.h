#pragma once
// What the kernel bodies (csrc/cuda/*.cuh) need from their platform, for nvcc and for the CPU emulator alike:
// the bf16 / fp16 storage types and their conversions, and CL_LAUNCH, which is a real <<<...>>> launch under nvcc and a
// synchronous block-by-block run on CPU threads under the emulator (csrc/cuda/emu/cuda_emu.h).
#include <stdint.h>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
namespace chameleon_lite::cuda_kernels {
using bf16_t = __nv_bfloat16;
using half_t = __half;
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(bf16_t x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(half_t x) { return __half2float(x); }
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ bf16_t from_float<bf16_t>(float x) { return __float2bfloat16(x); }
}  // namespace chameleon_lite::cuda_kernels
#define CL_LAUNCH(kernel, grid, block, shared, stream, ...) kernel<<<grid, block, shared, stream>>>(__VA_ARGS__)
using cl_stream_t = cudaStream_t;
#else
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "cuda/emu/cuda_emu.h"
namespace chameleon_lite::cuda_kernels {
using bf16_t = c10::BFloat16;
using half_t = c10::Half;
inline float to_float(float x) { return x; }
inline float to_float(bf16_t x) { return static_cast<float>(x); }
inline float to_float(half_t x) { return static_cast<float>(x); }
template <typename T>
inline T from_float(float x) { return static_cast<T>(x); }
}  // namespace chameleon_lite::cuda_kernels
#define CL_LAUNCH(kernel, grid, block, shared, stream, ...) cl_emu::launch(grid, block, shared, kernel, __VA_ARGS__)
using cl_stream_t = int;
#endif
