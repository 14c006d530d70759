/*
 * quantize.c - the streaming checkpoint converter behind `airavata quantize`.
 *
 * It writes what transformers' save_pretrained writes for a model loaded
 * with a BitsAndBytesConfig: the same tensor names, with each quantized
 * Linear weight replaced by the bitsandbytes tensors (see bnb_state.c),
 * config.json with a quantization_config block, and the tokenizer and
 * generation files copied. Only the Linear weights of the decoder layers
 * (the *_proj.weight matrices) are quantized; embeddings, norms and lm_head
 * stay as stored, as transformers keeps them, unless quantize_head is set.
 * The bf16 and f16 targets convert every float tensor instead.
 *
 * Memory: the input stays memory-mapped, and only the tensor being
 * converted has buffers of its own (about 0.6 bytes per value for NF4, 1
 * for int8, 16 MB chunks for copies). The header of a safetensors file
 * lists every tensor's size before any data, and the size of an NF4 quant
 * state depends on the text of its offset, so a first pass computes the
 * block absmax of each double-quantized weight; the second pass quantizes.
 *
 * Output is atomic: files go into OUT.tmp-XXXXXX beside OUT, which is
 * renamed to OUT at the end. Any failure or cancellation removes it.
 */
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "quant.h"

#define DEFAULT_SHARD_BYTES (5ull << 30)
#define COPY_CHUNK_BYTES ((size_t)16 << 20)
#define CONFIG_FILE_MAX (1u << 20)

typedef enum { KIND_COPY, KIND_CONVERT, KIND_NF4, KIND_INT8 } tensor_kind;

/* One input tensor and what becomes of it. */
typedef struct {
    const av_tensor *in;
    tensor_kind kind;
    uint64_t out_bytes;   /* bytes of all its output tensors */
    int shard;            /* index of the output file */
    av_nf4_state state;   /* NF4 */
    char state_json[256]; /* NF4 */
    int state_len;
} plan_item;

typedef struct {
    const av_quantize_options *opt;
    av_dtype target_dtype;   /* bf16 / f16 targets */
    av_checkpoint *ckpt;
    plan_item *items;
    int n_items;
    int n_shards;
    char *tmp_dir;
    uint64_t done_bytes, total_bytes;
} converter;

