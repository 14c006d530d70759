/*
 * generate.c - `airavata generate`: prompt in, streamed completion out.
 *
 * Prefills the prompt in batches of the context's n_batch tokens, then
 * decodes one token per step until eos, a stop string, the token limit or
 * the end of the context. Text reaches stdout through the streaming
 * decoder (never half a UTF-8 character) and the stop-string scan (never a
 * part of a stop string). Timing goes to stderr.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "airavata.h"
#include "cli.h"

#define MAX_STOPS 16

typedef struct {
    const char *model_dir;
    const char *prompt;
    const char *prompt_file;
    const char *system;
    int chat;
    int max_new_tokens;
    int n_threads;
    int n_ctx;
    int ignore_eos;
    int verbose;
    av_sampler_params sampling;
    int have_temp, have_top_k, have_top_p, have_penalty, have_seed;
    const char *stops[MAX_STOPS];
    int n_stops;
} generate_args;

static void usage(FILE *out) {
    fprintf(out,
        "usage: airavata generate -m DIR (-p TEXT | -f FILE) [options]\n\n"
        "Generates a completion of the prompt and streams it to stdout; prompt and\n"
        "generation speed are printed to stderr at the end.\n\n"
        "  -m, --model DIR          model directory in Hugging Face layout\n"
        "  -p, --prompt TEXT        prompt text ('-' reads it from stdin)\n"
        "  -f, --file FILE          read the prompt from FILE\n"
        "      --chat               treat the prompt as a user message and apply the\n"
        "                           model's chat template\n"
        "      --system TEXT        system message for --chat\n"
        "  -n, --max-new-tokens N   tokens to generate at most (default 256)\n"
        "      --temp T             sampling temperature; 0 is greedy (default: the\n"
        "                           model's generation_config.json, else 0.8)\n"
        "      --top-k N            keep the N most likely tokens; 0 is off (default 40)\n"
        "      --top-p P            nucleus sampling mass in (0, 1]; 1 is off (default 0.95)\n"
        "      --min-p P            drop tokens below P times the top probability; 0 is\n"
        "                           off (default 0.05)\n"
        "      --repeat-penalty R   repetition penalty; 1 is off (default 1)\n"
        "      --repeat-last-n N    tokens the penalty looks back at; 0 is all (default 64)\n"
        "      --seed N             random seed (default: random, printed with -v)\n"
        "      --stop TEXT          stop when TEXT is generated (repeatable, up to %d)\n"
        "      --ignore-eos         keep generating after the end-of-sequence token\n"
        "  -t, --threads N          threads (default: all CPUs)\n"
        "  -c, --ctx N              context length in tokens (default: the model's\n"
        "                           maximum, at most 4096)\n"
        "  -v, --verbose            print the prompt's token count and the seed\n"
        "  -h, --help               print this help\n\n"
        "exit codes: 0 success, 1 failure (message on stderr), 2 invalid command line\n",
        MAX_STOPS);
}

static int parse_seed(const char *value, uint64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (errno || end == value || *end || value[0] == '-') {
        fprintf(stderr, "airavata generate: invalid value '%s' for --seed: expected a "
                "non-negative integer\n", value);
        return -1;
    }
    *out = v;
    return 0;
}

enum {
    OPT_CHAT = 256, OPT_SYSTEM, OPT_TEMP, OPT_TOP_K, OPT_TOP_P, OPT_MIN_P, OPT_PENALTY,
    OPT_PENALTY_N, OPT_SEED, OPT_STOP, OPT_IGNORE_EOS,
};

/* Returns -1 to exit with usage error, 1 for --help, 0 to run. */
static int parse_args(int argc, char **argv, generate_args *a) {
    static const struct option options[] = {
        {"model", required_argument, 0, 'm'},     {"prompt", required_argument, 0, 'p'},
        {"file", required_argument, 0, 'f'},      {"chat", no_argument, 0, OPT_CHAT},
        {"system", required_argument, 0, OPT_SYSTEM},
        {"max-new-tokens", required_argument, 0, 'n'},
        {"temp", required_argument, 0, OPT_TEMP}, {"top-k", required_argument, 0, OPT_TOP_K},
        {"top-p", required_argument, 0, OPT_TOP_P}, {"min-p", required_argument, 0, OPT_MIN_P},
        {"repeat-penalty", required_argument, 0, OPT_PENALTY},
        {"repeat-last-n", required_argument, 0, OPT_PENALTY_N},
        {"seed", required_argument, 0, OPT_SEED}, {"stop", required_argument, 0, OPT_STOP},
        {"ignore-eos", no_argument, 0, OPT_IGNORE_EOS},
        {"threads", required_argument, 0, 't'},   {"ctx", required_argument, 0, 'c'},
        {"verbose", no_argument, 0, 'v'},         {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    memset(a, 0, sizeof *a);
    a->max_new_tokens = 256;
    av_sampler_params_default(&a->sampling);
    a->sampling.temperature = 0.8f;
    a->sampling.top_k = 40;
    a->sampling.top_p = 0.95f;
    a->sampling.min_p = 0.05f;
    a->sampling.repetition_window = 64;

    optind = 1;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":m:p:f:n:t:c:vh", options, NULL)) != -1) {
        int bad = 0;
        switch (c) {
        case 'm': a->model_dir = optarg; break;
        case 'p': a->prompt = optarg; break;
        case 'f': a->prompt_file = optarg; break;
        case OPT_CHAT: a->chat = 1; break;
        case OPT_SYSTEM: a->system = optarg; break;
        case 'n': bad = cli_parse_int("generate", "--max-new-tokens", optarg, 0, 1 << 24, &a->max_new_tokens); break;
        case OPT_TEMP: bad = cli_parse_float("generate", "--temp", optarg, &a->sampling.temperature); a->have_temp = 1; break;
        case OPT_TOP_K: bad = cli_parse_int("generate", "--top-k", optarg, 0, 1 << 30, &a->sampling.top_k); a->have_top_k = 1; break;
        case OPT_TOP_P: bad = cli_parse_float("generate", "--top-p", optarg, &a->sampling.top_p); a->have_top_p = 1; break;
        case OPT_MIN_P: bad = cli_parse_float("generate", "--min-p", optarg, &a->sampling.min_p); break;
        case OPT_PENALTY: bad = cli_parse_float("generate", "--repeat-penalty", optarg, &a->sampling.repetition_penalty); a->have_penalty = 1; break;
        case OPT_PENALTY_N: bad = cli_parse_int("generate", "--repeat-last-n", optarg, 0, 1 << 30, &a->sampling.repetition_window); break;
        case OPT_SEED: bad = parse_seed(optarg, &a->sampling.seed); a->have_seed = 1; break;
        case OPT_STOP:
            if (a->n_stops == MAX_STOPS) {
                fprintf(stderr, "airavata generate: at most %d --stop strings\n", MAX_STOPS);
                return -1;
            }
            if (!*optarg) {
                fprintf(stderr, "airavata generate: --stop needs a non-empty string\n");
                return -1;
            }
            a->stops[a->n_stops++] = optarg;
            break;
        case OPT_IGNORE_EOS: a->ignore_eos = 1; break;
        case 't': bad = cli_parse_int("generate", "--threads", optarg, 1, 1024, &a->n_threads); break;
        case 'c': bad = cli_parse_int("generate", "--ctx", optarg, 1, 1 << 24, &a->n_ctx); break;
        case 'v': a->verbose = 1; break;
        case 'h': return 1;
        case ':':
            fprintf(stderr, "airavata generate: option %s needs a value\n", argv[optind - 1]);
            return -1;
        default:
            fprintf(stderr, "airavata generate: unknown option '%s'; see 'airavata generate "
                    "--help'\n", argv[optind - 1]);
            return -1;
        }
        if (bad) return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "airavata generate: unexpected argument '%s'; quote the prompt and "
                "pass it with -p\n", argv[optind]);
        return -1;
    }
    if (!a->model_dir) {
        fprintf(stderr, "airavata generate: missing -m DIR (the model directory)\n");
        return -1;
    }
    if (!a->prompt == !a->prompt_file) {
        fprintf(stderr, "airavata generate: give the prompt with exactly one of -p TEXT and "
                "-f FILE\n");
        return -1;
    }
    if (a->system && !a->chat) {
        fprintf(stderr, "airavata generate: --system needs --chat\n");
        return -1;
    }
    /* Out-of-range sampling values are command-line errors too: the
     * sampler's own checks name the value and the accepted range. */
    av_sampler *probe = av_sampler_create(&a->sampling, 1);
    if (!probe) {
        fprintf(stderr, "airavata generate: %s\n", av_last_error());
        return -1;
    }
    av_sampler_free(probe);
    return 0;
}

