// RMSNorm and rotary embedding in one pass per call. A decode step normalises and rotates a few rows per layer,
// where eager PyTorch spends five to eight small kernels (and their dispatch) per call (rms_norm, rope: float32).
// Training on CPU uses the same one-pass idea with gradients (chameleon_lite/ops/norm.py): rms_norm_fwd/_bwd and
// rope (float32 or bfloat16 activations, float32 arithmetic), where the references' chains of elementwise kernels
// and dtype copies were about a fifth of a small model's training step.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/ATen.h>: see cpu/kernels.h
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

#include "cpu/kernels.h"
#include <ATen/Parallel.h>

#include <cmath>
#include <tuple>
#include <vector>

namespace chameleon_lite::cpu {
// x [..., D] -> x / sqrt(mean(x^2) + eps) * weight, row by row (the sum of squares in double).
at::Tensor rms_norm_cpu(const at::Tensor& x_in, const at::Tensor& weight_in, double eps) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && weight_in.scalar_type() == at::kFloat,
              "rms_norm: x and weight must be float32, got ", x_in.scalar_type(), " and ", weight_in.scalar_type());
  TORCH_CHECK(x_in.dim() >= 1 && weight_in.dim() == 1 && weight_in.size(0) == x_in.size(-1),
              "rms_norm: weight must be [D] with D the last dimension of x, got ", weight_in.sizes(), " and ",
              x_in.sizes());
  const at::Tensor x = x_in.contiguous(), w = weight_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* xr = xp + r * D;
      double ss = 0.0;
      for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(xr[i]) * xr[i];
      const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
      float* yr = yp + r * D;
      for (int64_t i = 0; i < D; ++i) yr[i] = xr[i] * inv * wp[i];
    }
  });
  return y;
}

namespace {

constexpr int64_t kNormBlock = 64;  // rows per partial sum of the weight gradient (fixed: no thread-count dependence)

void check_norm_args(const char* op, const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK((x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16) && w.scalar_type() == at::kFloat,
              op, ": x must be float32 or bfloat16 and weight float32, got ", x.scalar_type(), " and ",
              w.scalar_type());
  TORCH_CHECK(x.dim() >= 1 && w.dim() == 1 && w.size(0) == x.size(-1), op,
              ": weight must be [D] with D the last dimension of x, got ", w.sizes(), " and ", x.sizes());
}

template <typename T>
void rms_fwd_rows(const T* xp, const float* wp, T* yp, float* rp, int64_t rows, int64_t D, float eps) {
  at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    std::vector<float> xf(D);
    for (int64_t r = r0; r < r1; ++r) {
      const T* xr = xp + r * D;
      float ss = 0.f;
      for (int64_t i = 0; i < D; ++i) {
        xf[i] = static_cast<float>(xr[i]);
        ss += xf[i] * xf[i];
      }
      const float inv = 1.f / std::sqrt(ss / static_cast<float>(D) + eps);
      rp[r] = inv;
      T* yr = yp + r * D;
      for (int64_t i = 0; i < D; ++i) yr[i] = static_cast<T>(xf[i] * inv * wp[i]);
    }
  });
}

// dx = r u - x r^3 mean(u x) with u = g w; dw = sum over rows of g x r, in blocks of kNormBlock rows summed in order.
template <typename T>
void rms_bwd_rows(const T* gp, const T* xp, const float* wp, const float* rp, T* dxp, float* dwp, int64_t rows,
                  int64_t D) {
  const int64_t nb = (rows + kNormBlock - 1) / kNormBlock;
  std::vector<float> part(nb * D, 0.f);
  at::parallel_for(0, nb, 1, [&](int64_t b0, int64_t b1) {
    std::vector<float> xf(D), u(D);
    for (int64_t b = b0; b < b1; ++b) {
      float* pw = part.data() + b * D;
      for (int64_t r = b * kNormBlock; r < std::min(rows, (b + 1) * kNormBlock); ++r) {
        const T* gr = gp + r * D;
        const T* xr = xp + r * D;
        const float inv = rp[r];
        float s = 0.f;
        for (int64_t i = 0; i < D; ++i) {
          xf[i] = static_cast<float>(xr[i]);
          const float g = static_cast<float>(gr[i]);
          u[i] = g * wp[i];
          s += u[i] * xf[i];
          pw[i] += g * xf[i] * inv;
        }
        const float c = inv * inv * inv * s / static_cast<float>(D);
        T* dr = dxp + r * D;
        for (int64_t i = 0; i < D; ++i) dr[i] = static_cast<T>(inv * u[i] - xf[i] * c);
      }
    }
  });
  for (int64_t i = 0; i < D; ++i) {
    float acc = 0.f;
    for (int64_t b = 0; b < nb; ++b) acc += part[b * D + i];
    dwp[i] = acc;
  }
}

