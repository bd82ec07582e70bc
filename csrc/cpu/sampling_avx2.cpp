// AVX2/FMA build of the sampling row kernel (cpu/sampling_row.h); sampling.cpp selects it at run time on CPUs
// with AVX2 and FMA but without AVX-512.
#include "cpu/isa_avx2_target.h"

#ifdef CL_AVX2_TARGET
#define CL_SAMPLING_ISA avx2
#else
#define CL_SAMPLING_ISA portable_stub2
#endif
#include "cpu/sampling_row.h"

namespace chameleon_lite {
namespace sampling_cpu {
RowResult sample_row_avx2(const RowJob& job, float* buf, Scratch& scratch) {
#ifdef CL_AVX2_TARGET
  return avx2::sample_row(job, buf, scratch);
#else
  return sample_row_default(job, buf, scratch);  // never selected off x86 (see sampling.cpp)
#endif
}
}  // namespace sampling_cpu
}  // namespace chameleon_lite
