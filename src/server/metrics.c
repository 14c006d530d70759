/*
 * metrics.c - counters and histograms behind GET /metrics.
 *
 * Rendered in the Prometheus text exposition format (version 0.0.4).
 * Request counts are keyed by route and status. The route label takes only
 * the server's fixed route names, and unknown paths count as "other", so
 * the number of series stays bounded whatever clients send.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/server_internal.h"

#define MAX_REQUEST_SERIES 128

static const double ttft_buckets[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
static const double token_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                       0.25, 0.5, 1};
#define N_TTFT (sizeof ttft_buckets / sizeof ttft_buckets[0])
#define N_TOKEN (sizeof token_buckets / sizeof token_buckets[0])

typedef struct {
    const double *bounds;
    size_t n_bounds;
    uint64_t counts[16]; /* counts[i]: observations <= bounds[i], not cumulative */
    uint64_t count;
    double sum;
} histogram;

typedef struct {
    const char *route; /* a static string */
    int status;
    uint64_t count;
} request_series;

struct srv_metrics {
    pthread_mutex_t lock;
    request_series requests[MAX_REQUEST_SERIES];
    int n_requests;
    uint64_t prompt_tokens, generated_tokens, cancelled, rejected;
    uint64_t steps, step_sequences, step_tokens;
    histogram ttft, token_latency;
};

srv_metrics *srv_metrics_create(void) {
    srv_metrics *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    pthread_mutex_init(&m->lock, NULL);
    m->ttft.bounds = ttft_buckets;
    m->ttft.n_bounds = N_TTFT;
    m->token_latency.bounds = token_buckets;
    m->token_latency.n_bounds = N_TOKEN;
    return m;
}

