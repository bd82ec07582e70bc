#pragma once
// CUDA kernels of the modality-aware attention (ARCHITECTURE §5), one header per role (FlashInfer-style):
//   attention/traits.cuh  tile sizes, thread counts, the classified tile-pair walk, tile loaders, MMA operands
//   attention/fwd.cuh     forward (scalar and tensor-core) + run_attention_fwd
//   attention/bwd.cuh     backward dq and dk/dv passes (scalar and tensor-core) + run_attention_bwd
//   attention/decode.cuh  split-KV decode + run_attention_decode
// Compiled by nvcc (attention.cu) and by g++ against the CPU emulator (tests/cuda_emu/), so the code the tests run is
// the code that ships.
#include "cuda/attention/bwd.cuh"
#include "cuda/attention/decode.cuh"
#include "cuda/attention/fwd.cuh"
