// Integer GEMM micro-kernels (AVX2 inline asm) and the blocked, OpenMP-parallel driver with fused epilogue.
//
//   C[i, j] = acc[i, j] - off * colsum[j]                     (int32 output), or
//   C[i, j] = float(acc[i, j] - off * colsum[j]) * sa[i] * sb[j] (+ bias[j])  (float32 output, no FMA)
// where acc = sum_k Apacked[i, k] * Bpacked[j, k] (see gemm.h for the three kernel kinds and their exactness).
// The int32 arithmetic wraps (vector adds and uint32 scalar math), so acc - off*colsum is exact whenever the
// true result fits int32, even if acc alone would not.
//
// Blocking: the M x N output is cut into blocks of LB_MCP A panels x LB_NCP B panels, shared dynamically by the
// threads; inside a block K is cut into as few slices as keep kc <= LB_KC_MAX (one slice up to K = 1024).
// Per slice, one B panel (kc x 16) stays in L1 while the block's A panels (mc x kc) stream from L1/L2. With one
// slice each 6 x 16 tile is finished in a single micro-kernel pass and goes straight through the epilogue;
// with several, int32 partial sums live in a per-thread tile buffer. Kind 1 widens its int16 accumulators to
// int32 every LOWBIT_I4_KC k (inside the tile step), before they can overflow.
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
#define LB_KC_MAX 1024  // k per slice (kind 1 widens its int16 sums every LOWBIT_I4_KC k inside a slice)
#endif
#define LB_TILE (LOWBIT_MR * LOWBIT_NR)
#define LB_S8U4_STEPS 8  // LOWBIT_S8U4_KC / 4 (a literal: it is pasted into the asm text)
#define LB_XSTR(x) #x
#define LB_STR(x) LB_XSTR(x)
_Static_assert(LB_S8U4_STEPS * 4 == LOWBIT_S8U4_KC, "kind 3 chunk");

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
// kind 3: s8 (A, broadcast) x u8 (B + 8) pair sums accumulated in int16 (B is vpmaddubsw's unsigned operand)
#define LB_ROW_S8U4(r, c0, c1)                                                                               \
    LB_BCAST(r) "vpmaddubsw %%ymm14,%%ymm12,%%ymm15\n\t vpaddw %%ymm15,%%ymm" #c0 ",%%ymm" #c0 "\n\t"         \
                "vpmaddubsw %%ymm14,%%ymm13,%%ymm15\n\t vpaddw %%ymm15,%%ymm" #c1 ",%%ymm" #c1 "\n\t"
#define LB_SIX_ROWS(ROW) ROW(0, 0, 1) ROW(1, 2, 3) ROW(2, 4, 5) ROW(3, 6, 7) ROW(4, 8, 9) ROW(5, 10, 11)
// kind 1 only: widen the int16 pair sums to int32 (vpmaddwd with ones; the B registers are free by now)
#define LB_WIDEN                                                                                             \
    "vmovdqu (%[ones]),%%ymm12\n\t"                                                                         \
    "vpmaddwd %%ymm12,%%ymm0,%%ymm0\n\t vpmaddwd %%ymm12,%%ymm1,%%ymm1\n\t vpmaddwd %%ymm12,%%ymm2,%%ymm2\n\t" \
    "vpmaddwd %%ymm12,%%ymm3,%%ymm3\n\t vpmaddwd %%ymm12,%%ymm4,%%ymm4\n\t vpmaddwd %%ymm12,%%ymm5,%%ymm5\n\t" \
    "vpmaddwd %%ymm12,%%ymm6,%%ymm6\n\t vpmaddwd %%ymm12,%%ymm7,%%ymm7\n\t vpmaddwd %%ymm12,%%ymm8,%%ymm8\n\t" \
    "vpmaddwd %%ymm12,%%ymm9,%%ymm9\n\t vpmaddwd %%ymm12,%%ymm10,%%ymm10\n\t vpmaddwd %%ymm12,%%ymm11,%%ymm11\n\t"
