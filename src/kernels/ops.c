/*
 * ops.c - the small vector kernels: rmsnorm, softmax, SwiGLU, dot, axpy
 * and dtype conversion.
 *
 * The scalar versions here are the references. The public functions call
 * the selected instruction set's version where SIMD pays off (dot, axpy,
 * the reductions and conversions). softmax and SwiGLU use the C library's
 * expf on every path: they cost little next to the matmuls, and a SIMD exp
 * would have to match expf closely for results not to depend on the CPU.
 * The sums of rmsnorm and softmax are accumulated in double, so their
 * results are within a few f32 ulps of exact for any length.
 * Every function accepts out == x (in place).
 */
#include <math.h>

#include "kernels/kernels_isa.h"

float av_dot_f32_scalar(const float *a, const float *b, int n) {
    float acc = 0.0f;
    for (int i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

void av_axpy_f32_scalar(float *y, float a, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += a * x[i];
}

double av_sum_squares_scalar(const float *x, int n) {
    double acc = 0.0;
    for (int i = 0; i < n; i++) acc += (double)x[i] * x[i];
    return acc;
}

void av_scale_mul_scalar(float *out, const float *x, const float *weight, float scale, int n) {
    for (int i = 0; i < n; i++) out[i] = x[i] * scale * weight[i];
}

void av_to_f32_scalar(float *dst, const void *src, av_dtype dtype, int64_t n) {
    switch (dtype) {
    case AV_DTYPE_F32: {
        const float *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = s[i];
        break;
    }
    case AV_DTYPE_F16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = av_f16_to_f32(s[i]);
        break;
    }
    case AV_DTYPE_BF16: {
        const uint16_t *s = src;
        for (int64_t i = 0; i < n; i++) dst[i] = av_bf16_to_f32(s[i]);
        break;
    }
    default:
        /* The model checks dtypes at load time; reaching here is a bug. */
        av_log(AV_LOG_ERROR, "av_to_f32: unsupported dtype %s", av_dtype_name(dtype));
        for (int64_t i = 0; i < n; i++) dst[i] = 0.0f;
        break;
    }
}

void av_rmsnorm(float *out, const float *x, const float *weight, int n, float eps) {
    if (n <= 0) return;
    const av_kernel_table *k = av_kernels_table();
    double mean_square = k->sum_squares(x, n) / n;
    float scale = (float)(1.0 / sqrt(mean_square + eps));
    k->scale_mul(out, x, weight, scale, n);
}

void av_softmax(float *x, int n) {
    if (n <= 0) return;
    float max = x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] > max) max = x[i];
    }
    /* The sum is kept in double so that its rounding is negligible next to
     * expf's for any n. */
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - max);
        sum += x[i];
    }
    /* sum >= 1 because the maximum contributes exp(0). */
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void av_swiglu(float *gate, const float *up, int n) {
    for (int i = 0; i < n; i++) {
        float g = gate[i];
        gate[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

float av_dot_f32(const float *a, const float *b, int n) {
    return av_kernels_table()->dot_f32(a, b, n);
}

void av_axpy_f32(float *y, float a, const float *x, int n) {
    av_kernels_table()->axpy_f32(y, a, x, n);
}

void av_to_f32(float *dst, const void *src, av_dtype dtype, int64_t n) {
    av_kernels_table()->to_f32(dst, src, dtype, n);
}
