// Fused kernels of lowbit.training (Hadamard quantizer of Xi et al.): block FWHT + LSQ INT4 quantize, and its
// backward (STE clip mask + LSQ step-gradient sum + inverse FWHT), one pass over each row. ``nthreads``: torch's
// intra-op thread count, passed per call.
//
// Bit-exact with the PyTorch path (lowbit/training/hadamard_quant.py block_transform + lsq.py lsq_quantize):
// the same float32 operations in the same order — multiply by (float)(1/sqrt(block)), then log2(block)
// add/subtract stages pairing elements h = block/2, ..., 1 apart; v = x / step (a true division);
// round half-to-even (vroundps / rintf in the default rounding mode); no multiply-add appears, so nothing is
// contracted. Blocks of 8 or more run in AVX2 (stages h >= 8 between registers, h = 4, 2, 1 inside one
// register with the same a + b / a - b per pair); blocks 1, 2, 4 run eight values (whole blocks) per register
// too, and only a row's last d mod 8 values run the scalar twin. (The block search picks 2 for inputs such as
// a GELU output: the scalar loop made the 4096 x 3072 FFN-down quantize ~10x and its backward ~6x slower.)
// The step-gradient sum is accumulated in double (not bit-exact with torch's float32 sum; tested to 1e-6), per
// chunk of ROW_CHUNK rows, and the chunk sums are added in order: the same result for any thread count.
// Rows are handed out in chunks (schedule dynamic): on a shared machine a thread that is not scheduled holds up
// only its current chunk, not a static half of the rows.
#pragma GCC target("avx2")  // no "fma": nothing may be contracted
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LB_TRAIN_MAX_BLOCK 4096
#define ROW_CHUNK 16

static int valid_block(long d, int block) {
    return block >= 1 && block <= LB_TRAIN_MAX_BLOCK && !(block & (block - 1)) && d % block == 0;
}

// Scalar in-place FWHT of one block (block < 8): scale, then stages h = block/2 ... 1.
static void fwht_scalar(float *buf, int block, float sc) {
    for (int j = 0; j < block; j++) buf[j] = buf[j] * sc;
    for (int h = block / 2; h >= 1; h /= 2)
        for (int base = 0; base < block; base += 2 * h)
            for (int i = 0; i < h; i++) {
                float a = buf[base + i], b = buf[base + h + i];
                buf[base + i] = a + b;
                buf[base + h + i] = a - b;
            }
}

// Stages h = 2, 1 (block 4) or h = 1 (block 2) of eight consecutive elements in one register, i.e. of two
// blocks of 4 or four blocks of 2 side by side (the scalar twin's pairs; out = blend(a + b, a - b) where a
// holds the first and b the second element of every pair, broadcast to both positions).
static inline __m256 fwht_pairs8(__m256 v, int block) {
    __m256 a, b;
    if (block >= 4) {
        a = _mm256_permute_ps(v, 0x44), b = _mm256_permute_ps(v, 0xEE);  // h = 2: (x0 x1 x0 x1), (x2 x3 x2 x3)
        v = _mm256_blend_ps(_mm256_add_ps(a, b), _mm256_sub_ps(a, b), 0xCC);
    }
    a = _mm256_permute_ps(v, 0xA0), b = _mm256_permute_ps(v, 0xF5);  // h = 1: (x0 x0 x2 x2), (x1 x1 x3 x3)
    return _mm256_blend_ps(_mm256_add_ps(a, b), _mm256_sub_ps(a, b), 0xAA);
}

// Stages h = 4, 2, 1 of eight consecutive elements (one block of 8, or the last stages of a larger block).
static inline __m256 fwht8_tail(__m256 v) {
    __m256 a = _mm256_permute2f128_ps(v, v, 0x00), b = _mm256_permute2f128_ps(v, v, 0x11);  // h = 4
    v = _mm256_blend_ps(_mm256_add_ps(a, b), _mm256_sub_ps(a, b), 0xF0);
    return fwht_pairs8(v, 4);
}

