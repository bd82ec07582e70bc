// The CUDA kernel bodies (csrc/cuda/*.cuh) built with g++ against the CPU emulator, as a Python module for
// tests/cuda_emu/. Same tensor-level ops as the CUDA build (attention_op.h, sampling_op.h); CPU tensors in and out.
#include <torch/extension.h>

#include "cuda/attention_op.h"
#include "cuda/sampling_op.h"

namespace ck = chameleon_lite::cuda_kernels;

namespace {

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                 const at::Tensor& doc_, const at::Tensor& span_, double scale,
                                                 bool tensor_cores) {
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto doc = doc_.to(at::kInt).contiguous(), span = span_.to(at::kInt).contiguous();
  TORCH_CHECK(q.size(3) <= ck::kMaxD && q.size(2) % k.size(2) == 0, "emulated attention_fwd: D <= 128 and Hq % Hkv == 0");
  return ck::attention_fwd_op(q, k, v, doc, span, scale, 0, tensor_cores);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(const at::Tensor& dout_, const at::Tensor& q_,
                                                             const at::Tensor& k_, const at::Tensor& v_,
                                                             const at::Tensor& out_, const at::Tensor& lse_,
                                                             const at::Tensor& doc_, const at::Tensor& span_, double scale,
                                                             bool tensor_cores) {
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous(), dout = dout_.contiguous(), out = out_.contiguous();
  const auto lse = lse_.contiguous();
  const auto doc = doc_.to(at::kInt).contiguous(), span = span_.to(at::kInt).contiguous();
  TORCH_CHECK(q.size(3) <= ck::kMaxD && q.size(2) % k.size(2) == 0, "emulated attention_bwd: D <= 128 and Hq % Hkv == 0");
  return ck::attention_bwd_op(dout, q, k, v, out, lse, doc, span, scale, 0, tensor_cores);
}

at::Tensor attention_decode(const at::Tensor& q_, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& lens_,
                            double scale) {
  const auto q = q_.contiguous();
  const auto lens = lens_.to(at::kInt).contiguous();
  TORCH_CHECK(q.size(3) <= ck::kMaxD && q.size(1) <= ck::kMaxDecodeQ && kc.stride(3) == 1 && vc.stride(3) == 1,
              "emulated attention_decode: D <= 128, Lq <= 16, caches contiguous in D");
  const int max_len = static_cast<int>(kc.size(1));  // as the CUDA launcher: sized by the cache, not by the lengths
  return ck::attention_decode_op(q, kc, vc, lens, scale, max_len, 0);
}

// Self-checks of the emulator's warp primitives: returns per-lane results of a few shuffles and votes.
at::Tensor warp_primitives() {
  auto res = at::zeros({64, 6}, at::kInt);
  int* r = res.data_ptr<int>();
  cl_emu::launch(dim3(1), dim3(64), 0, [r] {
    const int t = threadIdx.x, lane = t % 32;
    r[t * 6 + 0] = __shfl_xor_sync(0xffffffffu, lane, 1);
    r[t * 6 + 1] = __shfl_down_sync(0xffffffffu, lane, 4, 8);
    r[t * 6 + 2] = __shfl_sync(0xffffffffu, lane * 10, 3);
    r[t * 6 + 3] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 2 == 0) == 0x55555555u);
    r[t * 6 + 4] = __all_sync(0xffffffffu, lane < 32) + 2 * __any_sync(0xffffffffu, lane == 5);
    __shared__ int counter;
    if (t == 0) counter = 0;
    __syncthreads();
    atomicAdd(&counter, 1);
    __syncthreads();
    r[t * 6 + 5] = counter;
  });
  return res;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attention_fwd", &attention_fwd, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("doc"), py::arg("span"),
        py::arg("scale"), py::arg("tensor_cores") = false);
  m.def("attention_bwd", &attention_bwd, py::arg("dout"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"),
        py::arg("lse"), py::arg("doc"), py::arg("span"), py::arg("scale"), py::arg("tensor_cores") = false);
  m.def("attention_decode", &attention_decode);
  m.def("warp_primitives", &warp_primitives);
  m.def("sample", [](const at::Tensor& logits, const std::optional<at::Tensor>& uncond, const at::Tensor& temperature,
                     const at::Tensor& top_k, const at::Tensor& top_p, const at::Tensor& min_p, const at::Tensor& cfg_scale,
                     const at::Tensor& penalty, const std::optional<at::Tensor>& ranges,
                     const std::optional<at::Tensor>& penalty_ids, int64_t seed, int64_t step) {
    return ck::sample_op(logits, uncond, temperature, top_k, top_p, min_p, cfg_scale, penalty, ranges, penalty_ids, seed,
                         step, 0);
  });
}
