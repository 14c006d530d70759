/*
 * matmul_speed.c - times av_matmul on the matrix shapes of a Llama 2 7B layer.
 *
 * Shapes: 4096 x 4096 (attention projections) and 11008 x 4096 (the MLP's
 * gate and up projections), weights in BF16 by default, with 1 and 2
 * threads and 1, 4, 16 and 64 tokens. It prints the median time of the
 * repeats, the weight bandwidth (weight bytes / time, the figure to compare
 * with membw for 1 token) and GFLOP/s (2 * rows * cols * tokens / time).
 *
 * Several copies of each matrix, together larger than the last-level cache,
 * are used in turn, so every call streams its weights from memory as the
 * forward pass does. Each timed matmul alternates with a timed plain read of
 * another copy on the same threads ("read GB/s"), so the ratio of the two
 * stays meaningful even when other processes share the memory bus.
 *
 * NF4 (64-value blocks, the bitsandbytes default) and INT8, packed as the
 * loader packs them, time the integer kernels of qmatmul.c. Their weight
 * bytes count codes and scales.
 *
 * Usage: matmul_speed [F32|F16|BF16|NF4|INT8 (default BF16)] [repeats (default 9)]
 *                     [max tokens: 1, 4, 16 or 64 (default 64)]
 * AIRAVATA_ISA=scalar|avx2|avx512 selects the kernels.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"
#include "quant/quant.h"
#include "read_bandwidth.h"

/* Total bytes of the copies of one matrix. It is well above the L3 cache
 * of current server CPUs (32 MiB on an AMD EPYC Milan CCD). */
#define ROTATION_BYTES (256u << 20)

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static float rng_float(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)(rng_state >> 40) / 8388608.0f - 1.0f;
}

static void fill_weights(void *data, av_dtype dtype, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float v = rng_float() * 0.05f;
        if (dtype == AV_DTYPE_F32) {
            ((float *)data)[i] = v;
        } else if (dtype == AV_DTYPE_F16) {
            ((uint16_t *)data)[i] = av_f32_to_f16(v);
        } else {
            ((uint16_t *)data)[i] = av_f32_to_bf16(v);
        }
    }
}

/* The weight formats this program times. */
typedef enum { FORMAT_F32, FORMAT_F16, FORMAT_BF16, FORMAT_NF4, FORMAT_INT8 } format;
static const char *const format_names[] = {"F32", "F16", "BF16", "NF4", "INT8"};

#define NF4_BLOCK 64

/* Fills one random [rows, cols] matrix of format f, and *data gets the memory
 * to free. Returns 0, or 1 when out of memory. */
static int make_matrix(format f, int64_t rows, int64_t cols, av_matrix *m, void **data) {
    size_t n = (size_t)(rows * cols);
    if (f <= FORMAT_BF16) {
        av_dtype dtype = f == FORMAT_F32 ? AV_DTYPE_F32 : f == FORMAT_F16 ? AV_DTYPE_F16
                                                                          : AV_DTYPE_BF16;
        if (!(*data = malloc(n * av_dtype_size(dtype)))) return 1;
        fill_weights(*data, dtype, n);
        *m = (av_matrix){.dtype = dtype, .rows = rows, .cols = cols, .data = *data};
        return 0;
    }
    float *w = malloc(n * sizeof(float));
    if (!w) return 1;
    fill_weights(w, AV_DTYPE_F32, n);
    if (f == FORMAT_NF4) {
        /* Packed as the loader does. The unpacked codes are freed. */
        size_t blocks = (n + NF4_BLOCK - 1) / NF4_BLOCK;
        uint8_t *codes = malloc(n / 2);
        float *absmax = malloc(blocks * sizeof(float));
        if (!codes || !absmax) return free(w), free(codes), free(absmax), 1;
        av_nf4_quantize(w, AV_DTYPE_F32, (int64_t)n, NF4_BLOCK, codes, absmax);
        av_status status = av_matrix_nf4_pack(m, rows, cols, codes, absmax, NF4_BLOCK, NULL, data);
        free(codes);
        free(absmax);
        if (status) return free(w), 1;
    } else {
        /* Packed as the loader does. */
        int8_t *q = malloc(n);
        float *scale = malloc((size_t)rows * sizeof(float));
        if (!q || !scale) return free(w), free(q), free(scale), 1;
        av_int8_quantize(w, AV_DTYPE_F32, rows, cols, q, scale);
        for (int64_t r = 0; r < rows; r++) scale[r] /= 127.0f;
        av_status status = av_matrix_int8_pack(m, rows, cols, q, scale, NULL, data);
        free(q);
        free(scale);
        if (status) return free(w), 1;
    }
    free(w);
    return 0;
}

