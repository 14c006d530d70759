/*
 * bnb_state.c - the bitsandbytes quant state of saved checkpoints: writing
 * and parsing its JSON, and reading quantized Linear weights back.
 *
 * transformers saves a bitsandbytes NF4 Linear as these tensors next to
 * the packed `<name>` (U8 [ceil(n / 2), 1]):
 *   <name>.absmax            F32 [blocks], or U8 [blocks] when double-quantized
 *   <name>.quant_map         F32 [16], the NF4 levels
 *   <name>.nested_absmax     F32 [ceil(blocks / nested_blocksize)]   (double quant)
 *   <name>.nested_quant_map  F32 [256], the dynamic map              (double quant)
 *   <name>.quant_state.bitsandbytes__nf4  U8 [len], JSON of the scalar fields
 * and an LLM.int8 Linear `<module>.weight` (I8 [rows, cols]) as
 *   <module>.SCB             F32 [rows]
 *   <module>.weight_format   U8 [] = 0 (row-major; the only layout still written)
 * Every check below names the tensor and the field, because a checkpoint
 * converted by hand or by another tool is the usual way these go wrong.
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

/* Upper bound on the quant state JSON; real ones are under 200 bytes. */
#define STATE_JSON_MAX 4096

/* ---- JSON of the quant state ------------------------------------------- */

static const char *torch_dtype_name(av_dtype dtype) {
    switch (dtype) {
    case AV_DTYPE_F32: return "float32";
    case AV_DTYPE_F16: return "float16";
    case AV_DTYPE_BF16: return "bfloat16";
    default: return NULL;
    }
}

static int parse_torch_dtype(const char *name, av_dtype *dtype) {
    static const av_dtype known[] = {AV_DTYPE_F32, AV_DTYPE_F16, AV_DTYPE_BF16};
    for (int i = 0; i < 3; i++)
        if (name && !strcmp(name, torch_dtype_name(known[i]))) {
            *dtype = known[i];
            return 1;
        }
    return 0;
}

/* Writes x as Python's repr(float) does: the shortest digits that read
 * back as x, in fixed notation when the decimal point falls within the
 * first 16 digits or up to 4 zeros after it, and in exponent notation
 * otherwise. x must be finite; buf needs 40 bytes. */
static void format_python_float(double x, char *buf, size_t size) {
    if (x == 0) {
        snprintf(buf, size, "%s", signbit(x) ? "-0.0" : "0.0");
        return;
    }
    char sci[40];
    for (int precision = 1; precision <= 17; precision++) {
        snprintf(sci, sizeof sci, "%.*e", precision - 1, x);
        if (strtod(sci, NULL) == x) break;
    }
    /* sci is "[-]d.ddde[+-]XX": split it into digits and exponent. */
    const char *p = sci + (sci[0] == '-');
    char digits[24];
    int n_digits = 0;
    for (; *p && *p != 'e'; p++)
        if (*p != '.') digits[n_digits++] = *p;
    while (n_digits > 1 && digits[n_digits - 1] == '0') n_digits--;
    digits[n_digits] = '\0';
    int exponent = atoi(p + 1);
    int point = exponent + 1; /* digits before the decimal point */

    char out[64];
    size_t n = 0;
    if (x < 0) out[n++] = '-';
    if (point <= -4 || point > 16) {
        out[n++] = digits[0];
        if (n_digits > 1) {
            out[n++] = '.';
            for (int i = 1; i < n_digits; i++) out[n++] = digits[i];
        }
        n += (size_t)snprintf(out + n, sizeof out - n, "e%c%02d", exponent < 0 ? '-' : '+',
                              abs(exponent));
    } else if (point <= 0) {
        out[n++] = '0';
        out[n++] = '.';
        for (int i = 0; i < -point; i++) out[n++] = '0';
        for (int i = 0; i < n_digits; i++) out[n++] = digits[i];
    } else {
        for (int i = 0; i < point; i++) out[n++] = i < n_digits ? digits[i] : '0';
        out[n++] = '.';
        if (point >= n_digits) out[n++] = '0';
        for (int i = point; i < n_digits; i++) out[n++] = digits[i];
    }
    out[n] = '\0';
    snprintf(buf, size, "%s", out);
}

