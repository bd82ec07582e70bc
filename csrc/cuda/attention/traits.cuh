#pragma once
// What the attention kernels share (fwd.cuh, bwd.cuh, decode.cuh): tile sizes and thread counts, the walk over the
// classified (query tile, key tile) pairs with the visibility test inside a pair, the shared-memory tile loaders and
// the tensor-core operand builders.
// Two families of kernels: scalar ones (fp32 math out of fp32 shared tiles, any storage type) and tensor-core ones
// (bf16 / fp16 on sm_80+, mma.sync m16n8k16 with fp32 accumulation out of 16-bit shared tiles).
#include <type_traits>

#include "common/attention_mask.h"
#include "cuda/compat.h"

namespace chameleon_lite::cuda_kernels {

namespace attn = chameleon_lite::attn;

constexpr int kMaxD = 128;        // largest head dim
constexpr int kBQ = 16;           // scalar kernels: query rows per tile
constexpr int kBK = 16;           // scalar kernels: keys per tile
constexpr int kThreads = 128;     // scalar and decode kernels: threads per block (8 per row of a 16-row tile)
static_assert(kBQ == kBK, "the scalar kernels load query and key tiles with one helper");

constexpr int kMmaBQ = 64;                        // tensor-core kernels: rows of the block's own tile, 16 per warp
constexpr int kMmaThreads = (kMmaBQ / 16) * 32;   // one warp per 16 rows
constexpr int kMmaMaxN = kMaxD / 8;               // n-tiles of 8 columns in a [16, D] accumulator

// Whether the tensor-core kernels cover a head dim (bf16 / fp16, D a multiple of 16); the caller also needs sm_80+.
inline bool mma_supports(int D) { return D % 16 == 0 && D <= kMaxD; }

// ---------------------------------------------------------------------------------------------- tile pairs
// One (query tile, key tile) pair: queries [i0, i0 + mq), keys [j0, j0 + nk) of one batch row whose doc and span
// ids are db / sb, and its attn::TileKind.
struct TilePair {
  int i0, mq, j0, nk, kind;
  const int32_t* db;
  const int32_t* sb;

