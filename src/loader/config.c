/*
 * config.c - parsing and validation of config.json and
 * generation_config.json.
 *
 * config.json decides the shapes of every buffer the model allocates, so
 * each value is type-checked and range-checked here. Features that the
 * forward pass does not implement (RoPE scaling, biases, activations other
 * than SiLU, a sliding attention window) are rejected instead of being
 * silently ignored. Messages name the file, the field and the value.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loader.h"

/* Upper bound on the size of a config file; real ones are a few KB. */
#define CONFIG_FILE_MAX (1u << 20)

av_status av_json_load_file(const char *path, size_t max_bytes, json_t **out) {
    *out = NULL;
    FILE *fp = fopen(path, "rb");
    if (!fp) return av_set_error(AV_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(fp);
        return av_set_error(AV_ERR_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > max_bytes) {
        fclose(fp);
        return av_set_error(AV_ERR_RANGE, "%s: %lld bytes, larger than the %zu-byte limit",
                            path, (long long)sb.st_size, max_bytes);
    }
    size_t size = (size_t)sb.st_size;
    char *text = malloc(size + 1);
    if (!text) {
        fclose(fp);
        return av_set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t got = fread(text, 1, size, fp);
    fclose(fp);
    if (got != size) {
        free(text);
        return av_set_error(AV_ERR_IO, "%s: read failed", path);
    }
    json_error_t err;
    *out = json_loadb(text, size, 0, &err);
    free(text);
    if (!*out)
        return av_set_error(AV_ERR_FORMAT, "%s: invalid JSON: %s at line %d, column %d", path,
                            err.text, err.line, err.column);
    if (!json_is_object(*out)) {
        json_decref(*out);
        *out = NULL;
        return av_set_error(AV_ERR_FORMAT, "%s: expected a JSON object at the top level", path);
    }
    return AV_OK;
}

/* ---- typed field readers ----------------------------------------------- */

/* Writes a compact JSON rendering of value (cut to fit) into buf. */
static const char *json_repr(char *buf, size_t size, const json_t *value) {
    char *text = json_dumps(value, JSON_COMPACT | JSON_ENCODE_ANY);
    snprintf(buf, size, "%s", text ? text : "?");
    free(text);
    return buf;
}

/* Reads an integer field into *out. Absent or null fields keep *out unless
 * required. Values outside [min, max] are rejected. */
static av_status get_int(const char *path, json_t *root, const char *key, int required,
                         long long min, long long max, int *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return av_set_error(AV_ERR_FORMAT, "%s: missing required field \"%s\"", path, key);
        return AV_OK;
    }
    char buf[96];
    if (!json_is_integer(v))
        return av_set_error(AV_ERR_FORMAT, "%s: \"%s\" must be an integer, found %s", path, key,
                            json_repr(buf, sizeof buf, v));
    long long x = json_integer_value(v);
    if (x < min || x > max)
        return av_set_error(AV_ERR_INVALID, "%s: \"%s\" is %lld; it must be between %lld and %lld",
                            path, key, x, min, max);
    *out = (int)x;
    return AV_OK;
}

/* Reads a number (integer or real) field; absent or null keeps *out. */
static av_status get_number(const char *path, json_t *root, const char *key, int required,
                            double *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return av_set_error(AV_ERR_FORMAT, "%s: missing required field \"%s\"", path, key);
        return AV_OK;
    }
    char buf[96];
    if (!json_is_number(v))
        return av_set_error(AV_ERR_FORMAT, "%s: \"%s\" must be a number, found %s", path, key,
                            json_repr(buf, sizeof buf, v));
    *out = json_number_value(v);
    return AV_OK;
}

/* Reads a boolean field; absent or null keeps *out. */
static av_status get_bool(const char *path, json_t *root, const char *key, int *out) {
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) return AV_OK;
    char buf[96];
    if (!json_is_boolean(v))
        return av_set_error(AV_ERR_FORMAT, "%s: \"%s\" must be true or false, found %s", path,
                            key, json_repr(buf, sizeof buf, v));
    *out = json_is_true(v);
    return AV_OK;
}

