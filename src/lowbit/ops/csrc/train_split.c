// Fused bit splitting of lowbit.training (Xi et al.): the merged 8-bit code 14*hi + lo of a gradient tensor,
// t = g * scale rounded once (stochastically with a counter-based hash, or to nearest-even), in one pass.
//
// Bit-exact with lowbit/training/bit_split.py (bit_split_merged with the same seed): t = g * scale (float32
// multiply), u = (hash32(i, seed) >> 8) * 2**-24, code = floor(t + u) or rintf(t), clamped to [-98, 98].
// hash32 is the "lowbias32" integer finaliser (Wellons) of (i * 0x9E3779B1 + seed) mod 2**32, i the flat index.
#pragma GCC target("avx2")  // no "fma": nothing may be contracted
#include <math.h>
#include <stdint.h>

static inline uint32_t lb_hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

// max |g| over n floats; returns the number of non-finite entries (the caller raises when not zero).
long lowbit_train_absmax(const float *g, long n, float *amax, int nthreads) {
    float m = 0.0f;
    long bad = 0;
#pragma omp parallel for reduction(max : m) reduction(+ : bad) schedule(static) num_threads(nthreads)
    for (long i = 0; i < n; i++) {
        float a = fabsf(g[i]);
        if (!(a <= 3.402823466e38f)) bad++;
        else if (a > m) m = a;
    }
    *amax = m;
    return bad;
}

void lowbit_train_split_merged(const float *g, long n, float scale, uint32_t seed, int stochastic,
                               int8_t *out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (long i = 0; i < n; i++) {
        float t = g[i] * scale;
        float r;
        if (stochastic) {
            uint32_t h = lb_hash32((uint32_t)i * 0x9E3779B1u + seed);
            float u = (float)(h >> 8) * 5.9604644775390625e-08f;  // 2**-24
            r = floorf(t + u);
        } else {
            r = rintf(t);
        }
        r = r < -98.0f ? -98.0f : (r > 98.0f ? 98.0f : r);
        out[i] = (int8_t)r;
    }
}
