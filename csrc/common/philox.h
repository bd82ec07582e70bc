#pragma once
// Philox4x32-10 counter-based RNG (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11).
// Header-only and free of std:: containers so the same code compiles as host C++ and CUDA device code:
// a draw is a pure function of (key, counter), which is what makes sampling independent of the thread
// count and identical between the CPU and CUDA kernels.
#include <stdint.h>

#if defined(__CUDACC__)
#define CL_HD __host__ __device__
#else
#define CL_HD
#endif

namespace chameleon_lite {
namespace philox {

struct U32x4 {
  uint32_t v[4];
};

CL_HD inline void mulhilo32(uint32_t a, uint32_t b, uint32_t* hi, uint32_t* lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  *hi = static_cast<uint32_t>(p >> 32);
  *lo = static_cast<uint32_t>(p);
}

// The 4x32 round constants of Random123.
constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;
constexpr uint32_t kW1 = 0xBB67AE85u;

CL_HD inline U32x4 philox4x32_10(U32x4 ctr, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += kW0;
      k1 += kW1;
    }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kM0, ctr.v[0], &hi0, &lo0);
    mulhilo32(kM1, ctr.v[2], &hi1, &lo1);
    U32x4 next;
    next.v[0] = hi1 ^ ctr.v[1] ^ k0;
    next.v[1] = lo1;
    next.v[2] = hi0 ^ ctr.v[3] ^ k1;
    next.v[3] = lo0;
    ctr = next;
  }
  return ctr;
}

// The sampling stream: key = seed (64 bit), counter = (step lo, step hi, row lo, row hi).
CL_HD inline U32x4 sampling_block(uint64_t seed, uint64_t step, uint64_t row) {
  U32x4 ctr;
  ctr.v[0] = static_cast<uint32_t>(step);
  ctr.v[1] = static_cast<uint32_t>(step >> 32);
  ctr.v[2] = static_cast<uint32_t>(row);
  ctr.v[3] = static_cast<uint32_t>(row >> 32);
  return philox4x32_10(ctr, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// A double in [0, 1) with 53 random bits from the first two words (27 + 26 bits).
CL_HD inline double uniform53(U32x4 r) {
  const uint64_t a = r.v[0] >> 5;
  const uint64_t b = r.v[1] >> 6;
  return static_cast<double>((a << 26) | b) * (1.0 / 9007199254740992.0);
}

// The uniform that row `row` uses at decode step `step` under `seed`.
CL_HD inline double sampling_uniform(uint64_t seed, uint64_t step, uint64_t row) {
  return uniform53(sampling_block(seed, step, row));
}

}  // namespace philox
}  // namespace chameleon_lite