int av_nf4_state_format(const av_nf4_state *state, char *buf, size_t size) {
    const char *dtype = torch_dtype_name(state->dtype);
    if (!dtype || state->ndim < 1 || state->ndim > AV_MAX_DIMS) return -1;
    char shape[128];
    size_t len = 0;
    for (int i = 0; i < state->ndim; i++)
        len += (size_t)snprintf(shape + len, sizeof shape - len, "%s%lld", i ? ", " : "",
                                (long long)state->shape[i]);
    int n = snprintf(buf, size,
                     "{\"quant_type\": \"nf4\", \"blocksize\": %d, \"dtype\": \"%s\", "
                     "\"shape\": [%s]",
                     state->blocksize, dtype, shape);
    if (n < 0 || (size_t)n >= size) return -1;
    if (state->nested) {
        char offset[40];
        format_python_float((double)state->nested_offset, offset, sizeof offset);
        n += snprintf(buf + n, size - (size_t)n,
                      ", \"nested_blocksize\": %d, \"nested_dtype\": \"float32\", "
                      "\"nested_offset\": %s",
                      state->nested_blocksize, offset);
        if ((size_t)n >= size) return -1;
    }
    n += snprintf(buf + n, size - (size_t)n, "}");
    return (size_t)n >= size ? -1 : n;
}

/* Reads a required integer field of the quant state. */
static av_status state_int(const char *tensor, json_t *root, const char *key, long long *out) {
    json_t *v = json_object_get(root, key);
    if (!json_is_integer(v))
        return av_set_error(AV_ERR_FORMAT, "%s: quant state field \"%s\" is %s; expected an integer",
                            tensor, key, v ? "not an integer" : "missing");
    *out = json_integer_value(v);
    return AV_OK;
}

static av_status check_state_keys(const char *tensor, json_t *root) {
    static const char *const known[] = {"quant_type", "blocksize", "dtype", "shape",
                                        "nested_blocksize", "nested_dtype", "nested_offset"};
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        int found = 0;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) found |= !strcmp(key, known[i]);
        if (!found)
            return av_set_error(AV_ERR_FORMAT,
                                "%s: unknown quant state field \"%s\"; bitsandbytes writes only "
                                "quant_type, blocksize, dtype, shape and nested_*",
                                tensor, key);
    }
    return AV_OK;
}

static av_status parse_state_type(const char *tensor, json_t *root, av_nf4_state *s) {
    const char *type = json_string_value(json_object_get(root, "quant_type"));
    if (!type)
        return av_set_error(AV_ERR_FORMAT, "%s: quant state field \"quant_type\" is missing",
                            tensor);
    if (strcmp(type, "nf4") != 0)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: quant_type \"%s\" is not supported; only \"nf4\" is", tensor,
                            type);
    long long blocksize = 0;
    av_status status = state_int(tensor, root, "blocksize", &blocksize);
    if (status) return status;
    if (!av_nf4_blocksize_valid(blocksize))
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: blocksize %lld is not supported; bitsandbytes uses 32, 64, 128, "
                            "256, 512, 1024, 2048 or 4096",
                            tensor, blocksize);
    s->blocksize = (int)blocksize;
    const char *dtype = json_string_value(json_object_get(root, "dtype"));
    if (!parse_torch_dtype(dtype, &s->dtype))
        return av_set_error(AV_ERR_FORMAT,
                            "%s: quant state field \"dtype\" is %s; expected \"float32\", "
                            "\"float16\" or \"bfloat16\"",
                            tensor, dtype ? dtype : "missing or not a string");
    return AV_OK;
}

static av_status parse_state_shape(const char *tensor, json_t *root, av_nf4_state *s) {
    json_t *shape = json_object_get(root, "shape");
    size_t ndim = json_array_size(shape);
    if (!json_is_array(shape) || ndim < 1 || ndim > AV_MAX_DIMS)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: quant state field \"shape\" must be a list of 1 to %d sizes",
                            tensor, AV_MAX_DIMS);
    s->ndim = (int)ndim;
    for (size_t i = 0; i < ndim; i++) {
        json_t *dim = json_array_get(shape, i);
        if (!json_is_integer(dim) || json_integer_value(dim) < 1 ||
            json_integer_value(dim) > ((int64_t)1 << 32))
            return av_set_error(AV_ERR_FORMAT,
                                "%s: quant state \"shape\" entry %zu is not a size from 1 to 2^32",
                                tensor, i);
        s->shape[i] = json_integer_value(dim);
    }
    return AV_OK;
}

