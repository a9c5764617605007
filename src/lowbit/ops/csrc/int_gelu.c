/* Integer GELU + requantization for lowbit.integer (I-BERT's i-GELU): int32 input at the GELU scale -> int8.
 *
 *   l   = sign(q) * ((min(|q|, -b) + b)^2 + c)          (erf polynomial, int64)
 *   g   = -q * (l + one), then round_half_up(g / 2^pre), saturated to int32
 *   out = clamp(round_half_up(g * mult[j] / 2^shift[j]), +-qmax)   (per channel j; + out_off as uint8 storage)
 * The same integers as lowbit.integer.kernels.i_gelu -> shift -> requant_channels (tested bit for bit). The
 * vector path (4 int64 lanes) runs when the constants keep every product within mul_epi32's 32-bit inputs. */
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <stdint.h>

#include "int_common.h"

static inline int64_t ig_gelu1(int64_t q, int64_t b, int64_t c, int64_t one, int pre) {
    int64_t a = q < 0 ? -q : q, nb = -b;
    int64_t cl = a < nb ? a : nb;
    int64_t e = (cl + b) * (cl + b) + c;
    int64_t l = q > 0 ? e : (q < 0 ? -e : 0);
    int64_t g = -q * (l + one);
    if (pre) g = (g + ((int64_t)1 << (pre - 1))) >> pre;
    return lb_sat32(g);
}

static inline __m256i ig_clamp(__m256i x, __m256i lo, __m256i hi) {
    x = _mm256_blendv_epi8(x, lo, _mm256_cmpgt_epi64(lo, x));
    return _mm256_blendv_epi8(x, hi, _mm256_cmpgt_epi64(x, hi));
}

void lowbit_int_gelu_rq(const int32_t *g, long m, long n, long ldg, int64_t b, int64_t c, int64_t one, int pre,
                        const int32_t *mult, const int32_t *shift, int8_t *out, long ldo, int out_off, int qmax,
                        int threads) {
    /* vector bounds: |q| <= 2^31; 0 <= -b < 2^15 so (cl + b)^2 < 2^30; |c|, |one| < 2^28: |l + one| < 1.5 * 2^30 and
     * |g| < 1.5 * 2^61, so the rounding offset 2^62 + 2^(pre-1) keeps it below 2^63 */
    const int vec = b <= 0 && -b < (1 << 15) && c > -(1 << 28) && c < (1 << 28) && one > -(1 << 28) &&
                    one < (1 << 28) && pre < 61;
    const uint8_t flip = (uint8_t)out_off;
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1)
    for (long i = 0; i < m; ++i) {
        const int32_t *gr = g + i * ldg;
        int8_t *o = out + i * ldo;
        long j = 0;
        if (vec) {
            const __m256i zero = _mm256_setzero_si256(), nb = _mm256_set1_epi64x(-b), bb = _mm256_set1_epi64x(b);
            const __m256i cc = _mm256_set1_epi64x(c), on = _mm256_set1_epi64x(one);
            const __m256i off62 = _mm256_set1_epi64x((int64_t)1 << 62);
            const __m256i prehalf = _mm256_set1_epi64x(pre ? ((int64_t)1 << (pre - 1)) + ((int64_t)1 << 62) : 0);
            const __m256i presub = _mm256_set1_epi64x(pre ? (((int64_t)1 << 62) >> pre) : 0);
            const __m256i one64 = _mm256_set1_epi64x(1);
            const __m256i lo32 = _mm256_set1_epi64x(INT32_MIN), hi32 = _mm256_set1_epi64x(INT32_MAX);
            const __m256i loq = _mm256_set1_epi64x(-qmax), hiq = _mm256_set1_epi64x(qmax);
            for (; j + 4 <= n; j += 4) {
                __m256i q = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(gr + j)));
                __m256i neg = _mm256_cmpgt_epi64(zero, q), pos = _mm256_cmpgt_epi64(q, zero);
                __m256i a = _mm256_sub_epi64(_mm256_xor_si256(q, neg), neg);
                __m256i cl = _mm256_blendv_epi8(a, nb, _mm256_cmpgt_epi64(a, nb));
                __m256i t = _mm256_add_epi64(cl, bb);
                __m256i e = _mm256_add_epi64(_mm256_mul_epi32(t, t), cc);
                __m256i l = _mm256_sub_epi64(_mm256_xor_si256(e, neg), neg); /* -e when q < 0 */
                l = _mm256_and_si256(l, _mm256_or_si256(neg, pos));          /* 0 when q == 0 */
                __m256i s = _mm256_add_epi64(l, on);
                __m256i gg = _mm256_sub_epi64(zero, _mm256_mul_epi32(q, s)); /* |q|, |s| < 2^31 */
                if (pre) gg = _mm256_sub_epi64(_mm256_srli_epi64(_mm256_add_epi64(gg, prehalf), pre), presub);
                gg = ig_clamp(gg, lo32, hi32);
                __m256i mu = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(mult + j)));
                __m256i sh = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(shift + j)));
                __m256i half = _mm256_srli_epi64(_mm256_sllv_epi64(one64, sh), 1);
                __m256i p = _mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epi32(gg, mu), half), off62);
                __m256i y = ig_clamp(_mm256_sub_epi64(_mm256_srlv_epi64(p, sh), _mm256_srlv_epi64(off62, sh)), loq,
                                     hiq);
                int64_t tt[4];
                _mm256_storeu_si256((__m256i *)tt, y);
                o[j] = (int8_t)((uint8_t)tt[0] + flip), o[j + 1] = (int8_t)((uint8_t)tt[1] + flip);
                o[j + 2] = (int8_t)((uint8_t)tt[2] + flip), o[j + 3] = (int8_t)((uint8_t)tt[3] + flip);
            }
        }
        for (; j < n; ++j) {
            int64_t x = ig_gelu1(gr[j], b, c, one, pre);
            int64_t y = (x * mult[j] + (shift[j] > 0 ? ((int64_t)1 << (shift[j] - 1)) : 0)) >> shift[j];
            y = y > qmax ? qmax : (y < -qmax ? -qmax : y);
            o[j] = (int8_t)((uint8_t)y + flip);
        }
    }
}
