// Integer GEMM micro-kernels (AVX2 inline asm) and the blocked, OpenMP-parallel driver with fused epilogue.
//
//   C[i, j] = acc[i, j] - off * colsum[j]                     (int32 output), or
//   C[i, j] = float(acc[i, j] - off * colsum[j]) * sa[i] * sb[j] (+ bias[j])  (float32 output, no FMA)
// where acc = sum_k Apacked[i, k] * Bpacked[j, k] (see gemm.h for the three kernel kinds and their exactness).
// The int32 arithmetic wraps (vector adds and uint32 scalar math), so acc - off*colsum is exact whenever the
// true result fits int32, even if acc alone would not.
//
// Blocking: the M x N output is cut into blocks of LB_MCP A panels x LB_NCP B panels, shared dynamically by the
// threads; inside a block the K dimension is cut into kc slices (<= LOWBIT_I4_KC for kind 1, whose int16
// accumulators must be widened before they can overflow). Per slice, one B panel (kc x 16) stays in L1 while
// the block's A panels (mc x kc) stream from L2; int32 partial sums live in a per-thread tile buffer.
#pragma GCC target("avx2")
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"

#ifndef LB_MCP
#define LB_MCP 8  // A panels (of MR rows) per block: 48 rows
#endif
#ifndef LB_NCP
#define LB_NCP 32  // B panels (of NR columns) per block: 512 columns
#endif
#ifndef LB_KC_MAX
#define LB_KC_MAX 1024  // k per slice for kinds 0 and 2 (kind 1: LOWBIT_I4_KC)
#endif
#define LB_TILE (LOWBIT_MR * LOWBIT_NR)

static const int16_t LB_ONES16[16] __attribute__((aligned(32))) = {1, 1, 1, 1, 1, 1, 1, 1,
                                                                   1, 1, 1, 1, 1, 1, 1, 1};

// ---- micro-kernels: 6 x 16 tile, accumulators ymm0-11 (row r: ymm(2r) cols 0-7, ymm(2r+1) cols 8-15),
// ymm12/13 the B panel slice, ymm14 the broadcast A group, ymm15 a product. Each stores its 12 accumulators
// to out (int32 for kinds 0/2, int16 pair sums for kind 1).
#define LB_CLOBBER "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", \
                   "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc"
#define LB_ZERO                                                                                              \
    "vpxor %%ymm0,%%ymm0,%%ymm0\n\t vpxor %%ymm1,%%ymm1,%%ymm1\n\t vpxor %%ymm2,%%ymm2,%%ymm2\n\t"           \
    "vpxor %%ymm3,%%ymm3,%%ymm3\n\t vpxor %%ymm4,%%ymm4,%%ymm4\n\t vpxor %%ymm5,%%ymm5,%%ymm5\n\t"           \
    "vpxor %%ymm6,%%ymm6,%%ymm6\n\t vpxor %%ymm7,%%ymm7,%%ymm7\n\t vpxor %%ymm8,%%ymm8,%%ymm8\n\t"           \
    "vpxor %%ymm9,%%ymm9,%%ymm9\n\t vpxor %%ymm10,%%ymm10,%%ymm10\n\t vpxor %%ymm11,%%ymm11,%%ymm11\n\t"
#define LB_STORE                                                                                             \
    "vmovdqu %%ymm0,0(%[o])\n\t vmovdqu %%ymm1,32(%[o])\n\t vmovdqu %%ymm2,64(%[o])\n\t"                     \
    "vmovdqu %%ymm3,96(%[o])\n\t vmovdqu %%ymm4,128(%[o])\n\t vmovdqu %%ymm5,160(%[o])\n\t"                  \
    "vmovdqu %%ymm6,192(%[o])\n\t vmovdqu %%ymm7,224(%[o])\n\t vmovdqu %%ymm8,256(%[o])\n\t"                 \
    "vmovdqu %%ymm9,288(%[o])\n\t vmovdqu %%ymm10,320(%[o])\n\t vmovdqu %%ymm11,352(%[o])\n\t"
#define LB_LOADB "vmovdqu (%[b]),%%ymm12\n\t vmovdqu 32(%[b]),%%ymm13\n\t"
#define LB_BCAST(r) "vpbroadcastd " #r "*4(%[a]),%%ymm14\n\t"
// kind 0: u8 x s8 pair sums -> int32 (vpmaddwd with ones) -> add
#define LB_ROW_K8(r, c0, c1)                                                                                 \
    LB_BCAST(r) "vpmaddubsw %%ymm12,%%ymm14,%%ymm15\n\t vpmaddwd (%[ones]),%%ymm15,%%ymm15\n\t"              \
                "vpaddd %%ymm15,%%ymm" #c0 ",%%ymm" #c0 "\n\t"                                               \
                "vpmaddubsw %%ymm13,%%ymm14,%%ymm15\n\t vpmaddwd (%[ones]),%%ymm15,%%ymm15\n\t"              \
                "vpaddd %%ymm15,%%ymm" #c1 ",%%ymm" #c1 "\n\t"