static av_status parse_state_nested(const char *tensor, json_t *root, av_nf4_state *s) {
    int present = 0;
    static const char *const keys[] = {"nested_blocksize", "nested_dtype", "nested_offset"};
    for (int i = 0; i < 3; i++) present += json_object_get(root, keys[i]) != NULL;
    if (present == 0) {
        s->nested = 0;
        return AV_OK;
    }
    if (present != 3)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: quant state has only %d of nested_blocksize, nested_dtype and "
                            "nested_offset; double quantization needs all three",
                            tensor, present);
    s->nested = 1;
    long long blocksize = 0;
    av_status status = state_int(tensor, root, "nested_blocksize", &blocksize);
    if (status) return status;
    if (!av_nf4_blocksize_valid(blocksize))
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: nested_blocksize %lld is not supported (expected a power of two "
                            "from 32 to 4096; bitsandbytes writes 256)",
                            tensor, blocksize);
    s->nested_blocksize = (int)blocksize;
    const char *dtype = json_string_value(json_object_get(root, "nested_dtype"));
    if (!dtype || strcmp(dtype, "float32") != 0)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: nested_dtype %s is not supported; expected \"float32\"", tensor,
                            dtype ? dtype : "(not a string)");
    json_t *offset = json_object_get(root, "nested_offset");
    if (!json_is_number(offset) || !isfinite(json_number_value(offset)))
        return av_set_error(AV_ERR_FORMAT, "%s: nested_offset must be a finite number", tensor);
    s->nested_offset = (float)json_number_value(offset);
    return AV_OK;
}

av_status av_nf4_state_parse(const char *tensor, const uint8_t *json, size_t len,
                             av_nf4_state *state) {
    memset(state, 0, sizeof *state);
    if (len == 0 || len > STATE_JSON_MAX)
        return av_set_error(AV_ERR_FORMAT, "%s: quant state is %zu bytes; expected 1 to %d bytes of JSON",
                            tensor, len, STATE_JSON_MAX);
    json_error_t err;
    json_t *root = json_loadb((const char *)json, len, 0, &err);
    if (!root)
        return av_set_error(AV_ERR_FORMAT, "%s: quant state is not valid JSON: %s", tensor,
                            err.text);
    av_status status;
    if (!json_is_object(root))
        status = av_set_error(AV_ERR_FORMAT, "%s: quant state must be a JSON object", tensor);
    else if (!(status = check_state_keys(tensor, root)) &&
             !(status = parse_state_type(tensor, root, state)) &&
             !(status = parse_state_shape(tensor, root, state)))
        status = parse_state_nested(tensor, root, state);
    json_decref(root);
    return status;
}

/* ---- reading quantized weights ---------------------------------------- */

int av_quant_module_skipped(const av_quant_config *quant, const char *name) {
    if (quant->n_skip_modules < 0) return strncmp(name, "lm_head", 7) == 0;
    /* transformers matches a skip entry anywhere in the module name. */
    for (int i = 0; i < quant->n_skip_modules; i++)
        if (quant->skip_modules[i][0] && strstr(name, quant->skip_modules[i])) return 1;
    return 0;
}

static const char *shape_text(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

/* Finds `name` and checks its dtype and shape. `what` describes the
 * tensor's contents in messages. */
static av_status require_tensor(const av_checkpoint *ckpt, const char *name, const char *what,
                                av_dtype dtype, int ndim, const int64_t *shape,
                                const av_tensor **out) {
    const av_tensor *t = av_checkpoint_find(ckpt, name);
    *out = t;
    if (!t)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: tensor '%s' (%s) is missing; bitsandbytes saves it next to "
                            "the weight, so the checkpoint is incomplete (save or quantize it "
                            "again)",
                            av_checkpoint_dir(ckpt), name, what);
    if (t->dtype != dtype)
        return av_set_error(AV_ERR_FORMAT, "%s in %s: dtype %s expected for the %s, found %s",
                            name, t->file, av_dtype_name(dtype), what, av_dtype_name(t->dtype));
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char want[96], found[96];
        return av_set_error(AV_ERR_FORMAT, "%s in %s: shape %s expected for the %s, found %s",
                            name, t->file, shape_text(want, sizeof want, ndim, shape), what,
                            shape_text(found, sizeof found, t->ndim, t->shape));
    }
    return AV_OK;
}

/* Copies n float32 values (the mapped data may be unaligned) and checks
 * that they are finite. */
