/*
 * quant.h - internal interface of bitsandbytes-compatible quantization.
 *
 * Three things live here:
 *   1. The quantization math of bitsandbytes 0.50.2 as it runs on the CPU
 *      (NF4 blockwise with optional double quantization of the block
 *      absmax, and LLM.int8 row-wise int8), reproduced bit for bit so that
 *      `airavata quantize` writes the bytes that transformers +
 *      bitsandbytes write for the same weights.
 *   2. Reading those weights back from a checkpoint (av_quant_weight_load),
 *      with every field of the quant state checked against config.json and
 *      the expected shape.
 *   3. The streaming converter behind `airavata quantize`.
 *
 * Layout of an NF4 weight of shape [rows, cols] (n = rows * cols values,
 * flattened row-major), as bitsandbytes stores it:
 *   - codes: ceil(n / 2) bytes. Value 2j is the high nibble of byte j and
 *     value 2j + 1 the low nibble; an odd n pads the last low nibble with
 *     the code of 0.0 (7). A code indexes av_nf4_code[].
 *   - absmax: one float per block of `blocksize` consecutive values
 *     (ceil(n / blocksize) blocks; the last block may be short).
 *   - value i = av_nf4_code[code_i] * absmax[i / blocksize], in float32.
 * With double quantization the absmax array itself is stored as 8-bit codes
 * of the dynamic map in blocks of 256 with their mean removed:
 *   absmax[b] = nested_map[qabsmax[b]] * nested_absmax[b / 256] + offset.
 *
 * LLM.int8 stores int8 [rows, cols] and one float per row, SCB = the row's
 * absmax: value = (q * SCB) * (float)(1 / 127).
 */
#ifndef AV_QUANT_H
#define AV_QUANT_H

#include <signal.h>

#include "airavata.h"
#include "loader/loader.h"

#define AV_NF4_DEFAULT_BLOCKSIZE 64
/* bitsandbytes quantizes the NF4 absmax with blocks of this many values. */
#define AV_NF4_NESTED_BLOCKSIZE 256
/* Entries of the dynamic 8-bit map of double quantization. */
#define AV_DYNAMIC_MAP_SIZE 256

/* The 16 NF4 levels (quantiles of N(0, 1) scaled to [-1, 1]) in code
 * order, as float32. */
extern const float av_nf4_code[16];

/* Returns 1 if bitsandbytes accepts `blocksize` for 4-bit quantization:
 * 32, 64, 128, 256, 512, 1024, 2048 or 4096. */
int av_nf4_blocksize_valid(int64_t blocksize);

/* Fills map[256] with bitsandbytes' signed dynamic map
 * (functional.create_dynamic_map()), the map of double quantization. */
void av_dynamic_map(float map[AV_DYNAMIC_MAP_SIZE]);

/* Returns torch.mean() of n float32 values as a single-threaded AVX2 torch
 * 2.x computes it (cascade summation in 8 lanes, then division by n). */
float av_torch_mean_f32(const float *x, int64_t n);

/* Reads element i of a F32, F16 or BF16 array as float. */
float av_load_f32(const void *x, av_dtype dtype, int64_t i);

/* Returns the index of the first element of x[0..n) (F32, F16 or BF16)
 * that is NaN or infinite, or -1 when all are finite. */
int64_t av_find_nonfinite(const void *x, av_dtype dtype, int64_t n);

/* ---- NF4 ------------------------------------------------------------- */

/* Quantizes n values of x (F32, F16 or BF16) to NF4 as bitsandbytes'
 * quantize_4bit does on the CPU: codes gets ceil(n / 2) bytes and absmax
 * ceil(n / blocksize) floats. The values must be finite and the block size
 * valid (the caller checks both). */
void av_nf4_quantize(const void *x, av_dtype dtype, int64_t n, int blocksize, uint8_t *codes,
                     float *absmax);

/* Computes only the absmax array that av_nf4_quantize would write. */
void av_nf4_absmax(const void *x, av_dtype dtype, int64_t n, int blocksize, float *absmax);

/* Writes the n float32 values of an NF4 weight into out. */
void av_nf4_dequantize(const uint8_t *codes, const float *absmax, int64_t n, int blocksize,
                       float *out);

/* Quantizes n values with bitsandbytes' 8-bit blockwise scheme (the one its
 * double quantization applies to the NF4 absmax): per block the absmax,
 * then the map entry that a 65536-entry lookup table of [-1, 1] picks for
 * x / absmax. codes gets n bytes and absmax ceil(n / blocksize) floats. */
av_status av_blockwise8_quantize(const float map[AV_DYNAMIC_MAP_SIZE], const float *x, int64_t n,
                                 int blocksize, uint8_t *codes, float *absmax);

/* Double quantization of an NF4 absmax array of n_blocks floats:
 * offset = mean(absmax), then absmax - offset quantized with the dynamic
 * map in blocks of 256. qabsmax gets n_blocks bytes and nested_absmax
 * ceil(n_blocks / 256) floats. */
av_status av_nf4_double_quant(const float *absmax, int64_t n_blocks, uint8_t *qabsmax,
                              float *nested_absmax, float *offset);

/* Inverse of av_nf4_double_quant: absmax[b] = map[qabsmax[b]] *
 * nested_absmax[b / nested_blocksize] + offset, in float32. */
void av_nf4_absmax_dequantize(const float map[AV_DYNAMIC_MAP_SIZE], const uint8_t *qabsmax,
                              const float *nested_absmax, int64_t n_blocks, int nested_blocksize,
                              float offset, float *absmax);