/* Reads a whole stream into a malloc'd NUL-terminated string. */
static char *read_stream(FILE *f) {
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) break;
        if (cap - len < 2) {
            char *grown = realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                return NULL;
            }
            buf = grown;
            cap *= 2;
        }
    }
    if (buf) buf[len] = 0;
    return buf;
}

static char *read_prompt(const generate_args *a) {
    if (a->prompt && strcmp(a->prompt, "-")) return strdup(a->prompt);
    FILE *f = stdin;
    if (a->prompt_file && !(f = fopen(a->prompt_file, "rb"))) {
        fprintf(stderr, "airavata generate: cannot open prompt file %s: %s\n", a->prompt_file,
                strerror(errno));
        return NULL;
    }
    char *text = read_stream(f);
    if (f != stdin) fclose(f);
    if (!text) fprintf(stderr, "airavata generate: out of memory reading the prompt\n");
    return text;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Encodes the prompt (with the chat template under --chat) into a malloc'd
 * id array. */
static int32_t *encode_prompt(const av_tokenizer *tok, const generate_args *a, const char *text,
                              int *n_out) {
    char *formatted = NULL;
    int flags = AV_TOKENIZE_BOS;
    if (a->chat) {
        av_chat_message msgs[2];
        int n = 0;
        if (a->system) msgs[n++] = (av_chat_message){"system", a->system};
        msgs[n++] = (av_chat_message){"user", text};
        formatted = av_chat_format(msgs, n);
        if (!formatted) return NULL;
        text = formatted;
        flags = AV_TOKENIZE_PARSE_SPECIAL;
    }
    size_t len = strlen(text);
    int n = av_tokenize(tok, text, len, flags, NULL, 0);
    int32_t *ids = n >= 0 ? malloc(sizeof(int32_t) * (size_t)(n + 1)) : NULL;
    if (ids) av_tokenize(tok, text, len, flags, ids, n);
    else if (n >= 0) av_set_error(AV_ERR_NOMEM, "out of memory tokenizing the prompt");
    free(formatted);
    *n_out = n;
    return ids;
}

/* Text generated so far, and how much of it stdout has received. */
typedef struct {
    char *text;
    size_t len, cap, printed;
} output_text;

static int output_append(output_text *o, const char *s, size_t n) {
    if (o->len + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 1024;
        while (cap < o->len + n + 1) cap *= 2;
        char *grown = realloc(o->text, cap);
        if (!grown) return -1;
        o->text = grown;
        o->cap = cap;
    }
    memcpy(o->text + o->len, s, n);
    o->len += n;
    o->text[o->len] = 0;
    return 0;
}

static void output_release(output_text *o, size_t upto) {
    if (upto > o->printed) {
        fwrite(o->text + o->printed, 1, upto - o->printed, stdout);
        fflush(stdout);
        o->printed = upto;
    }
}

static uint64_t random_seed(void) {
    uint64_t seed = 0;
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(&seed, sizeof seed, 1, f) != 1) seed = (uint64_t)time(NULL) ^ (uint64_t)getpid();
    if (f) fclose(f);
    return seed;
}

