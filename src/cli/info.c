/*
 * info.c - `airavata info`: describes a checkpoint directory without
 * running it.
 *
 * Prints the architecture and config.json values, the tensor count, the
 * tensors and bytes per dtype, the parameter count and size, and the
 * safetensors files; for bitsandbytes checkpoints also the quantization,
 * the bits per weight and the size in memory once loaded. Only the loader
 * and the quantized-weight reader are used, so this works on checkpoints
 * whose tokenizer is missing and shows what a load would read.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "airavata.h"
#include "cli.h"
#include "kernels/kernels.h"
#include "loader/loader.h"
#include "quant/quant.h"

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

static const double GIB = 1024.0 * 1024.0 * 1024.0;

/* The quantized Linear weights of a bitsandbytes checkpoint, as the
 * model binds them (src/model/model.c): NF4 codes with one float per
 * block, F32 when the column count is not a multiple of AV_QGROUP; INT8
 * rows padded to AV_QGROUP with one float per row. */
typedef struct {
    int matrices;
    int blocksize;            /* NF4: of the first matrix */
    int double_quant;
    uint64_t parameters;      /* weights of the quantized matrices */
    uint64_t stored_elements; /* elements of their tensors as stored (packed codes,
                                 absmax, quant state, ...) */
    uint64_t file_bytes;      /* their tensors in the checkpoint */
    uint64_t memory_bytes;    /* their size once bound */
} quant_totals;

static uint64_t bound_bytes(const av_quant_weight *w) {
    const uint64_t rows = (uint64_t)w->rows, cols = (uint64_t)w->cols;
    if (w->method == AV_QUANT_INT8)
        return rows * ((cols + AV_QGROUP - 1) / AV_QGROUP * AV_QGROUP) + rows * sizeof(float);
    av_matrix m;
    if (av_matrix_nf4(&m, w->rows, w->cols, w->codes, w->absmax, w->blocksize) == AV_OK)
        return av_matrix_bytes(&m);
    return rows * cols * sizeof(float);
}

/* Reads every quantized Linear weight (which validates it) into totals. */
static av_status count_quantized(const av_checkpoint *ckpt, quant_totals *q) {
    const av_config *c = av_checkpoint_config(ckpt);
    memset(q, 0, sizeof *q);
    int64_t D = c->dim, F = c->hidden_dim, qd = (int64_t)c->n_heads * c->head_dim;
    int64_t kv = (int64_t)c->n_kv_heads * c->head_dim;
    const struct { const char *module; int64_t rows, cols; } linears[7] = {
        {"self_attn.q_proj", qd, D}, {"self_attn.k_proj", kv, D}, {"self_attn.v_proj", kv, D},
        {"self_attn.o_proj", D, qd}, {"mlp.gate_proj", F, D},     {"mlp.up_proj", F, D},
        {"mlp.down_proj", D, F},
    };
    for (int l = 0; l <= c->n_layers; l++) {
        for (int k = 0; k < 7; k++) {
            char module[160], name[180];
            int64_t rows = linears[k].rows, cols = linears[k].cols;
            if (l == c->n_layers) {
                /* lm_head, after the layers; a tied head is the embedding. */
                if (k > 0 || c->tie_embeddings) break;
                snprintf(module, sizeof module, "lm_head");
                rows = c->vocab_size;
                cols = D;
            } else {
                snprintf(module, sizeof module, "model.layers.%d.%s", l, linears[k].module);
            }
            if (av_quant_module_skipped(&c->quant, module)) continue;
            snprintf(name, sizeof name, "%s.weight", module);
            av_quant_weight w;
            av_status status = av_quant_weight_load(ckpt, name, rows, cols, &w);
            if (status) return status;
            if (!q->matrices++) {
                q->blocksize = w.blocksize;
                q->double_quant = w.double_quant;
            }
            q->parameters += (uint64_t)(rows * cols);
            q->stored_elements += av_checkpoint_module_elements(ckpt, module);
            q->file_bytes += av_checkpoint_module_bytes(ckpt, module);
            q->memory_bytes += bound_bytes(&w);
            av_quant_weight_free(&w);
        }
    }
    return AV_OK;
}

/* Weights of the model: stored elements, with each quantized matrix counted
 * as its rows x cols weights instead of its packed codes and quant state. */
static uint64_t model_parameters(const checkpoint_totals *totals, const quant_totals *q) {
    return totals->parameters - q->stored_elements + q->parameters;
}

