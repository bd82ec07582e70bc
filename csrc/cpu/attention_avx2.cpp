// AVX2/FMA build of the attention row loops (csrc/cpu/attention_rows.h); attention.cpp selects it at run time.
#include "cpu/isa_avx2_target.h"

#ifdef CL_AVX2_TARGET
#define CL_ATTN_ISA avx2
#else
#define CL_ATTN_ISA portable_stub
#endif
#include "cpu/attention_rows.h"

namespace chameleon_lite::cpu {
const RowOps& row_ops_avx2() {
  static const RowOps ops = CL_ATTN_ISA::make_row_ops();
  return ops;
}
}  // namespace chameleon_lite::cpu
