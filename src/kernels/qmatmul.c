/*
 * qmatmul.c - y = W x for NF4 and INT8 weights with integer dot products.
 *
 * This file owns the quantized matrix layouts (kernels.h), the activation
 * quantizer, the scalar reference of the quantized product and its parallel
 * driver. qmatmul_avx2.c and qmatmul_avx512.c compute the same integer sums
 * with SIMD.
 *
 * The product works like llama.cpp's Q4_0 x Q8_0: each call quantizes the
 * activations once to int8 in groups of 32 with one f32 scale per group,
 * then for every group of 32 weights computes an exact int32 sum of int8
 * products and adds it, times the weight and activation scales, to an f32
 * accumulator.
 *
 *   NF4: the 16 NF4 levels become int8 by round(level * 127) (NF4_LEVELS_I8
 *   below), and the group's weight scale is bitsandbytes' float absmax of
 *   its block. The codes stay where bitsandbytes put them (in the
 *   checkpoint's memory map): the even values of a group sit in the high
 *   nibbles and the odd ones in the low nibbles, so the activations are
 *   stored in that order instead of reordering the weights.
 *   INT8: the weights already are int8; the row factor is SCB / 127.
 *
 * The loader repacks NF4 with 64-value blocks into AV_MATRIX_NF4_PACKED
 * and INT8 into AV_MATRIX_INT8_PACKED (kernels.h): the codes of four rows,
 * block by block, in one stream. The in-place NF4 layout reads four rows
 * and the scale array as five streams with a jump every 2 KiB. On the
 * 2-core AMD EPYC development machine its decode kernel reached about 55 %
 * of the memory bandwidth that a plain read gets, and INT8 rows read in
 * place about 70 %. One stream lets the hardware prefetcher run ahead, and
 * the decode kernels prefetch further: both measured 85-95 %.
 *
 * Precision, against the exact f32 product of bitsandbytes' dequantized
 * weights (test_qmatmul's precision summary: 256 x 4096 weights, N(0, 1)
 * activations, relative RMS error of the outputs):
 *   - INT8 weights are exact, so its 0.47 % is activation rounding alone;
 *   - NF4 with the int8 level table: 0.84 %. A 16-bit table (levels * 2^14,
 *     pmaddwd on int16 activations) measures 0.57 %, because the
 *     activation rounding stays, at about twice the decode instructions;
 *   - NF4 itself is 9.1 % away from the original weights, ten times more
 *     than either, so the int8 table was chosen for speed.
 * On the tiny random models of the tests these errors grow through the
 * layers to 3-4 % of the logits (test_bnb_models).
 * The test also checks a strict per-output bound: |y - y_exact| <=
 * sum_i |w_i| * d_x / 2 + |x~_i| * e_w + f32 rounding, with d_x the group's
 * activation step and e_w = absmax * max|level * 127 - round(level * 127)|
 * / 127.
 */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "kernels/kernels_isa.h"

/* round(level * 127) of bitsandbytes' NF4 levels, in code order. */
const int8_t av_nf4_levels_i8[16] = {
    -127, -88, -67, -50, -36, -23, -12, 0, 10, 20, 31, 43, 56, 71, 92, 127,
};

/* The value of one step of av_nf4_levels_i8. */
#define NF4_LEVEL_UNIT (1.0f / 127.0f)

/* Below this many multiply-adds a product runs on the calling thread. */
#define PARALLEL_MIN_WORK 16384
/* Chunks are multiples of this many rows (a multiple of the SIMD tiles and
 * of AV_PACK_TILE_ROWS). */
#define CHUNK_ROW_ALIGN 16
#define CHUNKS_PER_THREAD 8
/* Activation buffers up to this many bytes live on the stack (decode). */
#define STACK_ACTIVATION_BYTES 32768

static int64_t round_up_group(int64_t cols) {
    return (cols + AV_QGROUP - 1) / AV_QGROUP * AV_QGROUP;
}

/* ---- layouts ------------------------------------------------------------ */

