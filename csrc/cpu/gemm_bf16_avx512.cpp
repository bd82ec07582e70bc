// AVX-512-BF16 build of the native bf16 small GEMM (csrc/cpu/gemm_bf16.h). The target pragma (rather than a global
// -mavx512bf16) keeps every other file portable; available() checks the CPU before anything calls gemm().
#include "cpu/gemm_bf16.h"

#include <cstdlib>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#include <immintrin.h>

namespace chameleon_lite::cpu::bf16 {
namespace {

constexpr int kMR = 8;  // rows of C per register block (8 x 2 accumulators + 2 B vectors + 1 broadcast of 32)

inline __mmask16 lanes(int64_t n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

// One block of C: MR rows x NV * 16 columns (n of them live), over K = 2 * K2 - odd.
template <int MR, int NV>
void block(int64_t K2, bool odd, const uint16_t* A, int64_t lda, const uint32_t* B, int64_t ldb, float* C, int64_t ldc,
           int64_t n, bool add) {
  const __mmask16 m0 = lanes(n), m1 = NV > 1 ? lanes(n - 16) : __mmask16(0);
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    acc[r][0] = add ? _mm512_maskz_loadu_ps(m0, C + r * ldc) : _mm512_setzero_ps();
    if constexpr (NV > 1) acc[r][1] = add ? _mm512_maskz_loadu_ps(m1, C + r * ldc + 16) : _mm512_setzero_ps();
  }
  // Every loop over r is unrolled (a rolled one indexes acc, which puts acc in memory and g++ then stores each
  // accumulator to the stack per step); an odd K's last step is written out apart, without a branch in the loop.
  const int64_t full = odd ? K2 - 1 : K2;
  for (int64_t k2 = 0; k2 < full; ++k2) {
    const __m512bh b0 = (__m512bh)_mm512_maskz_loadu_epi32(m0, B + k2 * ldb);
    __m512bh b1;
    if constexpr (NV > 1) b1 = (__m512bh)_mm512_maskz_loadu_epi32(m1, B + k2 * ldb + 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      int pair;
      std::memcpy(&pair, A + r * lda + 2 * k2, sizeof(pair));
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      if constexpr (NV > 1) acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
    }
  }
  if (odd) {
    const __m512bh b0 = (__m512bh)_mm512_maskz_loadu_epi32(m0, B + full * ldb);
    __m512bh b1;
    if constexpr (NV > 1) b1 = (__m512bh)_mm512_maskz_loadu_epi32(m1, B + full * ldb + 16);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(A[r * lda + 2 * full]);  // zero partner
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
      if constexpr (NV > 1) acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(C + r * ldc, m0, acc[r][0]);
    if constexpr (NV > 1) _mm512_mask_storeu_ps(C + r * ldc + 16, m1, acc[r][1]);
  }
}

template <int NV>
void rows(int64_t M, int64_t K2, bool odd, const uint16_t* A, int64_t lda, const uint32_t* B, int64_t ldb, float* C,
          int64_t ldc, int64_t n, bool add) {
  int64_t i = 0;
  for (; i + kMR <= M; i += kMR) block<kMR, NV>(K2, odd, A + i * lda, lda, B, ldb, C + i * ldc, ldc, n, add);
  const auto* a = A + i * lda;
  float* c = C + i * ldc;
  switch (M - i) {
    case 7: block<7, NV>(K2, odd, a, lda, B, ldb, c, ldc, n, add); break;
    case 6: block<6, NV>(K2, odd, a, lda, B, ldb, c, ldc, n, add); break;
    case 5: block<5, NV>(K2, odd, a, lda, B, ldb, c, ldc, n, add); break;
    case 4: block<4, NV>(K2, odd, a, lda, B, ldb, c, ldc, n, add); break;
    case 3: block<3, NV>(K2, odd, a, lda, B, ldb, c, ldc, n, add); break;
    case 2: block<2, NV>(K2, odd, a, lda, B, ldb, c, ldc, n, add); break;
    case 1: block<1, NV>(K2, odd, a, lda, B, ldb, c, ldc, n, add); break;
    default: break;
  }
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, const BFloat16* A, int64_t lda, const BFloat16* Bp, int64_t ldb, float* C,
          int64_t ldc, bool add) {
  if (M <= 0 || N <= 0) return;
  const auto* a = reinterpret_cast<const uint16_t*>(A);
  const auto* b = reinterpret_cast<const uint32_t*>(Bp);
  const int64_t K2 = (K + 1) / 2;
  const bool odd = K % 2 != 0;
  // column blocks of 32 outside, so one block of B (K2 x 32 pairs) stays in L1 while every row block passes over it
  for (int64_t j = 0; j < N; j += 32) {
    const int64_t n = N - j < 32 ? N - j : 32;
    if (n > 16)
      rows<2>(M, K2, odd, a, lda, b + j, ldb, C + j, ldc, n, add);
    else
      rows<1>(M, K2, odd, a, lda, b + j, ldb, C + j, ldc, n, add);
  }
}

bool available() {
  static const bool ok = [] {
    const char* isa = std::getenv("CHAMELEON_LITE_ATTENTION_ISA");
    if (isa != nullptr && (std::strcmp(isa, "portable") == 0 || std::strcmp(isa, "avx2") == 0)) return false;
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512bf16");
  }();
  return ok;
}

}  // namespace chameleon_lite::cpu::bf16

#else

namespace chameleon_lite::cpu::bf16 {
// Never called: available() is false without x86 and GCC/Clang.
void gemm(int64_t, int64_t, int64_t, const BFloat16*, int64_t, const BFloat16*, int64_t, float*, int64_t, bool) {
  std::abort();
}
bool available() { return false; }
}  // namespace chameleon_lite::cpu::bf16

#endif