static av_status copy_floats(const av_tensor *t, int64_t n, float *out) {
    memcpy(out, t->data, (size_t)n * sizeof *out);
    for (int64_t i = 0; i < n; i++)
        if (!isfinite(out[i]))
            return av_set_error(AV_ERR_FORMAT, "%s in %s: element %lld is %g; expected finite",
                                t->name, t->file, (long long)i, (double)out[i]);
    return AV_OK;
}

/* Builds "<base><suffix>" into buf. */
static const char *tensor_name(char *buf, size_t size, const char *base, const char *suffix) {
    snprintf(buf, size, "%s%s", base, suffix);
    return buf;
}

/* Reports a Linear weight that is stored unquantized although the config
 * declares quantized weights. */
static av_status unquantized_error(const av_tensor *t, const char *expected) {
    return av_set_error(AV_ERR_FORMAT,
                        "%s in %s: config.json's quantization_config declares %s weights, but "
                        "this tensor is %s; the config and the weights disagree (was the config "
                        "edited or copied from another checkpoint?)",
                        t->name, t->file, expected, av_dtype_name(t->dtype));
}

static av_status load_nf4_state(const av_checkpoint *ckpt, const char *name, int64_t rows,
                                int64_t cols, av_nf4_state *state) {
    char buf[512];
    const av_tensor *t = av_checkpoint_find(
        ckpt, tensor_name(buf, sizeof buf, name, ".quant_state.bitsandbytes__nf4"));
    if (!t) {
        if (av_checkpoint_find(ckpt, tensor_name(buf, sizeof buf, name,
                                                 ".quant_state.bitsandbytes__fp4")))
            return av_set_error(AV_ERR_UNSUPPORTED,
                                "%s: the checkpoint stores FP4 weights; only NF4 is supported",
                                buf);
        return av_set_error(AV_ERR_FORMAT,
                            "%s: tensor '%s.quant_state.bitsandbytes__nf4' (the quant state) is "
                            "missing; bitsandbytes saves it next to the weight, so the "
                            "checkpoint is incomplete (save or quantize it again)",
                            av_checkpoint_dir(ckpt), name);
    }
    if (t->dtype != AV_DTYPE_U8 || t->ndim != 1)
        return av_set_error(AV_ERR_FORMAT, "%s in %s: the quant state must be a 1-D U8 tensor of "
                            "JSON text, found %s with %d dimensions",
                            buf, t->file, av_dtype_name(t->dtype), t->ndim);
    av_status status = av_nf4_state_parse(buf, t->data, t->nbytes, state);
    if (status) return status;
    if (state->ndim != 2 || state->shape[0] != rows || state->shape[1] != cols) {
        char found[96];
        return av_set_error(AV_ERR_FORMAT,
                            "%s: quant state field \"shape\" is %s; the model expects [%lld, %lld]",
                            buf, shape_text(found, sizeof found, state->ndim, state->shape),
                            (long long)rows, (long long)cols);
    }
    const av_quant_config *quant = &av_checkpoint_config(ckpt)->quant;
    if (state->nested != quant->double_quant)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: the quant state is %sdouble-quantized, but config.json sets "
                            "bnb_4bit_use_double_quant to %s",
                            buf, state->nested ? "" : "not ",
                            quant->double_quant ? "true" : "false");
    return AV_OK;
}

static av_status check_quant_map(const av_checkpoint *ckpt, const char *name) {
    char buf[512];
    const av_tensor *t;
    int64_t shape[1] = {16};
    av_status status = require_tensor(ckpt, tensor_name(buf, sizeof buf, name, ".quant_map"),
                                      "NF4 levels", AV_DTYPE_F32, 1, shape, &t);
    if (status) return status;
    float map[16];
    memcpy(map, t->data, sizeof map);
    if (memcmp(map, av_nf4_code, sizeof map) != 0)
        return av_set_error(AV_ERR_FORMAT,
                            "%s in %s: the quant map differs from the standard NF4 levels, which "
                            "bitsandbytes always decodes with",
                            buf, t->file);
    return AV_OK;
}