/* The modules config.json keeps in 16 bits, as text. */
static void skipped_modules_text(const av_quant_config *quant, char *buf, size_t size) {
    if (quant->n_skip_modules < 0) {
        snprintf(buf, size, "lm_head (the default when llm_int8_skip_modules is null)");
        return;
    }
    size_t n = (size_t)snprintf(buf, size, "%s", quant->n_skip_modules ? "" : "none");
    for (int i = 0; i < quant->n_skip_modules && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%s", i ? ", " : "", quant->skip_modules[i]);
}

static const char *quant_method_name(av_quant_method method) {
    return method == AV_QUANT_NF4 ? "bitsandbytes 4-bit" : "bitsandbytes 8-bit (LLM.int8)";
}

static void print_quantization(const av_checkpoint *ckpt, const checkpoint_totals *totals,
                               const quant_totals *q) {
    const av_quant_config *quant = &av_checkpoint_config(ckpt)->quant;
    char skipped[1200];
    skipped_modules_text(quant, skipped, sizeof skipped);
    uint64_t memory = totals->total_bytes - q->file_bytes + q->memory_bytes;
    double params = q->parameters ? (double)q->parameters : 1.0;
    printf("quantization:      %s\n", quant_method_name(quant->method));
    printf("  quant type       %s\n", quant->method == AV_QUANT_NF4 ? "nf4" : "int8");
    if (quant->method == AV_QUANT_NF4) {
        printf("  double quant     %s\n", q->double_quant ? "yes" : "no");
        printf("  block size       %d\n", q->blocksize);
        printf("  compute dtype    %s\n", av_dtype_name(quant->compute_dtype));
    }
    printf("  16-bit modules   %s; embeddings and norms are never quantized\n", skipped);
    printf("  matrices         %d quantized, %llu weights\n", q->matrices,
           (unsigned long long)q->parameters);
    printf("  bits per weight  %.3f on disk, %.3f in memory (scales included)\n",
           8.0 * (double)q->file_bytes / params, 8.0 * (double)q->memory_bytes / params);
    printf("  size in memory   %llu bytes (%.3f GiB) after repacking\n",
           (unsigned long long)memory, (double)memory / GIB);
}

static const char *base_name(const char *path) {
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* Warns when the tensors carry bitsandbytes quantization state but
 * config.json has no quantization_config: the counts would then treat
 * packed codes as weights, and generate fails. */
static void warn_lost_quantization_config(const av_checkpoint *ckpt) {
    if (av_checkpoint_config(ckpt)->quant.method != AV_QUANT_NONE) return;
    static const char *const suffixes[] = {".quant_state.bitsandbytes__nf4", ".SCB"};
    for (int i = 0; i < av_checkpoint_tensor_count(ckpt); i++) {
        const char *name = av_checkpoint_tensor(ckpt, i)->name;
        size_t n = strlen(name);
        for (int k = 0; k < 2; k++) {
            size_t m = strlen(suffixes[k]);
            if (n > m && strcmp(name + n - m, suffixes[k]) == 0) {
                fprintf(stderr,
                        "airavata info: warning: %s is bitsandbytes quantization state, but "
                        "config.json has no quantization_config; the counts below treat packed "
                        "codes as weights (restore the quantization_config block)\n",
                        name);
                return;
            }
        }
    }
}

static void print_text(const av_checkpoint *ckpt, const checkpoint_totals *totals,
                       const quant_totals *q) {
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
    printf("parameters:        %llu\n", (unsigned long long)model_parameters(totals, q));
    printf("size:              %llu bytes (%.3f GiB)\n",
           (unsigned long long)totals->total_bytes, (double)totals->total_bytes / GIB);
    if (c->quant.method != AV_QUANT_NONE) print_quantization(ckpt, totals, q);
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

static json_t *quantization_json(const av_checkpoint *ckpt, const checkpoint_totals *totals,
                                 const quant_totals *q) {
    const av_quant_config *quant = &av_checkpoint_config(ckpt)->quant;
    if (quant->method == AV_QUANT_NONE) return json_null();
    json_t *skipped = json_array();
    if (quant->n_skip_modules < 0) json_array_append_new(skipped, json_string("lm_head"));
    for (int i = 0; i < quant->n_skip_modules; i++)
        json_array_append_new(skipped, json_string(quant->skip_modules[i]));
    double params = q->parameters ? (double)q->parameters : 1.0;
    uint64_t memory = totals->total_bytes - q->file_bytes + q->memory_bytes;
    json_t *o = json_pack("{s:s, s:s, s:o, s:i, s:I, s:f, s:f, s:I, s:I}", "method",
                          "bitsandbytes", "quant_type",
                          quant->method == AV_QUANT_NF4 ? "nf4" : "int8", "skip_modules", skipped,
                          "quantized_matrices", q->matrices, "quantized_parameters",
                          (json_int_t)q->parameters, "bits_per_weight_file",
                          8.0 * (double)q->file_bytes / params, "bits_per_weight_memory",
                          8.0 * (double)q->memory_bytes / params, "memory_bytes",
                          (json_int_t)memory, "file_bytes", (json_int_t)totals->total_bytes);
    if (o && quant->method == AV_QUANT_NF4) {
        json_object_set_new(o, "double_quant", json_boolean(q->double_quant));
        json_object_set_new(o, "blocksize", json_integer(q->blocksize));
    }
    return o;
}

static int print_json(const av_checkpoint *ckpt, const checkpoint_totals *totals,
                      const quant_totals *q) {
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
                             (json_int_t)model_parameters(totals, q), "bytes",
                             (json_int_t)totals->total_bytes, "gib",
                             (double)totals->total_bytes / GIB, "files", files);
    if (root) json_object_set_new(root, "quantization", quantization_json(ckpt, totals, q));
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
    warn_lost_quantization_config(ckpt);
    checkpoint_totals totals;
    quant_totals quantized = {0};
    int rc = AV_EXIT_FAILURE;
    if (count_totals(ckpt, &totals) != 0) {
        fprintf(stderr, "airavata info: out of memory\n");
    } else if (av_checkpoint_config(ckpt)->quant.method != AV_QUANT_NONE &&
               count_quantized(ckpt, &quantized) != AV_OK) {
        fprintf(stderr, "airavata info: %s\n", av_last_error());
    } else if (as_json) {
        rc = print_json(ckpt, &totals, &quantized);
    } else {
        print_text(ckpt, &totals, &quantized);
        rc = AV_EXIT_OK;
    }
    free(totals.file_tensors);
    free(totals.file_bytes);
    av_checkpoint_close(ckpt);
    return rc;
}
