/*
 * quantize.c - `airavata quantize`: converts a checkpoint to bitsandbytes
 * NF4 or LLM.int8 as transformers saves it, or to another 16-bit dtype.
 *
 * The work is av_quantize_checkpoint() (src/quant/quantize.c); this file
 * parses options, shows progress (a bar on a terminal, one line per tensor
 * otherwise) and turns SIGINT and SIGTERM into a clean stop that removes
 * the partial output.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "airavata.h"
#include "cli.h"
#include "quant/quant.h"

static void print_help(FILE *out) {
    fprintf(out,
            "usage: airavata quantize -m IN -o OUT --type nf4|int8|bf16|f16 [OPTIONS]\n\n"
            "Converts the checkpoint directory IN into OUT. nf4 and int8 write what\n"
            "transformers saves for a model loaded with bitsandbytes (BitsAndBytesConfig\n"
            "load_in_4bit with NF4, or load_in_8bit): the decoder's Linear weights are\n"
            "quantized, embeddings, norms and lm_head stay as stored. bf16 and f16 convert\n"
            "every float tensor. Tokenizer and generation files are copied; IN is only read.\n"
            "OUT appears only when complete; a failed or interrupted run removes its\n"
            "temporary directory.\n\n"
            "options:\n"
            "  -m, --model DIR        input model directory, or ORG/NAME in the Hugging Face cache\n"
            "  -o, --output DIR       output directory (must not exist unless --force)\n"
            "  -t, --type TYPE        nf4, int8, bf16 or f16\n"
            "      --block-size N     NF4 values per absmax block: 32, 64 (default), 128,\n"
            "                         256, 512, 1024, 2048 or 4096\n"
            "      --no-double-quant  store the NF4 absmax as float32 instead of 8-bit\n"
            "                         (bnb_4bit_use_double_quant false)\n"
            "      --quantize-head    also quantize lm_head (ignored when it is tied to the\n"
            "                         embeddings); embeddings always stay unquantized\n"
            "      --shard-size GB    largest output file in GiB (default 5); larger\n"
            "                         models get model-0000N-of-0000M.safetensors files\n"
            "                         and model.safetensors.index.json\n"
            "  -f, --force            replace OUT if it is an existing model directory\n"
            "  -q, --quiet            print only errors\n"
            "  -h, --help             print this help\n");
}

typedef struct {
    const char *in_dir, *out_dir;
    av_quantize_options options;
    int have_type, quiet;
} quantize_args;

enum { OPT_BLOCK = 256, OPT_NO_DQ, OPT_HEAD, OPT_SHARD };

static int parse_type(const char *text, av_quantize_target *target) {
    static const struct {
        const char *name;
        av_quantize_target target;
    } types[] = {{"nf4", AV_TARGET_NF4}, {"int8", AV_TARGET_INT8}, {"bf16", AV_TARGET_BF16},
                 {"f16", AV_TARGET_F16}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (!strcmp(text, types[i].name)) {
            *target = types[i].target;
            return 0;
        }
    fprintf(stderr, "airavata quantize: unknown --type '%s'; expected nf4, int8, bf16 or f16\n",
            text);
    return -1;
}

static int parse_block_size(const char *text, int *out) {
    char *end;
    long v = strtol(text, &end, 10);
    if (*text == '\0' || *end != '\0' || !av_nf4_blocksize_valid(v)) {
        fprintf(stderr, "airavata quantize: invalid --block-size '%s'; bitsandbytes accepts 32, "
                "64, 128, 256, 512, 1024, 2048 or 4096\n", text);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_shard_size(const char *text, uint64_t *out) {
    char *end;
    double gb = strtod(text, &end);
    if (*text == '\0' || *end != '\0' || !(gb >= 1e-6 && gb <= 1024)) {
        fprintf(stderr, "airavata quantize: invalid --shard-size '%s'; give GiB between 0.000001 "
                "and 1024\n", text);
        return -1;
    }
    *out = (uint64_t)(gb * 1024.0 * 1024.0 * 1024.0);
    return 0;
}

/* Returns -1 to exit with a usage error, 1 for --help, 0 to run. */
static int parse_args(int argc, char **argv, quantize_args *a) {
    static const struct option options[] = {
        {"model", required_argument, 0, 'm'},   {"output", required_argument, 0, 'o'},
        {"type", required_argument, 0, 't'},    {"block-size", required_argument, 0, OPT_BLOCK},
        {"no-double-quant", no_argument, 0, OPT_NO_DQ},
        {"quantize-head", no_argument, 0, OPT_HEAD},
        {"shard-size", required_argument, 0, OPT_SHARD},
        {"force", no_argument, 0, 'f'},         {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},          {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    a->options.double_quant = 1;
    optind = 1;
    opterr = 0;
    int c, bad = 0, have_block = 0;
    while (!bad && (c = getopt_long(argc, argv, ":m:o:t:fqh", options, NULL)) != -1) {
        switch (c) {
        case 'm': a->in_dir = optarg; break;
        case 'o': a->out_dir = optarg; break;
        case 't': bad = parse_type(optarg, &a->options.target); a->have_type = 1; break;
        case OPT_BLOCK:
            bad = parse_block_size(optarg, &a->options.blocksize);
            have_block = 1;
            break;
        case OPT_NO_DQ: a->options.double_quant = 0; break;
        case OPT_HEAD: a->options.quantize_head = 1; break;
        case OPT_SHARD: bad = parse_shard_size(optarg, &a->options.shard_bytes); break;
        case 'f': a->options.force = 1; break;
        case 'q': a->quiet = 1; break;
        case 'h': return 1;
        case ':':
            fprintf(stderr, "airavata quantize: option %s needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "airavata quantize: unknown option '%s'; see 'airavata quantize "
                    "--help'\n", argv[optind - 1]);
            return -1;
        }
    }
    if (bad) return -1;
    if (optind < argc) {
        fprintf(stderr, "airavata quantize: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!a->in_dir || !a->out_dir || !a->have_type) {
        fprintf(stderr, "airavata quantize: -m IN, -o OUT and --type are required; see "
                "'airavata quantize --help'\n");
        return -1;
    }
    if (a->options.target != AV_TARGET_NF4 && (have_block || !a->options.double_quant)) {
        fprintf(stderr, "airavata quantize: %s applies to --type nf4 only; remove it\n",
                have_block ? "--block-size" : "--no-double-quant");
        return -1;
    }
    return 0;
}

/* ---- progress and signals --------------------------------------------- */

static volatile sig_atomic_t cancel_requested;

static void on_signal(int sig) {
    (void)sig;
    cancel_requested = 1;
}

typedef struct {
    int terminal; /* stderr is a terminal: redraw one bar line */
    int quiet;
} progress_state;

static void show_progress(void *user, int index, int count, const char *tensor,
                          const char *action, uint64_t done, uint64_t total) {
    const progress_state *p = user;
    if (p->quiet) return;
    double fraction = total ? (double)done / (double)total : 1.0;
    if (!p->terminal) {
        fprintf(stderr, "quantize: [%d/%d] %s: %s\n", index, count, tensor, action);
        return;
    }
    enum { WIDTH = 30 };
    char bar[WIDTH + 1];
    int filled = (int)(fraction * WIDTH);
    for (int i = 0; i < WIDTH; i++) bar[i] = i < filled ? '#' : '.';
    bar[WIDTH] = '\0';
    fprintf(stderr, "\r[%s] %3d%% %d/%d %-48.48s", bar, (int)(fraction * 100), index, count,
            tensor);
    if (index == count) fputc('\n', stderr);
}

int cmd_quantize(int argc, char **argv) {
    quantize_args a;
    int parsed = parse_args(argc, argv, &a);
    if (parsed > 0) {
        print_help(stdout);
        return AV_EXIT_OK;
    }
    if (parsed < 0) return AV_EXIT_USAGE;

    progress_state progress = {.terminal = isatty(STDERR_FILENO), .quiet = a.quiet};
    a.options.progress = show_progress;
    a.options.progress_user = &progress;
    a.options.cancel = &cancel_requested;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);

    /* -m also takes a repository id (ORG/NAME) resolved through the
     * Hugging Face cache. */
    char in_dir[4096];
    av_status status = av_model_resolve(a.in_dir, in_dir, sizeof in_dir);
    if (!status) status = av_quantize_checkpoint(in_dir, a.out_dir, &a.options);

    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (status) {
        if (progress.terminal && !a.quiet) fputc('\n', stderr);
        fprintf(stderr, "airavata quantize: %s\n", av_last_error());
        return AV_EXIT_FAILURE;
    }
    if (!a.quiet) fprintf(stderr, "quantize: wrote %s\n", a.out_dir);
    return AV_EXIT_OK;
}
