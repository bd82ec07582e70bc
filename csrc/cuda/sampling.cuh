#pragma once
// CUDA kernel of the fused constrained sampling (ARCHITECTURE §6), one block per row. Compiled by nvcc
// (csrc/cuda/sampling.cu) and by g++ against the CPU emulator (tests/cuda_emu/), so the tested code is the shipped
// code. Semantics are those of csrc/common/sampling.h, which the CPU kernel implements; the per-logit transforms,
// the key order of the floats, the Philox draw and the log-probability come from that header and common/philox.h.
//
// Per row (block), with the row's fp32 workspace `work` ([V], allocated by the launcher):
//   1. z = CFG combine of the allowed ids (-inf elsewhere), then the repetition penalty over penalty_ids;
//   2. block max of z (NaN / +inf / nothing allowed -> a status code the launcher turns into an error);
//      temperature 0: the first id holding the max (block min-reduction over ids), logprob 0;
//   3. e = exp((z - max) / T) in place; support and min-p statistics (count, fp64 mass) in the same pass;
//   4. top-k and top-p thresholds by radix selection over the float keys of e: four rounds of 8-bit digits,
//      each a shared-memory histogram of counts and fp64 masses among the elements that match the prefix chosen
//      so far, walked from the largest digit down — exact, no sort, no data-dependent number of passes;
//   5. tau = max(t_k, t_p, min_p), W = mass of {e >= tau}; the draw u * W is located in id order by a block
//      exclusive scan over per-thread chunk masses, then one thread walks its chunk.
// The result equals the CPU kernel's except where fp64 masses summed in a different order fall on the other
// side of a bracket boundary (a probability of order 1e-7 relative mass per draw).
#include <stdint.h>

#include "common/philox.h"
#include "common/sampling.h"
#include "cuda/compat.h"

namespace chameleon_lite::cuda_kernels {

namespace smp = chameleon_lite::sampling;

constexpr int kSampleThreads = 256;
constexpr int kSampleWarps = kSampleThreads / 32;
constexpr int kRadixBins = 256;
constexpr float kNegInf = -INFINITY;

// Per-row settings as the launcher packs them: temperature, top_p, min_p, cfg_scale, penalty.
constexpr int kSettingFloats = 5;

// ---------------------------------------------------------------------------------------------- block reductions
// Reductions over the block through a warp shuffle tree and one shared slot per warp. Every thread gets the
// result. `scratch` holds kSampleWarps values of the reduced type.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, T* scratch, Op op) {
  for (int off = 16; off > 0; off >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, off));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < kSampleWarps; ++w) r = op(r, scratch[w]);
  return r;
}

struct SumOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MinOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return b < a ? b : a; }
};
struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const { return b > a ? b : a; }
};

// Exclusive prefix sum over the block in thread order (fp64): a warp scan, then a scan of the warp totals.
__device__ __forceinline__ double block_exclusive_scan(double v, double* scratch, double* total) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  double inc = v;
  for (int off = 1; off < 32; off <<= 1) {
    const double up = __shfl_up_sync(0xffffffffu, inc, off);
    if (lane >= off) inc += up;
  }
  __syncthreads();
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  double before = 0.0, all = 0.0;
  for (int w = 0; w < kSampleWarps; ++w) {
    if (w < warp) before += scratch[w];
    all += scratch[w];
  }
  *total = all;
  return before + inc - v;
}

// ---------------------------------------------------------------------------------------------- row passes
// Every pass over the row's fp32 workspace reads it as float4 (16-byte loads, consecutive threads on consecutive
// vectors) when the row is 16-byte aligned, then a scalar tail. f(i, x) sees each element the thread owns.
template <typename F>
__device__ __forceinline__ void scan_row(const float* z, int64_t V, F f) {
  const int64_t nv = reinterpret_cast<uintptr_t>(z) % 16 == 0 ? V / 4 : 0;
  const float4* z4 = reinterpret_cast<const float4*>(z);
  for (int64_t j = threadIdx.x; j < nv; j += kSampleThreads) {
    const float4 x = z4[j];
    f(4 * j, x.x);
    f(4 * j + 1, x.y);
    f(4 * j + 2, x.z);
    f(4 * j + 3, x.w);
  }
  for (int64_t i = 4 * nv + threadIdx.x; i < V; i += kSampleThreads) f(i, z[i]);
}

