// Instruction-throughput probes for benchmarks/ceiling.py: the inner loop of a 6 x 16 GEMM micro-kernel of each
// kind, run over operands that stay in L1, so the loop's rate is the most a GEMM built on it can reach on one
// core. Built by ceiling.py with the system C compiler (gcc -O2 -mavx2 -mfma -shared -fPIC); not part of
// lowbit.
//
//   kind 0  FP32: 2 B loads, 6 vbroadcastss, 12 vfmadd231ps per k (96 MACs)      - a textbook sgemm loop
//   kind 1  INT4: 2 B loads, 6 vpbroadcastd, 12 vpmaddubsw + 12 vpaddw (384 MACs) - lowbit's u4 x s4 kernel
//   kind 2  INT8: the same with vpmaddwd(ones) + vpaddd instead of vpaddw         - lowbit's u8 x s7 kernel
//   kind 3  12 independent vfmadd231ps, no loads (the FMA unit's peak, 96 MACs)
//   kind 4  12 independent vpmaddubsw, no loads, no accumulation (384 MACs)
//   kind 5  12 independent vfmadd231ps on zmm, no loads (AVX-512 FMA peak, 192 MACs)
//   kind 6  lowbit's AVX-512 VNNI loop: 4 zmm B loads, 6 vpbroadcastd, 24 vpdpbusd per 4 k (1536 MACs)
//   kind 7  12 independent vpdpbusd on zmm, no loads (768 MACs)
// Kinds 5-7 are compiled for AVX-512 by function attribute; ceiling.py runs them only on CPUs that have it.
// probe(kind, reps) runs reps passes over 64 k-steps and returns the number of multiply-accumulates done.
#include <immintrin.h>
#include <stdint.h>

#define CLOB "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", \
             "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc"
#define STEPS 64

static float fa[6 * STEPS] __attribute__((aligned(64)));
static float fb[16 * STEPS] __attribute__((aligned(64)));
uint8_t lowbit_probe_ia[24 * STEPS] __attribute__((aligned(64)));
static int8_t ib[64 * STEPS] __attribute__((aligned(64)));
static const int16_t ones[16] __attribute__((aligned(32))) = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};

#define F_ROW(r, c0, c1)                                                                        \
    "vbroadcastss " #r "*4(%[a]),%%ymm14\n\t vfmadd231ps %%ymm12,%%ymm14,%%ymm" #c0 "\n\t"        \
    "vfmadd231ps %%ymm13,%%ymm14,%%ymm" #c1 "\n\t"
#define I4_ROW(r, c0, c1)                                                                       \
    "vpbroadcastd " #r "*4(%[a]),%%ymm14\n\t vpmaddubsw %%ymm12,%%ymm14,%%ymm15\n\t"             \
    "vpaddw %%ymm15,%%ymm" #c0 ",%%ymm" #c0 "\n\t vpmaddubsw %%ymm13,%%ymm14,%%ymm15\n\t"       \
    "vpaddw %%ymm15,%%ymm" #c1 ",%%ymm" #c1 "\n\t"
#define I8_ROW(r, c0, c1)                                                                       \
    "vpbroadcastd " #r "*4(%[a]),%%ymm14\n\t vpmaddubsw %%ymm12,%%ymm14,%%ymm15\n\t"             \
    "vpmaddwd (%[o]),%%ymm15,%%ymm15\n\t vpaddd %%ymm15,%%ymm" #c0 ",%%ymm" #c0 "\n\t"          \
    "vpmaddubsw %%ymm13,%%ymm14,%%ymm15\n\t vpmaddwd (%[o]),%%ymm15,%%ymm15\n\t"                \
    "vpaddd %%ymm15,%%ymm" #c1 ",%%ymm" #c1 "\n\t"
#define SIX(ROW) ROW(0, 0, 1) ROW(1, 2, 3) ROW(2, 4, 5) ROW(3, 6, 7) ROW(4, 8, 9) ROW(5, 10, 11)
#define LOOP(LOADB, ROW, ASTEP, BSTEP)                                                          \
    "1:\n\t" LOADB SIX(ROW) "add $" #BSTEP ",%[b]\n\t add $" #ASTEP ",%[a]\n\t dec %[n]\n\t jnz 1b\n\t"

