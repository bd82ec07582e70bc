#pragma once
// A small emulation of the CUDA execution model on CPU threads, so the kernel bodies in csrc/cuda/*.cuh compile
// with g++ and run here, block by block. A test tool only (tests/cuda_emu/), never a runtime path.
//
// What it provides: threadIdx / blockIdx / blockDim / gridDim; __global__ / __device__ / __host__ /
// __forceinline__; static __shared__ arrays (one block runs at a time, so a function-local static is the block's
// shared memory) and dynamic shared memory through CL_DYNAMIC_SHARED; __syncthreads() (a barrier over the block's
// threads); __syncwarp(); warp shuffles (__shfl_sync, __shfl_xor_sync, __shfl_down_sync, __shfl_up_sync, with
// width) and votes (__ballot_sync, __any_sync, __all_sync) over 32-lane warps; atomicAdd / atomicMax / atomicMin /
// atomicCAS / atomicExch; the float intrinsics the kernels use (__expf, __logf, __fdividef, rsqrtf); the tensor-core
// MMA m16n8k16 (cl_emu::mma_m16n8k16, bf16 or fp16 operands) with the hardware's per-lane fragment layout.
// Every thread of a block is a std::thread; blocks run one after another (launch is synchronous).
// Shuffles and votes require every lane of the warp to take part (full-warp masks), as the kernels do.
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#define CL_CUDA_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

struct alignas(16) float4 {
  float x, y, z, w;
};

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cl_emu {

constexpr int kWarp = 32;

struct Warp {
  explicit Warp(int lanes) : lanes(lanes), bar(lanes) {}
  int lanes;
  std::barrier<> bar;
  uint64_t slot[kWarp] = {};
  uint32_t mma_a[kWarp][4] = {};  // fragments published by mma_m16n8k16
  uint32_t mma_b[kWarp][2] = {};
};

struct Block {
  explicit Block(int threads, size_t dyn_bytes) : bar(threads), dynamic(dyn_bytes) {
    for (int w = 0; w < (threads + kWarp - 1) / kWarp; ++w)
      warps.emplace_back(std::make_unique<Warp>(std::min(kWarp, threads - w * kWarp)));
  }
  std::barrier<> bar;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<unsigned char> dynamic;
};

inline thread_local Block* current_block = nullptr;
inline thread_local int linear_tid = 0;

}  // namespace cl_emu

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

inline void __syncthreads() { cl_emu::current_block->bar.arrive_and_wait(); }

namespace cl_emu {
inline Warp& my_warp() { return *current_block->warps[linear_tid / kWarp]; }
inline int lane() { return linear_tid % kWarp; }

// Every lane publishes a value, all read one, then all pass a second barrier before the slots are reused.
template <typename T, typename Pick>
T exchange(T value, Pick pick) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 64 bits");
  Warp& w = my_warp();
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  w.slot[lane()] = bits;
  w.bar.arrive_and_wait();
  const int src = pick(lane(), w.lanes);
  T out = value;
  if (src >= 0 && src < w.lanes) std::memcpy(&out, &w.slot[src], sizeof(T));
  w.bar.arrive_and_wait();
  return out;
}
}  // namespace cl_emu

inline void __syncwarp(unsigned = 0xffffffffu) { cl_emu::my_warp().bar.arrive_and_wait(); }

// width groups lanes into segments of `width`; a source outside the caller's segment returns the caller's value.
template <typename T>
T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
  return cl_emu::exchange(v, [&](int l, int) { return (l / width) * width + (src_lane % width); });
}
template <typename T>
T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
  return cl_emu::exchange(v, [&](int l, int) {
    const int s = l ^ mask;
    return s / width == l / width ? s : l;
  });
}
template <typename T>
T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
  return cl_emu::exchange(v, [&](int l, int) {
    const int s = l + static_cast<int>(delta);
    return s / width == l / width ? s : l;
  });
}
template <typename T>
T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
  return cl_emu::exchange(v, [&](int l, int) {
    const int s = l - static_cast<int>(delta);
    return s >= 0 && s / width == l / width ? s : l;
  });
}

inline unsigned __ballot_sync(unsigned, int pred) {
  cl_emu::Warp& w = cl_emu::my_warp();
  w.slot[cl_emu::lane()] = pred ? 1u : 0u;
  w.bar.arrive_and_wait();
  unsigned out = 0;
  for (int l = 0; l < w.lanes; ++l) out |= static_cast<unsigned>(w.slot[l] != 0) << l;
  w.bar.arrive_and_wait();
  return out;
}
inline int __any_sync(unsigned m, int pred) { return __ballot_sync(m, pred) != 0; }
inline int __all_sync(unsigned m, int pred) {
  const int lanes = cl_emu::my_warp().lanes;
  const unsigned full = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u);
  return __ballot_sync(m, pred) == full;
}