// Eight consecutive values of x transformed in blocks of 1, 2 or 4 (block 1: unchanged, as the scalar twin,
// which neither scales nor transforms; else scaled by vsc, then the stages).
static inline __m256 small_transform8(const float *x, int block, __m256 vsc) {
    __m256 v = _mm256_loadu_ps(x);
    return block == 1 ? v : fwht_pairs8(_mm256_mul_ps(v, vsc), block);
}

// One stage h (>= 8) of a block of ``block`` floats, src -> dst (may alias): pairs (i, i + h) -> (a + b, a - b).
static inline void stage2(const float *src, float *dst, int block, int h) {
    for (int base = 0; base < block; base += 2 * h)
        for (int i = 0; i < h; i += 8) {
            __m256 a = _mm256_loadu_ps(src + base + i), b = _mm256_loadu_ps(src + base + h + i);
            _mm256_storeu_ps(dst + base + i, _mm256_add_ps(a, b));
            _mm256_storeu_ps(dst + base + h + i, _mm256_sub_ps(a, b));
        }
}

// Stages h and h/2 (h/2 >= 8) in one pass, src -> dst (may alias): the four values i, i + h/2, i + h,
// i + 3h/2 stay in registers between the two stages, which pair exactly as two separate passes would (stage h:
// (a0, a2), (a1, a3); stage h/2: the sums, then the differences), so the values are identical. ``vsc``: when
// not NULL, the values are scaled as they are loaded (the first stage of a transform: x * sc, then stages).
static inline void stage4(const float *src, float *dst, int block, int h, const __m256 *vsc) {
    const int q = h / 2;
    for (int base = 0; base < block; base += 2 * h)
        for (int i = 0; i < q; i += 8) {
            const float *s0 = src + base + i;
            __m256 a0 = _mm256_loadu_ps(s0), a1 = _mm256_loadu_ps(s0 + q);
            __m256 a2 = _mm256_loadu_ps(s0 + h), a3 = _mm256_loadu_ps(s0 + h + q);
            if (vsc) {
                a0 = _mm256_mul_ps(a0, *vsc), a1 = _mm256_mul_ps(a1, *vsc);
                a2 = _mm256_mul_ps(a2, *vsc), a3 = _mm256_mul_ps(a3, *vsc);
            }
            __m256 b0 = _mm256_add_ps(a0, a2), b2 = _mm256_sub_ps(a0, a2);
            __m256 b1 = _mm256_add_ps(a1, a3), b3 = _mm256_sub_ps(a1, a3);
            float *d0 = dst + base + i;
            _mm256_storeu_ps(d0, _mm256_add_ps(b0, b1));
            _mm256_storeu_ps(d0 + q, _mm256_sub_ps(b0, b1));
            _mm256_storeu_ps(d0 + h, _mm256_add_ps(b2, b3));
            _mm256_storeu_ps(d0 + h + q, _mm256_sub_ps(b2, b3));
        }
}

// The stages h >= 8 of a block of ``block`` >= 8 floats in place (two at a time where possible); the
// consumer applies h = 4, 2, 1 per register with fwht8_tail.
static inline void stages_inplace(float *buf, int block, int h) {
    for (; h >= 16; h /= 4) stage4(buf, buf, block, h, NULL);
    if (h == 8) stage2(buf, buf, block, 8);
}

// buf <- x * sc with the stages h >= 8 applied (block >= 8; the first pass reads x and scales on load).
static inline void stages_from(const float *x, float *buf, int block, __m256 vsc) {
    int h = block / 2;
    if (h >= 16) {
        stage4(x, buf, block, h, &vsc);
        stages_inplace(buf, block, h / 4);
        return;
    }
    for (int j = 0; j < block; j += 8) _mm256_storeu_ps(buf + j, _mm256_mul_ps(_mm256_loadu_ps(x + j), vsc));
    if (h == 8) stage2(buf, buf, block, 8);
}

// In-place FWHT of one block of ``block`` >= 8 floats (a power of two), the scaled input already in buf.
static void fwht_avx2(float *buf, int block) {
    stages_inplace(buf, block, block / 2);
    for (int j = 0; j < block; j += 8) _mm256_storeu_ps(buf + j, fwht8_tail(_mm256_loadu_ps(buf + j)));
}

