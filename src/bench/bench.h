/*
 * bench.h - internal interface of `airavata bench` and `airavata eval`.
 *
 * src/bench contains the measuring code: statistics (stats.c), the SVG chart
 * writer (chart.c), the HTTP client for benchmarking a running server
 * (http_client.c), the in-process model benchmark (bench.c) and the
 * perplexity / KL-divergence evaluation (eval.c). The command-line parsing
 * lives in src/cli/bench.c and src/cli/eval.c.
 */
#ifndef AV_BENCH_H
#define AV_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "airavata.h"

/* ------------------------------------------------------------------------ */
/* Statistics (stats.c)                                                      */
/* ------------------------------------------------------------------------ */

/* Linear-interpolation percentile (NumPy's default "linear" method) of n
 * values, q in [0, 100]. Does not modify `values`. Returns NAN when n is 0. */
double av_percentile(const double *values, int n, double q);
double av_median(const double *values, int n);
double av_mean(const double *values, int n);
double av_min(const double *values, int n);
double av_max(const double *values, int n);

/* Summary of repeated measurements of one quantity. */
typedef struct {
    int n;
    double median, mean, min, max, p10, p90;
} av_summary;

void av_summarize(const double *values, int n, av_summary *out);

/* Writes log(softmax(logits)) to out (n floats; out may equal logits) and
 * returns the logsumexp of the logits. Computed in double with the maximum
 * subtracted first, so large logits do not overflow. */
double av_log_softmax(const float *logits, int n, float *out);

/* KL(p || q) = sum_i p_i (log p_i - log q_i) in nats, from log-probabilities
 * of two distributions over n outcomes. Terms with p_i = 0 contribute 0. */
double av_kl_divergence(const float *log_p, const float *log_q, int n);

/* Index of the largest value; the first one on ties. */
int av_argmax(const float *values, int n);

/* Perplexity exp(mean NLL) of `n` tokens whose negative log-likelihoods (in
 * nats) add up to `nll_sum`. Returns NAN when n is 0. */
double av_perplexity(double nll_sum, int64_t n);

/* ------------------------------------------------------------------------ */
/* SVG chart (chart.c)                                                       */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *label; /* shown next to the point */
    double x, y;
    double z;          /* third quantity, drawn as the point's radius; NAN: none */
} av_chart_point;

typedef struct {
    const char *title;
    const char *x_label, *y_label, *z_label; /* z_label may be NULL */
} av_chart_axes;

/* Writes a scatter chart of the points to `path` as a standalone SVG file.
 * Non-finite x or y are left out. */
av_status av_chart_write_svg(const char *path, const av_chart_axes *axes,
                             const av_chart_point *points, int n);

/* ------------------------------------------------------------------------ */
/* HTTP client (http_client.c)                                               */
/* ------------------------------------------------------------------------ */

typedef enum { AV_API_GENERATE = 0, AV_API_OPENAI } av_http_api;

/* Sends one completion request for `prompt` with `max_new_tokens` to the
 * server at base URL `url` and checks that the response is a JSON object of
 * that API with the generated text in it. On success stores the request's
 * latency in seconds. Thread-safe after av_http_global_init(). */
av_status av_http_complete(const char *url, av_http_api api, const char *model,
                           const char *prompt, int max_new_tokens, double timeout_s,
                           double *latency_s);
/* The first model id that GET /v1/models lists (OpenAI servers require a
 * "model" field), as a malloc'd string; NULL when the server lists none. */
char *av_http_openai_model(const char *url, double timeout_s);
av_status av_http_global_init(void);
void av_http_global_cleanup(void);

/* ------------------------------------------------------------------------ */
/* `airavata bench` (bench_model.c, bench.c, bench_url.c)                    */
/* ------------------------------------------------------------------------ */

#define AV_BENCH_MAX_MODELS 16
#define AV_BENCH_MAX_REPS 1000
#define AV_BENCH_MAX_CONCURRENCY 256

typedef enum { AV_FORMAT_MARKDOWN = 0, AV_FORMAT_JSON, AV_FORMAT_CSV } av_output_format;

typedef struct {
    const char *models[AV_BENCH_MAX_MODELS];
    int n_models;
    const char *url;       /* --url: benchmark a running server instead */
    av_http_api api;
    const char *api_model; /* "model" of OpenAI requests; NULL: ask /v1/models */
    int prompt_tokens;     /* length of the synthetic prompt for prompt tokens/s */
    int new_tokens;        /* tokens generated per request */
    int repetitions;
    int n_threads;         /* 0: all CPUs */
    int concurrency;       /* sequences decoded together (or parallel HTTP clients) */
    double timeout_s;      /* per HTTP request */
    av_output_format format;
    const char *chart_path;
    const char *self_exe;  /* program to re-run for the per-model worker process */
} av_bench_options;

