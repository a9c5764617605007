// Operand packing for the integer GEMM kernels (gemm_kernels.c): strided int8 source -> panel-major buffers.
//
// Every source is addressed as src[r * s_row + k * s_k] for r < R rows (M for A, N for B) and k < K, so the
// three product layouts (nt, nn, tn) and any torch strides pack without a transposed copy.
//
// Layouts (LOWBIT_MR = 6 rows per A panel, LOWBIT_NR = 16 columns per B panel):
//   u8  (A side, kinds 0/1): Kp = K rounded up to 4; byte (r, k) of panel p at
//        p*MR*Kp + (k/4)*MR*4 + (r%MR)*4 + k%4, holding (uint8)(src + off); padding holds off.
//   s8  (B side, kinds 0/1): byte (c, k) of panel q at q*NR*Kp + (k/4)*NR*4 + (c%NR)*4 + k%4; padding 0.
//        colsum[c] = sum_k src(c, k) (the zero-point correction off * colsum is subtracted in the epilogue).
//   s16 (both sides, kind 2): Kp = K rounded up to 2; int16 (r, k) of a panel of P rows at
//        p*P*Kp + (k/2)*P*2 + (r%P)*2 + k%2; padding 0.
#pragma GCC target("avx2")  // only called after the AVX2 check (lowbit/ops/native.py)
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gemm.h"

