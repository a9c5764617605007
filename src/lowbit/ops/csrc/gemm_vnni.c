// AVX-512 VNNI micro-kernels of the integer GEMM (kind 4, see gemm.h): u8 x s8 -> int32 with vpdpbusd.
//
// vpdpbusd adds the four u8 x s8 products of each 32-bit lane to an int32 accumulator without intermediate
// saturation (the products are exact 16-bit values, their sum is formed in 32 bits and the add wraps), so with
// A shifted to u8 by off (128 for any int8 code) every int8 x int8 product is exact:
//   C[i, j] = sum_k (a + off) * b - off * colsum[j]   (mod 2**32, exact whenever the true result fits int32).
// The operands use the kind 0 layouts unchanged (gemm_pack.c): A in u8 panels of MR rows, B in s8 panels of NR
// columns, 4 k per 32-bit group, so one B panel's k-group is exactly one zmm (16 columns x 4 bytes).
// One micro-kernel call computes MR x (nb * NR) outputs (nb <= 4 B panels at once): 6 x 4 zmm accumulators,
// 4 B loads and 6 A broadcasts per 24 vpdpbusd. Compiled for AVX-512 only here; called only after the CPUID
// check (lowbit_cpu_has_avx512vnni).
#include <immintrin.h>
#include <stdint.h>

#include "gemm.h"

#define LB_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// One MR x (NB * NR) block: `steps` k-groups of A panel `a` (24 bytes per group) and NB B panels starting at `b`
// (panel j at b + j * bstride, 64 bytes per group). The result goes into NB consecutive MR x NR int32 tiles at
// `tile` (tile j at tile + j * MR * NR): stored when `first`, else added to what is there. The accumulators are
// named variables, not an array: GCC keeps those in zmm registers (an array of vectors was spilled each step).
#define LB_V_ROW(r)                                                                                         \
    {                                                                                                       \
        const __m512i av = _mm512_set1_epi32(*(const int32_t *)(as + 4 * r));                               \
        c##r##0 = _mm512_dpbusd_epi32(c##r##0, av, b0);                                                     \
        if (NB > 1) c##r##1 = _mm512_dpbusd_epi32(c##r##1, av, b1);                                         \
        if (NB > 2) c##r##2 = _mm512_dpbusd_epi32(c##r##2, av, b2);                                         \
        if (NB > 3) c##r##3 = _mm512_dpbusd_epi32(c##r##3, av, b3);                                         \
    }
#define LB_V_OUT(r, j)                                                                                      \
    {                                                                                                       \
        int32_t *t = tile + j * LOWBIT_MR * LOWBIT_NR + r * LOWBIT_NR;                                      \
        _mm512_store_si512((void *)t, first ? c##r##j : _mm512_add_epi32(c##r##j, _mm512_load_si512((const void *)t))); \
    }
#define LB_V_OUTS(r)                                                                                        \
    LB_V_OUT(r, 0) if (NB > 1) LB_V_OUT(r, 1) if (NB > 2) LB_V_OUT(r, 2) if (NB > 3) LB_V_OUT(r, 3)

LB_VNNI_TARGET static inline __attribute__((always_inline)) void vnni_block(const uint8_t *a, const int8_t *b,
                                                                            long bstride, long steps, int32_t *tile,
                                                                            int first, const int NB) {
    const __m512i z = _mm512_setzero_si512();
    __m512i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z, c20 = z, c21 = z, c22 = z;
    __m512i c23 = z, c30 = z, c31 = z, c32 = z, c33 = z, c40 = z, c41 = z, c42 = z, c43 = z, c50 = z, c51 = z;
    __m512i c52 = z, c53 = z;
    const int8_t *bp = b;
    const uint8_t *as = a;
    for (long s = 0; s < steps; s++, bp += 64, as += LOWBIT_MR * 4) {
        const __m512i b0 = _mm512_loadu_si512((const void *)bp);
        const __m512i b1 = NB > 1 ? _mm512_loadu_si512((const void *)(bp + bstride)) : z;
        const __m512i b2 = NB > 2 ? _mm512_loadu_si512((const void *)(bp + 2 * bstride)) : z;
        const __m512i b3 = NB > 3 ? _mm512_loadu_si512((const void *)(bp + 3 * bstride)) : z;
        LB_V_ROW(0) LB_V_ROW(1) LB_V_ROW(2) LB_V_ROW(3) LB_V_ROW(4) LB_V_ROW(5)
    }
    LB_V_OUTS(0) LB_V_OUTS(1) LB_V_OUTS(2) LB_V_OUTS(3) LB_V_OUTS(4) LB_V_OUTS(5)
}

#define LB_VNNI_KERNEL(NB)                                                                                  \
    LB_VNNI_TARGET static void vnni_nb##NB(const uint8_t *a, const int8_t *b, long bstride, long steps,    \
                                           int32_t *tile, int first) {                                      \
        vnni_block(a, b, bstride, steps, tile, first, NB);                                                  \
    }

LB_VNNI_KERNEL(1)
LB_VNNI_KERNEL(2)
LB_VNNI_KERNEL(3)
LB_VNNI_KERNEL(4)

void lowbit_vnni_tiles(const void *a, const void *b, long bstride, long steps, int nb, int32_t *tile, int first) {
    const uint8_t *a8 = (const uint8_t *)a;
    const int8_t *b8 = (const int8_t *)b;
    switch (nb) {
        case 1: vnni_nb1(a8, b8, bstride, steps, tile, first); break;
        case 2: vnni_nb2(a8, b8, bstride, steps, tile, first); break;
        case 3: vnni_nb3(a8, b8, bstride, steps, tile, first); break;
        default: vnni_nb4(a8, b8, bstride, steps, tile, first); break;
    }
}

// 1 when this CPU (and the OS, which must save the zmm state) can run the AVX-512 VNNI kernels, else 0.
int lowbit_cpu_has_avx512vnni(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#else
    return 0;
#endif
}
