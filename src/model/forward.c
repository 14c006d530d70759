/*
 * forward.c - the inference context and the batched Llama forward pass.
 *
 * One av_forward() call runs a batch of T tokens, which may belong to
 * different sequences at different positions, through every layer:
 *
 *   x = embed[token]                                     [T, D]
 *   for each layer:
 *     xb = rmsnorm(x) * attn_norm
 *     q, k, v = xb Wq^T, xb Wk^T, xb Wv^T                 [T, H*d], [T, Hkv*d]
 *     q, k = rope(q, pos), rope(k, pos)   (rotate-half layout, as in
 *                                          Hugging Face's Llama)
 *     append k, v to each token's sequence in the KV cache
 *     att = softmax(q K^T / sqrt(d)) V over positions <= pos, per head;
 *           head h reads KV head h / (H / Hkv) (grouped-query attention)
 *     x += att Wo^T
 *     xb = rmsnorm(x) * ffn_norm
 *     x += (silu(xb Wgate^T) * (xb Wup^T)) Wdown^T
 *   logits = rmsnorm(x) * final_norm  Wlm^T   (for the flagged tokens)
 *
 * Every matrix product covers the whole batch, so each weight is read from
 * memory once per call however many sequences take part.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_internal.h"

/* ---- context ------------------------------------------------------------ */

static void *alloc_floats(size_t n) { return malloc(sizeof(float) * (n ? n : 1)); }

/* Fills the rotary tables the way Hugging Face computes them, in f32:
 * inv_freq[i] = 1 / theta^(2i/d), angle = pos * inv_freq[i]. */
static void init_rope(av_context *ctx) {
    const av_config *c = &ctx->model->config;
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        float inv_freq = 1.0f / powf(c->rope_theta, (float)(2 * i) / (float)c->head_dim);
        for (int p = 0; p < ctx->n_ctx; p++) {
            float angle = (float)p * inv_freq;
            ctx->rope_cos[(size_t)p * half + i] = cosf(angle);
            ctx->rope_sin[(size_t)p * half + i] = sinf(angle);
        }
    }
}

av_context *av_context_create(av_model *model, const av_context_options *options) {
    const av_config *c = &model->config;
    av_context_options o = options ? *options : (av_context_options){0};
    if (o.n_ctx < 0 || o.n_seq < 0 || o.n_batch < 0 || o.n_threads < 0 ||
        o.kv_pool_tokens < 0) {
        av_set_error(AV_ERR_INVALID, "context options must not be negative (n_ctx %d, n_seq "
                     "%d, n_batch %d, n_threads %d, kv_pool_tokens %d)", o.n_ctx, o.n_seq,
                     o.n_batch, o.n_threads, o.kv_pool_tokens);
        return NULL;
    }
    if (o.n_ctx == 0) o.n_ctx = c->max_seq_len < 4096 ? c->max_seq_len : 4096;
    if (o.n_ctx > c->max_seq_len) {
        av_set_error(AV_ERR_RANGE, "context length %d exceeds the model's "
                     "max_position_embeddings %d; use a context of at most %d", o.n_ctx,
                     c->max_seq_len, c->max_seq_len);
        return NULL;
    }
    if (o.n_seq == 0) o.n_seq = 1;
    if (o.n_batch == 0) o.n_batch = 512;
    if (o.n_threads == 0) o.n_threads = model->n_threads;

    av_context *ctx = calloc(1, sizeof *ctx);
    if (!ctx) {
        av_set_error(AV_ERR_NOMEM, "out of memory");
        return NULL;
    }
    ctx->model = model;
    ctx->n_ctx = o.n_ctx;
    ctx->n_seq = o.n_seq;
    ctx->n_batch = o.n_batch;
    ctx->n_threads = o.n_threads;

    if (av_kv_init(&ctx->kv, c, ctx->n_seq, ctx->n_ctx, o.kv_pool_tokens)) goto fail;
    ctx->pool = av_threadpool_create(ctx->n_threads);
    if (!ctx->pool) goto fail;

    size_t T = (size_t)ctx->n_batch, D = (size_t)c->dim, F = (size_t)c->hidden_dim;
    size_t q_dim = (size_t)c->n_heads * (size_t)c->head_dim;
    size_t kv_dim = (size_t)c->n_kv_heads * (size_t)c->head_dim;
    size_t half = (size_t)c->head_dim / 2;
    ctx->rope_cos = alloc_floats((size_t)ctx->n_ctx * half);
    ctx->rope_sin = alloc_floats((size_t)ctx->n_ctx * half);
    ctx->x = alloc_floats(T * D);
    ctx->xb = alloc_floats(T * D);
    ctx->xb2 = alloc_floats(T * D);
    ctx->out_x = alloc_floats(T * D);
    ctx->q = alloc_floats(T * q_dim);
    ctx->att = alloc_floats(T * q_dim);
    ctx->k = alloc_floats(T * kv_dim);
    ctx->v = alloc_floats(T * kv_dim);
    ctx->hb = alloc_floats(T * F);
    ctx->hb2 = alloc_floats(T * F);
    ctx->scores = alloc_floats((size_t)ctx->n_threads * (size_t)ctx->n_ctx);
    if (!ctx->rope_cos || !ctx->rope_sin || !ctx->x || !ctx->xb || !ctx->xb2 || !ctx->out_x ||
        !ctx->q || !ctx->att || !ctx->k || !ctx->v || !ctx->hb || !ctx->hb2 || !ctx->scores) {
        av_set_error(AV_ERR_NOMEM, "out of memory allocating buffers for a batch of %d tokens",
                     ctx->n_batch);
        goto fail;
    }
    init_rope(ctx);
    return ctx;

fail:
    av_context_free(ctx);
    return NULL;
}

