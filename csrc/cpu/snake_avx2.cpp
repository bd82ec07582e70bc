// AVX2/FMA build of the Snake row loops (csrc/cpu/snake_rows.h); snake.cpp selects it at run time.
#include "cpu/isa_avx2_target.h"

#ifdef CL_AVX2_TARGET
#define CL_SNAKE_ISA avx2
#else
#define CL_SNAKE_ISA portable_stub
#endif
#include "cpu/snake_rows.h"

namespace chameleon_lite::cpu {
const SnakeRowOps& snake_row_ops_avx2() {
  static const SnakeRowOps ops{&CL_SNAKE_ISA::snake_forward_row, &CL_SNAKE_ISA::snake_backward_row};
  return ops;
}
}  // namespace chameleon_lite::cpu
