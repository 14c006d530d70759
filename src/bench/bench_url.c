/*
 * bench_url.c - `airavata bench --url URL`: the request measurement
 * against a running server (ours, llama.cpp's server or the FastAPI app).
 *
 * For each prompt (English, Hindi): one warm-up request, then per
 * repetition `concurrency` client threads each send one request at the
 * same moment. Latency is per request; requests/s of a repetition is
 * concurrency / the wall time until its last answer. The first failure
 * stops the run, and the report still shows what was measured before it.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

typedef struct {
    const av_bench_options *o;
    const char *prompt;
    double latency;
    av_status status;
    char error[512];
} client_job;

static void *client_main(void *arg) {
    client_job *job = arg;
    job->status = av_http_complete(job->o->url, job->o->api, job->o->api_model, job->prompt,
                                   job->o->new_tokens,
                                   job->o->timeout_s, &job->latency);
    if (job->status) snprintf(job->error, sizeof job->error, "%s", av_last_error());
    return NULL;
}

typedef struct {
    const char *name, *prompt;
    double *latencies; /* repetitions * concurrency */
    double *rps;       /* repetitions */
    int n_latencies, n_reps;
} prompt_result;

/* Runs one repetition: `concurrency` requests at once. */
static av_status run_round(const av_bench_options *o, prompt_result *r, char *error,
                           size_t error_size) {
    client_job jobs[AV_BENCH_MAX_CONCURRENCY];
    pthread_t threads[AV_BENCH_MAX_CONCURRENCY];
    int started = 0;
    double t0 = av_now_seconds();
    for (int i = 0; i < o->concurrency; i++) {
        jobs[i] = (client_job){.o = o, .prompt = r->prompt};
        if (pthread_create(&threads[i], NULL, client_main, &jobs[i]) != 0) break;
        started++;
    }
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    double wall = av_now_seconds() - t0;
    if (started < o->concurrency) {
        snprintf(error, error_size, "could start only %d of %d client threads", started,
                 o->concurrency);
        return AV_ERR_NOMEM;
    }
    for (int i = 0; i < started; i++)
        if (jobs[i].status) {
            snprintf(error, error_size, "%s", jobs[i].error);
            return jobs[i].status;
        }
    for (int i = 0; i < started; i++) r->latencies[r->n_latencies++] = jobs[i].latency;
    r->rps[r->n_reps++] = o->concurrency / wall;
    return AV_OK;
}

static void print_report(const av_bench_options *o, const prompt_result *results) {
    const char *api = o->api == AV_API_OPENAI ? "openai" : "generate";
    if (o->format == AV_FORMAT_JSON) {
        json_t *url = json_string(o->url); /* escapes quotes and backslashes */
        char *url_json = url ? json_dumps(url, JSON_ENCODE_ANY) : NULL;
        printf("{\n  \"url\": %s,\n  \"api\": \"%s\",\n  \"concurrency\": %d,\n"
               "  \"new_tokens\": %d,\n  \"prompts\": [", url_json ? url_json : "null", api,
               o->concurrency, o->new_tokens);
        free(url_json);
        json_decref(url);
        for (int p = 0; p < 2; p++) {
            av_summary lat, rps;
            av_summarize(results[p].latencies, results[p].n_latencies, &lat);
            av_summarize(results[p].rps, results[p].n_reps, &rps);
            printf("%s\n    {\"prompt\": \"%s\", \"requests\": %d, ", p ? "," : "",
                   results[p].name, results[p].n_latencies);
            if (lat.n)
                printf("\"latency_ms\": {\"median\": %.6g, \"mean\": %.6g, \"p10\": %.6g, "
                       "\"p90\": %.6g, \"min\": %.6g, \"max\": %.6g}, \"requests_per_s\": "
                       "{\"median\": %.6g, \"min\": %.6g, \"max\": %.6g}}",
                       lat.median * 1e3, lat.mean * 1e3, lat.p10 * 1e3, lat.p90 * 1e3,
                       lat.min * 1e3, lat.max * 1e3, rps.median, rps.min, rps.max);
            else printf("\"latency_ms\": null, \"requests_per_s\": null}");
        }
        printf("\n  ]\n}\n");
        return;
    }
    if (o->format == AV_FORMAT_CSV) {
        printf("url,api,prompt,requests,latency_ms_median,latency_ms_p10,latency_ms_p90,"
               "requests_per_s_median\n");
    } else {
        printf("Server benchmark: %s (api %s), concurrency %d, %d new tokens per request, "
               "%d repetitions after one warm-up.\n\n", o->url, api, o->concurrency,
               o->new_tokens, o->repetitions);
        printf("| prompt | requests | latency (ms) median [p10, p90] | mean latency (ms) | "
               "req/s median [min, max] |\n|---|---:|---:|---:|---:|\n");
    }
    for (int p = 0; p < 2; p++) {
        av_summary lat, rps;
        av_summarize(results[p].latencies, results[p].n_latencies, &lat);
        av_summarize(results[p].rps, results[p].n_reps, &rps);
        if (o->format == AV_FORMAT_CSV) {
            printf("\"%s\",%s,%s,%d", o->url, api, results[p].name, results[p].n_latencies);
            if (lat.n) printf(",%.6g,%.6g,%.6g,%.6g\n", lat.median * 1e3, lat.p10 * 1e3,
                              lat.p90 * 1e3, rps.median);
            else printf(",,,,\n");
        } else if (lat.n) {
            printf("| %s | %d | %.4g [%.4g, %.4g] | %.4g | %.4g [%.4g, %.4g] |\n",
                   results[p].name, lat.n, lat.median * 1e3, lat.p10 * 1e3, lat.p90 * 1e3,
                   lat.mean * 1e3, rps.median, rps.min, rps.max);
        } else {
            printf("| %s | 0 | - | - | - |\n", results[p].name);
        }
    }
}

