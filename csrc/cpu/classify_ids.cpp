// Vectorised unified-id classification used by the data loader and the generation engine.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/ATen.h>: see cpu/kernels.h
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <tuple>

#include "cpu/kernels.h"

namespace chameleon_lite::cpu {
namespace {

template <typename T>
void classify_kernel(const T* ids, int64_t n, int64_t text_off, int64_t image_off, int64_t audio_off, int64_t k_aud,
                     int64_t vocab, int8_t* mod, int64_t* local, int64_t* level, std::atomic<int64_t>& first_bad) {
  at::parallel_for(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t id = static_cast<int64_t>(ids[i]);
      if (id < 0 || id >= vocab) {
        int64_t cur = first_bad.load();
        while (i < cur && !first_bad.compare_exchange_weak(cur, i)) {
        }
        mod[i] = 0;
        local[i] = 0;
        level[i] = -1;
        continue;
      }
      if (id >= audio_off) {
        const int64_t rel = id - audio_off;
        mod[i] = 2;
        level[i] = rel / k_aud;
        local[i] = rel - level[i] * k_aud;
      } else if (id >= image_off) {
        mod[i] = 1;
        local[i] = id - image_off;
        level[i] = -1;
      } else {
        mod[i] = 0;
        local[i] = id >= text_off ? id - text_off : id;
        level[i] = -1;
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> classify_ids_cpu(const at::Tensor& ids_in, int64_t text_offset,
                                                                 int64_t image_offset, int64_t audio_offset,
                                                                 int64_t audio_codebook, int64_t vocab_size) {
  TORCH_CHECK(!ids_in.is_floating_point() && !ids_in.is_complex() && ids_in.scalar_type() != at::kBool,
              "classify_ids: ids must be an integer tensor, got ", ids_in.scalar_type());
  TORCH_CHECK(0 <= text_offset && text_offset <= image_offset && image_offset <= audio_offset &&
                  audio_offset <= vocab_size,
              "classify_ids: offsets must satisfy 0 <= text <= image <= audio <= vocab_size");
  TORCH_CHECK(audio_codebook > 0 || audio_offset == vocab_size, "classify_ids: audio_codebook must be positive");
  const at::Tensor ids = ids_in.contiguous();
  auto mod = at::empty(ids.sizes(), ids.options().dtype(at::kChar));
  auto local = at::empty(ids.sizes(), ids.options().dtype(at::kLong));
  auto level = at::empty(ids.sizes(), ids.options().dtype(at::kLong));
  const int64_t n = ids.numel();
  std::atomic<int64_t> first_bad{std::numeric_limits<int64_t>::max()};
  const int64_t k_aud = audio_codebook > 0 ? audio_codebook : 1;
  AT_DISPATCH_INTEGRAL_TYPES(ids.scalar_type(), "classify_ids", [&] {
    classify_kernel<scalar_t>(ids.data_ptr<scalar_t>(), n, text_offset, image_offset, audio_offset, k_aud, vocab_size,
                              mod.data_ptr<int8_t>(), local.data_ptr<int64_t>(), level.data_ptr<int64_t>(), first_bad);
  });
  const int64_t bad = first_bad.load();
  TORCH_CHECK_INDEX(bad == std::numeric_limits<int64_t>::max(), "token id ",
                    bad == std::numeric_limits<int64_t>::max() ? 0 : ids.reshape({-1})[bad].item<int64_t>(),
                    " is outside the valid range [0, ", vocab_size, ")");
  return {mod, local, level};
}

}  // namespace chameleon_lite::cpu
