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
#include <time.h>
#include <unistd.h>

#include "model_internal.h"
#include "quant/quant.h"

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

/* ---- quantized weights ---------------------------------------------------- */

/* Adds p to the buffers av_model_free releases. Returns p, or NULL (and
 * frees p) when the list cannot grow. */
static void *own_buffer(av_model *m, void *p) {
    if (!p) return NULL;
    if (m->n_owned == m->owned_capacity) {
        int capacity = m->owned_capacity ? 2 * m->owned_capacity : 64;
        void **grown = realloc(m->owned, sizeof *grown * (size_t)capacity);
        if (!grown) {
            free(p);
            return NULL;
        }
        m->owned = grown;
        m->owned_capacity = capacity;
    }
    m->owned[m->n_owned++] = p;
    return p;
}

/* NF4 with blocks of 64 values or more and a column count that is a
 * multiple of 64 (every Llama matrix) is repacked into the layout of the
 * decode kernels (av_matrix_nf4_pack), and the file pages of the codes are
 * released. Other block sizes use the codes in place, the absmax array
 * (already dequantized when double-quantized) moving to the model. Columns
 * that are not a multiple of AV_QGROUP would put a group across two absmax
 * blocks, so such matrices are dequantized to F32 instead. */
static av_status bind_nf4(av_model *m, const char *name, av_quant_weight *qw, av_matrix *out) {
    void *storage = NULL;
    av_status status = av_matrix_nf4_pack(out, qw->rows, qw->cols, qw->codes, qw->absmax,
                                          qw->blocksize, m->load_pool, &storage);
    if (status == AV_OK) {
        if (!own_buffer(m, storage)) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", name);
        av_checkpoint_release(m->ckpt, qw->codes, (size_t)((qw->rows * qw->cols + 1) / 2));
        return AV_OK;
    }
    if (status == AV_ERR_NOMEM) return av_set_error(AV_ERR_NOMEM, "%s: %s", name, av_last_error());
    if (av_matrix_nf4(out, qw->rows, qw->cols, qw->codes, qw->absmax, qw->blocksize) == AV_OK) {
        if (!own_buffer(m, qw->absmax)) {
            qw->absmax = NULL;
            return av_set_error(AV_ERR_NOMEM, "%s: out of memory", name);
        }
        qw->absmax = NULL;
        return AV_OK;
    }
    int64_t n = qw->rows * qw->cols;
    float *values = own_buffer(m, malloc(sizeof(float) * (size_t)n));
    if (!values)
        return av_set_error(AV_ERR_NOMEM, "%s: out of memory for %lld dequantized values", name,
                            (long long)n);
    av_nf4_dequantize(qw->codes, qw->absmax, n, qw->blocksize, values);
    *out = (av_matrix){.dtype = AV_DTYPE_F32, .rows = qw->rows, .cols = qw->cols, .data = values};
    m->n_dequantized++;
    return AV_OK;
}

/* INT8 rows are copied into the packed layout of the kernels
 * (av_matrix_int8_pack, which also pads them to a multiple of AV_QGROUP),
 * and the file pages of the rows are released. The row factor is
 * SCB * (1 / 127), bitsandbytes' dequantization. */
static av_status bind_int8(av_model *m, const char *name, av_quant_weight *qw, av_matrix *out) {
    const int64_t rows = qw->rows, cols = qw->cols;
    float *row_scale = malloc(sizeof(float) * (size_t)rows);
    if (!row_scale) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", name);
    for (int64_t r = 0; r < rows; r++) row_scale[r] = qw->scale[r] * (float)(1.0 / 127.0);
    void *storage = NULL;
    av_status status = av_matrix_int8_pack(out, rows, cols, qw->q, row_scale, m->load_pool,
                                           &storage);
    free(row_scale);
    if (status) return av_set_error(status, "%s: %s", name, av_last_error());
    if (!own_buffer(m, storage)) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", name);
    av_checkpoint_release(m->ckpt, qw->q, (size_t)(rows * cols));
    return AV_OK;
}

/* Binds the Linear weight "<module>.weight" [rows, cols]: quantized when
 * config.json's quantization_config covers the module, else 16/32-bit. */