/* Reads the absmax, dequantizing it when it is double-quantized. */
static av_status load_nf4_absmax(const av_checkpoint *ckpt, const char *name,
                                 const av_nf4_state *state, av_quant_weight *w) {
    char buf[512];
    const av_tensor *t;
    int64_t n = w->n_blocks;
    if (!(w->absmax = malloc((size_t)n * sizeof *w->absmax)))
        return av_set_error(AV_ERR_NOMEM, "%s: out of memory for %lld absmax values", name,
                            (long long)n);
    tensor_name(buf, sizeof buf, name, ".absmax");
    if (!state->nested) {
        av_status status = require_tensor(ckpt, buf, "block absmax", AV_DTYPE_F32, 1, &n, &t);
        return status ? status : copy_floats(t, n, w->absmax);
    }
    const av_tensor *nested, *map_tensor;
    int64_t n_nested = (n + state->nested_blocksize - 1) / state->nested_blocksize;
    int64_t map_shape[1] = {AV_DYNAMIC_MAP_SIZE};
    char nested_name[512], map_name[512];
    av_status status = require_tensor(ckpt, buf, "double-quantized block absmax", AV_DTYPE_U8, 1,
                                      &n, &t);
    if (!status)
        status = require_tensor(ckpt, tensor_name(nested_name, sizeof nested_name, name,
                                                  ".nested_absmax"),
                                "absmax of the absmax blocks", AV_DTYPE_F32, 1, &n_nested,
                                &nested);
    if (!status)
        status = require_tensor(ckpt, tensor_name(map_name, sizeof map_name, name,
                                                  ".nested_quant_map"),
                                "8-bit map of the absmax", AV_DTYPE_F32, 1, map_shape,
                                &map_tensor);
    if (status) return status;
    float map[AV_DYNAMIC_MAP_SIZE];
    float *nested_absmax = malloc((size_t)n_nested * sizeof *nested_absmax);
    if (!nested_absmax) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", nested_name);
    if (!(status = copy_floats(map_tensor, AV_DYNAMIC_MAP_SIZE, map)) &&
        !(status = copy_floats(nested, n_nested, nested_absmax)))
        av_nf4_absmax_dequantize(map, t->data, nested_absmax, n, state->nested_blocksize,
                                 state->nested_offset, w->absmax);
    free(nested_absmax);
    return status;
}

static av_status load_nf4(const av_checkpoint *ckpt, const char *name, const av_tensor *weight,
                          av_quant_weight *w) {
    int64_t n = w->rows * w->cols;
    int64_t packed_shape[2] = {(n + 1) / 2, 1};
    if (weight->dtype != AV_DTYPE_U8) {
        if (weight->dtype == AV_DTYPE_F32 || weight->dtype == AV_DTYPE_F16 ||
            weight->dtype == AV_DTYPE_BF16)
            return unquantized_error(weight, "4-bit NF4");
        if (weight->dtype == AV_DTYPE_I8)
            return av_set_error(AV_ERR_FORMAT,
                                "%s in %s: config.json's quantization_config declares 4-bit NF4 "
                                "weights (U8), but this tensor is I8 (LLM.int8 rows?); the "
                                "config and the weights disagree, so restore the config saved "
                                "with the weights",
                                name, weight->file);
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s in %s: packed NF4 weights must be stored as U8 "
                            "(bnb_4bit_quant_storage \"uint8\"), found %s",
                            name, weight->file, av_dtype_name(weight->dtype));
    }
    const av_tensor *t;
    av_status status = require_tensor(ckpt, name, "packed NF4 codes", AV_DTYPE_U8, 2,
                                      packed_shape, &t);
    av_nf4_state state;
    if (status || (status = load_nf4_state(ckpt, name, w->rows, w->cols, &state)) ||
        (status = check_quant_map(ckpt, name)))
        return status;
    w->blocksize = state.blocksize;
    w->dtype = state.dtype;
    w->double_quant = state.nested;
    w->n_blocks = (n + state.blocksize - 1) / state.blocksize;
    w->codes = weight->data;
    return load_nf4_absmax(ckpt, name, &state, w);
}

/* The module prefix of "<module>.weight", into buf. */
static av_status module_prefix(const char *name, char *buf, size_t size) {
    size_t len = strlen(name);
    if (len < 8 || strcmp(name + len - 7, ".weight") != 0 || len - 7 >= size)
        return av_set_error(AV_ERR_INVALID, "%s: a quantized weight name must end in \".weight\"",
                            name);
    memcpy(buf, name, len - 7);
    buf[len - 7] = '\0';
    return AV_OK;
}