/* Reads a token id that may be an integer, null or a list of integers (the
 * first one is used; Llama 3 lists several eos ids). */
static av_status get_token_id(const char *path, json_t *root, const char *key, int *out) {
    json_t *v = json_object_get(root, key);
    if (json_is_array(v)) {
        if (json_array_size(v) == 0) return AV_OK;
        v = json_array_get(v, 0);
    }
    if (!v || json_is_null(v)) return AV_OK;
    char buf[96];
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: \"%s\" must be a non-negative integer or a list of them, "
                            "found %s",
                            path, key, json_repr(buf, sizeof buf, v));
    *out = (int)json_integer_value(v);
    return AV_OK;
}

/* ---- config.json ------------------------------------------------------- */

static av_status check_architecture(const char *path, json_t *root, av_config *c) {
    json_t *archs = json_object_get(root, "architectures");
    const char *arch = NULL;
    if (json_is_array(archs) && json_array_size(archs) > 0)
        arch = json_string_value(json_array_get(archs, 0));
    if (!arch) {
        /* Some hand-written configs only set model_type. */
        const char *type = json_string_value(json_object_get(root, "model_type"));
        if (type && !strcmp(type, "llama")) arch = "LlamaForCausalLM";
        if (type && !strcmp(type, "mistral")) arch = "MistralForCausalLM";
    }
    if (!arch)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: missing \"architectures\" (expected [\"LlamaForCausalLM\"])",
                            path);
    if (strcmp(arch, "LlamaForCausalLM") != 0 && strcmp(arch, "MistralForCausalLM") != 0)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: architecture %s is not supported; this engine runs "
                            "LlamaForCausalLM (and MistralForCausalLM without a sliding window)",
                            path, arch);
    snprintf(c->architecture, sizeof c->architecture, "%s", arch);
    return AV_OK;
}

/* Rejects features of the Hugging Face Llama config that the forward pass
 * does not implement. */
static av_status check_features(const char *path, json_t *root, const av_config *c) {
    char buf[160];
    json_t *act = json_object_get(root, "hidden_act");
    if (act && !json_is_null(act)) {
        const char *name = json_string_value(act);
        /* transformers maps "swish" to the same SiLU function. */
        if (!name || (strcmp(name, "silu") != 0 && strcmp(name, "swish") != 0))
            return av_set_error(AV_ERR_UNSUPPORTED,
                                "%s: \"hidden_act\" is %s; only \"silu\" is supported", path,
                                json_repr(buf, sizeof buf, act));
    }
    static const char *const biases[] = {"attention_bias", "mlp_bias"};
    for (int i = 0; i < 2; i++) {
        int on = 0;
        av_status status = get_bool(path, root, biases[i], &on);
        if (status) return status;
        if (on)
            return av_set_error(AV_ERR_UNSUPPORTED,
                                "%s: \"%s\" is true; linear layers with bias are not supported",
                                path, biases[i]);
    }
    json_t *scaling = json_object_get(root, "rope_scaling");
    if (scaling && !json_is_null(scaling))
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: \"rope_scaling\" is %s; only unscaled RoPE is supported (it "
                            "must be null or absent)",
                            path, json_repr(buf, sizeof buf, scaling));
    /* transformers 5 writes RoPE settings as "rope_parameters": {"rope_type",
     * "rope_theta", ...}; only the default (unscaled) type is implemented. */
    json_t *rope = json_object_get(root, "rope_parameters");
    if (rope && !json_is_null(rope)) {
        if (!json_is_object(rope))
            return av_set_error(AV_ERR_FORMAT,
                                "%s: \"rope_parameters\" must be an object, found %s", path,
                                json_repr(buf, sizeof buf, rope));
        json_t *type = json_object_get(rope, "rope_type");
        if (type && !json_is_null(type) &&
            (!json_is_string(type) || strcmp(json_string_value(type), "default") != 0))
            return av_set_error(AV_ERR_UNSUPPORTED,
                                "%s: \"rope_parameters\" has rope_type %s; only \"default\" "
                                "(unscaled RoPE) is supported",
                                path, json_repr(buf, sizeof buf, type));
    }
    json_t *window = json_object_get(root, "sliding_window");
    if (!strcmp(c->architecture, "MistralForCausalLM") && window && !json_is_null(window)) {
        if (!json_is_integer(window))
            return av_set_error(AV_ERR_FORMAT,
                                "%s: \"sliding_window\" must be an integer or null, found %s",
                                path, json_repr(buf, sizeof buf, window));
        if (json_integer_value(window) < c->max_seq_len)
            return av_set_error(AV_ERR_UNSUPPORTED,
                                "%s: \"sliding_window\" is %lld, below max_position_embeddings "
                                "%d; sliding-window attention is not supported",
                                path, (long long)json_integer_value(window), c->max_seq_len);
    }
    return AV_OK;
}