// add the int32 tile already in memory unless this is the first pass (f != 0), then store the 12 accumulators
#define LB_ACCUMULATE                                                                                        \
    "test %[f],%[f]\n\t jnz 3f\n\t"                                                                          \
    "vpaddd 0(%[o]),%%ymm0,%%ymm0\n\t vpaddd 32(%[o]),%%ymm1,%%ymm1\n\t vpaddd 64(%[o]),%%ymm2,%%ymm2\n\t"      \
    "vpaddd 96(%[o]),%%ymm3,%%ymm3\n\t vpaddd 128(%[o]),%%ymm4,%%ymm4\n\t vpaddd 160(%[o]),%%ymm5,%%ymm5\n\t"   \
    "vpaddd 192(%[o]),%%ymm6,%%ymm6\n\t vpaddd 224(%[o]),%%ymm7,%%ymm7\n\t vpaddd 256(%[o]),%%ymm8,%%ymm8\n\t"  \
    "vpaddd 288(%[o]),%%ymm9,%%ymm9\n\t vpaddd 320(%[o]),%%ymm10,%%ymm10\n\t vpaddd 352(%[o]),%%ymm11,%%ymm11\n\t" \
    "3:\n\t" LB_STORE
// one k-group step: A advances MR groups of 4 bytes (24 bytes), B one 64-byte slice
#define LB_LOOP(ROW, TAIL)                                                                                   \
    LB_ZERO "test %[n],%[n]\n\t jz 2f\n\t"                                                                   \
    "1:\n\t" LB_LOADB LB_SIX_ROWS(ROW) "add $64,%[b]\n\t add $24,%[a]\n\t dec %[n]\n\t jnz 1b\n\t"           \
    "2:\n\t" TAIL LB_ACCUMULATE

// Each micro-kernel runs n k-group steps on one A panel and one B panel and adds its 6 x 16 int32 result into
// the tile at `tile` (32-byte aligned), or stores it there when `first` is non-zero.
#define LB_UKR(name, ROW, TAIL)                                                                              \
    static void name(const void *a, const void *b, long n, int32_t *tile, long first) {                      \
        __asm__ volatile(LB_LOOP(ROW, TAIL)                                                                  \
                         : [a] "+r"(a), [b] "+r"(b), [n] "+r"(n)                                             \
                         : [o] "r"(tile), [ones] "r"(LB_ONES16), [f] "r"(first)                              \
                         : LB_CLOBBER);                                                                      \
    }
LB_UKR(ukr_k8, LB_ROW_K8, "")
LB_UKR(ukr_i4, LB_ROW_I4, LB_WIDEN)
LB_UKR(ukr_s16, LB_ROW_S16, "")

// Kind 3: n >= 1 k-group steps in chunks of LOWBIT_S8U4_KC / 4; after each chunk the int16 pair sums are widened
// and added into the int32 tile in memory (which the caller has zeroed or holds earlier slices' sums).
static void ukr_s8u4(const void *a, const void *b, long n, int32_t *tile) {
    long c;
    __asm__ volatile(
        "1:\n\t" LB_ZERO "mov $" LB_STR(LB_S8U4_STEPS) ",%[c]\n\t cmp %[n],%[c]\n\t cmova %[n],%[c]\n\t"
        "sub %[c],%[n]\n\t"
        "2:\n\t" LB_LOADB LB_SIX_ROWS(LB_ROW_S8U4) "add $64,%[b]\n\t add $24,%[a]\n\t dec %[c]\n\t jnz 2b\n\t"
        LB_WIDEN
        "vpaddd 0(%[o]),%%ymm0,%%ymm0\n\t vpaddd 32(%[o]),%%ymm1,%%ymm1\n\t vpaddd 64(%[o]),%%ymm2,%%ymm2\n\t"
        "vpaddd 96(%[o]),%%ymm3,%%ymm3\n\t vpaddd 128(%[o]),%%ymm4,%%ymm4\n\t vpaddd 160(%[o]),%%ymm5,%%ymm5\n\t"
        "vpaddd 192(%[o]),%%ymm6,%%ymm6\n\t vpaddd 224(%[o]),%%ymm7,%%ymm7\n\t vpaddd 256(%[o]),%%ymm8,%%ymm8\n\t"
        "vpaddd 288(%[o]),%%ymm9,%%ymm9\n\t vpaddd 320(%[o]),%%ymm10,%%ymm10\n\t vpaddd 352(%[o]),%%ymm11,%%ymm11\n\t"
        LB_STORE "test %[n],%[n]\n\t jnz 1b\n\t"
        : [a] "+r"(a), [b] "+r"(b), [n] "+r"(n), [c] "=&r"(c)
        : [o] "r"(tile), [ones] "r"(LB_ONES16)
        : LB_CLOBBER);
}

