/*
 * http.c - the HTTP side of the server, on libmicrohttpd.
 *
 * libmicrohttpd runs one thread per connection, so a handler may block. A
 * non-streaming generation waits for its jobs in the access handler. A
 * streaming one waits inside the response's content reader, which turns
 * each batch of released text into server-sent events. While waiting,
 * the thread polls its socket for a hang-up every 100 ms. The jobs of a
 * client that disconnects are cancelled, and the scheduler frees their KV
 * blocks at the start of its next step. A failed write ends the request
 * the same way through the request-completed callback.
 */
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "server/server_internal.h"

#define WAIT_SLICE_MS 100

struct srv_http {
    struct MHD_Daemon *daemon;
    srv_state *state;
    pthread_mutex_t lock;
    int active;
    unsigned long next_id;
    uint64_t seed_state;
};

/* One HTTP request, from its first byte to the request-completed callback. */
typedef struct {
    srv_http *http;
    struct MHD_Connection *connection;
    unsigned long id;
    const char *route;      /* metrics label: a fixed route name or "other" */
    char method[12];
    double t_start;
    char *body;
    size_t body_len, body_cap;
    int body_too_large;
    int status;             /* status of the queued response, 0 before */
    char error[512];        /* message of an error response, for the log */

    srv_api_request req;
    int have_req;
    srv_job *jobs[SRV_MAX_N];
    int n_jobs;
    char response_id[48];
    long created;
    int client_gone;

    /* Streaming state: what each choice has been sent. */
    size_t sent[SRV_MAX_N];
    int finish_sent[SRV_MAX_N];
    int stream_done;
    char *pending;
    size_t pending_len, pending_off, pending_cap;
} http_request;

const srv_asset *srv_asset_find(const char *name) {
    for (size_t i = 0; i < srv_asset_count; i++)
        if (!strcmp(srv_assets[i].name, name)) return &srv_assets[i];
    return NULL;
}

/* ---- responses ----------------------------------------------------------- */

static enum MHD_Result send_response(http_request *r, int status, const char *content_type,
                                     void *body, size_t len, enum MHD_ResponseMemoryMode mode,
                                     const char *extra_header, const char *extra_value) {
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, body, mode);
    if (!resp) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(body);
        av_log(AV_LOG_ERROR, "req %lu: cannot create a response (out of memory)", r->id);
        return MHD_NO;
    }
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, content_type);
    char id[32];
    snprintf(id, sizeof id, "%lu", r->id);
    MHD_add_response_header(resp, "X-Request-Id", id);
    if (extra_header) MHD_add_response_header(resp, extra_header, extra_value);
    r->status = status;
    enum MHD_Result ok = MHD_queue_response(r->connection, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result send_json(http_request *r, int status, char *json) {
    if (!json) {
        static const char fallback[] = "{\"error\":{\"message\":\"out of memory building the "
                                       "response\",\"type\":\"server_error\",\"param\":null,"
                                       "\"code\":null}}";
        return send_response(r, 500, "application/json", (void *)fallback, sizeof fallback - 1,
                             MHD_RESPMEM_PERSISTENT, NULL, NULL);
    }
    return send_response(r, status, "application/json", json, strlen(json),
                         MHD_RESPMEM_MUST_FREE, NULL, NULL);
}

static enum MHD_Result send_error_with(http_request *r, const srv_error *e,
                                       const char *header, const char *value) {
    snprintf(r->error, sizeof r->error, "%s", e->message);
    char *json = srv_error_json(e, !strcmp(r->route, "/generate"));
    if (!json) return send_json(r, 500, NULL);
    return send_response(r, e->status, "application/json", json, strlen(json),
                         MHD_RESPMEM_MUST_FREE, header, value);
}

static enum MHD_Result send_error(http_request *r, const srv_error *e) {
    return send_error_with(r, e, NULL, NULL);
}

static enum MHD_Result fail(http_request *r, int status, const char *type, const char *code,
                            const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static enum MHD_Result fail(http_request *r, int status, const char *type, const char *code,
                            const char *fmt, ...) {
    srv_error e = {status, type, code, "", ""};
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e.message, sizeof e.message, fmt, ap);
    va_end(ap);
    return send_error(r, &e);
}

/* ---- waiting for jobs ---------------------------------------------------- */

/* Returns 1 when the peer has closed or reset the connection.
 * NOTE: a client that half-closes its sending side after the request
 * (shutdown(SHUT_WR)) also reads as gone, and its jobs are cancelled. */
static int peer_closed(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *info =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!info) return 0;
    struct pollfd p = {.fd = info->connect_fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0) return 0;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

/* Waits (lock held) up to one slice for scheduler progress, then cancels the
 * request's jobs if the client has gone. */
static void wait_slice_locked(http_request *r) {
    srv_scheduler *s = r->http->state->sched;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += WAIT_SLICE_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&s->progress, &s->lock, &ts);
    if (!r->client_gone && peer_closed(r->connection)) {
        r->client_gone = 1;
        av_log(AV_LOG_INFO, "req %lu: client disconnected; cancelling %d sequence(s)", r->id,
               r->n_jobs);
        for (int i = 0; i < r->n_jobs; i++) srv_job_cancel_locked(s, r->jobs[i]);
    }
}

