#pragma once
// Body of the CPU sampling kernel for one row, compiled once per instruction set (sampling.cpp for the
// portable build, sampling_avx2.cpp with AVX2/FMA, sampling_avx512.cpp with AVX-512 enabled). The including file defines
// CL_SAMPLING_ISA (the namespace the functions land in) and, for a vector ISA, CPU_CAPABILITY and
// CPU_CAPABILITY_<ISA> before including this header, exactly like ATen's per-capability kernels.
// Only ATen's vector headers and plain data cross this boundary: no at::Tensor, no dispatcher.
// ATen's vector headers carry clang/nvcc pragmas and trip GCC's AVX-512 ABI and intrinsic-header
// warnings; they are not ours to fix, and this header is only included by the two sampling files.
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#pragma GCC diagnostic ignored "-Wpsabi"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>

#include "common/sampling.h"

namespace chameleon_lite {
namespace sampling_cpu {

enum class LogitDtype : int { kFloat = 0, kBFloat16 = 1, kHalf = 2 };

// Everything one row needs, as plain pointers into the op's (contiguous) inputs.
struct RowJob {
  const void* logits;           // [V] row of the conditional logits
  const void* uncond;           // [V] row of the unconditional logits, or nullptr (no CFG)
  LogitDtype dtype;
  int64_t vocab;
  const int64_t* ranges;        // [num_ranges, 2] half-open allowed ranges, or nullptr (all allowed)
  int64_t num_ranges;
  const int64_t* penalty_ids;   // [num_penalty], -1 = padding, or nullptr
  int64_t num_penalty;
  sampling::RowSettings settings;
  double uniform;               // the row's Philox draw in [0, 1)
};

using sampling::kRowEmpty;
using sampling::kRowNaN;
using sampling::kRowOk;
using sampling::kRowPosInf;

struct RowResult {
  int64_t id;
  float logprob;
  int status;
};

// Per-thread scratch besides the row buffer: fixed size, independent of V.
struct Scratch {
  float selection[sampling::kGatherCap];   // copy of the candidates, permuted by the selection
  float gather[sampling::kGatherCap];      // a bracket gathered by a search pass
  float cand_value[sampling::kGatherCap];  // candidates e >= cut, in id order
  int32_t cand_id[sampling::kGatherCap];
};

// Per-ISA entry points (defined in sampling.cpp, sampling_avx2.cpp and sampling_avx512.cpp).
RowResult sample_row_default(const RowJob& job, float* buf, Scratch& scratch);
RowResult sample_row_avx2(const RowJob& job, float* buf, Scratch& scratch);
RowResult sample_row_avx512(const RowJob& job, float* buf, Scratch& scratch);

}  // namespace sampling_cpu
}  // namespace chameleon_lite

