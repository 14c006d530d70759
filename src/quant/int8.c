/*
 * int8.c - LLM.int8 weight quantization, bit for bit as bitsandbytes
 * 0.50.2 stores it (bnb.nn.Int8Params on the CPU).
 *
 * Int8Params first casts the weight to float16, whatever its dtype, and
 * then runs int8_vectorwise_quant: SCB = the float16 absmax of each row as
 * float32, and codes = round-half-even(w * (127 / SCB)) in float32, where
 * PyTorch evaluates 127 / SCB as reciprocal(SCB) * 127 (two roundings).
 * An all-zero row has SCB 0 and codes 0.
 */
#include <math.h>

#include "quant.h"

av_status av_int8_quantize(const void *x, av_dtype dtype, int64_t rows, int64_t cols, int8_t *q,
                           float *scb) {
    for (int64_t r = 0; r < rows; r++) {
        const int64_t base = r * cols;
        float amax = 0.0f;
        for (int64_t c = 0; c < cols; c++) {
            float v = av_load_f32(x, dtype, base + c);
            float h = av_f16_to_f32(av_f32_to_f16(v));
            if (!isfinite(h))
                return av_set_error(AV_ERR_INVALID,
                                    "value %g at row %lld, column %lld is not finite in float16; "
                                    "LLM.int8 quantizes the float16 weight, which must stay "
                                    "within +-65504",
                                    (double)v, (long long)r, (long long)c);
            if (fabsf(h) > amax) amax = fabsf(h);
        }
        scb[r] = amax;
        if (amax == 0.0f) {
            /* PyTorch computes 0 * (127 / 0) = NaN, which becomes code 0. */
            for (int64_t c = 0; c < cols; c++) q[base + c] = 0;
            continue;
        }
        float scale = (1.0f / amax) * 127.0f;
        for (int64_t c = 0; c < cols; c++) {
            float h = av_f16_to_f32(av_f32_to_f16(av_load_f32(x, dtype, base + c)));
            q[base + c] = (int8_t)nearbyintf(h * scale);
        }
    }
    return AV_OK;
}

void av_int8_dequantize(const int8_t *q, const float *scb, int64_t rows, int64_t cols,
                        float *out) {
    const float inv127 = (float)(1.0 / 127.0);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            out[r * cols + c] = ((float)q[r * cols + c] * scb[r]) * inv127;
}
