// Fused bit splitting of lowbit.training (Xi et al.): the merged 8-bit code 14*hi + lo of a gradient tensor,
// t = g * scale rounded once (stochastically with a counter-based hash, or to nearest-even), in one pass.
//
// Bit-exact with lowbit/training/bit_split.py (bit_split_merged with the same seed): t = g * scale (float32
// multiply), u = (hash32(i, seed) >> 8) * 2**-24, code = floor(t + u) or rint(t), clamped to [-98, 98].
// hash32 is the "lowbias32" integer finaliser (Wellons) of (i * 0x9E3779B1 + seed) mod 2**32, i the flat index.
// AVX2, 8 lanes: the same IEEE operations per element as the scalar tail (vroundps = floorf / rintf in the
// default rounding mode; (h >> 8) < 2**24 converts exactly), so lanes and tail agree bit for bit.
#pragma GCC target("avx2")  // no "fma": nothing may be contracted
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define SPLIT_TOP 98.0f
#define TWO_M24 5.9604644775390625e-08f  // 2**-24
#define GOLDEN32 0x9E3779B1u

static inline uint32_t lb_hash32(uint32_t x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

static inline __m256i lb_hash32_x8(__m256i x) {
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x7feb352du));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32((int)0x846ca68bu));
    return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}

// Chunks of this many elements per OpenMP work item (a multiple of 32; the lanes never straddle a chunk),
// handed out dynamically: on a shared machine a thread that is not scheduled holds up only its current chunk.
#define SPLIT_CHUNK 16384L

// max |g| over n floats; returns the number of non-finite entries (the caller raises when not zero).
long lowbit_train_absmax(const float *g, long n, float *amax, int nthreads) {
    float m = 0.0f;
    long bad = 0;
    const long nchunks = (n + SPLIT_CHUNK - 1) / SPLIT_CHUNK;
#pragma omp parallel for reduction(max : m) reduction(+ : bad) schedule(dynamic, 1) num_threads(nthreads) \
    if (n > SPLIT_CHUNK)
    for (long c = 0; c < nchunks; c++) {
        const long i0 = c * SPLIT_CHUNK, i1 = i0 + SPLIT_CHUNK < n ? i0 + SPLIT_CHUNK : n;
        const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
        const __m256 fmax = _mm256_set1_ps(3.402823466e38f);
        __m256 vm0 = _mm256_setzero_ps(), vm1 = _mm256_setzero_ps();
        __m256i vbad = _mm256_setzero_si256();  // lanes count down by 1 (all-ones) per non-finite entry
        long i = i0;
        for (; i + 16 <= i1; i += 16) {
            __m256 a0 = _mm256_and_ps(_mm256_loadu_ps(g + i), abs_mask);
            __m256 a1 = _mm256_and_ps(_mm256_loadu_ps(g + i + 8), abs_mask);
            __m256 ok0 = _mm256_cmp_ps(a0, fmax, _CMP_LE_OQ), ok1 = _mm256_cmp_ps(a1, fmax, _CMP_LE_OQ);
            vm0 = _mm256_max_ps(vm0, _mm256_and_ps(a0, ok0));  // non-finite lanes contribute 0
            vm1 = _mm256_max_ps(vm1, _mm256_and_ps(a1, ok1));
            vbad = _mm256_add_epi32(vbad, _mm256_castps_si256(_mm256_andnot_ps(ok0, _mm256_castsi256_ps(
                                              _mm256_set1_epi32(-1)))));
            vbad = _mm256_add_epi32(vbad, _mm256_castps_si256(_mm256_andnot_ps(ok1, _mm256_castsi256_ps(
                                              _mm256_set1_epi32(-1)))));
        }
        float lanes[8];
        int32_t blanes[8];
        _mm256_storeu_ps(lanes, _mm256_max_ps(vm0, vm1));
        _mm256_storeu_si256((__m256i *)blanes, vbad);
        float lm = 0.0f;
        long lb = 0;
        for (int j = 0; j < 8; j++) {
            lm = lanes[j] > lm ? lanes[j] : lm;
            lb -= blanes[j];
        }
        for (; i < i1; i++) {
            float a = fabsf(g[i]);
            if (!(a <= 3.402823466e38f)) lb++;
            else if (a > lm) lm = a;
        }
        if (lm > m) m = lm;
        bad += lb;
    }
    *amax = m;
    return bad;
}

