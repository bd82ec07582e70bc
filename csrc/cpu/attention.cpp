// Fused modality-aware attention on CPU (ARCHITECTURE §5): forward, backward and KV-cache decode.
//
// Flash-style: queries in tiles of kBlockQ rows, keys in tiles of kBlockK; every (query tile, key tile) pair is
// classified from tile-level doc/span bounds (csrc/common/attention_mask.h) as empty (never touched), full (no
// mask evaluated) or partial (the predicate per element). Operands are laid out once per call per head (the softmax
// scale folded into q) and multiplied in one of two precisions (the F32 and BF16 policies below): fp32 through
// oneDNN's small-GEMM micro-kernel (at::native::cpublas::brgemm) or ATen's mm, or - for bf16 inputs on CPUs with
// AVX-512-BF16 - bf16 products with fp32 accumulation (cpu/gemm_bf16.h); elsewhere bf16 inputs are widened to fp32.
// Softmax and accumulators are fp32 in both. The forward takes runs of consecutive non-empty key tiles (up to kWideK
// keys) in one step, masking only the partial tiles inside a run, keeps an online softmax per row and returns the
// log-sum-exp; the backward recomputes probabilities from it (FlashAttention-2): one pass over key tiles for dk/dv
// on transposed tiles (the GQA heads of a group summed inside the pass, so no races), one over query tiles for dq.
// Decode splits each row's cache into chunks of kDecodeChunk keys that run in parallel and are merged with the
// shared softmax merge; the split depends only on the cache length, so no result depends on the thread count.
#define TORCH_ASSERT_ONLY_METHOD_OPERATORS  // no <ATen/ATen.h>: see cpu/kernels.h
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common/attention_mask.h"
#define CL_ATTN_ISA portable
#include "cpu/attention_rows.h"
#include "cpu/gemm_bf16.h"
#include "cpu/isa.h"
#include "cpu/kernels.h"

#include <cstdlib>
#include <cstring>

namespace chameleon_lite::cpu {
namespace {

using at::native::TransposeType;
namespace attn = chameleon_lite::attn;

constexpr int64_t kBlockQ = 64;
constexpr int64_t kBlockK = 64;
// The forward multiplies runs of up to kWideK consecutive non-empty key tiles at once (one GEMM for the scores, one
// online-softmax update, one GEMM for the values): within a document most tiles are full, and fewer, wider calls cut
// the per-call cost of the small GEMMs and the rescaling of the output rows.
constexpr int64_t kWideK = 512;
constexpr int64_t kDecodeChunk = 256;
constexpr int64_t kDecodeSub = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---------------------------------------------------------------------------------------------- small GEMM
// C[M, N] (ld ldc) = (add ? C : 0) + A[M, K] (ld lda) · B[K, N] (ld ldb), all fp32 row-major. Products go to oneDNN's
// batch-reduce GEMM micro-kernel (at::native::cpublas::brgemm) where this build and CPU have it, up to a size that
// depends on the CPU, and to ATen's mm on views otherwise: on a 2-core AVX2 machine mm ran the forward's 64 x 512 x 64
// products about 20 % faster than the micro-kernel, on an AVX-512 EPYC the micro-kernel ran them 20-25 % faster than
// mm (one thread, 97-116 against 85-96 GFLOP/s), so with AVX-512 every product takes it.
constexpr int64_t kBrgemmMaxWorkAvx2 = kBlockQ * kBlockK * 128;  // one tile pair at the largest head dim
int64_t brgemm_max_work() {
  static const int64_t max_work = cpu_has_avx512() ? std::numeric_limits<int64_t>::max() : kBrgemmMaxWorkAvx2;
  return max_work;
}

bool brgemm_works() {
  static const bool ok = [] {
    try {
      float a[4] = {1, 2, 3, 4}, b[4] = {1, 0, 0, 1}, c[4] = {0, 0, 0, 0};
      at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a, b, c, false);
      return c[0] == 1 && c[1] == 2 && c[2] == 3 && c[3] == 4;
    } catch (const std::exception&) {
      return false;
    }
  }();
  return ok;
}

void small_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B, int64_t ldb, float* C,
                int64_t ldc, bool add) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!add)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.f);
    return;
  }
  if (M * N * K <= brgemm_max_work() && brgemm_works()) {
    at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, add, A, B, C, false);
    return;
  }
  const auto opt = at::TensorOptions().dtype(at::kFloat);
  auto a = at::from_blob(const_cast<float*>(A), {M, K}, {lda, 1}, opt);
  auto b = at::from_blob(const_cast<float*>(B), {K, N}, {ldb, 1}, opt);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, opt);
  if (add)
    c.addmm_(a, b);
  else
    at::mm_out(c, a, b);
}

// Gather rows [rows, D] with row stride ld into dst [rows, D] (fp32, or bf16 rounded to nearest even), multiplied by
// mul in fp32.
template <typename T, typename U>
void gather_rows(const T* src, int64_t ld, int64_t rows, int64_t D, U* dst, float mul = 1.f) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * ld;
    U* d = dst + r * D;
    for (int64_t c = 0; c < D; ++c) d[c] = static_cast<U>(static_cast<float>(s[c]) * mul);
  }
}

