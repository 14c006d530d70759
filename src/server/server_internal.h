/*
 * server_internal.h - types shared by the server's files.
 *
 *   scheduler.c  jobs (one generated sequence each), the wait queue and the
 *                thread that owns the av_context (continuous batching)
 *   api.c        request JSON -> parsed request, results -> response JSON
 *   http.c       libmicrohttpd glue: routing, auth, bodies, streaming
 *   metrics.c    counters and histograms for /metrics
 *   server.c     start-up, signals and graceful shutdown
 *
 * Locking: one mutex (srv_scheduler.lock) guards the queue, the slots and
 * every job field marked "shared" below. The scheduler thread alone touches
 * the av_context and the fields marked "scheduler".
 */
#ifndef AV_SERVER_INTERNAL_H
#define AV_SERVER_INTERNAL_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "airavata.h"
#include "server/server.h"

#define SRV_MAX_STOPS 16
#define SRV_MAX_STOP_BYTES 256
#define SRV_MAX_N 16

double srv_now(void); /* monotonic seconds */

/* ---- metrics ------------------------------------------------------------ */

typedef struct srv_metrics srv_metrics;

srv_metrics *srv_metrics_create(void);
void srv_metrics_free(srv_metrics *m);
void srv_metrics_request(srv_metrics *m, const char *route, int status);
void srv_metrics_tokens(srv_metrics *m, int prompt_tokens, int generated_tokens);
/* Counts one forward step over `n_sequences` sequences and `n_tokens` tokens. */
void srv_metrics_step(srv_metrics *m, int n_sequences, int n_tokens);
void srv_metrics_ttft(srv_metrics *m, double seconds);
void srv_metrics_token_latency(srv_metrics *m, double seconds);
void srv_metrics_cancelled(srv_metrics *m);
void srv_metrics_rejected(srv_metrics *m);
/* Gauges sampled when /metrics is rendered. */
typedef struct {
    int queue_depth, active_sequences, kv_blocks_total, kv_blocks_used, kv_block_size;
    int model_loaded;
} srv_gauges;
/* Returns the Prometheus text exposition as a malloc'd string. */
char *srv_metrics_render(srv_metrics *m, const srv_gauges *g);

/* ---- jobs and the scheduler --------------------------------------------- */

typedef enum { JOB_QUEUED, JOB_RUNNING, JOB_DONE } srv_job_state;

typedef enum {
    FINISH_NONE = 0,
    FINISH_STOP,      /* end-of-sequence token or a stop string */
    FINISH_LENGTH,    /* max_tokens or the end of the context */
    FINISH_CANCELLED, /* the client went away */
    FINISH_ERROR,     /* the forward pass failed or the server stopped */
} srv_finish;

typedef struct srv_job {
    /* Input, fixed once submitted. */
    int32_t *history;       /* [n_ctx + 1]: prompt, then generated ids */
    int n_prompt;
    int max_tokens;
    int ignore_eos;
    av_sampler *sampler;
    char *stops[SRV_MAX_STOPS];
    int n_stops;
    int kv_blocks;          /* blocks reserved for prompt + max_tokens */

    /* Shared: read by HTTP threads under the lock. */
    srv_job_state state;
    int cancel_requested;
    char *out;              /* text released to the client so far */
    size_t out_len, out_cap;
    int n_generated;
    srv_finish finish;
    char error[256];
    double t_submit, t_first_token, t_end;
    int refs;               /* HTTP side + scheduler side */
    struct srv_job *next;   /* wait-queue link */

    /* Scheduler: decoding state. */
    int slot;
    int n_fed;              /* prompt tokens already in the KV cache */
    int n_history;
    av_decoder decoder;
    char *text;             /* all generated text, for the stop-string scan */
    size_t text_len, text_cap, text_released;
    double t_last_token;
} srv_job;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t work;      /* the scheduler waits here for jobs */
    pthread_cond_t progress;  /* HTTP threads wait here for text */

    av_model *model;
    av_context *ctx;
    srv_metrics *metrics;
    int n_seq, n_ctx, n_batch, vocab_size;
    int kv_block_size, kv_blocks_total, kv_blocks_reserved, kv_blocks_free;

    srv_job *queue_head, *queue_tail;
    int queue_len, max_queue;
    srv_job **slots;          /* [n_seq]: running jobs, NULL when free */
    int n_running;
    int stopping;
    pthread_t thread;
    int thread_started;

    /* Scheduler: batch buffers of n_batch tokens. */
    int32_t *b_token, *b_pos, *b_seq;
    int8_t *b_logits;
    srv_job **b_owner;        /* job of each flagged token, in logits order */
    srv_finish *b_finish;     /* outcome of each flagged token's job */
    float *logits;            /* [n_seq * vocab_size] */
} srv_scheduler;

