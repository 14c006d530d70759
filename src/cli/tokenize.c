/*
 * tokenize.c - `airavata tokenize`: prints the token ids and pieces of a
 * text, to check what the model will see (Hindi words split into pieces,
 * byte-fallback tokens, the chat template's special tokens).
 *
 * Only the tokenizer is read: with -m DIR, DIR/tokenizer.model and, if
 * present, DIR/added_tokens.json; the weights are never opened.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "airavata.h"
#include "cli.h"

#define TOKENIZE_MAX_INPUT_BYTES (64u << 20) /* text read from stdin */

static void print_usage(FILE *out) {
    fprintf(out,
            "usage: airavata tokenize (-m DIR | --tokenizer FILE) [--json] [--no-bos] [--chat] TEXT\n"
            "\n"
            "Prints the token ids of TEXT and their pieces, one \"ID<TAB>PIECE\" per line.\n"
            "TEXT '-' reads the text from standard input, verbatim (a trailing newline\n"
            "is part of the text). In pieces, '\xe2\x96\x81' stands for a space and <0xNN> for one\n"
            "byte; control characters are printed as \\xNN.\n"
            "\n"
            "options:\n"
            "  -m, --model DIR     checkpoint directory: reads DIR/tokenizer.model and\n"
            "                      DIR/added_tokens.json if it exists\n"
            "  --tokenizer FILE    a SentencePiece tokenizer.model file\n"
            "  --json              print {\"ids\": [...], \"pieces\": [...]} instead\n"
            "  --no-bos            do not prepend the bos token <s> (added by default, as\n"
            "                      the Hugging Face LlamaTokenizer does)\n"
            "  --chat              treat TEXT as one user message and apply Airavata's chat\n"
            "                      template; special tokens in it become their ids\n"
            "  -h, --help          print this help\n"
            "\n"
            "exit codes: 0 success, 1 the tokenizer could not be loaded or the text not\n"
            "encoded, 2 invalid command line\n");
}

static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "airavata tokenize: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nRun 'airavata tokenize --help' for usage.\n");
    return AV_EXIT_USAGE;
}

/* Reads all of stdin into a malloc'd buffer. */
static char *read_stdin(size_t *len) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        if (n == cap) {
            if (cap >= TOKENIZE_MAX_INPUT_BYTES) {
                fprintf(stderr, "airavata tokenize: standard input exceeds %u bytes\n",
                        TOKENIZE_MAX_INPUT_BYTES);
                free(buf);
                return NULL;
            }
            char *grown = realloc(buf, 2 * cap + 1);
            if (!grown) break;
            buf = grown;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, stdin);
        n += got;
        if (got == 0) break;
    }
    if (!buf || ferror(stdin)) {
        fprintf(stderr, "airavata tokenize: reading standard input failed\n");
        free(buf);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* Loads the tokenizer from --tokenizer FILE or -m DIR. */
static av_tokenizer *load_tokenizer(const char *model_dir, const char *tokenizer_file) {
    if (tokenizer_file) return av_tokenizer_load(tokenizer_file);

    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer.model", model_dir);
    av_tokenizer *tok = av_tokenizer_load(path);
    if (!tok) return NULL;
    snprintf(path, sizeof path, "%s/added_tokens.json", model_dir);
    if (access(path, F_OK) == 0 && av_tokenizer_load_added_tokens(tok, path) != AV_OK) {
        av_tokenizer_free(tok);
        return NULL;
    }
    return tok;
}

/* Prints a piece with control characters as \xNN, so that each token stays
 * on one line. */
static void print_piece(const char *piece) {
    for (const unsigned char *p = (const unsigned char *)piece; *p; p++) {
        if (*p < 0x20 || *p == 0x7f)
            printf("\\x%02X", *p);
        else
            putchar(*p);
    }
}

/* Returns a JSON string of piece; invalid UTF-8 bytes become U+FFFD. */
static json_t *json_piece(const char *piece) {
    json_t *s = json_string(piece);
    if (s) return s;
    size_t len = strlen(piece);
    char *fixed = malloc(3 * len + 1);
    if (!fixed) return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)piece[i];
        if (c < 0x80) {
            fixed[n++] = (char)c;
        } else {
            memcpy(fixed + n, "\xef\xbf\xbd", 3);
            n += 3;
        }
    }
    fixed[n] = '\0';
    s = json_string(fixed);
    free(fixed);
    return s;
}

static int print_json(const av_tokenizer *tok, const int32_t *ids, int n) {
    json_t *root = json_object(), *id_array = json_array(), *piece_array = json_array();
    json_object_set_new(root, "ids", id_array);
    json_object_set_new(root, "pieces", piece_array);
    for (int i = 0; i < n; i++) {
        json_array_append_new(id_array, json_integer(ids[i]));
        json_array_append_new(piece_array, json_piece(av_tokenizer_piece(tok, ids[i])));
    }
    char *text = json_dumps(root, 0);
    json_decref(root);
    if (!text) {
        fprintf(stderr, "airavata tokenize: out of memory writing JSON\n");
        return AV_EXIT_FAILURE;
    }
    printf("%s\n", text);
    free(text);
    return AV_EXIT_OK;
}

