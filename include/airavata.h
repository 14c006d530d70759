/*
 * airavata.h - the public interface of libairavata.
 *
 * libairavata loads Llama-family checkpoints in Hugging Face layout
 * (safetensors, sharded or not), tokenizes with SentencePiece BPE, runs the
 * transformer forward pass on the CPU and samples tokens. The `airavata`
 * command-line program is built on this header alone.
 *
 * Conventions that hold for every function here:
 *   - Functions that can fail return an av_status (AV_OK is 0) or NULL, and
 *     record a human-readable message that av_last_error() returns. The
 *     message names the file, tensor or value at fault and, where there is
 *     one, the fix. The message is per thread.
 *   - Token ids are int32_t. Sizes and counts of elements are int64_t or
 *     size_t. Strings are UTF-8 and NUL-terminated unless a length is given.
 *   - Objects returned by the load, create and open functions are owned by the
 *     caller and released by the matching free or close function, which
 *     accepts NULL.
 *   - Nothing here prints to stdout. Diagnostics go through av_log().
 */
#ifndef AIRAVATA_H
#define AIRAVATA_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

#define AV_VERSION_STRING "0.1.0"

/* ------------------------------------------------------------------------ */
/* Errors and logging                                                        */
/* ------------------------------------------------------------------------ */

typedef enum {
    AV_OK = 0,
    AV_ERR_IO,          /* a file could not be opened, read, mapped or written */
    AV_ERR_FORMAT,      /* a file is malformed: bad header, JSON, protobuf */
    AV_ERR_INVALID,     /* an argument or config value is out of its domain */
    AV_ERR_UNSUPPORTED, /* well-formed input that this build does not handle */
    AV_ERR_NOMEM,       /* an allocation failed */
    AV_ERR_RANGE,       /* a length or count exceeds a limit (e.g. context) */
} av_status;

/* Returns the message recorded by the last failing call on this thread. */
const char *av_last_error(void);

