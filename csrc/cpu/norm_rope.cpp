// Inference-time RMSNorm and rotary embedding for float32 activations. A decode step normalises and rotates a few
// rows per layer, where eager PyTorch spends five to eight small kernels (and their dispatch) per call; these run
// each call as one pass. Training keeps the differentiable PyTorch forms (chameleon_lite/model/transformer.py).
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/ATen.h>: see cpu/kernels.h
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include "cpu/kernels.h"
#include <ATen/Parallel.h>

#include <cmath>

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
