/* Integer-only requantization for lowbit.integer: int32 accumulators -> int8 (or an int32 residual) by dyadic
 * multipliers m * 2^-s, round half up, saturating. Reference: lowbit.integer.fast (pure PyTorch, same integers). */
#pragma GCC target("avx2,fma")
#include <immintrin.h>
#include <stdint.h>

#include "int_common.h"
static inline int64_t lb_dyadic(int64_t x, int64_t m, int s) {
    int64_t half = s > 0 ? ((int64_t)1 << (s - 1)) : 0;
    return (x * m + half) >> s;
}



/* Per output channel j: x = sat32(acc[i, j] + bias[j]) (ReLU optional), y = dyadic(x, mult[j], shift[j]).
 * mode 0: out int8 (M, N) row stride ldo, clamp [-127, 127]; mode 1: out int32 += y (saturating).
 * Requires mult < 2^24 and shift <= 62 (|x * mult| < 2^55). AVX2 on 4 lanes of int64, scalar tail. */
void lowbit_int_requant(const int32_t *acc, long m, long n, long lda, const int32_t *bias, const int32_t *mult,
                        const int32_t *shift, int relu, int mode, void *out, long ldo, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < m; ++i) {
        const int32_t *a = acc + i * lda;
        const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi64x(1);
        const __m256i off = _mm256_set1_epi64x((int64_t)1 << 62);
        const __m256i lo32 = _mm256_set1_epi64x(INT32_MIN), hi32 = _mm256_set1_epi64x(INT32_MAX);
        const __m256i lo8 = _mm256_set1_epi64x(-127), hi8 = _mm256_set1_epi64x(127);
        long j = 0;
        for (; j + 4 <= n; j += 4) {
            __m256i x = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(a + j)));
            if (bias) x = _mm256_add_epi64(x, _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(bias + j))));
            x = lb_clamp64(x, lo32, hi32);
            if (relu) x = _mm256_and_si256(x, _mm256_cmpgt_epi64(x, zero));
            __m256i mu = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(mult + j)));
            __m256i sh = _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)(shift + j)));
            __m256i half = _mm256_srli_epi64(_mm256_sllv_epi64(one, sh), 1);
            __m256i p = _mm256_add_epi64(_mm256_add_epi64(_mm256_mul_epi32(x, mu), half), off);
            __m256i y = _mm256_sub_epi64(_mm256_srlv_epi64(p, sh), _mm256_srlv_epi64(off, sh));
            int64_t t[4];
            if (mode == 0) {
                _mm256_storeu_si256((__m256i *)t, lb_clamp64(y, lo8, hi8));
                int8_t *o = (int8_t *)out + i * ldo + j;
                o[0] = (int8_t)t[0], o[1] = (int8_t)t[1], o[2] = (int8_t)t[2], o[3] = (int8_t)t[3];
            } else {
                int32_t *o = (int32_t *)out + i * ldo + j;
                y = _mm256_add_epi64(y, _mm256_cvtepi32_epi64(_mm_loadu_si128((const __m128i *)o)));
                _mm256_storeu_si256((__m256i *)t, lb_clamp64(y, lo32, hi32));
                o[0] = (int32_t)t[0], o[1] = (int32_t)t[1], o[2] = (int32_t)t[2], o[3] = (int32_t)t[3];
            }
        }
        for (; j < n; ++j) {
            int64_t x = lb_sat32((int64_t)a[j] + (bias ? bias[j] : 0));
            if (relu && x < 0) x = 0;
            int64_t y = lb_dyadic(x, mult[j], shift[j]);
            if (mode == 0) {
                ((int8_t *)out)[i * ldo + j] = (int8_t)(y > 127 ? 127 : (y < -127 ? -127 : y));
            } else {
                int32_t *o = (int32_t *)out + i * ldo + j;
                *o = (int32_t)lb_sat32(y + *o);
            }
        }
    }
}

/* Per row i: out[i, j] = clamp(dyadic(acc[i, j], rowmult[i], shift)) as int8 (attention P·V rescale). */
void lowbit_int_requant_rows(const int32_t *acc, long m, long n, long lda, const int64_t *rowmult, int shift,
                             int8_t *out, long ldo, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < m; ++i) {
        const int32_t *a = acc + i * lda;
        int8_t *o = out + i * ldo;
        for (long j = 0; j < n; ++j) {
            int64_t y = lb_dyadic(a[j], rowmult[i], shift);
            o[j] = (int8_t)(y > 127 ? 127 : (y < -127 ? -127 : y));
        }
    }
}
