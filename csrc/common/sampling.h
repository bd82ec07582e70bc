#pragma once
// Shared logic of the fused constrained sampling kernels (CPU now, CUDA later): the per-logit transforms,
// and the threshold search that finds the top-k / top-p cut without sorting the vocabulary.
//
// Semantics (ARCHITECTURE §6), per row, all math in fp32 unless noted:
//   z_i = cond_i, or with CFG  z_i = uncond_i + s * (cond_i - uncond_i)   (raw logits, not log-softmax;
//         every later step except the repetition penalty is invariant to a per-row shift, so the two
//         choices differ only in how the penalty sees the values)
//   ids outside the allowed ranges -> -inf
//   repetition penalty (CTRL): z_i / p if z_i > 0 else z_i * p, once per distinct id in penalty_ids
//   temperature 0: greedy, argmax of z, ties to the lowest id, logprob 0 (a point mass)
//   otherwise e_i = exp((z_i - max z) * (1 / T)) in fp32: the unnormalised tempered probabilities, max 1
//   top-k:  t_k = k-th largest e (0 < k < #{e > 0}, else no cut); survivors e >= t_k (ties kept)
//   top-p:  t_p = the largest value t with  sum_{e_j >= t} e_j >= p * sum_{e_j >= t_k} e_j  (p < 1)
//   min-p:  survivors e >= min_p (== p_i >= min_p * p_max; independent of renormalisation)
//   tau = max(t_k, t_p, min_p); survivors S = {i : e_i >= tau, e_i > 0}; W = sum_S e (fp64)
//   draw u in [0, 1) from Philox(seed; step, row); pick the first id (in id order) whose running sum of
//   survivor e exceeds u * W; logprob = log(e_id) - log(W).
//
// The search works on the bit patterns ("keys") of the non-negative floats e, which order like the values.
// A table holds exact statistics (count and mass of {e >= key}) at known keys; each pass over the row
// evaluates a handful of new pivots inside the bracket that holds the answer, and once the bracket holds
// few enough elements they are gathered into a small array and finished by a radix selection.
// Everything here is header-only, without std:: containers, and compiles as host C++ and CUDA device code.
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "common/philox.h"

namespace chameleon_lite {
namespace sampling {

constexpr int kPassPivots = 8;      // pivots evaluated per pass over the row
constexpr int kMaxPoints = 256;     // table capacity; a search needs at most ~10 passes (see search())
constexpr int kGatherCap = 4096;    // bracket size at which elements are gathered instead of another pass
constexpr int kMaxPassesPerSearch = 12;

// Per-row outcome codes of the kernels (CPU and CUDA); the ops turn them into errors.
constexpr int kRowOk = 0;
constexpr int kRowNaN = 1;     // a NaN logit among the allowed ids
constexpr int kRowPosInf = 2;  // a +inf logit among the allowed ids
constexpr int kRowEmpty = 3;   // no allowed id has a finite logit

CL_HD inline float cfg_combine(float cond, float uncond, float scale) { return uncond + scale * (cond - uncond); }

CL_HD inline float apply_penalty(float z, float penalty) { return z > 0.0f ? z / penalty : z * penalty; }

CL_HD inline uint32_t key_of(float e) {
  uint32_t k;
  memcpy(&k, &e, sizeof(k));
  return k;
}

CL_HD inline float value_of(uint32_t key) {
  float e;
  memcpy(&e, &key, sizeof(e));
  return e;
}

// Smallest positive float: {e >= value_of(kKeyPositive)} is the support {e > 0}.
constexpr uint32_t kKeyPositive = 1u;
// One past 1.0f: no e reaches it (e <= 1 since e_max = exp(0)).
constexpr uint32_t kKeyEnd = 0x3F800001u;

// The candidate cut: the exp pass also collects every e >= 2^-10 (p_i >= ~0.001 p_max) with its id, up to
// kGatherCap of them. Typical top-k / top-p / min-p cuts lie above it, and then the thresholds and the draw
// come from the candidates alone: two passes over the row in all (max, exp) instead of a search.
constexpr uint32_t kKeyCandidateCut = 0x3A800000u;

// Extra exp-pass pivots when a top-k / top-p search follows. Above the candidate cut (2^-1, 2^-3, 2^-6)
// they narrow the candidates a selection has to look at; below it (2^-13, 2^-16, 2^-20, 2^-26) a cut
// under the candidates usually lands in a bracket small enough to gather at once.
constexpr int kSearchPivots = 7;
CL_HD inline uint32_t search_pivot(int j) {
  const uint32_t k[kSearchPivots] = {0x3F000000u, 0x3E000000u, 0x3C800000u, 0x39000000u,
                                     0x37800000u, 0x35800000u, 0x32800000u};
  return k[j];
}

// Exact statistics of {e >= value_of(key)}.
struct Point {
  uint32_t key;
  int64_t count;
  double mass;
};

enum class By : int { kCount = 0, kMass = 1 };

CL_HD inline bool meets(const Point& p, By by, double target) {
  return by == By::kCount ? static_cast<double>(p.count) >= target : p.mass >= target;
}

struct Bracket {
  Point lo;  // meets the target
  Point hi;  // does not; lo.key < hi.key
};

// Known points sorted by key; counts and masses are non-increasing in the key.
struct PointTable {
  Point pts[kMaxPoints];
  int n;

