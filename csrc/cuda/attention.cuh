#pragma once
// CUDA kernels of the modality-aware attention (ARCHITECTURE §5): forward, backward (dq pass + dk/dv pass from the
// saved log-sum-exp) and KV-cache decode with split-KV.
// Compiled by nvcc (csrc/cuda/attention.cu) and by g++ against the CPU emulator (tests/cuda_emu/), so the code the
// tests run is the code that ships. Tiles are classified with the shared csrc/common/attention_mask.h: empty tiles
// are skipped, the predicate is evaluated only on partial ones. fp32 accumulation, fp32 or bf16 storage.
// The fp32 kernels multiply with scalar FMAs out of shared memory; bf16 / fp16 forward and backward run on tensor
// cores (mma.sync) on sm_80+ (the *_mma_kernel functions); fp32, bf16 and fp16 storage, fp32 accumulation.
#include <type_traits>

#include "common/attention_mask.h"
#include "cuda/compat.h"

namespace chameleon_lite::cuda_kernels {

namespace attn = chameleon_lite::attn;

constexpr int kFwdBQ = 16;        // query rows per block
constexpr int kFwdBK = 16;        // keys per tile
constexpr int kThreads = 128;     // threads per block (the softmax maps 8 threads to each of the 16 rows)
constexpr int kMaxD = 128;        // largest head dim
constexpr int kDecodeChunk = 256; // keys per decode split
constexpr int kMaxDecodeQ = 16;   // new queries per row in one decode call
static_assert(kFwdBQ == kFwdBK, "the scalar kernels load query and key tiles with one helper");

// Whether query i may read key j inside a classified tile pair: both in range, and the predicate only on a partial
// pair (a full pair is visible everywhere in range).
__device__ __forceinline__ bool pair_visible(int kind, bool in_range, int i, int j, const int32_t* db,
                                             const int32_t* sb) {
  return in_range &&
         (kind != static_cast<int>(attn::TileKind::kPartial) || attn::allowed(i, j, db[i], db[j], sb[i], sb[j]));
}

// Rows [row0, row0 + n) of two [*, ld] matrices (the head at column `col`) into fp32 [kFwdBQ][kMaxD] tiles, zero past n;
// the first is multiplied by `scale_a` (k and v, or q * scale and dout, of one tile).
template <typename T>
__device__ __forceinline__ void load_tile_pair(float (*ta)[kMaxD], float (*tb)[kMaxD], const T* a, const T* b,
                                               int64_t row0, int n, int64_t ld, int64_t col, int D, float scale_a) {
  for (int e = threadIdx.x; e < kFwdBQ * D; e += kThreads) {
    const int r = e / D, c = e % D;
    const int64_t at = (row0 + r) * ld + col + c;
    ta[r][c] = r < n ? to_float(a[at]) * scale_a : 0.f;
    tb[r][c] = r < n ? to_float(b[at]) : 0.f;
  }
}

// grid (ceil(L / kFwdBQ), Hq, B), block kThreads. q: [B, L, Hq, D]; k, v: [B, L, Hkv, D]; out like q;
// lse: [B, Hq, L] (-inf for a row with nothing visible, whose out is 0).
template <typename T>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(const T* q, const T* k, const T* v, const int32_t* doc,
                                                                 const int32_t* span, T* out, float* lse, int L, int Hq,
                                                                 int Hkv, int D, float scale) {
  __shared__ float qs[kFwdBQ][kMaxD];
  __shared__ float ks[kFwdBK][kMaxD];
  __shared__ float vs[kFwdBK][kMaxD];
  __shared__ float s[kFwdBQ][kFwdBK];
  __shared__ float o[kFwdBQ][kMaxD];
  __shared__ float m_s[kFwdBQ], l_s[kFwdBQ], alpha_s[kFwdBQ];
  __shared__ attn::TileBounds qb, kb;
  __shared__ int kind_s;

  const int tid = threadIdx.x;
  const int qi = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int i0 = qi * kFwdBQ, mq = min(kFwdBQ, L - i0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;

  for (int e = tid; e < kFwdBQ * D; e += kThreads) {
    const int r = e / D, c = e % D;
    qs[r][c] = r < mq ? to_float(q[(static_cast<int64_t>(b) * L + i0 + r) * ldq + h * D + c]) * scale : 0.f;
    o[r][c] = 0.f;
  }
  if (tid < kFwdBQ) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.f;
  }
  if (tid == 0) qb = attn::tile_bounds(db, sb, i0, i0 + mq);
  __syncthreads();

  const int nK = (L + kFwdBK - 1) / kFwdBK;
  for (int kj = 0; kj < nK; ++kj) {
    const int j0 = kj * kFwdBK, nk = min(kFwdBK, L - j0);
    if (tid == 0) {
      kb = attn::tile_bounds(db, sb, j0, j0 + nk);
      kind_s = static_cast<int>(attn::classify(qb, kb));
    }
    __syncthreads();
    const int kind = kind_s;
    if (kind != static_cast<int>(attn::TileKind::kEmpty)) {
      load_tile_pair(ks, vs, k, v, static_cast<int64_t>(b) * L + j0, nk, ldk, static_cast<int64_t>(hk) * D, D, 1.f);
      __syncthreads();
      for (int e = tid; e < kFwdBQ * kFwdBK; e += kThreads) {
        const int r = e / kFwdBK, c = e % kFwdBK;
        float acc = 0.f;
        for (int d = 0; d < D; ++d) acc += qs[r][d] * ks[c][d];
        const bool ok = pair_visible(kind, r < mq && c < nk, i0 + r, j0 + c, db, sb);
        s[r][c] = ok ? acc : -INFINITY;
      }
      __syncthreads();
      {  // online softmax: 8 lanes per row, 2 columns each, reduced with width-8 shuffles
        const int r = tid / 8, lane8 = tid % 8;
        const float x0 = s[r][lane8], x1 = s[r][lane8 + 8];
        float mx = fmaxf(x0, x1);
        for (int off = 4; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off, 8));
        const float m_old = m_s[r];
        const float m_new = fmaxf(m_old, mx);
        const float p0 = m_new == -INFINITY ? 0.f : __expf(x0 - m_new);
        const float p1 = m_new == -INFINITY ? 0.f : __expf(x1 - m_new);
        float sum = p0 + p1;
        for (int off = 4; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off, 8);
        s[r][lane8] = p0;
        s[r][lane8 + 8] = p1;
        __syncwarp();
        if (lane8 == 0) {
          const float alpha = m_old == -INFINITY ? 0.f : __expf(m_old - m_new);
          alpha_s[r] = alpha;
          l_s[r] = l_s[r] * alpha + sum;
          m_s[r] = m_new;
        }
      }
      __syncthreads();
      for (int e = tid; e < kFwdBQ * D; e += kThreads) {
        const int r = e / D, c = e % D;
        float acc = o[r][c] * alpha_s[r];
        for (int j = 0; j < kFwdBK; ++j) acc += s[r][j] * vs[j][c];
        o[r][c] = acc;
      }
    }
    __syncthreads();  // every thread is done with kind_s, kb and the tiles before the next tile overwrites them
  }

