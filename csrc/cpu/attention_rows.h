// Per-row loops of the fused attention kernels: running max, exp-and-sum, scaling. Included once per instruction
// set (CL_ATTN_ISA names the namespace): portably from attention.cpp, with AVX2/FMA from attention_avx2.cpp and
// AVX-512 from attention_avx512.cpp, where
// at::vec::Vectorized<float> then maps onto 256-bit registers (exp through SLEEF-style polynomials).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace chameleon_lite::cpu {

#ifndef CL_ATTN_ROW_OPS_DEFINED
#define CL_ATTN_ROW_OPS_DEFINED
struct RowOps {
  float (*row_max)(const float* x, int64_t n);
  float (*exp_sub_sum)(float* x, int64_t n, float m);
  void (*exp_sub_vec)(float* x, const float* m, int64_t n);
  // dS from P and dP in place: dp <- p * (dp - delta), with one delta (a query row) or one per column (a key row of
  // a transposed tile)
  void (*grad_row)(const float* p, float* dp, float delta, int64_t n);
  void (*grad_row_vec)(const float* p, float* dp, const float* delta, int64_t n);
  // fp32 -> bf16, rounded to nearest even (the A operands of the bf16 products)
  void (*to_bf16)(const float* x, c10::BFloat16* y, int64_t n);
  // The mask predicate (csrc/common/attention_mask.h) over one row of a partial tile, disallowed -> -inf. mask_row:
  // query (doc, span) against keys doc_k[c], span_k[c] at offsets c <= last_causal before it; mask_row_t (a
  // transposed tile): key (doc, span) against queries doc_q[c], span_q[c], at or after it from c = first_causal.
  void (*mask_row)(float* s, const int32_t* doc_k, const int32_t* span_k, int64_t n, int32_t doc, int32_t span,
                   int64_t last_causal);
  void (*mask_row_t)(float* s, const int32_t* doc_q, const int32_t* span_q, int64_t n, int32_t doc, int32_t span,
                     int64_t first_causal);
  void (*scale_row)(float* x, int64_t n, float a);
  // Decode against a cache read in place (K_j = k + j * ks, V_j = v + j * vs, D values each):
  // s[j] = q . K_j for j < nk, and o[:D] += sum_j p[j] V_j; float32 and bfloat16 caches.
  void (*scores_f32)(const float* q, const float* k, int64_t ks, int64_t nk, int64_t D, float* s);
  void (*scores_bf16)(const float* q, const c10::BFloat16* k, int64_t ks, int64_t nk, int64_t D, float* s);
  void (*values_f32)(const float* p, const float* v, int64_t vs, int64_t nk, int64_t D, float* o);
  void (*values_bf16)(const float* p, const c10::BFloat16* v, int64_t vs, int64_t nk, int64_t D, float* o);
};
const RowOps& row_ops_avx2();
const RowOps& row_ops_avx512();
#endif

namespace CL_ATTN_ISA {
using Vec = at::vec::Vectorized<float>;

inline float row_max(const float* x, int64_t n) {
  int64_t i = 0;
  Vec vm(-std::numeric_limits<float>::infinity());
  for (; i + Vec::size() <= n; i += Vec::size()) vm = at::vec::maximum(vm, Vec::loadu(x + i));
  float m = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return at::vec::maximum(a, b); }, vm);
  for (; i < n; ++i) m = std::max(m, x[i]);
  return m;
}

// x <- exp(x - m) in place; returns the sum. exp(-inf) = 0 covers masked entries.
inline float exp_sub_sum(float* x, int64_t n, float m) {
  int64_t i = 0;
  const Vec vm(m);
  Vec acc(0.f);
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec e = (Vec::loadu(x + i) - vm).exp_u20();
    e.store(x + i);
    acc = acc + e;
  }
  float s = at::vec::vec_reduce_all<float>([](Vec& a, Vec& b) { return a + b; }, acc);
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - m);
    s += x[i];
  }
  return s;
}

