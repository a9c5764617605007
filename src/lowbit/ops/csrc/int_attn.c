/* Blocked integer attention for lowbit.integer (head dim a multiple of 16): the same integers as
 * lowbit_int_attention (int_rows.c) and the PyTorch reference (scores -> row weights -> P.V -> row rescale).
 *
 * Per (batch, head), 6 query rows at a time:
 *   scores  int32 6 x 16 tiles by vpmaddwd on int16 q / k (exact for any int8 codes);
 *   weights poly relu(s + b)^2 + delta or i-exp in int64 lanes, codes = round(127 w / max w) by a 7-step
 *           restoring division (rows whose magnitudes exceed the vector bounds run the scalar row function);
 *   P.V     uint8 codes (<= 127) x int8 v by vpmaddubsw (127 * 128 * 2 < 2^15: exact), 6 x 16 tiles;
 *   rescale y = clamp(round_half_up(acc * rowmult / 2^row_shift), +-127), optionally stored as code + 128.
 * Causal rows only visit the key panels at or below their diagonal. */
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "int_common.h"
#define IA_MR 6



/* Row codes and multiplier from weights w[0 .. valid) (w >= 0, masked entries 0), wmax/wsum their max and sum:
 * codes = floor((254 w + wmax) / (2 wmax)) in [0, 127] by a 7-step restoring division; 0 when wmax > 2^52. */
static int ia_codes(const int64_t *w, long t, long valid, int64_t wmax, int64_t wsum, int frac_bits,
                    int64_t row_const, uint8_t *o, int64_t *rm) {
    if (wmax < 1) wmax = 1;
    if (wsum < 1) wsum = 1;
    if (lb_bits((uint64_t)wmax) > 52) return 0; /* 254 w + wmax and 2 wmax << 6 must stay below 2^63 */
    const __m256i d2 = _mm256_set1_epi64x(2 * wmax), wm = _mm256_set1_epi64x(wmax), zero = _mm256_setzero_si256();
    const __m256i idx = _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    long j = 0;
    for (; j + 8 <= valid; j += 8) {
        __m256i q[2];
        for (int h = 0; h < 2; ++h) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(w + j + 4 * h));
            __m256i u = _mm256_add_epi64(_mm256_sub_epi64(_mm256_slli_epi64(x, 8), _mm256_add_epi64(x, x)), wm);
            __m256i c = zero;
            for (int bit = 6; bit >= 0; --bit) {
                __m256i tt = _mm256_slli_epi64(d2, bit);
                __m256i ge = _mm256_xor_si256(_mm256_cmpgt_epi64(tt, u), _mm256_set1_epi64x(-1));
                u = _mm256_sub_epi64(u, _mm256_and_si256(tt, ge));
                c = _mm256_or_si256(c, _mm256_and_si256(_mm256_set1_epi64x(1 << bit), ge));
            }
            q[h] = c;
        }
        __m128i a = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(q[0], idx));
        __m128i b = _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(q[1], idx));
        __m128i q16 = _mm_packs_epi32(a, b);
        _mm_storel_epi64((__m128i *)(o + j), _mm_packus_epi16(q16, q16));
    }
    for (; j < valid; ++j) o[j] = (uint8_t)lb_floordiv(254 * w[j] + wmax, 2 * wmax);
    for (; j < t; ++j) o[j] = 0;
    *rm = lb_floordiv(2 * (wmax << frac_bits) + wsum, 2 * wsum) * row_const;
    return 1;
}

static inline void ia_reduce(__m256i vmax, __m256i vsum, int64_t *wmax, int64_t *wsum) {
    int64_t mx[4], sm[4];
    _mm256_storeu_si256((__m256i *)mx, vmax);
    _mm256_storeu_si256((__m256i *)sm, vsum);
    *wmax = mx[0], *wsum = sm[0] + sm[1] + sm[2] + sm[3];
    for (int l = 1; l < 4; ++l) *wmax = mx[l] > *wmax ? mx[l] : *wmax;
}

