/*
 * bench.c - `airavata bench`: command line of the speed and size benchmark.
 *
 * The measuring code lives in src/bench. This file parses options, checks
 * their ranges and picks one of three modes: the local benchmark of one or
 * more model directories, the benchmark of a running server (--url), or the
 * hidden --worker mode, in which the program measures one repetition of
 * one model and writes it as a JSON line for the parent process.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "airavata.h"
#include "bench/bench.h"
#include "cli.h"

static void usage(FILE *out) {
    fprintf(out,
        "usage: airavata bench -m DIR [-m DIR ...] [options]\n"
        "       airavata bench --url URL [--api generate|openai] [options]\n\n"
        "Measures each model's size on disk, peak resident memory, load time, prompt\n"
        "and decode tokens/s, time to first token, and the latency and requests/s of\n"
        "requests on an English and a Hindi prompt. Each repetition of each model runs\n"
        "in its own process; repetitions alternate between the models. Prints a\n"
        "Markdown table of median [min, max] over the repetitions.\n\n"
        "  -m, --model DIR          model directory (repeat for up to %d models)\n"
        "      --url URL            benchmark the server at URL instead of local models\n"
        "      --api API            server API: generate (POST /generate, default) or\n"
        "                           openai (POST /v1/completions)\n"
        "      --server-model NAME  \"model\" of OpenAI requests (default: the first\n"
        "                           model GET /v1/models lists)\n"
        "  -p, --prompt-tokens N    tokens of the synthetic prompt for prompt tokens/s\n"
        "                           (default 128)\n"
        "  -n, --new-tokens N       tokens generated per request (default 20)\n"
        "  -r, --repetitions N      timed repetitions per model (default 3)\n"
        "  -t, --threads N          threads; 0 is one per CPU (default 0)\n"
        "      --concurrency N      sequences decoded together in one batch, or parallel\n"
        "                           clients with --url (default 1); rates are aggregate\n"
        "      --timeout S          seconds per HTTP request with --url (default 300)\n"
        "      --json               print JSON instead of the table\n"
        "      --csv                print CSV instead of the table\n"
        "      --chart FILE.svg     also write a chart of decode speed vs size\n"
        "  -h, --help               print this help\n\n"
        "exit codes: 0 success, 1 a model or request failed (the report still shows\n"
        "what was measured), 2 invalid command line\n", AV_BENCH_MAX_MODELS);
}

enum { OPT_URL = 256, OPT_API, OPT_SERVER_MODEL, OPT_CONCURRENCY, OPT_TIMEOUT, OPT_JSON, OPT_CSV, OPT_CHART,
       OPT_WORKER };

/* Returns -1 for a usage error, 1 for --help, 0 to run. */
static int parse_args(int argc, char **argv, av_bench_options *o, int *worker) {
    static const struct option options[] = {
        {"model", required_argument, 0, 'm'},        {"url", required_argument, 0, OPT_URL},
        {"api", required_argument, 0, OPT_API},
        {"server-model", required_argument, 0, OPT_SERVER_MODEL},
        {"prompt-tokens", required_argument, 0, 'p'},
        {"new-tokens", required_argument, 0, 'n'},
        {"repetitions", required_argument, 0, 'r'},  {"threads", required_argument, 0, 't'},
        {"concurrency", required_argument, 0, OPT_CONCURRENCY},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"json", no_argument, 0, OPT_JSON},          {"csv", no_argument, 0, OPT_CSV},
        {"chart", required_argument, 0, OPT_CHART},  {"worker", no_argument, 0, OPT_WORKER},
        {"help", no_argument, 0, 'h'},               {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->prompt_tokens = 128;
    o->new_tokens = 20;
    o->repetitions = 3;
    o->concurrency = 1;
    o->timeout_s = 300;
    *worker = 0;
    int timeout = 300;

    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:n:r:t:h", options, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm':
            if (o->n_models == AV_BENCH_MAX_MODELS) {
                fprintf(stderr, "airavata bench: at most %d models per run\n",
                        AV_BENCH_MAX_MODELS);
                return -1;
            }
            o->models[o->n_models++] = optarg;
            break;
        case OPT_URL: o->url = optarg; break;
        case OPT_SERVER_MODEL: o->api_model = optarg; break;
        case OPT_API:
            if (!strcmp(optarg, "generate")) o->api = AV_API_GENERATE;
            else if (!strcmp(optarg, "openai")) o->api = AV_API_OPENAI;
            else {
                fprintf(stderr, "airavata bench: unknown --api '%s'; expected generate or "
                        "openai\n", optarg);
                return -1;
            }
            break;
        case 'p': bad = cli_parse_int("bench", "--prompt-tokens", optarg, 2, 1 << 20, &o->prompt_tokens); break;
        case 'n': bad = cli_parse_int("bench", "--new-tokens", optarg, 2, 1 << 20, &o->new_tokens); break;
        case 'r': bad = cli_parse_int("bench", "--repetitions", optarg, 1, AV_BENCH_MAX_REPS, &o->repetitions); break;
        case 't': bad = cli_parse_int("bench", "--threads", optarg, 0, 1024, &o->n_threads); break;
        case OPT_CONCURRENCY:
            bad = cli_parse_int("bench", "--concurrency", optarg, 1, AV_BENCH_MAX_CONCURRENCY, &o->concurrency);
            break;
        case OPT_TIMEOUT:
            bad = cli_parse_int("bench", "--timeout", optarg, 1, 86400, &timeout);
            o->timeout_s = timeout;
            break;
        case OPT_JSON: o->format = AV_FORMAT_JSON; break;
        case OPT_CSV: o->format = AV_FORMAT_CSV; break;
        case OPT_CHART: o->chart_path = optarg; break;
        case OPT_WORKER: *worker = 1; break;
        case 'h': return 1;
        case ':':
            fprintf(stderr, "airavata bench: option %s needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "airavata bench: unknown option '%s'; see 'airavata bench --help'\n",
                    argv[optind - 1]);
            return -1;
        }
        if (bad) return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "airavata bench: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->url == !o->n_models) {
        fprintf(stderr, "airavata bench: give either -m DIR (one or more models) or --url "
                "URL\n");
        return -1;
    }
    if (o->url && o->chart_path) {
        fprintf(stderr, "airavata bench: --chart needs local models (-m); a server has no size "
                "on disk\n");
        return -1;
    }
    if (*worker && o->n_models != 1) {
        fprintf(stderr, "airavata bench: --worker measures exactly one -m DIR\n");
        return -1;
    }
    return 0;
}

