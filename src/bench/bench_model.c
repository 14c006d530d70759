/*
 * bench_model.c - one repetition of `airavata bench` on one model, run
 * inside the worker process so that its peak memory is the model's alone.
 *
 * Measured, in this order, after loading the model:
 *   1. a warm-up request on the English prompt (not recorded);
 *   2. prompt tokens/s and decode tokens/s on a synthetic prompt of
 *      --prompt-tokens tokens, all `concurrency` sequences in each batch;
 *   3. the request view: for the English and the Hindi prompt, one warm-up
 *      and one timed request of --new-tokens tokens, `concurrency` requests
 *      decoded together. Latency runs from tokenizing the prompt to the
 *      detokenized text; requests/s is concurrency / latency. Time to first
 *      token is taken on the English request.
 * Decoding is greedy and ignores the end-of-sequence token, so every
 * request generates exactly --new-tokens tokens and runs are comparable.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* Text the synthetic prompt is cut from: English and Hindi, so both parts
 * of an extended vocabulary are exercised. */
static const char synthetic_text[] =
    "Once upon a time, in a small village near the river, there lived a girl who loved "
    "to read. Every morning she walked to the library and asked for a new story. "
    "एक समय की बात है, नदी के पास एक छोटे से गाँव में एक लड़की रहती थी जिसे पढ़ना "
    "बहुत पसंद था। हर सुबह वह पुस्तकालय जाती थी और नई कहानी माँगती थी। ";

/* Timings of one batched generation, in seconds from its start. */
typedef struct {
    double prefill_end, first_token, end;
} generation_times;

typedef struct {
    av_context *ctx;
    av_sampler *sampler;
    int vocab, n_seq, n_batch;
    float *logits;            /* n_seq * vocab */
    int32_t *tok, *pos, *seq; /* n_batch */
    int8_t *want;
    int32_t *generated;       /* n_seq * new_tokens */
} bench_state;

/* Runs the batch in `st` of n tokens; the logits of flagged tokens land in
 * st->logits in order. */
static av_status forward_batch(bench_state *st, int n) {
    av_batch b = {n, st->tok, st->pos, st->seq, st->want};
    return av_forward(st->ctx, &b, st->logits);
}

/* Prefills `prompt` into every sequence and decodes new_tokens greedy
 * tokens per sequence, all sequences in one batch per step. */
static av_status generate(bench_state *st, const int32_t *prompt, int n_prompt, int new_tokens,
                          generation_times *times) {
    double t0 = av_now_seconds();
    for (int s = 0; s < st->n_seq; s++) av_context_seq_truncate(st->ctx, s, 0);

    /* Prefill: the n_seq copies of the prompt flattened into chunks of
     * n_batch tokens; logits only for each sequence's last prompt token,
     * which arrive in sequence order. */
    int64_t total = (int64_t)n_prompt * st->n_seq, done = 0;
    int produced = 0; /* logits rows already written */
    while (done < total) {
        int n = total - done < st->n_batch ? (int)(total - done) : st->n_batch;
        int flagged = 0;
        for (int i = 0; i < n; i++) {
            int64_t k = done + i;
            int s = (int)(k / n_prompt), p = (int)(k % n_prompt);
            st->tok[i] = prompt[p];
            st->pos[i] = p;
            st->seq[i] = s;
            st->want[i] = p == n_prompt - 1;
            flagged += st->want[i];
        }
        av_batch b = {n, st->tok, st->pos, st->seq, st->want};
        av_status rc = av_forward(st->ctx, &b, st->logits + (size_t)produced * st->vocab);
        if (rc) return rc;
        produced += flagged;
        done += n;
    }
    times->prefill_end = av_now_seconds() - t0;

    for (int step = 0; step < new_tokens; step++) {
        for (int s = 0; s < st->n_seq; s++) {
            int32_t next = av_sampler_sample(st->sampler, st->logits + (size_t)s * st->vocab,
                                             NULL, 0);
            st->generated[(size_t)s * new_tokens + step] = next;
            st->tok[s] = next;
            st->pos[s] = n_prompt + step;
            st->seq[s] = s;
            st->want[s] = 1;
        }
        if (step == 0) times->first_token = av_now_seconds() - t0;
        if (step + 1 == new_tokens) break;
        av_status rc = forward_batch(st, st->n_seq);
        if (rc) return rc;
    }
    times->end = av_now_seconds() - t0;
    return AV_OK;
}

