// AVX2/FMA build of the Snake row loops (csrc/cpu/snake_rows.h); snake.cpp selects it at run time when the CPU has
// AVX2 and FMA. The target pragma (rather than a global -mavx2) keeps every other file portable.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#ifndef __AVX2__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define CL_SNAKE_ISA avx2
#include "cpu/snake_rows.h"

namespace chameleon_lite::cpu {
const SnakeRowOps& snake_row_ops_avx2() {
  static const SnakeRowOps ops{&avx2::snake_forward_row, &avx2::snake_backward_row};
  return ops;
}
}  // namespace chameleon_lite::cpu

#else
#define CL_SNAKE_ISA portable_stub
#include "cpu/snake_rows.h"

namespace chameleon_lite::cpu {
// Never selected off x86 (see snake.cpp); the portable loops keep the symbol defined.
const SnakeRowOps& snake_row_ops_avx2() {
  static const SnakeRowOps ops{&portable_stub::snake_forward_row, &portable_stub::snake_backward_row};
  return ops;
}
}  // namespace chameleon_lite::cpu
#endif
