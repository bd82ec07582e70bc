// AVX-512 build of the attention row loops (csrc/cpu/attention_rows.h), where at::vec::Vectorized<float> maps onto
// 512-bit registers; attention.cpp selects it at run time when the CPU has AVX-512. The target pragma (rather than a
// global -mavx512f) keeps every other file portable.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// g++ does not define the ISA macros for a target pragma; the vector headers select their AVX-512 code by them.
#ifndef __AVX512F__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#define CL_ATTN_ISA avx512
#else
#define CL_ATTN_ISA portable_stub512
#endif
#include "cpu/attention_rows.h"

namespace chameleon_lite::cpu {
// Never selected without x86 AVX-512 (see attention.cpp); elsewhere these are the portable loops.
const RowOps& row_ops_avx512() {
  static const RowOps ops = CL_ATTN_ISA::make_row_ops();
  return ops;
}
}  // namespace chameleon_lite::cpu