// 8 transformed values -> clamped codes c (as floats) and dq = d(x_hat)/d(step); the twin of quant_one.
static inline __m256 quant_x8(__m256 x, __m256 vstep, __m256 *dq) {
    const __m256 lo = _mm256_set1_ps(-8.0f), hi = _mm256_set1_ps(7.0f);
    __m256 v = _mm256_div_ps(x, vstep);
    __m256 q = _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // c = q < -8 ? -8 : (q > 7 ? 7 : q)
    __m256 c = _mm256_blendv_ps(q, hi, _mm256_cmp_ps(q, hi, _CMP_GT_OQ));
    c = _mm256_blendv_ps(c, lo, _mm256_cmp_ps(q, lo, _CMP_LT_OQ));
    // dq = q == c ? q - v : c
    *dq = _mm256_blendv_ps(c, _mm256_sub_ps(q, v), _mm256_cmp_ps(q, c, _CMP_EQ_OQ));
    return c;
}

static inline void store_codes8(__m256 c, int8_t *codes) {
    __m256i i32 = _mm256_cvttps_epi32(c);
    __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64((__m128i *)codes, _mm_packs_epi16(i16, i16));
}

static inline int8_t quant_one(float x, float step, float *dq) {
    float v = x / step;
    float q = rintf(v);
    float c = q < -8.0f ? -8.0f : (q > 7.0f ? 7.0f : q);
    *dq = (q == c) ? q - v : c;
    return (int8_t)c;
}

// buf <- the block-Hadamard transform of the block at x, block < 8 (scalar; blocks >= 8 use stages_from and
// finish each register with fwht8_tail where it is consumed).
static inline void transform_block_scalar(const float *x, float *buf, int block, float sc) {
    memcpy(buf, x, (size_t)block * sizeof(float));
    if (block > 1) fwht_scalar(buf, block, sc);
}

// codes (rows, d) int8 in [-8, 7] and (unless dqds is NULL) dqds = d(x_hat)/d(step) of the
// block-Hadamard-transformed x. Returns 0, or -1 for an invalid block.
int lowbit_train_hq_quant(const float *x, long rows, long d, int block, float step, int8_t *codes,
                          float *dqds, int nthreads) {
    if (!valid_block(d, block)) return -1;
    const float sc = (float)(1.0 / sqrt((double)block));
#pragma omp parallel num_threads(nthreads) if (rows * d > 65536)
    {
        float buf[LB_TRAIN_MAX_BLOCK], dqb[8];
        const __m256 vstep = _mm256_set1_ps(step), vsc = _mm256_set1_ps(sc);
#pragma omp for schedule(dynamic, ROW_CHUNK)
        for (long r = 0; r < rows; r++) {
            long k0 = 0;
            if (block < 8)  // blocks of 1, 2, 4: eight values (whole blocks) per register, the rest scalar
                for (; k0 + 8 <= d; k0 += 8) {
                    const long off = r * d + k0;
                    __m256 dq;
                    store_codes8(quant_x8(small_transform8(x + off, block, vsc), vstep, &dq), codes + off);
                    if (dqds) _mm256_storeu_ps(dqds + off, dq);
                }
            for (; k0 < d; k0 += block) {
                const long off = r * d + k0;
                if (block >= 8) {
                    stages_from(x + off, buf, block, vsc);
                    for (int j = 0; j < block; j += 8) {
                        __m256 dq;
                        __m256 v = fwht8_tail(_mm256_loadu_ps(buf + j));
                        store_codes8(quant_x8(v, vstep, &dq), codes + off + j);
                        if (dqds) _mm256_storeu_ps(dqds + off + j, dq);
                    }
                } else {
                    transform_block_scalar(x + off, buf, block, sc);
                    for (int j = 0; j < block; j++) {
                        codes[off + j] = quant_one(buf[j], step, dqb);
                        if (dqds) dqds[off + j] = dqb[0];
                    }
                }
            }
        }
    }
    return 0;
}