namespace chameleon_lite {
namespace sampling_cpu {
namespace CL_SAMPLING_ISA {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kW = Vec::size();
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Reads kW logits of any supported dtype as fp32 (full vectors only).
template <typename T>
inline Vec load_f32(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return Vec::loadu(p);
  } else {
    Vec out;
    at::vec::load_to_float<T>(p, out);
    return out;
  }
}

inline float nan_max(float a, float b) {
  return (std::isnan(a) || std::isnan(b)) ? std::numeric_limits<float>::quiet_NaN() : (b > a ? b : a);
}

// NaN-propagating horizontal max (a NaN logit must surface as an error, not vanish in a comparison).
inline float reduce_max(const Vec& v) {
  float lanes[kW];
  v.store(lanes);
  float m = lanes[0];
  for (int64_t i = 1; i < kW; ++i) m = nan_max(m, lanes[i]);
  return m;
}

inline float reduce_sum(const Vec& v) {
  float lanes[kW];
  v.store(lanes);
  float s = 0.0f;
  for (int64_t i = 0; i < kW; ++i) s += lanes[i];
  return s;
}

template <typename T>
inline float combined(const T* cond, const T* uncond, bool cfg, float scale, int64_t i) {
  const float c = static_cast<float>(cond[i]);
  return cfg ? sampling::cfg_combine(c, static_cast<float>(uncond[i]), scale) : c;
}

// z over [lo, hi) into buf (CFG combine in fp32); returns the max of the written values.
template <typename T>
float write_span(const T* cond, const T* uncond, bool cfg, float scale, int64_t lo, int64_t hi, float* buf) {
  Vec vmax(kNegInf);
  const Vec vs(scale);
  int64_t i = lo;
  for (; i + kW <= hi; i += kW) {
    Vec z = load_f32(cond + i);
    if (cfg) {
      const Vec u = load_f32(uncond + i);
      z = u + vs * (z - u);
    }
    z.store(buf + i);
    vmax = at::vec::maximum(vmax, z);
  }
  float m = reduce_max(vmax);
  for (; i < hi; ++i) {
    buf[i] = combined(cond, uncond, cfg, scale, i);
    m = nan_max(m, buf[i]);
  }
  return m;
}

inline float row_max(const float* z, int64_t n) {
  // Four independent accumulators hide the latency of vmaxps when the row is in cache.
  Vec m0(kNegInf), m1(kNegInf), m2(kNegInf), m3(kNegInf);
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    m0 = at::vec::maximum(m0, Vec::loadu(z + i));
    m1 = at::vec::maximum(m1, Vec::loadu(z + i + kW));
    m2 = at::vec::maximum(m2, Vec::loadu(z + i + 2 * kW));
    m3 = at::vec::maximum(m3, Vec::loadu(z + i + 3 * kW));
  }
  for (; i + kW <= n; i += kW) m0 = at::vec::maximum(m0, Vec::loadu(z + i));
  float m = reduce_max(at::vec::maximum(at::vec::maximum(m0, m1), at::vec::maximum(m2, m3)));
  for (; i < n; ++i) m = nan_max(m, z[i]);
  return m;
}

inline int64_t first_index_of(const float* z, int64_t n, float value) {
  const Vec vv(value);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    const int eq_zero = (Vec::loadu(z + i) != vv).zero_mask();  // bit set where z == value
    if (eq_zero) return i + __builtin_ctz(static_cast<unsigned>(eq_zero));
  }
  for (; i < n; ++i)
    if (z[i] == value) return i;
  return n - 1;
}

// count += (e >= pivot), mass += e where e >= pivot.
inline void accumulate(Vec& count, Vec& mass, const Vec& e, const Vec& pivot, const Vec& one) {
#if defined(CPU_CAPABILITY_AVX512)
  // Masked adds: one instruction each instead of mask -> vector, and, add.
  const __mmask16 ge = _mm512_cmp_ps_mask(e, pivot, _CMP_GE_OQ);
  count = _mm512_mask_add_ps(count, ge, count, one);
  mass = _mm512_mask_add_ps(mass, ge, mass, e);
#else
  const Vec ge = e >= pivot;
  count = count + (ge & one);
  mass = mass + (ge & e);
#endif
}

// Appends the lanes of e (the vector at ep + i) that are >= cut, with their ids, to the candidate lists;
// stops at kGatherCap. Returns the new count.
inline int collect(const Vec& e, const Vec& cut, const float* ep, int64_t i, int ncand, Scratch* cand) {
#if defined(CPU_CAPABILITY_AVX512)
  const __mmask16 hit = _mm512_cmp_ps_mask(e, cut, _CMP_GE_OQ);
  if (hit == 0) return ncand;
  if (ncand + 16 <= sampling::kGatherCap) {
    // Register-form compress + plain store: the memory form of vcompress is microcoded on some cores.
    const __m512i ids = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(i)),
                                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    _mm512_storeu_ps(cand->cand_value + ncand, _mm512_maskz_compress_ps(hit, e));
    _mm512_storeu_si512(cand->cand_id + ncand, _mm512_maskz_compress_epi32(hit, ids));
    return ncand + __builtin_popcount(static_cast<unsigned>(hit));
  }
  unsigned bits = hit;
