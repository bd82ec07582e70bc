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
  static const RowOps ops{&CL_ATTN_ISA::row_max, &CL_ATTN_ISA::exp_sub_sum, &CL_ATTN_ISA::scale_row,
                          &CL_ATTN_ISA::scores_f32, &CL_ATTN_ISA::scores_bf16, &CL_ATTN_ISA::values_f32, &CL_ATTN_ISA::values_bf16};
  return ops;
}
}  // namespace chameleon_lite::cpu