template <typename T>
void rope_rows(const T* xp, const float* cp, const float* sp, T* yp, int64_t BL, int64_t H, int64_t D) {
  const int64_t d = D / 2;
  at::parallel_for(0, BL, std::max<int64_t>(1, 16384 / std::max<int64_t>(H * D, 1)), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const float *cr = cp + p * d, *sr = sp + p * d;
      for (int64_t h = 0; h < H; ++h) {
        const T* xr = xp + (p * H + h) * D;
        T* yr = yp + (p * H + h) * D;
        for (int64_t i = 0; i < d; ++i) {
          const float x1 = static_cast<float>(xr[i]), x2 = static_cast<float>(xr[i + d]);
          yr[i] = static_cast<T>(x1 * cr[i] - x2 * sr[i]);
          yr[i + d] = static_cast<T>(x2 * cr[i] + x1 * sr[i]);
        }
      }
    }
  });
}

}  // namespace

// Training RMSNorm: x [..., D] (float32 or bfloat16), weight [D] float32 -> (y in x's dtype, rstd [rows] float32).
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cpu(const at::Tensor& x_in, const at::Tensor& weight, double eps) {
  check_norm_args("rms_norm_fwd", x_in, weight);
  const at::Tensor x = x_in.contiguous(), w = weight.contiguous();
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (x.scalar_type() == at::kFloat)
    rms_fwd_rows(x.data_ptr<float>(), w.data_ptr<float>(), y.data_ptr<float>(), rstd.data_ptr<float>(), rows, D,
                 static_cast<float>(eps));
  else
    rms_fwd_rows(x.data_ptr<at::BFloat16>(), w.data_ptr<float>(), y.data_ptr<at::BFloat16>(), rstd.data_ptr<float>(),
                 rows, D, static_cast<float>(eps));
  return {y, rstd};
}

// Its backward -> (grad x in x's dtype, grad weight float32 [D]).
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cpu(const at::Tensor& grad_in, const at::Tensor& x_in,
                                                    const at::Tensor& weight, const at::Tensor& rstd_in) {
  check_norm_args("rms_norm_bwd", x_in, weight);
  const at::Tensor x = x_in.contiguous(), w = weight.contiguous();
  const int64_t D = x.size(-1), rows = D == 0 ? 0 : x.numel() / D;
  TORCH_CHECK(grad_in.sizes() == x.sizes(), "rms_norm_bwd: grad must be shaped like x ", x.sizes(), ", got ",
              grad_in.sizes());
  TORCH_CHECK(rstd_in.scalar_type() == at::kFloat && rstd_in.numel() == rows, "rms_norm_bwd: rstd must be float32 [",
              rows, "]");
  const at::Tensor g = grad_in.to(x.scalar_type()).contiguous(), rstd = rstd_in.contiguous();
  at::Tensor dx = at::empty_like(x);
  at::Tensor dw = at::zeros({D}, w.options());
  if (rows == 0) return {dx, dw};
  if (x.scalar_type() == at::kFloat)
    rms_bwd_rows(g.data_ptr<float>(), x.data_ptr<float>(), w.data_ptr<float>(), rstd.data_ptr<float>(),
                 dx.data_ptr<float>(), dw.data_ptr<float>(), rows, D);
  else
    rms_bwd_rows(g.data_ptr<at::BFloat16>(), x.data_ptr<at::BFloat16>(), w.data_ptr<float>(), rstd.data_ptr<float>(),
                 dx.data_ptr<at::BFloat16>(), dw.data_ptr<float>(), rows, D);
  return {dx, dw};
}

// x [B, L, H, D]; cos, sin [B, L, D/2] -> (x1 c - x2 s, x2 c + x1 s) for the halves x1 = x[..., :D/2], x2 = x[..., D/2:].
// x float32 or bfloat16 (computed in float32, rounded once); cos and sin float32. The transpose of a rotation is the
// rotation with -sin, which is how the training path's backward uses this op too.
at::Tensor rope_cpu(const at::Tensor& x_in, const at::Tensor& cos_in, const at::Tensor& sin_in) {
  TORCH_CHECK((x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16) &&
                        cos_in.scalar_type() == at::kFloat && sin_in.scalar_type() == at::kFloat,
                    "rope: x must be float32 or bfloat16, cos and sin float32");
  TORCH_CHECK(x_in.dim() == 4 && x_in.size(3) % 2 == 0, "rope: x must be [B, L, H, D] with even D, got ",
                    x_in.sizes());
  const int64_t B = x_in.size(0), L = x_in.size(1), H = x_in.size(2), D = x_in.size(3), d = D / 2;
  TORCH_CHECK(cos_in.sizes() == at::IntArrayRef({B, L, d}) && sin_in.sizes() == cos_in.sizes(),
                    "rope: cos and sin must be [B, L, D/2] = [", B, ", ", L, ", ", d, "], got ", cos_in.sizes(),
                    " and ", sin_in.sizes());
  const at::Tensor x = x_in.contiguous(), c = cos_in.contiguous(), s = sin_in.contiguous();
  at::Tensor y = at::empty_like(x);
  const float *cp = c.data_ptr<float>(), *sp = s.data_ptr<float>();
  if (x.scalar_type() == at::kFloat)
    rope_rows(x.data_ptr<float>(), cp, sp, y.data_ptr<float>(), B * L, H, D);
  else
    rope_rows(x.data_ptr<at::BFloat16>(), cp, sp, y.data_ptr<at::BFloat16>(), B * L, H, D);
  return y;
}

}  // namespace chameleon_lite::cpu
