/* Row kernels of lowbit.integer's graph: integer LayerNorms (L1 / standard with Newton isqrt) and attention
 * weights (poly / i-exp) with row normalisation. Bit-identical to lowbit.integer.kernels (the reference). */
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#include "int_common.h"

/* Exact floor division by a fixed positive divisor through a 64-bit reciprocal (no divide instruction per
 * element): the estimate floor(|n| * floor((2^64 - 1) / d) / 2^64) is at most 2 below floor(|n| / d). */
typedef struct {
    uint64_t d, inv;
} lb_div;
static inline lb_div lb_div_make(int64_t d) { /* d > 0 */
    lb_div r = {(uint64_t)d, UINT64_MAX / (uint64_t)d};
    return r;
}
static inline int64_t lb_div_floor(int64_t n, lb_div v) { /* branch-free: signs and corrections are data */
    uint64_t neg = (uint64_t)(n >> 63);
    uint64_t a = ((uint64_t)n ^ neg) - neg;
    uint64_t q = (uint64_t)(((__uint128_t)a * v.inv) >> 64);
    uint64_t r = a - q * v.d;
    uint64_t c = r >= v.d;
    q += c, r -= v.d & (0 - c);
    c = r >= v.d;
    q += c, r -= v.d & (0 - c);
    return (int64_t)((q ^ neg) - neg) - (int64_t)(neg & (uint64_t)(r != 0));
}
/* lb_round_div(num, den) with rd = lb_div_make(2 * den) */
static inline int64_t lb_round_div_r(int64_t num, int64_t den, lb_div rd) { return lb_div_floor(2 * num + den, rd); }

static int64_t lb_isqrt(int64_t n) {
    if (n <= 0) return 0;
    int64_t x = 3037000500LL;
    for (;;) {
        int64_t nxt = (x + n / x) >> 1;
        if (nxt >= x) return x;
        x = nxt;
    }
}


/* 8 outputs j..j+7 of a norm row: clamp(floor(N / D2), +-127) with N = 2 (cx eg + beta den) + dsh, D2 = 2 dsh,
 * by an 8-step restoring division on u = N + 127 D2 (u < 0: -127). The caller checked |cx|, |eg| < 2^31,
 * den < 2^31 and the bit budget that keeps every intermediate below 2^63. */
static inline __m128i lb_norm8(const int64_t *cx, const int32_t *eg, const int32_t *beta, int64_t den, int64_t dsh) {
    const __m256i d2 = _mm256_set1_epi64x(2 * dsh), dn = _mm256_set1_epi64x(den);
    const __m256i base = _mm256_set1_epi64x(dsh + 127 * 2 * dsh);
    __m256i y[2];
    for (int h = 0; h < 2; ++h) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(cx + 4 * h));
        __m256i g = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(eg + 4 * h)));
        __m256i b = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(beta + 4 * h)));
        __m256i num = _mm256_add_epi64(_mm256_mul_epi32(c, g), _mm256_mul_epi32(b, dn));
        __m256i u = _mm256_add_epi64(_mm256_add_epi64(num, num), base);
        __m256i q = _mm256_setzero_si256();
        for (int bit = 7; bit >= 0; --bit) {
            __m256i t = _mm256_slli_epi64(d2, bit);
            __m256i ge = _mm256_xor_si256(_mm256_cmpgt_epi64(t, u), _mm256_set1_epi64x(-1));
            u = _mm256_sub_epi64(u, _mm256_and_si256(t, ge));
            q = _mm256_or_si256(q, _mm256_and_si256(_mm256_set1_epi64x(1 << bit), ge));
        }
        y[h] = q;
    }
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    __m128i a = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y[0], idx));
    __m128i b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(y[1], idx));
    __m128i q16 = _mm_min_epi16(_mm_packs_epi32(a, b), _mm_set1_epi16(254)); /* 0 .. 254 */
    return _mm_sub_epi16(q16, _mm_set1_epi16(127));                           /* -127 .. 127 */
}

/* kind 0: L1 norm, 1: standard. x int32 (M, C); gamma/beta int32 (C,); out int8 (M, C) (out_off 128: uint8
 * code + 128). Rows whose magnitudes fit the vector path's bounds take it (8 outputs per step); the others run
 * the scalar path. Both compute round_div(cx * extra * gamma + beta * den, den << gamma_shift) exactly. */
