// Instruction-throughput probes for lowbit.bench.ceiling: the inner loop of a 6 x 16 GEMM micro-kernel of each
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
//   kind 6  (lowbit's AVX-512 VNNI loop: measured on the shipped kernel, lowbit_vnni_probe in the native library)
//   kind 7  12 independent vpdpbusd on zmm, no loads (768 MACs)
//   kind 8  12 independent vdpbf16ps on zmm, no loads (384 MACs: 16 lanes x 2 bf16 products)
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


#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
// Kinds 5 and 7 in assembly like kinds 3 and 4: written with intrinsics on constant operands, GCC's loops
// reported rates 4-5x above the instruction's throughput on Zen 4 (the compiler does not run them as written).
AVX512 static void fma512(long n) {
    __asm__ volatile("1:\n\t .irp r,0,1,2,3,4,5,6,7,8,9,10,11\n\t vfmadd231ps %%zmm14,%%zmm15,%%zmm\\r\n\t"
                     ".endr\n\t dec %[n]\n\t jnz 1b\n\t"
                     : [n] "+r"(n)::CLOB);
}
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void dpbf16_bare(long n) {
    __asm__ volatile("1:\n\t .irp r,0,1,2,3,4,5,6,7,8,9,10,11\n\t vdpbf16ps %%zmm14,%%zmm15,%%zmm\\r\n\t"
                     ".endr\n\t dec %[n]\n\t jnz 1b\n\t"
                     : [n] "+r"(n)::CLOB);
}
AVX512 static void dpbusd_bare(long n) {
    __asm__ volatile("1:\n\t .irp r,0,1,2,3,4,5,6,7,8,9,10,11\n\t vpdpbusd %%zmm14,%%zmm15,%%zmm\\r\n\t"
                     ".endr\n\t dec %[n]\n\t jnz 1b\n\t"
                     : [n] "+r"(n)::CLOB);
}

double probe(int kind, long reps) {
    if (kind >= 5) {  // (kind 6 is measured on lowbit's own library by ceiling.py)
        for (long r = 0; r < reps; r++) {
            if (kind == 5) fma512(STEPS);
            else if (kind == 8) dpbf16_bare(STEPS);
            else dpbusd_bare(STEPS);
        }
        const double macs = kind == 5 ? 192.0 : kind == 8 ? 384.0 : 768.0;
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