void av_context_free(av_context *ctx) {
    if (!ctx) return;
    av_kv_free(&ctx->kv);
    av_threadpool_free(ctx->pool);
    free(ctx->rope_cos);
    free(ctx->rope_sin);
    free(ctx->x);
    free(ctx->xb);
    free(ctx->xb2);
    free(ctx->out_x);
    free(ctx->q);
    free(ctx->att);
    free(ctx->k);
    free(ctx->v);
    free(ctx->hb);
    free(ctx->hb2);
    free(ctx->scores);
    free(ctx);
}

int av_context_n_ctx(const av_context *ctx) { return ctx->n_ctx; }
int av_context_n_seq(const av_context *ctx) { return ctx->n_seq; }
int av_context_n_batch(const av_context *ctx) { return ctx->n_batch; }

void av_context_seq_truncate(av_context *ctx, int seq, int pos) {
    if (seq < 0 || seq >= ctx->n_seq) return;
    av_kv_truncate(&ctx->kv, seq, pos);
}

int av_context_seq_len(const av_context *ctx, int seq) {
    if (seq < 0 || seq >= ctx->n_seq) return 0;
    return ctx->kv.seqs[seq].len;
}

int av_context_kv_block_size(const av_context *ctx) { return AV_KV_BLOCK; }
int av_context_kv_blocks_total(const av_context *ctx) { return ctx->kv.n_pool_blocks; }
int av_context_kv_blocks_free(const av_context *ctx) { return ctx->kv.n_free; }
size_t av_context_kv_block_bytes(const av_context *ctx) {
    return ctx->kv.block_floats * sizeof(float);
}

/* ---- batch validation ----------------------------------------------------- */

/* Checks ids, sequences and positions, and reserves cache blocks. Positions
 * of each sequence must continue its cached length without gaps. */
