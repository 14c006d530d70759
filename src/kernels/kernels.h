/*
 * kernels.h - internal interface of the compute kernels and the thread pool.
 *
 * Every kernel has one scalar reference (the *_ref functions, or the
 * AV_ISA_SCALAR path) that defines its result; the AVX2 and AVX-512 paths
 * are chosen at run time (av_kernels_isa()) and tests compare them against
 * the reference. Matrices follow the Hugging Face Linear layout: a weight
 * W of shape [rows, cols] = [out_features, in_features], row-major.
 * Activations are f32 and accumulation is f32.
 */
#ifndef AV_KERNELS_H
#define AV_KERNELS_H

#include "airavata.h"

/* ---- instruction set selection ------------------------------------------ */

/* Reads AIRAVATA_ISA ("scalar", "avx2", "avx512") and selects the kernels it
 * names, or the best the CPU supports when it is unset or empty. Returns
 * AV_ERR_INVALID for an unknown name and AV_ERR_UNSUPPORTED for an
 * instruction set this CPU lacks, and then leaves the selection unchanged.
 * Kernels called before it select the same way on first use, but can only
 * log such an error, so programs call this first to report it. */
av_status av_kernels_init(void);

/* ---- thread pool ------------------------------------------------------- */

typedef struct av_threadpool av_threadpool;

/* Creates a pool of n_threads workers, the calling thread counted as one
 * (n_threads 1 runs everything on the caller). */
av_threadpool *av_threadpool_create(int n_threads);
void av_threadpool_free(av_threadpool *pool);
int av_threadpool_size(const av_threadpool *pool);

/* Calls fn(arg, ith, nth) once on each of the pool's nth threads, the caller
 * included, and returns when all calls have returned. Not reentrant: one
 * run at a time per pool. */
typedef void (*av_parallel_fn)(void *arg, int ith, int nth);
void av_threadpool_run(av_threadpool *pool, av_parallel_fn fn, void *arg);

/* ---- matrices ------------------------------------------------------------ */

/* A weight matrix in its storage dtype (F32, F16 or BF16), row-major. */
typedef struct {
    av_dtype dtype;
    int64_t rows;
    int64_t cols;
    const void *data;
} av_matrix;

/* y[t*rows + r] = sum_c W[r, c] * x[t*cols + c] for t < n_tokens.
 * Reads W once for all n_tokens (tiles over tokens), splits rows among the
 * pool's threads. y must not alias x. */
void av_matmul(av_threadpool *pool, const av_matrix *w, const float *x, int n_tokens,
               float *y);
/* The same product, single-threaded, on the scalar path: the reference. */
void av_matmul_ref(const av_matrix *w, const float *x, int n_tokens, float *y);

/* Copies row `row` of W into out as f32 (embedding lookup). */
void av_matrix_row(const av_matrix *w, int64_t row, float *out);

/* ---- elementwise and reductions --------------------------------------- */

/* out = x / sqrt(mean(x^2) + eps) * weight, over n elements. */
void av_rmsnorm(float *out, const float *x, const float *weight, int n, float eps);
/* x = softmax(x) over n elements, computed stably (max subtracted). */
void av_softmax(float *x, int n);
/* gate = silu(gate) * up over n elements; silu(g) = g / (1 + exp(-g)). */
void av_swiglu(float *gate, const float *up, int n);
/* dot product of two f32 vectors of length n. */
float av_dot_f32(const float *a, const float *b, int n);
/* y += a * x over n elements. */
void av_axpy_f32(float *y, float a, const float *x, int n);
/* Converts n elements of src (F32, F16 or BF16) to f32. */
void av_to_f32(float *dst, const void *src, av_dtype dtype, int64_t n);

#endif