// min and max of an int8 matrix (any strides); out[0] = min, out[1] = max (0, 0 when empty).
void lowbit_minmax_i8(const int8_t *src, long s_row, long s_k, int R, int K, int32_t *out, int nthreads) {
    int mn = 127, mx = -128;
    if ((long)R * K == 0) {
        out[0] = 0;
        out[1] = 0;
        return;
    }
    if (s_k == 1) {
#pragma omp parallel for num_threads(nthreads) reduction(min : mn) reduction(max : mx) schedule(static) \
    if ((long)R * K > LOWBIT_PAR_BYTES)
        for (int r = 0; r < R; r++) {
            const int8_t *row = src + (long)r * s_row;
            int lo = 127, hi = -128;
            for (int k = 0; k < K; k++) {  // auto-vectorised byte min/max
                lo = row[k] < lo ? row[k] : lo;
                hi = row[k] > hi ? row[k] : hi;
            }
            mn = lo < mn ? lo : mn;
            mx = hi > mx ? hi : mx;
        }
    } else {
#pragma omp parallel for num_threads(nthreads) reduction(min : mn) reduction(max : mx) schedule(static) \
    if ((long)R * K > LOWBIT_PAR_BYTES)
        for (int k = 0; k < K; k++) {
            const int8_t *col = src + (long)k * s_k;
            int lo = 127, hi = -128;
            for (int r = 0; r < R; r++) {
                int8_t v = col[(long)r * s_row];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            mn = lo < mn ? lo : mn;
            mx = hi > mx ? hi : mx;
        }
    }
    out[0] = mn;
    out[1] = mx;
}

// Fast paths of pack_panel for a panel whose rows (s_k == 1) or columns (s_row == 1) are contiguous; they fill
// k < (returned value) for all P rows (rows >= `rows` get `pad`) and leave the tail (and every other stride
// pattern) to the generic loop.
static int fast_bytes(const int8_t *src, long s_row, long s_k, int r0, int rows, int P, int K, int off, int pad,
                      uint8_t *d8) {
    int kend = K / 4 * 4;
    uint32_t padv = (uint32_t)(uint8_t)pad * 0x01010101u;
    if (s_k == 1) {  // 4-byte groups, byte-wise add of off without carries between bytes (SWAR)
        uint32_t o = (uint32_t)(uint8_t)off * 0x01010101u;
        for (int kb = 0; kb < kend; kb += 4) {
            for (int r = 0; r < P; r++) {
                uint32_t v = padv;
                if (r < rows) {
                    memcpy(&v, src + (long)(r0 + r) * s_row + kb, 4);
                    v = ((v & 0x7F7F7F7Fu) + (o & 0x7F7F7F7Fu)) ^ ((v ^ o) & 0x80808080u);
                }
                memcpy(d8 + (long)kb * P + (long)r * 4, &v, 4);
            }
        }
        return kend;
    }
    if (s_row == 1) {  // transposed source: the panel's rows are contiguous within each k
        for (int kb = 0; kb < kend; kb += 4)
            for (int g = 0; g < 4; g++) {
                const int8_t *s = src + (long)(kb + g) * s_k + r0;
                for (int r = 0; r < P; r++)
                    d8[(long)kb * P + r * 4 + g] = r < rows ? (uint8_t)(s[r] + off) : (uint8_t)pad;
            }
        return kend;
    }
    return 0;
}

static int fast_int16(const int8_t *src, long s_row, long s_k, int r0, int P, int K, int16_t *d16) {
    int kend = K / 2 * 2;
    if (s_k == 1) {
        for (int r = 0; r < P; r++) {
            const int8_t *s = src + (long)(r0 + r) * s_row;
            for (int kb = 0; kb < kend; kb += 2) {
                d16[(long)kb * P + r * 2] = s[kb];
                d16[(long)kb * P + r * 2 + 1] = s[kb + 1];
            }
        }
        return kend;
    }
    if (s_row == 1) {
        for (int kb = 0; kb < kend; kb += 2)
            for (int g = 0; g < 2; g++) {
                const int8_t *s = src + (long)(kb + g) * s_k + r0;
                for (int r = 0; r < P; r++) d16[(long)kb * P + r * 2 + g] = s[r];
            }
        return kend;
    }
    return 0;
}

// One panel of `rows` rows (of P) starting at row r0: the shared gather of every layout, element size esz.
// value(v) = v + off for u8 (esz 1, signed off), v for s8, (int16)v for s16 (esz 2); pad = value of rows/k
// beyond the matrix. kg = k-group (4 for byte layouts, 2 for int16).
static void pack_panel(const int8_t *src, long s_row, long s_k, int r0, int rows, int P, int K, int Kp, int kg,
                       int esz, int off, int pad, void *dst_panel) {
    uint8_t *d8 = (uint8_t *)dst_panel;
    int16_t *d16 = (int16_t *)dst_panel;
    int kb0 = 0;
    if (esz == 1)
        kb0 = fast_bytes(src, s_row, s_k, r0, rows, P, K, off, pad, d8);
    else if (rows == P)
        kb0 = fast_int16(src, s_row, s_k, r0, P, K, d16);
    for (int kb = kb0; kb < Kp; kb += kg) {
        for (int r = 0; r < P; r++) {
            const int8_t *s = src + (long)(r0 + r) * s_row + (long)kb * s_k;
            long base = (long)kb * P + (long)r * kg;
            for (int g = 0; g < kg; g++) {
                int k = kb + g;
                int v = (r < rows && k < K) ? s[(long)g * s_k] + off : pad;
                if (esz == 1)
                    d8[base + g] = (uint8_t)v;
                else
                    d16[base + g] = (int16_t)v;
            }
        }
    }
}

// A side of kinds 0/1: R rows -> u8 panels of MR rows, values src + off.
void lowbit_pack_u8(const int8_t *src, long s_row, long s_k, int R, int K, int off, uint8_t *dst, int nthreads) {
    int Kp = LOWBIT_ROUND_UP(K, 4), npan = LOWBIT_CEIL_DIV(R, LOWBIT_MR);
#pragma omp parallel for num_threads(nthreads) schedule(static) if ((long)R * K > LOWBIT_PAR_BYTES)
    for (int p = 0; p < npan; p++) {
        int rows = R - p * LOWBIT_MR < LOWBIT_MR ? R - p * LOWBIT_MR : LOWBIT_MR;
        pack_panel(src, s_row, s_k, p * LOWBIT_MR, rows, LOWBIT_MR, K, Kp, 4, 1, off, off,
                   dst + (long)p * LOWBIT_MR * Kp);
    }
}

// R vectors (rows of src) -> s8 panels of `width` (no shift; padding 0), plus each vector's sum over K.
static void pack_s8_with_sums(const int8_t *src, long s_row, long s_k, int R, int K, int width, int8_t *dst,
                              int32_t *sums, int nthreads) {
    int Kp = LOWBIT_ROUND_UP(K, 4), npan = LOWBIT_CEIL_DIV(R, width);
#pragma omp parallel for num_threads(nthreads) schedule(static) if ((long)R * K > LOWBIT_PAR_BYTES)
    for (int q = 0; q < npan; q++) {
        int n = R - q * width < width ? R - q * width : width;
        pack_panel(src, s_row, s_k, q * width, n, width, K, Kp, 4, 1, 0, 0, dst + (long)q * width * Kp);
        for (int c = 0; c < n; c++) {
            const int8_t *v = src + (long)(q * width + c) * s_row;
            int32_t sum = 0;
            for (int k = 0; k < K; k++) sum += v[(long)k * s_k];
            sums[q * width + c] = sum;
        }
    }
}

// B side of kinds 0/1: R columns -> s8 panels of NR columns, plus colsum (R,).
void lowbit_pack_s8(const int8_t *src, long s_row, long s_k, int R, int K, int8_t *dst, int32_t *colsum,
                    int nthreads) {
    pack_s8_with_sums(src, s_row, s_k, R, K, LOWBIT_NR, dst, colsum, nthreads);
}

// Kind 3, A side: R rows -> s8 panels of MR rows (the u8 layout with no shift; padding 0), plus the row sums
// rowsum (R,) that undo B's shift in the epilogue.
void lowbit_pack_s8_rows(const int8_t *src, long s_row, long s_k, int R, int K, int8_t *dst, int32_t *rowsum,
                         int nthreads) {
    pack_s8_with_sums(src, s_row, s_k, R, K, LOWBIT_MR, dst, rowsum, nthreads);
}

// Kind 3, B side: R columns -> u8 panels of NR columns, values src + off (off = 8 for codes in [-8, 7]).
void lowbit_pack_u8_cols(const int8_t *src, long s_row, long s_k, int R, int K, int off, uint8_t *dst,
                         int nthreads) {
    int Kp = LOWBIT_ROUND_UP(K, 4), npan = LOWBIT_CEIL_DIV(R, LOWBIT_NR);
#pragma omp parallel for num_threads(nthreads) schedule(static) if ((long)R * K > LOWBIT_PAR_BYTES)
    for (int q = 0; q < npan; q++) {
        int cols = R - q * LOWBIT_NR < LOWBIT_NR ? R - q * LOWBIT_NR : LOWBIT_NR;
        pack_panel(src, s_row, s_k, q * LOWBIT_NR, cols, LOWBIT_NR, K, Kp, 4, 1, off, off,
                   dst + (long)q * LOWBIT_NR * Kp);
    }
}

// Either side of kind 2: R rows -> int16 panels of P rows (P = MR for A, NR for B).
void lowbit_pack_s16(const int8_t *src, long s_row, long s_k, int R, int K, int P, int16_t *dst, int32_t *unused,
                     int nthreads) {
    (void)unused;
    int Kp = LOWBIT_ROUND_UP(K, 2), npan = LOWBIT_CEIL_DIV(R, P);
#pragma omp parallel for num_threads(nthreads) schedule(static) if ((long)R * K > LOWBIT_PAR_BYTES)
    for (int p = 0; p < npan; p++) {
        int rows = R - p * P < P ? R - p * P : P;
        pack_panel(src, s_row, s_k, p * P, rows, P, K, Kp, 2, 2, 0, 0, dst + (long)p * P * Kp);
    }
}

// Unpack n bytes of two's-complement nibbles (element 2i in the low nibble) into 2n int8 codes in [-8, 7].
void lowbit_unpack_int4(const uint8_t *src, long n, int8_t *dst, int nthreads) {
#pragma omp parallel for num_threads(nthreads) schedule(static) if (n > LOWBIT_PAR_BYTES)
    for (long i = 0; i < n; i++) {
        uint8_t b = src[i];
        dst[2 * i] = (int8_t)(((b & 15) ^ 8) - 8);
        dst[2 * i + 1] = (int8_t)(((b >> 4) ^ 8) - 8);
    }
}