void lowbit_int_norm(const int32_t *x, long m, long c, int kind, int pre_shift, int64_t eps, const int32_t *gamma,
                     int gamma_shift, const int32_t *beta, int8_t *out, int out_off, int threads) {
    const int64_t extra_all = kind == 0 ? c : 1;
    int32_t *eg = (int32_t *)malloc(sizeof(int32_t) * (c + 8));
    uint64_t eg_max = 0, beta_max = 0;
    int eg_ok = 1;
    for (long j = 0; j < c; ++j) {
        int64_t g = extra_all * gamma[j];
        uint64_t ag = g < 0 ? -(uint64_t)g : (uint64_t)g, ab = beta[j] < 0 ? -(int64_t)beta[j] : beta[j];
        if (ag >= ((uint64_t)1 << 31)) eg_ok = 0;
        eg[j] = (int32_t)g;
        eg_max = ag > eg_max ? ag : eg_max;
        beta_max = ab > beta_max ? ab : beta_max;
    }
    const int eg_bits = lb_bits(eg_max), beta_bits = lb_bits(beta_max);
#pragma omp parallel num_threads(threads)
    {
        int64_t *cx = (int64_t *)malloc(sizeof(int64_t) * c);
#pragma omp for schedule(dynamic, 16)
        for (long i = 0; i < m; ++i) {
            const int32_t *xr = x + i * c;
            int64_t sum = 0;
            for (long j = 0; j < c; ++j) sum += xr[j];
            int64_t half = pre_shift ? ((int64_t)1 << (pre_shift - 1)) : 0;
            int64_t stat = 0;
            uint64_t cmax = 0;
            long j0 = 0;
            if (kind == 0 && c < (1L << 30)) { /* |x C - sum| < 2^62: the offset makes the shift arithmetic */
                const __m256i cc = _mm256_set1_epi64x(c), sh = _mm256_set1_epi64x(sum - half - ((int64_t)1 << 62));
                const __m256i sub = _mm256_set1_epi64x(((int64_t)1 << 62) >> pre_shift);
                const __m128i ps = _mm_cvtsi32_si128(pre_shift);
                __m256i st = _mm256_setzero_si256(), mx = st;
                for (; j0 + 4 <= c; j0 += 4) {
                    __m256i xv = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(xr + j0)));
                    __m256i v = _mm256_sub_epi64(_mm256_srl_epi64(_mm256_sub_epi64(_mm256_mul_epi32(xv, cc), sh), ps),
                                                 sub);
                    _mm256_storeu_si256((__m256i *)(cx + j0), v);
                    __m256i sg = _mm256_cmpgt_epi64(_mm256_setzero_si256(), v);
                    __m256i av = _mm256_sub_epi64(_mm256_xor_si256(v, sg), sg);
                    st = _mm256_add_epi64(st, av);
                    mx = _mm256_or_si256(mx, av);
                }
                int64_t a4[4], m4[4];
                _mm256_storeu_si256((__m256i *)a4, st);
                _mm256_storeu_si256((__m256i *)m4, mx);
                stat = a4[0] + a4[1] + a4[2] + a4[3];
                cmax = (uint64_t)(m4[0] | m4[1] | m4[2] | m4[3]);
            }
            for (long j = j0; j < c; ++j) {
                int64_t v = ((int64_t)xr[j] * c - sum + half) >> pre_shift;
                uint64_t av = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
                cx[j] = v;
                cmax |= av;
                stat += kind == 0 ? (int64_t)av : v * v;
            }
            int64_t den, extra;
            if (kind == 0) {
                den = stat + eps;
                extra = c;
            } else {
                den = lb_isqrt(lb_floordiv(stat, c) + eps);
                if (den < 1) den = 1;
                extra = 1;
            }
            int64_t dsh = den << gamma_shift;
            int8_t *o = out + i * c;
            long j = 0;
            int cbits = lb_bits(cmax), dbits = lb_bits((uint64_t)den);
            if (eg_ok && cbits <= 31 && dbits <= 31 && cbits + eg_bits <= 58 && dbits + beta_bits <= 58 &&
                dbits + gamma_shift <= 53) {
                const __m128i flip = _mm_set1_epi8(out_off ? (char)0x80 : 0);
                for (; j + 8 <= c; j += 8) {
                    __m128i q16 = lb_norm8(cx + j, eg + j, beta + j, den, dsh);
                    _mm_storel_epi64((__m128i *)(o + j), _mm_xor_si128(_mm_packs_epi16(q16, q16), flip));
                }
            }
            lb_div rd = lb_div_make(2 * dsh);
            for (; j < c; ++j) {
                int64_t y = lb_round_div_r(cx[j] * extra * gamma[j] + (int64_t)beta[j] * den, dsh, rd);
                o[j] = (int8_t)((y > 127 ? 127 : (y < -127 ? -127 : y)) ^ (out_off ? 0x80 : 0));
            }
        }
        free(cx);
    }
    free(eg);
}