static int is_float_dtype(av_dtype d) {
    return d == AV_DTYPE_F32 || d == AV_DTYPE_F16 || d == AV_DTYPE_BF16;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

static av_status check_cancel(const converter *cv) {
    if (cv->opt->cancel && *cv->opt->cancel)
        return av_set_error(AV_ERR_IO, "interrupted");
    return AV_OK;
}

/* ---- planning -------------------------------------------------------- */

/* The decoder's Linear weights, which bitsandbytes replaces; lm_head only
 * on request. */
static int is_quantized_linear(const av_tensor *t, int quantize_head) {
    if (t->ndim != 2 || !is_float_dtype(t->dtype)) return 0;
    if (!strcmp(t->name, "lm_head.weight")) return quantize_head;
    return !strncmp(t->name, "model.layers.", 13) && ends_with(t->name, "_proj.weight");
}

static av_status check_finite(const av_tensor *t) {
    int64_t bad = av_find_nonfinite(t->data, t->dtype, t->numel);
    if (bad >= 0)
        return av_set_error(AV_ERR_INVALID,
                            "%s in %s: value %lld is %g; quantization needs finite weights",
                            t->name, t->file, (long long)bad,
                            (double)av_load_f32(t->data, t->dtype, bad));
    return AV_OK;
}

/* Fills the quant state of an NF4 tensor; with double quantization that
 * needs the block absmax and its mean. */
static av_status plan_nf4(converter *cv, plan_item *it) {
    const av_tensor *t = it->in;
    int bs = cv->opt->blocksize;
    av_status status = check_finite(t);
    if (status) return status;
    int64_t n = t->numel, n_blocks = (n + bs - 1) / bs;
    it->state = (av_nf4_state){.blocksize = bs, .dtype = t->dtype, .ndim = 2,
                               .shape = {t->shape[0], t->shape[1]},
                               .nested = cv->opt->double_quant,
                               .nested_blocksize = AV_NF4_NESTED_BLOCKSIZE};
    uint64_t bytes = (uint64_t)(n + 1) / 2 + 16 * 4;
    if (it->state.nested) {
        float *absmax = malloc((size_t)n_blocks * sizeof *absmax);
        if (!absmax) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", t->name);
        av_nf4_absmax(t->data, t->dtype, n, bs, absmax);
        it->state.nested_offset = av_torch_mean_f32(absmax, n_blocks);
        free(absmax);
        int64_t n_nested = (n_blocks + AV_NF4_NESTED_BLOCKSIZE - 1) / AV_NF4_NESTED_BLOCKSIZE;
        bytes += (uint64_t)n_blocks + (uint64_t)n_nested * 4 + AV_DYNAMIC_MAP_SIZE * 4;
    } else {
        bytes += (uint64_t)n_blocks * 4;
    }
    it->state_len = av_nf4_state_format(&it->state, it->state_json, sizeof it->state_json);
    if (it->state_len < 0)
        return av_set_error(AV_ERR_INVALID, "%s: quant state does not fit", t->name);
    it->out_bytes = bytes + (uint64_t)it->state_len;
    return AV_OK;
}

static av_status plan_item_for(converter *cv, plan_item *it) {
    const av_tensor *t = it->in;
    av_quantize_target target = cv->opt->target;
    if (target == AV_TARGET_BF16 || target == AV_TARGET_F16) {
        it->kind = is_float_dtype(t->dtype) ? KIND_CONVERT : KIND_COPY;
        it->out_bytes = it->kind == KIND_CONVERT ? (uint64_t)t->numel * 2 : t->nbytes;
        return AV_OK;
    }
    if (!is_quantized_linear(t, cv->opt->quantize_head)) {
        it->kind = KIND_COPY;
        it->out_bytes = t->nbytes;
        return AV_OK;
    }
    if (target == AV_TARGET_INT8) {
        it->kind = KIND_INT8;
        it->out_bytes = (uint64_t)t->numel + (uint64_t)t->shape[0] * 4 + 1;
        return AV_OK;
    }
    it->kind = KIND_NF4;
    return plan_nf4(cv, it);
}

/* Decides every tensor's output and its shard; a tensor and its quant
 * state stay in one shard. */
static av_status make_plan(converter *cv) {
    int n = av_checkpoint_tensor_count(cv->ckpt);
    if (!(cv->items = calloc((size_t)n, sizeof *cv->items)))
        return av_set_error(AV_ERR_NOMEM, "out of memory");
    uint64_t limit = cv->opt->shard_bytes ? cv->opt->shard_bytes : DEFAULT_SHARD_BYTES;
    uint64_t in_shard = 0;
    int shard = 0;
    int tied = av_checkpoint_config(cv->ckpt)->tie_embeddings;
    for (int i = 0; i < n; i++) {
        const av_tensor *t = av_checkpoint_tensor(cv->ckpt, i);
        /* transformers does not save a head tied to the embeddings. */
        if (tied && !strcmp(t->name, "lm_head.weight")) continue;
        plan_item *it = &cv->items[cv->n_items++];
        it->in = t;
        av_status status = plan_item_for(cv, it);
        if (status) return status;
        if (in_shard > 0 && in_shard + it->out_bytes > limit) {
            shard++;
            in_shard = 0;
        }
        it->shard = shard;
        in_shard += it->out_bytes;
        cv->total_bytes += it->in->nbytes;
    }
    cv->n_shards = shard + 1;
    return AV_OK;
}

/* ---- writing tensors -------------------------------------------------- */

static void shard_name(const converter *cv, int shard, char *buf, size_t size) {
    if (cv->n_shards == 1)
        snprintf(buf, size, "model.safetensors");
    else
        snprintf(buf, size, "model-%05d-of-%05d.safetensors", shard + 1, cv->n_shards);
}

static av_status declare(av_st_writer *w, const char *base, const char *suffix, av_dtype dtype,
                         int ndim, int64_t d0, int64_t d1) {
    char name[512];
    snprintf(name, sizeof name, "%s%s", base, suffix);
    int64_t shape[2] = {d0, d1};
    return av_st_writer_declare(w, name, dtype, ndim, shape);
}

/* Declares the output tensors of one input, in the order write_item
 * writes them. */
static av_status declare_item(av_st_writer *w, const converter *cv, const plan_item *it) {
    const av_tensor *t = it->in;
    av_status s = AV_OK;
    switch (it->kind) {
    case KIND_COPY: return av_st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape);
    case KIND_CONVERT: return av_st_writer_declare(w, t->name, cv->target_dtype, t->ndim, t->shape);
    case KIND_INT8: {
        char module[448];
        snprintf(module, sizeof module, "%.*s", (int)(strlen(t->name) - 7), t->name);
        if ((s = av_st_writer_declare(w, t->name, AV_DTYPE_I8, 2, t->shape)) ||
            (s = declare(w, module, ".SCB", AV_DTYPE_F32, 1, t->shape[0], 0)))
            return s;
        return declare(w, module, ".weight_format", AV_DTYPE_U8, 0, 0, 0);
    }
    case KIND_NF4: {
        int64_t n = t->numel, n_blocks = (n + it->state.blocksize - 1) / it->state.blocksize;
        if ((s = declare(w, t->name, "", AV_DTYPE_U8, 2, (n + 1) / 2, 1)) ||
            (s = declare(w, t->name, ".absmax", it->state.nested ? AV_DTYPE_U8 : AV_DTYPE_F32, 1,
                         n_blocks, 0)) ||
            (s = declare(w, t->name, ".quant_map", AV_DTYPE_F32, 1, 16, 0)))
            return s;
        if (it->state.nested &&
            ((s = declare(w, t->name, ".nested_absmax", AV_DTYPE_F32, 1,
                          (n_blocks + AV_NF4_NESTED_BLOCKSIZE - 1) / AV_NF4_NESTED_BLOCKSIZE, 0)) ||
             (s = declare(w, t->name, ".nested_quant_map", AV_DTYPE_F32, 1, AV_DYNAMIC_MAP_SIZE,
                          0))))
            return s;
        return declare(w, t->name, ".quant_state.bitsandbytes__nf4", AV_DTYPE_U8, 1,
                       it->state_len, 0);
    }
    }
    return s;
}

