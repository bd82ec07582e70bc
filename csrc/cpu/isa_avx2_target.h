// Included first by the AVX2 builds of the row loops (attention_avx2.cpp, snake_avx2.cpp): on x86 with GCC/Clang it
// switches the rest of the file to AVX2/FMA code generation with a target pragma (rather than a global -mavx2, which
// would make every other file unportable) and defines CL_AVX2_TARGET. Elsewhere it does nothing; those builds then
// compile the portable loops under the AVX2 name, which use_avx2() never selects.
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
// g++ does not define the ISA macros for a target pragma; the vector headers select their AVX2 code by them.
#ifndef __AVX2__
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1
#define __F16C__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define CL_AVX2_TARGET 1
#endif
