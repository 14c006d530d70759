/*
 * threadpool.c - a pool of persistent worker threads for the kernels.
 *
 * The forward pass runs about ten parallel steps per layer per token, so a
 * run must cost microseconds, not a thread creation. Workers stay alive
 * between runs. A run publishes (fn, arg) and increments `generation`.
 * Workers that see the new generation call fn and decrement `pending`. The
 * caller runs its own share as thread 0 and then waits for `pending` to
 * reach 0.
 * Both waits spin for a short while (the next run or the last worker
 * usually comes within microseconds) and then block on a condition
 * variable, so idle workers do not burn a core.
 *
 * Memory ordering: fn and arg are plain fields written before the release
 * increment of `generation` and read after an acquire load of it; the
 * caller writes them again only after an acquire load has seen `pending`
 * reach 0, so every access is ordered and the pool is free of data races.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#include "kernels/kernels.h"

#define AV_MAX_THREADS 1024
/* Spin iterations before blocking. One pause is tens of cycles on recent
 * x86 cores, so this is tens of microseconds. Every YIELD_EVERY iterations
 * the spinning thread yields its core, because with more threads than free
 * cores the thread it waits for may need that core to run at all. */
#define SPIN_ITERATIONS 4096
#define YIELD_EVERY 256

typedef struct {
    av_threadpool *pool;
    int ith;
} worker_arg;

struct av_threadpool {
    int n_threads;
    pthread_t *threads;       /* n_threads - 1 workers */
    worker_arg *args;
    int n_started;            /* workers created successfully */

    pthread_mutex_t lock;
    pthread_cond_t start_cv;  /* signals a new generation or stop */
    pthread_cond_t done_cv;   /* signals pending reaching 0 */

    atomic_uint generation;   /* incremented once per run */
    atomic_int pending;       /* workers that have not finished this run */
    atomic_int stop;

    av_parallel_fn fn;
    void *arg;
};

static void spin_pause(int iteration) {
    if (iteration % YIELD_EVERY == YIELD_EVERY - 1) {
        sched_yield();
    } else {
        cpu_relax();
    }
}

/* Waits until `generation` differs from `seen` or the pool stops, and
 * returns the new generation. */
static unsigned wait_for_run(av_threadpool *pool, unsigned seen) {
    for (int i = 0; i < SPIN_ITERATIONS; i++) {
        unsigned g = atomic_load_explicit(&pool->generation, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&pool->stop, memory_order_acquire)) return g;
        spin_pause(i);
    }
    pthread_mutex_lock(&pool->lock);
    unsigned g;
    while ((g = atomic_load_explicit(&pool->generation, memory_order_acquire)) == seen &&
           !atomic_load_explicit(&pool->stop, memory_order_acquire)) {
        pthread_cond_wait(&pool->start_cv, &pool->lock);
    }
    pthread_mutex_unlock(&pool->lock);
    return g;
}

static void *worker_main(void *p) {
    worker_arg *wa = p;
    av_threadpool *pool = wa->pool;
    unsigned seen = 0; /* generation 0 is the state at creation */
    for (;;) {
        seen = wait_for_run(pool, seen);
        if (atomic_load_explicit(&pool->stop, memory_order_acquire)) break;

        pool->fn(pool->arg, wa->ith, pool->n_threads);

        if (atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_acq_rel) == 1) {
            /* Taking the lock orders this signal after the caller's check of
             * `pending` under the same lock, so the wake-up cannot be lost. */
            pthread_mutex_lock(&pool->lock);
            pthread_cond_signal(&pool->done_cv);
            pthread_mutex_unlock(&pool->lock);
        }
    }
    return NULL;
}

av_threadpool *av_threadpool_create(int n_threads) {
    if (n_threads < 1 || n_threads > AV_MAX_THREADS) {
        av_set_error(AV_ERR_INVALID, "thread count %d is out of range 1..%d", n_threads,
                     AV_MAX_THREADS);
        return NULL;
    }
    av_threadpool *pool = calloc(1, sizeof *pool);
    if (!pool) {
        av_set_error(AV_ERR_NOMEM, "out of memory creating a pool of %d threads", n_threads);
        return NULL;
    }
    pool->n_threads = n_threads;
    pthread_mutex_init(&pool->lock, NULL);
    pthread_cond_init(&pool->start_cv, NULL);
    pthread_cond_init(&pool->done_cv, NULL);
    atomic_init(&pool->generation, 0);
    atomic_init(&pool->pending, 0);
    atomic_init(&pool->stop, 0);
    if (n_threads == 1) return pool;

    pool->threads = calloc((size_t)n_threads - 1, sizeof *pool->threads);
    pool->args = calloc((size_t)n_threads - 1, sizeof *pool->args);
    if (!pool->threads || !pool->args) {
        av_threadpool_free(pool);
        av_set_error(AV_ERR_NOMEM, "out of memory creating a pool of %d threads", n_threads);
        return NULL;
    }
    for (int i = 0; i < n_threads - 1; i++) {
        pool->args[i].pool = pool;
        pool->args[i].ith = i + 1;
        int rc = pthread_create(&pool->threads[i], NULL, worker_main, &pool->args[i]);
        if (rc != 0) {
            av_threadpool_free(pool);
            av_set_error(AV_ERR_NOMEM, "pthread_create failed for worker %d of %d: %s",
                         i + 1, n_threads, strerror(rc));
            return NULL;
        }
        pool->n_started++;
    }
    return pool;
}

void av_threadpool_free(av_threadpool *pool) {
    if (!pool) return;
    pthread_mutex_lock(&pool->lock);
    atomic_store_explicit(&pool->stop, 1, memory_order_release);
    pthread_cond_broadcast(&pool->start_cv);
    pthread_mutex_unlock(&pool->lock);
    for (int i = 0; i < pool->n_started; i++) pthread_join(pool->threads[i], NULL);
    pthread_cond_destroy(&pool->start_cv);
    pthread_cond_destroy(&pool->done_cv);
    pthread_mutex_destroy(&pool->lock);
    free(pool->threads);
    free(pool->args);
    free(pool);
}

int av_threadpool_size(const av_threadpool *pool) { return pool ? pool->n_threads : 1; }

void av_threadpool_run(av_threadpool *pool, av_parallel_fn fn, void *arg) {
    if (!pool || pool->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    atomic_store_explicit(&pool->pending, pool->n_threads - 1, memory_order_relaxed);

    /* The increment happens under the lock so that a worker that has checked
     * the generation under the lock and is about to wait cannot miss it. */
    pthread_mutex_lock(&pool->lock);
    atomic_fetch_add_explicit(&pool->generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool->start_cv);
    pthread_mutex_unlock(&pool->lock);

    fn(arg, 0, pool->n_threads);

    for (int i = 0; i < SPIN_ITERATIONS; i++) {
        if (atomic_load_explicit(&pool->pending, memory_order_acquire) == 0) return;
        spin_pause(i);
    }
    pthread_mutex_lock(&pool->lock);
    while (atomic_load_explicit(&pool->pending, memory_order_acquire) != 0) {
        pthread_cond_wait(&pool->done_cv, &pool->lock);
    }
    pthread_mutex_unlock(&pool->lock);
}
