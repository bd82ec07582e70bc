// Per-row loops of the Snake activation y = x + sin(a x)^2 / a (the audio codec's nonlinearity) and its backward.
// Included once per instruction set (CL_SNAKE_ISA names the namespace): portably from snake.cpp and with AVX2/FMA
// from snake_avx2.cpp, where at::vec::Vectorized<float> maps onto 256-bit registers and sin/cos onto SLEEF.
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>

namespace chameleon_lite::cpu {

#ifndef CL_SNAKE_ROW_OPS_DEFINED
#define CL_SNAKE_ROW_OPS_DEFINED
struct SnakeRowOps {
  // y[i] = x[i] + sin(a x[i])^2 * inv_a
  void (*forward)(const float* x, float* y, int64_t n, float a, float inv_a);
  // gx[i] = g[i] (1 + sin(2 a x[i])); returns sum_i g[i] (x[i] sin(2 a x[i]) - sin(a x[i])^2 * inv_a), the
  // gradient with respect to log(a) (accumulated in double over blocks).
  double (*backward)(const float* g, const float* x, float* gx, int64_t n, float a, float inv_a);
};
const SnakeRowOps& snake_row_ops_avx2();
#endif

namespace CL_SNAKE_ISA {
using Vec = at::vec::Vectorized<float>;

inline void snake_forward_row(const float* x, float* y, int64_t n, float a, float inv_a) {
  const Vec va(a), vi(inv_a);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec xv = Vec::loadu(x + i);
    const Vec s = (xv * va).sin();
    at::vec::fmadd(s * s, vi, xv).store(y + i);
  }
  for (; i < n; ++i) {
    const float s = std::sin(a * x[i]);
    y[i] = x[i] + s * s * inv_a;
  }
}

inline double snake_backward_row(const float* g, const float* x, float* gx, int64_t n, float a, float inv_a) {
  constexpr int64_t kBlock = 1024;  // float lanes sum at most this many terms before joining the double total
  const Vec va(a), vi(inv_a), one(1.f), two(2.f);
  double total = 0.0;
  int64_t i = 0;
  while (i < n) {
    const int64_t stop = std::min(n, i + kBlock);
    Vec acc(0.f);
    for (; i + Vec::size() <= stop; i += Vec::size()) {
      const Vec xv = Vec::loadu(x + i), gv = Vec::loadu(g + i);
      const Vec t = xv * va;
      const Vec s = t.sin(), c = t.cos();
      const Vec s2 = two * s * c;  // sin(2 a x)
      (gv * (one + s2)).store(gx + i);
      acc = at::vec::fmadd(gv, xv * s2 - s * s * vi, acc);
    }
    float part = at::vec::vec_reduce_all<float>([](Vec& p, Vec& q) { return p + q; }, acc);
    for (; i < stop; ++i) {
      const float t = a * x[i], s = std::sin(t), s2 = 2.f * s * std::cos(t);
      gx[i] = g[i] * (1.f + s2);
      part += g[i] * (x[i] * s2 - s * s * inv_a);
    }
    total += part;
  }
  return total;
}

}  // namespace CL_SNAKE_ISA
}  // namespace chameleon_lite::cpu
