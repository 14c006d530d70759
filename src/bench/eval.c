/*
 * eval.c - `airavata eval`: perplexity of a quantized model and of its base
 * model on a text, and the per-token divergence between them, in the manner
 * of llama.cpp's KL-divergence mode.
 *
 * Perplexity uses strided sliding windows (the standard recipe for a text
 * longer than the context): windows of n_ctx tokens start every `stride`
 * tokens, and each window scores only the tokens that no earlier window
 * scored, so every token after the first is scored exactly once, with at
 * least n_ctx - stride tokens of context except in the first window.
 *
 * For every scored token the base model's distribution P and the quantized
 * model's Q give KL(P || Q) = sum_i P_i log(P_i / Q_i) and whether their
 * top-1 tokens agree. P is first rounded to F16 log-probabilities and
 * renormalized (eval_logits.c), whether it comes from the base model in
 * this run or from a saved file, so both paths give identical numbers;
 * that rounding alone leaves a KL below 1e-6 nats for identical models
 * (measured on stories260K).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* Largest text read; tokens are bounded by it too. */
#define EVAL_MAX_TEXT_BYTES (64u << 20)
/* Largest table of base log-probabilities kept in memory (F16). */
#define EVAL_MAX_LOGPROB_BYTES ((size_t)16 << 30)

int av_eval_plan_windows(int n_tokens, int n_ctx, int stride, av_eval_window **windows) {
    if (n_ctx < 2 || stride < 1 || stride >= n_ctx) {
        av_set_error(AV_ERR_INVALID, "invalid window: --ctx %d and --stride %d; the context "
                     "needs at least 2 tokens and the stride must be from 1 to ctx - 1",
                     n_ctx, stride);
        return -1;
    }
    if (n_tokens < n_ctx) {
        av_set_error(AV_ERR_RANGE, "the text has %d tokens but at least %d are needed for "
                     "--ctx %d; give a longer text or lower --ctx", n_tokens, n_ctx, n_ctx);
        return -1;
    }
    int cap = (n_tokens - n_ctx) / stride + 2, n = 0;
    av_eval_window *w = malloc(sizeof *w * (size_t)cap);
    if (!w) {
        av_set_error(AV_ERR_NOMEM, "out of memory planning %d windows", cap);
        return -1;
    }
    int prev_end = 0;
    for (int begin = 0;; begin += stride) {
        int end = begin + n_ctx < n_tokens ? begin + n_ctx : n_tokens;
        int first = prev_end > begin + 1 ? prev_end : begin + 1;
        w[n++] = (av_eval_window){begin, end, first};
        prev_end = end;
        if (end == n_tokens) break;
    }
    *windows = w;
    return n;
}

/* Called with the logits that predict tokens[target]. */
typedef av_status (*target_fn)(void *user, int target_index, int32_t token, float *logits);

/* Runs `model` over every window and calls `fn` for each scored token, in
 * order. Returns the number of tokens run through the model in *n_run. */
static av_status score_windows(av_model *model, int n_threads, const int32_t *tokens,
                               const av_eval_window *windows, int n_windows, int n_ctx,
                               target_fn fn, void *user, int64_t *n_run) {
    int vocab = av_model_config(model)->vocab_size;
    av_context_options copts = {.n_ctx = n_ctx, .n_threads = n_threads};
    av_context *ctx = av_context_create(model, &copts);
    if (!ctx) return AV_ERR_INVALID;
    int n_batch = av_context_n_batch(ctx);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n_batch);
    int32_t *seq = calloc((size_t)n_batch, sizeof(int32_t));
    int8_t *want = malloc((size_t)n_batch);
    float *logits = malloc(sizeof(float) * (size_t)vocab * (size_t)n_batch);
    av_status rc = pos && seq && want && logits ? AV_OK
                                                : av_set_error(AV_ERR_NOMEM, "out of memory");
    int target_index = 0;
    *n_run = 0;
    for (int w = 0; !rc && w < n_windows; w++) {
        av_context_seq_truncate(ctx, 0, 0);
        for (int start = windows[w].begin; !rc && start < windows[w].end; start += n_batch) {
            int n = windows[w].end - start < n_batch ? windows[w].end - start : n_batch;
            for (int i = 0; i < n; i++) {
                int p = start + i; /* the logits at p predict token p + 1 */
                pos[i] = p - windows[w].begin;
                want[i] = p + 1 >= windows[w].first && p + 1 < windows[w].end;
            }
            av_batch b = {n, tokens + start, pos, seq, want};
            rc = av_forward(ctx, &b, logits);
            *n_run += n;
            int row = 0;
            for (int i = 0; !rc && i < n; i++) {
                if (!want[i]) continue;
                int target = start + i + 1;
                rc = fn(user, target_index++, tokens[target], logits + (size_t)row++ * vocab);
            }
        }
    }
    free(pos);
    free(seq);
    free(want);
    free(logits);
    av_context_free(ctx);
    return rc;
}

