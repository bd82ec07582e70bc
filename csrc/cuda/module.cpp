// The CUDA extension's Python module; its content is the TORCH_LIBRARY_IMPL(chameleon_lite, CUDA, ...) blocks.
#include "common/py_module.h"

CHAMELEON_LITE_PY_MODULE(_C_cuda)