static av_status read_sizes(const char *path, json_t *root, av_config *c) {
    av_status s;
    if ((s = get_int(path, root, "hidden_size", 1, 1, 1 << 18, &c->dim)) ||
        (s = get_int(path, root, "intermediate_size", 1, 1, 1 << 20, &c->hidden_dim)) ||
        (s = get_int(path, root, "num_hidden_layers", 1, 1, 1 << 12, &c->n_layers)) ||
        (s = get_int(path, root, "num_attention_heads", 1, 1, 1 << 12, &c->n_heads)) ||
        (s = get_int(path, root, "vocab_size", 1, 1, 1 << 24, &c->vocab_size)) ||
        (s = get_int(path, root, "max_position_embeddings", 1, 1, 1 << 24, &c->max_seq_len)))
        return s;
    c->n_kv_heads = c->n_heads;
    if ((s = get_int(path, root, "num_key_value_heads", 0, 1, 1 << 12, &c->n_kv_heads)))
        return s;
    c->head_dim = 0;
    if ((s = get_int(path, root, "head_dim", 0, 1, 1 << 12, &c->head_dim))) return s;
    if (c->head_dim == 0) {
        if (c->dim % c->n_heads != 0)
            return av_set_error(AV_ERR_INVALID,
                                "%s: \"hidden_size\" %d is not divisible by "
                                "\"num_attention_heads\" %d; set \"head_dim\" explicitly",
                                path, c->dim, c->n_heads);
        c->head_dim = c->dim / c->n_heads;
    }
    if (c->head_dim % 2 != 0)
        return av_set_error(AV_ERR_INVALID,
                            "%s: head dimension %d is odd; RoPE rotates pairs of dimensions",
                            path, c->head_dim);
    if (c->n_heads % c->n_kv_heads != 0)
        return av_set_error(AV_ERR_INVALID,
                            "%s: \"num_attention_heads\" %d is not a multiple of "
                            "\"num_key_value_heads\" %d",
                            path, c->n_heads, c->n_kv_heads);
    return AV_OK;
}