// The same ownership, replacing each element by f(i, x).
template <typename F>
__device__ __forceinline__ void map_row(float* z, int64_t V, F f) {
  const int64_t nv = reinterpret_cast<uintptr_t>(z) % 16 == 0 ? V / 4 : 0;
  float4* z4 = reinterpret_cast<float4*>(z);
  for (int64_t j = threadIdx.x; j < nv; j += kSampleThreads) {
    float4 x = z4[j];
    x.x = f(4 * j, x.x);
    x.y = f(4 * j + 1, x.y);
    x.z = f(4 * j + 2, x.z);
    x.w = f(4 * j + 3, x.w);
    z4[j] = x;
  }
  for (int64_t i = 4 * nv + threadIdx.x; i < V; i += kSampleThreads) z[i] = f(i, z[i]);
}

// ---------------------------------------------------------------------------------------------- radix selection
// The point {e >= value_of(key)} for the largest key meeting `target` (by count or by fp64 mass), searched over
// the keys of e[0, V). Keys of e in [0, 1] are below 2^30, so four 8-bit digits cover them.
struct RadixShared {
  int count[kRadixBins];
  double mass[kRadixBins];
  uint32_t prefix;
  int64_t above_count;
  double above_mass;
};

__device__ inline smp::Point radix_select(const float* e, int64_t V, smp::By by, double target, RadixShared& sh) {
  uint32_t prefix = 0;  // the digits chosen so far, in place
  int64_t above_count = 0;
  double above_mass = 0.0;
  for (int round = 0; round < 4; ++round) {
    const int shift = 24 - 8 * round;
    const uint32_t high_mask = round == 0 ? 0u : ~((1u << (shift + 8)) - 1u);
    for (int j = threadIdx.x; j < kRadixBins; j += kSampleThreads) {
      sh.count[j] = 0;
      sh.mass[j] = 0.0;
    }
    __syncthreads();
    scan_row(e, V, [&](int64_t, float x) {
      const uint32_t key = smp::key_of(x);
      if (x > 0.0f && (key & high_mask) == prefix) {
        const int d = static_cast<int>((key >> shift) & 0xFFu);
        atomicAdd(&sh.count[d], 1);
        atomicAdd(&sh.mass[d], static_cast<double>(x));
      }
    });
    __syncthreads();
    if (threadIdx.x == 0) {
      int d = kRadixBins - 1;
      int64_t c = above_count;
      double m = above_mass;
      for (; d > 0; --d) {
        const smp::Point p{0u, c + sh.count[d], m + sh.mass[d]};
        if (smp::meets(p, by, target)) break;
        c += sh.count[d];
        m += sh.mass[d];
      }
      sh.prefix = prefix | (static_cast<uint32_t>(d) << shift);
      sh.above_count = c;
      sh.above_mass = m;
    }
    __syncthreads();
    prefix = sh.prefix;
    above_count = sh.above_count;
    above_mass = sh.above_mass;
  }
  // The last round's bucket is one key: its elements all equal value_of(prefix).
  const int d = static_cast<int>(prefix & 0xFFu);
  const smp::Point p{prefix, above_count + sh.count[d], above_mass + sh.mass[d]};
  __syncthreads();  // the histogram is reused by the next selection
  return p;
}