av_status av_matrix_nf4(av_matrix *m, int64_t rows, int64_t cols, const uint8_t *codes,
                        const float *absmax, int blocksize) {
    memset(m, 0, sizeof *m);
    if (rows < 1 || cols < 1)
        return av_set_error(AV_ERR_INVALID, "NF4 matrix: shape [%lld, %lld] is empty",
                            (long long)rows, (long long)cols);
    if (cols % AV_QGROUP != 0)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "NF4 matrix [%lld, %lld]: the integer kernels need a column count "
                            "that is a multiple of %d",
                            (long long)rows, (long long)cols, AV_QGROUP);
    int shift = 0;
    while (shift < 16 && (AV_QGROUP << shift) < blocksize) shift++;
    if ((AV_QGROUP << shift) != blocksize)
        return av_set_error(AV_ERR_INVALID,
                            "NF4 matrix: block size %d is not a power of two of at least %d",
                            blocksize, AV_QGROUP);
    m->dtype = AV_DTYPE_U8;
    m->rows = rows;
    m->cols = cols;
    m->data = codes;
    m->format = AV_MATRIX_NF4;
    m->row_stride = cols;
    m->scale = absmax;
    m->group_shift = shift;
    return AV_OK;
}

/* Returns the row tiles of a packed matrix of `rows` rows. */
static int64_t tile_count(int64_t rows) {
    return (rows + AV_PACK_TILE_ROWS - 1) / AV_PACK_TILE_ROWS;
}

/* Allocates n bytes of 64-byte aligned memory for a packed matrix. */
static uint8_t *alloc_packed(size_t n) {
    size_t total = (n + 63) / 64 * 64;
    uint8_t *buf = aligned_alloc(64, total);
#ifdef MADV_HUGEPAGE
    /* Asks for 2 MiB pages, so streaming takes fewer TLB misses. */
    if (buf && total >= (2u << 20)) madvise(buf, total, MADV_HUGEPAGE);
#endif
    return buf;
}

/* Bytes of the code stream and scales of a packed NF4 matrix. */
static void nf4_packed_sizes(int64_t rows, int64_t cols, size_t *code_bytes,
                             size_t *scale_bytes) {
    int64_t steps = tile_count(rows) * (cols / AV_NF4_BLOCK);
    *code_bytes = (size_t)steps * AV_PACK_TILE_ROWS * (AV_NF4_BLOCK / 2);
    *scale_bytes = (size_t)steps * AV_PACK_TILE_ROWS * sizeof(float);
}

typedef struct {
    const uint8_t *codes;
    const float *absmax;
    int blocksize;
    int64_t rows, cols;
    uint8_t *dst;
    float *dst_scale;
} nf4_pack_job;

/* Packs this thread's share of the row tiles. Threads also share the first
 * touch of the new memory, which costs about as much as the copy. */
static void nf4_pack_tiles(void *arg, int ith, int nth) {
    const nf4_pack_job *job = arg;
    const int64_t tiles = tile_count(job->rows);
    const int64_t n_blocks = job->cols / AV_NF4_BLOCK;
    const size_t block_bytes = AV_NF4_BLOCK / 2;
    for (int64_t tile = tiles * ith / nth; tile < tiles * (ith + 1) / nth; tile++) {
        uint8_t *dst = job->dst + (size_t)(tile * n_blocks) * AV_PACK_TILE_ROWS * block_bytes;
        float *dst_scale = job->dst_scale + tile * n_blocks * AV_PACK_TILE_ROWS;
        for (int64_t b = 0; b < n_blocks; b++)
            for (int i = 0; i < AV_PACK_TILE_ROWS; i++, dst += block_bytes, dst_scale++) {
                int64_t r = tile * AV_PACK_TILE_ROWS + i;
                if (r >= job->rows) {
                    memset(dst, 0, block_bytes);
                    *dst_scale = 0.0f;
                    continue;
                }
                int64_t first = r * job->cols + b * AV_NF4_BLOCK; /* flat index, even */
                memcpy(dst, job->codes + first / 2, block_bytes);
                *dst_scale = job->absmax[first / job->blocksize];
            }
    }
}