/* Measures one repetition of one model and writes it to stdout (the pipe
 * to the parent). */
static int run_worker(const av_bench_options *o) {
    av_bench_sample sample;
    if (av_bench_measure(o, o->models[0], &sample)) {
        fprintf(stderr, "airavata bench: %s: %s\n", o->models[0], av_last_error());
        return AV_EXIT_FAILURE;
    }
    av_bench_sample_write_json(stdout, &sample);
    return AV_EXIT_OK;
}

int cmd_bench(int argc, char **argv) {
    av_bench_options o;
    int worker = 0;
    int parsed = parse_args(argc, argv, &o, &worker);
    if (parsed == 1) {
        usage(stdout);
        return AV_EXIT_OK;
    }
    if (parsed < 0) return AV_EXIT_USAGE;
    if (worker) return run_worker(&o);
    if (o.url) return av_bench_run_url(&o);

    static char self_exe[4096];
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (n <= 0) {
        fprintf(stderr, "airavata bench: cannot find this program's path in /proc/self/exe: "
                "%s\n", strerror(errno));
        return AV_EXIT_FAILURE;
    }
    self_exe[n] = 0;
    o.self_exe = self_exe;
    return av_bench_run_models(&o) ? AV_EXIT_FAILURE : AV_EXIT_OK;
}