/* Tokenizes text with a leading bos into a malloc'd array. */
static int32_t *tokenize(const av_tokenizer *tok, const char *text, int *n_out) {
    size_t len = strlen(text);
    int n = av_tokenize(tok, text, len, AV_TOKENIZE_BOS, NULL, 0);
    if (n <= 0) {
        if (n == 0) av_set_error(AV_ERR_INVALID, "the prompt is empty after tokenization");
        return NULL;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    if (!ids) {
        av_set_error(AV_ERR_NOMEM, "out of memory tokenizing a prompt");
        return NULL;
    }
    av_tokenize(tok, text, len, AV_TOKENIZE_BOS, ids, n);
    *n_out = n;
    return ids;
}

/* Builds the synthetic prompt: bos, then the tokens of synthetic_text
 * repeated until n tokens. */
static int32_t *synthetic_prompt(const av_tokenizer *tok, int n) {
    int n_text = 0;
    int32_t *text = tokenize(tok, synthetic_text, &n_text);
    int32_t *ids = text ? malloc(sizeof(int32_t) * (size_t)n) : NULL;
    if (ids) {
        ids[0] = text[0];
        for (int i = 1; i < n; i++) ids[i] = n_text > 1 ? text[1 + (i - 1) % (n_text - 1)] : text[0];
    } else if (text) {
        av_set_error(AV_ERR_NOMEM, "out of memory building the synthetic prompt");
    }
    free(text);
    return ids;
}

/* One timed request per sequence: tokenize, generate, detokenize. */
static av_status timed_request(bench_state *st, const av_tokenizer *tok, const char *prompt,
                               int new_tokens, double *latency, double *ttft, int *n_prompt) {
    double t0 = av_now_seconds();
    int n = 0;
    int32_t *ids = tokenize(tok, prompt, &n);
    if (!ids) return AV_ERR_INVALID;
    double t_tok = av_now_seconds() - t0;
    generation_times times;
    av_status rc = generate(st, ids, n, new_tokens, &times);
    free(ids);
    if (rc) return rc;
    for (int s = 0; s < st->n_seq; s++) {
        char *text = av_detokenize(tok, st->generated + (size_t)s * new_tokens, new_tokens);
        if (!text) return av_set_error(AV_ERR_NOMEM, "detokenizing the answer failed");
        free(text);
    }
    *latency = av_now_seconds() - t0;
    *ttft = t_tok + times.first_token;
    *n_prompt = n;
    return AV_OK;
}

static av_status state_init(bench_state *st, av_model *model, const av_bench_options *o,
                            int n_ctx) {
    memset(st, 0, sizeof *st);
    st->vocab = av_model_config(model)->vocab_size;
    st->n_seq = o->concurrency;
    av_context_options copts = {.n_ctx = n_ctx, .n_seq = o->concurrency,
                                .n_threads = o->n_threads};
    st->ctx = av_context_create(model, &copts);
    if (!st->ctx) return AV_ERR_INVALID;
    st->n_batch = av_context_n_batch(st->ctx);
    if (st->n_batch < st->n_seq)
        return av_set_error(AV_ERR_RANGE, "--concurrency %d exceeds the batch size %d",
                            st->n_seq, st->n_batch);
    av_sampler_params params;
    av_sampler_params_default(&params);
    st->sampler = av_sampler_create(&params, st->vocab);
    st->logits = malloc(sizeof(float) * (size_t)st->vocab * (size_t)st->n_seq);
    st->tok = malloc(sizeof(int32_t) * (size_t)st->n_batch);
    st->pos = malloc(sizeof(int32_t) * (size_t)st->n_batch);
    st->seq = malloc(sizeof(int32_t) * (size_t)st->n_batch);
    st->want = malloc((size_t)st->n_batch);
    st->generated = malloc(sizeof(int32_t) * (size_t)st->n_seq * (size_t)o->new_tokens);
    if (!st->sampler || !st->logits || !st->tok || !st->pos || !st->seq || !st->want ||
        !st->generated)
        return av_set_error(AV_ERR_NOMEM, "out of memory for %d sequences", st->n_seq);
    return AV_OK;
}

static void state_free(bench_state *st) {
    free(st->logits);
    free(st->tok);
    free(st->pos);
    free(st->seq);
    free(st->want);
    free(st->generated);
    av_sampler_free(st->sampler);
    av_context_free(st->ctx);
}

/* Context length that fits the synthetic prompt and both requests plus
 * their new tokens; an error when the model's maximum is smaller. */
static av_status context_length(const av_model *model, const av_bench_options *o,
                                int *n_ctx) {
    const av_tokenizer *tok = av_model_tokenizer(model);
    int longest = o->prompt_tokens;
    const char *prompts[2] = {AV_BENCH_PROMPT_EN, AV_BENCH_PROMPT_HI};
    for (int i = 0; i < 2; i++) {
        int n = av_tokenize(tok, prompts[i], strlen(prompts[i]), AV_TOKENIZE_BOS, NULL, 0);
        if (n > longest) longest = n;
    }
    int need = longest + o->new_tokens;
    int max = av_model_config(model)->max_seq_len;
    if (need > max)
        return av_set_error(AV_ERR_RANGE, "a prompt of %d tokens plus %d new tokens needs %d "
                            "positions but the model holds %d; lower --prompt-tokens or "
                            "--new-tokens", longest, o->new_tokens, need, max);
    *n_ctx = need;
    return AV_OK;
}

static av_status measure_loaded(av_model *model, const av_bench_options *o,
                                av_bench_sample *out) {
    const av_tokenizer *tok = av_model_tokenizer(model);
    int n_ctx = 0;
    av_status rc = context_length(model, o, &n_ctx);
    if (rc) return rc;
    bench_state st;
    rc = state_init(&st, model, o, n_ctx);
    int32_t *synthetic = rc ? NULL : synthetic_prompt(tok, o->prompt_tokens);
    if (!rc && !synthetic) rc = AV_ERR_NOMEM;

    double latency, ttft;
    int n_prompt;
    if (!rc) rc = timed_request(&st, tok, AV_BENCH_PROMPT_EN, o->new_tokens, &latency, &ttft,
                                &n_prompt); /* warm-up */
    if (!rc) {
        generation_times t;
        rc = generate(&st, synthetic, o->prompt_tokens, o->new_tokens, &t);
        double n_seq = st.n_seq;
        out->prompt_tps = n_seq * o->prompt_tokens / t.prefill_end;
        out->decode_tps = o->new_tokens > 1
            ? n_seq * (o->new_tokens - 1) / (t.end - t.first_token) : NAN;
    }
    const char *prompts[2] = {AV_BENCH_PROMPT_EN, AV_BENCH_PROMPT_HI};
    for (int i = 0; i < 2 && !rc; i++) {
        if (i == 1)
            rc = timed_request(&st, tok, prompts[i], o->new_tokens, &latency, &ttft, &n_prompt);
        if (!rc)
            rc = timed_request(&st, tok, prompts[i], o->new_tokens, &latency, &ttft, &n_prompt);
        if (rc) break;
        out->latency_s[i] = latency;
        out->rps[i] = st.n_seq / latency;
        out->request_prompt_tokens[i] = n_prompt;
        if (i == 0) out->ttft_s = ttft;
    }
    free(synthetic);
    state_free(&st);
    return rc;
}

av_status av_bench_measure(const av_bench_options *o, const char *model_dir,
                           av_bench_sample *out) {
    memset(out, 0, sizeof *out);
    av_load_options lopts = {.n_threads = o->n_threads, .quiet = 1};
    double t0 = av_now_seconds();
    av_model *model = av_model_load(model_dir, &lopts);
    if (!model) return AV_ERR_IO;
    out->load_s = av_now_seconds() - t0;
    av_status rc = measure_loaded(model, o, out);
    av_model_free(model);
    return rc;
}

static void write_number(FILE *f, const char *key, double v, int last) {
    if (isfinite(v)) fprintf(f, "\"%s\":%.9g%s", key, v, last ? "" : ",");
    else fprintf(f, "\"%s\":null%s", key, last ? "" : ",");
}

void av_bench_sample_write_json(FILE *f, const av_bench_sample *s) {
    fputc('{', f);
    write_number(f, "load_s", s->load_s, 0);
    write_number(f, "prompt_tps", s->prompt_tps, 0);
    write_number(f, "decode_tps", s->decode_tps, 0);
    write_number(f, "ttft_s", s->ttft_s, 0);
    write_number(f, "latency_en_s", s->latency_s[0], 0);
    write_number(f, "rps_en", s->rps[0], 0);
    write_number(f, "latency_hi_s", s->latency_s[1], 0);
    write_number(f, "rps_hi", s->rps[1], 0);
    fprintf(f, "\"prompt_tokens_en\":%d,\"prompt_tokens_hi\":%d}\n",
            s->request_prompt_tokens[0], s->request_prompt_tokens[1]);
    fflush(f);
}