av_status av_matrix_nf4_pack(av_matrix *m, int64_t rows, int64_t cols, const uint8_t *codes,
                             const float *absmax, int blocksize, av_threadpool *pool,
                             void **storage) {
    *storage = NULL;
    av_status status = av_matrix_nf4(m, rows, cols, codes, absmax, blocksize);
    if (status) return status;
    if (cols % AV_NF4_BLOCK != 0 || blocksize < AV_NF4_BLOCK) {
        memset(m, 0, sizeof *m);
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "NF4 matrix [%lld, %lld] with block size %d: the packed layout "
                            "needs %d-value blocks and a column count that is a multiple of %d",
                            (long long)rows, (long long)cols, blocksize, AV_NF4_BLOCK,
                            AV_NF4_BLOCK);
    }
    if (rows > ((int64_t)1 << 40) / cols) {
        memset(m, 0, sizeof *m);
        return av_set_error(AV_ERR_INVALID, "NF4 matrix [%lld, %lld] is too large to pack",
                            (long long)rows, (long long)cols);
    }
    size_t code_bytes, scale_bytes;
    nf4_packed_sizes(rows, cols, &code_bytes, &scale_bytes);
    uint8_t *buf = alloc_packed(code_bytes + scale_bytes);
    if (!buf) {
        memset(m, 0, sizeof *m);
        return av_set_error(AV_ERR_NOMEM, "NF4 matrix [%lld, %lld]: out of memory for %zu "
                            "bytes of packed codes", (long long)rows, (long long)cols,
                            code_bytes + scale_bytes);
    }
    nf4_pack_job job = {
        .codes = codes, .absmax = absmax, .blocksize = blocksize, .rows = rows, .cols = cols,
        .dst = buf, .dst_scale = (float *)(buf + code_bytes),
    };
    av_threadpool_run(pool, nf4_pack_tiles, &job); /* a NULL pool runs it here */
    m->format = AV_MATRIX_NF4_PACKED;
    m->data = buf;
    m->scale = job.dst_scale;
    m->group_shift = 1;
    *storage = buf;
    return AV_OK;
}

av_status av_matrix_int8(av_matrix *m, int64_t rows, int64_t cols, int64_t row_stride,
                         const int8_t *q, const float *row_scale) {
    memset(m, 0, sizeof *m);
    if (rows < 1 || cols < 1)
        return av_set_error(AV_ERR_INVALID, "INT8 matrix: shape [%lld, %lld] is empty",
                            (long long)rows, (long long)cols);
    if (row_stride < cols || row_stride % AV_QGROUP != 0)
        return av_set_error(AV_ERR_INVALID,
                            "INT8 matrix [%lld, %lld]: row stride %lld must be at least the "
                            "column count and a multiple of %d",
                            (long long)rows, (long long)cols, (long long)row_stride, AV_QGROUP);
    m->dtype = AV_DTYPE_I8;
    m->rows = rows;
    m->cols = cols;
    m->data = q;
    m->format = AV_MATRIX_INT8;
    m->row_stride = row_stride;
    m->scale = row_scale;
    return AV_OK;
}

typedef struct {
    const int8_t *q;
    int64_t rows, cols, n_groups;
    int8_t *dst;
} int8_pack_job;

/* Packs this thread's share of the row tiles (see nf4_pack_tiles). */
static void int8_pack_tiles(void *arg, int ith, int nth) {
    const int8_pack_job *job = arg;
    const int64_t tiles = tile_count(job->rows);
    for (int64_t tile = tiles * ith / nth; tile < tiles * (ith + 1) / nth; tile++) {
        int8_t *dst = job->dst + (size_t)(tile * job->n_groups) * AV_PACK_TILE_ROWS * AV_QGROUP;
        for (int64_t g = 0; g < job->n_groups; g++)
            for (int i = 0; i < AV_PACK_TILE_ROWS; i++, dst += AV_QGROUP) {
                int64_t r = tile * AV_PACK_TILE_ROWS + i, c0 = g * AV_QGROUP;
                int64_t n = r < job->rows ? job->cols - c0 : 0;
                if (n > AV_QGROUP) n = AV_QGROUP;
                if (n > 0) memcpy(dst, job->q + r * job->cols + c0, (size_t)n);
                if (n < AV_QGROUP) memset(dst + n, 0, (size_t)(AV_QGROUP - n));
            }
    }
}

