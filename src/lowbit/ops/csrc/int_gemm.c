/* Integer GEMM with a fused requantizing epilogue for lowbit.integer (inference linears).
 *
 *   acc[i, j]  = sum_k a[i, k] * w[j, k]          a: uint8 codes (the int8 code + off, off 0 or 128),
 *                                                 w: 7-bit weight codes in [-64, 64], packed once
 *   x[i, j]    = sat32(acc[i, j] - off * colsum[j] + bias[j])      (= sat32(codes . w + bias))
 *   y[i, j]    = round_half_up(x[i, j] * mult[j] / 2^shift[j])       (ReLU on x first if asked)
 *   mode 0: out int8  = clamp(y, +-127) (+ out_off: 128 -> stored as uint8 code + 128 for the next GEMM)
 *   mode 1: out int32 = sat32(out + y)  (the residual stream, in place)
 * The same integers as lowbit.integer.fast.requant_channels(int_matmul(codes, w), ...) (tested bit for bit).
 * u8 x s7 pairs fit int16 exactly (255 * 64 * 2 < 2^15), so vpmaddubsw never saturates.
 * Uses no symbol of the gemm_* engine; only its tile idea (6 x 16 int32 accumulators in registers). */
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "int_common.h"
#define IG_MR 6
#define IG_NR 16
#define IG_MB 48 /* rows per parallel block */

/* Pack w int8 (n, k) row-major (k % 4 == 0) into panels of 16 channels: panel q, k-group g holds channel
 * c's bytes w[16q + c, 4g .. 4g + 3] at q * 16 * k + g * 64 + c * 4; missing channels are 0. colsum (n,). */
void lowbit_int_pack_w(const int8_t *w, long n, long k, int8_t *dst, int32_t *colsum) {
    long npan = (n + IG_NR - 1) / IG_NR;
    memset(dst, 0, (size_t)(npan * IG_NR * k));
    for (long j = 0; j < n; ++j) {
        long q = j / IG_NR, c = j % IG_NR;
        int32_t s = 0;
        for (long kk = 0; kk < k; ++kk) {
            dst[q * IG_NR * k + (kk / 4) * 64 + c * 4 + (kk % 4)] = w[j * k + kk];
            s += w[j * k + kk];
        }
        colsum[j] = s;
    }
}

/* Full-range variant: w int8 (n, k) (k even) -> int16 panels of 16 channels: panel q, k-pair p holds channel c's
 * w[16q + c, 2p .. 2p + 1] at (q * 16 * k + p * 32 + c * 2) int16s; colsum unused (no offset on this path). */
void lowbit_int_pack_w16(const int8_t *w, long n, long k, int16_t *dst) {
    long npan = (n + IG_NR - 1) / IG_NR;
    memset(dst, 0, sizeof(int16_t) * (size_t)(npan * IG_NR * k));
    for (long j = 0; j < n; ++j) {
        long q = j / IG_NR, c = j % IG_NR;
        for (long kk = 0; kk < k; ++kk) dst[q * IG_NR * k + (kk / 2) * 32 + c * 2 + (kk % 2)] = w[j * k + kk];
    }
}

typedef struct {
    const int64_t *bias;   /* (n,) bias - off * colsum, int64 */
    const int64_t *mult;   /* (n,) */
    const int64_t *add;    /* (n,) 2^(shift-1) (0 if shift 0) + 2^62 */
    const int64_t *shift;  /* (n,) */
    const int64_t *sub;    /* (n,) 2^62 >> shift */
    int relu, mode, out_off, fast;
    void *out;
    long ldo;
} ig_epi;


/* 4 channels j..j+3 of one row: int64 lanes of y (before the final clamp). */
static inline __m256i ig_dyadic4(__m256i acc4, const ig_epi *e, long j) {
    const __m256i lo32 = _mm256_set1_epi64x(INT32_MIN), hi32 = _mm256_set1_epi64x(INT32_MAX);
    __m256i x = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(acc4)),
                                 _mm256_loadu_si256((const __m256i *)(e->bias + j)));
    x = lb_clamp64(x, lo32, hi32);
    if (e->relu) x = _mm256_and_si256(x, _mm256_cmpgt_epi64(x, _mm256_setzero_si256()));
    __m256i p = _mm256_add_epi64(_mm256_mul_epi32(x, _mm256_loadu_si256((const __m256i *)(e->mult + j))),
                                 _mm256_loadu_si256((const __m256i *)(e->add + j)));
    __m256i sh = _mm256_loadu_si256((const __m256i *)(e->shift + j));
    return _mm256_sub_epi64(_mm256_srlv_epi64(p, sh), _mm256_loadu_si256((const __m256i *)(e->sub + j)));
}