static av_status write_copy(av_st_writer *w, const converter *cv, const av_tensor *t) {
    const char *p = t->data;
    for (size_t done = 0; done < t->nbytes; done += COPY_CHUNK_BYTES) {
        size_t n = t->nbytes - done < COPY_CHUNK_BYTES ? t->nbytes - done : COPY_CHUNK_BYTES;
        av_status s = check_cancel(cv);
        if (s || (s = av_st_writer_write(w, p + done, n))) return s;
    }
    return AV_OK;
}

static av_status write_convert(av_st_writer *w, const converter *cv, const av_tensor *t) {
    const int64_t chunk = (int64_t)(COPY_CHUNK_BYTES / 2);
    uint16_t *buf = malloc((size_t)chunk * sizeof *buf);
    if (!buf) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", t->name);
    av_status s = AV_OK;
    for (int64_t start = 0; start < t->numel && !s; start += chunk) {
        int64_t n = t->numel - start < chunk ? t->numel - start : chunk;
        for (int64_t i = 0; i < n; i++) {
            float v = av_load_f32(t->data, t->dtype, start + i);
            buf[i] = cv->target_dtype == AV_DTYPE_BF16 ? av_f32_to_bf16(v) : av_f32_to_f16(v);
            if (cv->target_dtype == AV_DTYPE_F16 && isfinite(v) &&
                !isfinite(av_f16_to_f32(buf[i]))) {
                s = av_set_error(AV_ERR_RANGE,
                                 "%s in %s: value %g at index %lld is outside the float16 range "
                                 "(+-65504); convert to bf16 instead",
                                 t->name, t->file, (double)v, (long long)(start + i));
                break;
            }
        }
        if (!s && !(s = check_cancel(cv))) s = av_st_writer_write(w, buf, (size_t)n * 2);
    }
    free(buf);
    return s;
}