static int bench_shape(format f, int64_t rows, int64_t cols, int repeats, int max_tokens) {
    static const int thread_counts[] = {1, 2};
    static const int token_counts[] = {1, 4, 16, 64};
    av_matrix probe;
    void *probe_data;
    if (make_matrix(f, 32, cols, &probe, &probe_data)) return 1;
    size_t matrix_bytes = (size_t)(av_matrix_bytes(&probe) / 32 * (uint64_t)rows);
    free(probe_data);
    int n_copies = (int)((ROTATION_BYTES + matrix_bytes - 1) / matrix_bytes);
    if (n_copies < 2) n_copies = 2;

    av_matrix *copies = calloc((size_t)n_copies, sizeof *copies);
    void **datas = calloc((size_t)n_copies, sizeof *datas);
    float *x = malloc((size_t)(64 * cols) * sizeof(float));
    float *y = malloc((size_t)(64 * rows) * sizeof(float));
    double *seconds = malloc(sizeof(double) * (size_t)repeats);
    double *read_seconds = malloc(sizeof(double) * (size_t)repeats);
    if (!copies || !datas || !x || !y || !seconds || !read_seconds) return 1;
    for (int i = 0; i < n_copies; i++) {
        if (make_matrix(f, rows, cols, &copies[i], &datas[i])) {
            fprintf(stderr, "matmul_speed: cannot allocate %zu bytes\n", matrix_bytes);
            return 1;
        }
    }
    for (int64_t i = 0; i < 64 * cols; i++) x[i] = rng_float();

    for (int ti = 0; ti < 2; ti++) {
        av_threadpool *pool = av_threadpool_create(thread_counts[ti]);
        if (!pool) {
            fprintf(stderr, "matmul_speed: %s\n", av_last_error());
            return 1;
        }
        for (int ki = 0; ki < 4; ki++) {
            int n_tokens = token_counts[ki];
            if (n_tokens > max_tokens) break;
            int next = 0;
            av_matmul(pool, &copies[next++ % n_copies], x, n_tokens, y); /* warm-up */
            for (int r = 0; r < repeats; r++) {
                read_job job = {.data = datas[next++ % n_copies],
                                .n_words = matrix_bytes / 8};
                double t0 = now_seconds();
                av_threadpool_run(pool, read_words_parallel, &job);
                read_seconds[r] = now_seconds() - t0;

                const av_matrix *w = &copies[next++ % n_copies];
                t0 = now_seconds();
                av_matmul(pool, w, x, n_tokens, y);
                seconds[r] = now_seconds() - t0;
            }
            qsort(seconds, (size_t)repeats, sizeof(double), compare_doubles);
            qsort(read_seconds, (size_t)repeats, sizeof(double), compare_doubles);
            double t = seconds[repeats / 2], t_read = read_seconds[repeats / 2];
            printf("%-4s %5lld x %-5lld threads %d tokens %2d: %8.3f ms  %6.2f GB/s weights"
                   " (read %6.2f GB/s, %3.0f%%)  %7.2f GFLOP/s\n",
                   format_names[f], (long long)rows, (long long)cols, thread_counts[ti],
                   n_tokens, t * 1e3, (double)matrix_bytes / t / 1e9,
                   (double)matrix_bytes / t_read / 1e9, 100.0 * t_read / t,
                   2.0 * (double)rows * (double)cols * n_tokens / t / 1e9);
            fflush(stdout);
        }
        av_threadpool_free(pool);
    }
    for (int i = 0; i < n_copies; i++) free(datas[i]);
    free(copies);
    free(datas);
    free(x);
    free(y);
    free(seconds);
    free(read_seconds);
    return 0;
}

static int usage(void) {
    fprintf(stderr, "usage: matmul_speed [F32|F16|BF16|NF4|INT8] [repeats 1..1000] "
                    "[max tokens 1..64]\n");
    return 2;
}

int main(int argc, char **argv) {
    format f = FORMAT_BF16;
    if (argc > 1) {
        int found = 0;
        for (int i = 0; i <= FORMAT_INT8; i++)
            if (strcmp(argv[1], format_names[i]) == 0) f = (format)i, found = 1;
        if (!found) return usage();
    }
    int repeats = argc > 2 ? atoi(argv[2]) : 9;
    int max_tokens = argc > 3 ? atoi(argv[3]) : 64;
    if (repeats < 1 || repeats > 1000 || max_tokens < 1 || max_tokens > 64) return usage();
    if (av_kernels_init() != AV_OK) {
        fprintf(stderr, "matmul_speed: %s\n", av_last_error());
        return 1;
    }
    printf("kernels: %s (best on this CPU: %s)\n", av_isa_name(av_kernels_isa()),
           av_isa_name(av_cpu_best_isa()));
    if (bench_shape(f, 4096, 4096, repeats, max_tokens)) return 1;
    if (bench_shape(f, 11008, 4096, repeats, max_tokens)) return 1;
    return 0;
}
