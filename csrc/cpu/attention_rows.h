// Per-row loops of the fused attention kernels: running max, exp-and-sum, scaling. Included once per instruction
// set (CL_ATTN_ISA names the namespace): portably from attention.cpp, with AVX2/FMA from attention_avx2.cpp, where
// at::vec::Vectorized<float> then maps onto 256-bit registers (exp through SLEEF-style polynomials).
#include <ATen/cpu/vec/vec.h>

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
  void (*scale_row)(float* x, int64_t n, float a);
  float (*dot)(const float* a, const float* b, int64_t n);
  void (*axpy)(float a, const float* x, float* y, int64_t n);
};
const RowOps& row_ops_avx2();
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

inline void scale_row(float* x, int64_t n, float a) {
  int64_t i = 0;
  const Vec va(a);
  for (; i + Vec::size() <= n; i += Vec::size()) (Vec::loadu(x + i) * va).store(x + i);
  for (; i < n; ++i) x[i] *= a;
}
inline float dot(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  Vec acc(0.f);
  for (; i + Vec::size() <= n; i += Vec::size()) acc = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc);
  float s = at::vec::vec_reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, acc);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// y += a * x
inline void axpy(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
  const Vec va(a);
  for (; i + Vec::size() <= n; i += Vec::size()) at::vec::fmadd(va, Vec::loadu(x + i), Vec::loadu(y + i)).store(y + i);
  for (; i < n; ++i) y[i] += a * x[i];
}
}  // namespace CL_ATTN_ISA

}  // namespace chameleon_lite::cpu