  // Whether tile-local query r may read tile-local key c: both in range, and the predicate only on a partial pair
  // (a full pair is visible everywhere in range). in_range is a value, not a short-circuit into the predicate: that
  // form costs the tensor-core forward 6 registers (ptxas, sm_90).
  __device__ __forceinline__ bool visible(int r, int c) const {
    const bool in_range = r < mq && c < nk;
    const int i = i0 + r, j = j0 + c;
    return in_range &&
           (kind != static_cast<int>(attn::TileKind::kPartial) || attn::allowed(i, j, db[i], db[j], sb[i], sb[j]));
  }
};

// The loop every kernel but decode runs: the block owns a tile [f0, f0 + nf) (bounds `fixed`, computed by thread 0)
// and streams the tiles of `tile` positions over [0, L) of the other side — queries against the block's keys when
// kStreamQueries, keys against its queries otherwise. Thread 0 classifies each pair; empty pairs are skipped;
// body(const TilePair&) runs with every thread on the others. Each step ends on a barrier, so the body may rewrite
// its shared tiles in the next one. kind_s: __shared__ scratch of the block.
template <bool kStreamQueries, typename Body>
__device__ __forceinline__ void for_each_tile_pair(int L, int tile, int f0, int nf, const int32_t* db,
                                                   const int32_t* sb, const attn::TileBounds& fixed, int& kind_s,
                                                   Body&& body) {
  const int n_tiles = (L + tile - 1) / tile;
  for (int st = 0; st < n_tiles; ++st) {
    const int s0 = st * tile, ns = min(tile, L - s0);
    if (threadIdx.x == 0) {
      const attn::TileBounds streamed = attn::tile_bounds(db, sb, s0, s0 + ns);
      kind_s = static_cast<int>(kStreamQueries ? attn::classify(streamed, fixed) : attn::classify(fixed, streamed));
    }
    __syncthreads();
    const int kind = kind_s;
    if (kind != static_cast<int>(attn::TileKind::kEmpty))
      body(kStreamQueries ? TilePair{s0, ns, f0, nf, kind, db, sb} : TilePair{f0, nf, s0, ns, kind, db, sb});
    __syncthreads();  // every thread is done with kind_s and the body's tiles before the next step rewrites them
  }
}

// ---------------------------------------------------------------------------------------------- scalar tiles
// Rows [row0, row0 + n) of two [*, ld] matrices (the head at column `col`) into fp32 [kBQ][kMaxD] tiles, zero past
// n; the first is multiplied by `scale_a` (k and v, or q * scale and dout, of one tile).
template <typename T>
__device__ __forceinline__ void load_tile_pair(float (*ta)[kMaxD], float (*tb)[kMaxD], const T* a, const T* b,
                                               int64_t row0, int n, int64_t ld, int64_t col, int D, float scale_a) {
  for (int e = threadIdx.x; e < kBQ * D; e += kThreads) {
    const int r = e / D, c = e % D;
    const int64_t at = (row0 + r) * ld + col + c;
    ta[r][c] = r < n ? to_float(a[at]) * scale_a : 0.f;
    tb[r][c] = r < n ? to_float(b[at]) : 0.f;
  }
}

// ---------------------------------------------------------------------------------------------- tensor-core tiles
// Fragment layout of mma m16n8k16: cuda/emu/cuda_emu.h. Lane l of a warp is in group g = l / 4, thread t = l % 4.
__device__ __forceinline__ uint32_t pair16(uint16_t lo, uint16_t hi) {
  return static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
}

// Rows [row_base, row_base + n) of a [*, ld] 16-bit matrix (heads at `col`) into a [rows][kMaxD] tile, zero-filled.
template <typename T>
__device__ __forceinline__ void load_tile16(uint16_t (*tile)[kMaxD], int rows, const T* src, int64_t row_base, int n,
                                           int64_t ld, int64_t col, int D, int tid, int threads) {
  for (int e = tid; e < rows * D; e += threads) {
    const int r = e / D, c = e % D;
    tile[r][c] = r < n ? bits16(src[(row_base + r) * ld + col + c]) : static_cast<uint16_t>(0);
  }
}

// MMA operands from 16-bit [rows][kMaxD] tiles; c = 16 kd + 2t, the lane's columns in k-step kd.
// A operand (16 x 16) from rows r0 and r0 + 8 of `tile`, k along the row: columns c, c + 1 and c + 8, c + 9.
__device__ __forceinline__ void a_frag(uint32_t a[4], const uint16_t (*tile)[kMaxD], int r0, int c) {
  a[0] = pair16(tile[r0][c], tile[r0][c + 1]);
  a[1] = pair16(tile[r0 + 8][c], tile[r0 + 8][c + 1]);
  a[2] = pair16(tile[r0][c + 8], tile[r0][c + 9]);
  a[3] = pair16(tile[r0 + 8][c + 8], tile[r0 + 8][c + 9]);
}

// B operand (16 x 8) whose k runs along tile row n (the n-th column of B is a tile row): columns c, c + 1, c + 8,
// c + 9.
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

// acc ([16, D] in n-tiles of 8 columns, nn = D / 8 of them) += A (16 x 16, k-step kk) times rows 16 kk .. 16 kk + 15
// of `tile` (k down the tile's rows): the P V, dS K, P^T dO and dS^T Q products.
template <typename T>
__device__ __forceinline__ void mma_acc_tile(float (*acc)[4], const uint32_t a[4], const uint16_t (*tile)[kMaxD],
                                             int kk, int nn, int g, int t) {
  CL_UNROLL
  for (int n = 0; n < kMmaMaxN; ++n) {
    if (n < nn) {
      uint32_t bb[2];
      b_frag_col(bb, tile, kk * 16 + 2 * t, n * 8 + g);
      mma16816<T>(acc[n], a, bb, acc[n]);
    }
  }
}

// Stores row half rr (0: the lane's row g, 1: row g + 8) of a [16, D] accumulator, times mul, to row[column].
template <typename T>
__device__ __forceinline__ void store_acc_row(T* row, const float (*acc)[4], int rr, float mul, int nn, int t) {
  CL_UNROLL
  for (int n = 0; n < kMmaMaxN; ++n) {
    if (n < nn) {
      row[n * 8 + 2 * t] = from_float<T>(acc[n][2 * rr] * mul);
      row[n * 8 + 2 * t + 1] = from_float<T>(acc[n][2 * rr + 1] * mul);
    }
  }
}

// Stores the lane's rows r0 and r0 + 8 (those below n) of a [16, D] accumulator, times mul, to dst[r * ld + column].
template <typename T>
__device__ __forceinline__ void store_acc_rows(T* dst, int64_t ld, int r0, int n, const float (*acc)[4], float mul,
                                               int nn, int t) {
  CL_UNROLL
  for (int rr = 0; rr < 2; ++rr)
    if (r0 + 8 * rr < n) store_acc_row(dst + (r0 + 8 * rr) * ld, acc, rr, mul, nn, t);
}

}  // namespace chameleon_lite::cuda_kernels
