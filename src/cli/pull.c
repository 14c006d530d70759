/*
 * pull.c - `airavata pull`: downloads a model from the Hugging Face hub
 * into the Hugging Face cache, where `-m ORG/NAME` finds it.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "airavata.h"
#include "cli.h"
#include "hub/hub.h"

#define DEFAULT_RETRIES 5

static void print_help(FILE *out) {
    fprintf(out,
            "usage: airavata pull [REPO] [--revision REV] [--include GLOB ...] [--token TOKEN]\n\n"
            "Downloads a model repository from the Hugging Face hub into the Hugging Face\n"
            "cache and prints the snapshot directory. REPO is ORG/NAME (default %s).\n"
            "Files already in the cache, including those downloaded by transformers, are\n"
            "not downloaded again; an interrupted download resumes where it stopped.\n"
            "Afterwards, '-m ORG/NAME' in other commands loads the model from the cache.\n\n"
            "options:\n"
            "  -r, --revision REV   branch, tag or commit to download (default main)\n"
            "  -i, --include GLOB   download only the files matching GLOB (repeatable);\n"
            "                       default: config, tokenizer and safetensors weights\n"
            "      --token TOKEN    access token for gated or private models (default\n"
            "                       $HF_TOKEN, else the token saved by huggingface-cli login)\n"
            "      --retries N      retries after a network error, per request (default %d)\n"
            "  -q, --quiet          no progress output\n"
            "  -h, --help           print this help\n\n"
            "environment:\n"
            "  HF_ENDPOINT      hub address (default %s)\n"
            "  HF_TOKEN         access token, sent as \"Authorization: Bearer\"\n"
            "  HF_HUB_CACHE     cache directory (default $HF_HOME/hub, else\n"
            "                   ~/.cache/huggingface/hub)\n"
            "  HF_HUB_OFFLINE   1: never use the network, only check the cache\n",
            AV_HUB_DEFAULT_REPO, DEFAULT_RETRIES, AV_HUB_DEFAULT_ENDPOINT);
}

/* Returns 1 if the environment variable is set to a true value, as
 * huggingface_hub reads it ("1", "on", "yes", "true", any case). */
static int env_true(const char *name) {
    const char *v = getenv(name);
    return v && (!strcmp(v, "1") || !strcasecmp(v, "on") || !strcasecmp(v, "yes") ||
                 !strcasecmp(v, "true"));
}

enum { OPT_TOKEN = 256, OPT_RETRIES };

/* Parses the command line into `o`; returns 0, 1 for --help, -1 on error. */
static int parse_args(int argc, char **argv, av_hub_pull_options *o) {
    static const struct option options[] = {
        {"revision", required_argument, 0, 'r'}, {"include", required_argument, 0, 'i'},
        {"token", required_argument, 0, OPT_TOKEN}, {"retries", required_argument, 0, OPT_RETRIES},
        {"quiet", no_argument, 0, 'q'},         {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->repo = AV_HUB_DEFAULT_REPO;
    o->revision = "main";
    o->max_retries = DEFAULT_RETRIES;
    o->progress = 1;

    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":r:i:qh", options, NULL)) != -1) {
        switch (c) {
        case 'r': o->revision = optarg; break;
        case 'i':
            if (o->n_includes == AV_HUB_MAX_INCLUDES) {
                fprintf(stderr, "airavata pull: at most %d --include patterns\n",
                        AV_HUB_MAX_INCLUDES);
                return -1;
            }
            o->includes[o->n_includes++] = optarg;
            break;
        case OPT_TOKEN: o->token = optarg; break;
        case OPT_RETRIES: {
            char *end;
            long v = strtol(optarg, &end, 10);
            if (end == optarg || *end || v < 0 || v > 100) {
                fprintf(stderr, "airavata pull: invalid --retries '%s': expected 0 to 100\n",
                        optarg);
                return -1;
            }
            o->max_retries = (int)v;
            break;
        }
        case 'q': o->progress = 0; break;
        case 'h': return 1;
        case ':':
            fprintf(stderr, "airavata pull: option %s needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "airavata pull: unknown option '%s'; see 'airavata pull --help'\n",
                    argv[optind - 1]);
            return -1;
        }
    }
    if (optind < argc) o->repo = argv[optind++];
    if (optind < argc) {
        fprintf(stderr, "airavata pull: unexpected argument '%s'; give one repository\n",
                argv[optind]);
        return -1;
    }
    if (!av_hf_repo_id_valid(o->repo)) {
        fprintf(stderr, "airavata pull: invalid repository id '%s': expected ORG/NAME such "
                "as %s\n", o->repo, AV_HUB_DEFAULT_REPO);
        return -1;
    }
    if (!av_hf_revision_valid(o->revision)) {
        fprintf(stderr, "airavata pull: invalid revision '%s'\n", o->revision);
        return -1;
    }
    o->offline = env_true("HF_HUB_OFFLINE");
    return 0;
}

int cmd_pull(int argc, char **argv) {
    av_hub_pull_options o;
    int parsed = parse_args(argc, argv, &o);
    if (parsed > 0) {
        print_help(stdout);
        return AV_EXIT_OK;
    }
    if (parsed < 0) return AV_EXIT_USAGE;

    /* A file size limit (ulimit -f) must fail the write with EFBIG, which
     * is reported, instead of killing the process with SIGXFSZ. */
    signal(SIGXFSZ, SIG_IGN);

    char snapshot[4096];
    if (av_hub_pull(&o, snapshot, sizeof snapshot) != AV_OK) {
        fprintf(stderr, "airavata pull: %s\n", av_last_error());
        return AV_EXIT_FAILURE;
    }
    printf("%s\n", snapshot);
    return AV_EXIT_OK;
}