static av_status write_int8(av_st_writer *w, const av_tensor *t) {
    int64_t rows = t->shape[0], cols = t->shape[1];
    int8_t *q = malloc((size_t)t->numel);
    float *scb = malloc((size_t)rows * sizeof *scb);
    av_status s;
    if (!q || !scb)
        s = av_set_error(AV_ERR_NOMEM, "%s: out of memory", t->name);
    else if ((s = av_int8_quantize(t->data, t->dtype, rows, cols, q, scb)))
        s = av_set_error(s, "%s in %s: %s", t->name, t->file, av_last_error());
    else if (!(s = av_st_writer_write(w, q, (size_t)t->numel)) &&
             !(s = av_st_writer_write(w, scb, (size_t)rows * sizeof *scb))) {
        uint8_t row_major = 0;
        s = av_st_writer_write(w, &row_major, 1);
    }
    free(q);
    free(scb);
    return s;
}

static av_status write_nf4(av_st_writer *w, const plan_item *it) {
    const av_tensor *t = it->in;
    int64_t n = t->numel, bs = it->state.blocksize, n_blocks = (n + bs - 1) / bs;
    int64_t n_nested = (n_blocks + AV_NF4_NESTED_BLOCKSIZE - 1) / AV_NF4_NESTED_BLOCKSIZE;
    uint8_t *codes = malloc((size_t)(n + 1) / 2), *qabsmax = malloc((size_t)n_blocks);
    float *absmax = malloc((size_t)n_blocks * sizeof *absmax);
    float *nested = malloc((size_t)n_nested * sizeof *nested);
    av_status s = AV_OK;
    if (!codes || !qabsmax || !absmax || !nested) {
        s = av_set_error(AV_ERR_NOMEM, "%s: out of memory", t->name);
        goto done;
    }
    av_nf4_quantize(t->data, t->dtype, n, (int)bs, codes, absmax);
    if ((s = av_st_writer_write(w, codes, (size_t)(n + 1) / 2))) goto done;
    if (!it->state.nested) {
        if ((s = av_st_writer_write(w, absmax, (size_t)n_blocks * 4)) ||
            (s = av_st_writer_write(w, av_nf4_code, sizeof av_nf4_code)))
            goto done;
    } else {
        float offset, map[AV_DYNAMIC_MAP_SIZE];
        if ((s = av_nf4_double_quant(absmax, n_blocks, qabsmax, nested, &offset))) goto done;
        if (offset != it->state.nested_offset) {
            s = av_set_error(AV_ERR_INVALID, "%s: the weights changed while being read",
                             t->name);
            goto done;
        }
        av_dynamic_map(map);
        if ((s = av_st_writer_write(w, qabsmax, (size_t)n_blocks)) ||
            (s = av_st_writer_write(w, av_nf4_code, sizeof av_nf4_code)) ||
            (s = av_st_writer_write(w, nested, (size_t)n_nested * 4)) ||
            (s = av_st_writer_write(w, map, sizeof map)))
            goto done;
    }
    s = av_st_writer_write(w, it->state_json, (size_t)it->state_len);
done:
    free(codes);
    free(qabsmax);
    free(absmax);
    free(nested);
    return s;
}