int av_bench_run_url(const av_bench_options *options) {
    av_bench_options copy = *options, *o = &copy;
    char *listed_model = NULL;
    prompt_result results[2] = {{"en", AV_BENCH_PROMPT_EN, 0, 0, 0, 0},
                                {"hi", AV_BENCH_PROMPT_HI, 0, 0, 0, 0}};
    int exit_code = 0;
    size_t n_lat = (size_t)o->repetitions * (size_t)o->concurrency;
    for (int p = 0; p < 2; p++) {
        results[p].latencies = calloc(n_lat, sizeof(double));
        results[p].rps = calloc((size_t)o->repetitions, sizeof(double));
        if (!results[p].latencies || !results[p].rps) {
            fprintf(stderr, "airavata bench: out of memory\n");
            exit_code = 1;
            goto done;
        }
    }
    if (av_http_global_init()) {
        fprintf(stderr, "airavata bench: %s\n", av_last_error());
        exit_code = 1;
        goto done;
    }

    if (o->api == AV_API_OPENAI && !o->api_model) {
        listed_model = av_http_openai_model(o->url, o->timeout_s);
        o->api_model = listed_model; /* NULL: requests send "default" */
    }

    char error[512];
    int total = 2 * (o->repetitions + 1), step = 0, tty = isatty(STDERR_FILENO);
    for (int p = 0; p < 2 && !exit_code; p++) {
        double warmup;
        if (tty) fprintf(stderr, "\r%d/%d requests (%s warm-up)   ", step, total, results[p].name);
        if (av_http_complete(o->url, o->api, o->api_model, results[p].prompt, o->new_tokens,
                             o->timeout_s,
                             &warmup)) {
            fprintf(stderr, "%sairavata bench: %s\n", tty ? "\n" : "", av_last_error());
            exit_code = 1;
            break;
        }
        step++;
        for (int rep = 0; rep < o->repetitions; rep++, step++) {
            if (tty) fprintf(stderr, "\r%d/%d rounds (%s)            ", step, total,
                             results[p].name);
            if (run_round(o, &results[p], error, sizeof error)) {
                fprintf(stderr, "%sairavata bench: %s\n", tty ? "\n" : "", error);
                exit_code = 1;
                break;
            }
        }
    }
    if (tty) fprintf(stderr, "\r%60s\r", "");
    print_report(o, results);
    if (exit_code)
        fprintf(stderr, "airavata bench: the run stopped at the first failed request; the "
                "report shows what was measured before it\n");
    av_http_global_cleanup();

done:
    free(listed_model);
    for (int p = 0; p < 2; p++) {
        free(results[p].latencies);
        free(results[p].rps);
    }
    return exit_code;
}
