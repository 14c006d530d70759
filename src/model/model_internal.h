/*
 * model_internal.h - the Llama model, its KV cache and its scratch buffers,
 * shared by the files of src/model.
 *
 * Shapes use: D = hidden size, H = heads, Hkv = key/value heads, d = head
 * dimension, F = intermediate size, V = vocabulary, T = tokens in a batch.
 */
#ifndef AV_MODEL_INTERNAL_H
#define AV_MODEL_INTERNAL_H

#include "airavata.h"
#include "kernels/kernels.h"
#include "loader/loader.h"

typedef struct {
    av_matrix wq;       /* [H*d, D] */
    av_matrix wk;       /* [Hkv*d, D] */
    av_matrix wv;       /* [Hkv*d, D] */
    av_matrix wo;       /* [D, H*d] */
    av_matrix w_gate;   /* [F, D] */
    av_matrix w_up;     /* [F, D] */
    av_matrix w_down;   /* [D, F] */
    float *attn_norm;   /* [D], converted to f32 at load */
    float *ffn_norm;    /* [D] */
} av_layer;

struct av_model {
    av_checkpoint *ckpt;
    av_config config;
    av_generation_config gen;
    av_tokenizer *tok;
    av_matrix embed;    /* [V, D] */
    av_matrix lm_head;  /* [V, D]; the embedding matrix when tied */
    float *final_norm;  /* [D] */
    av_layer *layers;   /* [n_layers] */
    int n_threads;

    /* Quantized Linear weights (config.json's quantization_config). NF4
     * codes that cannot be packed stay in the checkpoint's memory map. The
     * packed NF4 and INT8 matrices, the scales and dequantized fallbacks
     * are allocated at load and listed in `owned`, which av_model_free
     * releases. */
    av_threadpool *load_pool; /* packs the matrices during av_model_load only */
    void **owned;
    int n_owned, owned_capacity;
    int n_quantized;             /* matrices bound as NF4 or INT8 */
    int n_dequantized;           /* NF4 matrices dequantized to F32 (odd shapes) */
    uint64_t quant_memory_bytes; /* bytes those matrices use when bound */
    uint64_t quant_file_bytes;   /* bytes of their tensors in the checkpoint */
};

/*
 * Paged KV cache. Keys and values live in fixed-size blocks of
 * AV_KV_BLOCK positions taken from one pool; each sequence owns a table
 * of block indices, so sequences of very different lengths share the
 * pool. A block stores, per layer and key/value head, AV_KV_BLOCK rows of
 * d floats for keys followed by the same for values:
 *   block[layer][kv_head][k|v][AV_KV_BLOCK][d]
 * so attention for one head reads contiguous rows.
 */
#define AV_KV_BLOCK 16

typedef struct {
    int len;            /* positions cached */
    int n_blocks;       /* entries used in block_table */
    int32_t *block_table; /* [max_blocks_per_seq] indices into the pool */
} av_kv_seq;

typedef struct {
    float *pool;        /* n_pool_blocks * block_floats, mmap'd lazily */
    size_t pool_bytes;
    int n_pool_blocks;
    size_t block_floats;
    int32_t *free_list; /* stack of free block indices */
    int n_free;
    int max_blocks_per_seq;
    av_kv_seq *seqs;    /* [n_seq] */
    int n_seq;
} av_kv_cache;

struct av_context {
    av_model *model;
    int n_ctx, n_seq, n_batch, n_threads;
    av_threadpool *pool;
    av_kv_cache kv;

    /* rotary tables: cos and sin of pos * inv_freq[i], [n_ctx][d/2] */
    float *rope_cos, *rope_sin;

    /* activations for up to n_batch tokens */
    float *x;       /* [T, D] residual stream */
    float *xb;      /* [T, D] normed input of a block */
    float *xb2;     /* [T, D] block output */
    float *q;       /* [T, H*d] */
    float *k;       /* [T, Hkv*d] */
    float *v;       /* [T, Hkv*d] */
    float *att;     /* [T, H*d] attention output */
    float *hb;      /* [T, F] gate */
    float *hb2;     /* [T, F] up */
    float *scores;  /* [n_threads][n_ctx] attention scores per thread */
    float *out_x;   /* [T, D] normed rows whose logits are requested */
};

/* KV cache (kv_cache.c) */
av_status av_kv_init(av_kv_cache *kv, const av_config *c, int n_seq, int n_ctx,
                     int pool_tokens);
void av_kv_free(av_kv_cache *kv);
/* Makes room for positions [0, new_len) of `seq`, taking blocks from the pool. */
av_status av_kv_reserve(av_kv_cache *kv, int seq, int new_len);
void av_kv_truncate(av_kv_cache *kv, int seq, int len);
/* Key (is_value 0) or value row of (layer, kv_head, pos) of `seq`; pos must
 * be reserved. */
float *av_kv_row(const av_kv_cache *kv, const av_config *c, int seq, int layer, int kv_head,
                 int is_value, int pos);

#endif
