// Fused per-row absmax symmetric quantizers (AVX2): float32 rows -> int8 codes + float32 scale per row, and the
// same written straight into the u8 A-panel layout of the GEMM (quantize + pack in one pass).
//
// Definition (identical to lowbit/ops/reference.py quantize_rows):
//   scale = absmax / qmax, at least 2**-126 (never subnormal), 1 for an all-zero row;
//   code  = clamp(round_half_even(x / scale), -qmax, qmax)   (a true division, as torch computes x / scale).
// Both functions return the number of non-finite inputs; the caller raises when it is not zero.
// This file is compiled for AVX2 without FMA, so no multiply-add is contracted.
#pragma GCC target("avx2")
#include <float.h>
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"

#define LB_ROUND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

// How many entries of one row are NaN or +-Inf.
static long row_nonfinite(const float *x, int K) {
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX);
    long bad = 0;
    int k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k));
        bad += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(a, big, _CMP_NLE_UQ)));
    }
    for (; k < K; k++) {
        float a = x[k] < 0 ? -x[k] : x[k];
        if (!(a <= FLT_MAX)) bad++;
    }
    return bad;
}

// absmax of one row into *amax; returns how many entries are NaN or +-Inf (the loop only ORs a flag; the rare
// row that has any is counted again exactly).
static long row_absmax(const float *x, int K, float *amax) {
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX);
    __m256 m = _mm256_setzero_ps(), flag = _mm256_setzero_ps();
    int k = 0, tail_bad = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 a = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + k));
        flag = _mm256_or_ps(flag, _mm256_cmp_ps(a, big, _CMP_NLE_UQ));  // NaN or > FLT_MAX
        m = _mm256_max_ps(m, a);
    }
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float best = _mm_cvtss_f32(h);
    for (; k < K; k++) {
        float a = x[k] < 0 ? -x[k] : x[k];
        if (!(a <= FLT_MAX)) tail_bad = 1;
        best = a > best ? a : best;
    }
    *amax = best;
    return (_mm256_movemask_ps(flag) || tail_bad) ? row_nonfinite(x, K) : 0;
}

static float row_scale(float amax, int qmax) {
    if (amax == 0.0f) return 1.0f;
    float s = amax / (float)qmax;
    return s < FLT_MIN ? FLT_MIN : s;  // FLT_MIN = 2**-126, the smallest normal float
}

// codes clamp(round_half_even(x / scale), qlo, qhi) (+ off, as bytes) of one row; dst[k] for k < K.
// next: the row quantized after this one (or NULL), prefetched two lines per 32 values: the absmax pass of a row
// is memory-bound and the quantization pass compute-bound, so fetching the next row during this one overlaps them.
static void row_quant(const float *x, int K, float scale, int qlo, int qhi, int off, int8_t *dst,
                      const float *next) {
    const __m256 vs = _mm256_set1_ps(scale), hi = _mm256_set1_ps((float)qhi), lo = _mm256_set1_ps((float)qlo);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), voff = _mm256_set1_epi8((char)off);
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        if (next) {
            _mm_prefetch((const char *)(next + k), _MM_HINT_T0);
            _mm_prefetch((const char *)(next + k + 16), _MM_HINT_T0);
        }
        __m256i q[4];
        for (int j = 0; j < 4; j++) {
            __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + k + 8 * j), vs), LB_ROUND);
            q[j] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(v, lo), hi));
        }
        __m256i w = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        w = _mm256_add_epi8(_mm256_permutevar8x32_epi32(w, perm), voff);
        _mm256_storeu_si256((__m256i *)(dst + k), w);
    }
    for (; k < K; k++) {
        float v = _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(x[k] / scale), LB_ROUND));
        v = v > (float)qhi ? (float)qhi : (v < (float)qlo ? (float)qlo : v);
        dst[k] = (int8_t)(uint8_t)((int)v + off);
    }
}