static const char *kind_action(const converter *cv, tensor_kind kind) {
    switch (kind) {
    case KIND_NF4: return "nf4";
    case KIND_INT8: return "int8";
    case KIND_CONVERT: return cv->target_dtype == AV_DTYPE_BF16 ? "bf16" : "f16";
    default: return "copy";
    }
}

static av_status write_item(av_st_writer *w, converter *cv, const plan_item *it, int index) {
    av_status s = check_cancel(cv);
    if (s) return s;
    switch (it->kind) {
    case KIND_COPY: s = write_copy(w, cv, it->in); break;
    case KIND_CONVERT: s = write_convert(w, cv, it->in); break;
    case KIND_INT8: s = write_int8(w, it->in); break;
    case KIND_NF4: s = write_nf4(w, it); break;
    }
    if (s) return s;
    cv->done_bytes += it->in->nbytes;
    if (cv->opt->progress)
        cv->opt->progress(cv->opt->progress_user, index + 1, cv->n_items, it->in->name,
                          kind_action(cv, it->kind), cv->done_bytes, cv->total_bytes);
    return AV_OK;
}

static av_status write_shard(converter *cv, int shard) {
    char name[64], path[PATH_MAX];
    shard_name(cv, shard, name, sizeof name);
    snprintf(path, sizeof path, "%s/%s", cv->tmp_dir, name);
    av_st_writer *w = av_st_writer_create(path);
    if (!w) return AV_ERR_IO;
    av_status s = av_st_writer_add_metadata(w, "format", "pt");
    for (int i = 0; i < cv->n_items && !s; i++)
        if (cv->items[i].shard == shard) s = declare_item(w, cv, &cv->items[i]);
    for (int i = 0; i < cv->n_items && !s; i++)
        if (cv->items[i].shard == shard) s = write_item(w, cv, &cv->items[i], i);
    if (s) {
        av_st_writer_abort(w);
        return s;
    }
    return av_st_writer_finish(w);
}

/* ---- index, config and side files -------------------------------------- */

/* Dumps JSON with the fewest real-number digits that read back equal, so
 * 1e-05 is not written as 1.0000000000000001e-05. */
static char *dump_json(json_t *root) {
    for (int precision = 15; precision <= 17; precision++) {
        char *text = json_dumps(root, JSON_INDENT(2) | JSON_SORT_KEYS |
                                          JSON_REAL_PRECISION(precision));
        json_t *back = text ? json_loads(text, 0, NULL) : NULL;
        int same = back && json_equal(back, root);
        json_decref(back);
        if (same || precision == 17) return text;
        free(text);
    }
    return NULL;
}

static av_status write_text_file(const char *dir, const char *name, const char *text) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *fp = fopen(path, "wb");
    if (!fp) return av_set_error(AV_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
    int ok = fputs(text, fp) >= 0 && fputc('\n', fp) != EOF;
    ok = (fclose(fp) == 0) && ok;
    return ok ? AV_OK : av_set_error(AV_ERR_IO, "%s: write failed: %s", path, strerror(errno));
}

static av_status write_json_file(const char *dir, const char *name, json_t *root) {
    char *text = dump_json(root);
    if (!text) return av_set_error(AV_ERR_NOMEM, "%s: cannot serialize JSON", name);
    av_status s = write_text_file(dir, name, text);
    free(text);
    return s;
}