static av_status read_scalars(const char *path, json_t *root, av_config *c) {
    double eps = 0, theta = 10000.0;
    av_status s;
    if ((s = get_number(path, root, "rms_norm_eps", 1, &eps)) ||
        (s = get_number(path, root, "rope_theta", 0, &theta)))
        return s;
    json_t *rope = json_object_get(root, "rope_parameters");
    if (json_is_object(rope) && json_object_get(rope, "rope_theta") &&
        !json_object_get(root, "rope_theta")) {
        json_t *value = json_object_get(rope, "rope_theta");
        if (!json_is_number(value))
            return av_set_error(AV_ERR_FORMAT,
                                "%s: \"rope_parameters.rope_theta\" must be a number", path);
        theta = json_number_value(value);
    }
    if (!(eps > 0 && eps < 1))
        return av_set_error(AV_ERR_INVALID, "%s: \"rms_norm_eps\" is %g; it must be in (0, 1)",
                            path, eps);
    if (!(theta > 0 && isfinite(theta) && theta < 1e12))
        return av_set_error(AV_ERR_INVALID,
                            "%s: \"rope_theta\" is %g; it must be positive and below 1e12", path,
                            theta);
    c->norm_eps = (float)eps;
    c->rope_theta = (float)theta;

    c->tie_embeddings = 0;
    c->bos_id = c->eos_id = -1;
    if ((s = get_bool(path, root, "tie_word_embeddings", &c->tie_embeddings)) ||
        (s = get_token_id(path, root, "bos_token_id", &c->bos_id)) ||
        (s = get_token_id(path, root, "eos_token_id", &c->eos_id)))
        return s;
    if (c->bos_id >= c->vocab_size || c->eos_id >= c->vocab_size)
        return av_set_error(AV_ERR_INVALID,
                            "%s: bos_token_id %d or eos_token_id %d is not below vocab_size %d",
                            path, c->bos_id, c->eos_id, c->vocab_size);
    return AV_OK;
}

/* torch_dtype (newer transformers write "dtype") names the dtype of the
 * saved weights. */
static av_status read_torch_dtype(const char *path, json_t *root, av_config *c) {
    c->torch_dtype = AV_DTYPE_F32;
    json_t *v = json_object_get(root, "torch_dtype");
    if (!v || json_is_null(v)) v = json_object_get(root, "dtype");
    if (!v || json_is_null(v)) return AV_OK;
    const char *name = json_string_value(v);
    if (name && !strcmp(name, "float32")) c->torch_dtype = AV_DTYPE_F32;
    else if (name && !strcmp(name, "float16")) c->torch_dtype = AV_DTYPE_F16;
    else if (name && !strcmp(name, "bfloat16")) c->torch_dtype = AV_DTYPE_BF16;
    else {
        char buf[96];
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: \"torch_dtype\" is %s; expected \"float32\", \"float16\" or "
                            "\"bfloat16\"",
                            path, json_repr(buf, sizeof buf, v));
    }
    return AV_OK;
}

/* ---- quantization_config ----------------------------------------------- */

/* Reads a string field of the quantization block; absent or null keeps
 * *out. */
static av_status get_string(const char *path, json_t *block, const char *key,
                            const char **out) {
    json_t *v = json_object_get(block, key);
    if (!v || json_is_null(v)) return AV_OK;
    char buf[96];
    if (!json_is_string(v))
        return av_set_error(AV_ERR_FORMAT,
                            "%s: quantization_config \"%s\" must be a string, found %s", path,
                            key, json_repr(buf, sizeof buf, v));
    *out = json_string_value(v);
    return AV_OK;
}

static av_status read_skip_modules(const char *path, json_t *block, av_quant_config *q) {
    json_t *list = json_object_get(block, "llm_int8_skip_modules");
    q->n_skip_modules = -1;
    if (!list || json_is_null(list)) return AV_OK;
    if (!json_is_array(list) || json_array_size(list) > AV_QUANT_MAX_SKIP_MODULES)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: quantization_config \"llm_int8_skip_modules\" must be null or "
                            "a list of at most %d module names",
                            path, AV_QUANT_MAX_SKIP_MODULES);
    for (size_t i = 0; i < json_array_size(list); i++) {
        const char *name = json_string_value(json_array_get(list, i));
        if (!name || !*name || strlen(name) >= sizeof q->skip_modules[0])
            return av_set_error(AV_ERR_FORMAT,
                                "%s: llm_int8_skip_modules entry %zu must be a module name of "
                                "1 to %zu characters",
                                path, i, sizeof q->skip_modules[0] - 1);
        snprintf(q->skip_modules[i], sizeof q->skip_modules[i], "%s", name);
    }
    q->n_skip_modules = (int)json_array_size(list);
    return AV_OK;
}

