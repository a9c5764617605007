// Shared constants of the integer GEMM kernels (gemm_pack.c, gemm_kernels.c, quant_rows.c).
#ifndef LOWBIT_GEMM_H
#define LOWBIT_GEMM_H

#define LOWBIT_MR 6   // rows of a micro-tile (A panel height)
#define LOWBIT_NR 16  // columns of a micro-tile (B panel width)
#define LOWBIT_CEIL_DIV(a, b) (((a) + (b) - 1) / (b))
#define LOWBIT_ROUND_UP(a, b) (LOWBIT_CEIL_DIV(a, b) * (b))

// Kernel kinds (the Python planner in lowbit/ops/native_gemm.py chooses one per call):
//   0: u8 x s8 -> vpmaddubsw -> vpmaddwd(1) -> int32. Exact when every pair sum fits int16: A shifted to
//      u8 by off with B in [-64, 64] (off 128), or A in [-64, 63] shifted by off 64 with any int8 B.
//   1: u4 x s4 (A + 8 in [0, 15], B in [-8, 7]) -> vpmaddubsw -> int16 accumulate for at most
//      LOWBIT_I4_KC k (pair sums |.| <= 240, 128 steps * 240 = 30720 < 32767) -> vpmaddwd(1) -> int32.
//   2: s16 x s16 -> vpmaddwd -> int32: exact for every int8 code (the full-range 8-bit path).
//   3: s8 x u4 (any int8 A, B + 8 in [0, 15]; the unsigned operand of vpmaddubsw is B) -> int16 accumulate for
//      at most LOWBIT_S8U4_KC k (pair sums |.| <= 2 * 128 * 15 = 3840, 8 steps * 3840 = 30720 < 32767) ->
//      vpmaddwd(1) -> int32. The shift is undone per row: C[i, j] = acc - 8 * rowsum_A[i] (wrapping int32,
//      exact whenever the true result fits int32: K * 128 * 8 <= 2**31 - 1, i.e. K <= 2097151, above the
//      public MAX_K[8] = 131071). Made for 8-bit x 4-bit products (the INT4 training backward's merged
//      bit-split gradient codes x INT4 codes).
//   4: u8 x s8 -> vpdpbusd -> int32 (AVX-512 VNNI, gemm_vnni.c): the kind 0 layouts, exact for every int8 code
//      with A shifted by off 128 (vpdpbusd sums four exact u8 x s8 products into int32 without saturating);
//      the micro-kernel covers LOWBIT_VNNI_NB B panels per call.
//   5: bf16 x bf16 -> vdpbf16ps -> float32 (AVX512-BF16, gemm_bf16.c): the kind 2 panel layout with bf16 bits
//      (lowbit_pack_bf16), float output only; exact products of FP8 values, float32 sums in k order.
#define LOWBIT_KIND_VNNI 4
#define LOWBIT_KIND_BF16 5
#define LOWBIT_VNNI_NB 4
#define LOWBIT_I4_KC 512
#define LOWBIT_S8U4_KC 32

// Fork threads only when there is enough work: waking a second thread costs microseconds when idle and
// up to a scheduler time slice when the other core is busy, which dwarfs small products.
#define LOWBIT_PAR_BYTES (1L << 18)      // packing / range / quantization passes: elements touched
#define LOWBIT_PAR_MACS (1L << 22)       // GEMM: multiply-accumulates

#include <stdint.h>
// How activation rows are quantized: sstat == 0 -> per-row absmax scale, codes in [-qmax, qmax]; sstat > 0 ->
// the one static scale sstat for every row, codes clamp(round_half_even(x / sstat), qlo, qmax).
typedef struct {
    int qmax, qlo;
    float sstat;
} lb_actq;
// One A panel quantized from float rows (quant_rows.c); used by the fused quantize + GEMM (gemm_kernels.c).
long lowbit_quant_panel(const float *x, long ldx, int r0, int rows, int K, const lb_actq *q, int off, int esz,
                        int8_t *rowbuf, void *dst, float *scale);

// MR x (nb * NR) block of kind 4 into nb consecutive 6 x 16 tiles (gemm_vnni.c); first: store, else add.
void lowbit_vnni_tiles(const void *a, const void *b, long bstride, long steps, int nb, int32_t *tile, int first);
// MR x (nb * NR) block of kind 5 into nb consecutive 6 x 16 float32 tiles (gemm_bf16.c), stored.
void lowbit_bf16_tiles(const void *a, const void *b, long bstride, long steps, int nb, float *tile);

#endif
