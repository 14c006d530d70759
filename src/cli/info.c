/*
 * info.c - `airavata info`: describes a checkpoint directory without
 * running it.
 *
 * Prints the architecture and config.json values, the tensor count, the
 * tensors and bytes per dtype, the parameter count and size, and the
 * safetensors files. Only the loader is used, so this works on checkpoints
 * whose tokenizer is missing and shows what a load would read.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "airavata.h"
#include "cli.h"
#include "loader/loader.h"

static void print_help(FILE *out) {
    fprintf(out,
            "usage: airavata info -m DIR [--json]\n\n"
            "Prints a checkpoint's architecture and configuration, its tensors grouped by\n"
            "dtype, the parameter count, the total size and its safetensors files.\n\n"
            "options:\n"
            "  -m, --model DIR  model directory (config.json and model.safetensors or\n"
            "                   model.safetensors.index.json with its shards)\n"
            "      --json       print one JSON object instead of text\n"
            "  -h, --help       print this help\n");
}

/* Totals over the checkpoint's tensors. */
typedef struct {
    int tensors[AV_DTYPE_COUNT];
    uint64_t bytes[AV_DTYPE_COUNT];
    uint64_t parameters;
    uint64_t total_bytes;
    int *file_tensors;       /* per file */
    uint64_t *file_bytes;    /* per file */
} checkpoint_totals;

static int count_totals(const av_checkpoint *ckpt, checkpoint_totals *totals) {
    memset(totals, 0, sizeof *totals);
    int n_files = av_checkpoint_file_count(ckpt);
    totals->file_tensors = calloc((size_t)n_files + 1, sizeof *totals->file_tensors);
    totals->file_bytes = calloc((size_t)n_files + 1, sizeof *totals->file_bytes);
    if (!totals->file_tensors || !totals->file_bytes) return -1;
    for (int i = 0; i < av_checkpoint_tensor_count(ckpt); i++) {
        const av_tensor *t = av_checkpoint_tensor(ckpt, i);
        totals->tensors[t->dtype]++;
        totals->bytes[t->dtype] += t->nbytes;
        totals->parameters += (uint64_t)t->numel;
        totals->total_bytes += t->nbytes;
        for (int f = 0; f < n_files; f++)
            if (!strcmp(t->file, av_checkpoint_file_path(ckpt, f))) {
                totals->file_tensors[f]++;
                totals->file_bytes[f] += t->nbytes;
            }
    }
    return 0;
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static const double GIB = 1024.0 * 1024.0 * 1024.0;

static void print_text(const av_checkpoint *ckpt, const checkpoint_totals *totals) {
    const av_config *c = av_checkpoint_config(ckpt);
    printf("model:             %s\n", av_checkpoint_dir(ckpt));
    printf("architecture:      %s\n", c->architecture);
    printf("layers:            %d\n", c->n_layers);
    printf("heads:             %d\n", c->n_heads);
    printf("kv heads:          %d\n", c->n_kv_heads);
    printf("head dim:          %d\n", c->head_dim);
    printf("hidden size:       %d\n", c->dim);
    printf("intermediate size: %d\n", c->hidden_dim);
    printf("vocab size:        %d\n", c->vocab_size);
    printf("context length:    %d\n", c->max_seq_len);
    printf("rope theta:        %g\n", c->rope_theta);
    printf("rms norm eps:      %g\n", c->norm_eps);
    printf("tied embeddings:   %s\n", c->tie_embeddings ? "yes" : "no");
    printf("torch dtype:       %s\n", av_dtype_name(c->torch_dtype));
    printf("bos id:            %d\n", c->bos_id);
    printf("eos id:            %d\n", c->eos_id);
    printf("tensors:           %d\n", av_checkpoint_tensor_count(ckpt));
    for (int d = 0; d < AV_DTYPE_COUNT; d++)
        if (totals->tensors[d])
            printf("  %-5s            %d tensors, %llu bytes\n", av_dtype_name((av_dtype)d),
                   totals->tensors[d], (unsigned long long)totals->bytes[d]);
    printf("parameters:        %llu\n", (unsigned long long)totals->parameters);
    printf("size:              %llu bytes (%.3f GiB)\n",
           (unsigned long long)totals->total_bytes, (double)totals->total_bytes / GIB);
    printf("files:             %d\n", av_checkpoint_file_count(ckpt));
    for (int f = 0; f < av_checkpoint_file_count(ckpt); f++)
        printf("  %s  %d tensors, %llu bytes\n", base_name(av_checkpoint_file_path(ckpt, f)),
               totals->file_tensors[f], (unsigned long long)totals->file_bytes[f]);
}

/* Returns f rounded to 7 significant decimal digits, so that JSON shows
 * 1e-05 for the float nearest 1e-5 instead of 9.9999997473787516e-06. */
static double float_for_json(float f) {
    char text[32];
    snprintf(text, sizeof text, "%.7g", (double)f);
    return strtod(text, NULL);
}

static json_t *config_json(const av_config *c) {
    return json_pack("{s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:b, s:i, s:i, s:s}",
                     "architecture", c->architecture, "num_hidden_layers", c->n_layers,
                     "num_attention_heads", c->n_heads, "num_key_value_heads", c->n_kv_heads,
                     "head_dim", c->head_dim, "hidden_size", c->dim, "intermediate_size",
                     c->hidden_dim, "vocab_size", c->vocab_size, "max_position_embeddings",
                     c->max_seq_len, "rope_theta", float_for_json(c->rope_theta),
                     "rms_norm_eps", float_for_json(c->norm_eps), "tie_word_embeddings",
                     c->tie_embeddings,
                     "bos_token_id", c->bos_id, "eos_token_id", c->eos_id, "torch_dtype",
                     av_dtype_name(c->torch_dtype));
}

static int print_json(const av_checkpoint *ckpt, const checkpoint_totals *totals) {
    json_t *dtypes = json_object(), *files = json_array();
    for (int d = 0; dtypes && d < AV_DTYPE_COUNT; d++)
        if (totals->tensors[d])
            json_object_set_new(dtypes, av_dtype_name((av_dtype)d),
                                json_pack("{s:i, s:I}", "tensors", totals->tensors[d], "bytes",
                                          (json_int_t)totals->bytes[d]));
    for (int f = 0; files && f < av_checkpoint_file_count(ckpt); f++)
        json_array_append_new(files,
                              json_pack("{s:s, s:i, s:I}", "name",
                                        base_name(av_checkpoint_file_path(ckpt, f)), "tensors",
                                        totals->file_tensors[f], "bytes",
                                        (json_int_t)totals->file_bytes[f]));
    json_t *root = json_pack("{s:s, s:o, s:i, s:o, s:I, s:I, s:f, s:o}", "model",
                             av_checkpoint_dir(ckpt), "config",
                             config_json(av_checkpoint_config(ckpt)), "tensor_count",
                             av_checkpoint_tensor_count(ckpt), "dtypes", dtypes, "parameters",
                             (json_int_t)totals->parameters, "bytes",
                             (json_int_t)totals->total_bytes, "gib",
                             (double)totals->total_bytes / GIB, "files", files);
    char *text = root ? json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!text) {
        fprintf(stderr, "airavata info: out of memory\n");
        return AV_EXIT_FAILURE;
    }
    printf("%s\n", text);
    free(text);
    return AV_EXIT_OK;
}

