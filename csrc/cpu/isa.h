// Run-time choice between the portable and the AVX2/FMA builds of the per-row loops (attention, Snake).
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

}  // namespace chameleon_lite::cpu