// x <- exp(x - m) elementwise against a vector of maxima (the transposed tiles of the backward: one column per query,
// each with its own log-sum-exp); m = +inf gives 0.
inline void exp_sub_vec(float* x, const float* m, int64_t n) {
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) (Vec::loadu(x + i) - Vec::loadu(m + i)).exp_u20().store(x + i);
  for (; i < n; ++i) x[i] = std::exp(x[i] - m[i]);
}

inline void grad_row(const float* p, float* dp, float delta, int64_t n) {
  int64_t i = 0;
  const Vec vd(delta);
  for (; i + Vec::size() <= n; i += Vec::size())
    (Vec::loadu(p + i) * (Vec::loadu(dp + i) - vd)).store(dp + i);
  for (; i < n; ++i) dp[i] = p[i] * (dp[i] - delta);
}

inline void grad_row_vec(const float* p, float* dp, const float* delta, int64_t n) {
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size())
    (Vec::loadu(p + i) * (Vec::loadu(dp + i) - Vec::loadu(delta + i))).store(dp + i);
  for (; i < n; ++i) dp[i] = p[i] * (dp[i] - delta[i]);
}

// Branch-free so the compiler vectorises them in each build.
inline void mask_row(float* s, const int32_t* doc_k, const int32_t* span_k, int64_t n, int32_t doc, int32_t span,
                     int64_t last_causal) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < n; ++c) {
    const bool ok = (doc_k[c] == doc) & ((c <= last_causal) | ((span != 0) & (span_k[c] == span)));
    s[c] = ok ? s[c] : ninf;
  }
}

inline void mask_row_t(float* s, const int32_t* doc_q, const int32_t* span_q, int64_t n, int32_t doc, int32_t span,
                       int64_t first_causal) {
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < n; ++c) {
    const bool ok = (doc_q[c] == doc) & ((c >= first_causal) | ((span_q[c] != 0) & (span_q[c] == span)));
    s[c] = ok ? s[c] : ninf;
  }
}

inline void to_bf16(const float* x, c10::BFloat16* y, int64_t n) { at::vec::convert(x, y, n); }

inline void scale_row(float* x, int64_t n, float a) {
  int64_t i = 0;
  const Vec va(a);
  for (; i + Vec::size() <= n; i += Vec::size()) (Vec::loadu(x + i) * va).store(x + i);
  for (; i < n; ++i) x[i] *= a;
}

inline Vec load_vec(const float* p) { return Vec::loadu(p); }
inline Vec load_vec(const c10::BFloat16* p) {
  Vec out;
  at::vec::load_to_float<c10::BFloat16>(p, out);
  return out;
}
inline float to_float(float x) { return x; }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }

// Keys (or values) kPrefetch rows ahead are requested from memory: a head's rows are short runs spaced by the other
// heads, a pattern the hardware prefetchers follow poorly.
constexpr int64_t kPrefetch = 8;
template <typename T>
inline void prefetch_row(const T* p, int64_t D) {
  for (int64_t b = 0; b < D * static_cast<int64_t>(sizeof(T)); b += 64)
    __builtin_prefetch(reinterpret_cast<const char*>(p) + b, 0, 1);
}

