// The CUDA kernel bodies (csrc/cuda/*.cuh) built with g++ against the CPU emulator, as a Python module for
// tests/cuda_emu/. Same launch helpers as the CUDA build; CPU tensors in and out.
#include <torch/extension.h>

#include "cuda/attention.cuh"
#include "cuda/sampling_op.h"

namespace ck = chameleon_lite::cuda_kernels;

namespace {

template <typename T, typename A>
const T* cptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr<A>());
}

// Calls run(kernel type tag, ATen type tag) for float32, bfloat16 or float16.
template <typename Run>
void dispatch(at::ScalarType dt, const Run& run) {
  if (dt == at::kFloat) {
    run(float(), float());
  } else if (dt == at::kBFloat16) {
    run(ck::bf16_t(), at::BFloat16());
  } else {
    TORCH_CHECK(dt == at::kHalf, "emulated attention: float32, bfloat16 or float16, got ", dt);
    run(ck::half_t(), at::Half());
  }
}

std::tuple<at::Tensor, at::Tensor> attention_fwd(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                                                 const at::Tensor& doc_, const at::Tensor& span_, double scale,
                                                 bool tensor_cores) {
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto doc = doc_.to(at::kInt).contiguous(), span = span_.to(at::kInt).contiguous();
  const int B = q.size(0), L = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  TORCH_CHECK(D <= ck::kMaxD && Hq % Hkv == 0, "emulated attention_fwd: D <= 128 and Hq % Hkv == 0");
  auto out = at::empty_like(q);
  auto lse = at::empty({B, Hq, L}, q.options().dtype(at::kFloat));
  const auto run = [&](auto tag, auto atag) {
    using T = decltype(tag);
    using A = decltype(atag);
    ck::run_attention_fwd<T>(cptr<T, A>(q), cptr<T, A>(k), cptr<T, A>(v), doc.const_data_ptr<int32_t>(),
                             span.const_data_ptr<int32_t>(), reinterpret_cast<T*>(out.data_ptr<A>()),
                             lse.data_ptr<float>(), B, L, Hq, Hkv, D, static_cast<float>(scale), 0,
                             tensor_cores && ck::mma_supports(D));
  };
  dispatch(q.scalar_type(), run);
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd(const at::Tensor& dout_, const at::Tensor& q_,
                                                             const at::Tensor& k_, const at::Tensor& v_,
                                                             const at::Tensor& out_, const at::Tensor& lse_,
                                                             const at::Tensor& doc_, const at::Tensor& span_, double scale,
                                                             bool tensor_cores) {
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous(), dout = dout_.contiguous(), out = out_.contiguous();
  const auto lse = lse_.contiguous();
  const auto doc = doc_.to(at::kInt).contiguous(), span = span_.to(at::kInt).contiguous();
  const int B = q.size(0), L = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  TORCH_CHECK(D <= ck::kMaxD && Hq % Hkv == 0, "emulated attention_bwd: D <= 128 and Hq % Hkv == 0");
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  auto delta = at::empty({B, Hq, L}, q.options().dtype(at::kFloat));
  const auto run = [&](auto tag, auto atag) {
    using T = decltype(tag);
    using A = decltype(atag);
    ck::run_attention_bwd<T>(cptr<T, A>(dout), cptr<T, A>(q), cptr<T, A>(k), cptr<T, A>(v), cptr<T, A>(out),
                             lse.const_data_ptr<float>(), doc.const_data_ptr<int32_t>(), span.const_data_ptr<int32_t>(),
                             reinterpret_cast<T*>(dq.data_ptr<A>()), reinterpret_cast<T*>(dk.data_ptr<A>()),
                             reinterpret_cast<T*>(dv.data_ptr<A>()), delta.data_ptr<float>(), B, L, Hq, Hkv, D,
                             static_cast<float>(scale), 0, tensor_cores && ck::mma_supports(D));
  };
  dispatch(q.scalar_type(), run);
  return {dq, dk, dv};
}

at::Tensor attention_decode(const at::Tensor& q_, const at::Tensor& kc, const at::Tensor& vc, const at::Tensor& lens_,
                            double scale) {
  const auto q = q_.contiguous();
  const auto lens = lens_.to(at::kInt).contiguous();
  const int B = q.size(0), Lq = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = kc.size(2);
  TORCH_CHECK(D <= ck::kMaxD && Lq <= ck::kMaxDecodeQ && kc.stride(3) == 1 && vc.stride(3) == 1,
              "emulated attention_decode: D <= 128, Lq <= 16, caches contiguous in D");
  const int max_len = lens.numel() ? lens.max().item<int>() : 0;
  auto part = at::empty({B * Hq * ck::decode_max_chunks(max_len) * Lq * (D + 2)}, q.options().dtype(at::kFloat));
  auto out = at::empty_like(q);
  const auto run = [&](auto tag, auto atag) {
    using T = decltype(tag);
    using A = decltype(atag);
    ck::run_attention_decode<T>(cptr<T, A>(q), cptr<T, A>(kc), cptr<T, A>(vc), lens.const_data_ptr<int32_t>(),
                                part.data_ptr<float>(), reinterpret_cast<T*>(out.data_ptr<A>()), B, Lq, Hq, Hkv, D,
                                kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2),
                                max_len, static_cast<float>(scale), 0);
  };
  dispatch(q.scalar_type(), run);
  return out;
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