/* Exact generic epilogue of one row of 8 channels (int64 lanes; any mode). */
static inline void ig_store8_generic(__m256i v, const ig_epi *e, long i, long j) {
    const __m256i lo8 = _mm256_set1_epi64x(-127), hi8 = _mm256_set1_epi64x(127);
    const __m256i lo32 = _mm256_set1_epi64x(INT32_MIN), hi32 = _mm256_set1_epi64x(INT32_MAX);
    __m256i y0 = ig_dyadic4(v, e, j);
    __m256i y1 = ig_dyadic4(_mm256_permute2x128_si256(v, v, 0x01), e, j + 4);
    if (e->mode == 0) {
        y0 = lb_clamp64(y0, lo8, hi8);
        y1 = lb_clamp64(y1, lo8, hi8);
        /* low dwords of the int64 lanes -> 8 int32 -> int8 */
        const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        __m128i a = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y0, idx));
        __m128i b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y1, idx));
        __m128i s16 = _mm_packs_epi32(a, b);
        __m128i s8 = _mm_packs_epi16(s16, s16);
        if (e->out_off) s8 = _mm_xor_si128(s8, _mm_set1_epi8((char)0x80));
        _mm_storel_epi64((__m128i *)((int8_t *)e->out + i * e->ldo + j), s8);
    } else {
        int32_t *o = (int32_t *)e->out + i * e->ldo + j;
        __m128i r = _mm_loadu_si128((const __m128i *)o), r1 = _mm_loadu_si128((const __m128i *)(o + 4));
        y0 = lb_clamp64(_mm256_add_epi64(y0, _mm256_cvtepi32_epi64(r)), lo32, hi32);
        y1 = lb_clamp64(_mm256_add_epi64(y1, _mm256_cvtepi32_epi64(r1)), lo32, hi32);
        const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
        __m128i a = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y0, idx));
        __m128i b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y1, idx));
        _mm_storeu_si128((__m128i *)o, a);
        _mm_storeu_si128((__m128i *)(o + 4), b);
    }
}

/* Fast int8-output epilogue of 16 channels of one row, valid when the caller proved (at pack time) that
 * acc + bias never leaves int32 and |y| < 2^31 before the clamp: 32-bit add, 64-bit products in even/odd lanes. */
static inline void ig_store16_fast(__m256i v0, __m256i v1, const ig_epi *e, const int32_t *b32,
                                   const int32_t *m32, long i, long j) {
    __m256i r[2];
    __m256i vv[2] = {v0, v1};
    for (int h = 0; h < 2; ++h) {
        long jj = j + 8 * h;
        __m256i x = _mm256_add_epi32(vv[h], _mm256_loadu_si256((const __m256i *)(b32 + jj)));
        if (e->relu) x = _mm256_max_epi32(x, _mm256_setzero_si256());
        __m256i m = _mm256_loadu_si256((const __m256i *)(m32 + jj));
        /* even lanes: channels jj, jj+2, ..; odd lanes: jj+1, .. (e->add etc. are per channel int64) */
        const __m256i ev = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        __m256i pe = _mm256_mul_epi32(x, m);
        __m256i po = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), _mm256_srli_epi64(m, 32));
        /* per-lane constants in the even/odd order */
        const int64_t *ad = e->add + jj, *sh = e->shift + jj, *sb = e->sub + jj;
        __m256i ade = _mm256_setr_epi64x(ad[0], ad[2], ad[4], ad[6]), ado = _mm256_setr_epi64x(ad[1], ad[3], ad[5], ad[7]);
        __m256i she = _mm256_setr_epi64x(sh[0], sh[2], sh[4], sh[6]), sho = _mm256_setr_epi64x(sh[1], sh[3], sh[5], sh[7]);
        __m256i sbe = _mm256_setr_epi64x(sb[0], sb[2], sb[4], sb[6]), sbo = _mm256_setr_epi64x(sb[1], sb[3], sb[5], sb[7]);
        __m256i ye = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(pe, ade), she), sbe);
        __m256i yo = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(po, ado), sho), sbo);
        /* |y| < 2^31: the low dwords are the values; interleave back to channel order */
        r[h] = _mm256_blend_epi32(ye, _mm256_slli_epi64(yo, 32), 0xAA);
        (void)ev;
    }
    __m256i s16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(r[0], r[1]), 0xD8);
    __m128i s8 = _mm_packs_epi16(_mm256_castsi256_si128(s16), _mm256_extracti128_si256(s16, 1));
    s8 = _mm_max_epi8(s8, _mm_set1_epi8(-127));
    if (e->out_off) s8 = _mm_xor_si128(s8, _mm_set1_epi8((char)0x80));
    _mm_storeu_si128((__m128i *)((int8_t *)e->out + i * e->ldo + j), s8);
}