void srv_metrics_free(srv_metrics *m) {
    if (!m) return;
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void srv_metrics_request(srv_metrics *m, const char *route, int status) {
    pthread_mutex_lock(&m->lock);
    int i = 0;
    while (i < m->n_requests && (m->requests[i].status != status ||
                                 strcmp(m->requests[i].route, route)))
        i++;
    if (i == m->n_requests && i < MAX_REQUEST_SERIES) {
        m->requests[i] = (request_series){route, status, 0};
        m->n_requests++;
    }
    if (i < m->n_requests) m->requests[i].count++;
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_tokens(srv_metrics *m, int prompt_tokens, int generated_tokens) {
    pthread_mutex_lock(&m->lock);
    m->prompt_tokens += (uint64_t)prompt_tokens;
    m->generated_tokens += (uint64_t)generated_tokens;
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_step(srv_metrics *m, int n_sequences, int n_tokens) {
    pthread_mutex_lock(&m->lock);
    m->steps++;
    m->step_sequences += (uint64_t)n_sequences;
    m->step_tokens += (uint64_t)n_tokens;
    pthread_mutex_unlock(&m->lock);
}

static void histogram_observe(histogram *h, double v) {
    size_t i = 0;
    while (i < h->n_bounds && v > h->bounds[i]) i++;
    if (i < h->n_bounds) h->counts[i]++;
    h->count++;
    h->sum += v;
}

void srv_metrics_ttft(srv_metrics *m, double seconds) {
    pthread_mutex_lock(&m->lock);
    histogram_observe(&m->ttft, seconds);
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_token_latency(srv_metrics *m, double seconds) {
    pthread_mutex_lock(&m->lock);
    histogram_observe(&m->token_latency, seconds);
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_cancelled(srv_metrics *m) {
    pthread_mutex_lock(&m->lock);
    m->cancelled++;
    pthread_mutex_unlock(&m->lock);
}

void srv_metrics_rejected(srv_metrics *m) {
    pthread_mutex_lock(&m->lock);
    m->rejected++;
    pthread_mutex_unlock(&m->lock);
}

/* ---- rendering ----------------------------------------------------------- */

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} text_buffer;

static void emit(text_buffer *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(text_buffer *t, const char *fmt, ...) {
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(t->buf + t->len, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap * 2 + (size_t)n;
        char *grown = realloc(t->buf, cap);
        if (!grown) {
            t->failed = 1;
            return;
        }
        t->buf = grown;
        t->cap = cap;
    }
}

static void emit_histogram(text_buffer *t, const char *name, const char *help,
                           const histogram *h) {
    emit(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cumulative = 0;
    for (size_t i = 0; i < h->n_bounds; i++) {
        cumulative += h->counts[i];
        emit(t, "%s_bucket{le=\"%g\"} %llu\n", name, h->bounds[i],
             (unsigned long long)cumulative);
    }
    emit(t, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)h->count);
    emit(t, "%s_sum %.6f\n%s_count %llu\n", name, h->sum, name, (unsigned long long)h->count);
}

static void emit_counter(text_buffer *t, const char *name, const char *help, uint64_t v) {
    emit(t, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", name, help, name, name,
         (unsigned long long)v);
}

static void emit_gauge(text_buffer *t, const char *name, const char *help, long v) {
    emit(t, "# HELP %s %s\n# TYPE %s gauge\n%s %ld\n", name, help, name, name, v);
}

char *srv_metrics_render(srv_metrics *m, const srv_gauges *g) {
    text_buffer t = {malloc(4096), 0, 4096, 0};
    if (!t.buf) return NULL;
    pthread_mutex_lock(&m->lock);
    emit(&t, "# HELP airavata_requests_total HTTP requests by route and status code "
             "(0: the connection closed before a response was sent).\n"
             "# TYPE airavata_requests_total counter\n");
    for (int i = 0; i < m->n_requests; i++)
        emit(&t, "airavata_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
             m->requests[i].route, m->requests[i].status,
             (unsigned long long)m->requests[i].count);
    emit_counter(&t, "airavata_prompt_tokens_total", "Prompt tokens run through the model (once per choice).",
                 m->prompt_tokens);
    emit_counter(&t, "airavata_generated_tokens_total", "Tokens generated.",
                 m->generated_tokens);
    emit_counter(&t, "airavata_requests_cancelled_total",
                 "Sequences removed because their client disconnected.", m->cancelled);
    emit_counter(&t, "airavata_requests_rejected_total",
                 "Requests answered 503 because the queue was full.", m->rejected);
    emit_counter(&t, "airavata_forward_steps_total",
                 "Forward passes run; each reads the weights once for all its sequences.",
                 m->steps);
    emit_counter(&t, "airavata_forward_step_sequences_total",
                 "Sum over forward passes of the sequences each one ran.", m->step_sequences);
    emit_counter(&t, "airavata_forward_step_tokens_total",
                 "Sum over forward passes of the tokens each one ran.", m->step_tokens);
    emit_histogram(&t, "airavata_time_to_first_token_seconds",
                   "Seconds from a request entering the queue to its first token.", &m->ttft);
    emit_histogram(&t, "airavata_time_per_output_token_seconds",
                   "Seconds between consecutive tokens of one sequence.", &m->token_latency);
    pthread_mutex_unlock(&m->lock);

    emit_gauge(&t, "airavata_model_loaded", "1 once the model is loaded and serving.",
               g->model_loaded);
    emit_gauge(&t, "airavata_queue_depth", "Requests waiting for a sequence slot.",
               g->queue_depth);
    emit_gauge(&t, "airavata_active_sequences", "Sequences being prefilled or decoded.",
               g->active_sequences);
    emit_gauge(&t, "airavata_kv_cache_blocks_used", "KV cache blocks holding positions.",
               g->kv_blocks_used);
    emit_gauge(&t, "airavata_kv_cache_blocks_total", "KV cache blocks in the pool.",
               g->kv_blocks_total);
    emit_gauge(&t, "airavata_kv_cache_block_size", "Positions per KV cache block.",
               g->kv_block_size);
    if (t.failed) {
        free(t.buf);
        return NULL;
    }
    return t.buf;
}
