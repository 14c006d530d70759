/*
 * eval.c - `airavata eval`: command line of the quality evaluation
 * (perplexity, KL divergence and top-1 agreement of a quantized model
 * against its base model). The evaluation itself is src/bench/eval.c.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "airavata.h"
#include "bench/bench.h"
#include "cli.h"

static void usage(FILE *out) {
    fprintf(out,
        "usage: airavata eval -m MODEL --base BASE_DIR --text FILE [options]\n"
        "       airavata eval -m MODEL --base-logits FILE --text FILE [options]\n\n"
        "Computes the perplexity of both models on the text (strided sliding windows,\n"
        "each token scored once) and, per scored token, KL(base || model) and whether\n"
        "the top-1 tokens agree. Then compares greedy chat answers of both models to a\n"
        "few built-in Hindi and English instructions.\n\n"
        "  -m, --model DIR            the model under test (e.g. the NF4 or int8 copy)\n"
        "      --base DIR             the reference model (e.g. the bf16 original)\n"
        "      --text FILE            UTF-8 text to evaluate on\n"
        "  -c, --ctx N                window length in tokens (default: min(512, the\n"
        "                             model's maximum)); the text needs at least N tokens\n"
        "      --stride N             window step in tokens, 1 to ctx-1 (default ctx/2)\n"
        "      --save-base-logits F   save the base model's predictions to F (safetensors,\n"
        "                             F16 log-probabilities) for reuse\n"
        "      --base-logits F        reuse saved predictions instead of running --base;\n"
        "                             the text, tokenizer, --ctx and --stride must match\n"
        "      --chat-tokens N        new tokens per chat answer; 0 skips the chat check\n"
        "                             (default 32; needs --base)\n"
        "  -t, --threads N            threads; 0 is one per CPU (default 0)\n"
        "      --json                 print JSON instead of text\n"
        "      --chart FILE.svg       also write a chart of KL vs size (circle: speed)\n"
        "  -h, --help                 print this help\n\n"
        "exit codes: 0 success, 1 failure (message on stderr), 2 invalid command line\n");
}

enum { OPT_BASE = 256, OPT_TEXT, OPT_STRIDE, OPT_SAVE, OPT_LOAD, OPT_CHAT, OPT_JSON,
       OPT_CHART };

/* Returns -1 for a usage error, 1 for --help, 0 to run. */
static int parse_args(int argc, char **argv, av_eval_options *o) {
    static const struct option options[] = {
        {"model", required_argument, 0, 'm'},   {"base", required_argument, 0, OPT_BASE},
        {"text", required_argument, 0, OPT_TEXT}, {"ctx", required_argument, 0, 'c'},
        {"stride", required_argument, 0, OPT_STRIDE},
        {"save-base-logits", required_argument, 0, OPT_SAVE},
        {"base-logits", required_argument, 0, OPT_LOAD},
        {"chat-tokens", required_argument, 0, OPT_CHAT},
        {"threads", required_argument, 0, 't'}, {"json", no_argument, 0, OPT_JSON},
        {"chart", required_argument, 0, OPT_CHART}, {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    memset(o, 0, sizeof *o);
    o->chat_tokens = 32;
    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":m:c:t:h", options, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm': o->quant_dir = optarg; break;
        case OPT_BASE: o->base_dir = optarg; break;
        case OPT_TEXT: o->text_path = optarg; break;
        case 'c': bad = cli_parse_int("eval", "--ctx", optarg, 2, 1 << 20, &o->n_ctx); break;
        case OPT_STRIDE: bad = cli_parse_int("eval", "--stride", optarg, 1, 1 << 20, &o->stride); break;
        case OPT_SAVE: o->save_base_logits = optarg; break;
        case OPT_LOAD: o->base_logits = optarg; break;
        case OPT_CHAT: bad = cli_parse_int("eval", "--chat-tokens", optarg, 0, 4096, &o->chat_tokens); break;
        case 't': bad = cli_parse_int("eval", "--threads", optarg, 0, 1024, &o->n_threads); break;
        case OPT_JSON: o->format = AV_FORMAT_JSON; break;
        case OPT_CHART: o->chart_path = optarg; break;
        case 'h': return 1;
        case ':':
            fprintf(stderr, "airavata eval: option %s needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "airavata eval: unknown option '%s'; see 'airavata eval --help'\n",
                    argv[optind - 1]);
            return -1;
        }
        if (bad) return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "airavata eval: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (!o->quant_dir || !o->text_path) {
        fprintf(stderr, "airavata eval: -m MODEL and --text FILE are required\n");
        return -1;
    }
    if (!o->base_dir == !o->base_logits) {
        fprintf(stderr, "airavata eval: give exactly one of --base DIR and --base-logits "
                "FILE\n");
        return -1;
    }
    if (o->save_base_logits && !o->base_dir) {
        fprintf(stderr, "airavata eval: --save-base-logits needs --base DIR\n");
        return -1;
    }
    if (o->n_ctx && o->stride >= o->n_ctx) {
        fprintf(stderr, "airavata eval: --stride %d must be less than --ctx %d\n", o->stride,
                o->n_ctx);
        return -1;
    }
    return 0;
}

int cmd_eval(int argc, char **argv) {
    av_eval_options o;
    int parsed = parse_args(argc, argv, &o);
    if (parsed == 1) {
        usage(stdout);
        return AV_EXIT_OK;
    }
    if (parsed < 0) return AV_EXIT_USAGE;
    return av_eval_run(&o) ? AV_EXIT_FAILURE : AV_EXIT_OK;
}