/* Applies generation_config.json defaults to options the user did not set. */
static void apply_model_defaults(generate_args *a, const av_generation_config *g) {
    if (!a->have_temp && g->temperature >= 0) a->sampling.temperature = g->temperature;
    if (!a->have_top_p && g->top_p > 0) a->sampling.top_p = g->top_p;
    if (!a->have_top_k && g->top_k >= 0) a->sampling.top_k = g->top_k;
    if (!a->have_penalty && g->repetition_penalty > 0)
        a->sampling.repetition_penalty = g->repetition_penalty;
    if (!a->have_seed) a->sampling.seed = random_seed();
}

static int run_generation(av_model *model, const generate_args *a, const int32_t *prompt,
                          int n_prompt) {
    const av_config *cfg = av_model_config(model);
    const av_tokenizer *tok = av_model_tokenizer(model);
    int status = AV_EXIT_FAILURE;

    av_context_options copts = {.n_ctx = a->n_ctx, .n_threads = a->n_threads};
    av_context *ctx = av_context_create(model, &copts);
    av_sampler *sampler = av_sampler_create(&a->sampling, cfg->vocab_size);
    int n_ctx = ctx ? av_context_n_ctx(ctx) : 0;
    int32_t *history = malloc(sizeof(int32_t) * (size_t)(n_ctx + 1));
    float *logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    output_text out = {0};
    if (!ctx || !sampler) goto done;
    if (!history || !logits) {
        av_set_error(AV_ERR_NOMEM, "out of memory");
        goto done;
    }
    if (n_prompt >= n_ctx) {
        av_set_error(AV_ERR_RANGE, "the prompt has %d tokens but the context holds %d; "
                     "shorten the prompt or raise --ctx (this model allows up to %d)",
                     n_prompt, n_ctx, cfg->max_seq_len);
        goto done;
    }
    if (a->verbose)
        fprintf(stderr, "prompt: %d tokens; seed: %llu\n", n_prompt,
                (unsigned long long)a->sampling.seed);
    memcpy(history, prompt, sizeof(int32_t) * (size_t)n_prompt);

    /* Prefill: the prompt in chunks of n_batch; logits only for its last token. */
    double t0 = now_seconds();
    int n_batch = av_context_n_batch(ctx);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n_batch);
    int32_t *seq = calloc((size_t)n_batch, sizeof(int32_t));
    int8_t *want = calloc((size_t)n_batch, 1);
    if (!pos || !seq || !want) {
        free(pos); free(seq); free(want);
        av_set_error(AV_ERR_NOMEM, "out of memory");
        goto done;
    }
    av_status st = AV_OK;
    for (int start = 0; start < n_prompt && !st; start += n_batch) {
        int n = n_prompt - start < n_batch ? n_prompt - start : n_batch;
        for (int i = 0; i < n; i++) {
            pos[i] = start + i;
            want[i] = start + i == n_prompt - 1;
        }
        av_batch b = {n, prompt + start, pos, seq, want};
        st = av_forward(ctx, &b, logits);
    }
    free(pos); free(seq); free(want);
    if (st) goto done;
    double t_prompt = now_seconds() - t0;

    /* Decode one token per step. */
    av_decoder dec;
    av_decoder_init(&dec, tok);
    /* n_steps counts decode forward passes: the first generated token comes
     * from the prefill's logits, so speed is steps over decode time. */
    int eos = av_tokenizer_eos(tok), n_hist = n_prompt, n_gen = 0, n_steps = 0;
    const char *stop_reason = "length";
    char piece[256];
    t0 = now_seconds();
    while (n_gen < a->max_new_tokens) {
        int32_t next = av_sampler_sample(sampler, logits, history, n_hist);
        n_gen++;
        if (next == eos && !a->ignore_eos) {
            stop_reason = "eos";
            break;
        }
        history[n_hist++] = next;

        int n = av_decoder_push(&dec, next, piece, sizeof piece);
        if (n > 0 && output_append(&out, piece, (size_t)n)) {
            av_set_error(AV_ERR_NOMEM, "out of memory");
            goto done;
        }
        size_t safe;
        long hit = av_stop_scan(out.text ? out.text : "", out.len, a->stops, a->n_stops, &safe);
        output_release(&out, safe);
        if (hit >= 0) {
            stop_reason = "stop string";
            out.len = (size_t)hit;
            break;
        }
        if (n_gen == a->max_new_tokens) break;
        if (n_hist >= n_ctx) {
            stop_reason = "context full";
            break;
        }
        int32_t p = n_hist - 1, s0 = 0;
        int8_t one = 1;
        av_batch b = {1, &next, &p, &s0, &one};
        if (av_forward(ctx, &b, logits)) goto done;
        n_steps++;
    }
    if (strcmp(stop_reason, "stop string")) {
        int n = av_decoder_flush(&dec, piece, sizeof piece);
        if (n > 0 && output_append(&out, piece, (size_t)n)) goto done;
        output_release(&out, out.len);
    }
    fputc('\n', stdout);
    fflush(stdout);
    double t_gen = now_seconds() - t0;

    fprintf(stderr, "prompt: %d tokens in %.3f s (%.2f tokens/s); generation: %d tokens in "
            "%.3f s (%.2f tokens/s over %d decode steps); stopped: %s\n", n_prompt, t_prompt,
            t_prompt > 0 ? n_prompt / t_prompt : 0.0, n_gen, t_gen,
            t_gen > 0 && n_steps > 0 ? n_steps / t_gen : 0.0, n_steps, stop_reason);
    if (!strcmp(stop_reason, "context full"))
        fprintf(stderr, "note: generation stopped because the context of %d positions is "
                "full; raise --ctx for longer output\n", n_ctx);
    status = AV_EXIT_OK;

