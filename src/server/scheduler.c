/*
 * scheduler.c - continuous batching: one thread owns the av_context.
 *
 * Requests become jobs (one generated sequence each) and wait in a FIFO
 * queue. Every step the scheduler
 *   1. removes cancelled jobs, truncating their sequences so their KV
 *      blocks return to the pool,
 *   2. admits queued jobs into free sequence slots while the pool has room
 *      for their prompt + max_tokens (capped by the context),
 *   3. builds ONE av_batch: the last sampled token of every decoding job,
 *      then chunks of pending prompts up to the n_batch token budget, so a
 *      long prompt is prefilled over several steps without stalling the
 *      running streams,
 *   4. calls av_forward once (the weights are read once for all jobs),
 *   5. samples, decodes and scans for stop strings per job, and publishes
 *      the text that is safe to release.
 * Admission reserves blocks for the worst case, so av_forward never runs
 * out of pool in the middle of a job.
 * NOTE: a request without max_tokens reserves a whole context, so with a
 * --kv-tokens pool smaller than ctx x parallel fewer such requests run at
 * once. Nothing is preempted to make room.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "server/server_internal.h"

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

const char *srv_finish_name(srv_finish f) {
    switch (f) {
    case FINISH_STOP: return "stop";
    case FINISH_LENGTH: return "length";
    case FINISH_CANCELLED: return "cancelled";
    case FINISH_ERROR: return "error";
    default: return "none";
    }
}

/* ---- jobs ---------------------------------------------------------------- */

static void job_free(srv_job *job) {
    av_sampler_free(job->sampler);
    for (int i = 0; i < job->n_stops; i++) free(job->stops[i]);
    free(job->history);
    free(job->out);
    free(job->text);
    free(job);
}

srv_job *srv_job_create(srv_scheduler *s, const int32_t *prompt, int n_prompt, int max_tokens,
                        const av_sampler_params *sampling, const char *const *stops,
                        int n_stops, int ignore_eos) {
    srv_job *job = calloc(1, sizeof *job);
    if (!job) goto nomem;
    job->history = malloc(sizeof(int32_t) * (size_t)(s->n_ctx + 1));
    if (!job->history) goto nomem;
    memcpy(job->history, prompt, sizeof(int32_t) * (size_t)n_prompt);
    job->n_prompt = job->n_history = n_prompt;
    job->max_tokens = max_tokens;
    job->ignore_eos = ignore_eos;
    job->sampler = av_sampler_create(sampling, s->vocab_size);
    if (!job->sampler) {
        job_free(job);
        return NULL;
    }
    for (int i = 0; i < n_stops && i < SRV_MAX_STOPS; i++) {
        job->stops[i] = strdup(stops[i]);
        if (!job->stops[i]) goto nomem;
        job->n_stops = i + 1;
    }
    int positions = n_prompt + max_tokens < s->n_ctx ? n_prompt + max_tokens : s->n_ctx;
    job->kv_blocks = (positions + s->kv_block_size - 1) / s->kv_block_size;
    job->refs = 2;
    job->slot = -1;
    av_decoder_init(&job->decoder, av_model_tokenizer(s->model));
    return job;

nomem:
    if (job) job_free(job);
    av_set_error(AV_ERR_NOMEM, "out of memory creating a generation job");
    return NULL;
}

static void job_unref_locked(srv_job *job) {
    if (--job->refs == 0) job_free(job);
}

void srv_job_release(srv_scheduler *s, srv_job *job) {
    if (!job) return;
    pthread_mutex_lock(&s->lock);
    job_unref_locked(job);
    pthread_mutex_unlock(&s->lock);
}

/* Appends to a growable buffer; returns -1 when memory runs out. */
static int buffer_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t new_cap = *cap ? *cap * 2 : 256;
        while (new_cap < *len + n + 1) new_cap *= 2;
        char *grown = realloc(*buf, new_cap);
        if (!grown) return -1;
        *buf = grown;
        *cap = new_cap;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

/* ---- queue --------------------------------------------------------------- */

srv_submit srv_scheduler_submit(srv_scheduler *s, srv_job **jobs, int n) {
    pthread_mutex_lock(&s->lock);
    srv_submit result = SUBMIT_OK;
    if (s->stopping) result = SUBMIT_STOPPING;
    else if (s->queue_len + n > s->max_queue + (s->n_seq - s->n_running)) result = SUBMIT_QUEUE_FULL;
    for (int i = 0; i < n && result == SUBMIT_OK; i++)
        if (jobs[i]->kv_blocks > s->kv_blocks_total) result = SUBMIT_TOO_LARGE;
    if (result == SUBMIT_OK) {
        double now = srv_now();
        for (int i = 0; i < n; i++) {
            srv_job *job = jobs[i];
            job->t_submit = now;
            job->state = JOB_QUEUED;
            job->next = NULL;
            if (s->queue_tail) s->queue_tail->next = job;
            else s->queue_head = job;
            s->queue_tail = job;
            s->queue_len++;
        }
        pthread_cond_signal(&s->work);
    }
    pthread_mutex_unlock(&s->lock);
    return result;
}

