// Run-time choice between the portable, AVX2/FMA and AVX-512 builds of the per-row loops (attention, Snake, sampling).
#pragma once

#include <cstdlib>
#include <cstring>

namespace chameleon_lite::cpu {

// True when the CPU has AVX2 and FMA and the environment variable `env` is not set to "portable" (the tests force
// the portable build that way to compare the two).
inline bool use_avx2(const char* env) {
  const char* isa = std::getenv(env);
  if (isa != nullptr && std::strcmp(isa, "portable") == 0) return false;
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

// True when the CPU has the AVX-512 subsets the AVX-512 builds use (F, BW, VL, DQ).
inline bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
  return has;
#else
  return false;
#endif
}

// The widest row-loop build for an op whose environment variable `env` may cap it at "portable" or "avx2" (the tests
// compare the builds that way): 2 = AVX-512, 1 = AVX2/FMA, 0 = portable.
inline int widest_build(const char* env) {
  const char* isa = std::getenv(env);
  if (!use_avx2(env)) return 0;
  if (isa != nullptr && std::strcmp(isa, "avx2") == 0) return 1;
  return cpu_has_avx512() ? 2 : 1;
}

}  // namespace chameleon_lite::cpu