// Run `steps` k-groups of one tile and add (or, when first, store) the result into the int32 tile. Kind 1 runs
// in chunks of LOWBIT_I4_KC k, widening its int16 accumulators to int32 before they can overflow.
static inline void tile_step(int kind, const char *a, const char *b, long steps, int32_t *tile, int first) {
    if (kind == 0) {
        ukr_k8(a, b, steps, tile, first);
    } else if (kind == 2) {
        ukr_s16(a, b, steps, tile, first);
    } else if (kind == 3) {
        if (first) memset(tile, 0, sizeof(int32_t) * LB_TILE);
        if (steps > 0) ukr_s8u4(a, b, steps, tile);
    } else {
        const long chunk = LOWBIT_I4_KC / 4;
        for (long s = 0; s < steps || s == 0; s += chunk) {
            long n = steps - s < chunk ? steps - s : chunk;
            ukr_i4(a + s * LOWBIT_MR * 4, b + s * LOWBIT_NR * 4, n, tile, first && s == 0);
        }
    }
}

typedef struct {
    int M, N, off;
    const int32_t *colsum;  // (N,) or NULL when off == 0; kind 3: A's row sums (M,), off = B's shift
    int rowcorr;            // kind 3: subtract off * colsum[i] per row instead of per column
    int float_acc;          // kind 5: the tile holds float32 sums (no offset); float output only
    int32_t *out_i32;       // one of out_i32 / out_f32
    float *out_f32;
    long ldc;
    const float *sa, *sb, *bias;  // (M,), (N,), (N,) or NULL; used for float output
} lb_epilogue;