long lowbit_quantize_rows(const float *x, long ldx, int M, int K, int qmax, int8_t *codes, float *scale,
                          int nthreads) {
    long bad = 0;
#pragma omp parallel for num_threads(nthreads) reduction(+ : bad) schedule(static) \
    if ((long)M * K > LOWBIT_PAR_BYTES)
    for (int i = 0; i < M; i++) {
        float amax;
        bad += row_absmax(x + (long)i * ldx, K, &amax);
        scale[i] = row_scale(amax, qmax);
        row_quant(x + (long)i * ldx, K, scale[i], -qmax, qmax, 0, codes + (long)i * K,
                  i + 1 < M ? x + (long)(i + 1) * ldx : NULL);
    }
    return bad;
}

_Static_assert(LOWBIT_MR == 6, "transpose_groups assumes 6-row panels");

// The u8 panel layout from MR = 6 rows of bytes (row r at rows + r * Kp): 4-byte k-groups interleaved by row,
// d[kb * 6 + r * 4 + i] = rows[r * Kp + kb + i]. Does 32 k (8 groups) at a time with a dword transpose (two
// rows of unpacks, then 16- and 8-byte stores per group); returns the k where the caller's scalar tail starts.
static int transpose_groups(const int8_t *rows, int Kp, uint8_t *d) {
    int kb = 0;
    for (; kb + 32 <= Kp; kb += 32) {
        __m256i r[6];
        for (int i = 0; i < 6; i++) r[i] = _mm256_loadu_si256((const __m256i *)(rows + (long)i * Kp + kb));
        // t01lo = per lane [r0 g0, r1 g0, r0 g1, r1 g1] (lane 1: groups 4, 5), t01hi: groups 2, 3 (6, 7)
        __m256i t01lo = _mm256_unpacklo_epi32(r[0], r[1]), t01hi = _mm256_unpackhi_epi32(r[0], r[1]);
        __m256i t23lo = _mm256_unpacklo_epi32(r[2], r[3]), t23hi = _mm256_unpackhi_epi32(r[2], r[3]);
        __m256i t45lo = _mm256_unpacklo_epi32(r[4], r[5]), t45hi = _mm256_unpackhi_epi32(r[4], r[5]);
        // rows 0-3 of groups (g, g + 4) in the two lanes; rows 4-5 of the same groups from t45
        __m256i u[4] = {_mm256_unpacklo_epi64(t01lo, t23lo), _mm256_unpackhi_epi64(t01lo, t23lo),
                        _mm256_unpacklo_epi64(t01hi, t23hi), _mm256_unpackhi_epi64(t01hi, t23hi)};
        __m256i v[4] = {t45lo, _mm256_unpackhi_epi64(t45lo, t45lo), t45hi, _mm256_unpackhi_epi64(t45hi, t45hi)};
        uint8_t *o = d + (long)kb * LOWBIT_MR;
        for (int g = 0; g < 4; g++) {
            _mm_storeu_si128((__m128i *)(o + g * 24), _mm256_castsi256_si128(u[g]));
            _mm_storel_epi64((__m128i *)(o + g * 24 + 16), _mm256_castsi256_si128(v[g]));
            _mm_storeu_si128((__m128i *)(o + (g + 4) * 24), _mm256_extracti128_si256(u[g], 1));
            _mm_storel_epi64((__m128i *)(o + (g + 4) * 24 + 16), _mm256_extracti128_si256(v[g], 1));
        }
    }
    return kb;
}

