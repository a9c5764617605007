// AVX512-BF16 micro-kernels (kind 5, see gemm.h): bf16 x bf16 -> float32 with vdpbf16ps, for FP8 products.
//
// Every FP8 E4M3 / E5M2 value is an exact bfloat16 value, and the product of two bf16 values is exact in
// float32 (8 + 8 significand bits), so on this instruction an FP8 x FP8 product is real FP8 arithmetic with
// float32 sums, not float32 emulation. vdpbf16ps adds, per float32 lane, the two products of a pair of bf16
// elements to the accumulator (denormal inputs and results are flushed to zero: FP8 code values and their
// products are normal, and sums of multiples of 2**-18 (E4M3) or 2**-32 (E5M2) are never float32-subnormal).
// Layout (gemm_pack.c lowbit_pack_bf16): the int16 panel layout of kind 2 with bf16 bits, 2 k per 32-bit
// group, so one B panel's k-pair is one zmm (16 columns x 2 bf16). The driver runs kind 5 with one K slice, so
// every output is one sequential chain over the k-pairs (the summation order the tests emulate).
#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "gemm.h"

#define LB_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// Full width (4 B panels): accumulators zmm0-23 (row r, panel j: zmm(4r + j)), B zmm28-31, A pair zmm27.
#define LB_BROW(r, c0, c1, c2, c3)                                                                          \
    "vpbroadcastd " #r "*4(%[a]),%%zmm27\n\t"                                                                \
    "vdpbf16ps %%zmm28,%%zmm27,%%zmm" #c0 "\n\t vdpbf16ps %%zmm29,%%zmm27,%%zmm" #c1 "\n\t"                  \
    "vdpbf16ps %%zmm30,%%zmm27,%%zmm" #c2 "\n\t vdpbf16ps %%zmm31,%%zmm27,%%zmm" #c3 "\n\t"
#define LB_BSTORE(r, j, c) "vmovaps %%zmm" #c ",(" #j "*384+" #r "*64)(%[t])\n\t"
#define LB_BZERO_ROW(r, c0, c1, c2, c3)                                                                     \
    "vpxord %%zmm" #c0 ",%%zmm" #c0 ",%%zmm" #c0 "\n\t vpxord %%zmm" #c1 ",%%zmm" #c1 ",%%zmm" #c1 "\n\t"       \
    "vpxord %%zmm" #c2 ",%%zmm" #c2 ",%%zmm" #c2 "\n\t vpxord %%zmm" #c3 ",%%zmm" #c3 ",%%zmm" #c3 "\n\t"
#define LB_BSTORE_ROW(r, c0, c1, c2, c3) \
    LB_BSTORE(r, 0, c0) LB_BSTORE(r, 1, c1) LB_BSTORE(r, 2, c2) LB_BSTORE(r, 3, c3)
#define LB_BROWS(M) M(0, 0, 1, 2, 3) M(1, 4, 5, 6, 7) M(2, 8, 9, 10, 11) M(3, 12, 13, 14, 15) M(4, 16, 17, 18, 19) \
    M(5, 20, 21, 22, 23)
#define LB_BCLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",   \
    "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22",  \
    "xmm23", "xmm24", "xmm25", "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31", "memory", "cc"

LB_BF16_TARGET static void bf16_nb4(const void *a, const void *b, long bstride, long steps, float *tile) {
    const long s3 = 3 * bstride;
    __asm__ volatile(LB_BROWS(LB_BZERO_ROW) "test %[n],%[n]\n\t jz 2f\n\t"
                     "1:\n\t vmovdqu64 (%[b]),%%zmm28\n\t vmovdqu64 (%[b],%[s]),%%zmm29\n\t"
                     "vmovdqu64 (%[b],%[s],2),%%zmm30\n\t vmovdqu64 (%[b],%[s3]),%%zmm31\n\t"
                     LB_BROWS(LB_BROW) "add $64,%[b]\n\t add $24,%[a]\n\t dec %[n]\n\t jnz 1b\n\t"
                     "2:\n\t" LB_BROWS(LB_BSTORE_ROW)
                     : [a] "+r"(a), [b] "+r"(b), [n] "+r"(steps)
                     : [s] "r"(bstride), [s3] "r"(s3), [t] "r"(tile)
                     : LB_BCLOBBER);
}

