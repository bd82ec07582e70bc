// AVX2/FMA build of the attention row loops (csrc/cpu/attention_rows.h); attention.cpp selects it at run time when
// the CPU has AVX2 and FMA. The target pragma (rather than a global -mavx2) keeps every other file portable.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// g++ does not define the ISA macros for a target pragma; the vector headers select their AVX2 code by them.
#ifndef __AVX2__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define CL_ATTN_ISA avx2
#include "cpu/attention_rows.h"

namespace chameleon_lite::cpu {
const RowOps& row_ops_avx2() {
  static const RowOps ops{&avx2::row_max, &avx2::exp_sub_sum, &avx2::scale_row, &avx2::dot, &avx2::axpy};
  return ops;
}
}  // namespace chameleon_lite::cpu

#else
#define CL_ATTN_ISA portable_stub
#include "cpu/attention_rows.h"

namespace chameleon_lite::cpu {
// Never selected off x86 (see attention.cpp); the portable loops keep the symbol defined.
const RowOps& row_ops_avx2() {
  static const RowOps ops{&portable_stub::row_max, &portable_stub::exp_sub_sum, &portable_stub::scale_row,
                          &portable_stub::dot, &portable_stub::axpy};
  return ops;
}
}  // namespace chameleon_lite::cpu
#endif