av_status av_matrix_int8_pack(av_matrix *m, int64_t rows, int64_t cols, const int8_t *q,
                              const float *row_scale, av_threadpool *pool, void **storage) {
    *storage = NULL;
    memset(m, 0, sizeof *m);
    if (rows < 1 || cols < 1 || rows > ((int64_t)1 << 40) / cols)
        return av_set_error(AV_ERR_INVALID, "INT8 matrix: shape [%lld, %lld] is empty or too "
                            "large to pack", (long long)rows, (long long)cols);
    const int64_t stride = round_up_group(cols);
    const size_t code_bytes = (size_t)(tile_count(rows) * AV_PACK_TILE_ROWS * stride);
    const size_t bytes = code_bytes + (size_t)rows * sizeof(float);
    uint8_t *buf = alloc_packed(bytes);
    if (!buf)
        return av_set_error(AV_ERR_NOMEM, "INT8 matrix [%lld, %lld]: out of memory for %zu "
                            "bytes of packed rows", (long long)rows, (long long)cols, bytes);
    int8_pack_job job = {.q = q, .rows = rows, .cols = cols, .n_groups = stride / AV_QGROUP,
                         .dst = (int8_t *)buf};
    av_threadpool_run(pool, int8_pack_tiles, &job);
    float *scale = (float *)(buf + code_bytes); /* code_bytes is a multiple of 128 */
    memcpy(scale, row_scale, (size_t)rows * sizeof(float));
    m->dtype = AV_DTYPE_I8;
    m->rows = rows;
    m->cols = cols;
    m->data = buf;
    m->format = AV_MATRIX_INT8_PACKED;
    m->row_stride = stride;
    m->scale = scale;
    *storage = buf;
    return AV_OK;
}

uint64_t av_matrix_bytes(const av_matrix *m) {
    uint64_t n = (uint64_t)m->rows * (uint64_t)m->cols;
    switch (m->format) {
    case AV_MATRIX_NF4: {
        uint64_t blocks = (n / AV_QGROUP + (1u << m->group_shift) - 1) >> m->group_shift;
        return n / 2 + blocks * sizeof(float);
    }
    case AV_MATRIX_NF4_PACKED: {
        size_t code_bytes, scale_bytes;
        nf4_packed_sizes(m->rows, m->cols, &code_bytes, &scale_bytes);
        return (uint64_t)code_bytes + (uint64_t)scale_bytes;
    }
    case AV_MATRIX_INT8:
        return (uint64_t)m->rows * (uint64_t)m->row_stride + (uint64_t)m->rows * sizeof(float);
    case AV_MATRIX_INT8_PACKED: {
        return (uint64_t)tile_count(m->rows) * AV_PACK_TILE_ROWS * (uint64_t)m->row_stride +
               (uint64_t)m->rows * sizeof(float);
    }
    case AV_MATRIX_DENSE: break;
    }
    return n * av_dtype_size(m->dtype);
}

/* ---- activations ---------------------------------------------------------- */

/* Rounds to nearest even as vcvtps2dq does, saturating like its pack to
 * int8 (NaN becomes -128 there, and here). */
static int8_t round_to_i8(float v) {
    if (!(v >= -128.0f)) return -128; /* also NaN */
    if (v >= 127.0f) return 127;
    return (int8_t)lrintf(v);
}

/* Returns the index in xq of value i of group g under `order` (see
 * av_xorder). */
static int64_t xorder_slot(av_xorder order, int64_t g, int64_t n_groups, int i) {
    const int half = AV_QGROUP / 2;
    switch (order) {
    case AV_XORDER_NATURAL: break;
    case AV_XORDER_NF4_GROUP: return g * AV_QGROUP + (i & 1) * half + i / 2;
    case AV_XORDER_NF4_BLOCK:
        if ((g & 1) == 0 && g + 1 == n_groups) /* unpaired last group */
            return g * AV_QGROUP + (i & 1) * half + i / 2;
        return (g & ~(int64_t)1) * AV_QGROUP + (i & 1) * AV_QGROUP + (g & 1) * half + i / 2;
    }
    return g * AV_QGROUP + i;
}

