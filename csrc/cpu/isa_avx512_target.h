// Included first by the AVX-512 builds of the row loops (attention_avx512.cpp, sampling_avx512.cpp): on x86 with
// GCC/Clang it switches the rest of the file to AVX-512 code generation with a target pragma (rather than a global
// -mavx512f, which would make every other file unportable) and defines CL_AVX512_TARGET. Elsewhere it does nothing;
// those builds then compile their portable loops under a stub name, which the run-time choice never selects.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// g++ does not define the ISA macros for a target pragma; the vector and SLEEF headers select their AVX-512 code by
// them.
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
#define CL_AVX512_TARGET 1
#endif