static av_status write_index(converter *cv) {
    json_t *root = json_object(), *meta = json_object(), *map = json_object();
    uint64_t total = 0;
    char name[64];
    for (int i = 0; i < cv->n_items; i++) {
        const plan_item *it = &cv->items[i];
        shard_name(cv, it->shard, name, sizeof name);
        total += it->out_bytes;
        const char *base = it->in->name;
        json_object_set_new(map, base, json_string(name));
        char full[512], module[448];
        if (it->kind == KIND_INT8) {
            snprintf(module, sizeof module, "%.*s", (int)(strlen(base) - 7), base);
            snprintf(full, sizeof full, "%s.SCB", module);
            json_object_set_new(map, full, json_string(name));
            snprintf(full, sizeof full, "%s.weight_format", module);
            json_object_set_new(map, full, json_string(name));
        } else if (it->kind == KIND_NF4) {
            static const char *const parts[] = {".absmax", ".quant_map", ".nested_absmax",
                                                ".nested_quant_map",
                                                ".quant_state.bitsandbytes__nf4"};
            for (int p = 0; p < 5; p++) {
                if (!it->state.nested && (p == 2 || p == 3)) continue;
                snprintf(full, sizeof full, "%s%s", base, parts[p]);
                json_object_set_new(map, full, json_string(name));
            }
        }
    }
    json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
    json_object_set_new(root, "metadata", meta);
    json_object_set_new(root, "weight_map", map);
    av_status s = write_json_file(cv->tmp_dir, "model.safetensors.index.json", root);
    json_decref(root);
    return s;
}

static const char *torch_dtype_string(av_dtype d) {
    if (d == AV_DTYPE_BF16) return "bfloat16";
    if (d == AV_DTYPE_F16) return "float16";
    return "float32";
}

/* BitsAndBytesConfig.to_dict() of transformers 5.25 for the chosen method. */
static json_t *quantization_block(const converter *cv) {
    int nf4 = cv->opt->target == AV_TARGET_NF4;
    const av_config *c = av_checkpoint_config(cv->ckpt);
    json_t *q = json_object();
    json_object_set_new(q, "_load_in_4bit", json_boolean(nf4));
    json_object_set_new(q, "_load_in_8bit", json_boolean(!nf4));
    json_object_set_new(q, "bnb_4bit_compute_dtype",
                        json_string(nf4 ? torch_dtype_string(c->torch_dtype) : "float32"));
    json_object_set_new(q, "bnb_4bit_quant_storage", json_string("uint8"));
    json_object_set_new(q, "bnb_4bit_quant_type", json_string(nf4 ? "nf4" : "fp4"));
    json_object_set_new(q, "bnb_4bit_use_double_quant",
                        json_boolean(nf4 && cv->opt->double_quant));
    json_object_set_new(q, "llm_int8_enable_fp32_cpu_offload", json_false());
    json_object_set_new(q, "llm_int8_has_fp16_weight", json_false());
    /* An explicit empty list makes transformers quantize lm_head too. A
     * head tied to the embeddings is not saved and stays 16-bit. */
    int head = cv->opt->quantize_head && !c->tie_embeddings &&
               av_checkpoint_find(cv->ckpt, "lm_head.weight");
    json_object_set_new(q, "llm_int8_skip_modules", head ? json_array() : json_null());
    json_object_set_new(q, "llm_int8_threshold", json_real(6.0));
    json_object_set_new(q, "load_in_4bit", json_boolean(nf4));
    json_object_set_new(q, "load_in_8bit", json_boolean(!nf4));
    json_object_set_new(q, "quant_method", json_string("bitsandbytes"));
    return q;
}

static av_status write_config(converter *cv) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/config.json", av_checkpoint_dir(cv->ckpt));
    json_t *root = NULL;
    av_status s = av_json_load_file(path, CONFIG_FILE_MAX, &root);
    if (s) return s;
    if (cv->opt->target == AV_TARGET_NF4 || cv->opt->target == AV_TARGET_INT8) {
        json_object_set_new(root, "quantization_config", quantization_block(cv));
    } else {
        json_t *name = json_string(torch_dtype_string(cv->target_dtype));
        int set = 0;
        if (json_object_get(root, "dtype")) set |= !json_object_set(root, "dtype", name);
        if (json_object_get(root, "torch_dtype") || !set)
            json_object_set(root, "torch_dtype", name);
        json_decref(name);
    }
    s = write_json_file(cv->tmp_dir, "config.json", root);
    json_decref(root);
    return s;
}