static void queue_remove_locked(srv_scheduler *s, srv_job *job) {
    srv_job *prev = NULL;
    for (srv_job *j = s->queue_head; j; prev = j, j = j->next) {
        if (j != job) continue;
        if (prev) prev->next = j->next;
        else s->queue_head = j->next;
        if (s->queue_tail == j) s->queue_tail = prev;
        s->queue_len--;
        return;
    }
}

/* Marks a job done and drops the scheduler's reference (lock held). */
static void job_finish_locked(srv_scheduler *s, srv_job *job, srv_finish finish) {
    job->state = JOB_DONE;
    job->finish = finish;
    job->t_end = srv_now();
    if (finish == FINISH_CANCELLED) srv_metrics_cancelled(s->metrics);
    pthread_cond_broadcast(&s->progress);
    job_unref_locked(job);
}

void srv_job_cancel_locked(srv_scheduler *s, srv_job *job) {
    if (job->state == JOB_QUEUED) {
        queue_remove_locked(s, job);
        job_finish_locked(s, job, FINISH_CANCELLED);
    } else if (job->state == JOB_RUNNING) {
        job->cancel_requested = 1;
        pthread_cond_signal(&s->work);
    }
}

/* Frees a running job's slot and KV blocks (lock held). */
static void slot_release_locked(srv_scheduler *s, srv_job *job, srv_finish finish) {
    av_context_seq_truncate(s->ctx, job->slot, 0);
    s->slots[job->slot] = NULL;
    s->n_running--;
    s->kv_blocks_reserved -= job->kv_blocks;
    s->kv_blocks_free = av_context_kv_blocks_free(s->ctx);
    job_finish_locked(s, job, finish);
}

static void admit_locked(srv_scheduler *s) {
    while (s->queue_head && s->n_running < s->n_seq &&
           s->kv_blocks_reserved + s->queue_head->kv_blocks <= s->kv_blocks_total) {
        srv_job *job = s->queue_head;
        s->queue_head = job->next;
        if (!s->queue_head) s->queue_tail = NULL;
        s->queue_len--;
        int slot = 0;
        while (s->slots[slot]) slot++;
        s->slots[slot] = job;
        job->slot = slot;
        job->state = JOB_RUNNING;
        s->n_running++;
        s->kv_blocks_reserved += job->kv_blocks;
    }
}

/* ---- one step ------------------------------------------------------------ */

/* Fills the batch buffers; returns the number of tokens. Decoding jobs come
 * first so that a prompt never delays the next token of a running stream. */
static int build_batch(srv_scheduler *s, int *n_logits, int *n_decode, int *n_sequences) {
    int n = 0, n_out = 0;
    *n_sequences = 0;
    for (int i = 0; i < s->n_seq; i++) {
        srv_job *job = s->slots[i];
        if (!job || job->n_fed < job->n_prompt) continue;
        s->b_token[n] = job->history[job->n_history - 1];
        s->b_pos[n] = job->n_history - 1;
        s->b_seq[n] = i;
        s->b_logits[n] = 1;
        s->b_owner[n_out++] = job;
        n++;
        (*n_sequences)++;
    }
    *n_decode = n;
    for (int i = 0; i < s->n_seq && n < s->n_batch; i++) {
        srv_job *job = s->slots[i];
        if (!job || job->n_fed >= job->n_prompt) continue;
        int chunk = job->n_prompt - job->n_fed;
        if (chunk > s->n_batch - n) chunk = s->n_batch - n;
        for (int k = 0; k < chunk; k++) {
            int p = job->n_fed + k;
            s->b_token[n] = job->history[p];
            s->b_pos[n] = p;
            s->b_seq[n] = i;
            s->b_logits[n] = p == job->n_prompt - 1;
            if (s->b_logits[n]) s->b_owner[n_out++] = job;
            n++;
        }
        job->n_fed += chunk;
        (*n_sequences)++;
    }
    *n_logits = n_out;
    return n;
}

/* Samples the next token of a job from its logits row and advances its
 * text. Returns FINISH_NONE while the job goes on. */
