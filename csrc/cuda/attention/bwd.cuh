#pragma once
// Backward of the modality-aware attention, FlashAttention-2 style from the saved log-sum-exp, in two passes that
// need no atomics:
//   dq pass    grid (query tiles, Hq, B): for its rows, delta = rowsum(dout * out) (written for the second pass),
//              then over the visible key tiles p = exp(s - lse), ds = p * (dout v^T - delta), dq += ds k * scale;
//   dk/dv pass grid (key tiles, Hkv, B): over the GQA heads of its KV head and their visible query tiles,
//              dv += p^T dout, dk += ds^T q * scale — the group's heads are summed inside the block.
// Both passes recompute P and dS of a tile pair with the same helper (bwd_scores for the scalar kernels,
// mma_bwd_scores + mma_bwd_probs for the tensor-core ones) and differ only in the tile they own, the tiles they
// stream and the products they accumulate.
#include "cuda/attention/traits.cuh"

namespace chameleon_lite::cuda_kernels {

// p = exp(s - lse) of one (query, key) pair, or 0 where the mask closes the pair.
__device__ __forceinline__ float bwd_prob(float s, float lse_r, bool ok) {
  return ok && lse_r != -INFINITY ? __expf(s - lse_r) : 0.f;
}

// lse and delta of `rows` query rows starting at `at0` (an index into [B, Hq, L]) into shared memory; -inf and 0
// past the n valid ones.
__device__ __forceinline__ void load_row_stats(float* lse_s, float* delta_s, const float* lse, const float* delta,
                                               int64_t at0, int rows, int n, int threads) {
  for (int r = threadIdx.x; r < rows; r += threads) {
    lse_s[r] = r < n ? lse[at0 + r] : -INFINITY;
    delta_s[r] = r < n ? delta[at0 + r] : 0.f;
  }
}

// ---------------------------------------------------------------------------------------------- scalar passes
// fp32 math out of fp32 [16, D] shared tiles; each thread owns kBwdElems elements (e = tid + i * kThreads) of the
// block's [16, D] result, in registers.
constexpr int kBwdElems = kBQ * kMaxD / kThreads;

// dS of a tile pair (and P when kWithP) into [kBQ][kBK] shared tiles: s = (q * scale) k^T, p = exp(s - lse),
// ds = p * (dout v^T - delta); qs holds q * scale.
template <bool kWithP>
__device__ __forceinline__ void bwd_scores(const TilePair& tp, const float (*qs)[kMaxD], const float (*dos)[kMaxD],
                                           const float (*ks)[kMaxD], const float (*vs)[kMaxD], const float* lse_s,
                                           const float* delta_s, float (*ps)[kBK], float (*ds)[kBK], int D) {
  for (int e = threadIdx.x; e < kBQ * kBK; e += kThreads) {
    const int r = e / kBK, c = e % kBK;
    float sc = 0.f, dp = 0.f;
    for (int d = 0; d < D; ++d) {
      sc += qs[r][d] * ks[c][d];
      dp += dos[r][d] * vs[c][d];
    }
    const float p = bwd_prob(sc, lse_s[r], tp.visible(r, c));
    if constexpr (kWithP) ps[r][c] = p;
    ds[r][c] = p * (dp - delta_s[r]);
  }
}

// acc += A B for the thread's elements of a [16, D] result: A a [16][16] tile (used transposed when kTransA), B a
// [16][D] one. dq += ds k (A = ds); dv += p^T dout, dk += ds^T q (A = p, ds transposed).
template <bool kTransA>
__device__ __forceinline__ void bwd_accumulate(float* acc, const float (*a)[kBK], const float (*bm)[kMaxD], int D) {
  for (int i = 0; i < kBwdElems; ++i) {
    const int e = threadIdx.x + i * kThreads, r = e / D, c = e % D;
    if (r < kBQ) {
      float sum = 0.f;
      for (int j = 0; j < kBK; ++j) sum += (kTransA ? a[j][r] : a[r][j]) * bm[j][c];
      acc[i] += sum;
    }
  }
}

// Rows r < n of the thread's elements of a [16, D] result, times mul, to dst[r * ld + c].
template <typename T>
__device__ __forceinline__ void bwd_store(T* dst, int64_t ld, int n, const float* acc, float mul, int D) {
  for (int i = 0; i < kBwdElems; ++i) {
    const int e = threadIdx.x + i * kThreads, r = e / D, c = e % D;
    if (r < n) dst[r * ld + c] = from_float<T>(acc[i] * mul);
  }
}

// grid (ceil(L / kBQ), Hq, B), block kThreads.
template <typename T>
__global__ void __launch_bounds__(kThreads) attention_bwd_dq_kernel(
    const T* dout, const T* q, const T* k, const T* v, const T* out, const float* lse, const int32_t* doc,
    const int32_t* span, T* dq, float* delta, int L, int Hq, int Hkv, int D, float scale) {
  __shared__ float qs[kBQ][kMaxD];   // q * scale
  __shared__ float dos[kBQ][kMaxD];  // dout
  __shared__ float ks[kBK][kMaxD];
  __shared__ float vs[kBK][kMaxD];
  __shared__ float ds[kBQ][kBK];
  __shared__ float lse_s[kBQ], delta_s[kBQ];
  __shared__ attn::TileBounds qb;
  __shared__ int kind_s;

  const int tid = threadIdx.x;
  const int qi = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int i0 = qi * kBQ, mq = min(kBQ, L - i0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;
  const int64_t qrow = static_cast<int64_t>(b) * L + i0, stat0 = (static_cast<int64_t>(b) * Hq + h) * L + i0;

  load_tile_pair(qs, dos, q, dout, qrow, mq, ldq, static_cast<int64_t>(h) * D, D, scale);
  {  // delta = rowsum(dout * out): 8 lanes per row, width-8 shuffles
    const int r = tid / 8, lane8 = tid % 8;
    float acc = 0.f;
    if (r < mq) {
      const int64_t base = (qrow + r) * ldq + h * D;
      for (int c = lane8; c < D; c += 8) acc += to_float(dout[base + c]) * to_float(out[base + c]);
    }
    for (int off = 4; off > 0; off >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, off, 8);
    if (lane8 == 0) {
      delta_s[r] = acc;
      lse_s[r] = r < mq ? lse[stat0 + r] : -INFINITY;
      if (r < mq) delta[stat0 + r] = acc;
    }
  }
  if (tid == 0) qb = attn::tile_bounds(db, sb, i0, i0 + mq);
  float acc[kBwdElems];
  for (int i = 0; i < kBwdElems; ++i) acc[i] = 0.f;
  __syncthreads();

  for_each_tile_pair<false>(L, kBK, i0, mq, db, sb, qb, kind_s, [&](const TilePair& tp) {
    load_tile_pair(ks, vs, k, v, static_cast<int64_t>(b) * L + tp.j0, tp.nk, ldk, static_cast<int64_t>(hk) * D, D,
                   1.f);
    __syncthreads();
    bwd_scores<false>(tp, qs, dos, ks, vs, lse_s, delta_s, nullptr, ds, D);
    __syncthreads();
    bwd_accumulate<false>(acc, ds, ks, D);
  });
  bwd_store(dq + qrow * ldq + h * D, ldq, mq, acc, scale, D);
}

// grid (ceil(L / kBK), Hkv, B), block kThreads.
template <typename T>
__global__ void __launch_bounds__(kThreads) attention_bwd_dkdv_kernel(
    const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta, const int32_t* doc,
    const int32_t* span, T* dk, T* dv, int L, int Hq, int Hkv, int D, float scale) {
  __shared__ float ks[kBK][kMaxD];
  __shared__ float vs[kBK][kMaxD];
  __shared__ float qs[kBQ][kMaxD];   // q * scale
  __shared__ float dos[kBQ][kMaxD];  // dout
  __shared__ float ps[kBQ][kBK];
  __shared__ float ds[kBQ][kBK];
  __shared__ float lse_s[kBQ], delta_s[kBQ];
  __shared__ attn::TileBounds kb;
  __shared__ int kind_s;

  const int tid = threadIdx.x;
  const int kj = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int group = Hq / Hkv;
  const int j0 = kj * kBK, nk = min(kBK, L - j0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;
  const int64_t krow = static_cast<int64_t>(b) * L + j0;

  load_tile_pair(ks, vs, k, v, krow, nk, ldk, static_cast<int64_t>(hk) * D, D, 1.f);
  if (tid == 0) kb = attn::tile_bounds(db, sb, j0, j0 + nk);
  float dk_acc[kBwdElems], dv_acc[kBwdElems];
  for (int i = 0; i < kBwdElems; ++i) dk_acc[i] = dv_acc[i] = 0.f;
  __syncthreads();

  for (int gh = 0; gh < group; ++gh) {
    const int h = hk * group + gh;
    for_each_tile_pair<true>(L, kBQ, j0, nk, db, sb, kb, kind_s, [&](const TilePair& tp) {
      load_tile_pair(qs, dos, q, dout, static_cast<int64_t>(b) * L + tp.i0, tp.mq, ldq, static_cast<int64_t>(h) * D,
                     D, scale);
      load_row_stats(lse_s, delta_s, lse, delta, (static_cast<int64_t>(b) * Hq + h) * L + tp.i0, kBQ, tp.mq,
                     kThreads);
      __syncthreads();
      bwd_scores<true>(tp, qs, dos, ks, vs, lse_s, delta_s, ps, ds, D);
      __syncthreads();
      bwd_accumulate<true>(dv_acc, ps, dos, D);
      bwd_accumulate<true>(dk_acc, ds, qs, D);
    });
  }
  bwd_store(dk + krow * ldk + hk * D, ldk, nk, dk_acc, 1.f, D);
  bwd_store(dv + krow * ldk + hk * D, ldk, nk, dv_acc, 1.f, D);
}

// ---------------------------------------------------------------------------------------------- tensor-core passes
// bf16 / fp16 on sm_80+, the same two passes: the block owns kMmaBQ rows (16 per warp) and streams tiles of
// kMmaBwdTile rows. The dq pass computes S = Q K^T and dP = dO V^T, then dQ += dS K; the dk/dv pass computes
// S^T = K Q^T and dP^T = V dO^T (so the key-major fragments it needs come out of the MMA directly), then
// dV += P^T dO and dK += dS^T Q. P and dS become A fragments in registers. 16 streamed rows keep the four 16-bit
// [*, 128] tiles of a pass within 48 KB of static shared memory.
constexpr int kMmaBwdTile = 16;
constexpr int kMmaBwdN = kMmaBwdTile / 8;  // n-tiles of 8 in the streamed dimension

// sf = A B^T and dpf = A' B'^T for the warp's 16 own rows (r0 and r0 + 8 of the lane; A, A' own tiles) against the
// kMmaBwdTile streamed rows (B, B'): the score and the dout-value products in one loop over the head dim.
template <typename T>
__device__ __forceinline__ void mma_bwd_scores(float (*sf)[4], float (*dpf)[4], const uint16_t (*a_s)[kMaxD],
                                               const uint16_t (*a_dp)[kMaxD], const uint16_t (*b_s)[kMaxD],
                                               const uint16_t (*b_dp)[kMaxD], int r0, int nd, int g, int t) {
  CL_UNROLL
  for (int n = 0; n < kMmaBwdN; ++n)
    for (int i = 0; i < 4; ++i) sf[n][i] = dpf[n][i] = 0.f;
  for (int kd = 0; kd < nd; ++kd) {
    const int c = kd * 16 + 2 * t;
    uint32_t as[4], adp[4];
    a_frag(as, a_s, r0, c);
    a_frag(adp, a_dp, r0, c);
    CL_UNROLL
    for (int n = 0; n < kMmaBwdN; ++n) {
      uint32_t bs[2], bdp[2];
      b_frag_row(bs, b_s, n * 8 + g, c);
      b_frag_row(bdp, b_dp, n * 8 + g, c);
      mma16816<T>(sf[n], as, bs, sf[n]);
      mma16816<T>(dpf[n], adp, bdp, dpf[n]);
    }
  }
}

// In place: sf <- P = exp(s * scale - lse), dpf <- dS = P * (dP - delta). Fragment rows are the block's own rows
// (r0, r0 + 8), columns the streamed ones; kKeyMajor: rows are keys and columns queries (the dk/dv pass).
// lse_s, delta_s: by tile-local query.
template <bool kKeyMajor>
__device__ __forceinline__ void mma_bwd_probs(float (*sf)[4], float (*dpf)[4], const TilePair& tp, int r0,
                                              const float* lse_s, const float* delta_s, float scale, int t) {
  CL_UNROLL
  for (int n = 0; n < kMmaBwdN; ++n)
    for (int i = 0; i < 4; ++i) {
      const int own = r0 + (i >= 2 ? 8 : 0), streamed = n * 8 + 2 * t + (i & 1);
      const int qr = kKeyMajor ? streamed : own, kc = kKeyMajor ? own : streamed;
      const float pr = bwd_prob(sf[n][i] * scale, lse_s[qr], tp.visible(qr, kc));
      sf[n][i] = pr;
      dpf[n][i] = pr * (dpf[n][i] - delta_s[qr]);
    }
}

// grid (ceil(L / kMmaBQ), Hq, B), block kMmaThreads.
template <typename T>
__global__ void __launch_bounds__(kMmaThreads) attention_bwd_dq_mma_kernel(
    const T* dout, const T* q, const T* k, const T* v, const T* out, const float* lse, const int32_t* doc,
    const int32_t* span, T* dq, float* delta, int L, int Hq, int Hkv, int D, float scale) {
  __shared__ uint16_t qs[kMmaBQ][kMaxD];
  __shared__ uint16_t dos[kMmaBQ][kMaxD];
  __shared__ uint16_t ks[kMmaBwdTile][kMaxD];
  __shared__ uint16_t vs[kMmaBwdTile][kMaxD];
  __shared__ float lse_s[kMmaBQ], delta_s[kMmaBQ];
  __shared__ attn::TileBounds qb;
  __shared__ int kind_s;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int qi = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int i0 = qi * kMmaBQ, mq = min(kMmaBQ, L - i0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;
  const int64_t qrow = static_cast<int64_t>(b) * L + i0, stat0 = (static_cast<int64_t>(b) * Hq + h) * L + i0;
  const int nn = D / 8, nd = D / 16;
  const int row0 = warp * 16 + g;

  load_tile16(qs, kMmaBQ, q, qrow, mq, ldq, static_cast<int64_t>(h) * D, D, tid, kMmaThreads);
  load_tile16(dos, kMmaBQ, dout, qrow, mq, ldq, static_cast<int64_t>(h) * D, D, tid, kMmaThreads);
  for (int r = tid; r < kMmaBQ; r += kMmaThreads) {  // delta = rowsum(dout * out), one thread per row
    float acc = 0.f;
    if (r < mq) {
      const int64_t base = (qrow + r) * ldq + static_cast<int64_t>(h) * D;
      for (int c = 0; c < D; ++c) acc += to_float(dout[base + c]) * to_float(out[base + c]);
      delta[stat0 + r] = acc;
    }
    delta_s[r] = acc;
    lse_s[r] = r < mq ? lse[stat0 + r] : -INFINITY;
  }
  if (tid == 0) qb = attn::tile_bounds(db, sb, i0, i0 + mq);
  float acc[kMmaMaxN][4];
  CL_UNROLL
  for (int n = 0; n < kMmaMaxN; ++n)
    for (int i = 0; i < 4; ++i) acc[n][i] = 0.f;
  __syncthreads();

  for_each_tile_pair<false>(L, kMmaBwdTile, i0, mq, db, sb, qb, kind_s, [&](const TilePair& tp) {
    const int64_t krow = static_cast<int64_t>(b) * L + tp.j0, kcol = static_cast<int64_t>(hk) * D;
    load_tile16(ks, kMmaBwdTile, k, krow, tp.nk, ldk, kcol, D, tid, kMmaThreads);
    load_tile16(vs, kMmaBwdTile, v, krow, tp.nk, ldk, kcol, D, tid, kMmaThreads);
    __syncthreads();
    float sf[kMmaBwdN][4], dpf[kMmaBwdN][4];
    mma_bwd_scores<T>(sf, dpf, qs, dos, ks, vs, row0, nd, g, t);
    mma_bwd_probs<false>(sf, dpf, tp, row0, lse_s, delta_s, scale, t);
    CL_UNROLL
    for (int kk = 0; kk < kMmaBwdN / 2; ++kk) {
      uint32_t a[4];
      a_from_acc<T>(a, dpf, kk);
      mma_acc_tile<T>(acc, a, ks, kk, nn, g, t);
    }
  });
  store_acc_rows(dq + qrow * ldq + static_cast<int64_t>(h) * D, ldq, row0, mq, acc, scale, nn, t);
}

// grid (ceil(L / kMmaBQ), Hkv, B), block kMmaThreads: kMmaBQ keys per block, over the GQA heads of its KV head.
template <typename T>
__global__ void __launch_bounds__(kMmaThreads) attention_bwd_dkdv_mma_kernel(
    const T* dout, const T* q, const T* k, const T* v, const float* lse, const float* delta, const int32_t* doc,
    const int32_t* span, T* dk, T* dv, int L, int Hq, int Hkv, int D, float scale) {
  __shared__ uint16_t ks[kMmaBQ][kMaxD];
  __shared__ uint16_t vs[kMmaBQ][kMaxD];
  __shared__ uint16_t qs[kMmaBwdTile][kMaxD];
  __shared__ uint16_t dos[kMmaBwdTile][kMaxD];
  __shared__ float lse_s[kMmaBwdTile], delta_s[kMmaBwdTile];
  __shared__ attn::TileBounds kb;
  __shared__ int kind_s;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const int kj = blockIdx.x, hk = blockIdx.y, b = blockIdx.z;
  const int group = Hq / Hkv;
  const int j0 = kj * kMmaBQ, nk = min(kMmaBQ, L - j0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;
  const int64_t krow = static_cast<int64_t>(b) * L + j0, kcol = static_cast<int64_t>(hk) * D;
  const int nn = D / 8, nd = D / 16;
  const int key0 = warp * 16 + g;  // block-local keys of this lane: key0 and key0 + 8

  load_tile16(ks, kMmaBQ, k, krow, nk, ldk, kcol, D, tid, kMmaThreads);
  load_tile16(vs, kMmaBQ, v, krow, nk, ldk, kcol, D, tid, kMmaThreads);
  if (tid == 0) kb = attn::tile_bounds(db, sb, j0, j0 + nk);
  float dka[kMmaMaxN][4], dva[kMmaMaxN][4];
  CL_UNROLL
  for (int n = 0; n < kMmaMaxN; ++n)
    for (int i = 0; i < 4; ++i) dka[n][i] = dva[n][i] = 0.f;
  __syncthreads();

  for (int gh = 0; gh < group; ++gh) {
    const int h = hk * group + gh;
    for_each_tile_pair<true>(L, kMmaBwdTile, j0, nk, db, sb, kb, kind_s, [&](const TilePair& tp) {
      const int64_t qrow = static_cast<int64_t>(b) * L + tp.i0, qcol = static_cast<int64_t>(h) * D;
      load_tile16(qs, kMmaBwdTile, q, qrow, tp.mq, ldq, qcol, D, tid, kMmaThreads);
      load_tile16(dos, kMmaBwdTile, dout, qrow, tp.mq, ldq, qcol, D, tid, kMmaThreads);
      load_row_stats(lse_s, delta_s, lse, delta, (static_cast<int64_t>(b) * Hq + h) * L + tp.i0, kMmaBwdTile,
                     tp.mq, kMmaThreads);
      __syncthreads();
      float sf[kMmaBwdN][4], dpf[kMmaBwdN][4];  // P^T and dS^T: element (key, query)
      mma_bwd_scores<T>(sf, dpf, ks, vs, qs, dos, key0, nd, g, t);
      mma_bwd_probs<true>(sf, dpf, tp, key0, lse_s, delta_s, scale, t);
      CL_UNROLL
      for (int kk = 0; kk < kMmaBwdN / 2; ++kk) {
        uint32_t ap[4], ads[4];
        a_from_acc<T>(ap, sf, kk);
        a_from_acc<T>(ads, dpf, kk);
        mma_acc_tile<T>(dva, ap, dos, kk, nn, g, t);
        mma_acc_tile<T>(dka, ads, qs, kk, nn, g, t);
      }
    });
  }
  store_acc_rows(dk + krow * ldk + kcol, ldk, key0, nk, dka, scale, nn, t);
  store_acc_rows(dv + krow * ldk + kcol, ldk, key0, nk, dva, 1.f, nn, t);
}

// Raw pointers in, no checks (attention_op.h checks). delta: workspace of B * Hq * L floats. tensor_cores: the 16-bit
// mma kernels (same conditions as the forward's).
template <typename T>
void run_attention_bwd(const T* dout, const T* q, const T* k, const T* v, const T* out, const float* lse,
                       const int32_t* doc, const int32_t* span, T* dq, T* dk, T* dv, float* delta, int B, int L, int Hq,
                       int Hkv, int D, float scale, cl_stream_t stream, bool tensor_cores = false) {
  if (B == 0 || L == 0 || Hq == 0) return;
  if constexpr (std::is_same_v<T, bf16_t> || std::is_same_v<T, half_t>) {
    if (tensor_cores) {
      const int blocks = (L + kMmaBQ - 1) / kMmaBQ;
      CL_LAUNCH(attention_bwd_dq_mma_kernel<T>, dim3(blocks, Hq, B), dim3(kMmaThreads), 0, stream, dout, q, k, v, out,
                lse, doc, span, dq, delta, L, Hq, Hkv, D, scale);
      CL_LAUNCH(attention_bwd_dkdv_mma_kernel<T>, dim3(blocks, Hkv, B), dim3(kMmaThreads), 0, stream, dout, q, k, v,
                lse, delta, doc, span, dk, dv, L, Hq, Hkv, D, scale);
      return;
    }
  }
  CL_LAUNCH(attention_bwd_dq_kernel<T>, dim3((L + kBQ - 1) / kBQ, Hq, B), dim3(kThreads), 0, stream, dout, q, k, v, out,
            lse, doc, span, dq, delta, L, Hq, Hkv, D, scale);
  CL_LAUNCH(attention_bwd_dkdv_kernel<T>, dim3((L + kBK - 1) / kBK, Hkv, B), dim3(kThreads), 0, stream, dout, q, k, v,
            lse, delta, doc, span, dk, dv, L, Hq, Hkv, D, scale);
}

}  // namespace chameleon_lite::cuda_kernels
