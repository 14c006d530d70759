/*
 * cpu.c - CPU feature detection and the choice of kernel instruction set.
 *
 * The library is built for baseline x86-64. The AVX2 and AVX-512 kernels
 * live in separately compiled files and are only called after cpuid reports
 * the instructions and xgetbv reports that the operating system saves the
 * YMM/ZMM registers on context switches. The choice is one global
 * (an atomic int) read by every kernel call: the AIRAVATA_ISA environment
 * variable or av_kernels_set_isa() can force a lower set, for tests and
 * for comparing paths.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "kernels/kernels_isa.h"

static const av_kernel_table table_scalar = {
    AV_ISA_SCALAR,     av_matmul_rows_scalar, av_dot_f32_scalar, av_axpy_f32_scalar,
    av_sum_squares_scalar, av_scale_mul_scalar, av_to_f32_scalar,
};
static const av_kernel_table table_avx2 = {
    AV_ISA_AVX2,     av_matmul_rows_avx2, av_dot_f32_avx2, av_axpy_f32_avx2,
    av_sum_squares_avx2, av_scale_mul_avx2, av_to_f32_avx2,
};
static const av_kernel_table table_avx512 = {
    AV_ISA_AVX512,     av_matmul_rows_avx512, av_dot_f32_avx512, av_axpy_f32_avx512,
    av_sum_squares_avx512, av_scale_mul_avx512, av_to_f32_avx512,
};

static pthread_once_t detect_once = PTHREAD_ONCE_INIT;
static av_isa best_isa = AV_ISA_SCALAR; /* written once under detect_once */
static atomic_int current_isa = -1;     /* -1 until the first selection */

#if defined(__x86_64__) || defined(__i386__)
/* Returns XCR0, the register-state components the OS enables (XSAVE). */
static uint64_t read_xcr0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static av_isa detect_isa(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return AV_ISA_SCALAR;
    int has_fma = (c >> 12) & 1, has_osxsave = (c >> 27) & 1;
    int has_avx = (c >> 28) & 1, has_f16c = (c >> 29) & 1;
    if (!has_osxsave || !has_avx) return AV_ISA_SCALAR;

    /* XCR0 bit 1 = SSE state, bit 2 = YMM upper halves; bits 5-7 = opmask,
     * ZMM upper halves of 0-15 and ZMM 16-31. */
    uint64_t xcr0 = read_xcr0();
    int os_ymm = (xcr0 & 0x6) == 0x6;
    int os_zmm = (xcr0 & 0xe6) == 0xe6;

    if (__get_cpuid_max(0, NULL) < 7) return AV_ISA_SCALAR;
    __cpuid_count(7, 0, a, b, c, d);
    int has_avx2 = (b >> 5) & 1;
    int has_avx512 = ((b >> 16) & 1) /* F */ && ((b >> 17) & 1) /* DQ */ &&
                     ((b >> 30) & 1) /* BW */ && ((b >> 31) & 1) /* VL */;

    if (!os_ymm || !has_avx2 || !has_fma || !has_f16c) return AV_ISA_SCALAR;
    /* The *_avx512.c files are also compiled with VNNI and BF16 enabled, but
     * their code uses neither (checked in the disassembly), so F, BW, VL and
     * DQ are all they need. */
    if (os_zmm && has_avx512) return AV_ISA_AVX512;
    return AV_ISA_AVX2;
}
#else
static av_isa detect_isa(void) { return AV_ISA_SCALAR; }
#endif

static av_status select_from_env(void);

static void detect_and_select(void) {
    best_isa = detect_isa();
    atomic_store(&current_isa, (int)best_isa);
    /* An invalid AIRAVATA_ISA leaves the best set selected; av_kernels_init()
     * reports it, so it is not logged here as well. */
    (void)select_from_env();
}

av_isa av_cpu_best_isa(void) {
    pthread_once(&detect_once, detect_and_select);
    return best_isa;
}

const char *av_isa_name(av_isa isa) {
    switch (isa) {
    case AV_ISA_SCALAR: return "scalar";
    case AV_ISA_AVX2: return "avx2";
    case AV_ISA_AVX512: return "avx512";
    }
    return "unknown";
}

/* Selects `isa` after detection has run (best_isa is set). */
static av_status set_isa(av_isa isa) {
    if ((unsigned)isa > (unsigned)AV_ISA_AVX512) {
        return av_set_error(AV_ERR_INVALID, "invalid instruction set %d", (int)isa);
    }
    if (isa > best_isa) {
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "this CPU does not support %s kernels (best: %s)",
                            av_isa_name(isa), av_isa_name(best_isa));
    }
    atomic_store(&current_isa, (int)isa);
    return AV_OK;
}

/* Set once av_kernels_set_isa() has chosen a path: av_kernels_init(), which
 * every model load calls, then keeps that choice unless AIRAVATA_ISA is set,
 * and a selection from AIRAVATA_ISA clears it. */
static atomic_int chosen_by_caller;

av_status av_kernels_set_isa(av_isa isa) {
    av_cpu_best_isa();
    av_status st = set_isa(isa);
    if (st == AV_OK) atomic_store(&chosen_by_caller, 1);
    return st;
}

static av_status select_from_env(void) {
    const char *name = getenv("AIRAVATA_ISA");
    if (!name || !*name) return AV_OK;
    for (int isa = AV_ISA_SCALAR; isa <= AV_ISA_AVX512; isa++) {
        if (strcmp(name, av_isa_name((av_isa)isa)) != 0) continue;
        av_status st = set_isa((av_isa)isa);
        if (st != AV_OK) {
            return av_set_error(st, "AIRAVATA_ISA=%s: this CPU does not support it "
                                    "(best: %s); unset it or choose a lower one",
                                name, av_isa_name(best_isa));
        }
        return AV_OK;
    }
    return av_set_error(AV_ERR_INVALID,
                        "AIRAVATA_ISA=%s is not an instruction set; expected scalar, avx2 "
                        "or avx512", name);
}

av_status av_kernels_init(void) {
    av_cpu_best_isa();
    const char *env = getenv("AIRAVATA_ISA");
    int env_set = env && *env;
    if (atomic_load(&chosen_by_caller) && !env_set) return AV_OK;
    if (env_set) atomic_store(&chosen_by_caller, 0);
    av_isa previous = av_kernels_isa();
    atomic_store(&current_isa, (int)best_isa);
    av_status st = select_from_env();
    if (st != AV_OK) atomic_store(&current_isa, (int)previous);
    return st;
}

av_isa av_kernels_isa(void) {
    int isa = atomic_load_explicit(&current_isa, memory_order_relaxed);
    if (isa < 0) {
        av_cpu_best_isa();
        isa = atomic_load(&current_isa);
    }
    return (av_isa)isa;
}

const av_kernel_table *av_kernels_table(void) {
    switch (av_kernels_isa()) {
    case AV_ISA_AVX512: return &table_avx512;
    case AV_ISA_AVX2: return &table_avx2;
    case AV_ISA_SCALAR: break;
    }
    return &table_scalar;
}
