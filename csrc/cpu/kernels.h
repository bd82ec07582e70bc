// The CPU kernels' entry points, registered for the CPU dispatch key in csrc/ops.cpp. The kernel files include
// only <ATen/core/Tensor.h> and the ATen/ops headers they call (built with TORCH_ASSERT_ONLY_METHOD_OPERATORS),
// so the heavy <ATen/ATen.h> and <torch/library.h> are parsed once, by ops.cpp, instead of once per kernel file.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace chameleon_lite::cpu {

// attention.cpp
std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                                     const at::Tensor& doc, const at::Tensor& span, double scale);
std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(const at::Tensor& dout, const at::Tensor& q,
                                                                 const at::Tensor& k, const at::Tensor& v,
                                                                 const at::Tensor& out, const at::Tensor& lse,
                                                                 const at::Tensor& doc, const at::Tensor& span,
                                                                 double scale);
at::Tensor attention_decode_cpu(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& cache_lens, double scale);
// linear_bf16w.cpp
at::Tensor linear_bf16w_cpu(const at::Tensor& x, const at::Tensor& w);
// norm_rope.cpp
at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> rms_norm_fwd_cpu(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> rms_norm_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                    const at::Tensor& weight, const at::Tensor& rstd);
at::Tensor rope_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
// snake.cpp
at::Tensor snake_cpu(const at::Tensor& x, const at::Tensor& log_alpha);
std::tuple<at::Tensor, at::Tensor> snake_bwd_cpu(const at::Tensor& grad, const at::Tensor& x,
                                                 const at::Tensor& log_alpha);

// The build of each op's inner loops chosen at run time on this CPU ("avx512", "avx2" or "portable", with
// "+avx512bf16" where attention's bf16 products use AVX-512-BF16; the same static choice the kernels make on their
// first call), for `chameleon-lite doctor`.
// bf16_products: for the bf16 forward and backward, which multiply through cpu/gemm_bf16.h where it is available
const char* attention_variant(bool bf16_products);
const char* linear_variant();
const char* snake_variant();

}  // namespace chameleon_lite::cpu

namespace chameleon_lite::sampling_cpu {

// sampling.cpp
std::tuple<at::Tensor, at::Tensor> sample_cpu(const at::Tensor& logits, const std::optional<at::Tensor>& uncond,
                                              const at::Tensor& temperature, const at::Tensor& top_k,
                                              const at::Tensor& top_p, const at::Tensor& min_p,
                                              const at::Tensor& cfg_scale, const at::Tensor& penalty,
                                              const std::optional<at::Tensor>& ranges,
                                              const std::optional<at::Tensor>& penalty_ids, int64_t seed,
                                              int64_t step);
at::Tensor sampling_uniforms_cpu(const at::Tensor& rows, int64_t seed, int64_t step);
at::Tensor philox4x32_cpu(const at::Tensor& ctr, const at::Tensor& key);
// "avx512", "avx2" or "portable": the row build sample_cpu runs on this CPU
const char* sampling_variant();

}  // namespace chameleon_lite::sampling_cpu