/* ---- LLM.int8 --------------------------------------------------------- */

/* Quantizes a [rows, cols] matrix (F32, F16 or BF16) as bitsandbytes'
 * Int8Params does: the weight is first cast to float16, then each row gets
 * SCB = max |w| and codes round-half-even(w * ((1 / SCB) * 127)). Fails
 * with AV_ERR_INVALID when a value is not finite in float16 (the message
 * gives the row and column). */
av_status av_int8_quantize(const void *x, av_dtype dtype, int64_t rows, int64_t cols, int8_t *q,
                           float *scb);

/* out[r, c] = ((float)q[r, c] * scb[r]) * (float)(1 / 127). */
void av_int8_dequantize(const int8_t *q, const float *scb, int64_t rows, int64_t cols,
                        float *out);

/* ---- quant state of saved checkpoints -------------------------------- */

/* The JSON object of `<weight>.quant_state.bitsandbytes__nf4`, the uint8
 * tensor in which bitsandbytes stores the non-tensor fields. */
typedef struct {
    int blocksize;
    av_dtype dtype;     /* the dtype of the weight before quantization */
    int ndim;
    int64_t shape[AV_MAX_DIMS];
    int nested;         /* 1 when the nested_* fields are present */
    int nested_blocksize;
    float nested_offset;
} av_nf4_state;

/* Writes the quant state JSON exactly as bitsandbytes' json.dumps() does
 * (key order, ", " and ": " separators, Python float repr of the offset).
 * Returns the length, or -1 if it does not fit in `size` bytes. */
int av_nf4_state_format(const av_nf4_state *state, char *buf, size_t size);

/* Parses and validates the quant state JSON of tensor `tensor` (named in
 * messages). */
av_status av_nf4_state_parse(const char *tensor, const uint8_t *json, size_t len,
                             av_nf4_state *state);

/* A quantized Linear weight read from a checkpoint, ready to be repacked
 * by a kernel. The struct owns `absmax` and `scale`; `codes` and `q` point
 * into the checkpoint's memory map and live as long as the checkpoint. */
typedef struct {
    av_quant_method method; /* AV_QUANT_NF4 or AV_QUANT_INT8 */
    int64_t rows, cols;     /* the Linear weight shape [out_features, in_features] */
    av_dtype dtype;         /* NF4: the weight's dtype before quantization (quant
                               state "dtype"); INT8: AV_DTYPE_F16, since LLM.int8
                               quantizes the float16 weight */

    /* NF4 */
    int blocksize;          /* values per absmax block */
    int64_t n_blocks;       /* ceil(rows * cols / blocksize) */
    const uint8_t *codes;   /* ceil(rows * cols / 2) bytes, first value in the high nibble */
    float *absmax;          /* n_blocks floats; dequantized when double-quantized */
    int double_quant;       /* 1 if the checkpoint stored the absmax double-quantized */

    /* INT8 */
    const int8_t *q;        /* rows * cols codes, row-major */
    float *scale;           /* rows floats: SCB, the absmax of each float16 row */
} av_quant_weight;

/* Reads the quantized weight `name` (e.g. "model.layers.0.mlp.up_proj.weight")
 * of shape [rows, cols] in the format config.json's quantization_config
 * declares. Checks every companion tensor (absmax, quant_map,
 * nested_absmax, nested_quant_map, quant_state; or SCB and weight_format)
 * for presence, dtype, shape and agreement with the config; each failure
 * names the tensor and the field. On failure *out is zeroed. */
av_status av_quant_weight_load(const av_checkpoint *ckpt, const char *name, int64_t rows,
                               int64_t cols, av_quant_weight *out);
void av_quant_weight_free(av_quant_weight *w);

/* Returns 1 if the config keeps module `name` (a tensor name or a module
 * prefix such as "lm_head") in 16 bits: it matches an entry of
 * llm_int8_skip_modules, or that list is null and the module is lm_head, as
 * in transformers. */
int av_quant_module_skipped(const av_quant_config *quant, const char *name);

/* ---- converter (`airavata quantize`) ---------------------------------- */

typedef enum {
    AV_TARGET_NF4 = 0,
    AV_TARGET_INT8,
    AV_TARGET_BF16,
    AV_TARGET_F16,
} av_quantize_target;

typedef struct {
    av_quantize_target target;
    int blocksize;         /* NF4 block size; 0: 64 */
    int double_quant;      /* NF4: quantize the absmax too (bitsandbytes' compress_statistics) */
    int quantize_head;     /* also quantize lm_head (when untied) */
    int force;             /* replace an existing output directory */
    uint64_t shard_bytes;  /* largest shard; 0: 5 GB */
    /* Called after each tensor with the bytes of input processed so far. */
    void (*progress)(void *user, int index, int count, const char *tensor, const char *action,
                     uint64_t done_bytes, uint64_t total_bytes);
    void *progress_user;
    /* When set and nonzero, the conversion stops, removes its temporary
     * directory and fails with "interrupted". A signal handler sets it. */
    volatile sig_atomic_t *cancel;
} av_quantize_options;

/* Converts the checkpoint directory in_dir into out_dir. Everything is
 * written under a temporary directory next to out_dir that is renamed to
 * out_dir at the end, so out_dir is either absent, the previous directory,
 * or complete. */
av_status av_quantize_checkpoint(const char *in_dir, const char *out_dir,
                                 const av_quantize_options *options);

#endif