#define IG_ROW(r)                                                                 \
    {                                                                             \
        __m256i av = _mm256_set1_epi32(*(const int32_t *)(a##r + kk));           \
        __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b0), ones);       \
        __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(av, b1), ones);       \
        c##r##0 = _mm256_add_epi32(c##r##0, p0);                                  \
        c##r##1 = _mm256_add_epi32(c##r##1, p1);                                  \
    }

static void ig_epilogue(__m256i c[IG_MR][2], int rows, long i0, long n, long j0, const ig_epi *e,
                        const int32_t *b32, const int32_t *m32);

/* s16 x s16 tile (full-range int8 codes): a0 = int16 row i0 (row stride lda), bp int16 panel; vpmaddwd. */
static void ig_tile16(const int16_t *a0, long lda, long i0, int rows, const int16_t *bp, long k, long n, long j0,
                      const ig_epi *e, const int32_t *b32, const int32_t *m32) {
    const int16_t *a1 = rows > 1 ? a0 + lda : a0, *a2 = rows > 2 ? a0 + 2 * lda : a0;
    const int16_t *a3 = rows > 3 ? a0 + 3 * lda : a0, *a4 = rows > 4 ? a0 + 4 * lda : a0;
    const int16_t *a5 = rows > 5 ? a0 + 5 * lda : a0;
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
    __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    for (long kk = 0; kk < k; kk += 2) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)bp), b1 = _mm256_loadu_si256((const __m256i *)(bp + 16));
        bp += 32;
#define IG_ROW16(r)                                                                \
    {                                                                              \
        __m256i av = _mm256_set1_epi32(*(const int32_t *)(a##r + kk));             \
        c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(av, b0));            \
        c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(av, b1));            \
    }
        IG_ROW16(0) IG_ROW16(1) IG_ROW16(2) IG_ROW16(3) IG_ROW16(4) IG_ROW16(5)
    }
    __m256i c[IG_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    ig_epilogue(c, rows, i0, n, j0, e, b32, m32);
}

