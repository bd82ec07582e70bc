// AVX2/FMA build of the weight-only bf16 linear loops (csrc/cpu/linear_rows.h); linear_bf16w.cpp selects it at run
// time.
#include "cpu/isa_avx2_target.h"

#ifdef CL_AVX2_TARGET
#define CL_LINEAR_ISA avx2
#else
#define CL_LINEAR_ISA portable_stub
#endif
#include "cpu/linear_rows.h"

namespace chameleon_lite::cpu {
LinearBlockFn linear_block_avx2() { return &CL_LINEAR_ISA::linear_block; }
}  // namespace chameleon_lite::cpu
