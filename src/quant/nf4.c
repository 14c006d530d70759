/*
 * nf4.c - NF4 blockwise quantization and its double quantization, bit for
 * bit as bitsandbytes 0.50.2 computes them on the CPU.
 *
 * bitsandbytes runs three different pieces of code here, and each has its
 * own rounding that the output bytes depend on:
 *   - quantize_4bit is the PyTorch fallback (backends/default/ops.py):
 *     per block x * (1 / absmax) (the last, short block divides instead),
 *     clamp to [-1, 1], then torch.bucketize against the midpoints of the
 *     NF4 levels, so a value exactly on a midpoint takes the lower code.
 *   - the offset of double quantization is torch's float32 mean, whose
 *     summation order (cascade sums over 8-lane vectors) decides its last
 *     bits; av_torch_mean_f32 replays it.
 *   - the 8-bit quantization of absmax - offset is the native CPU kernel
 *     (csrc/cpu_ops.cpp quantize_cpu_impl), which rounds through a
 *     65536-entry lookup table of [-1, 1] rather than to the nearest map
 *     entry.
 * The build compiles this file in ISO C mode, so the compiler does not
 * contract a * b + c into a fused multiply-add, which would change the
 * roundings.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

/* bitsandbytes functional.get_4bit_type("nf4"), as float32. */
const float av_nf4_code[16] = {
    -1.0f,
    -0.6961928009986877f,
    -0.5250730514526367f,
    -0.39491748809814453f,
    -0.28444138169288635f,
    -0.18477343022823334f,
    -0.09105003625154495f,
    0.0f,
    0.07958029955625534f,
    0.16093020141124725f,
    0.24611230194568634f,
    0.33791524171829224f,
    0.44070982933044434f,
    0.5626170039176941f,
    0.7229568362236023f,
    1.0f,
};

int av_nf4_blocksize_valid(int64_t blocksize) {
    for (int64_t b = 32; b <= 4096; b *= 2)
        if (blocksize == b) return 1;
    return 0;
}

float av_load_f32(const void *x, av_dtype dtype, int64_t i) {
    switch (dtype) {
    case AV_DTYPE_F16: return av_f16_to_f32(((const uint16_t *)x)[i]);
    case AV_DTYPE_BF16: return av_bf16_to_f32(((const uint16_t *)x)[i]);
    default: {
        float v;
        memcpy(&v, (const char *)x + (size_t)i * sizeof v, sizeof v);
        return v;
    }
    }
}

int64_t av_find_nonfinite(const void *x, av_dtype dtype, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(av_load_f32(x, dtype, i))) return i;
    return -1;
}

/* ---- create_dynamic_map ------------------------------------------------ */

/* The positive entries of bitsandbytes' signed dynamic map
 * (functional.create_dynamic_map(), 0.50.2 with torch 2.15 on an AVX2 CPU),
 * ascending: for exponent i = 0..6, the midpoints of torch.linspace(0.1, 1,
 * 2^i + 1) times 10^(i - 6). They are listed rather than computed because
 * the last bit of several depends on how torch's vectorized linspace
 * kernel rounds, which this code cannot follow on every build. */