  CL_HD void reset() { n = 0; }

  CL_HD bool insert(Point p) {
    int i = 0;
    while (i < n && pts[i].key < p.key) ++i;
    if (i < n && pts[i].key == p.key) return true;
    if (n == kMaxPoints) return false;
    for (int j = n; j > i; --j) pts[j] = pts[j - 1];
    pts[i] = p;
    ++n;
    return true;
  }

  CL_HD Point at_key(uint32_t key) const {
    for (int i = 0; i < n; ++i)
      if (pts[i].key == key) return pts[i];
    return pts[0];
  }

  // Requires pts[0] to meet the target and pts[n-1] not to.
  CL_HD Bracket bracket(By by, double target) const {
    int i = 0;
    while (i + 1 < n && meets(pts[i + 1], by, target)) ++i;
    Bracket b;
    b.lo = pts[i];
    b.hi = pts[i + 1];
    return b;
  }
};

// Up to kPassPivots keys evenly spread strictly inside (lo, hi); returns how many.
CL_HD inline int bracket_pivots(const Bracket& b, uint32_t* out) {
  const uint64_t span = static_cast<uint64_t>(b.hi.key) - b.lo.key;
  if (span <= 1) return 0;
  const uint64_t p = span - 1 < static_cast<uint64_t>(kPassPivots) ? span - 1 : kPassPivots;
  for (uint64_t j = 1; j <= p; ++j) out[j - 1] = static_cast<uint32_t>(b.lo.key + span * j / (p + 1));
  return static_cast<int>(p);
}

// The elements of one key range [lo, hi) gathered into a caller-owned array, with the exact statistics of
// everything above it (`hi`). select() answers a search whose bracket lies inside that range: the largest
// value v with G(v) = G(bracket hi) + G(bracket elements >= v) meeting the target, by a radix selection
// on the keys (ties handled as one group). It permutes the array, which later calls accept.
struct Gathered {
  float* v;
  int n;
  uint32_t lo_key;
  Point hi;
  bool valid;

  CL_HD void start(float* values, int count, uint32_t lo, Point top) {
    v = values;
    n = count;
    lo_key = lo;
    hi = top;
    valid = true;
  }

  CL_HD bool covers(const Bracket& b) const { return valid && lo_key <= b.lo.key && b.hi.key <= hi.key; }

