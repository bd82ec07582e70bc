// AVX-512 build of the sampling row kernel; sampling.cpp selects it at run time when the CPU has AVX-512.
#include <cstdint>

#include "cpu/isa_avx512_target.h"

#ifdef CL_AVX512_TARGET
#define CL_SAMPLING_ISA avx512
#include "cpu/sampling_row.h"

namespace chameleon_lite {
namespace sampling_cpu {
RowResult sample_row_avx512(const RowJob& job, float* buf, Scratch& scratch) {
  return avx512::sample_row(job, buf, scratch);
}
}  // namespace sampling_cpu
}  // namespace chameleon_lite

#else
#define CL_SAMPLING_ISA portable_stub
#include "cpu/sampling_row.h"

namespace chameleon_lite {
namespace sampling_cpu {
// Never selected without x86 AVX-512 (see sampling.cpp); the portable kernel keeps the symbol defined.
RowResult sample_row_avx512(const RowJob& job, float* buf, Scratch& scratch) {
  return sample_row_default(job, buf, scratch);
}
}  // namespace sampling_cpu
}  // namespace chameleon_lite
#endif