// In place: g <- H (g * mask), mask = |dqds| <= 0.5; *step_grad_sum = sum(g * dqds) (before masking), with
// dqds recomputed from the forward input x and step (the operations of lowbit_train_hq_quant, so the same
// values): the forward allocates no dqds (4 bytes per element of fresh memory) and saves x, which a float
// linear layer saves as well. The mask multiplies by 1.0 or 0.0 (as the torch path does), so -x * 0 keeps
// its negative zero.
int lowbit_train_hq_grad_x(float *g, const float *x, float step, long rows, long d, int block,
                           double *step_grad_sum, int nthreads) {
    if (!valid_block(d, block)) return -1;
    const float sc = (float)(1.0 / sqrt((double)block));
    const long nchunks = (rows + ROW_CHUNK - 1) / ROW_CHUNK;
    double *partial = (double *)malloc((size_t)(nchunks > 0 ? nchunks : 1) * sizeof(double));
    if (!partial) return -2;
#pragma omp parallel num_threads(nthreads) if (rows * d > 65536)
    {
        float xb[LB_TRAIN_MAX_BLOCK];
        const __m256 vsc = _mm256_set1_ps(sc), vstep = _mm256_set1_ps(step);
        const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
        const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
#pragma omp for schedule(dynamic, 1)
        for (long c = 0; c < nchunks; c++) {
            const long r1 = (c + 1) * ROW_CHUNK < rows ? (c + 1) * ROW_CHUNK : rows;
            __m256d acc0 = _mm256_setzero_pd(), acc1 = _mm256_setzero_pd();
            double part = 0.0;
            for (long r = c * ROW_CHUNK; r < r1; r++) {
                long k0 = 0;
                if (block < 8)  // blocks of 1, 2, 4: eight values (whole blocks) per register, the rest scalar
                    for (; k0 + 8 <= d; k0 += 8) {
                        float *buf = g + r * d + k0;
                        __m256 dv;
                        quant_x8(small_transform8(x + r * d + k0, block, vsc), vstep, &dv);
                        __m256 gv = _mm256_loadu_ps(buf);
                        __m256 p = _mm256_mul_ps(gv, dv);
                        acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
                        acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
                        __m256 keep = _mm256_cmp_ps(_mm256_and_ps(dv, abs_mask), half, _CMP_LE_OQ);
                        __m256 m = _mm256_mul_ps(gv, _mm256_and_ps(keep, one));
                        _mm256_storeu_ps(buf, block == 1 ? m : fwht_pairs8(_mm256_mul_ps(m, vsc), block));
                    }
                for (; k0 < d; k0 += block) {
                    float *buf = g + r * d + k0;
                    if (block >= 8) {
                        stages_from(x + r * d + k0, xb, block, vsc);
                        for (int j = 0; j < block; j += 8) {
                            __m256 dv;
                            quant_x8(fwht8_tail(_mm256_loadu_ps(xb + j)), vstep, &dv);
                            __m256 gv = _mm256_loadu_ps(buf + j);
                            __m256 p = _mm256_mul_ps(gv, dv);  // float product, then widened (as the scalar)
                            acc0 = _mm256_add_pd(acc0, _mm256_cvtps_pd(_mm256_castps256_ps128(p)));
                            acc1 = _mm256_add_pd(acc1, _mm256_cvtps_pd(_mm256_extractf128_ps(p, 1)));
                            __m256 keep = _mm256_cmp_ps(_mm256_and_ps(dv, abs_mask), half, _CMP_LE_OQ);
                            _mm256_storeu_ps(buf + j,
                                             _mm256_mul_ps(_mm256_mul_ps(gv, _mm256_and_ps(keep, one)), vsc));
                        }
                        fwht_avx2(buf, block);
                    } else {
                        transform_block_scalar(x + r * d + k0, xb, block, sc);
                        for (int j = 0; j < block; j++) {
                            float dq;
                            quant_one(xb[j], step, &dq);
                            part += (double)(buf[j] * dq);
                            buf[j] = buf[j] * (fabsf(dq) <= 0.5f ? 1.0f : 0.0f);
                        }
                        if (block > 1) fwht_scalar(buf, block, sc);
                    }
                }
            }
            double lanes[4];
            _mm256_storeu_pd(lanes, _mm256_add_pd(acc0, acc1));
            partial[c] = part + ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3]));
        }
    }
    double total = 0.0;
    for (long c = 0; c < nchunks; c++) total += partial[c];  // chunk order: the same for any thread count
    free(partial);
    *step_grad_sum = total;
    return 0;
}
