/*
 * membw.c - measures memory read bandwidth, the ceiling of decode speed.
 *
 * Decoding one token streams every weight once, so tokens per second cannot
 * exceed read bandwidth / weight bytes. This program reads a buffer much
 * larger than the last-level cache with N threads (the library's pool, each
 * thread a contiguous slice) and prints the median GB/s (10^9 bytes/s) of
 * several repeats.
 *
 * Usage: membw [threads (default 2)] [buffer MiB (default 1024)] [repeats (default 10)]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "read_bandwidth.h"

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int n_threads = argc > 1 ? atoi(argv[1]) : 2;
    long mib = argc > 2 ? atol(argv[2]) : 1024;
    int repeats = argc > 3 ? atoi(argv[3]) : 10;
    if (n_threads < 1 || n_threads > 64 || mib < 1 || mib > (1L << 20) || repeats < 1 ||
        repeats > 1000) {
        fprintf(stderr, "usage: membw [threads 1..64] [buffer MiB] [repeats 1..1000]\n");
        return 2;
    }

    size_t bytes = (size_t)mib << 20;
    uint64_t *data = malloc(bytes);
    if (!data) {
        fprintf(stderr, "membw: cannot allocate %ld MiB\n", mib);
        return 1;
    }
    /* Write every page so the reads measure memory, not page faults. */
    for (size_t i = 0; i < bytes / 8; i++) data[i] = i * 0x9e3779b97f4a7c15ull;

    av_threadpool *pool = av_threadpool_create(n_threads);
    if (!pool) {
        fprintf(stderr, "membw: %s\n", av_last_error());
        return 1;
    }
    read_job job = {.data = data, .n_words = bytes / 8};
    double *gbps = malloc(sizeof(double) * (size_t)repeats);
    uint64_t check = 0;
    av_threadpool_run(pool, read_words_parallel, &job); /* warm-up */
    for (int r = 0; r < repeats; r++) {
        double t0 = now_seconds();
        av_threadpool_run(pool, read_words_parallel, &job);
        double t1 = now_seconds();
        gbps[r] = (double)bytes / (t1 - t0) / 1e9;
        for (int i = 0; i < n_threads; i++) check ^= job.sums[i];
    }
    qsort(gbps, (size_t)repeats, sizeof(double), compare_doubles);
    printf("membw: threads %d, buffer %ld MiB, %s loads: median %.2f GB/s "
           "(min %.2f, max %.2f, %d repeats) [%llx]\n",
           n_threads, mib, read_uses_avx2() ? "256-bit" : "64-bit", gbps[repeats / 2], gbps[0],
           gbps[repeats - 1], repeats, (unsigned long long)(check & 0xf));
    free(gbps);
    av_threadpool_free(pool);
    free(data);
    return 0;
}