/* Poly row weights, vectorised: returns 0 when the row needs the scalar path (|bias| or w out of bounds). */
static int ia_poly_row(const int32_t *s, long t, long valid, const uint8_t *km, int64_t bias, int64_t delta,
                       int frac_bits, int64_t row_const, int64_t *w, uint8_t *o, int64_t *rm) {
    if (bias > (1 << 30) || bias < -(1 << 30) || delta < 0 || delta > ((int64_t)1 << 40)) return 0;
    const __m256i b4 = _mm256_set1_epi64x(bias), d4 = _mm256_set1_epi64x(delta), zero = _mm256_setzero_si256();
    __m256i vmax = zero, vsum = zero;
    long j = 0;
    for (; j + 4 <= valid; j += 4) {
        __m256i u = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(s + j))), b4);
        u = _mm256_and_si256(u, _mm256_cmpgt_epi64(u, zero)); /* relu; |u| < 2^31 + 2^30 */
        __m256i x = _mm256_add_epi64(_mm256_mul_epu32(u, u), d4); /* u < 2^32: mul_epu32 is exact */
        if (km) {
            __m256i m = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(*(const int32_t *)(km + j)));
            x = _mm256_andnot_si256(_mm256_cmpeq_epi64(m, zero), x);
        }
        _mm256_storeu_si256((__m256i *)(w + j), x);
        vmax = _mm256_blendv_epi8(vmax, x, _mm256_cmpgt_epi64(x, vmax));
        vsum = _mm256_add_epi64(vsum, x);
    }
    int64_t wmax, wsum;
    ia_reduce(vmax, vsum, &wmax, &wsum);
    for (; j < valid; ++j) {
        int64_t v = 0;
        if (!km || km[j]) {
            int64_t u = (int64_t)s[j] + bias;
            if (u < 0) u = 0;
            v = u * u + delta;
        }
        w[j] = v;
        wmax = v > wmax ? v : wmax;
        wsum += v;
    }
    return ia_codes(w, t, valid, wmax, wsum, frac_bits, row_const, o, rm);
}

/* Softmax (i-exp) row weights, vectorised: w = ((p + eb)^2 + ec) >> z with q = s - max s = p - z ln2,
 * z = min(floor(-q / ln2), max_shift) by a 6-step restoring division. Returns 0 for the scalar path. */
static int ia_exp_row(const int32_t *s, long t, long valid, const uint8_t *km, int64_t ln2, int64_t eb, int64_t ec,
                      int max_shift, int frac_bits, int64_t row_const, int64_t *w, uint8_t *o, int64_t *rm) {
    if (ln2 < 1 || ln2 >= (1 << 24) || eb < 0 || eb >= (1 << 29) || ec < 0 || ec >= ((int64_t)1 << 60) ||
        max_shift > 63)
        return 0;
    int64_t smax = INT32_MIN;
    long j;
    for (j = 0; j < valid; ++j)
        if ((!km || km[j]) && s[j] > smax) smax = s[j];
    const __m256i zero = _mm256_setzero_si256(), sm4 = _mm256_set1_epi64x(smax), l4 = _mm256_set1_epi64x(ln2);
    const __m256i nl4 = _mm256_set1_epi64x(-ln2), eb4 = _mm256_set1_epi64x(eb), ec4 = _mm256_set1_epi64x(ec);
    const __m256i ms4 = _mm256_set1_epi64x(max_shift);
    __m256i vmax = zero, vsum = zero;
    for (j = 0; j + 4 <= valid; j += 4) {
        __m256i sv = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(s + j)));
        __m256i r = _mm256_sub_epi64(sm4, sv); /* -q >= 0 for unmasked keys (masked: discarded below) */
        r = _mm256_and_si256(r, _mm256_cmpgt_epi64(r, zero));
        __m256i z = zero, rr = r;
        for (int bit = 5; bit >= 0; --bit) {
            __m256i tt = _mm256_slli_epi64(l4, bit);
            __m256i ge = _mm256_xor_si256(_mm256_cmpgt_epi64(tt, rr), _mm256_set1_epi64x(-1));
            rr = _mm256_sub_epi64(rr, _mm256_and_si256(tt, ge));
            z = _mm256_or_si256(z, _mm256_and_si256(_mm256_set1_epi64x(1 << bit), ge));
        }
        /* floor(-q / ln2) >= 64 saturates z at 63: then min(z, max_shift) is max_shift either way */
        z = _mm256_blendv_epi8(z, ms4, _mm256_cmpgt_epi64(z, ms4));
        __m256i p = _mm256_add_epi64(_mm256_sub_epi64(zero, r), _mm256_mul_epu32(z, l4)); /* q + z ln2 */
        p = _mm256_blendv_epi8(p, nl4, _mm256_cmpgt_epi64(nl4, p));
        __m256i pe = _mm256_add_epi64(p, eb4); /* in [eb - ln2, eb]: |.| < 2^29 */
        __m256i x = _mm256_srlv_epi64(_mm256_add_epi64(_mm256_mul_epi32(pe, pe), ec4), z);
        if (km) {
            __m256i m = _mm256_cvtepu8_epi64(_mm_cvtsi32_si128(*(const int32_t *)(km + j)));
            x = _mm256_andnot_si256(_mm256_cmpeq_epi64(m, zero), x);
        }
        _mm256_storeu_si256((__m256i *)(w + j), x);
        vmax = _mm256_blendv_epi8(vmax, x, _mm256_cmpgt_epi64(x, vmax));
        vsum = _mm256_add_epi64(vsum, x);
    }
    int64_t wmax, wsum;
    ia_reduce(vmax, vsum, &wmax, &wsum);
    for (; j < valid; ++j) {
        int64_t v = 0;
        if (!km || km[j]) {
            int64_t q = (int64_t)s[j] - smax;
            int64_t z = lb_floordiv(-q, ln2);
            if (z > max_shift) z = max_shift;
            int64_t p = q + z * ln2;
            if (p < -ln2) p = -ln2;
            v = ((p + eb) * (p + eb) + ec) >> z;
        }
        w[j] = v;
        wmax = v > wmax ? v : wmax;
        wsum += v;
    }
    return ia_codes(w, t, valid, wmax, wsum, frac_bits, row_const, o, rm);
}