static int all_done_locked(http_request *r) {
    for (int i = 0; i < r->n_jobs; i++)
        if (r->jobs[i]->state != JOB_DONE) return 0;
    return 1;
}

/* ---- generation ---------------------------------------------------------- */

static uint64_t next_seed(srv_http *h) {
    pthread_mutex_lock(&h->lock);
    uint64_t z = (h->seed_state += 0x9E3779B97F4A7C15ull);
    pthread_mutex_unlock(&h->lock);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int create_jobs(http_request *r) {
    srv_scheduler *s = r->http->state->sched;
    srv_api_request *q = &r->req;
    for (int i = 0; i < q->n; i++) {
        av_sampler_params p = q->sampling;
        p.seed = q->have_seed ? q->sampling.seed + (uint64_t)i : next_seed(r->http);
        r->jobs[i] = srv_job_create(s, q->ids, q->n_ids, q->max_tokens, &p,
                                    (const char *const *)q->stops, q->n_stops, q->ignore_eos);
        if (!r->jobs[i]) return -1;
        r->n_jobs = i + 1;
    }
    return 0;
}

/* Drops jobs that never reached the scheduler (both references at once). */
static void drop_unsubmitted(http_request *r) {
    for (int i = 0; i < r->n_jobs; i++) {
        srv_job_release(r->http->state->sched, r->jobs[i]);
        srv_job_release(r->http->state->sched, r->jobs[i]);
    }
    r->n_jobs = 0;
}

static void log_prompt(http_request *r) {
    if (!r->http->state->options->log_prompts) return;
    char *text = av_detokenize(av_model_tokenizer(r->http->state->sched->model), r->req.ids,
                               r->req.n_ids);
    if (!text) return;
    for (char *p = text; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    av_log(AV_LOG_INFO, "req %lu prompt: %s", r->id, text);
    free(text);
}

static enum MHD_Result respond_blocking(http_request *r) {
    srv_scheduler *s = r->http->state->sched;
    srv_choice choices[SRV_MAX_N];
    pthread_mutex_lock(&s->lock);
    while (!all_done_locked(r)) wait_slice_locked(r);
    pthread_mutex_unlock(&s->lock);
    if (r->client_gone) return MHD_NO;

    /* Done jobs are no longer written by the scheduler, so they can be read
     * without the lock. */
    for (int i = 0; i < r->n_jobs; i++) {
        srv_job *job = r->jobs[i];
        if (job->finish == FINISH_ERROR)
            return fail(r, 500, "server_error", NULL, "generation failed: %s", job->error);
        choices[i] = (srv_choice){job->out, job->out_len, job->finish, job->n_generated};
    }
    char *json = srv_api_response(&r->req, r->response_id, r->http->state->model_name,
                                  r->created, choices, r->n_jobs);
    return send_json(r, 200, json);
}

static int pending_append(http_request *r, const char *prefix, const char *s, size_t n) {
    size_t plen = strlen(prefix), need = r->pending_len + plen + n + 2;
    if (need > r->pending_cap) {
        size_t cap = r->pending_cap ? r->pending_cap : 4096;
        while (cap < need) cap *= 2;
        char *grown = realloc(r->pending, cap);
        if (!grown) return -1;
        r->pending = grown;
        r->pending_cap = cap;
    }
    memcpy(r->pending + r->pending_len, prefix, plen);
    memcpy(r->pending + r->pending_len + plen, s, n);
    r->pending_len += plen + n;
    memcpy(r->pending + r->pending_len, "\n\n", 2);
    r->pending_len += 2;
    return 0;
}

static int pending_event(http_request *r, char *json) {
    if (!json) return -1;
    int rc = pending_append(r, "data: ", json, strlen(json));
    free(json);
    return rc;
}

/* One choice's news, copied out under the lock and encoded after it. */
typedef struct {
    char *text;
    size_t len;
    srv_finish finish; /* FINISH_NONE while the choice runs */
    char error[256];
} choice_delta;

/* Waits for new text or finished choices and turns them into events in the
 * pending buffer. Returns -1 when the client is gone or memory ran out. */
static int fill_events(http_request *r) {
    srv_scheduler *s = r->http->state->sched;
    choice_delta deltas[SRV_MAX_N];
    memset(deltas, 0, sizeof deltas);
    int any = 0, n_generated = 0;

    pthread_mutex_lock(&s->lock);
    for (;;) {
        for (int i = 0; i < r->n_jobs; i++) {
            srv_job *job = r->jobs[i];
            if (job->out_len > r->sent[i]) {
                deltas[i].len = job->out_len - r->sent[i];
                deltas[i].text = malloc(deltas[i].len);
                if (deltas[i].text) memcpy(deltas[i].text, job->out + r->sent[i], deltas[i].len);
                r->sent[i] = job->out_len;
                any = 1;
            }
            if (job->state == JOB_DONE && !r->finish_sent[i]) {
                deltas[i].finish = job->finish;
                snprintf(deltas[i].error, sizeof deltas[i].error, "%s", job->error);
                r->finish_sent[i] = 1;
                any = 1;
            }
        }
        if (any || r->client_gone) break;
        wait_slice_locked(r);
    }
    int finished = 1;
    for (int i = 0; i < r->n_jobs; i++) {
        finished &= r->finish_sent[i];
        n_generated += r->jobs[i]->n_generated;
    }
    pthread_mutex_unlock(&s->lock);

    int rc = r->client_gone ? -1 : 0;
    const char *model = r->http->state->model_name;
    for (int i = 0; i < r->n_jobs && rc == 0; i++) {
        choice_delta *d = &deltas[i];
        if (d->len && !d->text) rc = -1;
        if (d->len && rc == 0)
            rc = pending_event(r, srv_api_chunk(&r->req, r->response_id, model, r->created, i,
                                                d->text, d->len, 0, FINISH_NONE, 0, 0));
        if (rc || d->finish == FINISH_NONE) continue;
        if (d->finish == FINISH_ERROR) {
            srv_error e = {500, "server_error", NULL, "", ""};
            snprintf(e.message, sizeof e.message, "generation failed: %s", d->error);
            snprintf(r->error, sizeof r->error, "%s", e.message);
            rc = pending_event(r, srv_error_json(&e, 0));
        } else if (d->finish != FINISH_CANCELLED) {
            rc = pending_event(r, srv_api_chunk(&r->req, r->response_id, model, r->created, i,
                                                "", 0, 0, d->finish, 0, 0));
        }
    }
    for (int i = 0; i < r->n_jobs; i++) free(deltas[i].text);
    if (rc == 0 && finished) {
        if (r->req.include_usage)
            rc = pending_event(r, srv_api_chunk(&r->req, r->response_id, model, r->created, -1,
                                                NULL, 0, 0, FINISH_NONE, r->req.n_ids,
                                                n_generated));
        if (rc == 0) rc = pending_append(r, "data: ", "[DONE]", 6);
        r->stream_done = 1;
    }
    return rc;
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    http_request *r = cls;
    for (;;) {
        if (r->pending_off < r->pending_len) {
            size_t n = r->pending_len - r->pending_off;
            if (n > max) n = max;
            memcpy(buf, r->pending + r->pending_off, n);
            r->pending_off += n;
            if (r->pending_off == r->pending_len) r->pending_off = r->pending_len = 0;
            return (ssize_t)n;
        }
        if (r->stream_done) return MHD_CONTENT_READER_END_OF_STREAM;
        if (fill_events(r)) return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static enum MHD_Result respond_stream(http_request *r) {
    /* Chat streams open with the assistant role, as OpenAI's do. */
    if (r->req.kind == API_CHAT)
        for (int i = 0; i < r->n_jobs; i++)
            if (pending_event(r, srv_api_chunk(&r->req, r->response_id,
                                               r->http->state->model_name, r->created, i, "", 0,
                                               1, FINISH_NONE, 0, 0)))
                return fail(r, 500, "server_error", NULL, "out of memory starting the stream");
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, r, NULL);
    if (!resp) return fail(r, 500, "server_error", NULL, "cannot create a streaming response");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    char id[32];
    snprintf(id, sizeof id, "%lu", r->id);
    MHD_add_response_header(resp, "X-Request-Id", id);
    r->status = 200;
    enum MHD_Result ok = MHD_queue_response(r->connection, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result handle_generation(http_request *r, srv_api_kind kind) {
    srv_state *st = r->http->state;
    if (!st->ready)
        return fail(r, 503, "server_error", "model_loading",
                    "the model is still loading; retry when GET /health returns 200");
    if (st->draining)
        return fail(r, 503, "server_error", "shutting_down", "the server is shutting down");

    srv_scheduler *s = st->sched;
    srv_api_limits lim = {av_model_tokenizer(s->model), st->model_name, s->n_ctx, s->n_seq,
                          s->kv_blocks_total * s->kv_block_size};
    srv_error err;
    r->have_req = 1;
    if (srv_api_parse(kind, r->body ? r->body : "", r->body_len, &lim, &r->req, &err))
        return send_error(r, &err);
    log_prompt(r);

    if (create_jobs(r)) {
        drop_unsubmitted(r);
        return fail(r, 500, "server_error", NULL, "%s", av_last_error());
    }
    snprintf(r->response_id, sizeof r->response_id, "%s-%016llx",
             kind == API_CHAT ? "chatcmpl" : "cmpl", (unsigned long long)next_seed(r->http));
    r->created = (long)time(NULL);

    srv_submit sub = srv_scheduler_submit(s, r->jobs, r->n_jobs);
    if (sub != SUBMIT_OK) {
        drop_unsubmitted(r);
        if (sub == SUBMIT_QUEUE_FULL) {
            srv_metrics_rejected(st->metrics);
            srv_error e = {503, "server_error", "server_overloaded", "", ""};
            snprintf(e.message, sizeof e.message, "the server is busy: %d requests are waiting; "
                     "retry after a second", st->options->max_queue);
            return send_error_with(r, &e, MHD_HTTP_HEADER_RETRY_AFTER, "1");
        }
        if (sub == SUBMIT_TOO_LARGE)
            return fail(r, 400, "invalid_request_error", "context_length_exceeded",
                        "the request needs more KV cache blocks than the pool holds; lower "
                        "max_tokens");
        return fail(r, 503, "server_error", "shutting_down", "the server is shutting down");
    }
    return r->req.stream ? respond_stream(r) : respond_blocking(r);
}

/* ---- simple routes ------------------------------------------------------- */

static enum MHD_Result handle_asset(http_request *r, const char *name, const char *type) {
    const srv_asset *a = srv_asset_find(name);
    if (!a) return fail(r, 500, "server_error", NULL, "embedded file %s is missing", name);
    return send_response(r, 200, type, (void *)a->data, a->size, MHD_RESPMEM_PERSISTENT, NULL,
                         NULL);
}

static void gauges(srv_state *st, srv_gauges *g) {
    memset(g, 0, sizeof *g);
    if (st->ready) srv_scheduler_gauges(st->sched, g);
    g->model_loaded = st->ready;
}

static enum MHD_Result handle_get(http_request *r, const char *url) {
    srv_state *st = r->http->state;
    char buf[512];
    if (!strcmp(url, "/")) {
        snprintf(buf, sizeof buf, "{\"status\":\"%s\",\"message\":\"Airavata server is "
                 "running\",\"model\":\"%s\",\"docs\":\"/docs\",\"chat\":\"/chat\"}",
                 st->ready ? "ok" : "loading", st->model_name);
        return send_json(r, 200, strdup(buf));
    }
    if (!strcmp(url, "/health")) {
        if (st->draining) return send_json(r, 503, strdup("{\"status\":\"shutting down\"}"));
        if (!st->ready) return send_json(r, 503, strdup("{\"status\":\"loading\"}"));
        return send_json(r, 200, strdup("{\"status\":\"ok\"}"));
    }
    if (!strcmp(url, "/metrics")) {
        srv_gauges g;
        gauges(st, &g);
        char *text = srv_metrics_render(st->metrics, &g);
        if (!text) return send_json(r, 500, NULL);
        return send_response(r, 200, "text/plain; version=0.0.4; charset=utf-8", text,
                             strlen(text), MHD_RESPMEM_MUST_FREE, NULL, NULL);
    }
    if (!strcmp(url, "/openapi.json")) return handle_asset(r, "openapi.json", "application/json");
    if (!strcmp(url, "/docs")) return handle_asset(r, "docs.html", "text/html; charset=utf-8");
    if (!strcmp(url, "/chat")) return handle_asset(r, "chat.html", "text/html; charset=utf-8");
    if (!strcmp(url, "/v1/models")) return send_json(r, 200, srv_api_models(st->model_name,
                                                                            st->created));
    /* /v1/models/{id} */
    const char *id = url + strlen("/v1/models/");
    if (strcmp(id, st->model_name))
        return fail(r, 404, "invalid_request_error", "model_not_found",
                    "the model '%.200s' does not exist; this server serves '%s'", id,
                    st->model_name);
    snprintf(buf, sizeof buf, "{\"id\":\"%s\",\"object\":\"model\",\"created\":%ld,"
             "\"owned_by\":\"airavata\"}", st->model_name, st->created);
    return send_json(r, 200, strdup(buf));
}

/* ---- routing ------------------------------------------------------------- */

typedef struct {
    const char *path;
    int prefix;          /* 1: path is a prefix ("/v1/models/") */
    const char *method;  /* "GET" (HEAD too) or "POST" */
    int needs_key;
    int kind;            /* -1 for GET routes, else an srv_api_kind */
} route;

static const route routes[] = {
    {"/", 0, "GET", 0, -1},
    {"/health", 0, "GET", 0, -1},
    {"/metrics", 0, "GET", 0, -1},
    {"/openapi.json", 0, "GET", 0, -1},
    {"/docs", 0, "GET", 0, -1},
    {"/chat", 0, "GET", 0, -1},
    {"/v1/models", 0, "GET", 1, -1},
    {"/v1/models/", 1, "GET", 1, -1},
    {"/generate", 0, "POST", 1, API_GENERATE},
    {"/v1/completions", 0, "POST", 1, API_COMPLETION},
    {"/v1/chat/completions", 0, "POST", 1, API_CHAT},
};

static const route *find_route(const char *url) {
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        const route *rt = &routes[i];
        if (rt->prefix ? !strncmp(url, rt->path, strlen(rt->path)) && url[strlen(rt->path)]
                       : !strcmp(url, rt->path))
            return rt;
    }
    return NULL;
}

/* Compares without an early exit so timing does not reveal the key. */
static int keys_equal(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned diff = la != lb;
    for (size_t i = 0; i < la; i++) diff |= (unsigned char)a[i] ^ (unsigned char)b[i % (lb ? lb : 1)];
    return diff == 0;
}

static enum MHD_Result check_key_and_dispatch(http_request *r, const route *rt,
                                              const char *url) {
    const char *key = r->http->state->options->api_key;
    if (rt->needs_key && key && *key) {
        const char *auth = MHD_lookup_connection_value(r->connection, MHD_HEADER_KIND,
                                                       MHD_HTTP_HEADER_AUTHORIZATION);
        if (!auth || strncmp(auth, "Bearer ", 7)) {
            srv_error e = {401, "invalid_request_error", "invalid_api_key", "", ""};
            snprintf(e.message, sizeof e.message, "missing API key; send the header "
                     "'Authorization: Bearer KEY'");
            return send_error_with(r, &e, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
        }
        if (!keys_equal(auth + 7, key)) {
            srv_error e = {401, "invalid_request_error", "invalid_api_key", "", ""};
            snprintf(e.message, sizeof e.message, "invalid API key");
            return send_error_with(r, &e, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
        }
    }
    if (rt->kind >= 0) return handle_generation(r, (srv_api_kind)rt->kind);
    return handle_get(r, url);
}

static enum MHD_Result dispatch(http_request *r, const char *url, const char *method) {
    const route *rt = find_route(url);
    if (!rt)
        return fail(r, 404, "invalid_request_error", "not_found",
                    "no route %.200s; see /docs for the routes this server has", url);
    int is_get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    if (strcmp(rt->method, "GET") ? strcmp(method, rt->method) != 0 : !is_get) {
        srv_error e = {405, "invalid_request_error", "method_not_allowed", "", ""};
        snprintf(e.message, sizeof e.message, "method %.16s is not allowed on %s; use %s",
                 method, rt->path, rt->method);
        return send_error_with(r, &e, MHD_HTTP_HEADER_ALLOW,
                               strcmp(rt->method, "GET") ? rt->method : "GET, HEAD");
    }
    if (r->body_too_large)
        return fail(r, 413, "invalid_request_error", "request_too_large",
                    "the request body is larger than the limit of %zu bytes",
                    r->http->state->options->max_body_bytes);
    return check_key_and_dispatch(r, rt, url);
}

static const char *route_label(const char *url) {
    const route *rt = find_route(url);
    if (!rt) return "other";
    return rt->prefix ? "/v1/models/{model}" : rt->path;
}

static int body_append(http_request *r, const char *data, size_t n, size_t limit) {
    if (r->body_too_large || r->body_len + n > limit) {
        r->body_too_large = 1;
        return 0;
    }
    if (r->body_len + n + 1 > r->body_cap) {
        size_t cap = r->body_cap ? r->body_cap : 4096;
        while (cap < r->body_len + n + 1) cap *= 2;
        char *grown = realloc(r->body, cap);
        if (!grown) return -1;
        r->body = grown;
        r->body_cap = cap;
    }
    memcpy(r->body + r->body_len, data, n);
    r->body_len += n;
    r->body[r->body_len] = 0;
    return 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    srv_http *h = cls;
    http_request *r = *con_cls;
    const av_server_options *o = h->state->options;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->http = h;
        r->connection = connection;
        r->t_start = srv_now();
        r->route = route_label(url);
        snprintf(r->method, sizeof r->method, "%s", method);
        pthread_mutex_lock(&h->lock);
        r->id = ++h->next_id;
        h->active++;
        pthread_mutex_unlock(&h->lock);
        *con_cls = r;
        const char *length = MHD_lookup_connection_value(connection, MHD_HEADER_KIND,
                                                         MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (length && strtoull(length, NULL, 10) > o->max_body_bytes) {
            r->body_too_large = 1;
            return fail(r, 413, "invalid_request_error", "request_too_large",
                        "the request body is larger than the limit of %zu bytes",
                        o->max_body_bytes);
        }
        return MHD_YES;
    }
    if (r->status) {
        *upload_data_size = 0; /* a response is queued; discard the rest */
        return MHD_YES;
    }
    if (*upload_data_size) {
        if (o->timeout_s > 0 && srv_now() - r->t_start > o->timeout_s) {
            av_log(AV_LOG_WARN, "req %lu %s %s: request body not received within %d s; "
                   "closing the connection", r->id, r->method, r->route, o->timeout_s);
            return MHD_NO;
        }
        if (body_append(r, upload_data, *upload_data_size, o->max_body_bytes)) {
            av_log(AV_LOG_ERROR, "req %lu: out of memory reading the request body", r->id);
            return MHD_NO;
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    return dispatch(r, url, method);
}

/* ---- request completion and logging -------------------------------------- */

static void log_request(http_request *r, enum MHD_RequestTerminationCode toe) {
    int generated = 0;
    double ttft = -1, end = srv_now();
    for (int i = 0; i < r->n_jobs; i++) {
        srv_job *job = r->jobs[i];
        generated += job->n_generated;
        if (job->t_first_token > 0 && (ttft < 0 || job->t_first_token - job->t_submit < ttft))
            ttft = job->t_first_token - job->t_submit;
    }
    int prompt = r->n_jobs ? r->req.n_ids : 0;
    srv_metrics_request(r->http->state->metrics, r->route, r->status);

    char ttft_text[32] = "-";
    if (ttft >= 0) snprintf(ttft_text, sizeof ttft_text, "%.3fs", ttft);
    const char *outcome = toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? ""
                          : r->client_gone || toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT
                              ? " (client disconnected)"
                          : toe == MHD_REQUEST_TERMINATED_TIMEOUT_REACHED ? " (timed out)"
                          : toe == MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN ? " (server shutdown)"
                                                                           : " (connection error)";
    av_log_level level = r->client_gone ? AV_LOG_INFO
                         : r->status >= 500 || r->status == 0 ? AV_LOG_ERROR
                         : r->status >= 400 ? AV_LOG_WARN : AV_LOG_INFO;
    av_log(level, "req %lu %s %s %d prompt_tokens=%d generated_tokens=%d ttft=%s total=%.3fs%s%s%s",
           r->id, r->method, r->route, r->status, prompt, generated, ttft_text,
           end - r->t_start, outcome, r->error[0] ? ": " : "", r->error);
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    srv_http *h = cls;
    http_request *r = *con_cls;
    if (!r) return;
    *con_cls = NULL;
    srv_scheduler *s = h->state->sched;
    if (r->n_jobs) {
        pthread_mutex_lock(&s->lock);
        for (int i = 0; i < r->n_jobs; i++)
            if (r->jobs[i]->state != JOB_DONE) {
                r->client_gone = 1;
                srv_job_cancel_locked(s, r->jobs[i]);
            }
        pthread_mutex_unlock(&s->lock);
    }
    log_request(r, toe);
    for (int i = 0; i < r->n_jobs; i++) srv_job_release(s, r->jobs[i]);
    if (r->have_req) srv_api_request_free(&r->req);
    free(r->body);
    free(r->pending);
    free(r);
    pthread_mutex_lock(&h->lock);
    h->active--;
    pthread_mutex_unlock(&h->lock);
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap) {
    char message[512];
    vsnprintf(message, sizeof message, fmt, ap);
    size_t n = strlen(message);
    while (n && (message[n - 1] == '\n' || message[n - 1] == '\r')) message[--n] = 0;
    av_log(AV_LOG_WARN, "http: %s", message);
}

/* ---- life cycle ---------------------------------------------------------- */

srv_http *srv_http_start(srv_state *state, int *bound_port) {
    const av_server_options *o = state->options;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_NUMERICSERV | AI_PASSIVE};
    struct addrinfo *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", o->port);
    int gai = getaddrinfo(o->host, port, &hints, &ai);
    if (gai) {
        av_set_error(AV_ERR_INVALID, "cannot resolve --host %s: %s", o->host, gai_strerror(gai));
        return NULL;
    }
    srv_http *h = calloc(1, sizeof *h);
    if (!h) {
        freeaddrinfo(ai);
        av_set_error(AV_ERR_NOMEM, "out of memory starting the HTTP server");
        return NULL;
    }
    h->state = state;
    pthread_mutex_init(&h->lock, NULL);
    h->seed_state = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    FILE *f = fopen("/dev/urandom", "rb");
    if (f) {
        uint64_t v;
        if (fread(&v, sizeof v, 1, f) == 1) h->seed_state ^= v;
        fclose(f);
    }

    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
                     MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    h->daemon = MHD_start_daemon(
        flags, (uint16_t)o->port, NULL, NULL, on_request, h,
        MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, h,
        MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(o->timeout_s > 0 ? o->timeout_s : 0),
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)1000,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->daemon) {
        av_set_error(AV_ERR_IO, "cannot listen on %s port %d: %s; is the port in use?",
                     o->host, o->port, strerror(errno));
        pthread_mutex_destroy(&h->lock);
        free(h);
        return NULL;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    *bound_port = info ? info->port : o->port;
    return h;
}

void srv_http_quiesce(srv_http *h) {
    MHD_socket fd = MHD_quiesce_daemon(h->daemon);
    if (fd != MHD_INVALID_SOCKET) close(fd);
}

int srv_http_active(srv_http *h) {
    pthread_mutex_lock(&h->lock);
    int n = h->active;
    pthread_mutex_unlock(&h->lock);
    return n;
}

void srv_http_stop(srv_http *h) {
    if (!h) return;
    MHD_stop_daemon(h->daemon);
    pthread_mutex_destroy(&h->lock);
    free(h);
}