int8_t lowbit_probe_vb[4 * 64 * STEPS] __attribute__((aligned(64)));
static volatile int sink;
int32_t lowbit_probe_vout[24 * 16] __attribute__((aligned(64)));

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
AVX512 static void fma512(long n) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0,
           c9 = c0, c10 = c0, c11 = c0;
    const __m512 a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
    for (long i = 0; i < n; i++) {
#define F5(c) c = _mm512_fmadd_ps(a, b, c);
        F5(c0) F5(c1) F5(c2) F5(c3) F5(c4) F5(c5) F5(c6) F5(c7) F5(c8) F5(c9) F5(c10) F5(c11)
    }
    sink = (int)_mm512_reduce_add_ps(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
}
AVX512 static void dpbusd_bare(long n) {
    __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0,
            c9 = c0, c10 = c0, c11 = c0;
    const __m512i a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    for (long i = 0; i < n; i++) {
#define D7(c) c = _mm512_dpbusd_epi32(c, a, b);
        D7(c0) D7(c1) D7(c2) D7(c3) D7(c4) D7(c5) D7(c6) D7(c7) D7(c8) D7(c9) D7(c10) D7(c11)
    }
    sink = _mm512_reduce_add_epi32(c0 + c1 + c2 + c3 + c4 + c5 + c6 + c7 + c8 + c9 + c10 + c11);
}
AVX512 static void vnni_loop(long n) {  // the 6 x 64 tile loop of csrc/gemm_vnni.c over L1-resident panels
    const __m512i z = _mm512_setzero_si512();
    __m512i c00 = z, c01 = z, c02 = z, c03 = z, c10 = z, c11 = z, c12 = z, c13 = z, c20 = z, c21 = z, c22 = z;
    __m512i c23 = z, c30 = z, c31 = z, c32 = z, c33 = z, c40 = z, c41 = z, c42 = z, c43 = z, c50 = z, c51 = z;
    __m512i c52 = z, c53 = z;
    const uint8_t *as = lowbit_probe_ia;
    const int8_t *bp = lowbit_probe_vb;
    for (long s = 0; s < n; s++, bp += 64, as += 24) {
        const __m512i b0 = _mm512_load_si512(bp), b1 = _mm512_load_si512(bp + 64 * STEPS);
        const __m512i b2 = _mm512_load_si512(bp + 128 * STEPS), b3 = _mm512_load_si512(bp + 192 * STEPS);
#define V6(r)                                                                                \
    {                                                                                        \
        const __m512i av = _mm512_set1_epi32(*(const int32_t *)(as + 4 * r));                \
        c##r##0 = _mm512_dpbusd_epi32(c##r##0, av, b0);                                      \
        c##r##1 = _mm512_dpbusd_epi32(c##r##1, av, b1);                                      \
        c##r##2 = _mm512_dpbusd_epi32(c##r##2, av, b2);                                      \
        c##r##3 = _mm512_dpbusd_epi32(c##r##3, av, b3);                                      \
    }
        V6(0) V6(1) V6(2) V6(3) V6(4) V6(5)
    }
    __m512i *o = (__m512i *)lowbit_probe_vout;  // stored like the kernel's tiles (a reduction here made GCC spill)
    o[0] = c00, o[1] = c01, o[2] = c02, o[3] = c03, o[4] = c10, o[5] = c11, o[6] = c12, o[7] = c13;
    o[8] = c20, o[9] = c21, o[10] = c22, o[11] = c23, o[12] = c30, o[13] = c31, o[14] = c32, o[15] = c33;
    o[16] = c40, o[17] = c41, o[18] = c42, o[19] = c43, o[20] = c50, o[21] = c51, o[22] = c52, o[23] = c53;
}

double probe(int kind, long reps) {
    if (kind >= 5) {
        for (long r = 0; r < reps; r++) {
            if (kind == 5) fma512(STEPS);
            else if (kind == 6) vnni_loop(STEPS);
            else dpbusd_bare(STEPS);
        }
        const double macs = kind == 5 ? 192.0 : kind == 6 ? 1536.0 : 768.0;
        return macs * STEPS * (double)reps;
    }
    for (long r = 0; r < reps; r++) {
        long n = STEPS;
        if (kind == 0) {
            const float *a = fa, *b = fb;
            __asm__ volatile(LOOP("vmovups (%[b]),%%ymm12\n\t vmovups 32(%[b]),%%ymm13\n\t", F_ROW, 24, 64)
                             : [a] "+r"(a), [b] "+r"(b), [n] "+r"(n)::CLOB);
        } else if (kind == 1 || kind == 2) {
            const uint8_t *a = lowbit_probe_ia;
            const int8_t *b = ib;
            if (kind == 1)
                __asm__ volatile(LOOP("vmovdqu (%[b]),%%ymm12\n\t vmovdqu 32(%[b]),%%ymm13\n\t", I4_ROW, 24, 64)
                                 : [a] "+r"(a), [b] "+r"(b), [n] "+r"(n)
                                 : [o] "r"(ones)
                                 : CLOB);
            else
                __asm__ volatile(LOOP("vmovdqu (%[b]),%%ymm12\n\t vmovdqu 32(%[b]),%%ymm13\n\t", I8_ROW, 24, 64)
                                 : [a] "+r"(a), [b] "+r"(b), [n] "+r"(n)
                                 : [o] "r"(ones)
                                 : CLOB);
        } else if (kind == 3) {
            __asm__ volatile("1:\n\t .irp r,0,1,2,3,4,5,6,7,8,9,10,11\n\t vfmadd231ps %%ymm14,%%ymm15,%%ymm\\r\n\t"
                             ".endr\n\t dec %[n]\n\t jnz 1b\n\t"
                             : [n] "+r"(n)::CLOB);
        } else {
            __asm__ volatile("1:\n\t .irp r,0,1,2,3,4,5,6,7,8,9,10,11\n\t vpmaddubsw %%ymm14,%%ymm15,%%ymm\\r\n\t"
                             ".endr\n\t dec %[n]\n\t jnz 1b\n\t"
                             : [n] "+r"(n)::CLOB);
        }
    }
    const double macs_per_step = (kind == 0 || kind == 3) ? 96.0 : 384.0;
    return macs_per_step * STEPS * (double)reps;
}