  for (int e = tid; e < mq * D; e += kThreads) {
    const int r = e / D, c = e % D;
    const float l = l_s[r];
    out[(static_cast<int64_t>(b) * L + i0 + r) * ldq + h * D + c] = from_float<T>(l > 0.f ? o[r][c] / l : 0.f);
  }
  if (tid < mq) lse[(static_cast<int64_t>(b) * Hq + h) * L + i0 + tid] = attn::finish_lse(attn::SoftmaxState{m_s[tid], l_s[tid]});
}

// Decode, pass 1. grid (max chunks per row, Hq, B), block kThreads: chunk c of row b holds cache positions
// [c * kDecodeChunk, min(len, (c + 1) * kDecodeChunk)). Query t (of Lq) sits at position len - Lq + t and reads keys
// at or before it. Writes, per (b, h, c, t), D unnormalised output sums, the max and the sum of exp to part.
template <typename T>
__global__ void __launch_bounds__(kThreads) attention_decode_split_kernel(
    const T* q, const T* kc, const T* vc, const int32_t* lens, float* part, int Lq, int Hq, int Hkv, int D, int64_t ksB,
    int64_t ksS, int64_t ksH, int64_t vsB, int64_t vsS, int64_t vsH, int max_chunks, float scale) {
  __shared__ float qv[kMaxD];
  __shared__ float p[kDecodeChunk];
  __shared__ float red[kThreads / 32];
  __shared__ float stat[2];

  const int tid = threadIdx.x, c = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int len = lens[b];
  const int j0 = c * kDecodeChunk;
  const int nk = max(0, min(kDecodeChunk, len - j0));
  const int64_t rec = D + 2;
  for (int t = 0; t < Lq; ++t) {
    float* pr = part + (((static_cast<int64_t>(b) * Hq + h) * max_chunks + c) * Lq + t) * rec;
    const int qpos = len - Lq + t;
    for (int d = tid; d < D; d += kThreads) qv[d] = to_float(q[((static_cast<int64_t>(b) * Lq + t) * Hq + h) * D + d]) * scale;
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
      for (int j = 0; j < nk; ++j) acc += p[j] * to_float(vc[b * vsB + static_cast<int64_t>(j0 + j) * vsS + hk * vsH + d]);
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
  const int len = lens[b];
  const int chunks = max(1, (len + kDecodeChunk - 1) / kDecodeChunk);
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

// ---------------------------------------------------------------------------------------------- tensor-core forward
// bf16 / fp16 forward on tensor cores (sm_80+): 4 warps, 64 query rows per block (16 per warp), key tiles of 32, head dims a
// multiple of 16 up to 128. Q K^T and P V are mma m16n8k16 products with fp32 accumulation; the score fragments are
// rounded to the input type and reused in registers as the A operand of P V (FlashAttention-2), so P never goes through shared
// memory. Tiles are 16-bit in shared memory (operands built by a_frag / b_frag_*). The online softmax keeps, per
// lane, the state of its two rows (g and g + 8 of its warp's 16), reduced over the 4 lanes of a quad with shuffles.
constexpr int kMmaBQ = 64;
constexpr int kMmaBK = 32;
constexpr int kMmaThreads = (kMmaBQ / 16) * 32;
constexpr int kMmaMaxN = kMaxD / 8;  // n-tiles of the output per warp

__device__ __forceinline__ uint32_t pair16(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// Copies rows [row_base, row_base + n) of a [*, ld] 16-bit matrix (heads at `col`) into a [rows][kMaxD] tile, zero-filled.
template <typename T>
__device__ __forceinline__ void load_tile16(uint16_t (*tile)[kMaxD], int rows, const T* src, int64_t row_base,
                                           int n, int64_t ld, int64_t col, int D, int tid, int threads) {
  for (int e = tid; e < rows * D; e += threads) {
    const int r = e / D, c = e % D;
    tile[r][c] = r < n ? bits16(src[(row_base + r) * ld + col + c]) : static_cast<uint16_t>(0);
  }
}

// MMA operands from 16-bit [rows][kMaxD] tiles (fragment layout: cuda/emu/cuda_emu.h; c = 16 kd + 2t, the lane's
// columns in k-step kd).
// A operand (16 x 16) from rows r0 and r0 + 8 of `tile`, k along the row: columns c, c + 1 and c + 8, c + 9.
__device__ __forceinline__ void a_frag(uint32_t a[4], const uint16_t (*tile)[kMaxD], int r0, int c) {
  a[0] = pair16(tile[r0][c], tile[r0][c + 1]);
  a[1] = pair16(tile[r0 + 8][c], tile[r0 + 8][c + 1]);
  a[2] = pair16(tile[r0][c + 8], tile[r0][c + 9]);
  a[3] = pair16(tile[r0 + 8][c + 8], tile[r0 + 8][c + 9]);
}

// B operand (16 x 8) whose k runs along tile row n (the n-th column of B is a tile row): columns c, c + 1, c + 8, c + 9.
__device__ __forceinline__ void b_frag_row(uint32_t b[2], const uint16_t (*tile)[kMaxD], int n, int c) {
  b[0] = pair16(tile[n][c], tile[n][c + 1]);
  b[1] = pair16(tile[n][c + 8], tile[n][c + 9]);
}

// B operand (16 x 8) whose k runs down tile column d: rows k0, k0 + 1 and k0 + 8, k0 + 9 (k0 = 16 kk + 2t).
__device__ __forceinline__ void b_frag_col(uint32_t b[2], const uint16_t (*tile)[kMaxD], int k0, int d) {
  b[0] = pair16(tile[k0][d], tile[k0 + 1][d]);
  b[1] = pair16(tile[k0 + 8][d], tile[k0 + 9][d]);
}

// A operand for k-step kk from two accumulator n-tiles (2 kk and 2 kk + 1) of a 16-row MMA result, rounded to T:
// the FlashAttention-2 reuse of score fragments as the next product's operand, without shared memory.
template <typename T>
__device__ __forceinline__ void a_from_acc(uint32_t a[4], const float (*acc)[4], int kk) {
  a[0] = pack2<T>(acc[2 * kk][0], acc[2 * kk][1]);
  a[1] = pack2<T>(acc[2 * kk][2], acc[2 * kk][3]);
  a[2] = pack2<T>(acc[2 * kk + 1][0], acc[2 * kk + 1][1]);
  a[3] = pack2<T>(acc[2 * kk + 1][2], acc[2 * kk + 1][3]);
}

template <typename T>
__global__ void __launch_bounds__(kMmaThreads) attention_fwd_mma_kernel(const T* q, const T* k, const T* v,
                                                                       const int32_t* doc, const int32_t* span, T* out,
                                                                       float* lse, int L, int Hq, int Hkv, int D,
                                                                       float scale) {
  __shared__ uint16_t qs[kMmaBQ][kMaxD];
  __shared__ uint16_t ks[kMmaBK][kMaxD];
  __shared__ uint16_t vs[kMmaBK][kMaxD];
  __shared__ attn::TileBounds qb, kb;
  __shared__ int kind_s;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int qi = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int i0 = qi * kMmaBQ, mq = min(kMmaBQ, L - i0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;
  const int nn = D / 8, nd = D / 16;
  const int row0 = warp * 16 + g;  // block-local rows of this lane: row0 and row0 + 8

  load_tile16(qs, kMmaBQ, q, static_cast<int64_t>(b) * L + i0, mq, ldq, static_cast<int64_t>(h) * D, D, tid, kMmaThreads);
  if (tid == 0) qb = attn::tile_bounds(db, sb, i0, i0 + mq);
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
  float o[kMmaMaxN][4];
  CL_UNROLL
  for (int n = 0; n < kMmaMaxN; ++n)
    for (int i = 0; i < 4; ++i) o[n][i] = 0.f;
  __syncthreads();

  const int nK = (L + kMmaBK - 1) / kMmaBK;
  for (int kj = 0; kj < nK; ++kj) {
    const int j0 = kj * kMmaBK, nk = min(kMmaBK, L - j0);
    if (tid == 0) {
      kb = attn::tile_bounds(db, sb, j0, j0 + nk);
      kind_s = static_cast<int>(attn::classify(qb, kb));
    }
    __syncthreads();
    const int kind = kind_s;
    if (kind != static_cast<int>(attn::TileKind::kEmpty)) {
      load_tile16(ks, kMmaBK, k, static_cast<int64_t>(b) * L + j0, nk, ldk, static_cast<int64_t>(hk) * D, D, tid,
                  kMmaThreads);
      load_tile16(vs, kMmaBK, v, static_cast<int64_t>(b) * L + j0, nk, ldk, static_cast<int64_t>(hk) * D, D, tid,
                  kMmaThreads);
      __syncthreads();
      // S = Q K^T for this warp's 16 rows: four n-tiles of 8 keys.
      float sfr[4][4];
      CL_UNROLL
      for (int n = 0; n < 4; ++n)
        for (int i = 0; i < 4; ++i) sfr[n][i] = 0.f;
      for (int kd = 0; kd < nd; ++kd) {
        const int c = kd * 16 + 2 * t;
        uint32_t a[4];
        a_frag(a, qs, row0, c);
        CL_UNROLL
        for (int n = 0; n < 4; ++n) {
          uint32_t bb[2];
          b_frag_row(bb, ks, n * 8 + g, c);
          mma16816<T>(sfr[n], a, bb, sfr[n]);
        }
      }
      // scale and mask; then the online softmax of the lane's two rows
      CL_UNROLL
      for (int n = 0; n < 4; ++n)
        for (int i = 0; i < 4; ++i) {
          const int r = row0 + (i >= 2 ? 8 : 0), c = n * 8 + 2 * t + (i & 1);
          const bool ok = pair_visible(kind, r < mq && c < nk, i0 + r, j0 + c, db, sb);
          sfr[n][i] = ok ? sfr[n][i] * scale : -INFINITY;
        }
      CL_UNROLL
      for (int rr = 0; rr < 2; ++rr) {
        float mx = -INFINITY;
        for (int n = 0; n < 4; ++n) mx = fmaxf(mx, fmaxf(sfr[n][2 * rr], sfr[n][2 * rr + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m_r[rr], mx);
        const float alpha = m_r[rr] == -INFINITY ? 0.f : __expf(m_r[rr] - m_new);
        float sum = 0.f;
        for (int n = 0; n < 4; ++n)
          for (int i = 2 * rr; i < 2 * rr + 2; ++i) {
            const float p = m_new == -INFINITY ? 0.f : __expf(sfr[n][i] - m_new);
            sfr[n][i] = p;
            sum += p;
          }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        l_r[rr] = l_r[rr] * alpha + sum;
        m_r[rr] = m_new;
        CL_UNROLL
        for (int n = 0; n < kMmaMaxN; ++n) {
          o[n][2 * rr] *= alpha;
          o[n][2 * rr + 1] *= alpha;
        }
      }
      // O += P V over two k-steps of 16 keys; P's A fragment is the score fragment of n-tiles 2kk and 2kk + 1.
      CL_UNROLL
      for (int kk = 0; kk < 2; ++kk) {
        uint32_t a[4];
        a_from_acc<T>(a, sfr, kk);
        CL_UNROLL
        for (int n = 0; n < kMmaMaxN; ++n) {
          if (n < nn) {
            uint32_t bb[2];
            b_frag_col(bb, vs, kk * 16 + 2 * t, n * 8 + g);
            mma16816<T>(o[n], a, bb, o[n]);
          }
        }
      }
    }
    __syncthreads();  // tiles, kb and kind_s are rewritten for the next key tile
  }

  CL_UNROLL
  for (int rr = 0; rr < 2; ++rr) {
    const int r = row0 + 8 * rr;
    if (r < mq) {
      const float inv = l_r[rr] > 0.f ? 1.f / l_r[rr] : 0.f;
      T* orow = out + (static_cast<int64_t>(b) * L + i0 + r) * ldq + h * D;
      CL_UNROLL
      for (int n = 0; n < kMmaMaxN; ++n) {
        if (n < nn) {
          orow[n * 8 + 2 * t] = from_float<T>(o[n][2 * rr] * inv);
          orow[n * 8 + 2 * t + 1] = from_float<T>(o[n][2 * rr + 1] * inv);
        }
      }
      if (t == 0)
        lse[(static_cast<int64_t>(b) * Hq + h) * L + i0 + r] = attn::finish_lse(attn::SoftmaxState{m_r[rr], l_r[rr]});
    }
  }
}

// ---------------------------------------------------------------------------------------------- backward
// FlashAttention-2 style backward from the saved log-sum-exp, in two kernels that need no atomics:
//   dq pass   grid (query tiles, Hq, B): for its rows, delta = rowsum(dout * out) (written for the second pass), then
//             over the visible key tiles p = exp(s - lse), ds = p * (dout v^T - delta), dq += ds k * scale;
//   dk/dv pass grid (key tiles, Hkv, B): over the GQA heads of its KV head and their visible query tiles,
//             dv += p^T dout, dk += ds^T q * scale — the group's heads are summed inside the block.
// Tiles are classified like the forward (empty ones skipped, the predicate only on partial ones). Accumulators live in
// registers: each thread owns kBwdElems elements of its block's [16, D] result.
constexpr int kBwdElems = kFwdBQ * kMaxD / kThreads;

// p = exp(s - lse) of row r / key c of the current tile pair, or 0 where the mask closes the pair.
__device__ __forceinline__ float bwd_prob(float s, float lse_r, bool ok) {
  return ok && lse_r != -INFINITY ? __expf(s - lse_r) : 0.f;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_bwd_dq_kernel(const T* dout, const T* q, const T* k, const T* v,
                                                                    const T* out, const float* lse, const int32_t* doc,
                                                                    const int32_t* span, T* dq, float* delta, int L,
                                                                    int Hq, int Hkv, int D, float scale) {
  __shared__ float qs[kFwdBQ][kMaxD];   // q * scale
  __shared__ float dos[kFwdBQ][kMaxD];  // dout
  __shared__ float ks[kFwdBK][kMaxD];
  __shared__ float vs[kFwdBK][kMaxD];
  __shared__ float ds[kFwdBQ][kFwdBK];
  __shared__ float lse_s[kFwdBQ], delta_s[kFwdBQ];
  __shared__ attn::TileBounds qb, kb;
  __shared__ int kind_s;

  const int tid = threadIdx.x;
  const int qi = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int i0 = qi * kFwdBQ, mq = min(kFwdBQ, L - i0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;

  load_tile_pair(qs, dos, q, dout, static_cast<int64_t>(b) * L + i0, mq, ldq, static_cast<int64_t>(h) * D, D, scale);
  {  // delta = rowsum(dout * out): 8 lanes per row, width-8 shuffles
    const int r = tid / 8, lane8 = tid % 8;
    float acc = 0.f;
    if (r < mq) {
      const int64_t base = (static_cast<int64_t>(b) * L + i0 + r) * ldq + h * D;
      for (int c = lane8; c < D; c += 8) acc += to_float(dout[base + c]) * to_float(out[base + c]);
    }
    for (int off = 4; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off, 8);
    if (lane8 == 0) {
      delta_s[r] = acc;
      lse_s[r] = r < mq ? lse[(static_cast<int64_t>(b) * Hq + h) * L + i0 + r] : -INFINITY;
      if (r < mq) delta[(static_cast<int64_t>(b) * Hq + h) * L + i0 + r] = acc;
    }
  }
  if (tid == 0) qb = attn::tile_bounds(db, sb, i0, i0 + mq);
  float acc[kBwdElems];
  for (int i = 0; i < kBwdElems; ++i) acc[i] = 0.f;
  __syncthreads();

  const int nK = (L + kFwdBK - 1) / kFwdBK;
  for (int kj = 0; kj < nK; ++kj) {
    const int j0 = kj * kFwdBK, nk = min(kFwdBK, L - j0);
    if (tid == 0) {
      kb = attn::tile_bounds(db, sb, j0, j0 + nk);
      kind_s = static_cast<int>(attn::classify(qb, kb));
    }
    __syncthreads();
    const int kind = kind_s;
    if (kind != static_cast<int>(attn::TileKind::kEmpty)) {
      load_tile_pair(ks, vs, k, v, static_cast<int64_t>(b) * L + j0, nk, ldk, static_cast<int64_t>(hk) * D, D, 1.f);
      __syncthreads();
      for (int e = tid; e < kFwdBQ * kFwdBK; e += kThreads) {
        const int r = e / kFwdBK, c = e % kFwdBK;
        float sc = 0.f, dp = 0.f;
        for (int d = 0; d < D; ++d) {
          sc += qs[r][d] * ks[c][d];
          dp += dos[r][d] * vs[c][d];
        }
        const bool ok = pair_visible(kind, r < mq && c < nk, i0 + r, j0 + c, db, sb);
        ds[r][c] = bwd_prob(sc, lse_s[r], ok) * (dp - delta_s[r]);
      }
      __syncthreads();
      for (int i = 0; i < kBwdElems; ++i) {
        const int e = tid + i * kThreads, r = e / D, c = e % D;
        if (r < kFwdBQ) {
          float a = 0.f;
          for (int j = 0; j < kFwdBK; ++j) a += ds[r][j] * ks[j][c];
          acc[i] += a;
        }
      }
    }
    __syncthreads();  // tiles, ds and kind_s are rewritten for the next key tile
  }
  for (int i = 0; i < kBwdElems; ++i) {
    const int e = tid + i * kThreads, r = e / D, c = e % D;
    if (r < mq) dq[(static_cast<int64_t>(b) * L + i0 + r) * ldq + h * D + c] = from_float<T>(acc[i] * scale);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_bwd_dkdv_kernel(const T* dout, const T* q, const T* k, const T* v,
                                                                      const float* lse, const float* delta,
                                                                      const int32_t* doc, const int32_t* span, T* dk,
                                                                      T* dv, int L, int Hq, int Hkv, int D, float scale) {
  __shared__ float ks[kFwdBK][kMaxD];
  __shared__ float vs[kFwdBK][kMaxD];
  __shared__ float qs[kFwdBQ][kMaxD];   // q * scale
  __shared__ float dos[kFwdBQ][kMaxD];  // dout
  __shared__ float ps[kFwdBQ][kFwdBK];
  __shared__ float ds[kFwdBQ][kFwdBK];
  __shared__ float lse_s[kFwdBQ], delta_s[kFwdBQ];
  __shared__ attn::TileBounds qb, kb;
  __shared__ int kind_s;

  const int tid = threadIdx.x;
  const int kj = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int group = Hq / Hkv;
  const int j0 = kj * kFwdBK, nk = min(kFwdBK, L - j0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;

  load_tile_pair(ks, vs, k, v, static_cast<int64_t>(b) * L + j0, nk, ldk, static_cast<int64_t>(hk) * D, D, 1.f);
  if (tid == 0) kb = attn::tile_bounds(db, sb, j0, j0 + nk);
  float dk_acc[kBwdElems], dv_acc[kBwdElems];
  for (int i = 0; i < kBwdElems; ++i) dk_acc[i] = dv_acc[i] = 0.f;
  __syncthreads();

  const int nQ = (L + kFwdBQ - 1) / kFwdBQ;
  for (int g = 0; g < group; ++g) {
    const int h = hk * group + g;
    for (int qi = 0; qi < nQ; ++qi) {
      const int i0 = qi * kFwdBQ, mq = min(kFwdBQ, L - i0);
      if (tid == 0) {
        qb = attn::tile_bounds(db, sb, i0, i0 + mq);
        kind_s = static_cast<int>(attn::classify(qb, kb));
      }
      __syncthreads();
      const int kind = kind_s;
      if (kind != static_cast<int>(attn::TileKind::kEmpty)) {
        load_tile_pair(qs, dos, q, dout, static_cast<int64_t>(b) * L + i0, mq, ldq, static_cast<int64_t>(h) * D, D,
                       scale);
        if (tid < kFwdBQ) {
          const int64_t at = (static_cast<int64_t>(b) * Hq + h) * L + i0 + tid;
          lse_s[tid] = tid < mq ? lse[at] : -INFINITY;
          delta_s[tid] = tid < mq ? delta[at] : 0.f;
        }
        __syncthreads();
        for (int e = tid; e < kFwdBQ * kFwdBK; e += kThreads) {
          const int r = e / kFwdBK, c = e % kFwdBK;
          float sc = 0.f, dp = 0.f;
          for (int d = 0; d < D; ++d) {
            sc += qs[r][d] * ks[c][d];
            dp += dos[r][d] * vs[c][d];
          }
          const bool ok = pair_visible(kind, r < mq && c < nk, i0 + r, j0 + c, db, sb);
          const float p = bwd_prob(sc, lse_s[r], ok);
          ps[r][c] = p;
          ds[r][c] = p * (dp - delta_s[r]);
        }
        __syncthreads();
        for (int i = 0; i < kBwdElems; ++i) {
          const int e = tid + i * kThreads, j = e / D, c = e % D;
          if (j < kFwdBK) {
            float a = 0.f, bsum = 0.f;
            for (int r = 0; r < kFwdBQ; ++r) {
              a += ps[r][j] * dos[r][c];
              bsum += ds[r][j] * qs[r][c];
            }
            dv_acc[i] += a;
            dk_acc[i] += bsum;
          }
        }
      }
      __syncthreads();  // the query tile, p, ds, qb and kind_s are rewritten next
    }
  }
  for (int i = 0; i < kBwdElems; ++i) {
    const int e = tid + i * kThreads, j = e / D, c = e % D;
    if (j < nk) {
      const int64_t at = (static_cast<int64_t>(b) * L + j0 + j) * ldk + hk * D + c;
      dk[at] = from_float<T>(dk_acc[i]);
      dv[at] = from_float<T>(dv_acc[i]);
    }
  }
}

// ---------------------------------------------------------------------------------------------- tensor-core backward
// bf16 / fp16 backward on tensor cores (sm_80+), the same two passes as the scalar backward:
//   dq pass   blocks of 64 query rows (16 per warp), key tiles of 16: S = Q K^T, dP = dO V^T, dS = P * (dP - delta),
//             dQ += dS K, with P and dS turned into A fragments in registers;
//   dk/dv pass blocks of 64 keys (16 per warp), query tiles of 16, over the GQA heads of the KV head: S^T = K Q^T and
//             dP^T = V dO^T (so the key-major fragments need no transposes), dV += P^T dO, dK += dS^T Q.
// Tiles are 16-bit in shared memory; operands read as pairs along the reduced dimension.
// The streamed tile of the backward passes (keys in the dq pass, queries in the dk/dv pass) holds 16 rows, so the
// four bf16 [*, 128] tiles of a pass stay within 48 KB of static shared memory.
constexpr int kMmaBwdTile = 16;
constexpr int kMmaBwdN = kMmaBwdTile / 8;  // n-tiles of 8 in the streamed dimension

template <typename T>
__global__ void __launch_bounds__(kMmaThreads) attention_bwd_dq_mma_kernel(
    const T* dout, const T* q, const T* k, const T* v, const T* out, const float* lse,
    const int32_t* doc, const int32_t* span, T* dq, float* delta, int L, int Hq, int Hkv, int D, float scale) {
  __shared__ uint16_t qs[kMmaBQ][kMaxD];
  __shared__ uint16_t dos[kMmaBQ][kMaxD];
  __shared__ uint16_t ks[kMmaBwdTile][kMaxD];
  __shared__ uint16_t vs[kMmaBwdTile][kMaxD];
  __shared__ float lse_s[kMmaBQ], delta_s[kMmaBQ];
  __shared__ attn::TileBounds qb, kb;
  __shared__ int kind_s;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int qi = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int i0 = qi * kMmaBQ, mq = min(kMmaBQ, L - i0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;
  const int nn = D / 8, nd = D / 16;
  const int row0 = warp * 16 + g;

  load_tile16(qs, kMmaBQ, q, static_cast<int64_t>(b) * L + i0, mq, ldq, static_cast<int64_t>(h) * D, D, tid, kMmaThreads);
  load_tile16(dos, kMmaBQ, dout, static_cast<int64_t>(b) * L + i0, mq, ldq, static_cast<int64_t>(h) * D, D, tid,
              kMmaThreads);
  for (int r = tid; r < kMmaBQ; r += kMmaThreads) {
    float acc = 0.f;
    if (r < mq) {
      const int64_t base = (static_cast<int64_t>(b) * L + i0 + r) * ldq + static_cast<int64_t>(h) * D;
      for (int c = 0; c < D; ++c) acc += to_float(dout[base + c]) * to_float(out[base + c]);
      delta[(static_cast<int64_t>(b) * Hq + h) * L + i0 + r] = acc;
    }
    delta_s[r] = acc;
    lse_s[r] = r < mq ? lse[(static_cast<int64_t>(b) * Hq + h) * L + i0 + r] : -INFINITY;
  }
  if (tid == 0) qb = attn::tile_bounds(db, sb, i0, i0 + mq);
  float acc[kMmaMaxN][4];
  CL_UNROLL
  for (int n = 0; n < kMmaMaxN; ++n)
    for (int i = 0; i < 4; ++i) acc[n][i] = 0.f;
  __syncthreads();

  const int nK = (L + kMmaBwdTile - 1) / kMmaBwdTile;
  for (int kj = 0; kj < nK; ++kj) {
    const int j0 = kj * kMmaBwdTile, nk = min(kMmaBwdTile, L - j0);
    if (tid == 0) {
      kb = attn::tile_bounds(db, sb, j0, j0 + nk);
      kind_s = static_cast<int>(attn::classify(qb, kb));
    }
    __syncthreads();
    const int kind = kind_s;
    if (kind != static_cast<int>(attn::TileKind::kEmpty)) {
      load_tile16(ks, kMmaBwdTile, k, static_cast<int64_t>(b) * L + j0, nk, ldk, static_cast<int64_t>(hk) * D, D, tid,
                  kMmaThreads);
      load_tile16(vs, kMmaBwdTile, v, static_cast<int64_t>(b) * L + j0, nk, ldk, static_cast<int64_t>(hk) * D, D, tid,
                  kMmaThreads);
      __syncthreads();
      float sf[kMmaBwdN][4], dpf[kMmaBwdN][4];
      CL_UNROLL
      for (int n = 0; n < kMmaBwdN; ++n)
        for (int i = 0; i < 4; ++i) sf[n][i] = dpf[n][i] = 0.f;
      for (int kd = 0; kd < nd; ++kd) {
        const int c = kd * 16 + 2 * t;
        uint32_t aq[4], ado[4];
        a_frag(aq, qs, row0, c);
        a_frag(ado, dos, row0, c);
        CL_UNROLL
        for (int n = 0; n < kMmaBwdN; ++n) {
          uint32_t bk[2], bv[2];
          b_frag_row(bk, ks, n * 8 + g, c);
          b_frag_row(bv, vs, n * 8 + g, c);
          mma16816<T>(sf[n], aq, bk, sf[n]);
          mma16816<T>(dpf[n], ado, bv, dpf[n]);
        }
      }
      CL_UNROLL
      for (int n = 0; n < kMmaBwdN; ++n)
        for (int i = 0; i < 4; ++i) {
          const int r = row0 + (i >= 2 ? 8 : 0), c = n * 8 + 2 * t + (i & 1);
          const bool ok = pair_visible(kind, r < mq && c < nk, i0 + r, j0 + c, db, sb);
          const float p = bwd_prob(sf[n][i] * scale, lse_s[r], ok);
          sf[n][i] = p * (dpf[n][i] - delta_s[r]);  // dS
        }
      CL_UNROLL
      for (int kk = 0; kk < kMmaBwdN / 2; ++kk) {
        uint32_t a[4];
        a_from_acc<T>(a, sf, kk);
        CL_UNROLL
        for (int n = 0; n < kMmaMaxN; ++n) {
          if (n < nn) {
            uint32_t bb[2];
            b_frag_col(bb, ks, kk * 16 + 2 * t, n * 8 + g);
            mma16816<T>(acc[n], a, bb, acc[n]);
          }
        }
      }
    }
    __syncthreads();
  }
  CL_UNROLL
  for (int rr = 0; rr < 2; ++rr) {
    const int r = row0 + 8 * rr;
    if (r < mq) {
      T* row = dq + (static_cast<int64_t>(b) * L + i0 + r) * ldq + static_cast<int64_t>(h) * D;
      CL_UNROLL
      for (int n = 0; n < kMmaMaxN; ++n) {
        if (n < nn) {
          row[n * 8 + 2 * t] = from_float<T>(acc[n][2 * rr] * scale);
          row[n * 8 + 2 * t + 1] = from_float<T>(acc[n][2 * rr + 1] * scale);
        }
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kMmaThreads) attention_bwd_dkdv_mma_kernel(
    const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta,
    const int32_t* doc, const int32_t* span, T* dk, T* dv, int L, int Hq, int Hkv, int D, float scale) {
  __shared__ uint16_t ks[kMmaBQ][kMaxD];  // 64 keys per block
  __shared__ uint16_t vs[kMmaBQ][kMaxD];
  __shared__ uint16_t qs[kMmaBwdTile][kMaxD];  // queries per tile
  __shared__ uint16_t dos[kMmaBwdTile][kMaxD];
  __shared__ float lse_s[kMmaBwdTile], delta_s[kMmaBwdTile];
  __shared__ attn::TileBounds qb, kb;
  __shared__ int kind_s;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int kj = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int group = Hq / Hkv;
  const int j0 = kj * kMmaBQ, nk = min(kMmaBQ, L - j0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;
  const int nn = D / 8, nd = D / 16;
  const int key0 = warp * 16 + g;  // block-local keys of this lane: key0 and key0 + 8

  load_tile16(ks, kMmaBQ, k, static_cast<int64_t>(b) * L + j0, nk, ldk, static_cast<int64_t>(hk) * D, D, tid, kMmaThreads);
  load_tile16(vs, kMmaBQ, v, static_cast<int64_t>(b) * L + j0, nk, ldk, static_cast<int64_t>(hk) * D, D, tid, kMmaThreads);
  if (tid == 0) kb = attn::tile_bounds(db, sb, j0, j0 + nk);
  float dka[kMmaMaxN][4], dva[kMmaMaxN][4];
  CL_UNROLL
  for (int n = 0; n < kMmaMaxN; ++n)
    for (int i = 0; i < 4; ++i) dka[n][i] = dva[n][i] = 0.f;
  __syncthreads();

  const int nQ = (L + kMmaBwdTile - 1) / kMmaBwdTile;
  for (int gh = 0; gh < group; ++gh) {
    const int h = hk * group + gh;
    for (int qi = 0; qi < nQ; ++qi) {
      const int i0 = qi * kMmaBwdTile, mq = min(kMmaBwdTile, L - i0);
      if (tid == 0) {
        qb = attn::tile_bounds(db, sb, i0, i0 + mq);
        kind_s = static_cast<int>(attn::classify(qb, kb));
      }
      __syncthreads();
      const int kind = kind_s;
      if (kind != static_cast<int>(attn::TileKind::kEmpty)) {
        load_tile16(qs, kMmaBwdTile, q, static_cast<int64_t>(b) * L + i0, mq, ldq, static_cast<int64_t>(h) * D, D, tid,
                    kMmaThreads);
        load_tile16(dos, kMmaBwdTile, dout, static_cast<int64_t>(b) * L + i0, mq, ldq, static_cast<int64_t>(h) * D, D, tid,
                    kMmaThreads);
        for (int r = tid; r < kMmaBwdTile; r += kMmaThreads) {
          const int64_t at = (static_cast<int64_t>(b) * Hq + h) * L + i0 + r;
          lse_s[r] = r < mq ? lse[at] : -INFINITY;
          delta_s[r] = r < mq ? delta[at] : 0.f;
        }
        __syncthreads();
        // S^T = K Q^T and dP^T = V dO^T for this warp's 16 keys: n-tiles of 8 queries.
        float sf[kMmaBwdN][4], dpf[kMmaBwdN][4];
        CL_UNROLL
        for (int n = 0; n < kMmaBwdN; ++n)
          for (int i = 0; i < 4; ++i) sf[n][i] = dpf[n][i] = 0.f;
        for (int kd = 0; kd < nd; ++kd) {
          const int c = kd * 16 + 2 * t;
          uint32_t ak[4], av[4];
          a_frag(ak, ks, key0, c);
          a_frag(av, vs, key0, c);
          CL_UNROLL
          for (int n = 0; n < kMmaBwdN; ++n) {
            uint32_t bq[2], bo[2];
            b_frag_row(bq, qs, n * 8 + g, c);
            b_frag_row(bo, dos, n * 8 + g, c);
            mma16816<T>(sf[n], ak, bq, sf[n]);
            mma16816<T>(dpf[n], av, bo, dpf[n]);
          }
        }
        // P^T and dS^T: element (key kr, query qc)
        CL_UNROLL
        for (int n = 0; n < kMmaBwdN; ++n)
          for (int i = 0; i < 4; ++i) {
            const int kr = key0 + (i >= 2 ? 8 : 0), qc = n * 8 + 2 * t + (i & 1);
            const bool ok = pair_visible(kind, kr < nk && qc < mq, i0 + qc, j0 + kr, db, sb);
            const float p = bwd_prob(sf[n][i] * scale, lse_s[qc], ok);
            sf[n][i] = p;
            dpf[n][i] = p * (dpf[n][i] - delta_s[qc]);  // dS^T
          }
        // dV += P^T dO, dK += dS^T Q over k-steps of 16 queries
        CL_UNROLL
        for (int kk = 0; kk < kMmaBwdN / 2; ++kk) {
          uint32_t ap[4], as[4];
          a_from_acc<T>(ap, sf, kk);
          a_from_acc<T>(as, dpf, kk);
          CL_UNROLL
          for (int n = 0; n < kMmaMaxN; ++n) {
            if (n < nn) {
              uint32_t bo[2], bq[2];
              b_frag_col(bo, dos, kk * 16 + 2 * t, n * 8 + g);
              b_frag_col(bq, qs, kk * 16 + 2 * t, n * 8 + g);
              mma16816<T>(dva[n], ap, bo, dva[n]);
              mma16816<T>(dka[n], as, bq, dka[n]);
            }
          }
        }
      }
      __syncthreads();
    }
  }
  CL_UNROLL
  for (int rr = 0; rr < 2; ++rr) {
    const int kr = key0 + 8 * rr;
    if (kr < nk) {
      const int64_t at = (static_cast<int64_t>(b) * L + j0 + kr) * ldk + static_cast<int64_t>(hk) * D;
      CL_UNROLL
      for (int n = 0; n < kMmaMaxN; ++n) {
        if (n < nn) {
          dk[at + n * 8 + 2 * t] = from_float<T>(dka[n][2 * rr] * scale);
          dk[at + n * 8 + 2 * t + 1] = from_float<T>(dka[n][2 * rr + 1] * scale);
          dv[at + n * 8 + 2 * t] = from_float<T>(dva[n][2 * rr]);
          dv[at + n * 8 + 2 * t + 1] = from_float<T>(dva[n][2 * rr + 1]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------- host side
// Launch helpers shared by the CUDA build (attention.cu) and the emulator tests: raw pointers in, no checks here.
// Whether the tensor-core kernels cover a head dim (bf16 / fp16, D a multiple of 16); the caller also needs sm_80+.
inline bool mma_supports(int D) { return D % 16 == 0 && D <= kMaxD; }

// tensor_cores: run the 16-bit mma kernel (the caller checked mma_supports and the device's compute capability).
template <typename T>
void run_attention_fwd(const T* q, const T* k, const T* v, const int32_t* doc, const int32_t* span, T* out, float* lse,
                       int B, int L, int Hq, int Hkv, int D, float scale, cl_stream_t stream, bool tensor_cores = false) {
  if (B == 0 || L == 0 || Hq == 0) return;
  if constexpr (std::is_same_v<T, bf16_t> || std::is_same_v<T, half_t>) {
    if (tensor_cores) {
      const dim3 grid((L + kMmaBQ - 1) / kMmaBQ, Hq, B);
      CL_LAUNCH(attention_fwd_mma_kernel<T>, grid, dim3(kMmaThreads), 0, stream, q, k, v, doc, span, out, lse, L, Hq, Hkv,
                D, scale);
      return;
    }
  }
  const dim3 grid((L + kFwdBQ - 1) / kFwdBQ, Hq, B);
  CL_LAUNCH(attention_fwd_kernel<T>, grid, dim3(kThreads), 0, stream, q, k, v, doc, span, out, lse, L, Hq, Hkv, D, scale);
}

// delta: workspace of B * Hq * L floats (rowsum(dout * out), written by the dq pass, read by the dk/dv pass).
// tensor_cores: the 16-bit mma kernels (same conditions as the forward's).
template <typename T>
void run_attention_bwd(const T* dout, const T* q, const T* k, const T* v, const T* out, const float* lse,
                       const int32_t* doc, const int32_t* span, T* dq, T* dk, T* dv, float* delta, int B, int L, int Hq,
                       int Hkv, int D, float scale, cl_stream_t stream, bool tensor_cores = false) {
  if (B == 0 || L == 0 || Hq == 0) return;
  if constexpr (std::is_same_v<T, bf16_t> || std::is_same_v<T, half_t>) {
    if (tensor_cores) {
      CL_LAUNCH(attention_bwd_dq_mma_kernel<T>, dim3((L + kMmaBQ - 1) / kMmaBQ, Hq, B), dim3(kMmaThreads), 0, stream, dout,
                q, k, v, out, lse, doc, span, dq, delta, L, Hq, Hkv, D, scale);
      CL_LAUNCH(attention_bwd_dkdv_mma_kernel<T>, dim3((L + kMmaBQ - 1) / kMmaBQ, Hkv, B), dim3(kMmaThreads), 0, stream,
                dout, q, k, v, lse, delta, doc, span, dk, dv, L, Hq, Hkv, D, scale);
      return;
    }
  }
  CL_LAUNCH(attention_bwd_dq_kernel<T>, dim3((L + kFwdBQ - 1) / kFwdBQ, Hq, B), dim3(kThreads), 0, stream, dout, q, k, v,
            out, lse, doc, span, dq, delta, L, Hq, Hkv, D, scale);
  CL_LAUNCH(attention_bwd_dkdv_kernel<T>, dim3((L + kFwdBK - 1) / kFwdBK, Hkv, B), dim3(kThreads), 0, stream, dout, q, k,
            v, lse, delta, doc, span, dk, dv, L, Hq, Hkv, D, scale);
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
            Hq, Hkv, D, ksB, ksS, ksH, vsB, vsS, vsH, chunks, scale);
  CL_LAUNCH(attention_decode_merge_kernel<T>, dim3(Lq, Hq, B), dim3(32), 0, stream, part, lens, out, Lq, Hq, D, chunks);
}

}  // namespace chameleon_lite::cuda_kernels