/* ---- base pass: keep F16 log-probabilities, exact NLL and top-1 ---- */

static av_status record_base(void *user, int t, int32_t token, float *logits) {
    av_base_predictions *p = user;
    p->top1[t] = av_argmax(logits, p->vocab);
    av_log_softmax(logits, p->vocab, logits);
    p->nll[t] = -logits[token];
    uint16_t *row = p->logprobs + (size_t)t * p->vocab;
    for (int i = 0; i < p->vocab; i++) row[i] = av_f32_to_f16(logits[i]);
    return AV_OK;
}

/* ---- quantized pass: compare with the base predictions ---- */

typedef struct {
    const av_base_predictions *base;
    float *base_row;   /* vocab: renormalized F32 copy of one base row */
    double *kl;        /* per target */
    double nll_quant, nll_base;
    int64_t top1_agree;
} compare_state;

static av_status compare_target(void *user, int t, int32_t token, float *logits) {
    compare_state *s = user;
    int vocab = s->base->vocab;
    int top1 = av_argmax(logits, vocab);
    av_log_softmax(logits, vocab, logits);
    const uint16_t *row = s->base->logprobs + (size_t)t * vocab;
    for (int i = 0; i < vocab; i++) s->base_row[i] = av_f16_to_f32(row[i]);
    av_log_softmax(s->base_row, vocab, s->base_row);
    double kl = av_kl_divergence(s->base_row, logits, vocab);
    s->kl[t] = kl > 0 ? kl : 0; /* rounding can leave -1e-9 for equal distributions */
    s->nll_quant -= logits[token];
    s->nll_base += s->base->nll[t];
    s->top1_agree += top1 == s->base->top1[t];
    return AV_OK;
}

/* ---- checks on the inputs ---- */

/* The two models must share architecture and vocabulary, or the per-token
 * comparison compares unrelated things. */
static av_status check_compatible(const av_model *quant, const char *quant_dir,
                                  const av_model *base, const char *base_dir) {
    const av_config *q = av_model_config(quant), *b = av_model_config(base);
    if (strcmp(q->architecture, b->architecture))
        return av_set_error(AV_ERR_INVALID, "the models differ in architecture: %s is %s but "
                            "the base %s is %s; compare a model with its own base", quant_dir,
                            q->architecture, base_dir, b->architecture);
    if (q->vocab_size != b->vocab_size)
        return av_set_error(AV_ERR_INVALID, "the models differ in vocabulary: %s has "
                            "vocab_size %d but the base %s has %d; compare a model with its own "
                            "base", quant_dir, q->vocab_size, base_dir, b->vocab_size);
    const av_tokenizer *tq = av_model_tokenizer(quant), *tb = av_model_tokenizer(base);
    if (av_tokenizer_vocab_size(tq) != av_tokenizer_vocab_size(tb))
        return av_set_error(AV_ERR_INVALID, "the tokenizers differ: %s has %d pieces but the "
                            "base %s has %d", quant_dir, av_tokenizer_vocab_size(tq), base_dir,
                            av_tokenizer_vocab_size(tb));
    for (int i = 0; i < av_tokenizer_vocab_size(tq); i++) {
        const char *a = av_tokenizer_piece(tq, i), *c = av_tokenizer_piece(tb, i);
        if (a && c && strcmp(a, c))
            return av_set_error(AV_ERR_INVALID, "the tokenizers differ: piece %d is '%s' in "
                                "%s but '%s' in the base %s", i, a, quant_dir, c, base_dir);
    }
    if (q->dim != b->dim || q->n_layers != b->n_layers)
        return av_set_error(AV_ERR_INVALID, "the models differ in shape: %s has hidden_size %d "
                            "and %d layers but the base %s has %d and %d", quant_dir, q->dim,
                            q->n_layers, base_dir, b->dim, b->n_layers);
    return AV_OK;
}

