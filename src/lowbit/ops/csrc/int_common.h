// Integer helpers shared by the integer-only inference kernels (int_attn.c, int_gelu.c, int_gemm.c,
// int_requant.c, int_rows.c). Include after the file's `#pragma GCC target("avx2,fma")` (lb_clamp64 is AVX2).
#ifndef LOWBIT_INT_COMMON_H
#define LOWBIT_INT_COMMON_H

#include <immintrin.h>
#include <stdint.h>

// x saturated to the int32 range.
static inline int64_t lb_sat32(int64_t x) { return x > INT32_MAX ? INT32_MAX : (x < INT32_MIN ? INT32_MIN : x); }

// floor(a / b) for b > 0 (C division truncates towards zero).
static inline int64_t lb_floordiv(int64_t a, int64_t b) {
    int64_t q = a / b;
    return (a % b != 0 && a < 0) ? q - 1 : q;
}

// round(num / den), halves up, for den > 0.
static inline int64_t lb_round_div(int64_t num, int64_t den) { return lb_floordiv(2 * num + den, 2 * den); }

// Bits needed for v (0 for 0).
static inline int lb_bits(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }

// 4 int64 lanes clamped to [lo, hi].
static inline __m256i lb_clamp64(__m256i x, __m256i lo, __m256i hi) {
    x = _mm256_blendv_epi8(x, lo, _mm256_cmpgt_epi64(lo, x));
    return _mm256_blendv_epi8(x, hi, _mm256_cmpgt_epi64(x, hi));
}

// One attention row of lowbit_int_attention (int_rows.c), also used by the tiled kernel in int_attn.c.
int64_t lowbit_int_attn_row(const int32_t *s, long t, long valid, const uint8_t *km, int kind, int64_t bias,
                            int64_t delta, int64_t ln2, int64_t eb, int64_t ec, int max_shift, int frac_bits,
                            int64_t row_const, int64_t *w, int8_t *o);

#endif