/* Records an error message for this thread and returns `status`. */
av_status av_set_error(av_status status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Returns a short constant name for a status ("io error", ...). */
const char *av_status_name(av_status status);

typedef enum { AV_LOG_ERROR = 0, AV_LOG_WARN, AV_LOG_INFO, AV_LOG_DEBUG } av_log_level;

/* Writes one line to stderr when `level` is at or below the current level
 * (AV_LOG_INFO by default). Thread-safe. */
void av_log(av_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void av_log_set_level(av_log_level level);

/* ------------------------------------------------------------------------ */
/* Tensor element types                                                      */
/* ------------------------------------------------------------------------ */

typedef enum {
    AV_DTYPE_F32 = 0,
    AV_DTYPE_F16,
    AV_DTYPE_BF16,
    AV_DTYPE_I8,
    AV_DTYPE_U8,
    AV_DTYPE_I32,
    AV_DTYPE_I64,
    AV_DTYPE_F64,
    AV_DTYPE_COUNT
} av_dtype;

/* Returns the safetensors name of a dtype ("F32", "BF16", ...). */
const char *av_dtype_name(av_dtype dtype);
/* Returns the size of one element in bytes. */
size_t av_dtype_size(av_dtype dtype);

/* Scalar conversions, exact where the target can represent the value.
 * f32 -> bf16 and f32 -> f16 round to nearest even, as PyTorch does. */
float av_bf16_to_f32(uint16_t h);
uint16_t av_f32_to_bf16(float f);
float av_f16_to_f32(uint16_t h);
uint16_t av_f32_to_f16(float f);

/* ------------------------------------------------------------------------ */
/* Safetensors files                                                         */
/* ------------------------------------------------------------------------ */

#define AV_MAX_DIMS 4

/* One tensor of a safetensors file. `data` points into the memory map. */
typedef struct {
    const char *name;
    av_dtype dtype;
    int ndim;
    int64_t shape[AV_MAX_DIMS];
    int64_t numel;
    const void *data;
    size_t nbytes;
    const char *file; /* path of the file that contains it */
} av_tensor;

typedef struct av_safetensors av_safetensors;

/* Maps a safetensors file read-only and validates its header: length,
 * JSON, known dtypes, shapes, data offsets inside the file, matching the
 * dtype and shape, and not overlapping. */
av_safetensors *av_safetensors_open(const char *path);
void av_safetensors_close(av_safetensors *st);
int av_safetensors_count(const av_safetensors *st);
const av_tensor *av_safetensors_get(const av_safetensors *st, int index);
/* Returns the tensor called `name`, or NULL if the file has none. */
const av_tensor *av_safetensors_find(const av_safetensors *st, const char *name);
/* Returns the value of `key` in the header's __metadata__, or NULL. */
const char *av_safetensors_metadata(const av_safetensors *st, const char *key);

/* Streaming writer: the caller declares every tensor first, then writes the
 * data in declaration order. The file is written to `path`.tmp and renamed to
 * `path` by av_st_writer_finish(), so a failed write never leaves a partial
 * file under `path`. */
typedef struct av_st_writer av_st_writer;
av_st_writer *av_st_writer_create(const char *path);
av_status av_st_writer_add_metadata(av_st_writer *w, const char *key, const char *value);
av_status av_st_writer_declare(av_st_writer *w, const char *name, av_dtype dtype, int ndim,
                               const int64_t *shape);
/* Appends bytes of the current tensor; may be called several times per
 * tensor. The total must equal the declared size before the next tensor. */
av_status av_st_writer_write(av_st_writer *w, const void *data, size_t nbytes);
av_status av_st_writer_finish(av_st_writer *w); /* frees w */
void av_st_writer_abort(av_st_writer *w);       /* removes the .tmp file, frees w */

/* ------------------------------------------------------------------------ */
/* Model configuration (config.json)                                         */
/* ------------------------------------------------------------------------ */

/* The storage of the Linear weights that config.json's quantization_config declares
 * (bitsandbytes as transformers saves it). */
typedef enum {
    AV_QUANT_NONE = 0, /* no quantization_config: F32/F16/BF16 weights */
    AV_QUANT_NF4,      /* load_in_4bit with bnb_4bit_quant_type "nf4" */
    AV_QUANT_INT8,     /* load_in_8bit: LLM.int8 row-wise int8 weights */
} av_quant_method;

#define AV_QUANT_MAX_SKIP_MODULES 16

typedef struct {
    av_quant_method method;
    int double_quant;         /* bnb_4bit_use_double_quant */
    av_dtype compute_dtype;   /* bnb_4bit_compute_dtype; F32 if absent */
    int n_skip_modules;       /* entries of llm_int8_skip_modules; -1 when it is
                                 null or absent (transformers then keeps lm_head
                                 unquantized) */
    char skip_modules[AV_QUANT_MAX_SKIP_MODULES][64];
} av_quant_config;

typedef struct {
    char architecture[64]; /* "LlamaForCausalLM", "MistralForCausalLM" */
    int dim;               /* hidden_size */
    int hidden_dim;        /* intermediate_size */
    int n_layers;          /* num_hidden_layers */
    int n_heads;           /* num_attention_heads */
    int n_kv_heads;        /* num_key_value_heads (n_heads if absent) */
    int head_dim;          /* dim / n_heads unless the config sets head_dim */
    int vocab_size;
    int max_seq_len;       /* max_position_embeddings */
    float norm_eps;        /* rms_norm_eps */
    float rope_theta;
    int tie_embeddings;    /* tie_word_embeddings */
    int bos_id, eos_id;    /* -1 when absent */
    av_dtype torch_dtype;  /* the dtype config.json declares, F32 if absent */
    av_quant_config quant; /* quantization_config; method AV_QUANT_NONE if absent */
} av_config;

/* Parses and validates config.json; rejects zero or negative sizes, heads
 * that do not divide the hidden size, n_heads not a multiple of n_kv_heads,
 * and features this engine does not implement (rope_scaling, biases,
 * activations other than SiLU). */
av_status av_config_load(const char *path, av_config *config);

/* Sampling defaults from generation_config.json; absent fields stay unset
 * (negative). */
typedef struct {
    float temperature, top_p, repetition_penalty;
    int top_k, max_new_tokens;
    int bos_id, eos_id, pad_id;
} av_generation_config;

av_status av_generation_config_load(const char *path, av_generation_config *gen);

/* ------------------------------------------------------------------------ */
/* Tokenizer (SentencePiece BPE)                                             */
/* ------------------------------------------------------------------------ */

typedef struct av_tokenizer av_tokenizer;

typedef enum {
    AV_PIECE_NORMAL = 1,
    AV_PIECE_UNKNOWN = 2,
    AV_PIECE_CONTROL = 3,
    AV_PIECE_USER_DEFINED = 4,
    AV_PIECE_UNUSED = 5,
    AV_PIECE_BYTE = 6,
} av_piece_type;

/* Reads a SentencePiece model protobuf (tokenizer.model). Only the BPE model
 * type is accepted. */
av_tokenizer *av_tokenizer_load(const char *path);
/* Adds the tokens of an added_tokens.json file ({"text": id, ...}); they
 * are matched as whole strings when special tokens are parsed. */
av_status av_tokenizer_load_added_tokens(av_tokenizer *tok, const char *path);
void av_tokenizer_free(av_tokenizer *tok);

int av_tokenizer_vocab_size(const av_tokenizer *tok);
int av_tokenizer_bos(const av_tokenizer *tok); /* -1 when the model has none */
int av_tokenizer_eos(const av_tokenizer *tok);
int av_tokenizer_unk(const av_tokenizer *tok);
int av_tokenizer_pad(const av_tokenizer *tok);
/* Returns the piece text of `id` ("▁the", "<0x0A>", "<s>"), or NULL. */
const char *av_tokenizer_piece(const av_tokenizer *tok, int32_t id);
av_piece_type av_tokenizer_piece_type(const av_tokenizer *tok, int32_t id);

enum {
    AV_TOKENIZE_BOS = 1 << 0,           /* prepend the bos id */
    AV_TOKENIZE_EOS = 1 << 1,           /* append the eos id */
    AV_TOKENIZE_PARSE_SPECIAL = 1 << 2, /* "<s>", "</s>" and added tokens in
                                           the text become their ids */
};

/* Encodes `len` bytes of UTF-8 text exactly as SentencePiece's Encode()
 * does. Writes at most `max_ids` ids and returns the number of ids the full
 * encoding has (so a return value above max_ids means "buffer too small"), or
 * -1 on error (invalid UTF-8 is not an error: like SentencePiece, each invalid
 * byte becomes U+FFFD before encoding). */
int av_tokenize(const av_tokenizer *tok, const char *text, size_t len, int flags,
                int32_t *ids, int max_ids);

/* Decodes ids to text exactly as SentencePiece's Decode() does: bos, eos and
 * other control tokens produce nothing, byte pieces are joined into UTF-8,
 * "▁" becomes a space and the leading space of the first piece is removed.
 * Returns a malloc'd string, or NULL on error. */
char *av_detokenize(const av_tokenizer *tok, const int32_t *ids, int n_ids);

/* Streaming decoder: turns one token at a time into text that is always
 * complete UTF-8. Bytes of a character split across byte-fallback tokens are
 * held until the character is complete. */
typedef struct {
    const av_tokenizer *tok;
    int n_tokens;          /* tokens pushed so far */
    unsigned char pending[8];
    int n_pending;
    int leading_space_done; /* 1 once no leading "▁" is dropped any more */
} av_decoder;

void av_decoder_init(av_decoder *dec, const av_tokenizer *tok);
/* Appends the text released by token `id` to out (NUL-terminated, at most
 * out_size-1 bytes, out_size >= 64 is always enough) and returns its length.
 * `first_in_text` behavior: the first token's leading "▁" is dropped, as in
 * av_detokenize. */
int av_decoder_push(av_decoder *dec, int32_t id, char *out, size_t out_size);
/* Releases held bytes at the end of a stream (each becomes U+FFFD). */
int av_decoder_flush(av_decoder *dec, char *out, size_t out_size);

/* ------------------------------------------------------------------------ */
/* Chat template (Airavata's format)                                         */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *role; /* "system", "user" or "assistant" */
    const char *content;
} av_chat_message;

/* Builds the prompt text of a conversation:
 *   <s><|system|>\n{system}\n<|user|>\n{user}\n<|assistant|>\n{reply}</s>\n
 *   ... <|assistant|>\n
 * The system turn is optional; assistant replies are stripped of leading and
 * trailing whitespace. Returns a malloc'd string, or NULL on an unknown role.
 * Encode it with AV_TOKENIZE_PARSE_SPECIAL and without AV_TOKENIZE_BOS. */
char *av_chat_format(const av_chat_message *messages, int n_messages);

/* ------------------------------------------------------------------------ */
/* Model                                                                     */
/* ------------------------------------------------------------------------ */

typedef struct av_model av_model;

typedef struct {
    int n_threads;    /* 0: one per online CPU */
    int quiet;        /* 1: no load-time log lines */
} av_load_options;

/* Loads a checkpoint directory: config.json, optional generation_config.json,
 * model.safetensors or model.safetensors.index.json with its shards, and
 * tokenizer.model (plus added_tokens.json if present). Every expected tensor
 * is checked for presence, dtype and shape before anything runs. */
av_model *av_model_load(const char *dir, const av_load_options *options);

/* Resolves a model argument to a checkpoint directory: `arg` itself if it
 * is a directory, else ORG/NAME[@REVISION] (revision "main" by default)
 * looked up in the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub,
 * else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub) as
 * refs/REVISION and then snapshots/COMMIT. Never uses the network. The
 * error names the path it tried and suggests `airavata pull ORG/NAME`.
 * av_model_load calls it first, so callers of av_model_load accept either
 * form. */
av_status av_model_resolve(const char *arg, char *dir, size_t size);
void av_model_free(av_model *model);

const av_config *av_model_config(const av_model *model);
const av_generation_config *av_model_generation_config(const av_model *model);
const av_tokenizer *av_model_tokenizer(const av_model *model);
/* Number of tensors, bytes of weights, and the dtype of the weights (the
 * dtype of the layer matrices). */
int av_model_tensor_count(const av_model *model);
const av_tensor *av_model_tensor(const av_model *model, int index);
uint64_t av_model_weight_bytes(const av_model *model);

/* ------------------------------------------------------------------------ */
/* Inference context, KV cache and batched forward                          */
/* ------------------------------------------------------------------------ */

typedef struct av_context av_context;

typedef struct {
    int n_ctx;      /* positions per sequence; 0: min(max_seq_len, 4096) */
    int n_seq;      /* sequences that can be alive at once; 0: 1 */
    int n_batch;    /* max tokens in one av_forward call; 0: 512 */
    int n_threads;  /* 0: the model's thread count */
    int kv_pool_tokens; /* positions the paged KV pool holds for all sequences
                           together; 0: n_ctx * n_seq (every sequence can
                           reach n_ctx at once) */
} av_context_options;

av_context *av_context_create(av_model *model, const av_context_options *options);
void av_context_free(av_context *ctx);
int av_context_n_ctx(const av_context *ctx);
int av_context_n_seq(const av_context *ctx);
int av_context_n_batch(const av_context *ctx);

/* Forgets the cached positions of sequence `seq` from `pos` on (pos 0 clears
 * it). */
void av_context_seq_truncate(av_context *ctx, int seq, int pos);
/* Number of positions cached for `seq`. */
int av_context_seq_len(const av_context *ctx, int seq);
/* KV pool accounting, in positions: the pool is made of blocks of
 * av_context_kv_block_size() positions, and a sequence of n positions
 * holds ceil(n / block) blocks. */
int av_context_kv_block_size(const av_context *ctx);
int av_context_kv_blocks_total(const av_context *ctx);
int av_context_kv_blocks_free(const av_context *ctx);
/* Bytes of KV cache memory one block takes. */
size_t av_context_kv_block_bytes(const av_context *ctx);

/* A batch of tokens, possibly from several sequences. Token i is at position
 * pos[i] of sequence seq[i]; positions of one sequence must be consecutive
 * and follow the ones already cached. logits[i] != 0 requests the logits of
 * token i. */
typedef struct {
    int n_tokens;
    const int32_t *token;
    const int32_t *pos;
    const int32_t *seq;
    const int8_t *logits;
} av_batch;

/* Runs the forward pass for the batch, appending its keys and values to the
 * caches. For each token with logits[i] set, in order, writes vocab_size
 * floats to `logits_out` (which has room for n_logits * vocab_size floats, n_logits
 * being the number of flagged tokens). Weights are read once for the whole
 * batch. */
av_status av_forward(av_context *ctx, const av_batch *batch, float *logits_out);

/* ------------------------------------------------------------------------ */
/* Sampling                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct {
    float temperature;        /* 0: greedy (argmax, first index on ties) */
    int top_k;                /* 0: off */
    float top_p;              /* 1: off */
    float min_p;              /* 0: off */
    float repetition_penalty; /* 1: off; as Hugging Face applies it */
    int repetition_window;    /* tokens looked back for the penalty; 0: all */
    uint64_t seed;
} av_sampler_params;