// Fewer than 4 B panels (the last group of a row): the same chain per lane, one panel at a time.
LB_BF16_TARGET static void bf16_nb1(const uint8_t *a, const uint8_t *b, long steps, float *tile) {
    __m512 c[LOWBIT_MR];
    for (int r = 0; r < LOWBIT_MR; r++) c[r] = _mm512_setzero_ps();
    for (long s = 0; s < steps; s++) {
        const __m512bh bv = (__m512bh)_mm512_loadu_si512((const void *)(b + s * 64));
        for (int r = 0; r < LOWBIT_MR; r++) {
            int32_t pair;
            memcpy(&pair, a + s * LOWBIT_MR * 4 + 4 * r, 4);
            c[r] = _mm512_dpbf16_ps(c[r], (__m512bh)_mm512_set1_epi32(pair), bv);
        }
    }
    for (int r = 0; r < LOWBIT_MR; r++) _mm512_store_ps(tile + r * LOWBIT_NR, c[r]);
}

void lowbit_bf16_tiles(const void *a, const void *b, long bstride, long steps, int nb, float *tile) {
    if (nb == LOWBIT_VNNI_NB) {
        bf16_nb4(a, b, bstride, steps, tile);
        return;
    }
    for (int j = 0; j < nb; j++)
        bf16_nb1((const uint8_t *)a, (const uint8_t *)b + j * bstride, steps, tile + j * LOWBIT_MR * LOWBIT_NR);
}

// 1 when this CPU (and the OS) can run the AVX512-BF16 kernels, else 0.
int lowbit_cpu_has_avx512bf16(void) {
#if defined(__x86_64__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

// Float32 rows (R x K, any strides) whose values are bf16-exact (FP8 grid values are) -> bf16 panels of P rows
// in the kind 2 layout: element (r, k) of panel p at p*P*Kp + (k/2)*P*2 + (r%P)*2 + k%2 (Kp = K rounded up to
// 2); padding 0. The upper 16 bits of each float are its bf16 bits exactly for such values.
void lowbit_pack_bf16(const float *src, long s_row, long s_k, int R, int K, int P, uint16_t *dst, int nthreads) {
    const int Kp = LOWBIT_ROUND_UP(K, 2), npan = LOWBIT_CEIL_DIV(R, P);
#pragma omp parallel for num_threads(nthreads) schedule(static) if ((long)R * K > LOWBIT_PAR_BYTES)
    for (int p = 0; p < npan; p++) {
        uint16_t *d = dst + (long)p * P * Kp;
        if (s_k == 1 && (p + 1) * P <= R) {  // full panel of contiguous rows: one k-pair (2 floats) at a time
            const int kend = K / 2 * 2;
            for (int r = 0; r < P; r++) {
                const float *row = src + (long)(p * P + r) * s_row;
                uint32_t *d32 = (uint32_t *)d + r;
                for (int kb = 0; kb < kend; kb += 2) {
                    uint64_t v;
                    memcpy(&v, row + kb, 8);
                    d32[(long)(kb / 2) * P] = (uint32_t)((v >> 16) & 0xFFFFu) | (uint32_t)((v >> 48) << 16);
                }
                if (kend < K) {  // odd K: the last pair is (x, 0)
                    uint32_t bits;
                    memcpy(&bits, row + kend, 4);
                    d32[(long)(kend / 2) * P] = bits >> 16;
                }
            }
            continue;
        }
        for (int kb = 0; kb < Kp; kb += 2)
            for (int r = 0; r < P; r++)
                for (int g = 0; g < 2; g++) {
                    const int row = p * P + r, k = kb + g;
                    uint32_t bits = 0;
                    if (row < R && k < K) memcpy(&bits, src + (long)row * s_row + (long)k * s_k, 4);
                    d[(long)kb * P + r * 2 + g] = (uint16_t)(bits >> 16);
                }
    }
}
