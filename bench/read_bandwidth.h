/*
 * read_bandwidth.h - a plain parallel read of a buffer, the baseline that
 * the benchmarks compare kernels against (membw.c, matmul_speed.c).
 */
#ifndef AV_BENCH_READ_BANDWIDTH_H
#define AV_BENCH_READ_BANDWIDTH_H

#include <stddef.h>
#include <stdint.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef struct {
    const uint64_t *data;
    size_t n_words;
    uint64_t sums[64]; /* per-thread results, kept so the reads are not removed */
} read_job;

#if defined(__x86_64__)
/* 256-bit loads with four independent accumulators; used when the CPU has
 * AVX2 so that instruction throughput cannot limit the measurement. */
__attribute__((target("avx2"))) static uint64_t read_words_avx2(const uint64_t *p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_xor_si256(a0, _mm256_loadu_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_loadu_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_xor_si256(a2, _mm256_loadu_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_xor_si256(a3, _mm256_loadu_si256((const __m256i *)(p + i + 12)));
    }
    __m256i a = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, a);
    uint64_t s = lanes[0] ^ lanes[1] ^ lanes[2] ^ lanes[3];
    for (; i < n; i++) s ^= p[i];
    return s;
}
#endif

static uint64_t read_words_plain(const uint64_t *p, size_t n) {
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 ^= p[i];
        s1 ^= p[i + 1];
        s2 ^= p[i + 2];
        s3 ^= p[i + 3];
    }
    for (; i < n; i++) s0 ^= p[i];
    return s0 ^ s1 ^ s2 ^ s3;
}

static int read_uses_avx2(void) {
#if defined(__x86_64__)
    return __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

/* Pool function: thread ith XORs its contiguous slice of job->data. */
static void read_words_parallel(void *arg, int ith, int nth) {
    read_job *job = arg;
    size_t per = job->n_words / (size_t)nth;
    size_t start = per * (size_t)ith;
    size_t n = ith == nth - 1 ? job->n_words - start : per;
#if defined(__x86_64__)
    if (read_uses_avx2()) {
        job->sums[ith] = read_words_avx2(job->data + start, n);
        return;
    }
#endif
    job->sums[ith] = read_words_plain(job->data + start, n);
}

#endif
