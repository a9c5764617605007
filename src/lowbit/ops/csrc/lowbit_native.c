// lowbit native kernels: integer GEMMs and fused quantizers for x86-64 AVX2 (chosen at run time).
// Python reaches these through ctypes (lowbit/ops/native.py); the CPython init below only makes the
// shared object installable as an ordinary extension module.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

// 1 when this CPU can run the AVX2 + FMA kernels, else 0.
int lowbit_cpu_has_avx2(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

static struct PyModuleDef lowbit_native_module = {PyModuleDef_HEAD_INIT, "_native",
                                                  "lowbit native kernels (called through ctypes)", -1, NULL};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&lowbit_native_module); }