// ---------------------------------------------------------------------------------------------- row helpers
// The per-row softmax loops (csrc/cpu/attention_rows.h), built portably here, with AVX2/FMA in attention_avx2.cpp
// and with AVX-512 in attention_avx512.cpp; the widest the CPU has is chosen once at run time
// (CHAMELEON_LITE_ATTENTION_ISA=portable or =avx2 caps it, and also turns off the bf16 products; the tests compare
// the builds that way).
const RowOps& row_ops() {
  static const RowOps ops = [] {
    switch (widest_build("CHAMELEON_LITE_ATTENTION_ISA")) {
      case 2: return row_ops_avx512();
      case 1: return row_ops_avx2();
      default: return portable::make_row_ops();
    }
  }();
  return ops;
}

inline float row_max(const float* x, int64_t n) { return row_ops().row_max(x, n); }
inline float exp_sub_sum(float* x, int64_t n, float m) { return row_ops().exp_sub_sum(x, n, m); }
inline void scale_row(float* x, int64_t n, float a) { row_ops().scale_row(x, n, a); }
inline void exp_sub_vec(float* x, const float* m, int64_t n) { row_ops().exp_sub_vec(x, m, n); }
inline void grad_row(const float* p, float* dp, float delta, int64_t n) { row_ops().grad_row(p, dp, delta, n); }
inline void grad_row_vec(const float* p, float* dp, const float* delta, int64_t n) {
  row_ops().grad_row_vec(p, dp, delta, n);
}

template <typename T>
inline void store_row(const float* src, T* dst, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    std::copy(src, src + n, dst);
  } else {
    at::vec::convert(src, dst, n);
  }
}

// ---------------------------------------------------------------------------------------------- checks & tiles
struct Shape {
  int64_t B, L, Hq, Hkv, D;
};

Shape check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& doc, const at::Tensor& span) {
  TORCH_CHECK_VALUE(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": q, k, v must be [B, L, H, D], got ",
                    q.sizes(), ", ", k.sizes(), ", ", v.sizes());
  TORCH_CHECK_VALUE(k.sizes() == v.sizes(), op, ": k and v shapes differ: ", k.sizes(), " vs ", v.sizes());
  const int64_t B = q.size(0), L = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k.size(2);
  TORCH_CHECK_VALUE(k.size(0) == B && k.size(1) == L && k.size(3) == D, op, ": k must be [", B, ", ", L, ", Hkv, ",
                    D, "], got ", k.sizes());
  TORCH_CHECK_VALUE(Hkv > 0 && Hq % Hkv == 0, op, ": Hq=", Hq, " must be a multiple of Hkv=", Hkv);
  TORCH_CHECK_VALUE(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), op,
                    ": q, k, v must share a dtype");
  TORCH_CHECK_VALUE(q.scalar_type() == at::kFloat || q.scalar_type() == at::kBFloat16, op,
                    ": dtype must be float32 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK_VALUE(doc.scalar_type() == at::kInt && span.scalar_type() == at::kInt, op,
                    ": doc_ids and span_ids must be int32");
  TORCH_CHECK_VALUE(doc.dim() == 2 && doc.size(0) == B && doc.size(1) == L && span.sizes() == doc.sizes(), op,
                    ": doc_ids and span_ids must be [", B, ", ", L, "], got ", doc.sizes(), " and ", span.sizes());
  for (const auto* t : {&q, &k, &v, &doc, &span})
    TORCH_CHECK_VALUE(t->device().is_cpu(), op, ": expected CPU tensors");
  return {B, L, Hq, Hkv, D};
}

// Tile bounds of every batch row: [B][ceil(L / block)].
std::vector<attn::TileBounds> tiles_of(const int32_t* doc, const int32_t* span, int64_t B, int64_t L,
                                       int64_t block) {
  const int64_t n = (L + block - 1) / block;
  std::vector<attn::TileBounds> out(B * n);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < n; ++t)
      out[b * n + t] = attn::tile_bounds(doc + b * L, span + b * L, t * block, std::min(L, (t + 1) * block));
  return out;
}

// Scores of a partial tile (rows ld apart): disallowed pairs -> -inf. Rows are queries r0.. and columns keys c0..,
// or for a transposed tile (the dk/dv pass) rows are keys r0.. and columns queries c0...
template <bool Transposed = false>
inline void mask_tile(float* s, int64_t ld, int64_t rows, int64_t cols, int64_t r0, int64_t c0, const int32_t* doc,
                      const int32_t* span) {
  const auto& ops = row_ops();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t p = r0 + r;  // this row's position; the row's own entry is at column p - c0
    if constexpr (Transposed)
      ops.mask_row_t(s + r * ld, doc + c0, span + c0, cols, doc[p], span[p], p - c0);
    else
      ops.mask_row(s + r * ld, doc + c0, span + c0, cols, doc[p], span[p], p - c0);
  }
}