static const float dynamic_map_positive[127] = {
    0x1.27476ep-21f, 0x1.b43528p-19f, 0x1.040bfep-17f, 0x1.64840cp-16f,
    0x1.6f0068p-15f, 0x1.15df66p-14f, 0x1.743e96p-14f, 0x1.47ae16p-13f,
    0x1.19ce0ap-12f, 0x1.8fc506p-12f, 0x1.02de02p-11f, 0x1.3dd982p-11f,
    0x1.78d500p-11f, 0x1.b3d07cp-11f, 0x1.eecbfep-11f, 0x1.4fdf3ap-10f,
    0x1.e353f8p-10f, 0x1.3b645ap-9f, 0x1.851eb8p-9f, 0x1.ced914p-9f,
    0x1.0c49bap-8f, 0x1.3126e8p-8f, 0x1.56041ap-8f, 0x1.7ae148p-8f,
    0x1.9fbe76p-8f, 0x1.c49ba6p-8f, 0x1.e978d4p-8f, 0x1.072b02p-7f,
    0x1.19999ap-7f, 0x1.2c0830p-7f, 0x1.3e76c8p-7f, 0x1.75c290p-7f,
    0x1.d1eb86p-7f, 0x1.170a3ep-6f, 0x1.451ebap-6f, 0x1.733334p-6f,
    0x1.a147aep-6f, 0x1.cf5c2ap-6f, 0x1.fd70a4p-6f, 0x1.15c290p-5f,
    0x1.2ccccep-5f, 0x1.43d70ap-5f, 0x1.5ae146p-5f, 0x1.71eb86p-5f,
    0x1.88f5c2p-5f, 0x1.a00000p-5f, 0x1.b70a3ep-5f, 0x1.ce147ap-5f,
    0x1.e51ebap-5f, 0x1.fc28f6p-5f, 0x1.09999ap-4f, 0x1.151ebap-4f,
    0x1.20a3d6p-4f, 0x1.2c28f6p-4f, 0x1.37ae14p-4f, 0x1.433334p-4f,
    0x1.4eb854p-4f, 0x1.5a3d70p-4f, 0x1.65c290p-4f, 0x1.7147aep-4f,
    0x1.7ccccep-4f, 0x1.8851eep-4f, 0x1.93d70ap-4f, 0x1.b66668p-4f,
    0x1.f00000p-4f, 0x1.14ccccp-3f, 0x1.31999ap-3f, 0x1.4e6666p-3f,
    0x1.6b3334p-3f, 0x1.880000p-3f, 0x1.a4ccccp-3f, 0x1.c1999ap-3f,
    0x1.de6666p-3f, 0x1.fb3332p-3f, 0x1.0c0000p-2f, 0x1.1a6668p-2f,
    0x1.28ccccp-2f, 0x1.373334p-2f, 0x1.459998p-2f, 0x1.540000p-2f,
    0x1.626666p-2f, 0x1.70ccccp-2f, 0x1.7f3334p-2f, 0x1.8d9998p-2f,
    0x1.9c0000p-2f, 0x1.aa6666p-2f, 0x1.b8ccccp-2f, 0x1.c73334p-2f,
    0x1.d59998p-2f, 0x1.e40000p-2f, 0x1.f26664p-2f, 0x1.006666p-1f,
    0x1.079998p-1f, 0x1.0eccccp-1f, 0x1.160000p-1f, 0x1.1d3334p-1f,
    0x1.246668p-1f, 0x1.2b999ap-1f, 0x1.32ccccp-1f, 0x1.3a0000p-1f,
    0x1.413334p-1f, 0x1.486668p-1f, 0x1.4f999ap-1f, 0x1.56ccccp-1f,
    0x1.5e0000p-1f, 0x1.653334p-1f, 0x1.6c6668p-1f, 0x1.73999ap-1f,
    0x1.7accccp-1f, 0x1.820000p-1f, 0x1.893334p-1f, 0x1.906666p-1f,
    0x1.97999ap-1f, 0x1.9eccccp-1f, 0x1.a60000p-1f, 0x1.ad3334p-1f,
    0x1.b46666p-1f, 0x1.bb999ap-1f, 0x1.c2ccccp-1f, 0x1.ca0000p-1f,
    0x1.d13334p-1f, 0x1.d86666p-1f, 0x1.df999ap-1f, 0x1.e6ccccp-1f,
    0x1.ee0000p-1f, 0x1.f53334p-1f, 0x1.fc6666p-1f
};

/* The full map is the negated entries in reverse, then 0, the positive
 * entries and 1: 256 sorted values. */
void av_dynamic_map(float map[AV_DYNAMIC_MAP_SIZE]) {
    for (int i = 0; i < 127; i++) {
        map[126 - i] = -dynamic_map_positive[i];
        map[128 + i] = dynamic_map_positive[i];
    }
    map[127] = 0.0f;
    map[255] = 1.0f;
}

/* ---- torch.mean of float32 ---------------------------------------------- */

/* Lanes of torch's Vectorized<float> on an AVX2 CPU. */
#define TORCH_VEC_LANES 8

static int64_t ceil_log2(int64_t x) {
    if (x <= 2) return 1;
    int64_t bits = 0;
    for (uint64_t v = (uint64_t)(x - 1); v; v >>= 1) bits++;
    return bits;
}

/* torch's multi_row_sum: `size` rows of 4 items of `lanes` floats summed
 * into 4 partial sums per lane through 4 levels of accumulators, each
 * flushed into the next after 2^level_power rows. */