done:
    if (status != AV_EXIT_OK) fprintf(stderr, "airavata generate: %s\n", av_last_error());
    free(out.text);
    free(logits);
    free(history);
    av_sampler_free(sampler);
    av_context_free(ctx);
    return status;
}

int cmd_generate(int argc, char **argv) {
    generate_args a;
    int parsed = parse_args(argc, argv, &a);
    if (parsed == 1) {
        usage(stdout);
        return AV_EXIT_OK;
    }
    if (parsed < 0) return AV_EXIT_USAGE;

    char *text = read_prompt(&a);
    if (!text) return AV_EXIT_FAILURE;

    av_load_options lopts = {.n_threads = a.n_threads};
    av_model *model = av_model_load(a.model_dir, &lopts);
    if (!model) {
        fprintf(stderr, "airavata generate: %s\n", av_last_error());
        free(text);
        return AV_EXIT_FAILURE;
    }
    apply_model_defaults(&a, av_model_generation_config(model));

    int status = AV_EXIT_FAILURE;
    int n_prompt = 0;
    int32_t *prompt = encode_prompt(av_model_tokenizer(model), &a, text, &n_prompt);
    if (!prompt)
        fprintf(stderr, "airavata generate: %s\n", av_last_error());
    else if (n_prompt == 0)
        fprintf(stderr, "airavata generate: the prompt is empty after tokenization\n");
    else
        status = run_generation(model, &a, prompt, n_prompt);

    free(prompt);
    free(text);
    av_model_free(model);
    return status;
}
