// Fused rounding of float32 to a minifloat grid (FP8 E4M3 / E5M2, any sign + ExMy with 0..10 mantissa bits),
// returned as the float32 values of the codes; and a table decode of int8 / packed int4 / float8 weight codes
// times their scales to float32 (the PTQ layers' per-call weight decode).
//
//   out[i, j] = value of round_half_even(clamp(x[i, j] / s, -maxval, maxval)) on the grid whose normal numbers
//               have man_bits mantissa bits down to min_normal, with subnormal step min_normal * 2^-man_bits
//   (s = scale[i] per row, or scale[0] for every row)
// which is what quantize(x, fmt, scale=s).codes.float() computes (for FP8: (x / s).clamp(-max, max) cast to the
// float8 dtype and back) in six passes; lowbit.ptq's FP8 layers feed it straight to the float32 GEMM. The
// division is a true division, as torch computes x / s. Returns the number of non-finite inputs (the caller
// raises; their outputs are meaningless).
#pragma GCC target("avx2")
#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gemm.h"

typedef struct {
    int drop;          // 23 - man_bits: float32 mantissa bits dropped in the normal range
    float min_normal;  // 2^emin
    float magic;       // 2^23 * subnormal step: (a + magic) - magic rounds a >= 0 to that step, ties to even
    float maxval;      // the format's largest finite value
} lb_fpgrid;

static inline float round_one(float v, const lb_fpgrid *g) {
    v = v > g->maxval ? g->maxval : (v < -g->maxval ? -g->maxval : v);
    float a = fabsf(v);
    if (a < g->min_normal) {
        volatile float t = a + g->magic;  // volatile: keep the two roundings
        return copysignf(t - g->magic, v);
    }
    uint32_t b;
    memcpy(&b, &v, 4);
    b = (b + ((1u << (g->drop - 1)) - 1) + ((b >> g->drop) & 1)) & ~((1u << g->drop) - 1);
    memcpy(&v, &b, 4);
    return v;
}

// One row of n values with step s; returns 1 if any input is NaN or +-Inf (the caller recounts that row).
static int round_row(const float *x, long n, float s, const lb_fpgrid *g, float *out) {
    const __m256 vs = _mm256_set1_ps(s), hi = _mm256_set1_ps(g->maxval), lo = _mm256_set1_ps(-g->maxval);
    const __m256 sign = _mm256_set1_ps(-0.0f), big = _mm256_set1_ps(FLT_MAX);
    const __m256 mn = _mm256_set1_ps(g->min_normal), magic = _mm256_set1_ps(g->magic);
    const __m256i low = _mm256_set1_epi32((int)((1u << g->drop) - 1)), one = _mm256_set1_epi32(1);
    const __m256i half = _mm256_set1_epi32((int)((1u << (g->drop - 1)) - 1));
    const __m128i cnt = _mm_cvtsi32_si128(g->drop);
    __m256 flag = _mm256_setzero_ps();
    long j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 xv = _mm256_loadu_ps(x + j);
        flag = _mm256_or_ps(flag, _mm256_cmp_ps(_mm256_andnot_ps(sign, xv), big, _CMP_NLE_UQ));
        __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(xv, vs), lo), hi);
        __m256 a = _mm256_andnot_ps(sign, v);
        __m256 sub = _mm256_or_ps(_mm256_sub_ps(_mm256_add_ps(a, magic), magic), _mm256_and_ps(v, sign));
        __m256i b = _mm256_castps_si256(v);
        __m256i r = _mm256_add_epi32(half, _mm256_and_si256(_mm256_srl_epi32(b, cnt), one));
        __m256 norm = _mm256_castsi256_ps(_mm256_andnot_si256(low, _mm256_add_epi32(b, r)));
        _mm256_storeu_ps(out + j, _mm256_blendv_ps(norm, sub, _mm256_cmp_ps(a, mn, _CMP_LT_OQ)));
    }
    int bad = _mm256_movemask_ps(flag) != 0;
    for (; j < n; j++) {
        bad |= !(fabsf(x[j]) <= FLT_MAX);
        out[j] = round_one(x[j] / s, g);
    }
    return bad;
}

// x (m rows of k, row stride ldx) -> out (m x k, contiguous); scale: m values when per_row, else one.
long lowbit_fp_round(const float *x, long m, long k, long ldx, const float *scale, int per_row, int man_bits,
                     float min_normal, float maxval, float *out, int nthreads) {
    const lb_fpgrid g = {23 - man_bits, min_normal, min_normal * ldexpf(1.0f, 23 - man_bits), maxval};
    long bad = 0;
#pragma omp parallel for num_threads(nthreads) reduction(+ : bad) schedule(static) if (m * k > LOWBIT_PAR_BYTES)
    for (long i = 0; i < m; i++) {
        const float *xi = x + i * ldx;
        if (round_row(xi, k, per_row ? scale[i] : scale[0], &g, out + i * k))
            for (long j = 0; j < k; j++) bad += !(fabsf(xi[j]) <= FLT_MAX);
    }
    return bad;
}

// out[j, c] = lut[code(j, c)] * scale[s(j, c)] for an (n, k) weight: codes one per byte (nib 0, 256-entry lut,
// row stride k) or two per byte (nib 1, low nibble first, 16-entry lut, row stride k / 2); the scale of row j
// and column c is scale[0] (groups 0), else scale[j * groups + c / (k / groups)] (groups 1: per row). One
// float32 multiplication per value, as torch's codes.float() * scale.
void lowbit_decode_scaled(const uint8_t *codes, long n, long k, int nib, const float *lut, const float *scale,
                          long groups, float *out, int nthreads) {
    const long gsize = groups > 0 ? k / groups : k;
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n * k > LOWBIT_PAR_BYTES)
    for (long j = 0; j < n; j++) {
        float *o = out + j * k;
        for (long g = 0; g < (groups > 0 ? groups : 1); g++) {
            const float s = groups > 0 ? scale[j * groups + g] : scale[0];
            const long c0 = g * gsize, c1 = c0 + gsize;
            if (nib) {
                const uint8_t *row = codes + j * (k / 2);
                for (long c = c0; c < c1; c += 2) {
                    const uint8_t b = row[c / 2];
                    o[c] = lut[b & 15] * s;
                    o[c + 1] = lut[b >> 4] * s;
                }
            } else {
                const uint8_t *row = codes + j * k;
                for (long c = c0; c < c1; c++) o[c] = lut[row[c]] * s;
            }
        }
    }
}