template <typename T>
T atomicAdd(T* addr, T v) {
  return std::atomic_ref<T>(*addr).fetch_add(v);
}
template <typename T>
T atomicExch(T* addr, T v) {
  return std::atomic_ref<T>(*addr).exchange(v);
}
template <typename T>
T atomicCAS(T* addr, T expected, T desired) {
  std::atomic_ref<T>(*addr).compare_exchange_strong(expected, desired);
  return expected;
}
template <typename T>
T atomicMax(T* addr, T v) {
  std::atomic_ref<T> a(*addr);
  T old = a.load();
  while (old < v && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}
template <typename T>
T atomicMin(T* addr, T v) {
  std::atomic_ref<T> a(*addr);
  T old = a.load();
  while (v < old && !a.compare_exchange_weak(old, v)) {
  }
  return old;
}

namespace cl_emu {
// Tensor-core MMA, emulated with the PTX fragment layout of mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.f32, so
// kernels load and use fragments exactly as on the GPU. Lane l, group g = l / 4, t = l % 4; each 32-bit register holds
// two 16-bit values, the lower column in the low half; `to_float` converts one (bf16 or fp16 bits).
//   A 16x16 (row-major):  a[0] = A[g][2t, 2t+1]  a[1] = A[g+8][2t, 2t+1]  a[2] = A[g][2t+8, 2t+9]  a[3] = A[g+8][2t+8, 2t+9]
//   B 16x8 (k x n):       b[0] = B[2t, 2t+1][g]  b[1] = B[2t+8, 2t+9][g]
//   C, D 16x8 (fp32):     c[0], c[1] = C[g][2t, 2t+1]  c[2], c[3] = C[g+8][2t, 2t+1]
// Every lane of the warp must call it (as on the GPU). Products are summed in fp32 in k order.
template <typename Cvt>
void mma_m16n8k16(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4], Cvt to_float) {
  Warp& w = my_warp();
  const int me = lane();
  for (int r = 0; r < 4; ++r) w.mma_a[me][r] = a[r];
  w.mma_b[me][0] = b[0];
  w.mma_b[me][1] = b[1];
  w.bar.arrive_and_wait();
  const int g = me / 4, t = me % 4;
  auto a_at = [&](int row, int k) {
    const uint32_t reg = w.mma_a[(row % 8) * 4 + (k % 8) / 2][(row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)];
    return to_float(k % 2 ? reg >> 16 : reg & 0xFFFFu);
  };
  auto b_at = [&](int k, int col) {
    const uint32_t reg = w.mma_b[col * 4 + (k % 8) / 2][k >= 8 ? 1 : 0];
    return to_float(k % 2 ? reg >> 16 : reg & 0xFFFFu);
  };
  float out[4];
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i % 2);
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += a_at(row, k) * b_at(k, col);
    out[i] = acc;
  }
  w.bar.arrive_and_wait();
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}
}  // namespace cl_emu

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
using std::max;
using std::min;

// Dynamic shared memory of the running block (the launch's shared_bytes).
#define CL_DYNAMIC_SHARED(type, name) type* name = reinterpret_cast<type*>(cl_emu::current_block->dynamic.data())

namespace cl_emu {

// Run kernel<<<grid, block, shared_bytes>>>(args...) on CPU threads, block by block; rethrows the first exception.
template <typename Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t shared_bytes, Kernel kernel, Args... args) {
  const int threads = static_cast<int>(block.x * block.y * block.z);
  if (threads < 1 || threads > 1024) throw std::invalid_argument("emulated launch: 1..1024 threads per block");
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block blk(threads, shared_bytes);
        std::vector<std::thread> pool;
        std::exception_ptr error;
        std::atomic<bool> failed{false};
        pool.reserve(threads);
        for (int t = 0; t < threads; ++t) {
          pool.emplace_back([&, t] {
            current_block = &blk;
            linear_tid = t;
            threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
            blockIdx = dim3(bx, by, bz);
            blockDim = block;
            gridDim = grid;
            try {
              kernel(args...);
            } catch (...) {
              if (!failed.exchange(true)) error = std::current_exception();
            }
          });
        }
        for (auto& th : pool) th.join();
        if (error) std::rethrow_exception(error);
      }
}

}  // namespace cl_emu