static av_status copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb");
    if (!in) return av_set_error(AV_ERR_IO, "%s: cannot open: %s", src, strerror(errno));
    FILE *out = fopen(dst, "wb");
    if (!out) {
        fclose(in);
        return av_set_error(AV_ERR_IO, "%s: cannot create: %s", dst, strerror(errno));
    }
    char buf[65536];
    size_t n;
    int ok = 1;
    while (ok && (n = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, n, out) == n;
    ok = ok && !ferror(in);
    fclose(in);
    ok = (fclose(out) == 0) && ok;
    return ok ? AV_OK : av_set_error(AV_ERR_IO, "copying %s to %s failed", src, dst);
}

static av_status copy_side_files(const converter *cv) {
    static const char *const names[] = {"tokenizer.model", "tokenizer.json",
                                        "tokenizer_config.json", "special_tokens_map.json",
                                        "added_tokens.json", "generation_config.json"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char src[PATH_MAX], dst[PATH_MAX];
        struct stat sb;
        snprintf(src, sizeof src, "%s/%s", av_checkpoint_dir(cv->ckpt), names[i]);
        if (stat(src, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        snprintf(dst, sizeof dst, "%s/%s", cv->tmp_dir, names[i]);
        av_status s = copy_file(src, dst);
        if (s) return s;
    }
    return AV_OK;
}

/* ---- output directory ------------------------------------------------- */

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void remove_tree(const char *dir) { nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS); }

static int dir_is_empty(const char *path) {
    DIR *d = opendir(path);
    if (!d) return 0;
    struct dirent *e;
    int empty = 1;
    while (empty && (e = readdir(d)))
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) empty = 0;
    closedir(d);
    return empty;
}

/* Checks that out_dir can be (re)placed: absent, or with force a model
 * directory (or an empty one) that does not contain the input. */
static av_status check_output(const char *in_dir, const char *out_dir, int force) {
    struct stat sb;
    if (lstat(out_dir, &sb) != 0) return AV_OK;
    if (!force)
        return av_set_error(AV_ERR_INVALID, "%s already exists; pass --force to replace it",
                            out_dir);
    if (!S_ISDIR(sb.st_mode))
        return av_set_error(AV_ERR_INVALID, "%s exists and is not a directory; remove it first",
                            out_dir);
    char in_real[PATH_MAX], out_real[PATH_MAX];
    if (!realpath(in_dir, in_real) || !realpath(out_dir, out_real))
        return av_set_error(AV_ERR_IO, "cannot resolve %s or %s: %s", in_dir, out_dir,
                            strerror(errno));
    size_t n = strlen(out_real);
    if (!strncmp(in_real, out_real, n) && (in_real[n] == '\0' || in_real[n] == '/'))
        return av_set_error(AV_ERR_INVALID,
                            "%s contains the input model %s; choose another output directory",
                            out_dir, in_dir);
    char config[PATH_MAX];
    snprintf(config, sizeof config, "%s/config.json", out_dir);
    if (!dir_is_empty(out_dir) && stat(config, &sb) != 0)
        return av_set_error(AV_ERR_INVALID,
                            "%s is not empty and has no config.json; --force only replaces a "
                            "model directory, so remove it yourself",
                            out_dir);
    return AV_OK;
}

/* Creates OUT.tmp-XXXXXX next to out_dir. */
static av_status make_tmp_dir(const char *out_dir, char **tmp) {
    size_t n = strlen(out_dir);
    while (n > 1 && out_dir[n - 1] == '/') n--;
    *tmp = malloc(n + 16);
    if (!*tmp) return av_set_error(AV_ERR_NOMEM, "out of memory");
    snprintf(*tmp, n + 16, "%.*s.tmp-XXXXXX", (int)n, out_dir);
    if (!mkdtemp(*tmp)) {
        int err = errno;
        av_status s = err == ENOENT
            ? av_set_error(AV_ERR_IO, "%s: the directory that should contain the output does "
                           "not exist; create it first", out_dir)
            : av_set_error(AV_ERR_IO, "%s: cannot create a temporary directory: %s", *tmp,
                           strerror(err));
        free(*tmp);
        *tmp = NULL;
        return s;
    }
    chmod(*tmp, 0755);
    return AV_OK;
}