av_status srv_scheduler_start(srv_scheduler *s, av_model *model, const av_server_options *o,
                              srv_metrics *metrics);
/* Stops the thread; jobs still queued or running end with FINISH_ERROR. */
void srv_scheduler_stop(srv_scheduler *s);

/* Creates a job for a tokenized prompt (copied). Returns NULL and records
 * an error when memory runs out. */
srv_job *srv_job_create(srv_scheduler *s, const int32_t *prompt, int n_prompt, int max_tokens,
                        const av_sampler_params *sampling, const char *const *stops,
                        int n_stops, int ignore_eos);
/* Drops the HTTP side's reference (takes the lock). */
void srv_job_release(srv_scheduler *s, srv_job *job);

typedef enum { SUBMIT_OK = 0, SUBMIT_QUEUE_FULL, SUBMIT_TOO_LARGE, SUBMIT_STOPPING } srv_submit;
/* Queues jobs[0..n) together, all or none. */
srv_submit srv_scheduler_submit(srv_scheduler *s, srv_job **jobs, int n);
/* Asks for a job to end (caller holds the lock): a queued job leaves the
 * queue at once, a running one is removed at the start of the next step. */
void srv_job_cancel_locked(srv_scheduler *s, srv_job *job);
void srv_scheduler_gauges(srv_scheduler *s, srv_gauges *g);

const char *srv_finish_name(srv_finish f); /* "stop", "length", ... */

/* ---- API requests -------------------------------------------------------- */

typedef enum { API_GENERATE, API_COMPLETION, API_CHAT } srv_api_kind;

typedef struct {
    int status;              /* HTTP status */
    const char *type;        /* OpenAI error type */
    const char *code;        /* OpenAI error code or NULL */
    char param[64];          /* the field at fault, "" when none */
    char message[512];
} srv_error;

typedef struct {
    srv_api_kind kind;
    char *prompt_text;       /* /generate and string prompts: the prompt as sent */
    int32_t *ids;            /* tokenized prompt */
    int n_ids;
    int max_tokens;
    int n;                   /* choices */
    int stream, include_usage, ignore_eos;
    av_sampler_params sampling;
    int have_seed;
    char *stops[SRV_MAX_STOPS];
    int n_stops;
} srv_api_request;

typedef struct {
    const av_tokenizer *tok;
    const char *model_name;
    int n_ctx;
    int n_parallel;
    int kv_tokens_total;
} srv_api_limits;

/* Parses and validates a request body for `kind`; fills err and returns -1
 * on any invalid input. */
int srv_api_parse(srv_api_kind kind, const char *body, size_t len, const srv_api_limits *lim,
                  srv_api_request *req, srv_error *err);
void srv_api_request_free(srv_api_request *req);

void srv_error_set(srv_error *err, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* Returns the OpenAI error JSON (and "detail" for /generate) as malloc'd text. */
char *srv_error_json(const srv_error *err, int with_detail);

/* Result of one choice, copied out of its job under the lock. */
typedef struct {
    const char *text;
    size_t len;
    srv_finish finish;
    int n_generated;
} srv_choice;

char *srv_api_response(const srv_api_request *req, const char *id, const char *model,
                       long created, const srv_choice *choices, int n_choices);
/* One streamed chunk: text for choice `index`, or the finish (finish !=
 * FINISH_NONE), or the closing usage chunk (index < 0). */
char *srv_api_chunk(const srv_api_request *req, const char *id, const char *model,
                    long created, int index, const char *text, size_t len, int first,
                    srv_finish finish, int prompt_tokens, int completion_tokens);
char *srv_api_models(const char *model, long created);

/* Returns 1 when s[0..len) is valid UTF-8; else 0 and the offset of the
 * first invalid byte. */
int srv_utf8_valid(const char *s, size_t len, size_t *bad_offset);

/* ---- embedded assets (generated from src/server/assets at build time) --- */

typedef struct {
    const char *name;
    const unsigned char *data;
    size_t size;
} srv_asset;

extern const srv_asset srv_assets[];
extern const size_t srv_asset_count;
const srv_asset *srv_asset_find(const char *name);

/* ---- HTTP ------------------------------------------------------------------ */

typedef struct srv_http srv_http;

typedef struct {
    const av_server_options *options;
    srv_scheduler *sched;
    srv_metrics *metrics;
    const char *model_name;
    long created;
    volatile int ready;      /* 1 once the model is loaded and the scheduler runs */
    volatile int draining;   /* 1 after the first shutdown signal */
} srv_state;

srv_http *srv_http_start(srv_state *state, int *bound_port);
/* Stops accepting connections; running requests continue. */
void srv_http_quiesce(srv_http *http);
/* Number of requests being processed now. */
int srv_http_active(srv_http *http);
void srv_http_stop(srv_http *http);

#endif