int cmd_info(int argc, char **argv) {
    const char *dir = NULL;
    int as_json = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
            print_help(stdout);
            return AV_EXIT_OK;
        } else if (!strcmp(arg, "--json")) {
            as_json = 1;
        } else if (!strcmp(arg, "-m") || !strcmp(arg, "--model")) {
            if (i + 1 >= argc) {
                fprintf(stderr, "airavata info: %s needs a directory argument\n", arg);
                return AV_EXIT_USAGE;
            }
            dir = argv[++i];
        } else {
            fprintf(stderr, "airavata info: unknown option '%s'; run 'airavata info --help'\n",
                    arg);
            return AV_EXIT_USAGE;
        }
    }
    if (!dir) {
        fprintf(stderr, "airavata info: missing -m DIR; run 'airavata info --help'\n");
        return AV_EXIT_USAGE;
    }

    av_checkpoint *ckpt = av_checkpoint_open(dir);
    if (!ckpt) {
        fprintf(stderr, "airavata info: %s\n", av_last_error());
        return AV_EXIT_FAILURE;
    }
    checkpoint_totals totals;
    int rc = AV_EXIT_FAILURE;
    if (count_totals(ckpt, &totals) != 0) {
        fprintf(stderr, "airavata info: out of memory\n");
    } else if (as_json) {
        rc = print_json(ckpt, &totals);
    } else {
        print_text(ckpt, &totals);
        rc = AV_EXIT_OK;
    }
    free(totals.file_tensors);
    free(totals.file_bytes);
    av_checkpoint_close(ckpt);
    return rc;
}
