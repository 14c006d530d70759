/*
 * server.c - life cycle of `airavata serve`.
 *
 * Start-up: SIGINT and SIGTERM are blocked before any thread starts, so
 * every thread inherits the mask and only this one receives them, through
 * sigtimedwait. The HTTP listener comes up first and GET /health returns
 * 503 while the model loads. Then the scheduler starts.
 *
 * Shutdown: the first signal stops accepting connections and lets running
 * requests finish for up to shutdown_timeout_s seconds. Then the scheduler
 * ends what is left and the process exits 0. A second signal exits at once
 * with status 128 + the signal number.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/server_internal.h"

/* Waits up to `ms` milliseconds for SIGINT or SIGTERM; returns it, or 0. */
static int wait_signal(const sigset_t *set, int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    int sig = sigtimedwait(set, NULL, &ts);
    return sig > 0 ? sig : 0;
}

static const char *model_basename(const char *dir, char *buf, size_t size) {
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/') len--;
    size_t start = len;
    while (start > 0 && dir[start - 1] != '/') start--;
    size_t n = len - start < size - 1 ? len - start : size - 1;
    memcpy(buf, dir + start, n);
    buf[n] = 0;
    return buf;
}

/* Waits for running requests to finish, up to the shutdown deadline.
 * Returns the second signal if one arrives, else 0. */
static int drain(srv_state *st, srv_http *http, const sigset_t *set) {
    double deadline = srv_now() + st->options->shutdown_timeout_s;
    while (srv_http_active(http) > 0) {
        if (srv_now() >= deadline) {
            av_log(AV_LOG_WARN, "shutdown: %d request(s) still running after %d s; ending them",
                   srv_http_active(http), st->options->shutdown_timeout_s);
            return 0;
        }
        int sig = wait_signal(set, 50);
        if (sig) return sig;
    }
    return 0;
}

int av_server_run(const av_server_options *o) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char name[256];
    srv_scheduler sched;
    memset(&sched, 0, sizeof sched);
    pthread_mutex_init(&sched.lock, NULL);
    pthread_cond_init(&sched.work, NULL);
    pthread_cond_init(&sched.progress, NULL);
    srv_state st = {
        .options = o, .sched = &sched, .metrics = srv_metrics_create(),
        .model_name = o->model_name && *o->model_name
                          ? o->model_name : model_basename(o->model_dir, name, sizeof name),
        .created = (long)time(NULL),
    };
    int status = 1, port = 0;
    av_model *model = NULL;
    srv_http *http = NULL;
    if (!st.metrics) {
        av_log(AV_LOG_ERROR, "serve: out of memory");
        goto done;
    }

    http = srv_http_start(&st, &port);
    if (!http) {
        av_log(AV_LOG_ERROR, "serve: %s", av_last_error());
        goto done;
    }
    av_log(AV_LOG_INFO, "serve: listening on http://%s:%d (model loading)", o->host, port);

    av_load_options lopts = {.n_threads = o->n_threads};
    model = av_model_load(o->model_dir, &lopts);
    if (!model) {
        av_log(AV_LOG_ERROR, "serve: cannot load the model: %s", av_last_error());
        goto done;
    }
    if (srv_scheduler_start(&sched, model, o, st.metrics)) {
        av_log(AV_LOG_ERROR, "serve: cannot create the inference context: %s", av_last_error());
        goto done;
    }
    st.ready = 1;
    av_log(AV_LOG_INFO, "serve: model '%s' ready on http://%s:%d (parallel %d, context %d, "
           "KV pool %d blocks of %d positions, queue %d)", st.model_name, o->host, port,
           sched.n_seq, sched.n_ctx, sched.kv_blocks_total, sched.kv_block_size, o->max_queue);

    int sig = 0;
    while (!sig) sig = wait_signal(&set, 1000);
    av_log(AV_LOG_INFO, "serve: %s received; not accepting new connections, waiting up to "
           "%d s for %d running request(s) (send it again to exit at once)", strsignal(sig),
           o->shutdown_timeout_s, srv_http_active(http));
    st.draining = 1;
    srv_http_quiesce(http);
    int second = drain(&st, http, &set);
    if (second) {
        av_log(AV_LOG_WARN, "serve: second %s; exiting now", strsignal(second));
        _exit(128 + second);
    }
    status = 0;

done:
    /* The scheduler ends remaining jobs first so that no handler thread is
     * left waiting when the HTTP daemon joins them. */
    srv_scheduler_stop(&sched);
    srv_http_stop(http);
    av_model_free(model);
    srv_metrics_free(st.metrics);
    pthread_cond_destroy(&sched.work);
    pthread_cond_destroy(&sched.progress);
    pthread_mutex_destroy(&sched.lock);
    if (status == 0) av_log(AV_LOG_INFO, "serve: stopped");
    return status;
}