static srv_finish sample_job(srv_scheduler *s, srv_job *job, float *logits) {
    const av_tokenizer *tok = av_model_tokenizer(s->model);
    int32_t id = av_sampler_sample(job->sampler, logits, job->history, job->n_history);
    job->n_generated++;
    char piece[256];
    srv_finish finish = FINISH_NONE;

    if (id == av_tokenizer_eos(tok) && !job->ignore_eos) {
        finish = FINISH_STOP;
    } else {
        job->history[job->n_history++] = id;
        int n = av_decoder_push(&job->decoder, id, piece, sizeof piece);
        if (n > 0 && buffer_append(&job->text, &job->text_len, &job->text_cap, piece, (size_t)n))
            return FINISH_ERROR;
    }
    if (finish == FINISH_NONE) {
        size_t safe;
        long hit = av_stop_scan(job->text ? job->text : "", job->text_len,
                               (const char *const *)job->stops, job->n_stops, &safe);
        if (hit >= 0) {
            job->text_len = (size_t)hit;
            job->text_released = (size_t)hit;
            return FINISH_STOP;
        }
        job->text_released = safe;
        if (job->n_generated >= job->max_tokens || job->n_history >= s->n_ctx)
            finish = FINISH_LENGTH;
    }
    if (finish != FINISH_NONE) {
        /* The stream ended: release held bytes and the held-back tail. */
        int n = av_decoder_flush(&job->decoder, piece, sizeof piece);
        if (n > 0 && buffer_append(&job->text, &job->text_len, &job->text_cap, piece, (size_t)n))
            return FINISH_ERROR;
        size_t safe;
        long hit = av_stop_scan(job->text ? job->text : "", job->text_len,
                               (const char *const *)job->stops, job->n_stops, &safe);
        if (hit >= 0) {
            job->text_len = (size_t)hit;
            finish = FINISH_STOP;
        }
        job->text_released = job->text_len;
    }
    return finish;
}

/* Copies newly released text to the job's shared output (lock held). */
static int publish_locked(srv_job *job) {
    if (job->text_released <= job->out_len) return 0;
    return buffer_append(&job->out, &job->out_len, &job->out_cap, job->text + job->out_len,
                         job->text_released - job->out_len);
}

static void fail_batch_locked(srv_scheduler *s, const char *message) {
    for (int i = 0; i < s->n_seq; i++) {
        srv_job *job = s->slots[i];
        if (!job) continue;
        snprintf(job->error, sizeof job->error, "%s", message);
        slot_release_locked(s, job, FINISH_ERROR);
    }
}

static void run_step(srv_scheduler *s) {
    int n_logits = 0, n_decode = 0, n_sequences = 0;
    int n_tokens = build_batch(s, &n_logits, &n_decode, &n_sequences);
    if (n_tokens == 0) return;

    av_batch batch = {n_tokens, s->b_token, s->b_pos, s->b_seq, s->b_logits};
    av_status st = av_forward(s->ctx, &batch, s->logits);
    if (st) {
        char message[256];
        snprintf(message, sizeof message, "forward pass failed: %s", av_last_error());
        av_log(AV_LOG_ERROR, "scheduler: %s (batch of %d tokens)", message, n_tokens);
        pthread_mutex_lock(&s->lock);
        fail_batch_locked(s, message);
        pthread_mutex_unlock(&s->lock);
        return;
    }

    /* Sampling touches only scheduler-owned fields, so it runs unlocked. */
    srv_finish *finish = s->b_finish;
    double now = srv_now();
    for (int i = 0; i < n_logits; i++)
        finish[i] = sample_job(s, s->b_owner[i], s->logits + (size_t)i * s->vocab_size);

    /* Counted before any job is published or finished, so a client that
     * has read its last token finds it in /metrics. */
    srv_metrics_tokens(s->metrics, n_tokens - n_decode, n_logits);
    srv_metrics_step(s->metrics, n_sequences, n_tokens);
    pthread_mutex_lock(&s->lock);
    for (int i = 0; i < n_logits; i++) {
        srv_job *job = s->b_owner[i];
        if (job->n_generated == 1) {
            job->t_first_token = now;
            srv_metrics_ttft(s->metrics, now - job->t_submit);
        } else {
            srv_metrics_token_latency(s->metrics, now - job->t_last_token);
        }
        job->t_last_token = now;
        if (publish_locked(job)) {
            snprintf(job->error, sizeof job->error, "out of memory storing generated text");
            finish[i] = FINISH_ERROR;
        }
        if (finish[i] != FINISH_NONE) slot_release_locked(s, job, finish[i]);
    }
    s->kv_blocks_free = av_context_kv_blocks_free(s->ctx);
    pthread_cond_broadcast(&s->progress);
    pthread_mutex_unlock(&s->lock);
}