static av_status check_batch(av_context *ctx, const av_batch *b) {
    const av_config *c = &ctx->model->config;
    if (b->n_tokens <= 0 || b->n_tokens > ctx->n_batch)
        return av_set_error(AV_ERR_RANGE, "batch of %d tokens; a batch holds 1 to %d tokens "
                            "(the context's n_batch)", b->n_tokens, ctx->n_batch);
    if (!b->token || !b->pos || !b->seq)
        return av_set_error(AV_ERR_INVALID, "batch has no token, pos or seq array");

    int *next = calloc((size_t)ctx->n_seq, sizeof(int));
    if (!next) return av_set_error(AV_ERR_NOMEM, "out of memory");
    for (int s = 0; s < ctx->n_seq; s++) next[s] = ctx->kv.seqs[s].len;

    av_status st = AV_OK;
    for (int i = 0; i < b->n_tokens && !st; i++) {
        int32_t tok = b->token[i], seq = b->seq[i], pos = b->pos[i];
        if (tok < 0 || tok >= c->vocab_size)
            st = av_set_error(AV_ERR_INVALID, "token id %d at batch index %d is outside the "
                              "vocabulary [0, %d)", tok, i, c->vocab_size);
        else if (seq < 0 || seq >= ctx->n_seq)
            st = av_set_error(AV_ERR_INVALID, "sequence %d at batch index %d is outside "
                              "[0, %d)", seq, i, ctx->n_seq);
        else if (pos >= ctx->n_ctx)
            st = av_set_error(AV_ERR_RANGE, "position %d of sequence %d does not fit in the "
                              "context of %d positions", pos, seq, ctx->n_ctx);
        else if (pos != next[seq])
            st = av_set_error(AV_ERR_INVALID, "token at batch index %d has position %d but "
                              "sequence %d continues at position %d", i, pos, seq, next[seq]);
        else
            next[seq]++;
    }
    for (int s = 0; s < ctx->n_seq && !st; s++)
        if (next[s] > ctx->kv.seqs[s].len) st = av_kv_reserve(&ctx->kv, s, next[s]);
    if (st)
        for (int s = 0; s < ctx->n_seq; s++) av_kv_truncate(&ctx->kv, s, ctx->kv.seqs[s].len);
    free(next);
    return st;
}

/* ---- parallel steps ------------------------------------------------------- */

typedef struct {
    av_context *ctx;
    const av_batch *batch;
    int layer;
} step_args;

static void rope_rotate(float *x, const float *cos_row, const float *sin_row, int half) {
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos_row[i] - b * sin_row[i];
        x[i + half] = b * cos_row[i] + a * sin_row[i];
    }
}

/* Rotates q and k of every token and stores k and v in the cache. Tokens
 * are split among threads. */
static void rope_and_store(void *arg, int ith, int nth) {
    step_args *a = arg;
    av_context *ctx = a->ctx;
    const av_config *c = &ctx->model->config;
    int d = c->head_dim, half = d / 2;
    for (int t = ith; t < a->batch->n_tokens; t += nth) {
        int pos = a->batch->pos[t], seq = a->batch->seq[t];
        const float *cs = ctx->rope_cos + (size_t)pos * half;
        const float *sn = ctx->rope_sin + (size_t)pos * half;
        float *q = ctx->q + (size_t)t * c->n_heads * d;
        float *k = ctx->k + (size_t)t * c->n_kv_heads * d;
        float *v = ctx->v + (size_t)t * c->n_kv_heads * d;
        for (int h = 0; h < c->n_heads; h++) rope_rotate(q + (size_t)h * d, cs, sn, half);
        for (int h = 0; h < c->n_kv_heads; h++) {
            rope_rotate(k + (size_t)h * d, cs, sn, half);
            memcpy(av_kv_row(&ctx->kv, c, seq, a->layer, h, 0, pos), k + (size_t)h * d,
                   sizeof(float) * d);
            memcpy(av_kv_row(&ctx->kv, c, seq, a->layer, h, 1, pos), v + (size_t)h * d,
                   sizeof(float) * d);
        }
    }
}

/* Causal attention of each (token, head) pair over its sequence's cache,
 * positions 0..pos. Pairs are split among threads. */
static void attention(void *arg, int ith, int nth) {
    step_args *a = arg;
    av_context *ctx = a->ctx;
    const av_config *c = &ctx->model->config;
    int d = c->head_dim, group = c->n_heads / c->n_kv_heads;
    float scale = 1.0f / sqrtf((float)d);
    float *scores = ctx->scores + (size_t)ith * ctx->n_ctx;
    int n_pairs = a->batch->n_tokens * c->n_heads;

    for (int pair = ith; pair < n_pairs; pair += nth) {
        int t = pair / c->n_heads, h = pair % c->n_heads, kvh = h / group;
        int seq = a->batch->seq[t], n_pos = a->batch->pos[t] + 1;
        const float *q = ctx->q + ((size_t)t * c->n_heads + h) * d;
        float *out = ctx->att + ((size_t)t * c->n_heads + h) * d;

        /* Rows of one cache block are contiguous, so walk block by block. */
        for (int p0 = 0; p0 < n_pos; p0 += AV_KV_BLOCK) {
            const float *krow = av_kv_row(&ctx->kv, c, seq, a->layer, kvh, 0, p0);
            int n = n_pos - p0 < AV_KV_BLOCK ? n_pos - p0 : AV_KV_BLOCK;
            for (int i = 0; i < n; i++) scores[p0 + i] = av_dot_f32(q, krow + (size_t)i * d, d) * scale;
        }
        av_softmax(scores, n_pos);

        memset(out, 0, sizeof(float) * d);
        for (int p0 = 0; p0 < n_pos; p0 += AV_KV_BLOCK) {
            const float *vrow = av_kv_row(&ctx->kv, c, seq, a->layer, kvh, 1, p0);
            int n = n_pos - p0 < AV_KV_BLOCK ? n_pos - p0 : AV_KV_BLOCK;
            for (int i = 0; i < n; i++) av_axpy_f32(out, scores[p0 + i], vrow + (size_t)i * d, d);
        }
    }
}