// ---------------------------------------------------------------------------------------------- precisions
// Every product of the kernels is C (fp32) = A · B, A row-major, B in one of two per-head layouts made once per call
// from a [B, L, H, D] tensor: "minor" (B[d, j]: positions are columns; Q Kᵀ and dO Vᵀ) and "major" (B[j, d]:
// positions are rows; P V, dS K, Pᵀ dO and dSᵀ Q). Two policies:
//   F32  - fp32 operands, B row-major, small_gemm (oneDNN micro-kernel / ATen mm); fp32 inputs, and bf16 inputs on
//          CPUs without AVX-512-BF16 (widened once).
//   BF16 - bf16 operands, B in pairs (cpu/gemm_bf16.h), products through vdpbf16ps with fp32 accumulation; bf16
//          inputs on CPUs with AVX-512-BF16. Scores, softmax and accumulators stay fp32; P and dS are rounded to bf16
//          as the A operand of the next product (as FlashAttention does on GPUs).
// Every B layout is [B, H, size]; a head's block starts at (b * H + h) * size. A operands stay [B, L, H, D].
struct F32 {
  using A = float;
  using Bv = float;
  static at::Tensor minor(const at::Tensor& x, float mul = 1.f) {
    const auto xf = x.to(at::kFloat);
    return flat((mul == 1.f ? xf : xf.mul(mul)).permute({0, 2, 3, 1}).contiguous());
  }
  static at::Tensor major(const at::Tensor& x) { return flat(x.permute({0, 2, 1, 3}).to(at::kFloat).contiguous()); }
  // A operands: x times mul in the A type, kept [B, L, H, D] (rows of a head are H * D apart); x itself when it
  // needs no conversion
  static at::Tensor rows(const at::Tensor& x, float mul) { return a_rows(x, mul, at::kFloat); }
  static at::Tensor a_rows(const at::Tensor& x, float mul, at::ScalarType t) {
    if (mul == 1.f && x.scalar_type() == t) return x.contiguous();
    return x.to(at::kFloat).mul(mul).to(t).contiguous();
  }
  static const float* col(const float* b, int64_t j) { return b + j; }                  // minor: column j (ld L)
  static const float* row(const float* b, int64_t D, int64_t j) { return b + j * D; }  // major: row j (ld D)
  static void gemm(int64_t M, int64_t N, int64_t K, const float* a, int64_t lda, const float* b, int64_t ldb,
                   float* c, int64_t ldc, bool add) {
    small_gemm(M, N, K, a, lda, b, ldb, c, ldc, add);
  }
  // fp32 scores/probabilities [mq, nk] as an A operand
  static const float* as_a(const float* s, int64_t, int64_t, float*) { return s; }
  static at::Tensor flat(const at::Tensor& t) { return t.reshape({t.size(0), t.size(1), -1}); }
};

struct BF16 {
  using A = at::BFloat16;
  using Bv = at::BFloat16;
  static at::Tensor minor(const at::Tensor& x, float mul = 1.f) {
    return pack(mul == 1.f ? x : x.to(at::kFloat).mul(mul), true);
  }
  static at::Tensor major(const at::Tensor& x) { return pack(x, false); }
  static at::Tensor rows(const at::Tensor& x, float mul) { return F32::a_rows(x, mul, at::kBFloat16); }
  static const A* col(const A* b, int64_t j) { return b + 2 * j; }
  static const A* row(const A* b, int64_t D, int64_t j) { return b + (j / 2) * 2 * D; }  // j even
  static void gemm(int64_t M, int64_t N, int64_t K, const A* a, int64_t lda, const A* b, int64_t ldb, float* c,
                   int64_t ldc, bool add) {
    if (M == 0 || N == 0) return;
    bf16::gemm(M, N, K, a, lda, b, ldb, c, ldc, add);
  }
  static const A* as_a(const float* s, int64_t mq, int64_t nk, A* buf) {
    row_ops().to_bf16(s, buf, mq * nk);
    return buf;
  }
  // [B, L, H, D] (bf16) -> per head, pairs of minor (ld L) or major (ld D) B
  static at::Tensor pack(const at::Tensor& x_, bool minor_layout) {
    const auto x = x_.to(at::kBFloat16).contiguous();
    const int64_t B = x.size(0), L = x.size(1), H = x.size(2), D = x.size(3);
    const int64_t size = minor_layout ? bf16::pair_rows(D) * 2 * L : bf16::pair_rows(L) * 2 * D;
    auto out = at::empty({B, H, size}, x.options());
    const A* xp = x.const_data_ptr<A>();
    A* op = out.data_ptr<A>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t w = begin; w < end; ++w) {
        const int64_t b = w / H, h = w % H;
        const A* src = xp + b * L * H * D + h * D;
        if (minor_layout)
          bf16::pack_cols(src, H * D, L, D, op + w * size, L);
        else
          bf16::pack_rows(src, H * D, L, D, op + w * size, D);
      }
    });
    return out;
  }
};

// bf16 inputs take the BF16 policy where the CPU has AVX-512-BF16 (and the build and environment allow it).
inline bool native_bf16(const at::Tensor& q) { return q.scalar_type() == at::kBFloat16 && bf16::available(); }