/* One repetition of one model, measured in the worker process. Rates are
 * aggregate over all `concurrency` sequences. */
typedef struct {
    double load_s;
    double prompt_tps, decode_tps;
    double ttft_s;                    /* English request: start to first token */
    double latency_s[2], rps[2];      /* requests: [0] English, [1] Hindi prompt */
    int request_prompt_tokens[2];
} av_bench_sample;

/* Loads the model and measures one repetition in this process. */
av_status av_bench_measure(const av_bench_options *o, const char *model_dir,
                           av_bench_sample *out);
/* Writes a sample as one JSON line (the worker's report to its parent). */
void av_bench_sample_write_json(FILE *f, const av_bench_sample *s);

/* Runs the whole local benchmark (worker processes, round-robin over the
 * models) and prints the report. Returns the process exit code. */
int av_bench_run_models(const av_bench_options *o);
/* Benchmarks the server at o->url and prints the report; exit code. */
int av_bench_run_url(const av_bench_options *o);

/* ------------------------------------------------------------------------ */
/* `airavata eval` (eval.c, eval_logits.c, eval_chat.c)                      */
/* ------------------------------------------------------------------------ */

typedef struct {
    const char *quant_dir;        /* -m: the model under test */
    const char *base_dir;         /* --base: the reference model; NULL with --base-logits */
    const char *text_path;
    const char *save_base_logits; /* write the base model's distributions here */
    const char *base_logits;      /* read them from here instead of running --base */
    int n_ctx;                    /* window length in tokens; 0: min(512, model max) */
    int stride;                   /* window step; 0: n_ctx / 2 */
    int n_threads;
    int chat_tokens;              /* new tokens per chat reply; 0: no chat check */
    av_output_format format;      /* markdown or JSON */
    const char *chart_path;
} av_eval_options;

/* Where the strided windows put each scored token: window w covers tokens
 * [begin, end) and scores targets [first, end), each predicted from the
 * position before it. Every token after the first is scored exactly once. */
typedef struct {
    int begin, end, first;
} av_eval_window;

/* Plans the windows over n_tokens with 2 <= n_ctx <= n_tokens and
 * 1 <= stride < n_ctx. Returns the number of windows written to `windows`
 * (malloc'd), or -1 with an error recorded. */
int av_eval_plan_windows(int n_tokens, int n_ctx, int stride, av_eval_window **windows);

/* The base model's predictions for every scored token, as `eval` keeps and
 * saves them: log-probabilities rounded to F16 (n_targets x vocab), the
 * exact NLL of the true token and the exact top-1 id. */
typedef struct {
    int n_targets, vocab;
    uint16_t *logprobs; /* F16 */
    float *nll;
    int32_t *top1;
    av_safetensors *file; /* set when the arrays point into a loaded file */
} av_base_predictions;

/* Identity of an evaluation, stored with saved base predictions and
 * checked on reuse. */
typedef struct {
    const int32_t *tokens;
    int n_tokens, n_ctx, stride, vocab;
    const char *base_dir;
} av_eval_identity;

av_status av_base_predictions_save(const char *path, const av_base_predictions *p,
                                   const av_eval_identity *id);
/* Loads saved predictions and checks them against `id`: same tokens (so
 * the same text and tokenizer), vocabulary, context and stride. */
av_status av_base_predictions_load(const char *path, const av_eval_identity *id,
                                   av_base_predictions *p);
void av_base_predictions_free(av_base_predictions *p);

/* Greedy answers of two models to the built-in chat instructions (Hindi
 * and English, through av_chat_format). Appends one object per instruction
 * to the JSON array `results`: instruction, language, both answers and
 * first_difference (the first generated token position where the ids
 * differ, -1 when they agree throughout). */
av_status av_eval_chat_compare(av_model *base, av_model *quant, int n_threads, int new_tokens,
                               json_t *results);

/* Runs `airavata eval` and prints the report; returns the exit code. */
int av_eval_run(const av_eval_options *o);

/* ------------------------------------------------------------------------ */
/* Common helpers                                                            */
/* ------------------------------------------------------------------------ */

double av_now_seconds(void);

/* Adds up the sizes of the *.safetensors files in `dir` (the weights on
 * disk). Returns -1 with an error recorded when the directory cannot be
 * read. */
int64_t av_dir_weights_bytes(const char *dir);

/* Reads a whole file into a malloc'd NUL-terminated buffer of at most
 * max_bytes bytes. */
char *av_read_text_file(const char *path, size_t max_bytes, size_t *len_out);

/* Prompts of the request measurement, the same as the Python app measured. */
#define AV_BENCH_PROMPT_EN "how to manage time effectively?"
#define AV_BENCH_PROMPT_HI "समय का प्रबंधन कैसे करें?"

#endif