/* Reads the 4-bit fields: only NF4 packed in uint8 is supported. */
static av_status read_4bit(const char *path, json_t *block, av_quant_config *q) {
    const char *type = "fp4", *storage = "uint8", *compute = NULL;
    av_status s;
    if ((s = get_string(path, block, "bnb_4bit_quant_type", &type)) ||
        (s = get_string(path, block, "bnb_4bit_quant_storage", &storage)) ||
        (s = get_string(path, block, "bnb_4bit_compute_dtype", &compute)) ||
        (s = get_bool(path, block, "bnb_4bit_use_double_quant", &q->double_quant)))
        return s;
    if (strcmp(type, "nf4") != 0)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: bnb_4bit_quant_type \"%s\" is not supported (transformers "
                            "defaults to \"fp4\" when it is absent); only \"nf4\" is",
                            path, type);
    if (strcmp(storage, "uint8") != 0)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: bnb_4bit_quant_storage \"%s\" is not supported; only "
                            "\"uint8\" is",
                            path, storage);
    q->compute_dtype = AV_DTYPE_F32;
    if (compute && !strcmp(compute, "float16")) q->compute_dtype = AV_DTYPE_F16;
    else if (compute && !strcmp(compute, "bfloat16")) q->compute_dtype = AV_DTYPE_BF16;
    else if (compute && strcmp(compute, "float32") != 0)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: bnb_4bit_compute_dtype \"%s\" is not supported; expected "
                            "\"float32\", \"float16\" or \"bfloat16\"",
                            path, compute);
    q->method = AV_QUANT_NF4;
    return AV_OK;
}

/* Parses quantization_config as transformers writes it for bitsandbytes
 * (BitsAndBytesConfig.to_dict()). */
static av_status read_quantization(const char *path, json_t *root, av_config *c) {
    av_quant_config *q = &c->quant;
    memset(q, 0, sizeof *q);
    q->method = AV_QUANT_NONE;
    q->compute_dtype = AV_DTYPE_F32;
    q->n_skip_modules = -1;
    json_t *block = json_object_get(root, "quantization_config");
    if (!block || json_is_null(block)) return AV_OK;
    if (!json_is_object(block))
        return av_set_error(AV_ERR_FORMAT, "%s: \"quantization_config\" must be an object", path);
    const char *method = NULL;
    av_status s = get_string(path, block, "quant_method", &method);
    if (s) return s;
    if (!method || strcmp(method, "bitsandbytes") != 0)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: quantization_config \"quant_method\" is \"%s\"; only "
                            "\"bitsandbytes\" (NF4 or LLM.int8) is supported",
                            path, method ? method : "(missing)");
    /* transformers writes each flag twice, as load_in_Nbit and _load_in_Nbit. */
    int in_4bit = -1, in_4bit_private = -1, in_8bit = -1, in_8bit_private = -1;
    int fp16_weight = 0;
    if ((s = get_bool(path, block, "load_in_4bit", &in_4bit)) ||
        (s = get_bool(path, block, "_load_in_4bit", &in_4bit_private)) ||
        (s = get_bool(path, block, "load_in_8bit", &in_8bit)) ||
        (s = get_bool(path, block, "_load_in_8bit", &in_8bit_private)) ||
        (s = get_bool(path, block, "llm_int8_has_fp16_weight", &fp16_weight)) ||
        (s = read_skip_modules(path, block, q)))
        return s;
    if ((in_4bit >= 0 && in_4bit_private >= 0 && in_4bit != in_4bit_private) ||
        (in_8bit >= 0 && in_8bit_private >= 0 && in_8bit != in_8bit_private))
        return av_set_error(AV_ERR_FORMAT,
                            "%s: quantization_config load_in_4bit/load_in_8bit disagree with "
                            "_load_in_4bit/_load_in_8bit",
                            path);
    in_4bit = in_4bit >= 0 ? in_4bit : in_4bit_private > 0;
    in_8bit = in_8bit >= 0 ? in_8bit : in_8bit_private > 0;
    if (in_4bit == in_8bit)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: quantization_config must set exactly one of load_in_4bit and "
                            "load_in_8bit to true",
                            path);
    if (in_8bit) {
        if (fp16_weight)
            return av_set_error(AV_ERR_UNSUPPORTED,
                                "%s: llm_int8_has_fp16_weight is true; only int8 weights are "
                                "supported",
                                path);
        q->method = AV_QUANT_INT8;
        return AV_OK;
    }
    return read_4bit(path, block, q);
}

