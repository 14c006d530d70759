/*
 * bench.c - `airavata bench -m DIR ...`: runs the measurement of each model
 * in a worker process and prints the report.
 *
 * Each repetition of each model is one worker: this program re-executed as
 * `airavata bench --worker`, which loads the model, measures (bench_model.c)
 * and writes one JSON line to a pipe. The parent reads the worker's peak
 * resident memory from wait4(), so models never share an address space
 * and one model's pages cannot inflate another's number. Repetitions go
 * round-robin over the models (A B A B ...), so a burst of noise on the
 * machine hits every model alike instead of one model's whole series.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

enum { METRIC_LOAD, METRIC_PROMPT, METRIC_DECODE, METRIC_TTFT, METRIC_LAT_EN, METRIC_RPS_EN,
       METRIC_LAT_HI, METRIC_RPS_HI, METRIC_COUNT };

/* JSON key of the worker line, report column and unit scale per metric. */
static const struct {
    const char *key, *column;
    double scale;
} metric_info[METRIC_COUNT] = {
    {"load_s", "load (s)", 1},
    {"prompt_tps", "prompt tok/s", 1},
    {"decode_tps", "decode tok/s", 1},
    {"ttft_s", "TTFT (ms)", 1e3},
    {"latency_en_s", "latency en (ms)", 1e3},
    {"rps_en", "req/s en", 1},
    {"latency_hi_s", "latency hi (ms)", 1e3},
    {"rps_hi", "req/s hi", 1},
};

typedef struct {
    const char *dir;
    int64_t size_bytes;
    int64_t peak_rss_bytes;  /* max over its workers */
    double *values[METRIC_COUNT]; /* [repetitions], in the units of the JSON line */
    int n_done;
    int failed;
} model_result;