  // The answer inside bracket b (which covers() must accept): the bracket's elements are moved to the
  // front, the rest stay behind them, so the array remains a permutation of everything gathered.
  CL_HD Point select(const Bracket& b, By by, double target) {
    const float lo = value_of(b.lo.key), top = value_of(b.hi.key);
    int m = 0;
    for (int i = 0; i < n; ++i) {
      const float x = v[i];
      if (x >= lo && x < top) {
        v[i] = v[m];
        v[m] = x;
        ++m;
      }
    }
    return select_front(m, b.lo.key, b.hi, by, target);
  }

  // Radix selection over v[0, m), whose elements lie in [lo, hi_point.key): a 64-bucket histogram of
  // counts and masses over the key span picks the bucket holding the answer, its elements move to the
  // front, and the span shrinks 64-fold per level; a span of one key is a single (tied) value, and a
  // handful of elements are finished by a scan. No data-dependent branches per element.
  CL_HD Point select_front(int m_count, uint32_t lo, Point hi_point, By by, double target) {
    constexpr int kBuckets = 64;
    constexpr int kScan = 16;
    uint32_t hi = hi_point.key;
    Point top = hi_point;
    int m = m_count;
    while (m > kScan && hi - lo > 1) {
      const uint64_t span = static_cast<uint64_t>(hi) - lo;
      int64_t cnt[kBuckets];
      double mass[kBuckets];
      for (int j = 0; j < kBuckets; ++j) {
        cnt[j] = 0;
        mass[j] = 0.0;
      }
      for (int i = 0; i < m; ++i) {
        const int j = static_cast<int>((static_cast<uint64_t>(key_of(v[i]) - lo) * kBuckets) / span);
        cnt[j] += 1;
        mass[j] += v[i];
      }
      int j = kBuckets - 1;
      for (; j > 0; --j) {
        const Point p{0u, top.count + cnt[j], top.mass + mass[j]};
        if (meets(p, by, target)) break;
        top.count += cnt[j];
        top.mass += mass[j];
      }
      // Bucket j holds the keys k with floor((k - lo) * 64 / span) == j.
      const uint32_t new_lo = lo + static_cast<uint32_t>((static_cast<uint64_t>(j) * span + kBuckets - 1) / kBuckets);
      const uint32_t new_hi = lo + static_cast<uint32_t>((static_cast<uint64_t>(j + 1) * span + kBuckets - 1) / kBuckets);
      top.key = new_hi;
      int k = 0;
      for (int i = 0; i < m; ++i) {
        const float x = v[i];
        const uint32_t key = key_of(x);
        if (key >= new_lo && key < new_hi) {
          v[i] = v[k];
          v[k] = x;
          ++k;
        }
      }
      m = k;
      lo = new_lo;
      hi = new_hi;
    }
    // A few values, or one repeated value: walk them from the largest down, one run of ties at a time.
    int64_t c = top.count;
    double ms = top.mass;
    float last = value_of(lo);
    int done = 0;
    while (done < m) {
      int best = done;
      for (int i = done + 1; i < m; ++i)
        if (v[i] > v[best]) best = i;
      const float x = v[best];
      for (int i = done; i < m; ++i) {
        if (v[i] == x) {
          v[i] = v[done];
          v[done] = x;
          ++done;
          c += 1;
          ms += x;
        }
      }
      last = x;
      const Point p{key_of(x), c, ms};
      if (meets(p, by, target)) return p;
    }
    // Only reachable when fp64 masses from different summation orders disagree in the last bits:
    // fall back to the lowest value, whose count is exact.
    const Point p{key_of(last), c, ms};
    return p;
  }
};

struct RowSettings {
  float temperature;
  float top_p;
  float min_p;
  float cfg_scale;
  float penalty;
  int64_t top_k;
};

CL_HD inline bool top_k_active(int64_t top_k, int64_t positive) { return top_k > 0 && top_k < positive; }
CL_HD inline bool top_p_active(float top_p) { return top_p < 1.0f; }
CL_HD inline bool min_p_active(float min_p) { return min_p > 0.0f; }

// Finds the point {e >= tau} for one target (count for top-k, mass for top-p). `passes` supplies two
// operations over the row of e values:
//   passes.stats(keys, n, out)       exact count and fp64 mass of {e >= value_of(keys[j])} for j < n
//   passes.gather(lo, hi, out) -> n  the values with lo <= key < hi (the caller guarantees n <= kGatherCap)
// Each pass shrinks the key span of the bracket by a factor kPassPivots + 1, so 2^30 keys take at most
// ten passes before the bracket is small enough to gather or holds a single value.
// Two gathered sets serve the searches: the candidates the exp pass collected (read-only apart from
// permutation) and the last bracket gathered here (`fresh`, over fresh_buf).
struct GatheredSets {
  Gathered candidates;
  Gathered fresh;
  float* fresh_buf;
};

template <class Passes>
CL_HD Point search(PointTable& table, GatheredSets& sets, Passes& passes, By by, double target) {
  for (int pass = 0;; ++pass) {
    const Bracket b = table.bracket(by, target);
    if (b.hi.key - b.lo.key == 1) return b.lo;
    Gathered* known = sets.candidates.covers(b) ? &sets.candidates : sets.fresh.covers(b) ? &sets.fresh : nullptr;
    if (known != nullptr) {
      const Point p = known->select(b, by, target);
      table.insert(p);
      return p;
    }
    const int64_t inside = b.lo.count - b.hi.count;
    uint32_t keys[kPassPivots];
    const int np = bracket_pivots(b, keys);
    if (inside <= kGatherCap || pass >= kMaxPassesPerSearch || table.n + np > kMaxPoints) {
      // The last two conditions cannot trigger for 32-bit keys (see above); they bound the loop anyway,
      // and gather stays within its capacity because it stops at kGatherCap values in id order.
      const int n = passes.gather(b.lo.key, b.hi.key, sets.fresh_buf);
      sets.fresh.start(sets.fresh_buf, n, b.lo.key, b.hi);
      const Point p = sets.fresh.select(b, by, target);
      table.insert(p);
      return p;
    }
    Point stats[kPassPivots];
    passes.stats(keys, np, stats);
    for (int j = 0; j < np; ++j) table.insert(stats[j]);
  }
}

// The survivor threshold tau = max(t_k, t_p, min_p) with the exact count and mass of {e >= tau}.
// `table` must already hold the support point (kKeyPositive), the end point (kKeyEnd, empty) and, when
// min-p is active, the point at key_of(min_p).
// `sets.candidates` may hold the exp pass's candidates (valid = false otherwise); `sets.fresh` must start
// invalid.
template <class Passes>
CL_HD Point find_threshold(PointTable& table, GatheredSets& sets, Passes& passes, const RowSettings& s) {
  Point tau = table.at_key(kKeyPositive);
  if (top_k_active(s.top_k, tau.count))
    tau = search(table, sets, passes, By::kCount, static_cast<double>(s.top_k));
  if (top_p_active(s.top_p)) {
    const Point p = search(table, sets, passes, By::kMass, static_cast<double>(s.top_p) * tau.mass);
    if (p.key > tau.key) tau = p;
  }
  if (min_p_active(s.min_p) && key_of(s.min_p) > tau.key) tau = table.at_key(key_of(s.min_p));
  return tau;
}

// Inverse CDF over a list of (value, id) in id order: the first id whose running mass of values >= tau
// exceeds target; the last survivor if fp64 rounding left target just out of reach. Requires a survivor.
CL_HD inline int64_t inverse_cdf_list(const float* v, const int32_t* id, int n, float tau, double target) {
  double cum = 0.0;
  int last = -1;
  for (int i = 0; i < n; ++i) {
    if (v[i] >= tau) {
      cum += v[i];
      last = i;
      if (cum > target) return id[i];
    }
  }
  return last >= 0 ? id[last] : id[0];
}

// Log-probability of the drawn id under the renormalised survivors.
CL_HD inline float chosen_logprob(float e_id, double survivor_mass) {
  return static_cast<float>(log(static_cast<double>(e_id)) - log(survivor_mass));
}

}  // namespace sampling
}  // namespace chameleon_lite
