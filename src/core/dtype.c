/*
 * dtype.c - element types and scalar conversions between f32, f16 and bf16.
 *
 * These are the reference conversions: SIMD kernels convert in bulk but
 * must agree with them bit for bit.
 */
#include <string.h>

#include "airavata.h"

static const struct {
    const char *name;
    size_t size;
} dtype_info[AV_DTYPE_COUNT] = {
    [AV_DTYPE_F32] = {"F32", 4}, [AV_DTYPE_F16] = {"F16", 2}, [AV_DTYPE_BF16] = {"BF16", 2},
    [AV_DTYPE_I8] = {"I8", 1},   [AV_DTYPE_U8] = {"U8", 1},   [AV_DTYPE_I32] = {"I32", 4},
    [AV_DTYPE_I64] = {"I64", 8}, [AV_DTYPE_F64] = {"F64", 8},
};

const char *av_dtype_name(av_dtype dtype) {
    return (unsigned)dtype < AV_DTYPE_COUNT ? dtype_info[dtype].name : "?";
}

size_t av_dtype_size(av_dtype dtype) {
    return (unsigned)dtype < AV_DTYPE_COUNT ? dtype_info[dtype].size : 0;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float bits_f32(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

float av_bf16_to_f32(uint16_t h) { return bits_f32((uint32_t)h << 16); }

uint16_t av_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* IEEE half: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. */
float av_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        /* zero or subnormal: value = mant * 2^-24 */
        float v = (float)mant * (1.0f / 16777216.0f);
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t av_f32_to_f16(float f) {
    uint32_t u = f32_bits(f);
    uint32_t sign = (u >> 16) & 0x8000u;
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* overflow rounds to inf */
    if (abs < 0x38800000u) {
        /* result is subnormal or zero: round abs/2^-24 to nearest even */
        float v = bits_f32(abs) * 16777216.0f;
        uint32_t m = (uint32_t)v;
        float frac = v - (float)m;
        if (frac > 0.5f || (frac == 0.5f && (m & 1u))) m++;
        return (uint16_t)(sign | m);
    }
    /* normal: drop 13 mantissa bits with round to nearest even */
    uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}