void av_quantize_row_scalar(const float *x, int64_t cols, av_xorder order, int8_t *xq,
                            float *xd) {
    int64_t cols32 = round_up_group(cols), n_groups = cols32 / AV_QGROUP;
    for (int64_t g = 0; g < n_groups; g++) {
        const int64_t c0 = g * AV_QGROUP;
        float v[AV_QGROUP] = {0};
        for (int i = 0; i < AV_QGROUP && c0 + i < cols; i++) v[i] = x[c0 + i];
        float amax = 0.0f;
        for (int i = 0; i < AV_QGROUP; i++) amax = fmaxf(amax, fabsf(v[i]));
        float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
        xd[g] = amax / 127.0f;
        for (int i = 0; i < AV_QGROUP; i++)
            xq[xorder_slot(order, g, n_groups, i)] = round_to_i8(v[i] * inv);
    }
}

static av_quantize_row_fn quantize_row_fn(void) {
    return av_kernels_isa() >= AV_ISA_AVX2 ? av_quantize_row_avx2 : av_quantize_row_scalar;
}

void av_quantize_activations(const float *x, int n_tokens, int64_t cols, av_xorder order,
                             int8_t *xq, float *xd) {
    av_quantize_row_fn fn = quantize_row_fn();
    int64_t cols32 = round_up_group(cols);
    for (int t = 0; t < n_tokens; t++)
        fn(x + (int64_t)t * cols, cols, order, xq + (int64_t)t * cols32,
           xd + (int64_t)t * (cols32 / AV_QGROUP));
}

av_xorder av_matrix_xorder(const av_matrix *w) {
    switch (w->format) {
    case AV_MATRIX_NF4: return AV_XORDER_NF4_GROUP;
    case AV_MATRIX_NF4_PACKED: return AV_XORDER_NF4_BLOCK;
    case AV_MATRIX_INT8:
    case AV_MATRIX_INT8_PACKED:
    case AV_MATRIX_DENSE: break;
    }
    return AV_XORDER_NATURAL;
}

/* ---- scalar reference ------------------------------------------------------- */

/* Sum over one group of NF4 codes (16 bytes) times activations in NF4
 * order: byte j's high nibble pairs with xq[j], its low nibble with
 * xq[16 + j]. */
static int32_t dot_nf4_group(const uint8_t *codes, const int8_t *xq) {
    int32_t sum = 0;
    for (int j = 0; j < AV_QGROUP / 2; j++) {
        sum += av_nf4_levels_i8[codes[j] >> 4] * xq[j];
        sum += av_nf4_levels_i8[codes[j] & 15] * xq[AV_QGROUP / 2 + j];
    }
    return sum;
}

static int32_t dot_int8_group(const int8_t *q, const int8_t *xq) {
    int32_t sum = 0;
    for (int i = 0; i < AV_QGROUP; i++) sum += q[i] * xq[i];
    return sum;
}

/* Packed NF4: one 64-value block of one row, its codes and activations in
 * AV_XORDER_NF4_BLOCK order (even values at xq[0..31], odd at xq[32..63]).
 * sums[h] gets the integer sum of group h of the block. */
static void dot_nf4_block(const uint8_t *codes, const int8_t *xq, int32_t sums[2]) {
    const int half = AV_QGROUP / 2;
    for (int h = 0; h < 2; h++) {
        int32_t sum = 0;
        for (int j = h * half; j < (h + 1) * half; j++) {
            sum += av_nf4_levels_i8[codes[j] >> 4] * xq[j];
            sum += av_nf4_levels_i8[codes[j] & 15] * xq[AV_QGROUP + j];
        }
        sums[h] = sum;
    }
}

