/* Row kernels of lowbit.integer's graph: integer LayerNorms (L1 / standard with Newton isqrt) and attention
 * weights (poly / i-exp) with row normalisation. Bit-identical to lowbit.integer.kernels (the reference). */
#pragma GCC target("avx2,fma")
#include <stdint.h>
#include <stdlib.h>

static inline int64_t lb_floordiv(int64_t a, int64_t b) { /* b > 0 */
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}
static inline int64_t lb_round_div(int64_t num, int64_t den) { return lb_floordiv(2 * num + den, 2 * den); }

static int64_t lb_isqrt(int64_t n) {
    if (n <= 0) return 0;
    int64_t x = 3037000500LL;
    for (;;) {
        int64_t nxt = (x + n / x) >> 1;
        if (nxt >= x) return x;
        x = nxt;
    }
}

/* kind 0: L1 norm, 1: standard. x int32 (M, C); gamma/beta int32 (C,); out int8 (M, C). */
void lowbit_int_norm(const int32_t *x, long m, long c, int kind, int pre_shift, int64_t eps, const int32_t *gamma,
                     int gamma_shift, const int32_t *beta, int8_t *out, int threads) {
#pragma omp parallel num_threads(threads)
    {
        int64_t *cx = (int64_t *)malloc(sizeof(int64_t) * c);
#pragma omp for schedule(static)
        for (long i = 0; i < m; ++i) {
            const int32_t *xr = x + i * c;
            int64_t sum = 0;
            for (long j = 0; j < c; ++j) sum += xr[j];
            int64_t half = pre_shift ? ((int64_t)1 << (pre_shift - 1)) : 0;
            int64_t stat = 0;
            for (long j = 0; j < c; ++j) {
                int64_t v = ((int64_t)xr[j] * c - sum + half) >> pre_shift;
                cx[j] = v;
                stat += kind == 0 ? (v < 0 ? -v : v) : v * v;
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
            for (long j = 0; j < c; ++j) {
                int64_t y = lb_round_div(cx[j] * extra * gamma[j] + (int64_t)beta[j] * den, dsh);
                o[j] = (int8_t)(y > 127 ? 127 : (y < -127 ? -127 : y));
            }
        }
        free(cx);
    }
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
        for (long j = 0; j < t; ++j) {
            int64_t v = 0;
            if (j < valid && (!km || km[j])) {
                int64_t q = (int64_t)s[j] - smax;
                int64_t z = lb_floordiv(-q, ln2);
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
    for (long j = 0; j < t; ++j) o[j] = (int8_t)lb_round_div(w[j] * 127, wmax);
    return lb_round_div(wmax << frac_bits, wsum) * row_const;
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

/* Fused integer attention: q, k, v int8 (B, T, C) contiguous, C = n_head * hd; y int8 (B, T, C).
 * Per (batch, head, row): int32 scores, row weights as lowbit_int_attn_rows, int32 P.V, per-row dyadic
 * rescale (rowmult, 2^-row_shift, round half up, clamp +-127). Identical integers to the unfused path. */
void lowbit_int_attention(const int8_t *q, const int8_t *k, const int8_t *v, long bsz, long t, long c, long n_head,
                          int causal, const uint8_t *keymask, int kind, const int64_t *bias, int64_t delta,
                          int64_t ln2, int64_t eb, int64_t ec, int max_shift, int frac_bits, int64_t row_const,
                          int row_shift, int8_t *y, int threads) {
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
                const int8_t *qi = q + (b * t + i) * c + h * hd;
                long valid = causal ? i + 1 : t;
                for (long j = 0; j < valid; ++j) {
                    const int8_t *kj = k + (b * t + j) * c + h * hd;
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
                    const int8_t *vj = v + (b * t + j) * c + h * hd;
                    for (long d = 0; d < hd; ++d) acc[d] += cj * (int32_t)vj[d];
                }
                int8_t *yi = y + (b * t + i) * c + h * hd;
                int64_t half = row_shift > 0 ? ((int64_t)1 << (row_shift - 1)) : 0;
                for (long d = 0; d < hd; ++d) {
                    int64_t r = ((int64_t)acc[d] * rm + half) >> row_shift;
                    yi[d] = (int8_t)(r > 127 ? 127 : (r < -127 ? -127 : r));
                }
            }
        }
        free(w);
        free(s);
        free(codes);
        free(acc);
    }
}