// Four keys per pass: four independent accumulators keep the FMA pipes busy while each key streams once.
template <typename T>
inline void scores(const float* q, const T* k, int64_t ks, int64_t nk, int64_t D, float* s) {
  const auto sum = [](Vec& a, Vec& b) { return a + b; };
  const int64_t Dv = D - D % Vec::size();
  int64_t j = 0;
  for (; j + 4 <= nk; j += 4) {
    const T *k0 = k + j * ks, *k1 = k0 + ks, *k2 = k1 + ks, *k3 = k2 + ks;
    for (int64_t f = j + kPrefetch; f < std::min(nk, j + kPrefetch + 4); ++f) prefetch_row(k + f * ks, D);
    Vec a0(0.f), a1(0.f), a2(0.f), a3(0.f);
    for (int64_t d = 0; d < Dv; d += Vec::size()) {
      const Vec qv = Vec::loadu(q + d);
      a0 = at::vec::fmadd(qv, load_vec(k0 + d), a0);
      a1 = at::vec::fmadd(qv, load_vec(k1 + d), a1);
      a2 = at::vec::fmadd(qv, load_vec(k2 + d), a2);
      a3 = at::vec::fmadd(qv, load_vec(k3 + d), a3);
    }
    float r0 = at::vec::vec_reduce_all<float>(sum, a0), r1 = at::vec::vec_reduce_all<float>(sum, a1);
    float r2 = at::vec::vec_reduce_all<float>(sum, a2), r3 = at::vec::vec_reduce_all<float>(sum, a3);
    for (int64_t d = Dv; d < D; ++d) {
      r0 += q[d] * to_float(k0[d]);
      r1 += q[d] * to_float(k1[d]);
      r2 += q[d] * to_float(k2[d]);
      r3 += q[d] * to_float(k3[d]);
    }
    s[j] = r0, s[j + 1] = r1, s[j + 2] = r2, s[j + 3] = r3;
  }
  for (; j < nk; ++j) {
    const T* kj = k + j * ks;
    Vec a(0.f);
    for (int64_t d = 0; d < Dv; d += Vec::size()) a = at::vec::fmadd(Vec::loadu(q + d), load_vec(kj + d), a);
    float r = at::vec::vec_reduce_all<float>(sum, a);
    for (int64_t d = Dv; d < D; ++d) r += q[d] * to_float(kj[d]);
    s[j] = r;
  }
}

// o += sum_j p[j] V_j, 32 output values per pass held in four registers across all keys.
template <typename T>
inline void values(const float* p, const T* v, int64_t vs, int64_t nk, int64_t D, float* o) {
  constexpr int64_t W = 4 * Vec::size();
  int64_t d = 0;
  for (; d + W <= D; d += W) {
    Vec o0 = Vec::loadu(o + d), o1 = Vec::loadu(o + d + Vec::size());
    Vec o2 = Vec::loadu(o + d + 2 * Vec::size()), o3 = Vec::loadu(o + d + 3 * Vec::size());
    for (int64_t j = 0; j < nk; ++j) {
      if (d == 0 && j + kPrefetch < nk) prefetch_row(v + (j + kPrefetch) * vs, D);
      if (p[j] == 0.f) continue;  // masked keys
      const Vec pj(p[j]);
      const T* vj = v + j * vs + d;
      o0 = at::vec::fmadd(pj, load_vec(vj), o0);
      o1 = at::vec::fmadd(pj, load_vec(vj + Vec::size()), o1);
      o2 = at::vec::fmadd(pj, load_vec(vj + 2 * Vec::size()), o2);
      o3 = at::vec::fmadd(pj, load_vec(vj + 3 * Vec::size()), o3);
    }
    o0.store(o + d), o1.store(o + d + Vec::size()), o2.store(o + d + 2 * Vec::size()), o3.store(o + d + 3 * Vec::size());
  }
  for (; d < D; ++d) {
    float acc = o[d];
    for (int64_t j = 0; j < nk; ++j) acc += p[j] * to_float(v[j * vs + d]);
    o[d] = acc;
  }
}

inline void scores_f32(const float* q, const float* k, int64_t ks, int64_t nk, int64_t D, float* s) {
  scores(q, k, ks, nk, D, s);
}
inline void scores_bf16(const float* q, const c10::BFloat16* k, int64_t ks, int64_t nk, int64_t D, float* s) {
  scores(q, k, ks, nk, D, s);
}
inline void values_f32(const float* p, const float* v, int64_t vs, int64_t nk, int64_t D, float* o) {
  values(p, v, vs, nk, D, o);
}
inline void values_bf16(const float* p, const c10::BFloat16* v, int64_t vs, int64_t nk, int64_t D, float* o) {
  values(p, v, vs, nk, D, o);
}
// This build's loops, for the run-time choice in attention.cpp.
inline RowOps make_row_ops() {
  return RowOps{&row_max,    &exp_sub_sum, &exp_sub_vec, &grad_row,   &grad_row_vec, &to_bf16,    &mask_row,
                &mask_row_t, &scale_row,   &scores_f32,  &scores_bf16, &values_f32,  &values_bf16};
}

}  // namespace CL_ATTN_ISA

}  // namespace chameleon_lite::cpu