#else
  unsigned bits = ~static_cast<unsigned>((e >= cut).zero_mask()) & ((kW >= 32) ? 0xFFFFFFFFu : ((1u << kW) - 1u));
#endif
  while (bits && ncand < sampling::kGatherCap) {
    const int lane = __builtin_ctz(bits);
    cand->cand_value[ncand] = ep[i + lane];
    cand->cand_id[ncand] = static_cast<int32_t>(i + lane);
    ++ncand;
    bits &= bits - 1;
  }
  return ncand;
}

// Accumulates count and mass of {e >= pivot_j} for P pivots over e[0, n) in fp32 lanes, flushed to
// int64 / fp64 every kBlock vectors so neither loses precision on long rows. kExp: the input is z and
// e = exp((z - zmax) * inv_t) is computed and stored to dst. kCollect: values >= pivot 1 are also
// appended, with their ids, to cand (at most kGatherCap; the caller knows the true count from the stats).
template <int P, bool kExp, bool kCollect>
void stats_loop(const float* src, float* dst, int64_t n, float zmax, float inv_t, const float* piv,
                int64_t* count, double* mass, Scratch* cand) {
  constexpr int64_t kBlock = 256;
  const Vec one(1.0f);
  const Vec vmax(zmax);
  const Vec vinv(inv_t);
  Vec vp[P];
#pragma GCC unroll 16
  for (int j = 0; j < P; ++j) {
    vp[j] = Vec(piv[j]);
    count[j] = 0;
    mass[j] = 0.0;
  }
  int ncand = 0;
  // exp is an out-of-line SLEEF call that clobbers every vector register, so it runs over a chunk of
  // kChunk vectors first; the stats then read the chunk back from L1 with all accumulators in registers.
  constexpr int64_t kChunk = 64;
  int64_t i = 0;
  const int64_t full = n - n % kW;
  while (i < full) {
    Vec c[P], m[P];
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) {
      c[j] = Vec(0.0f);
      m[j] = Vec(0.0f);
    }
    const int64_t stop = std::min(full, i + kBlock * kW);
    while (i < stop) {
      const int64_t chunk_end = std::min(stop, i + kChunk * kW);
      if constexpr (kExp) {
        for (int64_t k = i; k < chunk_end; k += kW) ((Vec::loadu(src + k) - vmax) * vinv).exp().store(dst + k);
      }
      const float* ep = kExp ? dst : src;
      for (; i < chunk_end; i += kW) {
        const Vec e = Vec::loadu(ep + i);
#pragma GCC unroll 16
        for (int j = 0; j < P; ++j) accumulate(c[j], m[j], e, vp[j], one);
        if constexpr (kCollect) ncand = collect(e, vp[1], ep, i, ncand, cand);
      }
    }
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j) {
      count[j] += static_cast<int64_t>(reduce_sum(c[j]));
      mass[j] += static_cast<double>(reduce_sum(m[j]));
    }
  }
  for (; i < n; ++i) {
    const float e = kExp ? std::exp((src[i] - zmax) * inv_t) : src[i];
    if constexpr (kExp) dst[i] = e;
#pragma GCC unroll 16
    for (int j = 0; j < P; ++j)
      if (e >= piv[j]) {
        count[j] += 1;
        mass[j] += e;
        if (kCollect && j == 1 && ncand < sampling::kGatherCap) {
          cand->cand_value[ncand] = e;
          cand->cand_id[ncand] = static_cast<int32_t>(i);
          ++ncand;
        }
      }
  }
}

// Passes over the row of e values for sampling::search.
struct RowPasses {
  const float* e;
  int64_t n;

