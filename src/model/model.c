/*
 * model.c - binds a checkpoint's tensors to the Llama structure.
 *
 * Loading maps the safetensors files (the loader never copies weights),
 * checks that every tensor a Llama needs is present with the dtype and
 * shape the config implies, and keeps pointers into the maps. Only the
 * small norm vectors are converted to f32 copies.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model_internal.h"

static av_status bind_matrix(const av_checkpoint *ckpt, const char *name, int64_t rows,
                             int64_t cols, av_matrix *m) {
    int64_t shape[2] = {rows, cols};
    const av_tensor *t = av_checkpoint_require(ckpt, name, 2, shape);
    if (!t) return AV_ERR_FORMAT;
    m->dtype = t->dtype;
    m->rows = rows;
    m->cols = cols;
    m->data = t->data;
    return AV_OK;
}

/* Returns a malloc'd f32 copy of a 1-D tensor of n elements, or NULL. */
static float *load_vector(const av_checkpoint *ckpt, const char *name, int64_t n) {
    const av_tensor *t = av_checkpoint_require(ckpt, name, 1, &n);
    if (!t) return NULL;
    float *v = malloc(sizeof(float) * (size_t)n);
    if (!v) {
        av_set_error(AV_ERR_NOMEM, "out of memory loading %s", name);
        return NULL;
    }
    av_to_f32(v, t->data, t->dtype, n);
    return v;
}

static av_status bind_layer(const av_checkpoint *ckpt, const av_config *c, int l,
                            av_layer *layer) {
    int64_t D = c->dim, F = c->hidden_dim;
    int64_t q_dim = (int64_t)c->n_heads * c->head_dim;
    int64_t kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    char name[160];

#define BIND(field, suffix, rows, cols)                                              \
    do {                                                                         \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, suffix);            \
        if (bind_matrix(ckpt, name, rows, cols, &layer->field)) return AV_ERR_FORMAT; \
    } while (0)

    BIND(wq, "self_attn.q_proj.weight", q_dim, D);
    BIND(wk, "self_attn.k_proj.weight", kv_dim, D);
    BIND(wv, "self_attn.v_proj.weight", kv_dim, D);
    BIND(wo, "self_attn.o_proj.weight", D, q_dim);
    BIND(w_gate, "mlp.gate_proj.weight", F, D);
    BIND(w_up, "mlp.up_proj.weight", F, D);
    BIND(w_down, "mlp.down_proj.weight", D, F);
#undef BIND

    snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
    if (!(layer->attn_norm = load_vector(ckpt, name, D))) return AV_ERR_FORMAT;
    snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
    if (!(layer->ffn_norm = load_vector(ckpt, name, D))) return AV_ERR_FORMAT;
    return AV_OK;
}

static int file_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static av_status load_tokenizer(av_model *m, const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", dir);
    if (!file_exists(path))
        return av_set_error(AV_ERR_IO, "%s not found: the model directory needs the "
                            "SentencePiece tokenizer file that came with the checkpoint", path);
    m->tok = av_tokenizer_load(path);
    if (!m->tok) return AV_ERR_FORMAT;

    snprintf(path, sizeof path, "%s/added_tokens.json", dir);
    if (file_exists(path) && av_tokenizer_load_added_tokens(m->tok, path)) return AV_ERR_FORMAT;

    int n_tok = av_tokenizer_vocab_size(m->tok);
    if (n_tok > m->config.vocab_size)
        return av_set_error(AV_ERR_FORMAT, "%s/tokenizer.model has %d tokens but config.json "
                            "sets vocab_size %d: the tokenizer does not belong to this model",
                            dir, n_tok, m->config.vocab_size);
    return AV_OK;
}

av_model *av_model_load(const char *dir, const av_load_options *options) {
    /* Reports an invalid AIRAVATA_ISA before any kernel runs. */
    if (av_kernels_init()) return NULL;
    av_model *m = calloc(1, sizeof *m);
    if (!m) {
        av_set_error(AV_ERR_NOMEM, "out of memory");
        return NULL;
    }
    m->n_threads = options && options->n_threads > 0 ? options->n_threads
                                                      : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (m->n_threads < 1) m->n_threads = 1;

    m->ckpt = av_checkpoint_open(dir);
    if (!m->ckpt) goto fail;
    m->config = *av_checkpoint_config(m->ckpt);
    m->gen = *av_checkpoint_generation_config(m->ckpt);
    const av_config *c = &m->config;

    if (bind_matrix(m->ckpt, "model.embed_tokens.weight", c->vocab_size, c->dim, &m->embed))
        goto fail;
    /* A tied model may still store lm_head.weight (transformers does not, but
     * converters often do); its contents are the embedding either way. */
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
    } else if (bind_matrix(m->ckpt, "lm_head.weight", c->vocab_size, c->dim, &m->lm_head)) {
        goto fail;
    }
    if (!(m->final_norm = load_vector(m->ckpt, "model.norm.weight", c->dim))) goto fail;

    m->layers = calloc((size_t)c->n_layers, sizeof(av_layer));
    if (!m->layers) {
        av_set_error(AV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++)
        if (bind_layer(m->ckpt, c, l, &m->layers[l])) goto fail;

    if (load_tokenizer(m, dir)) goto fail;
    return m;

fail:
    av_model_free(m);
    return NULL;
}

void av_model_free(av_model *m) {
    if (!m) return;
    if (m->layers) {
        for (int l = 0; l < m->config.n_layers; l++) {
            free(m->layers[l].attn_norm);
            free(m->layers[l].ffn_norm);
        }
        free(m->layers);
    }
    free(m->final_norm);
    av_tokenizer_free(m->tok);
    av_checkpoint_close(m->ckpt);
    free(m);
}

const av_config *av_model_config(const av_model *m) { return &m->config; }
const av_generation_config *av_model_generation_config(const av_model *m) { return &m->gen; }
const av_tokenizer *av_model_tokenizer(const av_model *m) { return m->tok; }
int av_model_tensor_count(const av_model *m) { return av_checkpoint_tensor_count(m->ckpt); }
const av_tensor *av_model_tensor(const av_model *m, int i) { return av_checkpoint_tensor(m->ckpt, i); }
uint64_t av_model_weight_bytes(const av_model *m) { return av_checkpoint_data_bytes(m->ckpt); }