av_status av_config_load(const char *path, av_config *config) {
    json_t *root = NULL;
    av_status status = av_json_load_file(path, CONFIG_FILE_MAX, &root);
    if (status) return status;
    av_config c;
    memset(&c, 0, sizeof c);
    if (!(status = check_architecture(path, root, &c)) && !(status = read_sizes(path, root, &c)) &&
        !(status = read_scalars(path, root, &c)) && !(status = read_torch_dtype(path, root, &c)) &&
        !(status = read_quantization(path, root, &c)))
        status = check_features(path, root, &c);
    json_decref(root);
    if (!status) *config = c;
    return status;
}

/* ---- generation_config.json -------------------------------------------- */

static av_status read_sampling(const char *path, json_t *root, av_generation_config *g) {
    double temperature = -1, top_p = -1, penalty = -1;
    av_status s;
    if ((s = get_number(path, root, "temperature", 0, &temperature)) ||
        (s = get_number(path, root, "top_p", 0, &top_p)) ||
        (s = get_number(path, root, "repetition_penalty", 0, &penalty)) ||
        (s = get_int(path, root, "top_k", 0, 0, INT32_MAX, &g->top_k)) ||
        (s = get_int(path, root, "max_new_tokens", 0, 0, INT32_MAX, &g->max_new_tokens)))
        return s;
    if (temperature != -1 && !(temperature >= 0 && temperature <= 100))
        return av_set_error(AV_ERR_INVALID, "%s: \"temperature\" is %g; expected 0 to 100", path,
                            temperature);
    if (top_p != -1 && !(top_p > 0 && top_p <= 1))
        return av_set_error(AV_ERR_INVALID, "%s: \"top_p\" is %g; expected (0, 1]", path, top_p);
    if (penalty != -1 && !(penalty > 0 && penalty <= 100))
        return av_set_error(AV_ERR_INVALID,
                            "%s: \"repetition_penalty\" is %g; expected (0, 100]", path,
                            penalty);
    g->temperature = (float)temperature;
    g->top_p = (float)top_p;
    g->repetition_penalty = (float)penalty;

    /* In transformers, do_sample false means greedy decoding whatever the
     * temperature is; temperature 0 is how this library spells greedy. */
    int do_sample = -1;
    if ((s = get_bool(path, root, "do_sample", &do_sample))) return s;
    if (do_sample == 0) g->temperature = 0;
    return AV_OK;
}

av_status av_generation_config_load(const char *path, av_generation_config *gen) {
    av_generation_config g = {-1, -1, -1, -1, -1, -1, -1, -1};
    json_t *root = NULL;
    av_status status = av_json_load_file(path, CONFIG_FILE_MAX, &root);
    if (status) return status;
    if (!(status = read_sampling(path, root, &g)) &&
        !(status = get_token_id(path, root, "bos_token_id", &g.bos_id)) &&
        !(status = get_token_id(path, root, "eos_token_id", &g.eos_id)))
        status = get_token_id(path, root, "pad_token_id", &g.pad_id);
    json_decref(root);
    if (!status) *gen = g;
    return status;
}