// ---------------------------------------------------------------------------------------------- the kernel
// grid (B), block kSampleThreads. logits / uncond rows at a stride of ld elements; settings [B, kSettingFloats];
// top_k [B]; ranges [B, R, 2] or nullptr; penalty_ids [B, P] (-1 = padding) or nullptr; work [B, V] fp32.
template <typename T>
__global__ void __launch_bounds__(kSampleThreads) sample_kernel(const T* logits, int64_t ld, const T* uncond,
                                                                int64_t ld_uncond, int64_t V, const float* settings,
                                                                const int64_t* top_k_arr, const int64_t* ranges, int R,
                                                                const int64_t* penalty_ids, int P, uint64_t seed,
                                                                uint64_t step, float* work, int64_t* ids, float* logprobs,
                                                                int* status) {
  __shared__ float fred[kSampleWarps];
  __shared__ int ired[kSampleWarps];
  __shared__ int64_t lred[kSampleWarps];
  __shared__ double dred[kSampleWarps];
  __shared__ RadixShared radix;

  const int64_t b = blockIdx.x;
  const int tid = threadIdx.x;
  const T* cond = logits + b * ld;
  const T* unc = uncond != nullptr ? uncond + b * ld_uncond : nullptr;
  float* z = work + b * V;
  const float temperature = settings[b * kSettingFloats + 0];
  const float top_p = settings[b * kSettingFloats + 1];
  const float min_p = settings[b * kSettingFloats + 2];
  const float scale = settings[b * kSettingFloats + 3];
  const float penalty = settings[b * kSettingFloats + 4];
  const int64_t top_k = top_k_arr[b];

  // 1. z over the allowed ids.
  if (ranges != nullptr) {
    map_row(z, V, [](int64_t, float) { return kNegInf; });
    __syncthreads();
    for (int r = 0; r < R; ++r) {
      const int64_t lo = ranges[(b * R + r) * 2], hi = ranges[(b * R + r) * 2 + 1];
      for (int64_t i = lo + tid; i < hi; i += kSampleThreads) {
        const float c = to_float(cond[i]);
        z[i] = unc != nullptr ? smp::cfg_combine(c, to_float(unc[i]), scale) : c;
      }
    }
  } else {
    for (int64_t i = tid; i < V; i += kSampleThreads) {
      const float c = to_float(cond[i]);
      z[i] = unc != nullptr ? smp::cfg_combine(c, to_float(unc[i]), scale) : c;
    }
  }
  __syncthreads();
  if (penalty_ids != nullptr) {
    for (int k = tid; k < P; k += kSampleThreads) {
      const int64_t id = penalty_ids[b * P + k];
      if (id < 0 || z[id] == kNegInf) continue;  // padding, or not allowed
      // Recomputed from the source, so an id listed twice is penalised once (equal writes).
      const float c = to_float(cond[id]);
      const float zc = unc != nullptr ? smp::cfg_combine(c, to_float(unc[id]), scale) : c;
      z[id] = smp::apply_penalty(zc, penalty);
    }
    __syncthreads();
  }

  // 2. max, with NaN and +inf flagged.
  float m = kNegInf;
  int nan_seen = 0;
  scan_row(z, V, [&](int64_t, float x) {
    if (x != x) nan_seen = 1;
    else if (x > m) m = x;
  });
  const float zmax = block_reduce(m, fred, MaxOp());
  const int any_nan = block_reduce(nan_seen, ired, MaxOp());
  if (any_nan || zmax == INFINITY || zmax == kNegInf) {
    if (tid == 0) {
      status[b] = any_nan ? smp::kRowNaN : zmax == INFINITY ? smp::kRowPosInf : smp::kRowEmpty;
      ids[b] = 0;
      logprobs[b] = 0.0f;
    }
    return;
  }
  if (temperature == 0.0f) {
    int64_t first = V;
    scan_row(z, V, [&](int64_t i, float x) {
      if (x == zmax && i < first) first = i;
    });
    const int64_t id = block_reduce(first, lred, MinOp());
    if (tid == 0) {
      ids[b] = id;
      logprobs[b] = 0.0f;
      status[b] = smp::kRowOk;
    }
    return;
  }

  // 3. e in place, with the support and min-p statistics.
  const float inv_t = 1.0f / temperature;
  const bool use_min_p = smp::min_p_active(min_p);
  int64_t sup_c = 0, mp_c = 0;
  double sup_m = 0.0, mp_m = 0.0;
  map_row(z, V, [&](int64_t, float x) {
    const float e = expf((x - zmax) * inv_t);
    if (e > 0.0f) {
      sup_c += 1;
      sup_m += e;
    }
    if (use_min_p && e >= min_p) {
      mp_c += 1;
      mp_m += e;
    }
    return e;
  });
  smp::Point tau{smp::kKeyPositive, block_reduce(sup_c, lred, SumOp()), block_reduce(sup_m, dred, SumOp())};
  const smp::Point at_min_p{smp::key_of(min_p), block_reduce(mp_c, lred, SumOp()), block_reduce(mp_m, dred, SumOp())};
  __syncthreads();  // e is complete before the selections read it

  // 4. thresholds.
  if (smp::top_k_active(top_k, tau.count)) tau = radix_select(z, V, smp::By::kCount, static_cast<double>(top_k), radix);
  if (smp::top_p_active(top_p)) {
    const smp::Point p = radix_select(z, V, smp::By::kMass, static_cast<double>(top_p) * tau.mass, radix);
    if (p.key > tau.key) tau = p;
  }
  if (use_min_p && at_min_p.key > tau.key) tau = at_min_p;

  // 5. the draw, in id order: per-thread contiguous chunks, an exclusive scan of their survivor masses, one walk.
  const float tau_v = smp::value_of(tau.key);
  const double target = philox::sampling_uniform(seed, step, static_cast<uint64_t>(b)) * tau.mass;
  const int64_t chunk = (V + kSampleThreads - 1) / kSampleThreads;
  const int64_t c0 = min(V, tid * chunk), c1 = min(V, c0 + chunk);
  double own = 0.0;
  int64_t last_own = -1;
  for (int64_t i = c0; i < c1; ++i) {
    const float x = z[i];
    if (x >= tau_v) {
      own += x;
      last_own = i;
    }
  }
  double total = 0.0;
  const double before = block_exclusive_scan(own, dred, &total);
  int64_t pick = V;  // V = not this thread
  if (last_own >= 0 && before <= target && target < before + own) {
    double cum = before;
    pick = last_own;  // fp64 rounding between the two summations: this chunk's last survivor
    for (int64_t i = c0; i < c1; ++i) {
      const float x = z[i];
      if (x >= tau_v) {
        cum += x;
        if (cum > target) {
          pick = i;
          break;
        }
      }
    }
  }
  int64_t id = block_reduce(pick, lred, MinOp());
  if (id == V) id = block_reduce(last_own, lred, MaxOp());  // u * W at or past the total: the last survivor
  if (tid == 0) {
    ids[b] = id;
    logprobs[b] = smp::chosen_logprob(z[id], tau.mass);
    status[b] = smp::kRowOk;
  }
}

template <typename T>
void run_sample(const T* logits, int64_t ld, const T* uncond, int64_t ld_uncond, int64_t B, int64_t V,
                const float* settings, const int64_t* top_k, const int64_t* ranges, int R, const int64_t* penalty_ids,
                int P, uint64_t seed, uint64_t step, float* work, int64_t* ids, float* logprobs, int* status,
                cl_stream_t stream) {
  if (B == 0) return;
  CL_LAUNCH(sample_kernel<T>, dim3(static_cast<unsigned>(B)), dim3(kSampleThreads), 0, stream, logits, ld, uncond,
            ld_uncond, V, settings, top_k, ranges, R, penalty_ids, P, seed, step, work, ids, logprobs, status);
}

}  // namespace chameleon_lite::cuda_kernels