static void qmatmul_rows_nf4_packed_scalar(const av_matrix *w, const int8_t *xq,
                                           const float *xd, int n_tokens, float *y, int64_t r0,
                                           int64_t r1) {
    const int64_t n_blocks = w->cols / AV_NF4_BLOCK;
    const uint8_t *codes = w->data;
    for (int64_t r = r0; r < r1; r++) {
        const int64_t tile = r / AV_PACK_TILE_ROWS, i = r % AV_PACK_TILE_ROWS;
        for (int t = 0; t < n_tokens; t++) {
            const int8_t *xt = xq + (int64_t)t * w->cols;
            const float *dt = xd + (int64_t)t * n_blocks * AV_XSCALES_PER_BLOCK;
            float acc = 0.0f;
            for (int64_t b = 0; b < n_blocks; b++) {
                const int64_t step = tile * n_blocks + b;
                int32_t sums[2];
                dot_nf4_block(codes + (step * AV_PACK_TILE_ROWS + i) * (AV_NF4_BLOCK / 2),
                              xt + b * AV_NF4_BLOCK, sums);
                float ws = w->scale[step * AV_PACK_TILE_ROWS + i];
                const float *db = dt + b * AV_XSCALES_PER_BLOCK;
                acc += (float)sums[0] * (ws * db[0]);
                acc += (float)sums[1] * (ws * db[AV_XSCALES_PER_BLOCK / 2]);
            }
            y[(int64_t)t * w->rows + r] = acc * NF4_LEVEL_UNIT;
        }
    }
}

/* Returns the 32 values of group g of row r of a packed INT8 matrix. */
static const int8_t *int8_packed_group(const av_matrix *w, int64_t r, int64_t g) {
    const int64_t n_groups = w->row_stride / AV_QGROUP;
    const int64_t step = r / AV_PACK_TILE_ROWS * n_groups + g;
    return (const int8_t *)w->data + (step * AV_PACK_TILE_ROWS + r % AV_PACK_TILE_ROWS) * AV_QGROUP;
}

void av_qmatmul_rows_scalar(const av_matrix *w, const int8_t *xq, const float *xd,
                            int n_tokens, float *y, int64_t r0, int64_t r1) {
    if (w->format == AV_MATRIX_NF4_PACKED) {
        qmatmul_rows_nf4_packed_scalar(w, xq, xd, n_tokens, y, r0, r1);
        return;
    }
    if (w->format == AV_MATRIX_INT8_PACKED) {
        const int64_t n_groups = w->row_stride / AV_QGROUP;
        for (int64_t r = r0; r < r1; r++)
            for (int t = 0; t < n_tokens; t++) {
                const int8_t *xt = xq + (int64_t)t * w->row_stride;
                const float *dt = xd + (int64_t)t * n_groups;
                float acc = 0.0f;
                for (int64_t g = 0; g < n_groups; g++)
                    acc += (float)dot_int8_group(int8_packed_group(w, r, g), xt + g * AV_QGROUP) *
                           dt[g];
                y[(int64_t)t * w->rows + r] = acc * w->scale[r];
            }
        return;
    }
    const int64_t cols32 = round_up_group(w->cols), n_groups = cols32 / AV_QGROUP;
    for (int64_t r = r0; r < r1; r++) {
        for (int t = 0; t < n_tokens; t++) {
            const int8_t *xt = xq + (int64_t)t * cols32;
            const float *dt = xd + (int64_t)t * n_groups;
            float acc = 0.0f;
            if (w->format == AV_MATRIX_NF4) {
                const int64_t g0 = r * n_groups;
                const uint8_t *codes = (const uint8_t *)w->data + g0 * (AV_QGROUP / 2);
                for (int64_t g = 0; g < n_groups; g++) {
                    int32_t sum = dot_nf4_group(codes + g * (AV_QGROUP / 2), xt + g * AV_QGROUP);
                    float scale = w->scale[(g0 + g) >> w->group_shift] * dt[g];
                    acc += (float)sum * scale;
                }
                acc *= NF4_LEVEL_UNIT;
            } else {
                const int8_t *q = (const int8_t *)w->data + r * w->row_stride;
                for (int64_t g = 0; g < n_groups; g++)
                    acc += (float)dot_int8_group(q + g * AV_QGROUP, xt + g * AV_QGROUP) * dt[g];
                acc *= w->scale[r];
            }
            y[(int64_t)t * w->rows + r] = acc;
        }
    }
}