static inline float split_one(float gi, long i, float scale, uint32_t seed, int stochastic) {
    float t = gi * scale;
    float r;
    if (stochastic) {
        uint32_t h = lb_hash32((uint32_t)i * GOLDEN32 + seed);
        r = floorf(t + (float)(h >> 8) * TWO_M24);
    } else {
        r = rintf(t);
    }
    return r < -SPLIT_TOP ? -SPLIT_TOP : (r > SPLIT_TOP ? SPLIT_TOP : r);
}

// 8 floats -> 8 rounded, clamped int32 codes (the vector twin of split_one).
static inline __m256i split_x8(const float *g, long i, __m256 vscale, __m256i vseed, int stochastic) {
    __m256 t = _mm256_mul_ps(_mm256_loadu_ps(g + i), vscale);
    __m256 r;
    if (stochastic) {
        __m256i idx = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)i),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i h = lb_hash32_x8(
            _mm256_add_epi32(_mm256_mullo_epi32(idx, _mm256_set1_epi32((int)GOLDEN32)), vseed));
        __m256 u = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(h, 8)), _mm256_set1_ps(TWO_M24));
        r = _mm256_round_ps(_mm256_add_ps(t, u), _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    } else {
        r = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    }
    // r < -98 ? -98 : (r > 98 ? 98 : r), as the scalar code (a NaN passes through unchanged)
    r = _mm256_blendv_ps(r, _mm256_set1_ps(SPLIT_TOP), _mm256_cmp_ps(r, _mm256_set1_ps(SPLIT_TOP), _CMP_GT_OQ));
    r = _mm256_blendv_ps(r, _mm256_set1_ps(-SPLIT_TOP),
                         _mm256_cmp_ps(r, _mm256_set1_ps(-SPLIT_TOP), _CMP_LT_OQ));
    return _mm256_cvtps_epi32(r);
}

void lowbit_train_split_merged(const float *g, long n, float scale, uint32_t seed, int stochastic,
                               int8_t *out, int nthreads) {
    const long nchunks = (n + SPLIT_CHUNK - 1) / SPLIT_CHUNK;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (n > SPLIT_CHUNK)
    for (long c = 0; c < nchunks; c++) {
        const long i0 = c * SPLIT_CHUNK, i1 = i0 + SPLIT_CHUNK < n ? i0 + SPLIT_CHUNK : n;
        const __m256 vscale = _mm256_set1_ps(scale);
        const __m256i vseed = _mm256_set1_epi32((int)seed);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        long i = i0;
        for (; i + 32 <= i1; i += 32) {
            __m256i c0 = split_x8(g, i, vscale, vseed, stochastic);
            __m256i c1 = split_x8(g, i + 8, vscale, vseed, stochastic);
            __m256i c2 = split_x8(g, i + 16, vscale, vseed, stochastic);
            __m256i c3 = split_x8(g, i + 24, vscale, vseed, stochastic);
            // int32 -> int8 (codes are within [-98, 98]: the saturating packs are exact); the packs work per
            // 128-bit lane, the dword permute restores element order
            __m256i w01 = _mm256_packs_epi32(c0, c1), w23 = _mm256_packs_epi32(c2, c3);
            __m256i b = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(w01, w23), order);
            _mm256_storeu_si256((__m256i *)(out + i), b);
        }
        for (; i < i1; i++) out[i] = (int8_t)split_one(g[i], i, scale, seed, stochastic);
    }
}