// Quantize rows r0 .. r0 + rows - 1 (rows <= MR) of x into one A panel of MR rows: u8 codes + off (esz 1,
// layout in gemm_pack.c; padding holds off) or int16 codes (esz 2, kind 2; padding 0). rowbuf holds
// MR * Kp + 32 bytes of scratch. q->sstat == 0: per-row absmax scales into [-qmax, qmax]; q->sstat > 0: that
// one static scale for every row, codes clamped to [q->qlo, qmax] (lowbit.ptq's static quantizer). Writes
// scale[r0 ..]; returns the number of non-finite inputs. Shared by the quant-pack entry points below and the
// fused quantize + GEMM (gemm_kernels.c), so both give the same codes.
long lowbit_quant_panel(const float *x, long ldx, int r0, int rows, int K, const lb_actq *q, int off, int esz,
                        int8_t *rowbuf, void *dst, float *scale) {
    const int qmax = q->qmax;
    const int kg = esz == 1 ? 4 : 2, Kp = LOWBIT_ROUND_UP(K, kg);
    long bad = 0;
    memset(rowbuf, esz == 1 ? off : 0, (size_t)LOWBIT_MR * Kp);  // padding k and rows hold the zero code
    for (int r = 0; r < rows; r++) {
        int i = r0 + r;
        // the next row, also across the panel's end when the panel is full (a prefetch past x's end cannot fault)
        const float *next = r + 1 < rows || rows == LOWBIT_MR ? x + (long)(i + 1) * ldx : NULL;
        if (q->sstat > 0.0f) {
            bad += row_nonfinite(x + (long)i * ldx, K);
            scale[i] = q->sstat;
            row_quant(x + (long)i * ldx, K, q->sstat, q->qlo, qmax, esz == 1 ? off : 0, rowbuf + (long)r * Kp,
                      next);
            continue;
        }
        float amax;
        bad += row_absmax(x + (long)i * ldx, K, &amax);
        scale[i] = row_scale(amax, qmax);
        row_quant(x + (long)i * ldx, K, scale[i], -qmax, qmax, esz == 1 ? off : 0, rowbuf + (long)r * Kp, next);
    }
    if (esz == 1) {
        uint8_t *d = dst;
        int kb = transpose_groups(rowbuf, Kp, d);
        for (; kb < Kp; kb += 4)
            for (int r = 0; r < LOWBIT_MR; r++) memcpy(d + (long)kb * LOWBIT_MR + r * 4, rowbuf + (long)r * Kp + kb, 4);
    } else {
        int16_t *d = dst;
        for (int kb = 0; kb < Kp; kb += 2)
            for (int r = 0; r < LOWBIT_MR; r++) {
                d[(long)kb * LOWBIT_MR + r * 2] = rowbuf[(long)r * Kp + kb];
                d[(long)kb * LOWBIT_MR + r * 2 + 1] = rowbuf[(long)r * Kp + kb + 1];
            }
    }
    return bad;
}

// Quantize M rows straight into the A panels of the GEMM (esz 1: u8 codes + off; esz 2: int16, kind 2) plus
// scale (M,). Returns the number of non-finite inputs, or -1 when a row buffer cannot be allocated.
static long quant_pack(const float *x, long ldx, int M, int K, const lb_actq *q, int off, int esz, void *dst,
                       float *scale, int nthreads) {
    const int Kp = LOWBIT_ROUND_UP(K, esz == 1 ? 4 : 2), npan = LOWBIT_CEIL_DIV(M, LOWBIT_MR);
    long bad = 0;
    int failed = 0;
#pragma omp parallel num_threads(nthreads) reduction(+ : bad) reduction(| : failed) \
    if ((long)M * K > LOWBIT_PAR_BYTES)
    {
        int8_t *rows = malloc((size_t)LOWBIT_MR * Kp + 32);
        if (!rows) failed = 1;
#pragma omp for schedule(static)
        for (int p = 0; p < npan; p++) {
            if (!rows) continue;
            int r0 = p * LOWBIT_MR, n = M - r0 < LOWBIT_MR ? M - r0 : LOWBIT_MR;
            bad += lowbit_quant_panel(x, ldx, r0, n, K, q, off, esz, rows,
                                      (char *)dst + (long)p * LOWBIT_MR * Kp * esz, scale);
        }
        free(rows);
    }
    return failed ? -1 : bad;
}

// qlo, sstat: see lowbit_quant_panel (sstat 0 = per-row scales, qlo unused).
long lowbit_quant_pack_u8(const float *x, long ldx, int M, int K, int qmax, int qlo, float sstat, int off,
                          uint8_t *dst, float *scale, int nthreads) {
    const lb_actq q = {qmax, qlo, sstat};
    return quant_pack(x, ldx, M, K, &q, off, 1, dst, scale, nthreads);
}

long lowbit_quant_pack_s16(const float *x, long ldx, int M, int K, int qmax, int qlo, float sstat, int16_t *dst,
                           float *scale, int nthreads) {
    const lb_actq q = {qmax, qlo, sstat};
    return quant_pack(x, ldx, M, K, &q, 0, 2, dst, scale, nthreads);
}
