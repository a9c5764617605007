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

// The full-width case (NB = 4, every B panel group but the last of a row) in inline assembly: GCC's code for
// the intrinsics above ran at half the rate of the same instruction sequence written by hand (measured in a
// throw-away harness on Zen 4: 13.8 vs 6.5 ns per 24 vpdpbusd with operands in L1). Accumulators zmm0-23
// (row r, panel j: zmm(4r + j)), B panels zmm28-31, the broadcast A group zmm27.
#define LB_VROW(r, c0, c1, c2, c3)                                                                          \
    "vpbroadcastd " #r "*4(%[a]),%%zmm27\n\t"                                                                \
    "vpdpbusd %%zmm28,%%zmm27,%%zmm" #c0 "\n\t vpdpbusd %%zmm29,%%zmm27,%%zmm" #c1 "\n\t"                      \
    "vpdpbusd %%zmm30,%%zmm27,%%zmm" #c2 "\n\t vpdpbusd %%zmm31,%%zmm27,%%zmm" #c3 "\n\t"
// row r of the tile in memory: tile j of the group at byte j * 384, its row r at r * 64 (6 x 16 int32 tiles)
#define LB_VADD(r, j, c) "vpaddd (" #j "*384+" #r "*64)(%[t]),%%zmm" #c ",%%zmm" #c "\n\t"
#define LB_VSTORE(r, j, c) "vmovdqa64 %%zmm" #c ",(" #j "*384+" #r "*64)(%[t])\n\t"
#define LB_VZERO4(c0, c1, c2, c3)                                                                           \
    "vpxord %%zmm" #c0 ",%%zmm" #c0 ",%%zmm" #c0 "\n\t vpxord %%zmm" #c1 ",%%zmm" #c1 ",%%zmm" #c1 "\n\t"     \
    "vpxord %%zmm" #c2 ",%%zmm" #c2 ",%%zmm" #c2 "\n\t vpxord %%zmm" #c3 ",%%zmm" #c3 ",%%zmm" #c3 "\n\t"
#define LB_VROWS(M) M(0, 0, 1, 2, 3) M(1, 4, 5, 6, 7) M(2, 8, 9, 10, 11) M(3, 12, 13, 14, 15) M(4, 16, 17, 18, 19) \
    M(5, 20, 21, 22, 23)
#define LB_VZERO_ROW(r, c0, c1, c2, c3) LB_VZERO4(c0, c1, c2, c3)
#define LB_VADD_ROW(r, c0, c1, c2, c3) LB_VADD(r, 0, c0) LB_VADD(r, 1, c1) LB_VADD(r, 2, c2) LB_VADD(r, 3, c3)
#define LB_VSTORE_ROW(r, c0, c1, c2, c3) \
    LB_VSTORE(r, 0, c0) LB_VSTORE(r, 1, c1) LB_VSTORE(r, 2, c2) LB_VSTORE(r, 3, c3)
#define LB_VCLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",   \
    "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",  \
    "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory", "cc"
LB_VNNI_TARGET static void vnni_nb4_asm(const uint8_t *a, const int8_t *b, long bstride, long steps,
                                        int32_t *tile, int first) {
    const long s3 = 3 * bstride, f = first;
    __asm__ volatile(LB_VROWS(LB_VZERO_ROW) "test %[n],%[n]\n\t jz 2f\n\t"
                     "1:\n\t vmovdqu64 (%[b]),%%zmm28\n\t vmovdqu64 (%[b],%[s]),%%zmm29\n\t"
                     "vmovdqu64 (%[b],%[s],2),%%zmm30\n\t vmovdqu64 (%[b],%[s3]),%%zmm31\n\t"
                     LB_VROWS(LB_VROW) "add $64,%[b]\n\t add $24,%[a]\n\t dec %[n]\n\t jnz 1b\n\t"
                     "2:\n\t test %[f],%[f]\n\t jnz 3f\n\t" LB_VROWS(LB_VADD_ROW) "3:\n\t"
                     LB_VROWS(LB_VSTORE_ROW)
                     : [a] "+r"(a), [b] "+r"(b), [n] "+r"(steps)
                     : [s] "r"(bstride), [s3] "r"(s3), [t] "r"(tile), [f] "r"(f)
                     : LB_VCLOBBER);
}

void lowbit_vnni_tiles(const void *a, const void *b, long bstride, long steps, int nb, int32_t *tile, int first) {
    const uint8_t *a8 = (const uint8_t *)a;
    const int8_t *b8 = (const int8_t *)b;
    switch (nb) {
        case 1: vnni_nb1(a8, b8, bstride, steps, tile, first); break;
        case 2: vnni_nb2(a8, b8, bstride, steps, tile, first); break;
        case 3: vnni_nb3(a8, b8, bstride, steps, tile, first); break;
        default: vnni_nb4_asm(a8, b8, bstride, steps, tile, first); break;
    }
}

// Instruction-ceiling probe of `lowbit bench ceiling`: `reps` calls of the full-width micro-kernel on 64 k-groups
// of operands that stay in L1 (1.5 KB of A, 16 KB of B); returns the multiply-accumulates done.
double lowbit_vnni_probe(long reps) {
    static uint8_t a[LOWBIT_MR * 4 * 64] __attribute__((aligned(64)));
    static int8_t b[LOWBIT_VNNI_NB * 64 * 64] __attribute__((aligned(64)));
    static int32_t tile[LOWBIT_VNNI_NB * LOWBIT_MR * LOWBIT_NR] __attribute__((aligned(64)));
    for (long i = 0; i < (long)sizeof a; i++) a[i] = (uint8_t)(i * 7);
    for (long i = 0; i < (long)sizeof b; i++) b[i] = (int8_t)(i * 13);
    for (long r = 0; r < reps; r++) vnni_nb4_asm(a, b, 64L * 64, 64, tile, 1);
    return (double)reps * 64 * LOWBIT_MR * LOWBIT_VNNI_NB * LOWBIT_NR * 4;
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
