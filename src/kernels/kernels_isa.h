/*
 * kernels_isa.h - the per-instruction-set kernel functions behind kernels.h.
 *
 * Each instruction set (scalar, AVX2, AVX-512) provides the same small set of
 * inner functions. cpu.c groups them into one av_kernel_table per set and
 * selects a table at run time; matmul.c and ops.c call through the selected
 * table. The *_avx2 and *_avx512 functions live in files compiled with those
 * instruction sets enabled and must only be called when the CPU has them.
 */
#ifndef AV_KERNELS_ISA_H
#define AV_KERNELS_ISA_H

#include "kernels/kernels.h"

/* Computes rows [r0, r1) of y = W x for all n_tokens tokens (the layout of
 * av_matmul). Called concurrently on disjoint row ranges. */
typedef void (*av_matmul_rows_fn)(const av_matrix *w, const float *x, int n_tokens, float *y,
                                  int64_t r0, int64_t r1);

/* Activation scales per 64-value block that the packed NF4 products read:
 * the first group's scale 4 times, then the second's, the lanes of the
 * block's int32 sums in a ymm register. */
#define AV_XSCALES_PER_BLOCK 8

/* Computes rows [r0, r1) of y = W x for a quantized W (NF4 or INT8) from
 * activations quantized by av_quantize_activations: xq [n_tokens, cols32]
 * int8, in the order of the matrix format (av_matrix_xorder), and the
 * scales xd [n_tokens, cols32 / 32], or for packed NF4 xd [n_tokens,
 * cols / 64, AV_XSCALES_PER_BLOCK]. */
typedef void (*av_qmatmul_rows_fn)(const av_matrix *w, const int8_t *xq, const float *xd,
                                   int n_tokens, float *y, int64_t r0, int64_t r1);
/* Quantizes one row of activations (qmatmul.c documents the format). */
typedef void (*av_quantize_row_fn)(const float *x, int64_t cols, av_xorder order, int8_t *xq,
                                   float *xd);

typedef struct {
    av_isa isa;
    av_matmul_rows_fn matmul_rows;
    float (*dot_f32)(const float *a, const float *b, int n);
    void (*axpy_f32)(float *y, float a, const float *x, int n);
    /* Returns sum of x[i]^2 accumulated in double, the reduction of
     * rmsnorm: rounding then stays far below one f32 ulp for any n. */
    double (*sum_squares)(const float *x, int n);
    /* out[i] = x[i] * scale * weight[i], the scaling step of rmsnorm. */
    void (*scale_mul)(float *out, const float *x, const float *weight, float scale, int n);
    /* Converts n elements of F32, F16 or BF16 to f32. */
    void (*to_f32)(float *dst, const void *src, av_dtype dtype, int64_t n);
} av_kernel_table;

/* Returns the table of the instruction set in use (av_kernels_isa()). */
const av_kernel_table *av_kernels_table(void);

/* Scalar path (matmul.c, ops.c). */
void av_matmul_rows_scalar(const av_matrix *w, const float *x, int n_tokens, float *y,
                           int64_t r0, int64_t r1);
float av_dot_f32_scalar(const float *a, const float *b, int n);
void av_axpy_f32_scalar(float *y, float a, const float *x, int n);
double av_sum_squares_scalar(const float *x, int n);
void av_scale_mul_scalar(float *out, const float *x, const float *weight, float scale, int n);
void av_to_f32_scalar(float *dst, const void *src, av_dtype dtype, int64_t n);

/* AVX2 + FMA + F16C path (matmul_avx2.c, ops_avx2.c). */
void av_matmul_rows_avx2(const av_matrix *w, const float *x, int n_tokens, float *y,
                         int64_t r0, int64_t r1);
float av_dot_f32_avx2(const float *a, const float *b, int n);
void av_axpy_f32_avx2(float *y, float a, const float *x, int n);
double av_sum_squares_avx2(const float *x, int n);
void av_scale_mul_avx2(float *out, const float *x, const float *weight, float scale, int n);
void av_to_f32_avx2(float *dst, const void *src, av_dtype dtype, int64_t n);

/* AVX-512 (F, BW, VL, DQ) path (matmul_avx512.c, ops_avx512.c). */
void av_matmul_rows_avx512(const av_matrix *w, const float *x, int n_tokens, float *y,
                           int64_t r0, int64_t r1);
float av_dot_f32_avx512(const float *a, const float *b, int n);
void av_axpy_f32_avx512(float *y, float a, const float *x, int n);
double av_sum_squares_avx512(const float *x, int n);
void av_scale_mul_avx512(float *out, const float *x, const float *weight, float scale, int n);
void av_to_f32_avx512(float *dst, const void *src, av_dtype dtype, int64_t n);

/* Quantized products (qmatmul.c, qmatmul_avx2.c, qmatmul_avx512.c). The
 * scalar functions are the reference; qmatmul.c picks among them with
 * av_kernels_isa(). */
void av_qmatmul_rows_scalar(const av_matrix *w, const int8_t *xq, const float *xd,
                            int n_tokens, float *y, int64_t r0, int64_t r1);
void av_qmatmul_rows_avx2(const av_matrix *w, const int8_t *xq, const float *xd, int n_tokens,
                          float *y, int64_t r0, int64_t r1);
void av_qmatmul_rows_avx512(const av_matrix *w, const int8_t *xq, const float *xd,
                            int n_tokens, float *y, int64_t r0, int64_t r1);
/* round(level * 127) of the 16 NF4 levels, the weights of the integer
 * NF4 product. */
extern const int8_t av_nf4_levels_i8[16];
/* The quantized product behind av_matmul and av_matmul_ref, and the row
 * lookup behind av_matrix_row. */
void av_qmatmul(av_threadpool *pool, const av_matrix *w, const float *x, int n_tokens,
                float *y);
void av_qmatmul_ref(const av_matrix *w, const float *x, int n_tokens, float *y);
void av_qmatrix_row(const av_matrix *w, int64_t row, float *out);
void av_quantize_row_scalar(const float *x, int64_t cols, av_xorder order, int8_t *xq,
                            float *xd);
void av_quantize_row_avx2(const float *x, int64_t cols, av_xorder order, int8_t *xq, float *xd);
/* Returns the activation order that the products of w's format expect. */
av_xorder av_matrix_xorder(const av_matrix *w);

#endif
