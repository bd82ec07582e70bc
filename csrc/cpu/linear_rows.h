// Inner loops of the weight-only bf16 linear y[m, n] = sum_k x[m, k] * w[n, k] (x fp32, w bf16, fp32 accumulation),
// for the few rows of a decode step. Included once per instruction set (CL_LINEAR_ISA names the namespace): portably
// from linear_bf16w.cpp and with AVX2/FMA from linear_bf16w_avx2.cpp. A bf16 value is the upper half of the fp32 with
// the same bits, so widening is a 16-bit shift; each weight row is read once per block of up to four x rows.
#include <cstdint>
#include <cstring>

#ifdef CL_AVX2_TARGET
#include <immintrin.h>
#endif

namespace chameleon_lite::cpu {

#ifndef CL_LINEAR_ROW_OPS_DEFINED
#define CL_LINEAR_ROW_OPS_DEFINED
// y[i * ldy + n] = x[i * ldx, :K] . w[n * K, :K] for i < m (m <= 4), n in [n0, n1)
using LinearBlockFn = void (*)(const float* x, int64_t ldx, int64_t m, const uint16_t* w, int64_t K, int64_t n0,
                               int64_t n1, float* y, int64_t ldy);
LinearBlockFn linear_block_avx2();
#endif

namespace CL_LINEAR_ISA {

inline float bf16_to_float(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

#ifdef CL_AVX2_TARGET
inline __m256 load_bf16x8(const uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

inline float hsum(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// MB x rows against NB weight rows starting at n. AHEAD: also fetch the next NB rows (short rows only, see rows()).
template <int MB, int NB, bool AHEAD>
inline void tile(const float* x, int64_t ldx, const uint16_t* w, int64_t K, int64_t n, float* y, int64_t ldy) {
  __m256 acc[MB][NB];
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_setzero_ps();
  const char* next = reinterpret_cast<const char*>(w + (n + NB) * K);
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    if constexpr (AHEAD) _mm_prefetch(next + k * 2 * NB, _MM_HINT_T0);
    __m256 wv[NB];
    for (int j = 0; j < NB; ++j) wv[j] = load_bf16x8(w + (n + j) * K + k);
    for (int i = 0; i < MB; ++i) {
      const __m256 xv = _mm256_loadu_ps(x + i * ldx + k);
      for (int j = 0; j < NB; ++j) acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MB; ++i)
    for (int j = 0; j < NB; ++j) {
      float s = hsum(acc[i][j]);
      for (int64_t kk = k; kk < K; ++kk) s += x[i * ldx + kk] * bf16_to_float(w[(n + j) * K + kk]);
      y[i * ldy + n + j] = s;
    }
}

template <int MB>
inline void rows(const float* x, int64_t ldx, const uint16_t* w, int64_t K, int64_t n0, int64_t n1, float* y,
                 int64_t ldy) {
  constexpr int NB = MB == 1 ? 4 : 2;
  int64_t n = n0;
  // The next NB weight rows follow these in memory. With short rows (K = 512: 1 KB) the hardware prefetcher sees
  // streams too short to ramp up and a decode step's linear ran at 12 GB/s, half of what long rows reach: fetch the
  // next tile at the rate this one is read (27-36 GB/s measured). Long rows (K = 4096) stream well alone, and
  // fetching 32 KB ahead there measured slower.
  if (K <= 1024) {
    for (; n + NB <= n1; n += NB) tile<MB, NB, true>(x, ldx, w, K, n, y, ldy);
  } else {
    for (; n + NB <= n1; n += NB) tile<MB, NB, false>(x, ldx, w, K, n, y, ldy);
  }
  for (; n < n1; ++n) tile<MB, 1, false>(x, ldx, w, K, n, y, ldy);
}

inline void linear_block(const float* x, int64_t ldx, int64_t m, const uint16_t* w, int64_t K, int64_t n0,
                         int64_t n1, float* y, int64_t ldy) {
  switch (m) {
    case 1: rows<1>(x, ldx, w, K, n0, n1, y, ldy); break;
    case 2: rows<2>(x, ldx, w, K, n0, n1, y, ldy); break;
    case 3: rows<3>(x, ldx, w, K, n0, n1, y, ldy); break;
    default: rows<4>(x, ldx, w, K, n0, n1, y, ldy); break;
  }
}
#else
// Portable: eight partial sums per dot product (the same association as the vector build) in plain C++.
inline void linear_block(const float* x, int64_t ldx, int64_t m, const uint16_t* w, int64_t K, int64_t n0,
                         int64_t n1, float* y, int64_t ldy) {
  for (int64_t n = n0; n < n1; ++n) {
    const uint16_t* wr = w + n * K;
    for (int64_t i = 0; i < m; ++i) {
      const float* xr = x + i * ldx;
      float part[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
      int64_t k = 0;
      for (; k + 8 <= K; k += 8)
        for (int l = 0; l < 8; ++l) part[l] += xr[k + l] * bf16_to_float(wr[k + l]);
      float s = ((part[0] + part[4]) + (part[2] + part[6])) + ((part[1] + part[5]) + (part[3] + part[7]));
      for (; k < K; ++k) s += xr[k] * bf16_to_float(wr[k]);
      y[i * ldy + n] = s;
    }
  }
}
#endif

}  // namespace CL_LINEAR_ISA
}  // namespace chameleon_lite::cpu