static void *scheduler_main(void *arg) {
    srv_scheduler *s = arg;
    pthread_mutex_lock(&s->lock);
    while (!s->stopping) {
        for (int i = 0; i < s->n_seq; i++)
            if (s->slots[i] && s->slots[i]->cancel_requested)
                slot_release_locked(s, s->slots[i], FINISH_CANCELLED);
        admit_locked(s);
        if (s->n_running == 0) {
            pthread_cond_wait(&s->work, &s->lock);
            continue;
        }
        pthread_mutex_unlock(&s->lock);
        run_step(s);
        pthread_mutex_lock(&s->lock);
    }
    /* Shutting down: end everything still queued or running. */
    for (int i = 0; i < s->n_seq; i++) {
        srv_job *job = s->slots[i];
        if (!job) continue;
        snprintf(job->error, sizeof job->error, "the server is shutting down");
        slot_release_locked(s, job, FINISH_ERROR);
    }
    while (s->queue_head) {
        srv_job *job = s->queue_head;
        s->queue_head = job->next;
        s->queue_len--;
        snprintf(job->error, sizeof job->error, "the server is shutting down");
        job_finish_locked(s, job, FINISH_ERROR);
    }
    s->queue_tail = NULL;
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ---- life cycle ---------------------------------------------------------- */

av_status srv_scheduler_start(srv_scheduler *s, av_model *model, const av_server_options *o,
                              srv_metrics *metrics) {
    av_context_options copts = {
        .n_ctx = o->n_ctx, .n_seq = o->n_parallel, .n_batch = o->n_batch,
        .n_threads = o->n_threads, .kv_pool_tokens = o->kv_tokens,
    };
    s->model = model;
    s->metrics = metrics;
    s->ctx = av_context_create(model, &copts);
    if (!s->ctx) return AV_ERR_INVALID;
    s->n_seq = av_context_n_seq(s->ctx);
    s->n_ctx = av_context_n_ctx(s->ctx);
    s->n_batch = av_context_n_batch(s->ctx);
    s->vocab_size = av_model_config(model)->vocab_size;
    s->kv_block_size = av_context_kv_block_size(s->ctx);
    s->kv_blocks_total = av_context_kv_blocks_total(s->ctx);
    s->kv_blocks_free = av_context_kv_blocks_free(s->ctx);
    s->max_queue = o->max_queue;
    if (s->n_batch < s->n_seq)
        return av_set_error(AV_ERR_INVALID, "the batch size %d is smaller than --parallel %d; "
                            "every running sequence needs one token per step", s->n_batch,
                            s->n_seq);

    size_t nb = (size_t)s->n_batch;
    s->slots = calloc((size_t)s->n_seq, sizeof *s->slots);
    s->b_token = malloc(sizeof(int32_t) * nb);
    s->b_pos = malloc(sizeof(int32_t) * nb);
    s->b_seq = malloc(sizeof(int32_t) * nb);
    s->b_logits = malloc(nb);
    s->b_owner = malloc(sizeof(srv_job *) * nb);
    s->b_finish = malloc(sizeof(srv_finish) * nb);
    s->logits = malloc(sizeof(float) * (size_t)s->n_seq * (size_t)s->vocab_size);
    if (!s->slots || !s->b_token || !s->b_pos || !s->b_seq || !s->b_logits || !s->b_owner ||
        !s->b_finish || !s->logits)
        return av_set_error(AV_ERR_NOMEM, "out of memory allocating the scheduler's batch");
    if (pthread_create(&s->thread, NULL, scheduler_main, s))
        return av_set_error(AV_ERR_NOMEM, "cannot start the scheduler thread");
    s->thread_started = 1;
    return AV_OK;
}

void srv_scheduler_stop(srv_scheduler *s) {
    if (s->thread_started) {
        pthread_mutex_lock(&s->lock);
        s->stopping = 1;
        pthread_cond_signal(&s->work);
        pthread_mutex_unlock(&s->lock);
        pthread_join(s->thread, NULL);
        s->thread_started = 0;
    }
    av_context_free(s->ctx);
    s->ctx = NULL;
    free(s->slots);
    free(s->b_token);
    free(s->b_pos);
    free(s->b_seq);
    free(s->b_logits);
    free(s->b_owner);
    free(s->b_finish);
    free(s->logits);
    s->slots = NULL;
    s->b_token = s->b_pos = s->b_seq = NULL;
    s->b_logits = NULL;
    s->b_owner = NULL;
    s->b_finish = NULL;
    s->logits = NULL;
}

void srv_scheduler_gauges(srv_scheduler *s, srv_gauges *g) {
    pthread_mutex_lock(&s->lock);
    g->queue_depth = s->queue_len;
    g->active_sequences = s->n_running;
    g->kv_blocks_total = s->kv_blocks_total;
    g->kv_blocks_used = s->kv_blocks_total - s->kv_blocks_free;
    g->kv_block_size = s->kv_block_size;
    pthread_mutex_unlock(&s->lock);
}