static av_status check_weight_format(const av_checkpoint *ckpt, const char *module) {
    char buf[512];
    const av_tensor *t = av_checkpoint_find(ckpt, tensor_name(buf, sizeof buf, module,
                                                              ".weight_format"));
    if (!t) return AV_OK; /* bitsandbytes reads a missing format as row-major */
    if (t->dtype != AV_DTYPE_U8 || t->numel != 1)
        return av_set_error(AV_ERR_FORMAT, "%s in %s: weight_format must be one U8 value, found "
                            "%s with %lld values",
                            buf, t->file, av_dtype_name(t->dtype), (long long)t->numel);
    uint8_t format = *(const uint8_t *)t->data;
    if (format != 0)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s in %s: weight_format %d (a GPU tile layout) is not supported; "
                            "only 0, row-major, is",
                            buf, t->file, format);
    return AV_OK;
}

static av_status load_int8(const av_checkpoint *ckpt, const char *name, const av_tensor *weight,
                           av_quant_weight *w) {
    if (weight->dtype != AV_DTYPE_I8) {
        if (weight->dtype == AV_DTYPE_F32 || weight->dtype == AV_DTYPE_F16 ||
            weight->dtype == AV_DTYPE_BF16)
            return unquantized_error(weight, "8-bit LLM.int8");
        return av_set_error(AV_ERR_FORMAT,
                            "%s in %s: config.json's quantization_config declares 8-bit "
                            "LLM.int8 weights (I8), but this tensor is %s%s; the config and "
                            "the weights disagree",
                            name, weight->file, av_dtype_name(weight->dtype),
                            weight->dtype == AV_DTYPE_U8 ? " (packed 4-bit codes?)" : "");
    }
    char module[448], buf[512];
    const av_tensor *t, *scb;
    int64_t shape[2] = {w->rows, w->cols};
    av_status status = module_prefix(name, module, sizeof module);
    if (!status) status = require_tensor(ckpt, name, "int8 codes", AV_DTYPE_I8, 2, shape, &t);
    if (!status)
        status = require_tensor(ckpt, tensor_name(buf, sizeof buf, module, ".SCB"),
                                "row scales (SCB)", AV_DTYPE_F32, 1, &w->rows, &scb);
    if (!status) status = check_weight_format(ckpt, module);
    if (status) return status;
    if (!(w->scale = malloc((size_t)w->rows * sizeof *w->scale)))
        return av_set_error(AV_ERR_NOMEM, "%s: out of memory", buf);
    if ((status = copy_floats(scb, w->rows, w->scale))) return status;
    for (int64_t r = 0; r < w->rows; r++)
        if (w->scale[r] < 0)
            return av_set_error(AV_ERR_FORMAT,
                                "%s in %s: row %lld has scale %g; SCB is a row absmax and "
                                "cannot be negative",
                                buf, scb->file, (long long)r, (double)w->scale[r]);
    w->dtype = AV_DTYPE_F16;
    w->q = weight->data;
    return AV_OK;
}

av_status av_quant_weight_load(const av_checkpoint *ckpt, const char *name, int64_t rows,
                               int64_t cols, av_quant_weight *out) {
    memset(out, 0, sizeof *out);
    const av_quant_config *quant = &av_checkpoint_config(ckpt)->quant;
    if (quant->method == AV_QUANT_NONE)
        return av_set_error(AV_ERR_INVALID,
                            "%s: config.json has no quantization_config, so '%s' is not a "
                            "quantized weight; read it with av_checkpoint_require",
                            av_checkpoint_dir(ckpt), name);
    if (rows < 1 || cols < 1 || rows > ((int64_t)1 << 32) || cols > ((int64_t)1 << 32))
        return av_set_error(AV_ERR_INVALID, "%s: shape [%lld, %lld] is out of range", name,
                            (long long)rows, (long long)cols);
    const av_tensor *weight = av_checkpoint_find(ckpt, name);
    if (!weight)
        return av_set_error(AV_ERR_FORMAT, "%s: tensor '%s' is missing from the checkpoint",
                            av_checkpoint_dir(ckpt), name);
    av_quant_weight w;
    memset(&w, 0, sizeof w);
    w.method = quant->method;
    w.rows = rows;
    w.cols = cols;
    av_status status = quant->method == AV_QUANT_NF4 ? load_nf4(ckpt, name, weight, &w)
                                                     : load_int8(ckpt, name, weight, &w);
    if (status) {
        av_quant_weight_free(&w);
        return status;
    }
    *out = w;
    return AV_OK;
}

void av_quant_weight_free(av_quant_weight *w) {
    if (!w) return;
    free(w->absmax);
    free(w->scale);
    memset(w, 0, sizeof *w);
}
