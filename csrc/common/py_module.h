#pragma once
// An importable, empty Python module for a shared library whose real content is its operator
// registrations (TORCH_LIBRARY / TORCH_LIBRARY_IMPL run when the library is loaded).
#include <Python.h>

#define CHAMELEON_LITE_PY_MODULE(name)                                                       \
  extern "C" PyMODINIT_FUNC PyInit_##name(void) {                                            \
    static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, #name, nullptr, 0, nullptr}; \
    return PyModule_Create(&module_def);                                                     \
  }