/* Renames the finished temporary directory to out_dir, moving an existing
 * out_dir aside first and deleting it afterwards. */
static av_status publish(const char *tmp_dir, const char *out_dir) {
    struct stat sb;
    char *old = NULL;
    if (lstat(out_dir, &sb) == 0) {
        if (make_tmp_dir(out_dir, &old)) return AV_ERR_IO;
        if (rename(out_dir, old) != 0) {
            av_status s = av_set_error(AV_ERR_IO, "cannot move %s aside: %s", out_dir,
                                       strerror(errno));
            rmdir(old);
            free(old);
            return s;
        }
    }
    if (rename(tmp_dir, out_dir) != 0) {
        av_status s = av_set_error(AV_ERR_IO, "cannot rename %s to %s: %s", tmp_dir, out_dir,
                                   strerror(errno));
        if (old) rename(old, out_dir);
        free(old);
        return s;
    }
    if (old) remove_tree(old);
    free(old);
    return AV_OK;
}

/* ---- entry point ------------------------------------------------------ */

static av_status check_options(const av_quantize_options *o) {
    if (o->target == AV_TARGET_NF4 && !av_nf4_blocksize_valid(o->blocksize))
        return av_set_error(AV_ERR_INVALID,
                            "block size %d is not supported; bitsandbytes accepts 32, 64, 128, "
                            "256, 512, 1024, 2048 or 4096",
                            o->blocksize);
    return AV_OK;
}

static av_status convert(converter *cv, const char *out_dir) {
    av_status s;
    if ((s = make_plan(cv)) || (s = make_tmp_dir(out_dir, &cv->tmp_dir))) return s;
    for (int shard = 0; shard < cv->n_shards && !s; shard++) s = write_shard(cv, shard);
    if (!s && cv->n_shards > 1) s = write_index(cv);
    if (!s) s = write_config(cv);
    if (!s) s = copy_side_files(cv);
    if (!s) s = check_cancel(cv);
    if (!s) s = publish(cv->tmp_dir, out_dir);
    if (s) {
        char message[1024];
        snprintf(message, sizeof message, "%s", av_last_error());
        remove_tree(cv->tmp_dir);
        s = av_set_error(s, "%s; removed the partial output %s", message, cv->tmp_dir);
    }
    return s;
}

av_status av_quantize_checkpoint(const char *in_dir, const char *out_dir,
                                 const av_quantize_options *options) {
    av_quantize_options opt = *options;
    if (opt.blocksize == 0) opt.blocksize = AV_NF4_DEFAULT_BLOCKSIZE;
    av_status s = check_options(&opt);
    if (s || (s = check_output(in_dir, out_dir, opt.force))) return s;
    converter cv = {.opt = &opt};
    cv.target_dtype = opt.target == AV_TARGET_F16 ? AV_DTYPE_F16 : AV_DTYPE_BF16;
    if (!(cv.ckpt = av_checkpoint_open(in_dir))) return AV_ERR_FORMAT;
    if (av_checkpoint_config(cv.ckpt)->quant.method != AV_QUANT_NONE)
        s = av_set_error(AV_ERR_INVALID,
                         "%s is already quantized (config.json has a quantization_config); "
                         "convert from the 16- or 32-bit checkpoint",
                         in_dir);
    else {
        if (opt.quantize_head && av_checkpoint_config(cv.ckpt)->tie_embeddings)
            av_log(AV_LOG_WARN, "%s: lm_head is tied to the embeddings, which bitsandbytes "
                   "never quantizes, so --quantize-head has no effect", in_dir);
        s = convert(&cv, out_dir);
    }
    free(cv.tmp_dir);
    free(cv.items);
    av_checkpoint_close(cv.ckpt);
    return s;
}