typedef struct {
    const char *model_dir, *tokenizer_file, *text;
    int json, no_bos, chat;
} tokenize_args;

/* Returns -1 on success, else the exit code to return. */
static int parse_args(int argc, char **argv, tokenize_args *args) {
    memset(args, 0, sizeof *args);
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            print_usage(stdout);
            return AV_EXIT_OK;
        } else if (!strcmp(arg, "-m") || !strcmp(arg, "--model") || !strcmp(arg, "--tokenizer")) {
            if (i + 1 >= argc) return usage_error("%s requires a value", arg);
            if (!strcmp(arg, "--tokenizer"))
                args->tokenizer_file = argv[++i];
            else
                args->model_dir = argv[++i];
        } else if (!strcmp(arg, "--json")) {
            args->json = 1;
        } else if (!strcmp(arg, "--no-bos")) {
            args->no_bos = 1;
        } else if (!strcmp(arg, "--chat")) {
            args->chat = 1;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            return usage_error("unknown option '%s'", arg);
        } else if (args->text) {
            return usage_error("more than one TEXT given ('%s'); quote the text", arg);
        } else {
            args->text = arg;
        }
    }
    if (!args->model_dir && !args->tokenizer_file)
        return usage_error("%s", "one of -m DIR or --tokenizer FILE is required");
    if (args->model_dir && args->tokenizer_file)
        return usage_error("%s", "-m and --tokenizer are exclusive; give one");
    if (!args->text) return usage_error("%s", "TEXT is required ('-' reads standard input)");
    return -1;
}

/* Encodes text (or its chat prompt) into a malloc'd id array. */
static int32_t *encode_text(const av_tokenizer *tok, const tokenize_args *args, const char *text,
                            size_t len, int *n_ids) {
    char *prompt = NULL;
    int flags = args->no_bos ? 0 : AV_TOKENIZE_BOS;
    if (args->chat) {
        av_chat_message message = {"user", text};
        prompt = av_chat_format(&message, 1);
        if (!prompt) return NULL;
        text = prompt;
        len = strlen(prompt);
        flags = AV_TOKENIZE_PARSE_SPECIAL; /* the template starts with <s> */
    }
    int n = av_tokenize(tok, text, len, flags, NULL, 0);
    int32_t *ids = n >= 0 ? malloc(((size_t)n + 1) * sizeof *ids) : NULL;
    if (n >= 0 && !ids) av_set_error(AV_ERR_NOMEM, "out of memory for %d token ids", n);
    if (ids && av_tokenize(tok, text, len, flags, ids, n) != n) {
        free(ids);
        ids = NULL;
    }
    free(prompt);
    if (!ids) return NULL;
    /* With --chat, --no-bos drops the template's leading <s>. */
    if (args->chat && args->no_bos && n > 0 && ids[0] == av_tokenizer_bos(tok)) {
        memmove(ids, ids + 1, (size_t)(n - 1) * sizeof *ids);
        n--;
    }
    *n_ids = n;
    return ids;
}

int cmd_tokenize(int argc, char **argv) {
    tokenize_args args;
    int rc = parse_args(argc, argv, &args);
    if (rc >= 0) return rc;

    size_t len = 0;
    char *stdin_text = NULL;
    const char *text = args.text;
    if (!strcmp(text, "-")) {
        stdin_text = read_stdin(&len);
        if (!stdin_text) return AV_EXIT_FAILURE;
        text = stdin_text;
        if (args.chat && strlen(text) != len) {
            fprintf(stderr, "airavata tokenize: --chat text contains a NUL byte\n");
            free(stdin_text);
            return AV_EXIT_FAILURE;
        }
    } else {
        len = strlen(text);
    }

    av_tokenizer *tok = load_tokenizer(args.model_dir, args.tokenizer_file);
    if (!tok) {
        fprintf(stderr, "airavata tokenize: %s\n", av_last_error());
        free(stdin_text);
        return AV_EXIT_FAILURE;
    }

    int n = 0;
    int32_t *ids = encode_text(tok, &args, text, len, &n);
    if (!ids) {
        fprintf(stderr, "airavata tokenize: %s\n", av_last_error());
        rc = AV_EXIT_FAILURE;
    } else if (args.json) {
        rc = print_json(tok, ids, n);
    } else {
        for (int i = 0; i < n; i++) {
            printf("%d\t", (int)ids[i]);
            print_piece(av_tokenizer_piece(tok, ids[i]));
            putchar('\n');
        }
        rc = AV_EXIT_OK;
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "airavata tokenize: writing standard output failed: %s\n",
                strerror(errno));
        rc = AV_EXIT_FAILURE;
    }
    free(ids);
    av_tokenizer_free(tok);
    free(stdin_text);
    return rc;
}
