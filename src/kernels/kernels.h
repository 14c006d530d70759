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
 * Kernels called before it select the same way on first use but fall back
 * to the best set silently on an invalid value, so programs call this first
 * to report it. After a successful av_kernels_set_isa() and with
 * AIRAVATA_ISA unset it changes nothing: the caller's choice is kept. */
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

/* Storage format of an av_matrix. */
typedef enum {
    AV_MATRIX_DENSE = 0, /* F32, F16 or BF16 values, row-major */
    AV_MATRIX_NF4,       /* bitsandbytes NF4 codes used in place (see below) */
    AV_MATRIX_INT8,      /* LLM.int8 rows with one scale per row */
    AV_MATRIX_NF4_PACKED, /* NF4 codes repacked in row tiles (see below) */
    AV_MATRIX_INT8_PACKED, /* INT8 rows repacked in row tiles (see below) */
} av_matrix_format;

/* Values per quantization group of the quantized formats: one activation
 * scale, and for NF4 one weight scale, covers this many columns. */
#define AV_QGROUP 32

/* Rows per tile of the packed layouts, and values per block of packed NF4
 * (bitsandbytes' default block size, two groups). */
#define AV_PACK_TILE_ROWS 4
#define AV_NF4_BLOCK 64

/*
 * A weight matrix [rows, cols]. Zero-initialized quantization fields mean
 * a dense matrix, so `{.dtype, .rows, .cols, .data}` describes one.
 *
 * NF4 (cols a multiple of AV_QGROUP): `data` is bitsandbytes' packed codes
 * of the flattened row-major matrix, 16 bytes per group of 32 values, value
 * 2j in the high nibble of byte j and value 2j + 1 in the low nibble. Group
 * g (counted over the whole matrix) has the weight scale
 * scale[g >> group_shift], the float absmax of its bitsandbytes block of
 * 32 << group_shift values; value = av_nf4_code[code] * scale.
 *
 * NF4 packed (cols a multiple of AV_NF4_BLOCK): the same codes and scales
 * rearranged so that each thread reads one sequential stream. Rows form
 * tiles of AV_PACK_TILE_ROWS, the last tile padded with zero-scale rows.
 * For tile t, block b (columns 64b .. 64b + 63) and row i of the tile, step
 * s = t * (cols / 64) + b contains
 *   data[s * 128 + 32 * i .. + 31]  the block's 32 code bytes in
 *                                   bitsandbytes' order (value 2j in the
 *                                   high nibble of byte j);
 *   scale[s * 4 + i]                its absmax (a larger bitsandbytes block
 *                                   repeats its absmax for each of its
 *                                   64-value blocks).
 * row_stride is cols.
 *
 * INT8: `data` has rows of `row_stride` int8 values (cols rounded up to
 * AV_QGROUP, the padding zero) and scale[r] is the factor of row r:
 * value = q * scale[r].
 *
 * INT8 packed: the same values in tiles of AV_PACK_TILE_ROWS rows, the last
 * tile padded with zero rows. For tile t, group g (columns 32g .. 32g + 31,
 * zero past cols) and row i of the tile, step s = t * (row_stride / 32) + g
 * contains data[s * 128 + 32 * i .. + 31]. scale[r] is the factor of row r, and
 * row_stride is cols rounded up to AV_QGROUP.
 */
typedef struct {
    av_dtype dtype;   /* dense: F32, F16 or BF16; NF4: U8; INT8: I8 */
    int64_t rows;
    int64_t cols;
    const void *data;
    av_matrix_format format;
    int64_t row_stride;  /* INT8: int8 values per stored row */
    const float *scale;  /* NF4: per block; INT8: per row */
    int group_shift;     /* NF4: log2(blocksize / AV_QGROUP) */
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

/* ---- quantized matrices (qmatmul.c) ----------------------------------- */

/* Describes bitsandbytes NF4 codes (ceil(rows * cols / 2) bytes) with their
 * dequantized absmax (one float per `blocksize` values) as a matrix, without
 * copying either. Fails with AV_ERR_UNSUPPORTED when cols is not a multiple
 * of AV_QGROUP (the caller then dequantizes instead) and AV_ERR_INVALID for
 * a block size that is not a power of two of at least AV_QGROUP. */
av_status av_matrix_nf4(av_matrix *m, int64_t rows, int64_t cols, const uint8_t *codes,
                        const float *absmax, int blocksize);
/* Repacks bitsandbytes NF4 codes and their dequantized absmax into the
 * packed layout, on the threads of `pool` (NULL: the calling thread). The
 * result is one new allocation of 64-byte aligned memory, returned in
 * *storage, and the caller frees it with free() after the matrix. Fails
 * with AV_ERR_UNSUPPORTED when cols is not a multiple of AV_NF4_BLOCK or
 * the block size is AV_QGROUP (use av_matrix_nf4 then), AV_ERR_INVALID for
 * a block size that is not a power of two of at least AV_QGROUP, and
 * AV_ERR_NOMEM. */
av_status av_matrix_nf4_pack(av_matrix *m, int64_t rows, int64_t cols, const uint8_t *codes,
                             const float *absmax, int blocksize, av_threadpool *pool,
                             void **storage);
/* Describes int8 rows of `row_stride` values (a multiple of AV_QGROUP, at
 * least cols, the padding zero) with one float factor per row. */
av_status av_matrix_int8(av_matrix *m, int64_t rows, int64_t cols, int64_t row_stride,
                         const int8_t *q, const float *row_scale);
/* Copies int8 rows [rows, cols] (row-major, no padding) and their factors
 * row_scale[rows] into the packed INT8 layout, on the threads of `pool`
 * (NULL: the calling thread). The result is one new 64-byte aligned
 * allocation, returned in *storage and freed by the caller with free().
 * Fails with AV_ERR_INVALID for an empty or too large shape, and with
 * AV_ERR_NOMEM. */
av_status av_matrix_int8_pack(av_matrix *m, int64_t rows, int64_t cols, const int8_t *q,
                              const float *row_scale, av_threadpool *pool, void **storage);
/* Bytes a quantized matrix occupies: codes and scales. */
uint64_t av_matrix_bytes(const av_matrix *m);

/* Orders of the int8 activations, matching where NF4 keeps each value. */
typedef enum {
    AV_XORDER_NATURAL = 0, /* INT8: column order */
    AV_XORDER_NF4_GROUP,   /* NF4 in place: per group, its 16 even-indexed
                              values (high nibbles), then its 16 odd ones */
    AV_XORDER_NF4_BLOCK,   /* packed NF4: per pair of groups (g, g + 1), the
                              even values of g, of g + 1, then the odd values
                              of g, of g + 1: the high nibbles of a 32-byte
                              block, then its low nibbles. A last unpaired
                              group uses AV_XORDER_NF4_GROUP. */
} av_xorder;

/* Quantizes activations for the integer products: x [n_tokens, cols] f32
 * becomes xq [n_tokens, cols32] int8 and xd [n_tokens, cols32 / 32] f32
 * with cols32 = cols rounded up to AV_QGROUP, the padding zero. Per group
 * of 32: d = max|x| / 127, q = round-to-nearest-even(x * (127 / max|x|)),
 * stored in `order`. Every instruction set produces the same bytes. */
void av_quantize_activations(const float *x, int n_tokens, int64_t cols, av_xorder order,
                             int8_t *xq, float *xd);

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
