/*
 * ops_avx512.c - AVX-512 versions of the vector kernels of ops.c, a
 * widening of ops_avx2.c to 16 lanes with masked loads and stores for the
 * tails.
 *
 * NOTE: untested on hardware: the development machine has no AVX-512, so
 * this file has only been compiled. The unit tests run it on any CPU that
 * has AVX-512.
 */
#include <immintrin.h>

#include "kernels/kernels_isa.h"

/* Returns the mask of the first n (< 16) lanes. */
static __mmask16 tail_mask(int n) { return (__mmask16)((1u << n) - 1u); }

float av_dot_f32_avx512(const float *a, const float *b, int n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i),
                               acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

void av_axpy_f32_avx512(float *y, float a, const float *x, int n) {
    __m512 av = _mm512_set1_ps(a);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(av, _mm512_loadu_ps(x + i),
                                                _mm512_loadu_ps(y + i)));
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 r = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + i),
                                   _mm512_maskz_loadu_ps(m, y + i));
        _mm512_mask_storeu_ps(y + i, m, r);
    }
}

double av_sum_squares_avx512(const float *x, int n) {
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
        __m512d hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        acc0 = _mm512_fmadd_pd(lo, lo, acc0);
        acc1 = _mm512_fmadd_pd(hi, hi, acc1);
    }
    double s = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
    for (; i < n; i++) s += (double)x[i] * x[i];
    return s;
}

void av_scale_mul_avx512(float *out, const float *x, const float *weight, float scale, int n) {
    __m512 sv = _mm512_set1_ps(scale);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + i), sv);
        _mm512_storeu_ps(out + i, _mm512_mul_ps(v, _mm512_loadu_ps(weight + i)));
    }
    for (; i < n; i++) out[i] = x[i] * scale * weight[i];
}

void av_to_f32_avx512(float *dst, const void *src, av_dtype dtype, int64_t n) {
    const uint16_t *h = src;
    int64_t i = 0;
    switch (dtype) {
    case AV_DTYPE_F16:
        for (; i + 16 <= n; i += 16) {
            __m256i v = _mm256_loadu_si256((const __m256i *)(h + i));
            _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(v));
        }
        for (; i < n; i++) dst[i] = av_f16_to_f32(h[i]);
        break;
    case AV_DTYPE_BF16:
        for (; i + 16 <= n; i += 16) {
            __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(h + i)));
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)));
        }
        for (; i < n; i++) dst[i] = av_bf16_to_f32(h[i]);
        break;
    default:
        av_to_f32_scalar(dst, src, dtype, n);
        break;
    }
}