// Write one finished 6 x 16 tile at (i0, j0) to the output (clipped to M x N).
static void store_tile(const lb_epilogue *e, const int32_t *tile, int i0, int j0) {
    int rows = e->M - i0 < LOWBIT_MR ? e->M - i0 : LOWBIT_MR;
    int cols = e->N - j0 < LOWBIT_NR ? e->N - j0 : LOWBIT_NR;
    if (e->float_acc) {  // out = acc * sa[i] * sb[j] (+ bias[j]) in float32, two roundings, no FMA
        const float *ft = (const float *)tile;
        for (int r = 0; r < rows; r++) {
            long base = (long)(i0 + r) * e->ldc + j0;
            if (cols == LOWBIT_NR) {  // this file has no FMA target: mul and add stay two roundings
                for (int h = 0; h < LOWBIT_NR; h += 8) {
                    __m256 f = _mm256_mul_ps(_mm256_load_ps(ft + r * LOWBIT_NR + h), _mm256_set1_ps(e->sa[i0 + r]));
                    f = _mm256_mul_ps(f, _mm256_loadu_ps(e->sb + j0 + h));
                    if (e->bias) f = _mm256_add_ps(f, _mm256_loadu_ps(e->bias + j0 + h));
                    _mm256_storeu_ps(e->out_f32 + base + h, f);
                }
                continue;
            }
            for (int c = 0; c < cols; c++) {
                volatile float f = ft[r * LOWBIT_NR + c] * e->sa[i0 + r];
                f = f * e->sb[j0 + c];
                e->out_f32[base + c] = e->bias ? f + e->bias[j0 + c] : f;
            }
        }
        return;
    }
    int32_t corr[LOWBIT_NR] __attribute__((aligned(32)));
    if (cols == LOWBIT_NR && e->off && !e->rowcorr) {  // vpmulld wraps like uint32 math: exact modulo 2**32
        const __m256i voff = _mm256_set1_epi32(e->off);
        for (int h = 0; h < LOWBIT_NR; h += 8)
            _mm256_store_si256((__m256i *)(corr + h),
                               _mm256_mullo_epi32(voff, _mm256_loadu_si256((const __m256i *)(e->colsum + j0 + h))));
    } else {
        for (int c = 0; c < LOWBIT_NR; c++)  // wrapping uint32 math: exact modulo 2**32
            corr[c] = (c < cols && e->off && !e->rowcorr)
                          ? (int32_t)((uint32_t)e->off * (uint32_t)e->colsum[j0 + c])
                          : 0;
    }
    for (int r = 0; r < rows; r++) {
        const int32_t *t = tile + r * LOWBIT_NR;
        if (e->rowcorr && e->off) {
            int32_t rc = (int32_t)((uint32_t)e->off * (uint32_t)e->colsum[i0 + r]);
            for (int c = 0; c < LOWBIT_NR; c++) corr[c] = rc;
        }
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

// The blocked driver. Packed A (Ap), or, when x is not NULL, float32 rows x (ldx) quantized by each thread
// into its own A panels just before use (q, off; scales written to sa_out, non-finite inputs counted in
// *bad): the activations are read once, their codes never leave the core's caches, and the quantization shares
// the GEMM's parallel region. The fused mode makes each block a whole row band (all N), so no A panel is
// quantized twice. Returns 0, or -1 when a buffer cannot be allocated.
static int gemm_driver(int kind, const void *Ap, const float *x, long ldx, const lb_actq *q, float *sa_out, long *bad,
                       const void *Bp, int M, int N, int K, const lb_epilogue *e, int nthreads) {
    const int wide = kind == 2 || kind == LOWBIT_KIND_BF16;  // 16-bit elements, 2 k per 32-bit group
    const int kg = wide ? 2 : 4, esz = wide ? 2 : 1;
    const int Kp = LOWBIT_ROUND_UP(K, kg);
    // kind 5 keeps one K slice: each float32 output is one sequential chain over k (the order the tests emulate)
    const int nks = kind == LOWBIT_KIND_BF16 ? 1 : LOWBIT_CEIL_DIV(Kp, LB_KC_MAX);
    const int qstep = kind >= LOWBIT_KIND_VNNI ? LOWBIT_VNNI_NB : 1;  // B panels per micro-kernel call
    const int kc = LOWBIT_ROUND_UP(LOWBIT_CEIL_DIV(Kp, nks), kg);
    const int mpan = LOWBIT_CEIL_DIV(M, LOWBIT_MR), npan = LOWBIT_CEIL_DIV(N, LOWBIT_NR);
    const int nmb = LOWBIT_CEIL_DIV(mpan, LB_MCP), nnb = x ? 1 : LOWBIT_CEIL_DIV(npan, LB_NCP);
    const int ncp = x ? npan : LB_NCP;  // B panels per block
    const long abytes = (long)LB_MCP * LOWBIT_MR * Kp * esz;
    int failed = 0;
    long nbad = 0;
    if (M <= 0 || N <= 0) return 0;
#pragma omp parallel num_threads(nthreads) reduction(| : failed) reduction(+ : nbad) \
    if ((double)M * N * K > LOWBIT_PAR_MACS && nmb * nnb > 1)
    {
        // One K slice: every tile is finished in one pass and written out at once from a stack tile. Several
        // slices: the block's int32 partial sums live in a per-thread buffer until the last slice.
        int32_t one[LB_TILE * LOWBIT_VNNI_NB] __attribute__((aligned(64)));
        int32_t *cbuf = nks > 1 ? aligned_alloc(64, sizeof(int32_t) * LB_TILE * LB_MCP * LB_NCP) : one;
        char *abuf = x ? aligned_alloc(64, LOWBIT_ROUND_UP(abytes, 64)) : NULL;
        int8_t *rowbuf = x ? malloc((size_t)LOWBIT_MR * Kp + 32) : NULL;
        int ok = cbuf && (!x || (abuf && rowbuf));
        if (!ok) failed = 1;
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int mb = 0; mb < nmb; mb++) {
            for (int nb = 0; nb < nnb; nb++) {
                if (!ok) continue;
                int p0 = mb * LB_MCP, p1 = p0 + LB_MCP < mpan ? p0 + LB_MCP : mpan;
                const char *ablock = (const char *)Ap + (long)p0 * LOWBIT_MR * Kp * esz;
                if (x) {
                    for (int p = p0; p < p1; p++) {
                        int r0 = p * LOWBIT_MR, rows = M - r0 < LOWBIT_MR ? M - r0 : LOWBIT_MR;
                        nbad += lowbit_quant_panel(x, ldx, r0, rows, K, q, e->off, esz, rowbuf,
                                                   abuf + (long)(p - p0) * LOWBIT_MR * Kp * esz, sa_out);
                    }
                    ablock = abuf;
                }
                for (int q0 = nb * LB_NCP; q0 < (nb + 1) * ncp && q0 < npan; q0 += LB_NCP) {
                    int q1 = q0 + LB_NCP < npan ? q0 + LB_NCP : npan;
                    for (int k0 = 0; k0 < Kp; k0 += kc) {
                        long steps = ((k0 + kc < Kp ? k0 + kc : Kp) - k0) / kg;
                        for (int q = q0; q < q1; q += qstep) {
                            const char *bpan =
                                (const char *)Bp + ((long)q * LOWBIT_NR * Kp + (long)k0 * LOWBIT_NR) * esz;
                            const int nb = q1 - q < qstep ? q1 - q : qstep;
                            for (int p = p0; p < p1; p++) {
                                const char *apan = ablock + ((long)(p - p0) * LOWBIT_MR * Kp + (long)k0 * LOWBIT_MR) * esz;
                                if (kind == LOWBIT_KIND_BF16) {  // one K slice: straight to the epilogue
                                    lowbit_bf16_tiles(apan, bpan, (long)LOWBIT_NR * Kp * esz, steps, nb,
                                                      (float *)one);
                                    for (int j = 0; j < nb; j++)
                                        store_tile(e, one + j * LB_TILE, p * LOWBIT_MR, (q + j) * LOWBIT_NR);
                                } else if (kind == LOWBIT_KIND_VNNI) {  // nb consecutive tiles in one / cbuf
                                    int32_t *tile =
                                        nks == 1 ? one : cbuf + ((long)(p - p0) * LB_NCP + (q - q0)) * LB_TILE;
                                    lowbit_vnni_tiles(apan, bpan, (long)LOWBIT_NR * Kp, steps, nb, tile,
                                                      nks == 1 || k0 == 0);
                                    if (nks == 1)
                                        for (int j = 0; j < nb; j++)
                                            store_tile(e, one + j * LB_TILE, p * LOWBIT_MR, (q + j) * LOWBIT_NR);
                                } else if (nks == 1) {
                                    tile_step(kind, apan, bpan, steps, one, 1);
                                    store_tile(e, one, p * LOWBIT_MR, q * LOWBIT_NR);
                                } else {
                                    int32_t *tile = cbuf + ((long)(p - p0) * LB_NCP + (q - q0)) * LB_TILE;
                                    tile_step(kind, apan, bpan, steps, tile, k0 == 0);
                                }
                            }
                        }
                    }
                    if (nks > 1)
                        for (int p = p0; p < p1; p++)
                            for (int q = q0; q < q1; q++)
                                store_tile(e, cbuf + ((long)(p - p0) * LB_NCP + (q - q0)) * LB_TILE, p * LOWBIT_MR,
                                           q * LOWBIT_NR);
                }
            }
        }
        if (nks > 1) free(cbuf);
        free(abuf);
        free(rowbuf);
    }
    if (bad) *bad = nbad;
    return failed ? -1 : 0;
}

// C (M x N) from packed A (kind's A layout, M rows) and packed B (N columns), K the true depth.
// Returns 0, or -1 when a tile buffer cannot be allocated.
int lowbit_gemm(int kind, const void *Ap, const void *Bp, int M, int N, int K, int off, const int32_t *colsum,
                int32_t *out_i32, float *out_f32, long ldc, const float *sa, const float *sb, const float *bias,
                int nthreads) {
    const lb_epilogue e = {M, N, off, colsum, kind == 3, kind == LOWBIT_KIND_BF16, out_i32, out_f32, ldc, sa, sb,
                           bias};
    if (kind == LOWBIT_KIND_BF16 && !out_f32) return -1;  // float sums have no int32 form
    return gemm_driver(kind, Ap, NULL, 0, NULL, NULL, NULL, Bp, M, N, K, &e, nthreads);
}

// Fused linear: quantize float32 rows x (M x K, row stride ldx) per row to [-qmax, qmax] (scales into sa_out),
// shift by off, multiply with packed B and write float32 out through the epilogue. Identical results to
// lowbit_quant_pack_u8 / _s16 followed by lowbit_gemm. sstat > 0 replaces the per-row scales by that static
// scale with codes clamped to [qlo, qmax] (see lb_actq). Returns the number of non-finite inputs (the output is
// then meaningless), or -1 when a buffer cannot be allocated.
long lowbit_gemm_quant(int kind, const float *x, long ldx, int qmax, int qlo, float sstat, const void *Bp, int M,
                       int N, int K, int off, const int32_t *colsum, float *out_f32, long ldc, float *sa_out,
                       const float *sb, const float *bias, int nthreads) {
    const lb_epilogue e = {M, N, off, colsum, 0, 0, NULL, out_f32, ldc, sa_out, sb, bias};
    const lb_actq q = {qmax, qlo, sstat};
    long bad = 0;
    if (gemm_driver(kind, NULL, x, ldx, &q, sa_out, &bad, Bp, M, N, K, &e, nthreads)) return -1;
    return bad;
}