  void stats(const uint32_t* keys, int np, sampling::Point* out) const {
    float piv[sampling::kPassPivots];
    int64_t c[sampling::kPassPivots];
    double m[sampling::kPassPivots];
    for (int j = 0; j < sampling::kPassPivots; ++j)
      piv[j] = j < np ? sampling::value_of(keys[j]) : std::numeric_limits<float>::infinity();
    stats_loop<sampling::kPassPivots, false, false>(e, nullptr, n, 0.0f, 1.0f, piv, c, m, nullptr);
    for (int j = 0; j < np; ++j) out[j] = sampling::Point{keys[j], c[j], m[j]};
  }

  int gather(uint32_t lo_key, uint32_t hi_key, float* out) const {
    const float lo = sampling::value_of(lo_key);
    const float hi = sampling::value_of(hi_key);
    const Vec vlo(lo), vhi(hi);
    int k = 0;
    int64_t i = 0;
    for (; i + kW <= n; i += kW) {
      const Vec v = Vec::loadu(e + i);
#if defined(CPU_CAPABILITY_AVX512)
      const __mmask16 inside = _mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ) & _mm512_cmp_ps_mask(v, vhi, _CMP_LT_OQ);
      if (inside == 0) continue;
      if (k + 16 <= sampling::kGatherCap) {
        _mm512_storeu_ps(out + k, _mm512_maskz_compress_ps(inside, v));
        k += __builtin_popcount(static_cast<unsigned>(inside));
        continue;
      }
      unsigned bits = inside;
#else
      unsigned bits = ~static_cast<unsigned>(((v >= vlo) & (v < vhi)).zero_mask()) &
                      ((kW >= 32) ? 0xFFFFFFFFu : ((1u << kW) - 1u));
#endif
      while (bits && k < sampling::kGatherCap) {
        out[k++] = e[i + __builtin_ctz(bits)];
        bits &= bits - 1;
      }
    }
    for (; i < n && k < sampling::kGatherCap; ++i)
      if (e[i] >= lo && e[i] < hi) out[k++] = e[i];
    return k;
  }
};

// First id whose running survivor mass exceeds target; blocks of 16 vectors are skipped on their sum.
inline int64_t inverse_cdf(const float* e, int64_t n, float tau, double target) {
  constexpr int64_t kBlockElems = 16 * kW;
  const Vec vt(tau);
  double cum = 0.0;
  int64_t i = 0;
  for (; i + kBlockElems <= n; i += kBlockElems) {
    Vec acc(0.0f);
    for (int64_t k = 0; k < kBlockElems; k += kW) {
      const Vec v = Vec::loadu(e + i + k);
      acc = acc + ((v >= vt) & v);
    }
    const double block = reduce_sum(acc);
    if (cum + block <= target) {
      cum += block;
      continue;
    }
    for (int64_t k = i; k < i + kBlockElems; ++k) {
      if (e[k] >= tau) {
        cum += e[k];
        if (cum > target) return k;
      }
    }
  }
  for (; i < n; ++i) {
    if (e[i] >= tau) {
      cum += e[i];
      if (cum > target) return i;
    }
  }
  // u * W landed in the last bits of rounding between summation orders: the last survivor.
  for (int64_t k = n - 1; k >= 0; --k)
    if (e[k] >= tau) return k;
  return n - 1;
}

// ---- top-k without the exp pass -------------------------------------------------------------------------
// With 0 < top_k <= kFastTopK the survivors are the k largest e = exp((z - zmax) / T), and e orders like z, so the
// k-th largest z is found first, in one compare pass with a running threshold: values above it are appended to a
// buffer, and a full buffer is cut back to its k largest (the threshold rises to the k-th). A second compare pass
// collects the ids whose z lies at or just below that value (the margin covers exp's last-bit rounding, so no id
// whose rounded e ties the k-th is missed); e, top-p, min-p and the draw then come from those candidates alone. Two
// cheap passes replace the exp pass and the threshold search over the whole row. The result is the same cut as the
// general path's: tau = max(t_k, t_p, min_p) over the same e values; only fp64 sums run in another order.
constexpr int64_t kFastTopK = 512;