static av_status bind_linear(av_model *m, const char *module, int64_t rows, int64_t cols,
                             av_matrix *out) {
    char name[192];
    snprintf(name, sizeof name, "%s.weight", module);
    const av_quant_config *quant = &m->config.quant;
    if (quant->method == AV_QUANT_NONE || av_quant_module_skipped(quant, module))
        return bind_matrix(m->ckpt, name, rows, cols, out);

    av_quant_weight qw;
    av_status status = av_quant_weight_load(m->ckpt, name, rows, cols, &qw);
    if (status) return status;
    status = qw.method == AV_QUANT_NF4 ? bind_nf4(m, name, &qw, out) : bind_int8(m, name, &qw, out);
    av_quant_weight_free(&qw);
    if (status) return status;
    m->n_quantized++;
    m->quant_memory_bytes += av_matrix_bytes(out);
    m->quant_file_bytes += av_checkpoint_module_bytes(m->ckpt, module);
    return AV_OK;
}

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static av_status bind_layer(av_model *m, int l, av_layer *layer) {
    const av_config *c = &m->config;
    int64_t D = c->dim, F = c->hidden_dim;
    int64_t q_dim = (int64_t)c->n_heads * c->head_dim;
    int64_t kv_dim = (int64_t)c->n_kv_heads * c->head_dim;
    char name[160];

    const av_checkpoint *ckpt = m->ckpt;
    av_status status;

#define BIND(field, module, rows, cols)                                          \
    do {                                                                     \
        snprintf(name, sizeof name, "model.layers.%d.%s", l, module);        \
        if ((status = bind_linear(m, name, rows, cols, &layer->field))) return status; \
    } while (0)

    BIND(wq, "self_attn.q_proj", q_dim, D);
    BIND(wk, "self_attn.k_proj", kv_dim, D);
    BIND(wv, "self_attn.v_proj", kv_dim, D);
    BIND(wo, "self_attn.o_proj", D, q_dim);
    BIND(w_gate, "mlp.gate_proj", F, D);
    BIND(w_up, "mlp.up_proj", F, D);
    BIND(w_down, "mlp.down_proj", D, F);
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

av_model *av_model_load(const char *model_arg, const av_load_options *options) {
    /* A model argument that is not a directory may be ORG/NAME in the
     * Hugging Face cache. The buffer leaves room for the file names that
     * are appended to it in 4096-byte paths. */
    char dir[4096 - 64];
    if (av_model_resolve(model_arg, dir, sizeof dir)) return NULL;
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

    double bind_start = seconds_now();
    if (c->quant.method != AV_QUANT_NONE && !(m->load_pool = av_threadpool_create(m->n_threads)))
        goto fail;
    if (bind_matrix(m->ckpt, "model.embed_tokens.weight", c->vocab_size, c->dim, &m->embed))
        goto fail;
    /* A tied model may still store lm_head.weight (transformers does not, but
     * converters often do); its contents are the embedding either way. */
    if (c->tie_embeddings) {
        m->lm_head = m->embed;
    } else if (bind_linear(m, "lm_head", c->vocab_size, c->dim, &m->lm_head)) {
        goto fail;
    }
    if (!(m->final_norm = load_vector(m->ckpt, "model.norm.weight", c->dim))) goto fail;

    m->layers = calloc((size_t)c->n_layers, sizeof(av_layer));
    if (!m->layers) {
        av_set_error(AV_ERR_NOMEM, "out of memory");
        goto fail;
    }
    for (int l = 0; l < c->n_layers; l++)
        if (bind_layer(m, l, &m->layers[l])) goto fail;
    av_threadpool_free(m->load_pool);
    m->load_pool = NULL;
    if (m->n_quantized && !(options && options->quiet)) {
        /* The codes are copied into the packed layouts, reading them from
         * the file if they are not in the page cache. */
        av_log(AV_LOG_INFO, "repacked %d %s matrices (%.3f GiB) in %.3f s", m->n_quantized,
               c->quant.method == AV_QUANT_NF4 ? "NF4" : "INT8",
               (double)m->quant_memory_bytes / (1024.0 * 1024.0 * 1024.0),
               seconds_now() - bind_start);
    }
    if (m->n_dequantized)
        av_log(AV_LOG_WARN, "%d NF4 matrices have a column count that is not a multiple of %d "
               "and were dequantized to F32, which uses 8 times their NF4 memory",
               m->n_dequantized, AV_QGROUP);

    if (load_tokenizer(m, dir)) goto fail;
    return m;

fail:
    av_model_free(m);
    return NULL;
}

void av_model_free(av_model *m) {
    if (!m) return;
    av_threadpool_free(m->load_pool);
    if (m->layers) {
        for (int l = 0; l < m->config.n_layers; l++) {
            free(m->layers[l].attn_norm);
            free(m->layers[l].ffn_norm);
        }
        free(m->layers);
    }
    free(m->final_norm);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    av_tokenizer_free(m->tok);
    av_checkpoint_close(m->ckpt);
    free(m);
}

const av_config *av_model_config(const av_model *m) { return &m->config; }
const av_generation_config *av_model_generation_config(const av_model *m) { return &m->gen; }
const av_tokenizer *av_model_tokenizer(const av_model *m) { return m->tok; }
int av_model_tensor_count(const av_model *m) { return av_checkpoint_tensor_count(m->ckpt); }
const av_tensor *av_model_tensor(const av_model *m, int i) { return av_checkpoint_tensor(m->ckpt, i); }
/* Quantized matrices count with their in-memory size, not their files. */
uint64_t av_model_weight_bytes(const av_model *m) {
    return av_checkpoint_data_bytes(m->ckpt) - m->quant_file_bytes + m->quant_memory_bytes;
}