// kind 1: u4 x s4 pair sums accumulated in int16
#define LB_ROW_I4(r, c0, c1)                                                                                 \
    LB_BCAST(r) "vpmaddubsw %%ymm12,%%ymm14,%%ymm15\n\t vpaddw %%ymm15,%%ymm" #c0 ",%%ymm" #c0 "\n\t"         \
                "vpmaddubsw %%ymm13,%%ymm14,%%ymm15\n\t vpaddw %%ymm15,%%ymm" #c1 ",%%ymm" #c1 "\n\t"
// kind 2: s16 x s16 pair sums -> int32 -> add
#define LB_ROW_S16(r, c0, c1)                                                                                \
    LB_BCAST(r) "vpmaddwd %%ymm12,%%ymm14,%%ymm15\n\t vpaddd %%ymm15,%%ymm" #c0 ",%%ymm" #c0 "\n\t"           \
                "vpmaddwd %%ymm13,%%ymm14,%%ymm15\n\t vpaddd %%ymm15,%%ymm" #c1 ",%%ymm" #c1 "\n\t"
#define LB_SIX_ROWS(ROW) ROW(0, 0, 1) ROW(1, 2, 3) ROW(2, 4, 5) ROW(3, 6, 7) ROW(4, 8, 9) ROW(5, 10, 11)
// one k-group step: A advances MR groups of 4 bytes (24 bytes), B one 64-byte slice
#define LB_LOOP(ROW)                                                                                         \
    LB_ZERO "test %[n],%[n]\n\t jz 2f\n\t"                                                                   \
    "1:\n\t" LB_LOADB LB_SIX_ROWS(ROW) "add $64,%[b]\n\t add $24,%[a]\n\t dec %[n]\n\t jnz 1b\n\t"           \
    "2:\n\t" LB_STORE

static void ukr_k8(const void *a, const void *b, long n, void *out) {
    __asm__ volatile(LB_LOOP(LB_ROW_K8)
                     : [a] "+r"(a), [b] "+r"(b), [n] "+r"(n)
                     : [o] "r"(out), [ones] "r"(LB_ONES16)
                     : LB_CLOBBER);
}
static void ukr_i4(const void *a, const void *b, long n, void *out) {
    __asm__ volatile(LB_LOOP(LB_ROW_I4) : [a] "+r"(a), [b] "+r"(b), [n] "+r"(n) : [o] "r"(out) : LB_CLOBBER);
}
static void ukr_s16(const void *a, const void *b, long n, void *out) {
    __asm__ volatile(LB_LOOP(LB_ROW_S16) : [a] "+r"(a), [b] "+r"(b), [n] "+r"(n) : [o] "r"(out) : LB_CLOBBER);
}

// Run one micro-kernel over `steps` k-groups and add (or, when first, store) its result into the int32 tile.
static inline void tile_step(int kind, const void *a, const void *b, long steps, int32_t *tile, int first) {
    __m256i tmp[12];
    if (kind == 0)
        ukr_k8(a, b, steps, tmp);
    else if (kind == 1)
        ukr_i4(a, b, steps, tmp);
    else
        ukr_s16(a, b, steps, tmp);
    const __m256i ones = _mm256_set1_epi16(1);
    for (int v = 0; v < 12; v++) {
        __m256i x = kind == 1 ? _mm256_madd_epi16(tmp[v], ones) : tmp[v];  // kind 1: widen int16 pairs
        __m256i *t = (__m256i *)(tile + 8 * v);
        _mm256_store_si256(t, first ? x : _mm256_add_epi32(_mm256_load_si256(t), x));
    }
}

typedef struct {
    int M, N, off;
    const int32_t *colsum;  // (N,) or NULL when off == 0
    int32_t *out_i32;       // one of out_i32 / out_f32
    float *out_f32;
    long ldc;
    const float *sa, *sb, *bias;  // (M,), (N,), (N,) or NULL; used for float output
} lb_epilogue;