/* Weights of one row: scores s (t entries, of which the first `valid` may attend, and where km != 0), into
 * codes (t) and the returned row multiplier. w is scratch (t int64). */
static int64_t lb_attn_row(const int32_t *s, long t, long valid, const uint8_t *km, int kind, int64_t bias,
                           int64_t delta, int64_t ln2, int64_t eb, int64_t ec, int max_shift, int frac_bits,
                           int64_t row_const, int64_t *w, int8_t *o) {
    int64_t wmax = 0, wsum = 0;
    if (kind == 0) {
        for (long j = 0; j < t; ++j) {
            int64_t v = 0;
            if (j < valid && (!km || km[j])) {
                int64_t u = (int64_t)s[j] + bias;
                if (u < 0) u = 0;
                v = u * u + delta;
            }
            w[j] = v;
        }
    } else {
        int64_t smax = INT32_MIN;
        for (long j = 0; j < t; ++j)
            if (j < valid && (!km || km[j]) && s[j] > smax) smax = s[j];
        lb_div rl = lb_div_make(ln2);
        for (long j = 0; j < t; ++j) {
            int64_t v = 0;
            if (j < valid && (!km || km[j])) {
                int64_t q = (int64_t)s[j] - smax;
                int64_t z = lb_div_floor(-q, rl);
                if (z > max_shift) z = max_shift;
                int64_t p = q + z * ln2;
                if (p < -ln2) p = -ln2;
                v = ((p + eb) * (p + eb) + ec) >> z;
            }
            w[j] = v;
        }
    }
    for (long j = 0; j < t; ++j) {
        if (w[j] > wmax) wmax = w[j];
        wsum += w[j];
    }
    if (wmax < 1) wmax = 1;
    if (wsum < 1) wsum = 1;
    lb_div rd = lb_div_make(2 * wmax);
    for (long j = 0; j < t; ++j) o[j] = w[j] ? (int8_t)lb_round_div_r(w[j] * 127, wmax, rd) : 0;
    return lb_round_div(wmax << frac_bits, wsum) * row_const;
}

/* lb_attn_row for other translation units (int_attn.c runs it on rows its vector path does not take). */
int64_t lowbit_int_attn_row(const int32_t *s, long t, long valid, const uint8_t *km, int kind, int64_t bias,
                            int64_t delta, int64_t ln2, int64_t eb, int64_t ec, int max_shift, int frac_bits,
                            int64_t row_const, int64_t *w, int8_t *o) {
    return lb_attn_row(s, t, valid, km, kind, bias, delta, ln2, eb, ec, max_shift, frac_bits, row_const, w, o);
}

/* Attention weights of R = rows_per_head * n_rowsets rows of length t (scores int32 (R, t)); row r attends to
 * columns < (causal ? (r % t) + 1 : t) and where keymask (per batch, t entries, or NULL) is nonzero.
 * kind 0 poly: w = relu(s + bias[head])^2 + delta; kind 1 softmax: i-exp(s - rowmax).
 * Outputs codes int8 (R, t) = round(127 w / max w) and rowmult int64 (R) = round(2^frac max / sum) * row_const. */