static void multi_row_sum(const float *x, int64_t size, int lanes,
                          float out[4][TORCH_VEC_LANES]) {
    enum { LEVELS = 4, ROWS = 4 };
    int64_t level_power = ceil_log2(size) / LEVELS;
    if (level_power < 4) level_power = 4;
    const int64_t level_step = (int64_t)1 << level_power;
    const int64_t level_mask = level_step - 1;
    float acc[LEVELS][ROWS][TORCH_VEC_LANES];
    memset(acc, 0, sizeof acc);

    int64_t i = 0;
    while (i + level_step <= size) {
        for (int64_t j = 0; j < level_step; j++, i++)
            for (int k = 0; k < ROWS; k++)
                for (int l = 0; l < lanes; l++) acc[0][k][l] += x[(i * ROWS + k) * lanes + l];
        for (int j = 1; j < LEVELS; j++) {
            for (int k = 0; k < ROWS; k++)
                for (int l = 0; l < lanes; l++) {
                    acc[j][k][l] += acc[j - 1][k][l];
                    acc[j - 1][k][l] = 0.0f;
                }
            if ((i & (level_mask << (j * level_power))) != 0) break;
        }
    }
    for (; i < size; i++)
        for (int k = 0; k < ROWS; k++)
            for (int l = 0; l < lanes; l++) acc[0][k][l] += x[(i * ROWS + k) * lanes + l];
    for (int j = 1; j < LEVELS; j++)
        for (int k = 0; k < ROWS; k++)
            for (int l = 0; l < lanes; l++) acc[0][k][l] += acc[j][k][l];
    memcpy(out, acc[0], sizeof acc[0]);
}

/* torch's row_sum over n items of `lanes` floats: rows of 4 items, the
 * leftover items into the first partial sum, then the 4 partials summed. */
static void row_sum(const float *x, int64_t n, int lanes, float out[TORCH_VEC_LANES]) {
    float partial[4][TORCH_VEC_LANES];
    int64_t rows = n / 4;
    multi_row_sum(x, rows, lanes, partial);
    for (int64_t i = rows * 4; i < n; i++)
        for (int l = 0; l < lanes; l++) partial[0][l] += x[i * lanes + l];
    for (int k = 1; k < 4; k++)
        for (int l = 0; l < lanes; l++) partial[0][l] += partial[k][l];
    memcpy(out, partial[0], sizeof partial[0]);
}

/* NOTE: replays one thread. With more threads and n >= 32768, torch splits
 * the sum into per-thread chunks, so its last bit can differ from this. */
float av_torch_mean_f32(const float *x, int64_t n) {
    if (n <= 0) return NAN;
    float lanes[TORCH_VEC_LANES];
    float sum;
    if (n < TORCH_VEC_LANES) {
        row_sum(x, n, 1, lanes);
        sum = lanes[0];
    } else {
        int64_t vectors = n / TORCH_VEC_LANES;
        row_sum(x, vectors, TORCH_VEC_LANES, lanes);
        sum = 0.0f;
        for (int64_t i = vectors * TORCH_VEC_LANES; i < n; i++) sum += x[i];
        for (int l = 0; l < TORCH_VEC_LANES; l++) sum += lanes[l];
    }
    return sum / (float)n;
}

/* ---- NF4 ---------------------------------------------------------------- */

/* torch.bucketize(v, midpoints): the number of midpoints m with
 * !(m >= v), so a value on a midpoint takes the lower code. */
static uint8_t nf4_code_of(const float midpoints[15], float v) {
    int lo = 0, hi = 15;
    while (lo < hi) {
        int mid = lo + (hi - lo) / 2;
        if (!(midpoints[mid] >= v))
            lo = mid + 1;
        else
            hi = mid;
    }
    return (uint8_t)lo;
}

static float clamp_unit(float v) {
    if (v < -1.0f) return -1.0f;
    if (v > 1.0f) return 1.0f;
    return v;
}

void av_nf4_absmax(const void *x, av_dtype dtype, int64_t n, int blocksize, float *absmax) {
    const float tiny = (float)1e-38;
    int64_t n_blocks = (n + blocksize - 1) / blocksize;
    for (int64_t b = 0; b < n_blocks; b++) {
        int64_t start = b * blocksize;
        int64_t end = start + blocksize < n ? start + blocksize : n;
        float amax = 0.0f;
        for (int64_t i = start; i < end; i++) {
            float a = fabsf(av_load_f32(x, dtype, i));
            if (a > amax) amax = a;
        }
        absmax[b] = end - start == blocksize || amax > tiny ? amax : tiny;
    }
}

void av_nf4_quantize(const void *x, av_dtype dtype, int64_t n, int blocksize, uint8_t *codes,
                     float *absmax) {
    float midpoints[15];
    for (int i = 0; i < 15; i++) midpoints[i] = (av_nf4_code[i] + av_nf4_code[i + 1]) / 2.0f;
    /* torch's clamp(min=1e-38) bound, a float32 subnormal. */
    const float tiny = (float)1e-38;

    int64_t n_blocks = (n + blocksize - 1) / blocksize;
    uint8_t pending = 0; /* high nibble waiting for its low nibble */
    for (int64_t b = 0; b < n_blocks; b++) {
        int64_t start = b * blocksize;
        int64_t end = start + blocksize < n ? start + blocksize : n;
        float amax = 0.0f;
        for (int64_t i = start; i < end; i++) {
            float a = fabsf(av_load_f32(x, dtype, i));
            if (a > amax) amax = a;
        }
        /* Full blocks multiply by the reciprocal and keep the unclamped
         * absmax; the short last block divides and stores the clamped one. */
        int full = end - start == blocksize;
        float clamped = amax > tiny ? amax : tiny;
        float inverse = 1.0f / clamped;
        absmax[b] = full ? amax : clamped;
        for (int64_t i = start; i < end; i++) {
            float v = av_load_f32(x, dtype, i);
            v = clamp_unit(full ? v * inverse : v / clamped);
            uint8_t code = nf4_code_of(midpoints, v);
            if (i % 2 == 0)
                pending = (uint8_t)(code << 4);
            else
                codes[i / 2] = pending | code;
        }
    }
    if (n % 2) codes[n / 2] = pending | nf4_code_of(midpoints, 0.0f);
}