/* ---- forward ---------------------------------------------------------------- */

static void rmsnorm_rows(float *out, const float *x, const float *w, int n_rows, int dim,
                         float eps) {
    for (int t = 0; t < n_rows; t++)
        av_rmsnorm(out + (size_t)t * dim, x + (size_t)t * dim, w, dim, eps);
}

static void add_rows(float *x, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] += y[i];
}

static void transformer_layer(av_context *ctx, const av_batch *b, int l) {
    const av_config *c = &ctx->model->config;
    const av_layer *w = &ctx->model->layers[l];
    int T = b->n_tokens, D = c->dim;
    step_args args = {ctx, b, l};

    rmsnorm_rows(ctx->xb, ctx->x, w->attn_norm, T, D, c->norm_eps);
    av_matmul(ctx->pool, &w->wq, ctx->xb, T, ctx->q);
    av_matmul(ctx->pool, &w->wk, ctx->xb, T, ctx->k);
    av_matmul(ctx->pool, &w->wv, ctx->xb, T, ctx->v);
    av_threadpool_run(ctx->pool, rope_and_store, &args);
    av_threadpool_run(ctx->pool, attention, &args);
    av_matmul(ctx->pool, &w->wo, ctx->att, T, ctx->xb2);
    add_rows(ctx->x, ctx->xb2, (size_t)T * D);

    rmsnorm_rows(ctx->xb, ctx->x, w->ffn_norm, T, D, c->norm_eps);
    av_matmul(ctx->pool, &w->w_gate, ctx->xb, T, ctx->hb);
    av_matmul(ctx->pool, &w->w_up, ctx->xb, T, ctx->hb2);
    av_swiglu(ctx->hb, ctx->hb2, T * c->hidden_dim);
    av_matmul(ctx->pool, &w->w_down, ctx->hb, T, ctx->xb2);
    add_rows(ctx->x, ctx->xb2, (size_t)T * D);
}

av_status av_forward(av_context *ctx, const av_batch *b, float *logits_out) {
    if (!ctx || !b) return av_set_error(AV_ERR_INVALID, "av_forward: context or batch is NULL");
    av_status st = check_batch(ctx, b);
    if (st) return st;

    const av_model *m = ctx->model;
    const av_config *c = &m->config;
    int T = b->n_tokens, D = c->dim;

    for (int t = 0; t < T; t++) av_matrix_row(&m->embed, b->token[t], ctx->x + (size_t)t * D);
    for (int l = 0; l < c->n_layers; l++) transformer_layer(ctx, b, l);

    /* The batch is now cached: advance each sequence's length. */
    for (int t = 0; t < T; t++) {
        av_kv_seq *s = &ctx->kv.seqs[b->seq[t]];
        if (b->pos[t] + 1 > s->len) s->len = b->pos[t] + 1;
    }

    int n_out = 0;
    for (int t = 0; t < T; t++) {
        if (!b->logits || !b->logits[t]) continue;
        av_rmsnorm(ctx->out_x + (size_t)n_out * D, ctx->x + (size_t)t * D, m->final_norm, D,
                   c->norm_eps);
        n_out++;
    }
    if (n_out > 0) {
        if (!logits_out)
            return av_set_error(AV_ERR_INVALID, "the batch requests logits but logits_out is NULL");
        av_matmul(ctx->pool, &m->lm_head, ctx->out_x, n_out, logits_out);
    }
    return AV_OK;
}