void lowbit_int_attn_rows(const int32_t *scores, long r_total, long t, long rows_per_head, long n_head, int causal,
                          const uint8_t *keymask, int kind, const int64_t *bias, int64_t delta, int64_t ln2,
                          int64_t eb, int64_t ec, int max_shift, int frac_bits, int64_t row_const, int8_t *codes,
                          int64_t *rowmult, int threads) {
#pragma omp parallel num_threads(threads)
    {
        int64_t *w = (int64_t *)malloc(sizeof(int64_t) * t);
#pragma omp for schedule(static)
        for (long r = 0; r < r_total; ++r) {
            long set = r / rows_per_head; /* (batch, head) index */
            long b = set / n_head, h = set % n_head;
            long valid = causal ? (r % rows_per_head) + 1 : t;
            rowmult[r] = lb_attn_row(scores + r * t, t, valid, keymask ? keymask + b * t : NULL, kind,
                                     kind == 0 ? bias[h] : 0, delta, ln2, eb, ec, max_shift, frac_bits, row_const,
                                     w, codes + r * t);
        }
        free(w);
    }
}

/* Fused integer attention: q, k, v int8 (B, T, C) with row stride ld (e.g. slices of one (B, T, 3C) QKV
 * output), C = n_head * hd; y int8 (B, T, C) with row stride ldy (out_off 128: stored as uint8 code + 128).
 * Per (batch, head, row): int32 scores, row weights as lowbit_int_attn_rows, int32 P.V, per-row dyadic
 * rescale (rowmult, 2^-row_shift, round half up, clamp +-127). Identical integers to the unfused path. */
void lowbit_int_attention(const int8_t *q, const int8_t *k, const int8_t *v, long ld, long bsz, long t, long c,
                          long n_head, int causal, const uint8_t *keymask, int kind, const int64_t *bias,
                          int64_t delta, int64_t ln2, int64_t eb, int64_t ec, int max_shift, int frac_bits,
                          int64_t row_const, int row_shift, int8_t *y, long ldy, int out_off, int threads) {
    long hd = c / n_head;
#pragma omp parallel num_threads(threads)
    {
        int64_t *w = (int64_t *)malloc(sizeof(int64_t) * t);
        int32_t *s = (int32_t *)malloc(sizeof(int32_t) * t);
        int8_t *codes = (int8_t *)malloc(t);
        int32_t *acc = (int32_t *)malloc(sizeof(int32_t) * hd);
#pragma omp for schedule(dynamic, 1)
        for (long bh = 0; bh < bsz * n_head; ++bh) {
            long b = bh / n_head, h = bh % n_head;
            const uint8_t *km = keymask ? keymask + b * t : NULL;
            for (long i = 0; i < t; ++i) {
                const int8_t *qi = q + (b * t + i) * ld + h * hd;
                long valid = causal ? i + 1 : t;
                for (long j = 0; j < valid; ++j) {
                    const int8_t *kj = k + (b * t + j) * ld + h * hd;
                    int32_t d32 = 0;
                    for (long d = 0; d < hd; ++d) d32 += (int16_t)qi[d] * (int16_t)kj[d];
                    s[j] = d32;
                }
                for (long j = valid; j < t; ++j) s[j] = 0;
                int64_t rm = lb_attn_row(s, t, valid, km, kind, kind == 0 ? bias[h] : 0, delta, ln2, eb, ec,
                                         max_shift, frac_bits, row_const, w, codes);
                for (long d = 0; d < hd; ++d) acc[d] = 0;
                for (long j = 0; j < valid; ++j) {
                    int32_t cj = codes[j];
                    if (!cj) continue;
                    const int8_t *vj = v + (b * t + j) * ld + h * hd;
                    for (long d = 0; d < hd; ++d) acc[d] += cj * (int32_t)vj[d];
                }
                int8_t *yi = y + (b * t + i) * ldy + h * hd;
                int64_t half = row_shift > 0 ? ((int64_t)1 << (row_shift - 1)) : 0;
                for (long d = 0; d < hd; ++d) {
                    int64_t r = ((int64_t)acc[d] * rm + half) >> row_shift;
                    yi[d] = (int8_t)((r > 127 ? 127 : (r < -127 ? -127 : r)) ^ (out_off ? 0x80 : 0));
                }
            }
        }
        free(w);
        free(s);
        free(codes);
        free(acc);
    }
}