constexpr unsigned kLaneMask = (kW >= 32) ? 0xFFFFFFFFu : ((1u << kW) - 1u);  // one bit per vector lane

// The running top-k buffer of the selection pass: values above thr are appended; a full buffer is cut back to its k
// largest and thr raised to the k-th.
struct RunningTopK {
  float* out;  // capacity kGatherCap
  int64_t k;
  float thr = kNegInf;
  int m = 0;

  void push(float x) {
    if (!(x > thr)) return;  // thr may have risen since x was compared
    out[m++] = x;
    if (m == sampling::kGatherCap) {
      std::nth_element(out, out + (k - 1), out + m, std::greater<float>());
      thr = out[k - 1];
      m = static_cast<int>(k);
    }
  }
};

// The fast path; false when it does not apply (fewer than k finite logits, e underflowing to 0 at the k-th, or more
// candidates than the scratch holds), and the general path then runs.
inline bool sample_top_k_fast(const float* z, int64_t n, float zmax, float inv_t, const sampling::RowSettings& s,
                              double uniform, Scratch& scratch, RowResult* result) {
  const int64_t k = s.top_k;
  RunningTopK top{scratch.selection, k};
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    unsigned bits = ~static_cast<unsigned>((Vec::loadu(z + i) > Vec(top.thr)).zero_mask()) & kLaneMask;
    for (; bits; bits &= bits - 1) top.push(z[i + __builtin_ctz(bits)]);
  }
  for (; i < n; ++i) top.push(z[i]);
  if (top.m < k) return false;
  std::nth_element(top.out, top.out + (k - 1), top.out + top.m, std::greater<float>());
  const float zk = top.out[k - 1];
  const float ak = (zk - zmax) * inv_t;
  const float zcut = zk - s.temperature * 1e-4f * (1.0f + std::fabs(ak));

  // candidates z >= zcut in id order, e computed in place (vectors padded with -inf, e = 0)
  float* cv = scratch.cand_value;
  int32_t* cid = scratch.cand_id;
  constexpr int kCap = sampling::kGatherCap - static_cast<int>(kW);
  int nc = 0;
  const Vec vcut(zcut);
  for (i = 0; i + kW <= n; i += kW) {
    unsigned bits = ~static_cast<unsigned>((Vec::loadu(z + i) >= vcut).zero_mask()) & kLaneMask;
    if (bits == 0) continue;
    if (nc + __builtin_popcount(bits) > kCap) return false;
    while (bits) {
      const int lane = __builtin_ctz(bits);
      cv[nc] = z[i + lane];
      cid[nc++] = static_cast<int32_t>(i + lane);
      bits &= bits - 1;
    }
  }
  for (; i < n; ++i) {
    if (!(z[i] >= zcut)) continue;
    if (nc >= kCap) return false;
    cv[nc] = z[i];
    cid[nc++] = static_cast<int32_t>(i);
  }
  for (int j = nc; j % kW != 0; ++j) cv[j] = kNegInf;
  const Vec vmax(zmax), vinv(inv_t);
  for (int j = 0; j < nc; j += static_cast<int>(kW)) ((Vec::loadu(cv + j) - vmax) * vinv).exp().store(cv + j);

  // t_k: the k-th largest e (ties kept); t_p: the largest e whose cumulative mass from the top reaches p of the
  // top-k mass; min-p; tau = the largest of them
  float* srt = scratch.gather;
  std::copy(cv, cv + nc, srt);
  std::sort(srt, srt + nc, std::greater<float>());
  const float tk = srt[k - 1];
  if (!(tk > 0.0f)) return false;
  int nk = static_cast<int>(k);
  while (nk < nc && srt[nk] == tk) ++nk;  // ties of the k-th survive
  float tau = tk;
  if (sampling::top_p_active(s.top_p)) {
    double mass_k = 0.0;
    for (int j = 0; j < nk; ++j) mass_k += srt[j];
    const double target = static_cast<double>(s.top_p) * mass_k;
    double cum = 0.0;
    for (int j = 0; j < nk;) {
      int end = j;
      while (end < nk && srt[end] == srt[j]) cum += srt[end++];
      if (cum >= target) {
        tau = std::max(tau, srt[j]);
        break;
      }
      j = end;
    }
  }
  if (sampling::min_p_active(s.min_p) && s.min_p > tau) tau = s.min_p;
  double w = 0.0;
  for (int j = 0; j < nc; ++j)
    if (cv[j] >= tau) w += cv[j];
  const double target = uniform * w;
  double cum = 0.0;
  int pick = -1;
  for (int j = 0; j < nc; ++j) {
    if (cv[j] < tau) continue;
    pick = j;
    cum += cv[j];
    if (cum > target) break;
  }
  *result = RowResult{cid[pick], sampling::chosen_logprob(cv[pick], w), kRowOk};
  return true;
}

