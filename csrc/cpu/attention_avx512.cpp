// AVX-512 build of the attention row loops (csrc/cpu/attention_rows.h), where at::vec::Vectorized<float> maps onto
// 512-bit registers; attention.cpp selects it at run time when the CPU has AVX-512.
#include "cpu/isa_avx512_target.h"

#ifdef CL_AVX512_TARGET
#define CL_ATTN_ISA avx512
#else
#define CL_ATTN_ISA portable_stub512
#endif
// GCC 12 warns ((maybe-)uninitialized) inside its own avx512fintrin.h when ATen's 512-bit bf16 loads are inlined
// here; the warnings are in the compiler's and ATen's headers, not in these loops, and CI builds with -Werror.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif
#include "cpu/attention_rows.h"

namespace chameleon_lite::cpu {
// Never selected without x86 AVX-512 (see attention.cpp); elsewhere these are the portable loops.
const RowOps& row_ops_avx512() {
  static const RowOps ops = CL_ATTN_ISA::make_row_ops();
  return ops;
}
}  // namespace chameleon_lite::cpu