// Write one finished 6 x 16 tile at (i0, j0) to the output (clipped to M x N).
static void store_tile(const lb_epilogue *e, const int32_t *tile, int i0, int j0) {
    int rows = e->M - i0 < LOWBIT_MR ? e->M - i0 : LOWBIT_MR;
    int cols = e->N - j0 < LOWBIT_NR ? e->N - j0 : LOWBIT_NR;
    int32_t corr[LOWBIT_NR] __attribute__((aligned(32)));
    for (int c = 0; c < LOWBIT_NR; c++)  // wrapping uint32 math: exact modulo 2**32
        corr[c] = (c < cols && e->off) ? (int32_t)((uint32_t)e->off * (uint32_t)e->colsum[j0 + c]) : 0;
    for (int r = 0; r < rows; r++) {
        const int32_t *t = tile + r * LOWBIT_NR;
        long base = (long)(i0 + r) * e->ldc + j0;
        if (cols == LOWBIT_NR) {
            for (int h = 0; h < LOWBIT_NR; h += 8) {
                __m256i v = _mm256_sub_epi32(_mm256_load_si256((const __m256i *)(t + h)),
                                             _mm256_load_si256((const __m256i *)(corr + h)));
                if (e->out_i32) {
                    _mm256_storeu_si256((__m256i *)(e->out_i32 + base + h), v);
                } else {
                    __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(e->sa[i0 + r]));
                    f = _mm256_mul_ps(f, _mm256_loadu_ps(e->sb + j0 + h));
                    if (e->bias) f = _mm256_add_ps(f, _mm256_loadu_ps(e->bias + j0 + h));
                    _mm256_storeu_ps(e->out_f32 + base + h, f);
                }
            }
        } else {
            for (int c = 0; c < cols; c++) {
                int32_t v = (int32_t)((uint32_t)t[c] - (uint32_t)corr[c]);
                if (e->out_i32) {
                    e->out_i32[base + c] = v;
                } else {
                    volatile float f = (float)v * e->sa[i0 + r];  // volatile: keep the two roundings (no FMA)
                    f = f * e->sb[j0 + c];
                    e->out_f32[base + c] = e->bias ? f + e->bias[j0 + c] : f;
                }
            }
        }
    }
}

// C (M x N) from packed A (kind's A layout, M rows) and packed B (N columns), K the true depth.
// Returns 0, or -1 when a tile buffer cannot be allocated.
int lowbit_gemm(int kind, const void *Ap, const void *Bp, int M, int N, int K, int off, const int32_t *colsum,
                int32_t *out_i32, float *out_f32, long ldc, const float *sa, const float *sb, const float *bias,
                int nthreads) {
    const int kg = kind == 2 ? 2 : 4, esz = kind == 2 ? 2 : 1;
    const int Kp = LOWBIT_ROUND_UP(K, kg);
    const int kc_max = kind == 1 ? LOWBIT_I4_KC : LB_KC_MAX;
    const int nks = LOWBIT_CEIL_DIV(Kp, kc_max);
    const int kc = LOWBIT_ROUND_UP(LOWBIT_CEIL_DIV(Kp, nks), kg);
    const int mpan = LOWBIT_CEIL_DIV(M, LOWBIT_MR), npan = LOWBIT_CEIL_DIV(N, LOWBIT_NR);
    const int nmb = LOWBIT_CEIL_DIV(mpan, LB_MCP), nnb = LOWBIT_CEIL_DIV(npan, LB_NCP);
    const lb_epilogue e = {M, N, off, colsum, out_i32, out_f32, ldc, sa, sb, bias};
    int failed = 0;
    if (M <= 0 || N <= 0) return 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed) \
    if ((double)M * N * K > LOWBIT_PAR_MACS && nmb * nnb > 1)
    {
        int32_t *cbuf = aligned_alloc(64, sizeof(int32_t) * LB_TILE * LB_MCP * LB_NCP);
        if (!cbuf) failed = 1;
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int mb = 0; mb < nmb; mb++) {
            for (int nb = 0; nb < nnb; nb++) {
                if (!cbuf) continue;
                int p0 = mb * LB_MCP, p1 = p0 + LB_MCP < mpan ? p0 + LB_MCP : mpan;
                int q0 = nb * LB_NCP, q1 = q0 + LB_NCP < npan ? q0 + LB_NCP : npan;
                for (int k0 = 0; k0 < Kp; k0 += kc) {
                    long steps = ((k0 + kc < Kp ? k0 + kc : Kp) - k0) / kg;
                    for (int q = q0; q < q1; q++) {
                        const char *bpan = (const char *)Bp + ((long)q * LOWBIT_NR * Kp + (long)k0 * LOWBIT_NR) * esz;
                        for (int p = p0; p < p1; p++) {
                            const char *apan =
                                (const char *)Ap + ((long)p * LOWBIT_MR * Kp + (long)k0 * LOWBIT_MR) * esz;
                            int32_t *tile = cbuf + ((long)(p - p0) * LB_NCP + (q - q0)) * LB_TILE;
                            tile_step(kind, apan, bpan, steps, tile, k0 == 0);
                        }
                    }
                }
                for (int p = p0; p < p1; p++)
                    for (int q = q0; q < q1; q++)
                        store_tile(&e, cbuf + ((long)(p - p0) * LB_NCP + (q - q0)) * LB_TILE, p * LOWBIT_MR,
                                   q * LOWBIT_NR);
            }
        }
        free(cbuf);
    }
    return failed ? -1 : 0;
}
