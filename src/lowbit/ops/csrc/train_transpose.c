// Transposed copy of an int8 matrix for lowbit.training: the backward products read their operands along the
// reduction dim (the token dim of X and of the merged gradient code, the output dim of W), and the GEMM packs
// contiguous rows ~10x faster than strided columns; one blocked transpose per operand is cheaper than the
// strided pack. 16x16 byte tiles through four SSE2 unpack stages; ragged edges copied byte by byte.
#pragma GCC target("avx2")
#include <immintrin.h>
#include <stdint.h>

#define TILE 16
#define BLOCK 128

// dst (ld rows apart) <- the transpose of the 16x16 tile at src (ls bytes apart).
static void transpose16(const int8_t *src, long ls, int8_t *dst, long ld) {
    __m128i r[16], a[16], b[16], c[16];
    for (int i = 0; i < 16; i++) r[i] = _mm_loadu_si128((const __m128i *)(src + i * ls));
    for (int i = 0; i < 8; i++) {  // a[2i]: columns 0-7 of rows 2i, 2i+1 interleaved; a[2i+1]: columns 8-15
        a[2 * i] = _mm_unpacklo_epi8(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm_unpackhi_epi8(r[2 * i], r[2 * i + 1]);
    }
    for (int g = 0; g < 4; g++) {  // b[4g + q]: columns 4q..4q+3, each as the 4 bytes of rows 4g..4g+3
        b[4 * g] = _mm_unpacklo_epi16(a[4 * g], a[4 * g + 2]);
        b[4 * g + 1] = _mm_unpackhi_epi16(a[4 * g], a[4 * g + 2]);
        b[4 * g + 2] = _mm_unpacklo_epi16(a[4 * g + 1], a[4 * g + 3]);
        b[4 * g + 3] = _mm_unpackhi_epi16(a[4 * g + 1], a[4 * g + 3]);
    }
    for (int h = 0; h < 2; h++)  // c[8h + j]: columns 2j, 2j+1, each as the 8 bytes of rows 8h..8h+7
        for (int q = 0; q < 4; q++) {
            c[8 * h + 2 * q] = _mm_unpacklo_epi32(b[8 * h + q], b[8 * h + 4 + q]);
            c[8 * h + 2 * q + 1] = _mm_unpackhi_epi32(b[8 * h + q], b[8 * h + 4 + q]);
        }
    for (int j = 0; j < 8; j++) {  // column 2j, 2j+1: rows 0-7 from c[j], rows 8-15 from c[8 + j]
        _mm_storeu_si128((__m128i *)(dst + (2 * j) * ld), _mm_unpacklo_epi64(c[j], c[8 + j]));
        _mm_storeu_si128((__m128i *)(dst + (2 * j + 1) * ld), _mm_unpackhi_epi64(c[j], c[8 + j]));
    }
}

// The transpose of src rows [r0, r1) x columns [c0, c1) into dst: 16x16 tiles stored directly, then bytes.
static void transpose_region(const int8_t *src, long rows, long cols, long r0, long r1, long c0, long c1,
                             int8_t *dst) {
    const long r16 = r0 + (r1 - r0) / TILE * TILE, c16 = c0 + (c1 - c0) / TILE * TILE;
    for (long r = r0; r < r16; r += TILE)
        for (long c = c0; c < c16; c += TILE) transpose16(src + r * cols + c, cols, dst + c * rows + r, rows);
    for (long r = r0; r < r1; r++)
        for (long c = (r < r16 ? c16 : c0); c < c1; c++) dst[c * rows + r] = src[r * cols + c];
}

// dst (cols, rows) <- src (rows, cols), both contiguous. Blocks of 128 x 128: 64 tiles into a local buffer
// (16 KiB, in L1), then 128 whole destination runs of 128 bytes. Storing tiles straight to a destination whose
// rows are a multiple of 4 KiB apart puts all 16 stores of a tile in one L1 set (measured 3x slower for 4096
// rows); the large block also touches fewer pages per byte. Edges: transpose_region.
void lowbit_train_transpose_i8(const int8_t *src, long rows, long cols, int8_t *dst, int nthreads) {
    const long rfull = rows / BLOCK * BLOCK, cfull = cols / BLOCK * BLOCK;
    const long nblocks = rows / BLOCK + (rows % BLOCK != 0);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (rows * cols > (1L << 18))
    for (long blk = 0; blk < nblocks; blk++) {
        const long r0 = blk * BLOCK;
        if (r0 >= rfull) {  // the ragged last rows
            transpose_region(src, rows, cols, r0, rows, 0, cols, dst);
            continue;
        }
        int8_t buf[BLOCK * BLOCK] __attribute__((aligned(64)));
        for (long c0 = 0; c0 < cfull; c0 += BLOCK) {
            for (int tc = 0; tc < BLOCK; tc += TILE)
                for (int tr = 0; tr < BLOCK; tr += TILE)
                    transpose16(src + (r0 + tr) * cols + c0 + tc, cols, buf + tc * BLOCK + tr, BLOCK);
            for (int c = 0; c < BLOCK; c++)
                for (int q = 0; q < BLOCK; q += 32)
                    _mm256_storeu_si256((__m256i *)(dst + (c0 + c) * rows + r0 + q),
                                        _mm256_load_si256((const __m256i *)(buf + c * BLOCK + q)));
        }
        transpose_region(src, rows, cols, r0, r0 + BLOCK, cfull, cols, dst);  // the ragged last columns
    }
}
