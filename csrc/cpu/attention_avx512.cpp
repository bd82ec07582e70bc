// AVX-512 build of the attention row loops (csrc/cpu/attention_rows.h), where at::vec::Vectorized<float> maps onto
// 512-bit registers; attention.cpp selects it at run time when the CPU has AVX-512.
#include "cpu/isa_avx512_target.h"

#ifdef CL_AVX512_TARGET
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
