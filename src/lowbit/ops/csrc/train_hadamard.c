// Fused kernels of lowbit.training (Hadamard quantizer of Xi et al.): block FWHT + LSQ INT4 quantize, and its
// backward (STE clip mask + LSQ step-gradient sum + inverse FWHT), one pass over each row. ``nthreads``: torch's
// intra-op thread count, passed per call.
//
// Bit-exact with the PyTorch path (lowbit/training/hadamard_quant.py block_transform + lsq.py lsq_quantize):
// the same float32 operations in the same order — multiply by (float)(1/sqrt(block)), then log2(block)
// add/subtract stages pairing elements h = block/2, ..., 1 apart; v = x / step (a true division);
// round half-to-even (rintf in the default rounding mode; vectorizes, unlike nearbyintf); no multiply-add appears, so nothing is contracted.
// The step-gradient sum is accumulated in double (not bit-exact with torch's float32 sum; tested to 1e-6).
#pragma GCC target("avx2")  // no "fma": nothing may be contracted
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LB_TRAIN_MAX_BLOCK 4096

static void fwht_block(float *restrict buf, float *restrict tmp, int block, float sc) {
    for (int j = 0; j < block; j++) buf[j] = buf[j] * sc;
    float *src = buf, *dst = tmp;
    for (int h = block / 2; h >= 1; h /= 2) {
        for (int base = 0; base < block; base += 2 * h) {
            for (int i = 0; i < h; i++) {
                float a = src[base + i], b = src[base + h + i];
                dst[base + i] = a + b;
                dst[base + h + i] = a - b;
            }
        }
        float *t = src; src = dst; dst = t;
    }
    if (src != buf) memcpy(buf, src, (size_t)block * sizeof(float));
}

// codes (rows, d) int8 in [-8, 7] and dqds = d(x_hat)/d(step) of the block-Hadamard-transformed x.
// Returns 0, or -1 for an invalid block.
int lowbit_train_hq_quant(const float *x, long rows, long d, int block, float step, int8_t *codes,
                          float *dqds, int nthreads) {
    if (block < 1 || block > LB_TRAIN_MAX_BLOCK || (block & (block - 1)) || d % block) return -1;
    const float sc = (float)(1.0 / sqrt((double)block));
#pragma omp parallel num_threads(nthreads)
    {
        float buf[LB_TRAIN_MAX_BLOCK], tmp[LB_TRAIN_MAX_BLOCK];
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            for (long k0 = 0; k0 < d; k0 += block) {
                const long off = r * d + k0;
                memcpy(buf, x + off, (size_t)block * sizeof(float));
                if (block > 1) fwht_block(buf, tmp, block, sc);
                for (int j = 0; j < block; j++) {
                    float v = buf[j] / step;
                    float q = rintf(v);
                    float c = q < -8.0f ? -8.0f : (q > 7.0f ? 7.0f : q);
                    codes[off + j] = (int8_t)c;
                    dqds[off + j] = (q == c) ? q - v : c;
                }
            }
        }
    }
    return 0;
}

// In place: g <- H (g * mask), mask = |dqds| <= 0.5; *step_grad_sum = sum(g * dqds) (before masking).
int lowbit_train_hq_grad(float *g, const float *dqds, long rows, long d, int block, double *step_grad_sum,
                         int nthreads) {
    if (block < 1 || block > LB_TRAIN_MAX_BLOCK || (block & (block - 1)) || d % block) return -1;
    const float sc = (float)(1.0 / sqrt((double)block));
    double total = 0.0;
#pragma omp parallel reduction(+ : total) num_threads(nthreads)
    {
        float tmp[LB_TRAIN_MAX_BLOCK];
#pragma omp for schedule(static)
        for (long r = 0; r < rows; r++) {
            for (long k0 = 0; k0 < d; k0 += block) {
                float *buf = g + r * d + k0;
                const float *dq = dqds + r * d + k0;
                for (int j = 0; j < block; j++) {
                    total += (double)(buf[j] * dq[j]);
                    buf[j] = buf[j] * (fabsf(dq[j]) <= 0.5f ? 1.0f : 0.0f);
                }
                if (block > 1) fwht_block(buf, tmp, block, sc);
            }
        }
    }
    *step_grad_sum = total;
    return 0;
}
