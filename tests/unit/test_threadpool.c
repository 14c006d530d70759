/* Thread pool: every thread index runs exactly once per run, runs wait for
 * all threads, and pools of one thread run on the caller. */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "check.h"
#include "kernels/kernels.h"

#define MAX_POOL 8

typedef struct {
    atomic_int calls[MAX_POOL];
    atomic_int bad_nth;
    atomic_int bad_ith;
    int expected_nth;
    int slow_thread; /* this thread sleeps before counting, -1 for none */
    pthread_t caller;
    atomic_int caller_ith; /* ith seen on the calling thread, -1 if none */
} run_record;

static void record_call(void *arg, int ith, int nth) {
    run_record *rec = arg;
    if (nth != rec->expected_nth) atomic_fetch_add(&rec->bad_nth, 1);
    if (ith < 0 || ith >= MAX_POOL || ith >= nth) {
        atomic_fetch_add(&rec->bad_ith, 1);
        return;
    }
    if (ith == rec->slow_thread) {
        struct timespec ts = {0, 2000000}; /* 2 ms */
        nanosleep(&ts, NULL);
    }
    if (pthread_equal(pthread_self(), rec->caller)) atomic_store(&rec->caller_ith, ith);
    atomic_fetch_add(&rec->calls[ith], 1);
}

static void reset_record(run_record *rec, int nth, int slow_thread) {
    for (int i = 0; i < MAX_POOL; i++) atomic_store(&rec->calls[i], 0);
    atomic_store(&rec->bad_nth, 0);
    atomic_store(&rec->bad_ith, 0);
    atomic_store(&rec->caller_ith, -1);
    rec->expected_nth = nth;
    rec->slow_thread = slow_thread;
    rec->caller = pthread_self();
}

/* Runs `runs` times on a pool of n threads and returns the number of runs in
 * which some ith was not called exactly once. */
static int count_bad_runs(int n, int runs, int slow_every) {
    av_threadpool *pool = av_threadpool_create(n);
    CHECK(pool != NULL);
    if (!pool) return runs;
    CHECK(av_threadpool_size(pool) == n);
    run_record rec;
    int bad = 0;
    for (int r = 0; r < runs; r++) {
        int slow = slow_every && r % slow_every == 0 ? r % n : -1;
        reset_record(&rec, n, slow);
        av_threadpool_run(pool, record_call, &rec);
        int ok = atomic_load(&rec.bad_nth) == 0 && atomic_load(&rec.bad_ith) == 0 &&
                 atomic_load(&rec.caller_ith) == 0;
        for (int i = 0; i < n; i++) ok = ok && atomic_load(&rec.calls[i]) == 1;
        if (!ok) bad++;
    }
    av_threadpool_free(pool);
    return bad;
}

static void test_pool_of_one_runs_on_caller(void) {
    int bad = count_bad_runs(1, 100, 0);
    CHECK_MSG(bad == 0, "%d of 100 runs miscounted", bad);
}

static void test_pool_of_two_many_runs(void) {
    int bad = count_bad_runs(2, 20000, 0);
    CHECK_MSG(bad == 0, "%d of 20000 runs miscounted", bad);
}

static void test_pool_more_threads_than_cores(void) {
    int bad = count_bad_runs(MAX_POOL, 2000, 0);
    CHECK_MSG(bad == 0, "%d of 2000 runs miscounted", bad);
}

/* A slow thread (the caller on some runs, a worker on others) must still be
 * waited for: its count is checked right after the run returns. */
static void test_run_waits_for_slow_thread(void) {
    int bad = count_bad_runs(3, 60, 1);
    CHECK_MSG(bad == 0, "%d of 60 runs returned before a slow thread finished", bad);
}

/* Gaps longer than the spin phase make workers block on the condition
 * variable; the next run must still wake them. */
static void test_run_after_idle_gap(void) {
    av_threadpool *pool = av_threadpool_create(2);
    CHECK(pool != NULL);
    if (!pool) return;
    run_record rec;
    for (int r = 0; r < 5; r++) {
        struct timespec ts = {0, 20000000}; /* 20 ms */
        nanosleep(&ts, NULL);
        reset_record(&rec, 2, -1);
        av_threadpool_run(pool, record_call, &rec);
        CHECK(atomic_load(&rec.calls[0]) == 1);
        CHECK(atomic_load(&rec.calls[1]) == 1);
    }
    av_threadpool_free(pool);
}

static void test_null_pool_runs_on_caller(void) {
    run_record rec;
    reset_record(&rec, 1, -1);
    av_threadpool_run(NULL, record_call, &rec);
    CHECK(atomic_load(&rec.calls[0]) == 1);
    CHECK(atomic_load(&rec.caller_ith) == 0);
    CHECK(av_threadpool_size(NULL) == 1);
}

static void test_invalid_thread_count(void) {
    CHECK(av_threadpool_create(0) == NULL);
    CHECK(strstr(av_last_error(), "thread count 0") != NULL);
    CHECK(av_threadpool_create(-3) == NULL);
    av_threadpool_free(NULL);
}

static void test_create_free_without_runs(void) {
    for (int i = 0; i < 20; i++) {
        av_threadpool *pool = av_threadpool_create(1 + i % 4);
        CHECK(pool != NULL);
        av_threadpool_free(pool);
    }
}

int main(void) {
    RUN(test_pool_of_one_runs_on_caller);
    RUN(test_pool_of_two_many_runs);
    RUN(test_pool_more_threads_than_cores);
    RUN(test_run_waits_for_slow_thread);
    RUN(test_run_after_idle_gap);
    RUN(test_null_pool_runs_on_caller);
    RUN(test_invalid_thread_count);
    RUN(test_create_free_without_runs);
    return CHECK_DONE();
}
