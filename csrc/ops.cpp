// Operator schemas of the chameleon_lite library. Per-device implementations register themselves with
// TORCH_LIBRARY_IMPL in csrc/cpu/ and csrc/cuda/.
#include <torch/library.h>

#include "common/py_module.h"

CHAMELEON_LITE_PY_MODULE(_C)

TORCH_LIBRARY(chameleon_lite, m) {
  // Unified-vocabulary id -> (modality int8, local code int64, audio level int64; -1 outside audio).
  m.def(
      "classify_ids(Tensor ids, int text_offset, int image_offset, int audio_offset, int audio_codebook, "
      "int vocab_size) -> (Tensor, Tensor, Tensor)");
}
