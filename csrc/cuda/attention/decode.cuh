#pragma once
// KV-cache decode of the modality-aware attention: one or a few new queries per row against a cache with per-row
// lengths, split-KV (FlashDecoding): pass 1 scores chunks of kDecodeChunk cached keys in parallel, pass 2 merges the
// chunks with the shared softmax merge, in chunk order (deterministic). Queries read the cache causally (decode
// takes no doc or span ids).
#include "cuda/attention/traits.cuh"

namespace chameleon_lite::cuda_kernels {

constexpr int kDecodeChunk = 256;  // keys per split
constexpr int kMaxDecodeQ = 16;    // new queries per row in one decode call

// Decode, pass 1. grid (max chunks per row, Hq, B), block kThreads: chunk c of row b holds cache positions
// [c * kDecodeChunk, min(len, (c + 1) * kDecodeChunk)). Query t (of Lq) sits at position len - Lq + t and reads keys
// at or before it. Writes, per (b, h, c, t), D unnormalised output sums, the max and the sum of exp to part.
template <typename T>
__global__ void __launch_bounds__(kThreads) attention_decode_split_kernel(
    const T* q, const T* kc, const T* vc, const int32_t* lens, float* part, int Lq, int Hq, int Hkv, int D, int64_t ksB,
    int64_t ksS, int64_t ksH, int64_t vsB, int64_t vsS, int64_t vsH, int max_chunks, int max_len, float scale) {
  __shared__ float qv[kMaxD];
  __shared__ float p[kDecodeChunk];
  __shared__ float red[kThreads / 32];
  __shared__ float stat[2];

  const int tid = threadIdx.x, c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  // The launcher asserts every length in [Lq, max_len]; the clamp keeps a bad one from reading past the cache.
  const int len = min(max(lens[b], 0), max_len);
  const int j0 = c * kDecodeChunk;
  const int nk = max(0, min(kDecodeChunk, len - j0));
  const int64_t rec = D + 2;
  for (int t = 0; t < Lq; ++t) {
    float* pr = part + (((static_cast<int64_t>(b) * Hq + h) * max_chunks + c) * Lq + t) * rec;
    const int qpos = len - Lq + t;
    for (int d = tid; d < D; d += kThreads)
      qv[d] = to_float(q[((static_cast<int64_t>(b) * Lq + t) * Hq + h) * D + d]) * scale;
    __syncthreads();
    // scores, masked causally; each thread a strided set of keys
    float mx = -INFINITY;
    for (int j = tid; j < kDecodeChunk; j += kThreads) {
      float sc = -INFINITY;
      if (j < nk && j0 + j <= qpos) {
        const T* kr = kc + b * ksB + static_cast<int64_t>(j0 + j) * ksS + hk * ksH;
        float acc = 0.f;
        for (int d = 0; d < D; ++d) acc += qv[d] * to_float(kr[d]);
        sc = acc;
      }
      p[j] = sc;
      mx = fmaxf(mx, sc);
    }
    for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    if (tid % 32 == 0) red[tid / 32] = mx;
    __syncthreads();
    if (tid == 0) {
      float m = -INFINITY;
      for (int w = 0; w < kThreads / 32; ++w) m = fmaxf(m, red[w]);
      stat[0] = m;
    }
    __syncthreads();
    const float m = stat[0];
    float sum = 0.f;
    for (int j = tid; j < kDecodeChunk; j += kThreads) {
      const float e = m == -INFINITY ? 0.f : __expf(p[j] - m);
      p[j] = e;
      sum += e;
    }
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    __syncthreads();  // red is reused
    if (tid % 32 == 0) red[tid / 32] = sum;
    __syncthreads();
    if (tid == 0) {
      float s_all = 0.f;
      for (int w = 0; w < kThreads / 32; ++w) s_all += red[w];
      pr[D] = m;
      pr[D + 1] = s_all;
    }
    for (int d = tid; d < D; d += kThreads) {
      float acc = 0.f;
      for (int j = 0; j < nk; ++j)
        acc += p[j] * to_float(vc[b * vsB + static_cast<int64_t>(j0 + j) * vsS + hk * vsH + d]);
      pr[d] = acc;
    }
    __syncthreads();  // qv, p and stat are rewritten for the next query
  }
}

// Decode, pass 2: merge the chunks of each (b, h, t) in chunk order. grid (Lq, Hq, B), block 32.
template <typename T>
__global__ void attention_decode_merge_kernel(const float* part, const int32_t* lens, T* out, int Lq, int Hq, int D,
                                              int max_chunks) {
  const int t = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int len = max(lens[b], 0);
  const int chunks = min(max_chunks, max(1, (len + kDecodeChunk - 1) / kDecodeChunk));  // never past the workspace
  const int64_t rec = D + 2;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    attn::SoftmaxState st{-INFINITY, 0.f};
    float acc = 0.f;
    for (int c = 0; c < chunks; ++c) {
      const float* pr = part + (((static_cast<int64_t>(b) * Hq + h) * max_chunks + c) * Lq + t) * rec;
      float sa, sb;
      st = attn::merge(st, attn::SoftmaxState{pr[D], pr[D + 1]}, &sa, &sb);
      acc = acc * sa + pr[d] * sb;
    }
    out[((static_cast<int64_t>(b) * Lq + t) * Hq + h) * D + d] = from_float<T>(st.l > 0.f ? acc / st.l : 0.f);
  }
}

inline int decode_max_chunks(int max_len) {
  const int n = (max_len + kDecodeChunk - 1) / kDecodeChunk;
  return n > 1 ? n : 1;
}

// part: workspace of B * Hq * decode_max_chunks(max_len) * Lq * (D + 2) floats.
template <typename T>
void run_attention_decode(const T* q, const T* kc, const T* vc, const int32_t* lens, float* part, T* out, int B, int Lq,
                          int Hq, int Hkv, int D, int64_t ksB, int64_t ksS, int64_t ksH, int64_t vsB, int64_t vsS,
                          int64_t vsH, int max_len, float scale, cl_stream_t stream) {
  if (B == 0 || Lq == 0 || Hq == 0) return;
  const int chunks = decode_max_chunks(max_len);
  CL_LAUNCH(attention_decode_split_kernel<T>, dim3(chunks, Hq, B), dim3(kThreads), 0, stream, q, kc, vc, lens, part, Lq,
            Hq, Hkv, D, ksB, ksS, ksH, vsB, vsS, vsH, chunks, max_len, scale);
  CL_LAUNCH(attention_decode_merge_kernel<T>, dim3(Lq, Hq, B), dim3(32), 0, stream, part, lens, out, Lq, Hq, D, chunks);
}

}  // namespace chameleon_lite::cuda_kernels
