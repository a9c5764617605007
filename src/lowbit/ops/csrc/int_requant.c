/* Integer-only requantization for lowbit.integer: int32 accumulators -> int8 (or an int32 residual) by dyadic
 * multipliers m * 2^-s, round half up, saturating. Reference: lowbit.integer.fast (pure PyTorch, same integers). */
#pragma GCC target("avx2,fma")
#include <stdint.h>

static inline int64_t lb_dyadic(int64_t x, int64_t m, int s) {
    int64_t half = s > 0 ? ((int64_t)1 << (s - 1)) : 0;
    return (x * m + half) >> s;
}

/* Per output channel j: y = dyadic(acc[i, j] + bias[j], mult[j], shift[j]); relu optional.
 * mode 0: out int8 (M, N) row stride ldo, clamp [-127, 127]; mode 1: out int32 += y (saturating). */
void lowbit_int_requant(const int32_t *acc, long m, long n, long lda, const int32_t *bias, const int32_t *mult,
                        const int32_t *shift, int relu, int mode, void *out, long ldo, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long i = 0; i < m; ++i) {
        const int32_t *a = acc + i * lda;
        if (mode == 0) {
            int8_t *o = (int8_t *)out + i * ldo;
            for (long j = 0; j < n; ++j) {
                int64_t x = (int64_t)a[j] + (bias ? bias[j] : 0);
                if (relu && x < 0) x = 0;
                int64_t y = lb_dyadic(x, mult[j], shift[j]);
                o[j] = (int8_t)(y > 127 ? 127 : (y < -127 ? -127 : y));
            }
        } else {
            int32_t *o = (int32_t *)out + i * ldo;
            for (long j = 0; j < n; ++j) {
                int64_t x = (int64_t)a[j] + (bias ? bias[j] : 0);
                if (relu && x < 0) x = 0;
                int64_t y = lb_dyadic(x, mult[j], shift[j]) + o[j];
                o[j] = (int32_t)(y > INT32_MAX ? INT32_MAX : (y < INT32_MIN ? INT32_MIN : y));
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