/* int16 copies: q (t x hd) row-major; k in panels of 16 keys: [panel][d-pair][16 keys][2]. */
static void ia_pack_qk(const int8_t *q, const int8_t *k, long ld, long t, long hd, int16_t *qs, int16_t *kp,
                       long tp) {
    for (long i = 0; i < t; ++i)
        for (long d = 0; d < hd; ++d) qs[i * hd + d] = q[i * ld + d];
    memset(kp, 0, sizeof(int16_t) * tp * hd);
    for (long j = 0; j < t; ++j) {
        long p = j / 16, c = j % 16;
        const int8_t *kj = k + j * ld;
        int16_t *dst = kp + p * 16 * hd + c * 2;
        for (long d = 0; d < hd; d += 2) {
            dst[(d / 2) * 32] = kj[d];
            dst[(d / 2) * 32 + 1] = kj[d + 1];
        }
    }
}

/* v in panels of 16 dims: [d-panel][key group of 4][16 dims][4 keys] int8, keys padded to tp with zeros. */
static void ia_pack_v(const int8_t *v, long ld, long t, long hd, int8_t *vp, long tp) {
    memset(vp, 0, (size_t)(tp * hd));
    for (long j = 0; j < t; ++j) {
        const int8_t *vj = v + j * ld;
        for (long d = 0; d < hd; ++d) vp[(d / 16) * 16 * tp + (j / 4) * 64 + (d % 16) * 4 + (j % 4)] = vj[d];
    }
}

#define IA_ACC_DECL                                                                                      \
    __m256i c00 = _mm256_setzero_si256(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00, c30 = c00, \
            c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
#define IA_ACC_STORE(dst, ld)                                                                            \
    {                                                                                                    \
        __m256i cc[IA_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}}; \
        for (int r = 0; r < IA_MR; ++r) {                                                                \
            _mm256_storeu_si256((__m256i *)((dst) + r * (ld)), cc[r][0]);                              \
            _mm256_storeu_si256((__m256i *)((dst) + r * (ld) + 8), cc[r][1]);                          \
        }                                                                                                \
    }

/* scores of 6 query rows (int16 rows q0.., row stride hd, rows beyond t repeat a valid row) x one key panel */
static inline void ia_scores_tile(const int16_t *const qr[IA_MR], const int16_t *kp, long hd, int32_t *dst,
                                  long ldd) {
    IA_ACC_DECL
    for (long d = 0; d < hd; d += 2) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)kp), b1 = _mm256_loadu_si256((const __m256i *)(kp + 16));
        kp += 32;
#define IA_SROW(r)                                                                    \
    {                                                                                 \
        __m256i a = _mm256_set1_epi32(*(const int32_t *)(qr[r] + d));                 \
        c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(a, b0));               \
        c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(a, b1));               \
    }
        IA_SROW(0) IA_SROW(1) IA_SROW(2) IA_SROW(3) IA_SROW(4) IA_SROW(5)
    }
    IA_ACC_STORE(dst, ldd)
}

/* P.V of 6 rows of uint8 codes (row stride ldc, keys 0 .. kg*4) x one 16-dim v panel -> int32 6 x 16 */
static inline void ia_pv_tile(const uint8_t *codes, long ldc, const int8_t *vp, long kg, int32_t *dst, long ldd) {
    const __m256i ones = _mm256_set1_epi16(1);
    IA_ACC_DECL
    for (long g = 0; g < kg; ++g) {
        __m256i b0 = _mm256_loadu_si256((const __m256i *)vp), b1 = _mm256_loadu_si256((const __m256i *)(vp + 32));
        vp += 64;
#define IA_PROW(r)                                                                                   \
    {                                                                                                \
        __m256i a = _mm256_set1_epi32(*(const int32_t *)(codes + r * ldc + 4 * g));                  \
        c##r##0 = _mm256_add_epi32(c##r##0, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b0), ones));   \
        c##r##1 = _mm256_add_epi32(c##r##1, _mm256_madd_epi16(_mm256_maddubs_epi16(a, b1), ones));   \
    }
        IA_PROW(0) IA_PROW(1) IA_PROW(2) IA_PROW(3) IA_PROW(4) IA_PROW(5)
    }
    IA_ACC_STORE(dst, ldd)
}

