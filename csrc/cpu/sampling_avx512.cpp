// AVX-512 build of the sampling row kernel; sampling.cpp selects it at run time when the CPU has AVX-512.
// The target pragma (rather than a global -mavx512f) keeps every other file portable.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// g++ does not define the ISA macros for a target pragma; the vector and SLEEF headers select their
// AVX-512 declarations by them.
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
