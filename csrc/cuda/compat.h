#pragma once
// What the kernel bodies (csrc/cuda/*.cuh) need from their platform, for nvcc and for the CPU emulator alike:
// the bf16 / fp16 storage types and their conversions, the tensor-core MMA (mma16816<T>), and CL_LAUNCH, which is a
// real <<<...>>> launch under nvcc and a synchronous block-by-block run on CPU threads under the emulator
// (csrc/cuda/emu/cuda_emu.h).
#include <stdint.h>

#include <type_traits>

// Full unrolling of a loop with a compile-time trip count (register arrays stay in registers).
#if defined(__CUDACC__)
#define CL_UNROLL _Pragma("unroll")
#else
#define CL_UNROLL _Pragma("GCC unroll 16")
#endif

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
template <>
__device__ __forceinline__ half_t from_float<half_t>(float x) { return __float2half(x); }
__device__ __forceinline__ uint16_t bits16(bf16_t x) { return __bfloat16_as_ushort(x); }
__device__ __forceinline__ uint16_t bits16(half_t x) { return __half_as_ushort(x); }
// Two floats rounded to T (nearest even) in one register, `lo` in the low half (an MMA operand pair).
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return static_cast<uint32_t>(bits16(from_float<T>(lo))) | (static_cast<uint32_t>(bits16(from_float<T>(hi))) << 16);
}
// D = A B + C on tensor cores, 16-bit inputs (bf16 or fp16) and fp32 accumulation, m16n8k16 (fragment layout:
// cuda/emu/cuda_emu.h). The launchers choose tensor-core kernels only on sm_80 and newer.
template <typename T>
__device__ __forceinline__ void mma16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, bf16_t>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%10, %11, %12, %13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
#else
  __trap();
#endif
}
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
inline uint16_t bits16(bf16_t x) { return x.x; }
inline uint16_t bits16(half_t x) { return x.x; }
template <typename T>
inline uint32_t pack2(float lo, float hi) {
  return static_cast<uint32_t>(bits16(T(lo))) | (static_cast<uint32_t>(bits16(T(hi))) << 16);
}
// The tensor-core MMA, emulated with the hardware's fragment layout (cuda/emu/cuda_emu.h).
template <typename T>
inline void mma16816(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4]) {
  cl_emu::mma_m16n8k16(d, a, b, c, [](uint32_t bits) { return static_cast<float>(T(static_cast<uint16_t>(bits), T::from_bits())); });
}
}  // namespace chameleon_lite::cuda_kernels
#define CL_LAUNCH(kernel, grid, block, shared, stream, ...) cl_emu::launch(grid, block, shared, kernel, __VA_ARGS__)
using cl_stream_t = int;
#endif