#define IG_ROW_VNNI(r)                                                          \
    {                                                                           \
        __m256i av = _mm256_set1_epi32(*(const int32_t *)(a##r + kk));         \
        c##r##0 = _mm256_dpbusd_epi32(c##r##0, av, b0);                         \
        c##r##1 = _mm256_dpbusd_epi32(c##r##1, av, b1);                         \
    }

/* One 6 x 16 tile: rows i0.. (rows valid), channels 16q.. ; full K; ROW: the k-step of one row. */
#define IG_TILE_U8(NAME, ATTR, ROW)                                                                          \
    ATTR static void NAME(const uint8_t *a, long lda, long i0, int rows, const int8_t *bp, long k, long n,     \
                          long j0, const ig_epi *e, const int32_t *b32, const int32_t *m32) {                 \
        const uint8_t *a0 = a + i0 * lda;                                                                    \
        const uint8_t *a1 = rows > 1 ? a0 + lda : a0, *a2 = rows > 2 ? a0 + 2 * lda : a0;                    \
        const uint8_t *a3 = rows > 3 ? a0 + 3 * lda : a0, *a4 = rows > 4 ? a0 + 4 * lda : a0;                \
        const uint8_t *a5 = rows > 5 ? a0 + 5 * lda : a0;                                                    \
        const __m256i ones = _mm256_set1_epi16(1);                                                           \
        (void)ones;                                                                                          \
        __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;         \
        __m256i c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;                            \
        for (long kk = 0; kk < k; kk += 4) {                                                                 \
            __m256i b0 = _mm256_loadu_si256((const __m256i *)bp);                                            \
            __m256i b1 = _mm256_loadu_si256((const __m256i *)(bp + 32));                                     \
            bp += 64;                                                                                        \
            ROW(0) ROW(1) ROW(2) ROW(3) ROW(4) ROW(5)                                                        \
        }                                                                                                    \
        __m256i c[IG_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};      \
        ig_epilogue(c, rows, i0, n, j0, e, b32, m32);                                                        \
    }

IG_TILE_U8(ig_tile, , IG_ROW)
/* Kind 4: the same tile with AVX-512 VNNI: vpdpbusd adds the four u8 x s8 products of a lane into int32
 * exactly, one instruction for vpmaddubsw + vpmaddwd + vpaddd (the same integers; the caller keeps kind 0's
 * 7-bit packing rule). Called only when lowbit.ops.backends chose avx512-vnni. */
IG_TILE_U8(ig_tile_vnni, __attribute__((target("avx2,fma,avx512f,avx512bw,avx512vl,avx512vnni"))), IG_ROW_VNNI)

static void ig_epilogue(__m256i c[IG_MR][2], int rows, long i0, long n, long j0, const ig_epi *e,
                        const int32_t *b32, const int32_t *m32) {
    int cols = n - j0 < IG_NR ? (int)(n - j0) : IG_NR;
    for (int r = 0; r < rows; ++r) {
        long i = i0 + r;
        if (cols == IG_NR && e->fast) {
            ig_store16_fast(c[r][0], c[r][1], e, b32, m32, i, j0);
        } else if (cols == IG_NR) {
            ig_store8_generic(c[r][0], e, i, j0);
            ig_store8_generic(c[r][1], e, i, j0 + 8);
        } else {
            int32_t t[IG_NR];
            _mm256_storeu_si256((__m256i *)t, c[r][0]);
            _mm256_storeu_si256((__m256i *)(t + 8), c[r][1]);
            for (int cc = 0; cc < cols; ++cc) {
                long j = j0 + cc;
                int64_t x = (int64_t)t[cc] + e->bias[j];
                x = x > INT32_MAX ? INT32_MAX : (x < INT32_MIN ? INT32_MIN : x);
                if (e->relu && x < 0) x = 0;
                int64_t y = (int64_t)(((uint64_t)(x * e->mult[j] + e->add[j])) >> e->shift[j]) - e->sub[j];
                if (e->mode == 0) {
                    y = y > 127 ? 127 : (y < -127 ? -127 : y);
                    ((int8_t *)e->out)[i * e->ldo + j] = (int8_t)(e->out_off ? (y ^ 0x80) : y);
                } else {
                    int32_t *o = (int32_t *)e->out + i * e->ldo + j;
                    int64_t s = y + *o;
                    *o = (int32_t)(s > INT32_MAX ? INT32_MAX : (s < INT32_MIN ? INT32_MIN : s));
                }
            }
        }
    }
}

/* kind 0: a uint8 (m, k) with row stride lda (k % 4 == 0), wp from lowbit_int_pack_w (7-bit weights); kind 4:
 * the same operands on the AVX-512 VNNI tile (only after the CPU check).
 * kind 2: a int8 codes (m, k) (k % 2 == 0), wp int16 from lowbit_int_pack_w16 (any int8 weights); each
 * thread widens its 48-row block of a to int16 once. n channels; per-channel int64 constants
 * bias/mult/add/shift/sub (see ig_epi) and int32 copies b32/m32 for the fast path (fast != 0 only when the
 * caller proved it exact: |acc + bias| < 2^31 and |y| < 2^31 before the clamp). */
void lowbit_int_gemm_rq(int kind, const void *a, long m, long k, long lda, const void *wp, long n,
                        const int64_t *bias, const int64_t *mult, const int64_t *add, const int64_t *shift,
                        const int64_t *sub, const int32_t *b32, const int32_t *m32, int relu, int mode, int out_off,
                        int fast, void *out, long ldo, int threads) {
    ig_epi e = {bias, mult, add, shift, sub, relu, mode, out_off, fast, out, ldo};
    long nblk = (m + IG_MB - 1) / IG_MB, npan = (n + IG_NR - 1) / IG_NR;
#pragma omp parallel num_threads(threads) if (threads > 1 && nblk > 1)
    {
        int16_t *a16 = kind == 2 ? (int16_t *)aligned_alloc(64, sizeof(int16_t) * IG_MB * k + 64) : NULL;
#pragma omp for schedule(dynamic, 1)
        for (long blk = 0; blk < nblk; ++blk) {
            long r0 = blk * IG_MB, r1 = r0 + IG_MB < m ? r0 + IG_MB : m;
            if (kind == 2) {
                for (long i = r0; i < r1; ++i) {
                    const int8_t *src = (const int8_t *)a + i * lda;
                    int16_t *dst = a16 + (i - r0) * k;
                    long kk = 0;
                    for (; kk + 16 <= k; kk += 16)
                        _mm256_storeu_si256((__m256i *)(dst + kk),
                                            _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(src + kk))));
                    for (; kk < k; ++kk) dst[kk] = src[kk];
                }
                for (long q = 0; q < npan; ++q)
                    for (long i = r0; i < r1; i += IG_MR)
                        ig_tile16(a16 + (i - r0) * k, k, i, r1 - i < IG_MR ? (int)(r1 - i) : IG_MR,
                                  (const int16_t *)wp + q * IG_NR * k, k, n, q * IG_NR, &e, b32, m32);
            } else {
                for (long q = 0; q < npan; ++q)
                    for (long i = r0; i < r1; i += IG_MR)
                        (kind == 4 ? ig_tile_vnni : ig_tile)((const uint8_t *)a, lda, i,
                                                            r1 - i < IG_MR ? (int)(r1 - i) : IG_MR,
                                                            (const int8_t *)wp + q * IG_NR * k, k, n, q * IG_NR,
                                                            &e, b32, m32);
            }
        }
        free(a16);
    }
}