template <typename T>
RowResult sample_row_typed(const RowJob& job, float* buf, Scratch& scratch) {
  const int64_t n = job.vocab;
  const T* cond = static_cast<const T*>(job.logits);
  const T* uncond = static_cast<const T*>(job.uncond);
  const sampling::RowSettings& s = job.settings;
  const bool cfg = uncond != nullptr;
  const bool direct = std::is_same_v<T, float> && !cfg && job.ranges == nullptr && job.penalty_ids == nullptr;

  const float* z;
  float zmax;
  if (direct) {
    z = reinterpret_cast<const float*>(cond);
    zmax = row_max(z, n);
  } else {
    if (job.ranges != nullptr) {
      std::fill(buf, buf + n, kNegInf);
      zmax = kNegInf;
      for (int64_t r = 0; r < job.num_ranges; ++r) {
        const int64_t lo = job.ranges[2 * r], hi = job.ranges[2 * r + 1];
        if (hi > lo) zmax = nan_max(zmax, write_span(cond, uncond, cfg, s.cfg_scale, lo, hi, buf));
      }
    } else {
      zmax = write_span(cond, uncond, cfg, s.cfg_scale, 0, n, buf);
    }
    if (job.penalty_ids != nullptr && !std::isnan(zmax)) {
      bool changed = false;
      for (int64_t k = 0; k < job.num_penalty; ++k) {
        const int64_t id = job.penalty_ids[k];
        if (id < 0 || buf[id] == kNegInf) continue;  // padding, or not allowed
        // Recomputed from the source so a repeated id is penalised once.
        buf[id] = sampling::apply_penalty(combined(cond, uncond, cfg, s.cfg_scale, id), s.penalty);
        changed = true;
      }
      if (changed) zmax = row_max(buf, n);
    }
    z = buf;
  }
  if (std::isnan(zmax)) return RowResult{0, 0.0f, kRowNaN};
  if (zmax == std::numeric_limits<float>::infinity()) return RowResult{0, 0.0f, kRowPosInf};
  if (zmax == kNegInf) return RowResult{0, 0.0f, kRowEmpty};

  if (s.temperature == 0.0f) return RowResult{first_index_of(z, n, zmax), 0.0f, kRowOk};

  const float inv_t = 1.0f / s.temperature;
  if (sampling::top_k_active(s.top_k, n) && s.top_k <= kFastTopK) {
    RowResult fast;
    if (sample_top_k_fast(z, n, zmax, inv_t, s, job.uniform, scratch, &fast)) return fast;
  }
  sampling::PointTable table;
  table.reset();
  const bool filtering = sampling::top_k_active(s.top_k, n) || sampling::top_p_active(s.top_p) ||
                         sampling::min_p_active(s.min_p);
  const bool searching = sampling::top_k_active(s.top_k, n) || sampling::top_p_active(s.top_p);
  // Pivots of the exp pass: the support, the candidate cut, min-p (or the empty end point), then the
  // search pivots when a search follows.
  constexpr int kBase = 3, kAll = kBase + sampling::kSearchPivots;
  // With min-p alone the survivors are exactly {e >= min_p}, so the candidates need go no lower.
  const uint32_t cut = (!searching && sampling::key_of(s.min_p) > sampling::kKeyCandidateCut)
                           ? sampling::key_of(s.min_p)
                           : sampling::kKeyCandidateCut;
  uint32_t keys[kAll] = {sampling::kKeyPositive, cut,
                         sampling::min_p_active(s.min_p) ? sampling::key_of(s.min_p) : sampling::kKeyEnd};
  for (int j = 0; j < sampling::kSearchPivots; ++j) keys[kBase + j] = sampling::search_pivot(j);
  float piv[kAll];
  int64_t cnt[kAll];
  double mass[kAll];
  for (int j = 0; j < kAll; ++j) piv[j] = sampling::value_of(keys[j]);
  if (searching)
    stats_loop<kAll, true, true>(z, buf, n, zmax, inv_t, piv, cnt, mass, &scratch);
  else if (filtering)
    stats_loop<kBase, true, true>(z, buf, n, zmax, inv_t, piv, cnt, mass, &scratch);
  else
    stats_loop<kBase, true, false>(z, buf, n, zmax, inv_t, piv, cnt, mass, nullptr);
  table.insert(sampling::Point{sampling::kKeyEnd, 0, 0.0});
  for (int j = 0; j < (searching ? kAll : kBase); ++j) table.insert(sampling::Point{keys[j], cnt[j], mass[j]});

  // All ids with e >= cut were collected when there are at most kGatherCap of them.
  const bool have_candidates = filtering && cnt[1] <= sampling::kGatherCap;
  const int ncand = static_cast<int>(have_candidates ? cnt[1] : 0);
  sampling::GatheredSets sets;
  sets.candidates.valid = false;
  sets.fresh.valid = false;
  sets.fresh_buf = scratch.gather;
  // The selection permutes its array, so a search gets a copy of the candidates (kept in id order).
  if (have_candidates && searching) {
    std::copy(scratch.cand_value, scratch.cand_value + ncand, scratch.selection);
    sets.candidates.start(scratch.selection, ncand, cut, sampling::Point{sampling::kKeyEnd, 0, 0.0});
  }
  RowPasses passes{buf, n};
  const sampling::Point tau = sampling::find_threshold(table, sets, passes, s);
  const float tau_v = sampling::value_of(tau.key);
  const double target = job.uniform * tau.mass;
  int64_t id;
  float e_id;
  if (have_candidates && tau.key >= cut) {
    id = sampling::inverse_cdf_list(scratch.cand_value, scratch.cand_id, ncand, tau_v, target);
  } else {
    id = inverse_cdf(buf, n, tau_v, target);
  }
  e_id = buf[id];
  return RowResult{id, sampling::chosen_logprob(e_id, tau.mass), kRowOk};
}

inline RowResult sample_row(const RowJob& job, float* buf, Scratch& scratch) {
  switch (job.dtype) {
    case LogitDtype::kFloat:
      return sample_row_typed<float>(job, buf, scratch);
    case LogitDtype::kBFloat16:
      return sample_row_typed<c10::BFloat16>(job, buf, scratch);
    case LogitDtype::kHalf:
      return sample_row_typed<c10::Half>(job, buf, scratch);
  }
  return RowResult{0, 0.0f, kRowEmpty};
}

}  // namespace CL_SAMPLING_ISA
}  // namespace sampling_cpu
}  // namespace chameleon_lite