void lowbit_int_attention_blocked(const int8_t *q, const int8_t *k, const int8_t *v, long ld, long bsz, long t,
                                  long c, long n_head, int causal, const uint8_t *keymask, int kind,
                                  const int64_t *bias, int64_t delta, int64_t ln2, int64_t eb, int64_t ec,
                                  int max_shift, int frac_bits, int64_t row_const, int row_shift, int8_t *y,
                                  long ldy, int out_off, int threads) {
    const long hd = c / n_head, tp = (t + 15) / 16 * 16;
    const int64_t half = row_shift > 0 ? ((int64_t)1 << (row_shift - 1)) : 0;
#pragma omp parallel num_threads(threads)
    {
        int16_t *qs = (int16_t *)aligned_alloc(64, sizeof(int16_t) * (t * hd + 64));
        int16_t *kp = (int16_t *)aligned_alloc(64, sizeof(int16_t) * tp * hd);
        int8_t *vp = (int8_t *)aligned_alloc(64, (size_t)(tp * hd));
        int32_t *sc = (int32_t *)aligned_alloc(64, sizeof(int32_t) * IA_MR * tp);
        uint8_t *codes = (uint8_t *)aligned_alloc(64, (size_t)(IA_MR * tp));
        int64_t *w = (int64_t *)aligned_alloc(64, sizeof(int64_t) * tp);
        int32_t *acc = (int32_t *)aligned_alloc(64, sizeof(int32_t) * IA_MR * hd);
#pragma omp for schedule(dynamic, 1)
        for (long bh = 0; bh < bsz * n_head; ++bh) {
            long b = bh / n_head, h = bh % n_head;
            const long off = b * t * ld + h * hd;
            const uint8_t *km = keymask ? keymask + b * t : NULL;
            ia_pack_qk(q + off, k + off, ld, t, hd, qs, kp, tp);
            ia_pack_v(v + off, ld, t, hd, vp, tp);
            for (long i0 = 0; i0 < t; i0 += IA_MR) {
                int rows = t - i0 < IA_MR ? (int)(t - i0) : IA_MR;
                long kend = causal ? i0 + rows : t; /* keys any row of the block may attend */
                long npan = (kend + 15) / 16;
                const int16_t *qr[IA_MR];
                for (int r = 0; r < IA_MR; ++r) qr[r] = qs + (i0 + (r < rows ? r : 0)) * hd;
                for (long p = 0; p < npan; ++p) ia_scores_tile(qr, kp + p * 16 * hd, hd, sc + p * 16, tp);
                int64_t rm[IA_MR];
                for (int r = 0; r < rows; ++r) {
                    long valid = causal ? i0 + r + 1 : t;
                    const int32_t *s = sc + r * tp;
                    uint8_t *o = codes + r * tp;
                    int done = kind == 0 ? ia_poly_row(s, t, valid, km, bias[h], delta, frac_bits, row_const, w,
                                                       o, &rm[r])
                                         : ia_exp_row(s, t, valid, km, ln2, eb, ec, max_shift, frac_bits, row_const,
                                                      w, o, &rm[r]);
                    if (!done) {
                        rm[r] = lowbit_int_attn_row(s, t, valid, km, kind, kind == 0 ? bias[h] : 0, delta, ln2,
                                                    eb, ec, max_shift, frac_bits, row_const, w, (int8_t *)o);
                    }
                    for (long j = valid; j < tp; ++j) o[j] = 0;
                }
                for (int r = rows; r < IA_MR; ++r) memset(codes + r * tp, 0, (size_t)tp);
                long kg = (kend + 3) / 4;
                for (long dp = 0; dp < hd / 16; ++dp) ia_pv_tile(codes, tp, vp + dp * 16 * tp, kg, acc + dp * 16, hd);
                for (int r = 0; r < rows; ++r) {
                    int8_t *yi = y + (b * t + i0 + r) * ldy + h * hd;
                    const int32_t *a = acc + r * hd;
                    for (long d = 0; d < hd; ++d) {
                        int64_t x = ((int64_t)a[d] * rm[r] + half) >> row_shift;
                        yi[d] = (int8_t)((x > 127 ? 127 : (x < -127 ? -127 : x)) ^ (out_off ? 0x80 : 0));
                    }
                }
            }
        }
        free(qs), free(kp), free(vp), free(sc), free(codes), free(w), free(acc);
    }
}