static int32_t *tokenize_text(const av_tokenizer *tok, const char *path, int *n_out) {
    size_t len = 0;
    char *text = av_read_text_file(path, EVAL_MAX_TEXT_BYTES, &len);
    if (!text) return NULL;
    int n = av_tokenize(tok, text, len, AV_TOKENIZE_BOS, NULL, 0);
    int32_t *ids = n > 0 ? malloc(sizeof(int32_t) * (size_t)n) : NULL;
    if (ids) av_tokenize(tok, text, len, AV_TOKENIZE_BOS, ids, n);
    else if (n > 0) av_set_error(AV_ERR_NOMEM, "out of memory tokenizing %s", path);
    else if (n == 0) av_set_error(AV_ERR_INVALID, "tokenizing %s produced no tokens", path);
    free(text);
    *n_out = n;
    return ids;
}

static av_status alloc_base(av_base_predictions *p, int n_targets, int vocab) {
    memset(p, 0, sizeof *p);
    size_t bytes = (size_t)n_targets * (size_t)vocab * sizeof(uint16_t);
    if (bytes > EVAL_MAX_LOGPROB_BYTES)
        return av_set_error(AV_ERR_RANGE, "%d scored tokens x vocab %d need %.1f GiB of base "
                            "log-probabilities (limit %.0f GiB); use a shorter text", n_targets,
                            vocab, bytes / 1073741824.0, EVAL_MAX_LOGPROB_BYTES / 1073741824.0);
    p->n_targets = n_targets;
    p->vocab = vocab;
    p->logprobs = malloc(bytes);
    p->nll = malloc(sizeof(float) * (size_t)n_targets);
    p->top1 = malloc(sizeof(int32_t) * (size_t)n_targets);
    if (!p->logprobs || !p->nll || !p->top1)
        return av_set_error(AV_ERR_NOMEM, "out of memory for %d scored tokens", n_targets);
    return AV_OK;
}

/* ---- report ---- */

typedef struct {
    int n_tokens, n_targets, n_ctx, stride;
    double ppl_base, ppl_quant, kl_mean, kl_p50, kl_p90, kl_p99, kl_max, top1;
    int64_t size_base, size_quant;
    double quant_tps, base_tps;
    json_t *chat; /* array, or NULL when the chat check did not run */
} eval_report;

/* Prints text with newlines shown as "\\n", so each reply stays on its line. */
static void print_one_line(const char *text) {
    for (const char *c = text ? text : ""; *c; c++) {
        if (*c == '\n') fputs("\\n", stdout);
        else putchar(*c);
    }
}

static void print_markdown(const av_eval_options *o, const eval_report *r) {
    const char *base_name = o->base_dir ? o->base_dir : o->base_logits;
    printf("Evaluation of %s against %s on %s: %d tokens, context %d, stride %d, %d scored "
           "tokens.\n\n", o->quant_dir, base_name, o->text_path, r->n_tokens, r->n_ctx,
           r->stride, r->n_targets);
    printf("| model | size (MiB) | perplexity | eval tok/s |\n|---|---:|---:|---:|\n");
    if (r->size_base >= 0)
        printf("| base: %s | %.2f | %.4f | ", base_name, r->size_base / 1048576.0, r->ppl_base);
    else
        printf("| base: %s | - | %.4f | ", base_name, r->ppl_base);
    if (isfinite(r->base_tps)) printf("%.1f |\n", r->base_tps);
    else printf("- |\n");
    printf("| quantized: %s | %.2f | %.4f | %.1f |\n\n", o->quant_dir,
           r->size_quant / 1048576.0, r->ppl_quant, r->quant_tps);
    printf("perplexity ratio (quantized / base): %.6f\n", r->ppl_quant / r->ppl_base);
    printf("KL(base || quantized) per token, nats: mean %.6g, p50 %.6g, p90 %.6g, p99 %.6g, "
           "max %.6g\n", r->kl_mean, r->kl_p50, r->kl_p90, r->kl_p99, r->kl_max);
    printf("top-1 agreement: %.2f%%\n", 100 * r->top1);
    if (!r->chat) return;
    printf("\nChat check (greedy, up to %d new tokens):\n\n", o->chat_tokens);
    size_t i;
    json_t *item;
    json_array_foreach(r->chat, i, item) {
        int diff = (int)json_integer_value(json_object_get(item, "first_difference"));
        printf("[%s] %s\n  base:      ", json_string_value(json_object_get(item, "language")),
               json_string_value(json_object_get(item, "instruction")));
        print_one_line(json_string_value(json_object_get(item, "base")));
        printf("\n  quantized: ");
        print_one_line(json_string_value(json_object_get(item, "quant")));
        printf("\n  ");
        if (diff < 0) printf("identical\n\n");
        else printf("first difference at generated token %d\n\n", diff);
    }
}

