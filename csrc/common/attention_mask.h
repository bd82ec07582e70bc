#pragma once
// Shared logic of the fused modality-aware attention kernels (CPU now, CUDA later): the mask predicate,
// the classification of a (query tile, key tile) pair from tile-level id bounds, and the online-softmax
// merge of two partial results. Header-only, no std:: containers; compiles as host C++ and device code.
//
// Mask (ARCHITECTURE §5), query i may read key j iff
//   doc[i] == doc[j] and (j <= i or (span[i] != 0 and span[i] == span[j])).
#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define CL_ATTN_HD __host__ __device__ inline
#else
#define CL_ATTN_HD inline
#endif

namespace chameleon_lite::attn {

CL_ATTN_HD bool allowed(int64_t i, int64_t j, int32_t doc_i, int32_t doc_j, int32_t span_i, int32_t span_j) {
  return doc_i == doc_j && (j <= i || (span_i != 0 && span_i == span_j));
}

// Bounds of the ids inside one tile of positions [begin, end).
struct TileBounds {
  int64_t begin, end;
  int32_t doc_min, doc_max;
  int32_t span_min, span_max;  // over all positions, 0 included
};

CL_ATTN_HD TileBounds tile_bounds(const int32_t* doc, const int32_t* span, int64_t begin, int64_t end) {
  TileBounds t{begin, end, doc[begin], doc[begin], span[begin], span[begin]};
  for (int64_t p = begin + 1; p < end; ++p) {
    t.doc_min = doc[p] < t.doc_min ? doc[p] : t.doc_min;
    t.doc_max = doc[p] > t.doc_max ? doc[p] : t.doc_max;
    t.span_min = span[p] < t.span_min ? span[p] : t.span_min;
    t.span_max = span[p] > t.span_max ? span[p] : t.span_max;
  }
  return t;
}

enum class TileKind : int { kEmpty = 0, kFull = 1, kPartial = 2 };

// Conservative: kEmpty and kFull are exact claims about every pair in the tile; anything unproven is kPartial.
CL_ATTN_HD TileKind classify(const TileBounds& q, const TileBounds& k) {
  if (q.doc_max < k.doc_min || k.doc_max < q.doc_min) return TileKind::kEmpty;
  const bool all_causal = k.end - 1 <= q.begin;  // every key at or before every query
  const bool no_causal = k.begin > q.end - 1;     // every key after every query
  const bool one_doc = q.doc_min == q.doc_max && k.doc_min == k.doc_max && q.doc_min == k.doc_min;
  const bool one_span = q.span_min == q.span_max && k.span_min == k.span_max && q.span_min == k.span_min &&
                        q.span_min != 0;
  if (no_causal) {
    // Only a shared non-zero span can open such a pair.
    const bool span_overlap = q.span_max != 0 && k.span_max != 0 &&
                              !(q.span_max < k.span_min || k.span_max < q.span_min);
    if (!span_overlap) return TileKind::kEmpty;
  }
  if (one_doc && (all_causal || one_span)) return TileKind::kFull;
  return TileKind::kPartial;
}

// Running softmax state of one query row: max m, normaliser l = sum exp(s - m); the output accumulator
// is kept unnormalised by the caller. Merging rescales both sides to the larger max.
struct SoftmaxState {
  float m, l;
};

CL_ATTN_HD SoftmaxState merge(SoftmaxState a, SoftmaxState b, float* scale_a, float* scale_b) {
  if (a.m == -INFINITY && b.m == -INFINITY) {
    *scale_a = 0.f;
    *scale_b = 0.f;
    return SoftmaxState{-INFINITY, 0.f};
  }
  const float m = a.m > b.m ? a.m : b.m;
  *scale_a = a.m == -INFINITY ? 0.f : expf(a.m - m);
  *scale_b = b.m == -INFINITY ? 0.f : expf(b.m - m);
  return SoftmaxState{m, a.l * *scale_a + b.l * *scale_b};
}

// Log-sum-exp of a finished row; -inf marks a fully masked row (its output is 0).
CL_ATTN_HD float finish_lse(SoftmaxState s) { return s.l > 0.f ? s.m + logf(s.l) : -INFINITY; }

}  // namespace chameleon_lite::attn