// ---------------------------------------------------------------------------------------------- forward
template <typename T, typename P>
void forward_impl(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& doc,
                  const at::Tensor& span, double scale, const Shape& sh, at::Tensor& out, at::Tensor& lse) {
  using A = typename P::A;
  using Bv = typename P::Bv;
  const int64_t B = sh.B, L = sh.L, Hq = sh.Hq, Hkv = sh.Hkv, D = sh.D;
  const int64_t G = Hq / Hkv, nQ = (L + kBlockQ - 1) / kBlockQ, nK = (L + kBlockK - 1) / kBlockK;
  const int64_t ldq = Hq * D;
  const T* qp = q.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  float* lp = lse.data_ptr<float>();
  const int32_t* dp = doc.const_data_ptr<int32_t>();
  const int32_t* sp = span.const_data_ptr<int32_t>();
  const auto qt = tiles_of(dp, sp, B, L, kBlockQ);
  const auto kt = tiles_of(dp, sp, B, L, kBlockK);
  const float sc = static_cast<float>(scale);
  // keys (minor) and values (major), once per call: every query tile and head of a group reads them, so converting
  // per tile pair would repeat the work G * nQ times
  const auto k_all = P::minor(k), v_all = P::major(v);
  const int64_t ksz = k_all.size(2), vsz = v_all.size(2);
  const Bv* kap = k_all.template const_data_ptr<Bv>();
  const Bv* vap = v_all.template const_data_ptr<Bv>();

  at::parallel_for(0, B * Hq * nQ, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(kBlockQ * kWideK), o(kBlockQ * D), m(kBlockQ), l(kBlockQ);
    std::vector<A> qb(kBlockQ * D), pa(std::is_same_v<A, float> ? 0 : kBlockQ * kWideK);
    std::vector<attn::TileKind> kinds(nK);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t qi = w % nQ, h = (w / nQ) % Hq, b = w / (nQ * Hq), hk = h / G;
      const int64_t i0 = qi * kBlockQ, mq = std::min(kBlockQ, L - i0);
      const int32_t* db = dp + b * L;
      const int32_t* sb = sp + b * L;
      gather_rows(qp + (b * L + i0) * ldq + h * D, ldq, mq, D, qb.data(), sc);  // scale folded into q
      std::fill(o.begin(), o.begin() + mq * D, 0.f);
      std::fill(m.begin(), m.end(), kNegInf);
      std::fill(l.begin(), l.end(), 0.f);
      for (int64_t kj = 0; kj < nK; ++kj) kinds[kj] = attn::classify(qt[b * nQ + qi], kt[b * nK + kj]);
      for (int64_t kj = 0; kj < nK;) {
        if (kinds[kj] == attn::TileKind::kEmpty) {
          ++kj;
          continue;
        }
        // a run of non-empty key tiles [kj, ke), at most kWideK keys
        int64_t ke = kj + 1;
        while (ke < nK && kinds[ke] != attn::TileKind::kEmpty && (ke + 1 - kj) * kBlockK <= kWideK) ++ke;
        const int64_t j0 = kj * kBlockK, nk = std::min(ke * kBlockK, L) - j0;
        const Bv* kh = kap + (b * Hkv + hk) * ksz;
        const Bv* vh = vap + (b * Hkv + hk) * vsz;
        P::gemm(mq, nk, D, qb.data(), D, P::col(kh, j0), L, s.data(), nk, false);  // S = (scale Q) Kᵀ
        for (int64_t t = kj; t < ke; ++t)
          if (kinds[t] == attn::TileKind::kPartial)
            mask_tile(s.data() + (t - kj) * kBlockK, nk, mq, std::min(kBlockK, L - t * kBlockK), i0, t * kBlockK, db, sb);
        for (int64_t r = 0; r < mq; ++r) {
          float* row = s.data() + r * nk;
          const float mx = std::max(m[r], row_max(row, nk));
          if (mx == kNegInf) {  // nothing visible yet for this row
            std::fill(row, row + nk, 0.f);
            continue;
          }
          const float alpha = m[r] == kNegInf ? 0.f : std::exp(m[r] - mx);
          const float sum = exp_sub_sum(row, nk, mx);
          if (alpha != 1.f) scale_row(o.data() + r * D, D, alpha);
          l[r] = l[r] * alpha + sum;
          m[r] = mx;
        }
        const A* pv = P::as_a(s.data(), mq, nk, pa.data());
        P::gemm(mq, D, nk, pv, nk, P::row(vh, D, j0), D, o.data(), D, true);  // O += P V
        kj = ke;
      }
      for (int64_t r = 0; r < mq; ++r) {
        float* orow = o.data() + r * D;
        scale_row(orow, D, l[r] > 0.f ? 1.f / l[r] : 0.f);
        store_row(orow, op + (b * L + i0 + r) * ldq + h * D, D);
        lp[(b * Hq + h) * L + i0 + r] = attn::finish_lse(attn::SoftmaxState{m[r], l[r]});
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> attention_fwd_cpu(const at::Tensor& q_, const at::Tensor& k_,
                                                     const at::Tensor& v_, const at::Tensor& doc_,
                                                     const at::Tensor& span_, double scale) {
  const Shape sh = check_inputs("attention_fwd", q_, k_, v_, doc_, span_);
  const auto q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  const auto doc = doc_.contiguous(), span = span_.contiguous();
  auto out = at::empty_like(q);
  auto lse = at::empty({sh.B, sh.Hq, sh.L}, q.options().dtype(at::kFloat));
  if (q.numel() == 0 || k.numel() == 0) {
    out.zero_();
    lse.fill_(kNegInf);
    return {out, lse};
  }
  if (q.scalar_type() == at::kFloat)
    forward_impl<float, F32>(q, k, v, doc, span, scale, sh, out, lse);
  else if (native_bf16(q))
    forward_impl<at::BFloat16, BF16>(q, k, v, doc, span, scale, sh, out, lse);
  else
    forward_impl<at::BFloat16, F32>(q, k, v, doc, span, scale, sh, out, lse);
  return {out, lse};
}

namespace {

// ---------------------------------------------------------------------------------------------- backward
// Probabilities and dS of one tile pair from the saved lse and delta = rowsum(dO * O): qs = scale * Q and g = dO
// [mq, D] (A operands, rows lda apart), kT = Kᵀ and vT = Vᵀ from column j0 of the minor layouts (ld ldt) -> p = P,
// ds = dS [mq, nk] in fp32.
template <typename P>
inline void tile_grads(const typename P::A* qs, const typename P::A* g, int64_t lda, const typename P::Bv* kT,
                       const typename P::Bv* vT, int64_t ldt, int64_t mq, int64_t nk, int64_t D, attn::TileKind kind,
                       int64_t i0, int64_t j0, const int32_t* db, const int32_t* sb, const float* lse,
                       const float* delta, float* p, float* ds) {
  P::gemm(mq, nk, D, qs, lda, kT, ldt, p, nk, false);
  if (kind == attn::TileKind::kPartial) mask_tile(p, nk, mq, nk, i0, j0, db, sb);
  P::gemm(mq, nk, D, g, lda, vT, ldt, ds, nk, false);  // dP = dO Vᵀ
  for (int64_t r = 0; r < mq; ++r) {
    float* prow = p + r * nk;
    float* dsrow = ds + r * nk;
    const float lr = lse[i0 + r];
    if (lr == kNegInf) {
      std::fill(prow, prow + nk, 0.f);
      std::fill(dsrow, dsrow + nk, 0.f);
      continue;
    }
    exp_sub_sum(prow, nk, lr);
    grad_row(prow, dsrow, delta[i0 + r], nk);
  }
}

// Writes dq [B, L, Hq, D], dk and dv [B, L, Hkv, D] (fp32, zero-filled). The scale is applied to dq and dk when they
// are stored (dQ = scale dS K, dK = scale dSᵀ Q), so K and Q enter the products unscaled.
template <typename P>
void backward_impl(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   const at::Tensor& lse, const at::Tensor& delta, const at::Tensor& doc, const at::Tensor& span,
                   double scale, const Shape& sh, at::Tensor& dq, at::Tensor& dk, at::Tensor& dv) {
  using A = typename P::A;
  using Bv = typename P::Bv;
  const int64_t B = sh.B, L = sh.L, Hq = sh.Hq, Hkv = sh.Hkv, D = sh.D;
  const int64_t G = Hq / Hkv, nQ = (L + kBlockQ - 1) / kBlockQ, nK = (L + kBlockK - 1) / kBlockK;
  const int64_t ldq = Hq * D, ldk = Hkv * D;
  const float sc = static_cast<float>(scale);
  const float* lp = lse.const_data_ptr<float>();
  const float* dl = delta.const_data_ptr<float>();
  const int32_t* dp = doc.const_data_ptr<int32_t>();
  const int32_t* sp = span.const_data_ptr<int32_t>();
  const auto qt = tiles_of(dp, sp, B, L, kBlockQ);
  const auto kt = tiles_of(dp, sp, B, L, kBlockK);
  float *dqp = dq.data_ptr<float>(), *dkp = dk.data_ptr<float>(), *dvp = dv.data_ptr<float>();

  // Operands, made once; every tile below is an offset into them, never a gather. A operands keep the inputs'
  // [B, L, H, D] layout (rows H * D apart; dO, K and V are the inputs themselves where their dtype is the A type).
  // The dq pass multiplies row-major tiles: A operands qs = scale * Q and g = dO, minor Kᵀ and Vᵀ (S and dP), major
  // K (dQ). The dk/dv pass
  // multiplies transposed ones, Sᵀ = K (scale Q)ᵀ and dPᵀ = V dOᵀ, so that Pᵀ and dSᵀ come out row-major as
  // the A operands of dV = Pᵀ dO and dK = dSᵀ Q: A operands K and V, minor scale * Q and dO, major dO and Q.
  const auto qs_t = P::rows(q, sc), g_t = P::rows(dout, 1.f);
  const auto kT_t = P::minor(k), vT_t = P::minor(v), k_t = P::major(k);
  const auto ka_t = P::rows(k, 1.f), va_t = P::rows(v, 1.f);
  const auto qT_t = P::minor(q, sc), gT_t = P::minor(dout), gm_t = P::major(dout), qm_t = P::major(q);
  const A *qsp = qs_t.template const_data_ptr<A>(), *gtp = g_t.template const_data_ptr<A>();
  const A *kap = ka_t.template const_data_ptr<A>(), *vap = va_t.template const_data_ptr<A>();
  const Bv *kTp = kT_t.template const_data_ptr<Bv>(), *vTp = vT_t.template const_data_ptr<Bv>();
  const Bv *kp = k_t.template const_data_ptr<Bv>(), *qTp = qT_t.template const_data_ptr<Bv>();
  const Bv *gTp = gT_t.template const_data_ptr<Bv>(), *gmp = gm_t.template const_data_ptr<Bv>();
  const Bv* qmp = qm_t.template const_data_ptr<Bv>();
  const int64_t ksz = kT_t.size(2), kmsz = k_t.size(2), qsz = qT_t.size(2), qmsz = qm_t.size(2);

  // Pass 1: dk, dv per (b, kv head, key tile); the query heads of the group are summed inside.
  at::parallel_for(0, B * Hkv * nK, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> pt(kBlockK * kBlockQ), dst(kBlockK * kBlockQ), lse_c(kBlockQ);
    std::vector<A> pa(std::is_same_v<A, float> ? 0 : kBlockK * kBlockQ);
    std::vector<float> dkb(kBlockK * D), dvb(kBlockK * D);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t kj = w % nK, hk = (w / nK) % Hkv, b = w / (nK * Hkv);
      const int64_t j0 = kj * kBlockK, nk = std::min(kBlockK, L - j0);
      const A* ka = kap + (b * L + j0) * ldk + hk * D;
      const A* va = vap + (b * L + j0) * ldk + hk * D;
      const int32_t* db = dp + b * L;
      const int32_t* sb = sp + b * L;
      std::fill(dkb.begin(), dkb.end(), 0.f);
      std::fill(dvb.begin(), dvb.end(), 0.f);
      for (int64_t h = hk * G; h < (hk + 1) * G; ++h) {
        const float* lh = lp + (b * Hq + h) * L;
        const float* dh = dl + (b * Hq + h) * L;
        for (int64_t qi = 0; qi < nQ; ++qi) {
          const auto kind = attn::classify(qt[b * nQ + qi], kt[b * nK + kj]);
          if (kind == attn::TileKind::kEmpty) continue;
          const int64_t i0 = qi * kBlockQ, mq = std::min(kBlockQ, L - i0);
          P::gemm(nk, mq, D, ka, ldk, P::col(qTp + (b * Hq + h) * qsz, i0), L, pt.data(), mq, false);  // Sᵀ
          if (kind == attn::TileKind::kPartial) mask_tile<true>(pt.data(), mq, nk, mq, j0, i0, db, sb);
          P::gemm(nk, mq, D, va, ldk, P::col(gTp + (b * Hq + h) * qsz, i0), L, dst.data(), mq, false);  // dPᵀ
          // a query with nothing visible (lse = -inf; never in a forward, where every row sees itself) gets P = 0
          for (int64_t c = 0; c < mq; ++c) lse_c[c] = lh[i0 + c] == kNegInf ? -kNegInf : lh[i0 + c];
          for (int64_t r = 0; r < nk; ++r) {
            float* prow = pt.data() + r * mq;
            float* drow = dst.data() + r * mq;
            exp_sub_vec(prow, lse_c.data(), mq);
            grad_row_vec(prow, drow, dh + i0, mq);
          }
          const Bv* gm = P::row(gmp + (b * Hq + h) * qmsz, D, i0);
          P::gemm(nk, D, mq, P::as_a(pt.data(), nk, mq, pa.data()), mq, gm, D, dvb.data(), D, true);  // dV += Pᵀ dO
          const Bv* qm = P::row(qmp + (b * Hq + h) * qmsz, D, i0);
          P::gemm(nk, D, mq, P::as_a(dst.data(), nk, mq, pa.data()), mq, qm, D, dkb.data(), D, true);  // dK += dSᵀ Q
        }
      }
      for (int64_t r = 0; r < nk; ++r) {
        scale_row(dkb.data() + r * D, D, sc);
        std::copy(dkb.data() + r * D, dkb.data() + (r + 1) * D, dkp + (b * L + j0 + r) * ldk + hk * D);
        std::copy(dvb.data() + r * D, dvb.data() + (r + 1) * D, dvp + (b * L + j0 + r) * ldk + hk * D);
      }
    }
  });

  // Pass 2: dq per (b, head, query tile).
  at::parallel_for(0, B * Hq * nQ, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(kBlockQ * kBlockK), ds(kBlockQ * kBlockK), dqb(kBlockQ * D);
    std::vector<A> dsa(std::is_same_v<A, float> ? 0 : kBlockQ * kBlockK);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t qi = w % nQ, h = (w / nQ) % Hq, b = w / (nQ * Hq), hk = h / G;
      const int64_t i0 = qi * kBlockQ, mq = std::min(kBlockQ, L - i0);
      const A* qs = qsp + (b * L + i0) * ldq + h * D;
      const A* g = gtp + (b * L + i0) * ldq + h * D;
      std::fill(dqb.begin(), dqb.end(), 0.f);
      for (int64_t kj = 0; kj < nK; ++kj) {
        const auto kind = attn::classify(qt[b * nQ + qi], kt[b * nK + kj]);
        if (kind == attn::TileKind::kEmpty) continue;
        const int64_t j0 = kj * kBlockK, nk = std::min(kBlockK, L - j0);
        tile_grads<P>(qs, g, ldq, P::col(kTp + (b * Hkv + hk) * ksz, j0), P::col(vTp + (b * Hkv + hk) * ksz, j0), L,
                      mq, nk, D, kind, i0, j0, dp + b * L, sp + b * L, lp + (b * Hq + h) * L, dl + (b * Hq + h) * L,
                      p.data(), ds.data());
        const Bv* km = P::row(kp + (b * Hkv + hk) * kmsz, D, j0);
        P::gemm(mq, D, nk, P::as_a(ds.data(), mq, nk, dsa.data()), nk, km, D, dqb.data(), D, true);  // dQ += dS K
      }
      for (int64_t r = 0; r < mq; ++r) {
        scale_row(dqb.data() + r * D, D, sc);
        std::copy(dqb.data() + r * D, dqb.data() + (r + 1) * D, dqp + (b * L + i0 + r) * ldq + h * D);
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_bwd_cpu(const at::Tensor& dout_, const at::Tensor& q_,
                                                                 const at::Tensor& k_, const at::Tensor& v_,
                                                                 const at::Tensor& out_, const at::Tensor& lse_,
                                                                 const at::Tensor& doc_, const at::Tensor& span_,
                                                                 double scale) {
  const Shape sh = check_inputs("attention_bwd", q_, k_, v_, doc_, span_);
  const int64_t B = sh.B, L = sh.L, Hq = sh.Hq;
  TORCH_CHECK_VALUE(dout_.sizes() == q_.sizes() && out_.sizes() == q_.sizes(), "attention_bwd: dout and out must be ",
                    q_.sizes());
  TORCH_CHECK_VALUE(lse_.dim() == 3 && lse_.size(0) == B && lse_.size(1) == Hq && lse_.size(2) == L,
                    "attention_bwd: lse must be [B, Hq, L] = [", B, ", ", Hq, ", ", L, "], got ", lse_.sizes());
  const auto lse = lse_.to(at::kFloat).contiguous();
  const auto doc = doc_.contiguous(), span = span_.contiguous();
  // delta[b, h, i] = sum_d dO * O in fp32, laid out like lse
  const auto delta = dout_.to(at::kFloat).mul(out_.to(at::kFloat)).sum(-1).permute({0, 2, 1}).contiguous();
  const auto opts = q_.options().dtype(at::kFloat);
  auto dq = at::zeros({B, L, Hq, sh.D}, opts);
  auto dk = at::zeros({B, L, sh.Hkv, sh.D}, opts);
  auto dv = at::zeros({B, L, sh.Hkv, sh.D}, opts);
  const auto dt = q_.scalar_type();
  if (q_.numel() == 0 || k_.numel() == 0) return {dq.to(dt), dk.to(dt), dv.to(dt)};
  // bf16 inputs multiply in bf16 where the CPU can; otherwise everything is widened to fp32 once
  if (native_bf16(q_))
    backward_impl<BF16>(dout_, q_, k_, v_, lse, delta, doc, span, scale, sh, dq, dk, dv);
  else
    backward_impl<F32>(dout_, q_, k_, v_, lse, delta, doc, span, scale, sh, dq, dk, dv);
  return {dq.to(dt), dk.to(dt), dv.to(dt)};
}

namespace {

// ---------------------------------------------------------------------------------------------- decode
template <typename T>
void decode_impl(const at::Tensor& q, const at::Tensor& kc, const at::Tensor& vc, const int32_t* lens, double scale,
                 at::Tensor& out) {
  const int64_t B = q.size(0), Lq = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Hkv = kc.size(2), G = Hq / Hkv;
  const int64_t ksB = kc.stride(0), ksS = kc.stride(1), ksH = kc.stride(2);
  const int64_t vsB = vc.stride(0), vsS = vc.stride(1), vsH = vc.stride(2);
  const int64_t ldq = Hq * D;
  const T* qp = q.const_data_ptr<T>();
  const T* kp = kc.const_data_ptr<T>();
  const T* vp = vc.const_data_ptr<T>();
  T* op = out.data_ptr<T>();
  const float sc = static_cast<float>(scale);
  // chunks of each row's valid cache; the split depends only on the length
  std::vector<int64_t> first(B + 1, 0);
  for (int64_t b = 0; b < B; ++b) first[b + 1] = first[b] + std::max<int64_t>(1, (lens[b] + kDecodeChunk - 1) / kDecodeChunk);
  const int64_t nchunks = first[B];
  // partial results: per (chunk, head, query row): D accumulators + max + sum
  const int64_t rec = D + 2;
  std::vector<float> part(nchunks * Hq * Lq * rec);

  // One work item is one chunk with all its heads: the keys are visited in sub-blocks of kDecodeSub cache rows, every
  // head of a sub-block before the next, while the next sub-block's whole rows are prefetched, so each thread reads
  // the cache front to back (one head's rows alone are short runs spaced by the other heads, a pattern the hardware
  // prefetchers follow poorly). Scores for the chunk first, then the softmax per query row, then the values, the
  // same way. The cache is read in place and bf16 is widened in registers.
  const auto& ops = row_ops();
  const int64_t rows = Hq * Lq;  // query rows of one batch row: r = h * Lq + t
  at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> s(rows * kDecodeChunk), o(rows * D), qb(rows * D);
    for (int64_t c = begin; c < end; ++c) {
      const int64_t b = std::upper_bound(first.begin(), first.end(), c) - first.begin() - 1;
      const int64_t len = lens[b];
      const int64_t j0 = (c - first[b]) * kDecodeChunk, nk = std::max<int64_t>(0, std::min(kDecodeChunk, len - j0));
      for (int64_t h = 0; h < Hq; ++h) gather_rows(qp + b * Lq * ldq + h * D, ldq, Lq, D, qb.data() + h * Lq * D, sc);
      std::fill(o.begin(), o.end(), 0.f);
      float* pr = part.data() + c * rows * rec;
      if (nk > 0) {
        const T* kc0 = kp + b * ksB + j0 * ksS;
        const T* vc0 = vp + b * vsB + j0 * vsS;
        // fn(r, js, ns, p) for each sub-block [js, js + ns) of `cache` and each query row r; p = the sub-block's rows
        // of r's key-value head
        const auto by_subblock = [&](const T* cache, int64_t sS, int64_t sH, auto&& fn) {
          for (int64_t js = 0; js < nk; js += kDecodeSub) {
            const int64_t ns = std::min(kDecodeSub, nk - js);
            for (int64_t f = js + kDecodeSub; f < std::min(nk, js + 2 * kDecodeSub); ++f)
              portable::prefetch_row(cache + f * sS, Hkv * sH);
            for (int64_t r = 0; r < rows; ++r) fn(r, js, ns, cache + js * sS + (r / Lq / G) * sH);
          }
        };
        by_subblock(kc0, ksS, ksH, [&](int64_t r, int64_t js, int64_t ns, const T* kh) {
          if constexpr (std::is_same_v<T, float>)
            ops.scores_f32(qb.data() + r * D, kh, ksS, ns, D, s.data() + r * nk + js);
          else
            ops.scores_bf16(qb.data() + r * D, kh, ksS, ns, D, s.data() + r * nk + js);
        });
        for (int64_t r = 0; r < rows; ++r) {
          float* row = s.data() + r * nk;
          const int64_t t = r % Lq, qpos = len - Lq + t;
          for (int64_t j = std::max<int64_t>(0, qpos + 1 - j0); j < nk; ++j) row[j] = kNegInf;  // causal
          const float mx = row_max(row, nk);
          float sum = 0.f;
          if (mx == kNegInf)
            std::fill(row, row + nk, 0.f);
          else
            sum = exp_sub_sum(row, nk, mx);
          pr[r * rec + D] = mx;
          pr[r * rec + D + 1] = sum;
        }
        by_subblock(vc0, vsS, vsH, [&](int64_t r, int64_t js, int64_t ns, const T* vh) {
          if constexpr (std::is_same_v<T, float>)
            ops.values_f32(s.data() + r * nk + js, vh, vsS, ns, D, o.data() + r * D);
          else
            ops.values_bf16(s.data() + r * nk + js, vh, vsS, ns, D, o.data() + r * D);
        });
      } else {
        for (int64_t r = 0; r < rows; ++r) {
          pr[r * rec + D] = kNegInf;
          pr[r * rec + D + 1] = 0.f;
        }
      }
      for (int64_t r = 0; r < rows; ++r) std::copy(o.data() + r * D, o.data() + (r + 1) * D, pr + r * rec);
    }
  });

  // merge the chunks of each (b, head, query row) in chunk order
  at::parallel_for(0, B * Hq * Lq, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(D);
    for (int64_t w = begin; w < end; ++w) {
      const int64_t t = w % Lq, h = (w / Lq) % Hq, b = w / (Lq * Hq);
      attn::SoftmaxState st{kNegInf, 0.f};
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t c = first[b]; c < first[b + 1]; ++c) {
        const float* pr = part.data() + ((c * Hq + h) * Lq + t) * rec;
        float sa, sb;
        st = attn::merge(st, attn::SoftmaxState{pr[D], pr[D + 1]}, &sa, &sb);
        for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] * sa + pr[d] * sb;
      }
      scale_row(acc.data(), D, st.l > 0.f ? 1.f / st.l : 0.f);
      store_row(acc.data(), op + (b * Lq + t) * ldq + h * D, D);
    }
  });
}

}  // namespace