/* ---- driver --------------------------------------------------------------- */

static av_qmatmul_rows_fn qmatmul_rows_fn(void) {
    switch (av_kernels_isa()) {
    case AV_ISA_AVX512: return av_qmatmul_rows_avx512;
    case AV_ISA_AVX2: return av_qmatmul_rows_avx2;
    case AV_ISA_SCALAR: break;
    }
    return av_qmatmul_rows_scalar;
}

typedef struct {
    const av_matrix *w;
    const int8_t *xq;
    const float *xd;
    int n_tokens;
    float *y;
    av_qmatmul_rows_fn rows_fn;
    int64_t chunk_rows;
    int64_t n_chunks;
    atomic_llong next_chunk;
} qmatmul_job;

static void qmatmul_worker(void *arg, int ith, int nth) {
    qmatmul_job *job = arg;
    for (;;) {
        int64_t chunk = atomic_fetch_add_explicit(&job->next_chunk, 1, memory_order_relaxed);
        if (chunk >= job->n_chunks) break;
        int64_t r0 = chunk * job->chunk_rows;
        int64_t r1 = r0 + job->chunk_rows < job->w->rows ? r0 + job->chunk_rows : job->w->rows;
        job->rows_fn(job->w, job->xq, job->xd, job->n_tokens, job->y, r0, r1);
    }
}

/* Runs the product from quantized activations, on the pool when pool is
 * not NULL. */
static void qmatmul_run(av_threadpool *pool, av_qmatmul_rows_fn rows_fn, const av_matrix *w,
                        const int8_t *xq, const float *xd, int n_tokens, float *y) {
    int nth = pool ? av_threadpool_size(pool) : 1;
    double work = (double)w->rows * (double)w->cols * n_tokens;
    if (nth == 1 || work < PARALLEL_MIN_WORK) {
        rows_fn(w, xq, xd, n_tokens, y, 0, w->rows);
        return;
    }
    int64_t chunk = w->rows / ((int64_t)nth * CHUNKS_PER_THREAD);
    chunk = (chunk + CHUNK_ROW_ALIGN - 1) / CHUNK_ROW_ALIGN * CHUNK_ROW_ALIGN;
    if (chunk < CHUNK_ROW_ALIGN) chunk = CHUNK_ROW_ALIGN;
    qmatmul_job job = {
        .w = w, .xq = xq, .xd = xd, .n_tokens = n_tokens, .y = y, .rows_fn = rows_fn,
        .chunk_rows = chunk, .n_chunks = (w->rows + chunk - 1) / chunk,
    };
    atomic_init(&job.next_chunk, 0);
    av_threadpool_run(pool, qmatmul_worker, &job);
}

/* Activation scales per group that the products of w read, per token:
 * one per group, or for packed NF4 eight per block (AV_XSCALES_PER_BLOCK). */
static int64_t xscales_per_token(const av_matrix *w, int64_t n_groups) {
    return w->format == AV_MATRIX_NF4_PACKED ? n_groups / 2 * AV_XSCALES_PER_BLOCK : n_groups;
}

