/*
 * serve.c - `airavata serve`: command-line options of the HTTP server.
 *
 * Parses and range-checks the flags, then hands over to av_server_run()
 * (src/server/server.c), which runs until SIGINT or SIGTERM.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "airavata.h"
#include "cli.h"
#include "server/server.h"

static void usage(FILE *out) {
    fprintf(out,
        "usage: airavata serve -m DIR [options]\n\n"
        "Serves the model over HTTP: POST /generate, the OpenAI API (/v1/models,\n"
        "/v1/completions, /v1/chat/completions, with streaming), /health, /metrics,\n"
        "/openapi.json, /docs and a chat page at /chat. Requests are decoded together\n"
        "(continuous batching). SIGINT or SIGTERM stops accepting connections and lets\n"
        "running requests finish; a second signal exits at once.\n\n"
        "  -m, --model DIR          model directory in Hugging Face layout\n"
        "      --host ADDR          address to listen on (default 127.0.0.1)\n"
        "      --port N             TCP port; 0 picks a free one (default 8000)\n"
        "      --parallel N         sequences decoded together (default 4)\n"
        "  -c, --ctx N              context length in tokens per sequence (default: the\n"
        "                           model's maximum, at most 4096)\n"
        "  -t, --threads N          threads for the forward pass (default: all CPUs)\n"
        "      --batch N            tokens in one forward step, prompts included\n"
        "                           (default 512)\n"
        "      --kv-tokens N        positions the KV cache pool holds for all sequences\n"
        "                           together (default: ctx x parallel)\n"
        "      --max-queue N        requests that may wait for a free sequence; more get\n"
        "                           503 (default 64)\n"
        "      --timeout S          seconds before an idle connection or a request body\n"
        "                           that is not fully received is closed (default 30)\n"
        "      --shutdown-timeout S seconds running requests get to finish after SIGTERM\n"
        "                           (default 10)\n"
        "      --max-body BYTES     larger request bodies get 413 (default 1048576)\n"
        "      --api-key KEY        require 'Authorization: Bearer KEY' on /generate and\n"
        "                           /v1/* (default: $AIRAVATA_API_KEY; none if unset)\n"
        "      --model-name NAME    model id in /v1/models (default: the directory name)\n"
        "      --log-prompts        log each prompt's text (off by default)\n"
        "  -v, --verbose            log debug messages\n"
        "  -h, --help               print this help\n\n"
        "exit codes: 0 after a graceful shutdown, 1 when start-up fails, 2 invalid command\n"
        "line, 128+N after a second signal N\n");
}

enum {
    OPT_HOST = 256, OPT_PORT, OPT_PARALLEL, OPT_BATCH, OPT_KV, OPT_QUEUE, OPT_TIMEOUT,
    OPT_SHUTDOWN, OPT_BODY, OPT_KEY, OPT_NAME, OPT_LOG_PROMPTS,
};

/* Returns -1 for a usage error, 1 for --help, 0 to run. */
static int parse_args(int argc, char **argv, av_server_options *o) {
    static const struct option options[] = {
        {"model", required_argument, 0, 'm'},      {"host", required_argument, 0, OPT_HOST},
        {"port", required_argument, 0, OPT_PORT},  {"parallel", required_argument, 0, OPT_PARALLEL},
        {"ctx", required_argument, 0, 'c'},        {"threads", required_argument, 0, 't'},
        {"batch", required_argument, 0, OPT_BATCH}, {"kv-tokens", required_argument, 0, OPT_KV},
        {"max-queue", required_argument, 0, OPT_QUEUE},
        {"timeout", required_argument, 0, OPT_TIMEOUT},
        {"shutdown-timeout", required_argument, 0, OPT_SHUTDOWN},
        {"max-body", required_argument, 0, OPT_BODY}, {"api-key", required_argument, 0, OPT_KEY},
        {"model-name", required_argument, 0, OPT_NAME},
        {"log-prompts", no_argument, 0, OPT_LOG_PROMPTS},
        {"verbose", no_argument, 0, 'v'},          {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->host = "127.0.0.1";
    o->port = 8000;
    o->n_parallel = 4;
    o->n_batch = 512;
    o->max_queue = 64;
    o->timeout_s = 30;
    o->shutdown_timeout_s = 10;
    o->max_body_bytes = 1 << 20;
    o->api_key = getenv("AIRAVATA_API_KEY");

    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":m:c:t:vh", options, NULL)) != -1) {
        long v = 0;
        int bad = 0;
        switch (c) {
        case 'm': o->model_dir = optarg; break;
        case OPT_HOST: o->host = optarg; break;
        case OPT_PORT: bad = cli_parse_long("serve", "--port", optarg, 0, 65535, &v); o->port = (int)v; break;
        case OPT_PARALLEL:
            bad = cli_parse_long("serve", "--parallel", optarg, 1, 256, &v);
            o->n_parallel = (int)v;
            break;
        case 'c': bad = cli_parse_long("serve", "--ctx", optarg, 1, 1 << 24, &v); o->n_ctx = (int)v; break;
        case 't': bad = cli_parse_long("serve", "--threads", optarg, 1, 1024, &v); o->n_threads = (int)v; break;
        case OPT_BATCH: bad = cli_parse_long("serve", "--batch", optarg, 1, 1 << 16, &v); o->n_batch = (int)v; break;
        case OPT_KV: bad = cli_parse_long("serve", "--kv-tokens", optarg, 1, 1 << 28, &v); o->kv_tokens = (int)v; break;
        case OPT_QUEUE: bad = cli_parse_long("serve", "--max-queue", optarg, 0, 1 << 20, &v); o->max_queue = (int)v; break;
        case OPT_TIMEOUT: bad = cli_parse_long("serve", "--timeout", optarg, 1, 86400, &v); o->timeout_s = (int)v; break;
        case OPT_SHUTDOWN:
            bad = cli_parse_long("serve", "--shutdown-timeout", optarg, 0, 86400, &v);
            o->shutdown_timeout_s = (int)v;
            break;
        case OPT_BODY:
            bad = cli_parse_long("serve", "--max-body", optarg, 1024, 1L << 30, &v);
            o->max_body_bytes = (size_t)v;
            break;
        case OPT_KEY: o->api_key = optarg; break;
        case OPT_NAME:
            if (!*optarg || strlen(optarg) > 200 || strpbrk(optarg, "\"\\/")) {
                fprintf(stderr, "airavata serve: --model-name must have 1 to 200 characters "
                        "and no quote, backslash or slash\n");
                return -1;
            }
            o->model_name = optarg;
            break;
        case OPT_LOG_PROMPTS: o->log_prompts = 1; break;
        case 'v': av_log_set_level(AV_LOG_DEBUG); break;
        case 'h': return 1;
        case ':':
            fprintf(stderr, "airavata serve: option %s needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "airavata serve: unknown option '%s'; see 'airavata serve "
                    "--help'\n", argv[optind - 1]);
            return -1;
        }
        if (bad) return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "airavata serve: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->model_dir) {
        fprintf(stderr, "airavata serve: missing -m DIR (the model directory)\n");
        return -1;
    }
    if (o->n_batch < o->n_parallel) {
        fprintf(stderr, "airavata serve: --batch %d is smaller than --parallel %d; every "
                "running sequence needs one token per step\n", o->n_batch, o->n_parallel);
        return -1;
    }
    return 0;
}

int cmd_serve(int argc, char **argv) {
    av_server_options o;
    int parsed = parse_args(argc, argv, &o);
    if (parsed == 1) {
        usage(stdout);
        return AV_EXIT_OK;
    }
    if (parsed < 0) return AV_EXIT_USAGE;
    return av_server_run(&o) == 0 ? AV_EXIT_OK : AV_EXIT_FAILURE;
}
