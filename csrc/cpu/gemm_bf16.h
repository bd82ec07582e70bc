// Native bf16 small GEMM for the attention kernels on CPUs with AVX-512-BF16 (ARCHITECTURE §5): bf16 operands,
// fp32 accumulation through `vdpbf16ps`, which multiplies two bf16 pairs per fp32 lane (twice the products of an
// fp32 FMA per instruction). oneDNN's small-GEMM micro-kernel (at::native::cpublas::brgemm) runs bf16 at the fp32
// rate on such CPUs when it has no AMX, so the attention multiplies through this one instead.
//
// B operands are stored in pairs ("VNNI" layout): element (k, n) of B lives at Bp[(k / 2) * 2 * ldb + 2 * n + k % 2],
// so one 32-bit load holds the two k-neighbours that one `vdpbf16ps` lane multiplies; an odd K is padded with a zero
// row by the packers below. The A operand is plain row-major bf16.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

namespace chameleon_lite::cpu::bf16 {

using c10::BFloat16;

// C[M, N] (row stride ldc) = (add ? C : 0) + A[M, K] (row stride lda) · B[K, N] (pairs, ldb pairs per pair row),
// accumulated in fp32. Defined in gemm_bf16_avx512.cpp; call only when available() is true.
void gemm(int64_t M, int64_t N, int64_t K, const BFloat16* A, int64_t lda, const BFloat16* Bp, int64_t ldb, float* C,
          int64_t ldc, bool add);

// True when this CPU has AVX-512-BF16 and the build has the kernel (x86 with GCC or Clang), and the environment does
// not force another build of the attention loops (CHAMELEON_LITE_ATTENTION_ISA=portable or avx2).
bool available();

// Pair rows needed for K rows of B.
inline int64_t pair_rows(int64_t K) { return (K + 1) / 2; }

// B[k, n] = src[k * lds + n] (K rows of N bf16 values) -> pairs at dst (ldb pairs per pair row): the raw 16-bit
// values of two rows interleaved; an odd K's last pair gets a zero partner.
inline void pack_rows(const BFloat16* src, int64_t lds, int64_t K, int64_t N, BFloat16* dst, int64_t ldb) {
  for (int64_t k = 0; k < K; k += 2) {
    auto* d = reinterpret_cast<uint16_t*>(dst + (k / 2) * 2 * ldb);
    const auto* s0 = reinterpret_cast<const uint16_t*>(src + k * lds);
    const auto* s1 = reinterpret_cast<const uint16_t*>(src + (k + 1) * lds);
    if (k + 1 < K) {
      for (int64_t n = 0; n < N; ++n) {
        d[2 * n] = s0[n];
        d[2 * n + 1] = s1[n];
      }
    } else {
      for (int64_t n = 0; n < N; ++n) {
        d[2 * n] = s0[n];
        d[2 * n + 1] = 0;  // bf16 zero
      }
    }
  }
}

// B[k, n] = src[n * lds + k] (N rows of K bf16 values, i.e. B is the transpose of src) -> pairs at dst: with an even
// K a transpose of 32-bit pairs; an odd K's last pair gets a zero partner.
inline void pack_cols(const BFloat16* src, int64_t lds, int64_t N, int64_t K, BFloat16* dst, int64_t ldb) {
  for (int64_t n = 0; n < N; ++n) {
    const BFloat16* s = src + n * lds;
    for (int64_t k2 = 0; k2 < K / 2; ++k2) std::memcpy(dst + k2 * 2 * ldb + 2 * n, s + 2 * k2, 2 * sizeof(BFloat16));
    if (K % 2) {
      dst[(K / 2) * 2 * ldb + 2 * n] = s[K - 1];
      dst[(K / 2) * 2 * ldb + 2 * n + 1] = BFloat16(0.f);
    }
  }
}

}  // namespace chameleon_lite::cpu::bf16