/* Quantizes x with `quantize` and runs the product with `rows_fn`. */
static void qmatmul(av_threadpool *pool, const av_matrix *w, const float *x, int n_tokens,
                    float *y, av_quantize_row_fn quantize, av_qmatmul_rows_fn rows_fn) {
    if (n_tokens <= 0 || w->rows <= 0) return;
    const int64_t cols32 = round_up_group(w->cols), n_groups = cols32 / AV_QGROUP;
    const int64_t n_scales = xscales_per_token(w, n_groups);
    const int expand = n_scales != n_groups;
    const size_t q_bytes = (size_t)n_tokens * (size_t)cols32;
    /* With expanded scales, one more row of per-group scales to expand from. */
    const size_t d_bytes = ((size_t)n_tokens * (size_t)n_scales + (expand ? (size_t)n_groups : 0)) *
                           sizeof(float);
    _Alignas(64) unsigned char stack[STACK_ACTIVATION_BYTES];
    unsigned char *buf = stack;
    if (q_bytes + d_bytes > sizeof stack && !(buf = malloc(q_bytes + d_bytes))) {
        /* av_matmul cannot fail, so the output shows the failure. */
        av_log(AV_LOG_ERROR, "quantized matmul: out of memory for %zu bytes of activations",
               q_bytes + d_bytes);
        for (size_t i = 0; i < (size_t)n_tokens * (size_t)w->rows; i++) y[i] = NAN;
        return;
    }
    float *xd = (float *)buf;
    float *group_scales = xd + (size_t)n_tokens * (size_t)n_scales;
    int8_t *xq = (int8_t *)(buf + d_bytes);
    av_xorder order = av_matrix_xorder(w);
    for (int t = 0; t < n_tokens; t++) {
        float *xt = xd + (int64_t)t * n_scales;
        quantize(x + (int64_t)t * w->cols, w->cols, order, xq + (int64_t)t * cols32,
                 expand ? group_scales : xt);
        if (!expand) continue;
        /* Lanes 0-3 of a block's sums belong to its first group, 4-7 to
         * its second (qmatmul_avx2.c). */
        for (int64_t g = 0; g < n_groups; g++)
            for (int k = 0; k < AV_XSCALES_PER_BLOCK / 2; k++)
                xt[g * (AV_XSCALES_PER_BLOCK / 2) + k] = group_scales[g];
    }
    qmatmul_run(pool, rows_fn, w, xq, xd, n_tokens, y);
    if (buf != stack) free(buf);
}

void av_qmatmul(av_threadpool *pool, const av_matrix *w, const float *x, int n_tokens,
                float *y) {
    qmatmul(pool, w, x, n_tokens, y, quantize_row_fn(), qmatmul_rows_fn());
}

void av_qmatmul_ref(const av_matrix *w, const float *x, int n_tokens, float *y) {
    qmatmul(NULL, w, x, n_tokens, y, av_quantize_row_scalar, av_qmatmul_rows_scalar);
}

void av_qmatrix_row(const av_matrix *w, int64_t row, float *out) {
    if (w->format == AV_MATRIX_INT8_PACKED) {
        for (int64_t c = 0; c < w->cols; c++)
            out[c] = (float)int8_packed_group(w, row, c / AV_QGROUP)[c % AV_QGROUP] * w->scale[row];
        return;
    }
    if (w->format == AV_MATRIX_INT8) {
        const int8_t *q = (const int8_t *)w->data + row * w->row_stride;
        for (int64_t c = 0; c < w->cols; c++) out[c] = (float)q[c] * w->scale[row];
        return;
    }
    /* The float levels are round(level * 127) / 127 here, the values the
     * integer product uses. */
    if (w->format == AV_MATRIX_NF4_PACKED) {
        const int64_t n_blocks = w->cols / AV_NF4_BLOCK;
        const int64_t tile = row / AV_PACK_TILE_ROWS, i = row % AV_PACK_TILE_ROWS;
        for (int64_t b = 0; b < n_blocks; b++) {
            const int64_t slot = (tile * n_blocks + b) * AV_PACK_TILE_ROWS + i;
            const uint8_t *codes = (const uint8_t *)w->data + slot * (AV_NF4_BLOCK / 2);
            const float absmax = w->scale[slot];
            for (int c = 0; c < AV_NF4_BLOCK; c++) {
                uint8_t code = c & 1 ? codes[c / 2] & 15 : codes[c / 2] >> 4;
                out[b * AV_NF4_BLOCK + c] = (float)av_nf4_levels_i8[code] * NF4_LEVEL_UNIT * absmax;
            }
        }
        return;
    }
    const int64_t g0 = row * (w->cols / AV_QGROUP);
    const uint8_t *codes = (const uint8_t *)w->data + row * (w->cols / 2);
    for (int64_t c = 0; c < w->cols; c++) {
        uint8_t code = c & 1 ? codes[c / 2] & 15 : codes[c / 2] >> 4;
        float absmax = w->scale[(g0 + c / AV_QGROUP) >> w->group_shift];
        out[c] = (float)av_nf4_levels_i8[code] * NF4_LEVEL_UNIT * absmax;
    }
}
