// Snake activation y = x + sin(a_c x)^2 / a_c with a_c = exp(log_alpha[c]) per channel, for x [B, C, T] fp32: one
// pass over x forward and one backward (eager PyTorch takes five to eight). Rows (b, c) run in parallel.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/ATen.h>: see cpu/kernels.h
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <tuple>
#include <vector>

#define CL_SNAKE_ISA portable
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/snake_rows.h"

namespace chameleon_lite::cpu {
namespace {

const SnakeRowOps& ops() {
  static const SnakeRowOps chosen = use_avx2("CHAMELEON_LITE_SNAKE_ISA")
                                        ? snake_row_ops_avx2()
                                        : SnakeRowOps{&portable::snake_forward_row, &portable::snake_backward_row};
  return chosen;
}

void check_args(const char* op, const at::Tensor& x, const at::Tensor& log_alpha) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be [B, C, T], got ", x.sizes());
  TORCH_CHECK(x.scalar_type() == at::kFloat && log_alpha.scalar_type() == at::kFloat, op,
              ": x and log_alpha must be float32, got ", x.scalar_type(), " and ", log_alpha.scalar_type());
  TORCH_CHECK(log_alpha.numel() == x.size(1), op, ": log_alpha must hold one value per channel (", x.size(1),
              "), got ", log_alpha.sizes());
}

// per-channel a and 1/a
std::pair<std::vector<float>, std::vector<float>> alphas(const at::Tensor& log_alpha) {
  const at::Tensor la = log_alpha.contiguous().reshape({-1});
  const float* p = la.data_ptr<float>();
  std::vector<float> a(la.numel()), inv(la.numel());
  for (int64_t c = 0; c < la.numel(); ++c) {
    a[c] = std::exp(p[c]);
    inv[c] = 1.f / a[c];
  }
  return {a, inv};
}

}  // namespace

at::Tensor snake_cpu(const at::Tensor& x_in, const at::Tensor& log_alpha) {
  check_args("snake", x_in, log_alpha);
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t C = x.size(1), T = x.size(2), rows = x.size(0) * C;
  if (x.numel() == 0) return y;
  auto [a, inv] = alphas(log_alpha);
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const auto& k = ops();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(T, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) k.forward(xp + r * T, yp + r * T, T, a[r % C], inv[r % C]);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> snake_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                 const at::Tensor& log_alpha) {
  check_args("snake_bwd", x_in, log_alpha);
  TORCH_CHECK(grad_in.sizes() == x_in.sizes() && grad_in.scalar_type() == at::kFloat,
              "snake_bwd: grad must be float32 shaped like x ", x_in.sizes(), ", got ", grad_in.scalar_type(), " ",
              grad_in.sizes());
  const at::Tensor x = x_in.contiguous(), g = grad_in.contiguous();
  at::Tensor gx = at::empty_like(x);
  const int64_t B = x.size(0), C = x.size(1), T = x.size(2), rows = B * C;
  std::vector<double> per_row(rows, 0.0);
  if (x.numel() > 0) {
    auto [a, inv] = alphas(log_alpha);
    const float *xp = x.data_ptr<float>(), *gp = g.data_ptr<float>();
    float* gxp = gx.data_ptr<float>();
    const auto& k = ops();
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(T, 1));
    at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        per_row[r] = k.backward(gp + r * T, xp + r * T, gxp + r * T, T, a[r % C], inv[r % C]);
    });
  }
  // fixed summation order over the batch: the same result at any thread count
  at::Tensor ga = at::zeros({C}, log_alpha.options());
  float* gap = ga.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    double s = 0.0;
    for (int64_t b = 0; b < B; ++b) s += per_row[b * C + c];
    gap[c] = static_cast<float>(s);
  }
  return {gx, ga.reshape(log_alpha.sizes())};
}

const char* snake_variant() {
  return ops().forward == &portable::snake_forward_row ? "portable" : "avx2";
}

}  // namespace chameleon_lite::cpu