void av_nf4_dequantize(const uint8_t *codes, const float *absmax, int64_t n, int blocksize,
                       float *out) {
    for (int64_t i = 0; i < n; i++) {
        uint8_t byte = codes[i / 2];
        uint8_t code = i % 2 == 0 ? byte >> 4 : byte & 0x0F;
        out[i] = av_nf4_code[code] * absmax[i / blocksize];
    }
}

/* ---- 8-bit blockwise (double quantization) ------------------------------ */

#define LUT_SIZE 65536

/* lut[i] is the map index bitsandbytes picks for the value
 * -1 + 2i / 65535: the number of midpoints below it. */
static void build_lut(const float map[AV_DYNAMIC_MAP_SIZE], uint8_t *lut) {
    float midpoints[AV_DYNAMIC_MAP_SIZE - 1];
    for (int i = 0; i < AV_DYNAMIC_MAP_SIZE - 1; i++) midpoints[i] = 0.5f * (map[i] + map[i + 1]);
    int code = 0;
    for (int i = 0; i < LUT_SIZE; i++) {
        float v = -1.0f + (2.0f * (float)i) / (float)(LUT_SIZE - 1);
        while (code < AV_DYNAMIC_MAP_SIZE - 1 && midpoints[code] < v) code++;
        lut[i] = (uint8_t)code;
    }
}

static uint16_t lut_index(float v) {
    v = clamp_unit(v);
    return (uint16_t)((v + 1.0f) * 0.5f * (float)(LUT_SIZE - 1) + 0.5f);
}

av_status av_blockwise8_quantize(const float map[AV_DYNAMIC_MAP_SIZE], const float *x, int64_t n,
                                 int blocksize, uint8_t *codes, float *absmax) {
    uint8_t *lut = malloc(LUT_SIZE);
    if (!lut) return av_set_error(AV_ERR_NOMEM, "out of memory for the 8-bit lookup table");
    build_lut(map, lut);
    int64_t n_blocks = (n + blocksize - 1) / blocksize;
    for (int64_t b = 0; b < n_blocks; b++) {
        int64_t start = b * blocksize;
        int64_t end = start + blocksize < n ? start + blocksize : n;
        float amax = 0.0f;
        for (int64_t i = start; i < end; i++) {
            float a = fabsf(x[i]);
            if (a > amax) amax = a;
        }
        absmax[b] = amax;
        if (amax == 0.0f) {
            memset(codes + start, 0, (size_t)(end - start));
            continue;
        }
        float inverse = 1.0f / amax;
        for (int64_t i = start; i < end; i++) codes[i] = lut[lut_index(x[i] * inverse)];
    }
    free(lut);
    return AV_OK;
}

av_status av_nf4_double_quant(const float *absmax, int64_t n_blocks, uint8_t *qabsmax,
                              float *nested_absmax, float *offset) {
    float *centered = malloc((size_t)n_blocks * sizeof *centered);
    if (!centered) return av_set_error(AV_ERR_NOMEM, "out of memory for %lld absmax values",
                                       (long long)n_blocks);
    float mean = av_torch_mean_f32(absmax, n_blocks);
    for (int64_t b = 0; b < n_blocks; b++) centered[b] = absmax[b] - mean;
    float map[AV_DYNAMIC_MAP_SIZE];
    av_dynamic_map(map);
    av_status status = av_blockwise8_quantize(map, centered, n_blocks, AV_NF4_NESTED_BLOCKSIZE,
                                              qabsmax, nested_absmax);
    free(centered);
    *offset = mean;
    return status;
}

void av_nf4_absmax_dequantize(const float map[AV_DYNAMIC_MAP_SIZE], const uint8_t *qabsmax,
                              const float *nested_absmax, int64_t n_blocks, int nested_blocksize,
                              float offset, float *absmax) {
    for (int64_t b = 0; b < n_blocks; b++) {
        float v = map[qabsmax[b]] * nested_absmax[b / nested_blocksize];
        absmax[b] = v + offset;
    }
}
