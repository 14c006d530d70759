/*
 * server.h - `airavata serve`: the HTTP server's entry point and options.
 *
 * The command-line front end (src/cli/serve.c) parses flags into
 * av_server_options and calls av_server_run(), which owns everything else:
 * the HTTP listener, the model, the scheduler thread and shutdown.
 */
#ifndef AV_SERVER_H
#define AV_SERVER_H

#include <stddef.h>

typedef struct {
    const char *model_dir;
    const char *model_name;     /* id in /v1/models; NULL: basename of model_dir */
    const char *host;           /* address to bind, "127.0.0.1" by default */
    int port;                   /* 0 picks a free port (logged at start) */
    int n_parallel;             /* sequences decoded together (av_context n_seq) */
    int n_ctx;                  /* positions per sequence; 0: the engine default */
    int n_threads;              /* 0: one per online CPU */
    int n_batch;                /* max tokens in one forward step */
    int kv_tokens;              /* KV pool positions; 0: n_ctx * n_parallel */
    int max_queue;              /* requests waiting for a slot before 503 */
    int timeout_s;              /* idle and request-receive timeout */
    int shutdown_timeout_s;     /* how long SIGTERM waits for running requests */
    size_t max_body_bytes;      /* larger request bodies get 413 */
    const char *api_key;        /* NULL or "": no authentication */
    int log_prompts;            /* 1: log prompt text at info level */
} av_server_options;

/* Runs the server until SIGINT or SIGTERM; returns the process exit code
 * (0 after a graceful shutdown, 1 when start-up fails). */
int av_server_run(const av_server_options *options);

#endif