/* Runs one worker for `dir`; fills `sample_json` with its line. */
static av_status run_worker(const av_bench_options *o, const char *dir, char *line,
                            size_t line_size, int64_t *peak_rss) {
    char prompt_tokens[16], new_tokens[16], threads[16], concurrency[16];
    snprintf(prompt_tokens, sizeof prompt_tokens, "%d", o->prompt_tokens);
    snprintf(new_tokens, sizeof new_tokens, "%d", o->new_tokens);
    snprintf(threads, sizeof threads, "%d", o->n_threads);
    snprintf(concurrency, sizeof concurrency, "%d", o->concurrency);
    char *args[] = {"airavata", "bench", "--worker", "-m", (char *)dir, "--prompt-tokens",
                    prompt_tokens, "--new-tokens", new_tokens, "--threads", threads,
                    "--concurrency", concurrency, NULL};

    int fds[2];
    if (pipe(fds) != 0)
        return av_set_error(AV_ERR_IO, "pipe() failed: %s", strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return av_set_error(AV_ERR_IO, "fork() failed: %s", strerror(errno));
    }
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        execv(o->self_exe, args);
        fprintf(stderr, "airavata bench: cannot run %s: %s\n", o->self_exe, strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    ssize_t n;
    while ((n = read(fds[0], line + len, line_size - 1 - len)) > 0) {
        len += (size_t)n;
        if (len == line_size - 1) break;
    }
    line[len] = 0;
    close(fds[0]);

    int status = 0;
    struct rusage usage;
    memset(&usage, 0, sizeof usage);
    while (wait4(pid, &status, 0, &usage) < 0 && errno == EINTR) {}
    *peak_rss = (int64_t)usage.ru_maxrss * 1024; /* Linux reports KiB */
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return av_set_error(AV_ERR_IO, "the measurement of %s failed (worker %s %d); its "
                            "error is printed above", dir,
                            WIFEXITED(status) ? "exit code" : "signal",
                            WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
    return AV_OK;
}

/* Stores the worker's JSON line as repetition `rep` of the model. */
static av_status record_sample(model_result *m, const char *line) {
    json_error_t jerr;
    json_t *root = json_loads(line, 0, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return av_set_error(AV_ERR_FORMAT, "the worker for %s sent invalid output: %s", m->dir,
                            jerr.text);
    }
    for (int k = 0; k < METRIC_COUNT; k++) {
        json_t *v = json_object_get(root, metric_info[k].key);
        m->values[k][m->n_done] = json_is_number(v) ? json_number_value(v) : NAN;
    }
    json_decref(root);
    m->n_done++;
    return AV_OK;
}

/* Draws "[#####.....] 3/6 model" on a terminal; nothing otherwise. */
static void progress(int done, int total, const char *what) {
    if (!isatty(STDERR_FILENO)) return;
    enum { WIDTH = 30 };
    int filled = total > 0 ? done * WIDTH / total : WIDTH;
    fprintf(stderr, "\r[");
    for (int i = 0; i < WIDTH; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %d/%d %-40.40s", done, total, what);
    if (done == total) fprintf(stderr, "\r%*s\r", WIDTH + 60, "");
    fflush(stderr);
}

static void summarize_metric(const model_result *m, int k, av_summary *s) {
    double scaled[AV_BENCH_MAX_REPS];
    for (int i = 0; i < m->n_done; i++) scaled[i] = m->values[k][i] * metric_info[k].scale;
    av_summarize(scaled, m->n_done, s);
}

static void print_markdown(const av_bench_options *o, const model_result *models) {
    printf("Benchmark: %d repetitions, concurrency %d, %d-token synthetic prompt, %d new "
           "tokens per request; values are median [min, max].\n\n", o->repetitions,
           o->concurrency, o->prompt_tokens, o->new_tokens);
    printf("| model | size (MiB) | peak RSS (MiB) |");
    for (int k = 0; k < METRIC_COUNT; k++) printf(" %s |", metric_info[k].column);
    printf("\n|---|---:|---:|");
    for (int k = 0; k < METRIC_COUNT; k++) printf("---:|");
    printf("\n");
    for (int i = 0; i < o->n_models; i++) {
        const model_result *m = &models[i];
        printf("| %s | %.2f | ", m->dir, m->size_bytes / 1048576.0);
        if (m->n_done) printf("%.1f |", m->peak_rss_bytes / 1048576.0);
        else printf("failed |");
        for (int k = 0; k < METRIC_COUNT; k++) {
            av_summary s;
            summarize_metric(m, k, &s);
            if (m->n_done && isfinite(s.median))
                printf(" %.4g [%.4g, %.4g] |", s.median, s.min, s.max);
            else printf(" - |");
        }
        printf("\n");
    }
    printf("\nPrompts: \"%s\" (en), \"%s\" (hi). Requests/s counts %d requests decoded "
           "together.\n", AV_BENCH_PROMPT_EN, AV_BENCH_PROMPT_HI, o->concurrency);
}

static json_t *summary_json(const av_summary *s, const double *values, int n, double scale) {
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, isfinite(values[i]) ? json_real(values[i] * scale) : json_null());
    json_t *obj = json_object();
    json_object_set_new(obj, "median", isfinite(s->median) ? json_real(s->median) : json_null());
    json_object_set_new(obj, "min", isfinite(s->min) ? json_real(s->min) : json_null());
    json_object_set_new(obj, "max", isfinite(s->max) ? json_real(s->max) : json_null());
    json_object_set_new(obj, "p10", isfinite(s->p10) ? json_real(s->p10) : json_null());
    json_object_set_new(obj, "p90", isfinite(s->p90) ? json_real(s->p90) : json_null());
    json_object_set_new(obj, "values", arr);
    return obj;
}

/* JSON key with the report's unit: "ttft_ms" for ttft_s scaled by 1e3. */
static void metric_key(int k, char *buf, size_t size) {
    const char *key = metric_info[k].key;
    size_t n = strlen(key);
    if (metric_info[k].scale == 1e3 && n > 2 && !strcmp(key + n - 2, "_s"))
        snprintf(buf, size, "%.*s_ms", (int)(n - 2), key);
    else snprintf(buf, size, "%s", key);
}

static void print_json(const av_bench_options *o, const model_result *models) {
    json_t *root = json_pack("{s:i, s:i, s:i, s:i, s:s, s:s}", "repetitions", o->repetitions,
                             "concurrency", o->concurrency, "prompt_tokens", o->prompt_tokens,
                             "new_tokens", o->new_tokens, "prompt_en", AV_BENCH_PROMPT_EN,
                             "prompt_hi", AV_BENCH_PROMPT_HI);
    json_t *list = json_array();
    for (int i = 0; i < o->n_models; i++) {
        const model_result *m = &models[i];
        json_t *entry = json_pack("{s:s, s:I, s:b, s:i}", "model", m->dir, "size_bytes",
                                  (json_int_t)m->size_bytes, "ok", !m->failed, "repetitions_done",
                                  m->n_done);
        json_object_set_new(entry, "peak_rss_bytes",
                            m->n_done ? json_integer(m->peak_rss_bytes) : json_null());
        for (int k = 0; k < METRIC_COUNT; k++) {
            av_summary s;
            char key[64];
            summarize_metric(m, k, &s);
            metric_key(k, key, sizeof key);
            json_object_set_new(entry, key, summary_json(&s, m->values[k], m->n_done,
                                                         metric_info[k].scale));
        }
        json_array_append_new(list, entry);
    }
    json_object_set_new(root, "models", list);
    json_dumpf(root, stdout, JSON_INDENT(2) | JSON_ENSURE_ASCII);
    printf("\n");
    json_decref(root);
}

static void print_csv(const av_bench_options *o, const model_result *models) {
    printf("model,size_bytes,peak_rss_bytes,repetitions_done");
    for (int k = 0; k < METRIC_COUNT; k++) {
        char key[64];
        metric_key(k, key, sizeof key);
        printf(",%s_median,%s_min,%s_max", key, key, key);
    }
    printf("\n");
    for (int i = 0; i < o->n_models; i++) {
        const model_result *m = &models[i];
        /* A directory name with a comma or quote is quoted as RFC 4180 says. */
        putchar('"');
        for (const char *c = m->dir; *c; c++) {
            if (*c == '"') putchar('"');
            putchar(*c);
        }
        printf("\",%lld,", (long long)m->size_bytes);
        if (m->n_done) printf("%lld", (long long)m->peak_rss_bytes);
        printf(",%d", m->n_done);
        for (int k = 0; k < METRIC_COUNT; k++) {
            av_summary s;
            summarize_metric(m, k, &s);
            if (m->n_done && isfinite(s.median)) printf(",%.6g,%.6g,%.6g", s.median, s.min, s.max);
            else printf(",,,");
        }
        printf("\n");
    }
}

static av_status write_chart(const av_bench_options *o, const model_result *models) {
    av_chart_point points[AV_BENCH_MAX_MODELS];
    for (int i = 0; i < o->n_models; i++) {
        av_summary s;
        summarize_metric(&models[i], METRIC_DECODE, &s);
        points[i] = (av_chart_point){models[i].dir, models[i].size_bytes / 1048576.0,
                                     models[i].n_done ? s.median : NAN,
                                     models[i].n_done ? models[i].peak_rss_bytes / 1048576.0
                                                      : NAN};
    }
    av_chart_axes axes = {"airavata bench: decode speed vs size", "size on disk (MiB)",
                          "decode tokens/s (median)", "peak RSS (MiB)"};
    return av_chart_write_svg(o->chart_path, &axes, points, o->n_models);
}

int av_bench_run_models(const av_bench_options *o) {
    model_result models[AV_BENCH_MAX_MODELS];
    memset(models, 0, sizeof models);
    int failures = 0, exit_code = 0;
    for (int i = 0; i < o->n_models; i++) {
        models[i].dir = o->models[i];
        models[i].size_bytes = av_dir_weights_bytes(o->models[i]);
        for (int k = 0; k < METRIC_COUNT; k++) {
            models[i].values[k] = calloc((size_t)o->repetitions, sizeof(double));
            if (!models[i].values[k]) {
                fprintf(stderr, "airavata bench: out of memory\n");
                exit_code = 1;
                goto done;
            }
        }
        if (models[i].size_bytes < 0) {
            fprintf(stderr, "airavata bench: %s\n", av_last_error());
            models[i].failed = 1;
            failures++;
        }
    }

    char line[4096];
    int total = o->repetitions * o->n_models, step = 0;
    for (int rep = 0; rep < o->repetitions; rep++) {
        for (int i = 0; i < o->n_models; i++, step++) {
            model_result *m = &models[i];
            progress(step, total, m->dir);
            if (m->failed) continue;
            int64_t rss = 0;
            av_status rc = run_worker(o, m->dir, line, sizeof line, &rss);
            if (!rc) rc = record_sample(m, line);
            if (rss > m->peak_rss_bytes) m->peak_rss_bytes = rss;
            if (rc) {
                fprintf(stderr, "airavata bench: %s\n", av_last_error());
                m->failed = 1;
                failures++;
            }
        }
    }
    progress(total, total, "");

    if (o->format == AV_FORMAT_JSON) print_json(o, models);
    else if (o->format == AV_FORMAT_CSV) print_csv(o, models);
    else print_markdown(o, models);
    fflush(stdout);
    if (o->chart_path && write_chart(o, models)) {
        fprintf(stderr, "airavata bench: %s\n", av_last_error());
        exit_code = 1;
    }
    if (failures) {
        fprintf(stderr, "airavata bench: %d of %d models failed; the report shows what was "
                "measured\n", failures, o->n_models);
        exit_code = 1;
    }

done:
    for (int i = 0; i < o->n_models; i++)
        for (int k = 0; k < METRIC_COUNT; k++) free(models[i].values[k]);
    return exit_code;
}
