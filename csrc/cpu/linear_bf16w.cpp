// Weight-only bf16 linear for decode steps: y = x @ w^T with x float32 [..., K], w bfloat16 [N, K], float32
// accumulation and output. A decode step multiplies a handful of rows by every weight of the model, so its time is
// the time to stream the weights from memory; bf16 weights halve it, while the activations stay float32. Work is split
// over blocks of output features (each block reads its weight rows once for every x row), so the result does not
// depend on the thread count.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/ATen.h>: see cpu/kernels.h
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <algorithm>

#define CL_LINEAR_ISA portable
#include "cpu/isa.h"
#include "cpu/kernels.h"
#include "cpu/linear_rows.h"

namespace chameleon_lite::cpu {
namespace {

LinearBlockFn block_fn() {
  static const LinearBlockFn chosen =
      use_avx2("CHAMELEON_LITE_LINEAR_ISA") ? linear_block_avx2() : &portable::linear_block;
  return chosen;
}

}  // namespace

at::Tensor linear_bf16w_cpu(const at::Tensor& x_in, const at::Tensor& w_in) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat, "linear_bf16w: x must be float32, got ", x_in.scalar_type());
  TORCH_CHECK(w_in.scalar_type() == at::kBFloat16 && w_in.dim() == 2, "linear_bf16w: weight must be a 2-d bfloat16 ",
              "[N, K] tensor, got ", w_in.scalar_type(), " ", w_in.sizes());
  TORCH_CHECK(x_in.dim() >= 1 && x_in.size(-1) == w_in.size(1), "linear_bf16w: x's last dimension (",
              x_in.dim() >= 1 ? x_in.size(-1) : 0, ") must equal the weight's K (", w_in.size(1), ")");
  const int64_t K = w_in.size(1), N = w_in.size(0);
  const at::Tensor x = x_in.reshape({-1, K}).contiguous();
  const at::Tensor w = w_in.contiguous();
  const int64_t M = x.size(0);
  std::vector<int64_t> out_shape(x_in.sizes().begin(), x_in.sizes().end());
  out_shape.back() = N;
  at::Tensor y = at::empty({M, N}, x.options());
  if (M > 0 && N > 0) {
    const float* xp = x.data_ptr<float>();
    const uint16_t* wp = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
    float* yp = y.data_ptr<float>();
    const LinearBlockFn fn = block_fn();
    // Blocks of 16 weight rows (16 KB at K = 512) stay in L1/L2 while every block of four x rows passes over them.
    constexpr int64_t kRows = 16;
    const int64_t blocks = (N + kRows - 1) / kRows;
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n0 = b * kRows, n1 = std::min(N, n0 + kRows);
        for (int64_t m0 = 0; m0 < M; m0 += 4)
          fn(xp + m0 * K, K, std::min<int64_t>(4, M - m0), wp, K, n0, n1, yp + m0 * N, N);
      }
    });
  }
  return y.view(out_shape);
}

const char* linear_variant() { return block_fn() == &portable::linear_block ? "portable" : "avx2"; }

}  // namespace chameleon_lite::cpu