/* Fills `params` with greedy decoding, penalties off, seed 0. */
void av_sampler_params_default(av_sampler_params *params);

typedef struct av_sampler av_sampler;
av_sampler *av_sampler_create(const av_sampler_params *params, int vocab_size);
void av_sampler_free(av_sampler *sampler);
/* Samples one id from `logits` (vocab_size floats, modified in place) given
 * the tokens seen so far (prompt and generated) for the penalty. */
int32_t av_sampler_sample(av_sampler *sampler, float *logits, const int32_t *history,
                          int n_history);

/* Scans generated text for stop strings. Returns the byte offset of the
 * earliest match, or -1. Sets *safe_len to the length of the prefix that can
 * be released to a client now: up to the match, or else everything except a
 * tail that could still grow into a stop string, and never ending inside a
 * UTF-8 character. */
long av_stop_scan(const char *text, size_t len, const char *const *stops, int n_stops,
                  size_t *safe_len);

/* ------------------------------------------------------------------------ */
/* CPU features and kernels selection                                        */
/* ------------------------------------------------------------------------ */

typedef enum { AV_ISA_SCALAR = 0, AV_ISA_AVX2 = 1, AV_ISA_AVX512 = 2 } av_isa;

/* Returns the best instruction set this CPU and build support. */
av_isa av_cpu_best_isa(void);
/* Returns the instruction set the kernels use now. */
av_isa av_kernels_isa(void);
/* Forces kernels to `isa` (for tests); fails if the CPU lacks it. The
 * AIRAVATA_ISA environment variable ("scalar", "avx2", "avx512") does the
 * same at start-up. */
av_status av_kernels_set_isa(av_isa isa);
const char *av_isa_name(av_isa isa);

#ifdef __cplusplus
}
#endif

#endif /* AIRAVATA_H */