at::Tensor attention_decode_cpu(const at::Tensor& q_, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                const at::Tensor& cache_lens, double scale) {
  TORCH_CHECK_VALUE(q_.dim() == 4 && k_cache.dim() == 4 && v_cache.dim() == 4,
                    "attention_decode: q [B, Lq, Hq, D] and caches [B, S, Hkv, D] expected, got ", q_.sizes(), ", ",
                    k_cache.sizes());
  TORCH_CHECK_VALUE(k_cache.sizes() == v_cache.sizes(), "attention_decode: k_cache and v_cache shapes differ");
  const int64_t B = q_.size(0), Hq = q_.size(2), D = q_.size(3), Hkv = k_cache.size(2);
  TORCH_CHECK_VALUE(k_cache.size(0) == B && k_cache.size(3) == D, "attention_decode: cache must be [", B, ", S, Hkv, ",
                    D, "], got ", k_cache.sizes());
  TORCH_CHECK_VALUE(Hkv > 0 && Hq % Hkv == 0, "attention_decode: Hq=", Hq, " must be a multiple of Hkv=", Hkv);
  TORCH_CHECK_VALUE(q_.scalar_type() == k_cache.scalar_type() && q_.scalar_type() == v_cache.scalar_type(),
                    "attention_decode: q and caches must share a dtype");
  TORCH_CHECK_VALUE(q_.scalar_type() == at::kFloat || q_.scalar_type() == at::kBFloat16,
                    "attention_decode: dtype must be float32 or bfloat16, got ", q_.scalar_type());
  TORCH_CHECK_VALUE(cache_lens.dim() == 1 && cache_lens.size(0) == B && cache_lens.scalar_type() == at::kInt,
                    "attention_decode: cache_lens must be int32 [", B, "]");
  TORCH_CHECK_VALUE(k_cache.stride(3) == 1 && v_cache.stride(3) == 1,
                    "attention_decode: caches must be contiguous in the head dimension");
  const auto lens_t = cache_lens.contiguous();
  const int32_t* lens = lens_t.const_data_ptr<int32_t>();
  // A length below the new queries' count would leave a query with no key (a silent zero row), one above the cache
  // would read past it: both are refused.
  for (int64_t b = 0; b < B; ++b)
    TORCH_CHECK_VALUE(lens[b] >= q_.size(1) && lens[b] <= k_cache.size(1), "attention_decode: cache_lens[", b, "] = ",
                      lens[b], " outside [", q_.size(1), ", ", k_cache.size(1), "]");
  const auto q = q_.contiguous();
  auto out = at::empty_like(q);
  if (q.numel() == 0) return out;
  if (q.scalar_type() == at::kFloat)
    decode_impl<float>(q, k_cache, v_cache, lens, scale, out);
  else
    decode_impl<at::BFloat16>(q, k_cache, v_cache, lens, scale, out);
  return out;
}

const char* attention_variant(bool bf16_products) {
  const int rows = widest_build("CHAMELEON_LITE_ATTENTION_ISA");
  if (bf16_products && bf16::available()) return "avx512+avx512bf16";  // AVX-512-BF16 comes with the AVX-512 rows
  return rows == 2 ? "avx512" : rows == 1 ? "avx2" : "portable";
}

}  // namespace chameleon_lite::cpu