static void print_json(const av_eval_options *o, const eval_report *r) {
    json_t *root = json_pack(
        "{s:s, s:s?, s:s?, s:s, s:i, s:i, s:i, s:i, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:f, "
        "s:f, s:I, s:f}",
        "model", o->quant_dir, "base", o->base_dir, "base_logits", o->base_logits, "text",
        o->text_path, "tokens", r->n_tokens, "scored_tokens", r->n_targets, "ctx", r->n_ctx,
        "stride", r->stride, "ppl_base", r->ppl_base, "ppl_quant", r->ppl_quant, "ppl_ratio",
        r->ppl_quant / r->ppl_base, "kl_mean", r->kl_mean, "kl_p50", r->kl_p50, "kl_p90",
        r->kl_p90, "kl_p99", r->kl_p99, "kl_max", r->kl_max, "top1_agreement", r->top1,
        "size_quant_bytes", (json_int_t)r->size_quant, "quant_tokens_per_s", r->quant_tps);
    if (!root) {
        fprintf(stderr, "airavata eval: cannot build the JSON report (invalid UTF-8 in a "
                "path?)\n");
        return;
    }
    json_object_set_new(root, "size_base_bytes",
                        r->size_base >= 0 ? json_integer(r->size_base) : json_null());
    json_object_set(root, "chat", r->chat ? r->chat : json_null());
    json_dumpf(root, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
    printf("\n");
    json_decref(root);
}

static av_status write_chart(const av_eval_options *o, const eval_report *r) {
    av_chart_point points[2] = {
        {"base", r->size_base >= 0 ? r->size_base / 1048576.0 : NAN, 0, r->base_tps},
        {"quantized", r->size_quant / 1048576.0, r->kl_mean, r->quant_tps},
    };
    av_chart_axes axes = {"airavata eval: KL divergence vs size", "size on disk (MiB)",
                          "mean KL(base || model), nats", "eval tokens/s"};
    return av_chart_write_svg(o->chart_path, &axes, points, 2);
}

/* ---- the run ---- */

typedef struct {
    av_model *quant, *base;
    int32_t *tokens;
    av_eval_window *windows;
    av_base_predictions predictions;
    compare_state cmp;
} eval_run;

static void eval_run_free(eval_run *e) {
    av_base_predictions_free(&e->predictions);
    free(e->cmp.kl);
    free(e->cmp.base_row);
    free(e->windows);
    free(e->tokens);
    av_model_free(e->base);
    av_model_free(e->quant);
}

static av_status base_predictions(const av_eval_options *o, eval_run *e,
                                  const av_eval_identity *id, int n_windows, double *tps) {
    *tps = NAN;
    if (o->base_logits) return av_base_predictions_load(o->base_logits, id, &e->predictions);
    av_status rc = alloc_base(&e->predictions, id->n_tokens - 1, id->vocab);
    int64_t n_run = 0;
    double t0 = av_now_seconds();
    if (!rc) rc = score_windows(e->base, o->n_threads, e->tokens, e->windows, n_windows,
                                id->n_ctx, record_base, &e->predictions, &n_run);
    *tps = n_run / (av_now_seconds() - t0);
    if (!rc && o->save_base_logits)
        rc = av_base_predictions_save(o->save_base_logits, &e->predictions, id);
    return rc;
}

static av_status evaluate(const av_eval_options *o, eval_run *e, eval_report *r) {
    av_load_options lopts = {.n_threads = o->n_threads, .quiet = 1};
    e->quant = av_model_load(o->quant_dir, &lopts);
    if (!e->quant) return AV_ERR_IO;
    if (o->base_dir) {
        e->base = av_model_load(o->base_dir, &lopts);
        if (!e->base) return AV_ERR_IO;
        av_status rc = check_compatible(e->quant, o->quant_dir, e->base, o->base_dir);
        if (rc) return rc;
    }
    const av_config *cfg = av_model_config(e->quant);
    r->n_ctx = o->n_ctx ? o->n_ctx : (cfg->max_seq_len < 512 ? cfg->max_seq_len : 512);
    if (r->n_ctx > cfg->max_seq_len)
        return av_set_error(AV_ERR_RANGE, "--ctx %d exceeds the %d positions of %s", r->n_ctx,
                            cfg->max_seq_len, o->quant_dir);
    r->stride = o->stride ? o->stride : r->n_ctx / 2;
    e->tokens = tokenize_text(av_model_tokenizer(e->quant), o->text_path, &r->n_tokens);
    if (!e->tokens) return AV_ERR_INVALID;
    int n_windows = av_eval_plan_windows(r->n_tokens, r->n_ctx, r->stride, &e->windows);
    if (n_windows < 0) return AV_ERR_RANGE;
    r->n_targets = r->n_tokens - 1;

    av_eval_identity id = {e->tokens, r->n_tokens, r->n_ctx, r->stride, cfg->vocab_size,
                           o->base_dir};
    av_status rc = base_predictions(o, e, &id, n_windows, &r->base_tps);
    if (rc) return rc;

    e->cmp.base = &e->predictions;
    e->cmp.kl = malloc(sizeof(double) * (size_t)r->n_targets);
    e->cmp.base_row = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    if (!e->cmp.kl || !e->cmp.base_row) return av_set_error(AV_ERR_NOMEM, "out of memory");
    int64_t n_run = 0;
    double t0 = av_now_seconds();
    rc = score_windows(e->quant, o->n_threads, e->tokens, e->windows, n_windows, r->n_ctx,
                       compare_target, &e->cmp, &n_run);
    if (rc) return rc;
    r->quant_tps = n_run / (av_now_seconds() - t0);

    r->ppl_base = av_perplexity(e->cmp.nll_base, r->n_targets);
    r->ppl_quant = av_perplexity(e->cmp.nll_quant, r->n_targets);
    av_summary s;
    av_summarize(e->cmp.kl, r->n_targets, &s);
    r->kl_mean = s.mean;
    r->kl_p50 = s.median;
    r->kl_p90 = s.p90;
    r->kl_p99 = av_percentile(e->cmp.kl, r->n_targets, 99);
    r->kl_max = s.max;
    r->top1 = (double)e->cmp.top1_agree / r->n_targets;
    r->size_quant = av_dir_weights_bytes(o->quant_dir);
    r->size_base = o->base_dir ? av_dir_weights_bytes(o->base_dir) : -1;

    if (e->base && o->chat_tokens > 0) {
        r->chat = json_array();
        rc = av_eval_chat_compare(e->base, e->quant, o->n_threads, o->chat_tokens, r->chat);
    }
    return rc;
}

int av_eval_run(const av_eval_options *o) {
    eval_run e;
    eval_report r;
    memset(&e, 0, sizeof e);
    memset(&r, 0, sizeof r);
    r.size_base = -1;
    av_status rc = evaluate(o, &e, &r);
    int exit_code = 0;
    if (rc) {
        fprintf(stderr, "airavata eval: %s\n", av_last_error());
        exit_code = 1;
    }
    /* The numbers are complete once the quantized pass ran; a failure in
     * the chat check still leaves them worth printing. */
    if (r.ppl_quant > 0) {
        if (o->format == AV_FORMAT_JSON) print_json(o, &r);
        else print_markdown(o, &r);
        fflush(stdout);
        if (o->chart_path && write_chart(o, &r)) {
            fprintf(stderr, "airavata eval: %s\n", av_last_error());
            exit_code = 1;
        }
    }
    json_decref(r.chat);
    eval_run_free(&e);
    return exit_code;
}
