#pragma once
// Forward of the modality-aware attention (ARCHITECTURE §5), FlashAttention-2 style: each block owns a query tile
// and walks the visible key tiles with an online softmax; it writes out and the log-sum-exp the backward needs.
// Scalar kernel for every dtype, tensor-core kernel for bf16 / fp16 on sm_80+; run_attention_fwd picks one.
#include "cuda/attention/traits.cuh"

namespace chameleon_lite::cuda_kernels {

constexpr int kMmaBK = 32;  // tensor-core forward: keys per tile

// grid (ceil(L / kBQ), Hq, B), block kThreads. q: [B, L, Hq, D]; k, v: [B, L, Hkv, D]; out like q;
// lse: [B, Hq, L] (-inf for a row with nothing visible, whose out is 0).
template <typename T>
__global__ void __launch_bounds__(kThreads) attention_fwd_kernel(const T* q, const T* k, const T* v, const int32_t* doc,
                                                                 const int32_t* span, T* out, float* lse, int L, int Hq,
                                                                 int Hkv, int D, float scale) {
  __shared__ float qs[kBQ][kMaxD];
  __shared__ float ks[kBK][kMaxD];
  __shared__ float vs[kBK][kMaxD];
  __shared__ float s[kBQ][kBK];
  __shared__ float o[kBQ][kMaxD];
  __shared__ float m_s[kBQ], l_s[kBQ], alpha_s[kBQ];
  __shared__ attn::TileBounds qb;
  __shared__ int kind_s;

  const int tid = threadIdx.x;
  const int qi = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const int hk = h / (Hq / Hkv);
  const int i0 = qi * kBQ, mq = min(kBQ, L - i0);
  const int32_t* db = doc + static_cast<int64_t>(b) * L;
  const int32_t* sb = span + static_cast<int64_t>(b) * L;
  const int64_t ldq = static_cast<int64_t>(Hq) * D, ldk = static_cast<int64_t>(Hkv) * D;

  for (int e = tid; e < kBQ * D; e += kThreads) {
    const int r = e / D, c = e % D;
    qs[r][c] = r < mq ? to_float(q[(static_cast<int64_t>(b) * L + i0 + r) * ldq + h * D + c]) * scale : 0.f;
    o[r][c] = 0.f;
  }
  if (tid < kBQ) {
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.f;
  }
  if (tid == 0) qb = attn::tile_bounds(db, sb, i0, i0 + mq);
  __syncthreads();

  for_each_tile_pair<false>(L, kBK, i0, mq, db, sb, qb, kind_s, [&](const TilePair& tp) {
    load_tile_pair(ks, vs, k, v, static_cast<int64_t>(b) * L + tp.j0, tp.nk, ldk, static_cast<int64_t>(hk) * D, D, 1.f);
    __syncthreads();
    for (int e = tid; e < kBQ * kBK; e += kThreads) {
      const int r = e / kBK, c = e % kBK;
      float acc = 0.f;
      for (int d = 0; d < D; ++d) acc += qs[r][d] * ks[c][d];
      s[r][c] = tp.visible(r, c) ? acc : -INFINITY;
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
    for (int e = tid; e < kBQ * D; e += kThreads) {
      const int r = e / D, c = e % D;
      float acc = o[r][c] * alpha_s[r];
      for (int j = 0; j < kBK; ++j) acc += s[r][j] * vs[j][c];
      o[r][c] = acc;
    }
  });

  for (int e = tid; e < mq * D; e += kThreads) {
    const int r = e / D, c = e % D;
    const float l = l_s[r];
    out[(static_cast<int64_t>(b) * L + i0 + r) * ldq + h * D + c] = from_float<T>(l > 0.f ? o[r][c] / l : 0.f);
  }
  if (tid < mq)
    lse[(static_cast<int64_t>(b) * Hq + h) * L + i0 + tid] = attn::finish_lse(attn::SoftmaxState{m_s[tid], l_s[tid]});
}

// Tensor-core forward: 4 warps, kMmaBQ query rows per block (16 per warp), key tiles of kMmaBK, head dims a multiple
// of 16 up to 128. Q K^T and P V are mma m16n8k16 products with fp32 accumulation; the score fragments are rounded to
// the input type and reused in registers as the A operand of P V (FlashAttention-2), so P never goes through shared
// memory. The online softmax keeps, per lane, the state of its two rows (g and g + 8 of its warp's 16), reduced over
// the 4 lanes of a quad with shuffles. Same grid and arguments as the scalar kernel, with kMmaBQ-row blocks.
template <typename T>
__global__ void __launch_bounds__(kMmaThreads) attention_fwd_mma_kernel(const T* q, const T* k, const T* v,
                                                                       const int32_t* doc, const int32_t* span, T* out,
                                                                       float* lse, int L, int Hq, int Hkv, int D,
                                                                       float scale) {
  constexpr int kN = kMmaBK / 8;  // n-tiles of 8 keys in a score fragment
  __shared__ uint16_t qs[kMmaBQ][kMaxD];
  __shared__ uint16_t ks[kMmaBK][kMaxD];
  __shared__ uint16_t vs[kMmaBK][kMaxD];
  __shared__ attn::TileBounds qb;
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

  load_tile16(qs, kMmaBQ, q, static_cast<int64_t>(b) * L + i0, mq, ldq, static_cast<int64_t>(h) * D, D, tid,
              kMmaThreads);
  if (tid == 0) qb = attn::tile_bounds(db, sb, i0, i0 + mq);
  float m_r[2] = {-INFINITY, -INFINITY}, l_r[2] = {0.f, 0.f};
  float o[kMmaMaxN][4];
  CL_UNROLL
  for (int n = 0; n < kMmaMaxN; ++n)
    for (int i = 0; i < 4; ++i) o[n][i] = 0.f;
  __syncthreads();

  for_each_tile_pair<false>(L, kMmaBK, i0, mq, db, sb, qb, kind_s, [&](const TilePair& tp) {
    const int64_t krow = static_cast<int64_t>(b) * L + tp.j0, kcol = static_cast<int64_t>(hk) * D;
    load_tile16(ks, kMmaBK, k, krow, tp.nk, ldk, kcol, D, tid, kMmaThreads);
    load_tile16(vs, kMmaBK, v, krow, tp.nk, ldk, kcol, D, tid, kMmaThreads);
    __syncthreads();
    // S = Q K^T for this warp's 16 rows: kN n-tiles of 8 keys.
    float sfr[kN][4];
    CL_UNROLL
    for (int n = 0; n < kN; ++n)
      for (int i = 0; i < 4; ++i) sfr[n][i] = 0.f;
    for (int kd = 0; kd < nd; ++kd) {
      const int c = kd * 16 + 2 * t;
      uint32_t a[4];
      a_frag(a, qs, row0, c);
      CL_UNROLL
      for (int n = 0; n < kN; ++n) {
        uint32_t bb[2];
        b_frag_row(bb, ks, n * 8 + g, c);
        mma16816<T>(sfr[n], a, bb, sfr[n]);
      }
    }
    // scale and mask; then the online softmax of the lane's two rows
    CL_UNROLL
    for (int n = 0; n < kN; ++n)
      for (int i = 0; i < 4; ++i) {
        const int r = row0 + (i >= 2 ? 8 : 0), c = n * 8 + 2 * t + (i & 1);
        sfr[n][i] = tp.visible(r, c) ? sfr[n][i] * scale : -INFINITY;
      }
    CL_UNROLL
    for (int rr = 0; rr < 2; ++rr) {
      float mx = -INFINITY;
      for (int n = 0; n < kN; ++n) mx = fmaxf(mx, fmaxf(sfr[n][2 * rr], sfr[n][2 * rr + 1]));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float m_new = fmaxf(m_r[rr], mx);
      const float alpha = m_r[rr] == -INFINITY ? 0.f : __expf(m_r[rr] - m_new);
      float sum = 0.f;
      for (int n = 0; n < kN; ++n)
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
    // O += P V over k-steps of 16 keys; P's A fragment is the score fragment of n-tiles 2kk and 2kk + 1.
    CL_UNROLL
    for (int kk = 0; kk < kN / 2; ++kk) {
      uint32_t a[4];
      a_from_acc<T>(a, sfr, kk);
      mma_acc_tile<T>(o, a, vs, kk, nn, g, t);
    }
  });

  CL_UNROLL
  for (int rr = 0; rr < 2; ++rr) {
    const int r = row0 + 8 * rr;
    if (r < mq) {
      store_acc_row(out + (static_cast<int64_t>(b) * L + i0 + r) * ldq + h * D, o, rr,
                    l_r[rr] > 0.f ? 1.f / l_r[rr] : 0.f, nn, t);
      if (t == 0)
        lse[(static_cast<int64_t>(b) * Hq + h) * L + i0 + r] = attn::finish_lse(attn::SoftmaxState{m_r[rr], l_r[rr]});
    }
  }
}

// Raw pointers in, no checks (attention_op.h checks). tensor_cores: run the 16-bit mma kernel (the caller checked
// mma_supports and the device's compute capability).
template <typename T>
void run_attention_fwd(const T* q, const T* k, const T* v, const int32_t* doc, const int32_t* span, T* out, float* lse,
                       int B, int L, int Hq, int Hkv, int D, float scale, cl_stream_t stream,
                       bool tensor_cores = false) {
  if (B == 0 || L == 0 || Hq == 0) return;
  if constexpr (std::is_same_v<T, bf16_t> || std::is_same_v<T, half_t>) {
    if (tensor_cores) {
      const dim3 grid((L + kMmaBQ - 1) / kMmaBQ, Hq, B);
      CL_LAUNCH(attention_fwd_mma_kernel<T>, grid, dim3(kMmaThreads), 0, stream, q, k, v, doc, span, out, lse, L, Hq,
                Hkv, D, scale);
      return;
    }
  }
  const dim3 grid((L + kBQ - 1) / kBQ, Hq, B);
  CL_LAUNCH(attention_fwd_kernel<T>, grid, dim3(kThreads), 0, stream, q, k, v, doc, span, out, lse, L, Hq, Hkv, D,
            scale);
}

}  // namespace chameleon_lite::cuda_kernels
