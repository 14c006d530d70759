/*
 * api.c - request validation and response JSON of /generate and the
 * OpenAI-compatible routes.
 *
 * Every field is checked for type and range, unknown fields are rejected
 * (a misspelled option must not be silently ignored), and OpenAI fields
 * this server does not implement are accepted only at their no-op value
 * (logprobs false, penalties 0, n <= --parallel, ...). Errors follow
 * OpenAI's shape {"error": {"message", "type", "param", "code"}}.
 */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "server/server_internal.h"

#define INVALID "invalid_request_error"

void srv_error_set(srv_error *err, int status, const char *type, const char *code,
                   const char *param, const char *fmt, ...) {
    err->status = status;
    err->type = type;
    err->code = code;
    snprintf(err->param, sizeof err->param, "%s", param ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

char *srv_error_json(const srv_error *err, int with_detail) {
    json_t *e = json_pack("{s:s, s:s, s:o, s:o}", "message", err->message, "type", err->type,
                          "param", err->param[0] ? json_string(err->param) : json_null(),
                          "code", err->code ? json_string(err->code) : json_null());
    json_t *root = json_pack("{s:o}", "error", e);
    if (root && with_detail) json_object_set_new(root, "detail", json_string(err->message));
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return text;
}

int srv_utf8_valid(const char *s, size_t len, size_t *bad_offset) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        unsigned c = p[i];
        size_t n;
        uint32_t cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 2;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 3;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 4;
            cp = c & 0x07;
        } else {
            goto bad;
        }
        if (i + n > len) goto bad;
        for (size_t k = 1; k < n; k++) {
            if ((p[i + k] & 0xC0) != 0x80) goto bad;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        /* Overlong forms, surrogates and values past U+10FFFF are invalid. */
        if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) ||
            (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
            goto bad;
        i += n;
    }
    return 1;
bad:
    if (bad_offset) *bad_offset = i;
    return 0;
}

/* ---- field helpers ------------------------------------------------------- */

static int bad_type(srv_error *err, const char *key, const char *expected) {
    srv_error_set(err, 400, INVALID, "invalid_type", key, "'%s' must be %s", key, expected);
    return -1;
}

/* Reads an optional number in [lo, hi]; absent or null leaves *out. */
static int get_float(json_t *obj, const char *key, double lo, double hi, float *out,
                     srv_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return bad_type(err, key, "a number");
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi)) {
        srv_error_set(err, 400, INVALID, "invalid_value", key,
                      "'%s' is %g but must be from %g to %g", key, x, lo, hi);
        return -1;
    }
    *out = (float)x;
    return 0;
}

/* Reads an optional integer in [lo, hi]; returns 1 if present. */
static int get_int(json_t *obj, const char *key, long long lo, long long hi, long long *out,
                   srv_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return bad_type(err, key, "an integer");
    long long x = json_integer_value(v);
    if (x < lo || x > hi) {
        srv_error_set(err, 400, INVALID, "invalid_value", key,
                      "'%s' is %lld but must be from %lld to %lld", key, x, lo, hi);
        return -1;
    }
    *out = x;
    return 1;
}

static int get_bool(json_t *obj, const char *key, int *out, srv_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return bad_type(err, key, "true or false");
    *out = json_is_true(v);
    return 0;
}

/* Rejects keys outside `allowed` (a NULL-terminated list). */
static int check_keys(json_t *obj, const char *const *allowed, const char *where,
                      srv_error *err) {
    const char *key;
    json_t *value;
    json_object_foreach(obj, key, value) {
        int known = 0;
        for (int i = 0; allowed[i] && !known; i++) known = !strcmp(key, allowed[i]);
        if (!known) {
            srv_error_set(err, 400, INVALID, "unknown_field", key,
                          "unknown field '%s' in %s; see /openapi.json for the accepted fields",
                          key, where);
            return -1;
        }
    }
    return 0;
}

/* Accepts a field this server does not implement only at its neutral value. */
static int check_unsupported(json_t *obj, srv_error *err) {
    static const char *const zero_numbers[] = {"presence_penalty", "frequency_penalty", NULL};
    for (int i = 0; zero_numbers[i]; i++) {
        json_t *v = json_object_get(obj, zero_numbers[i]);
        if (!v || json_is_null(v)) continue;
        if (!json_is_number(v)) return bad_type(err, zero_numbers[i], "a number");
        if (json_number_value(v) != 0) {
            srv_error_set(err, 400, INVALID, "unsupported_parameter", zero_numbers[i],
                          "'%s' is not supported by this server; omit it or set it to 0 "
                          "(repetition_penalty is available instead)", zero_numbers[i]);
            return -1;
        }
    }

    json_t *v = json_object_get(obj, "logprobs");
    if (v && !json_is_null(v) && !json_is_false(v) &&
        !(json_is_integer(v) && json_integer_value(v) == 0)) {
        srv_error_set(err, 400, INVALID, "unsupported_parameter", "logprobs",
                      "'logprobs' is not supported by this server; omit it or set it to "
                      "false");
        return -1;
    }

    v = json_object_get(obj, "top_logprobs");
    if (v && !json_is_null(v) && !(json_is_integer(v) && json_integer_value(v) == 0)) {
        srv_error_set(err, 400, INVALID, "unsupported_parameter", "top_logprobs",
                      "'top_logprobs' is not supported by this server");
        return -1;
    }

    v = json_object_get(obj, "echo");
    if (v && !json_is_null(v) && !json_is_false(v)) {
        srv_error_set(err, 400, INVALID, "unsupported_parameter", "echo",
                      "'echo' is not supported by this server; omit it or set it to false");
        return -1;
    }

    v = json_object_get(obj, "suffix");
    if (v && !json_is_null(v)) {
        srv_error_set(err, 400, INVALID, "unsupported_parameter", "suffix",
                      "'suffix' is not supported by this server");
        return -1;
    }

    v = json_object_get(obj, "logit_bias");
    if (v && !json_is_null(v) && !(json_is_object(v) && json_object_size(v) == 0)) {
        srv_error_set(err, 400, INVALID, "unsupported_parameter", "logit_bias",
                      "'logit_bias' is not supported by this server");
        return -1;
    }

    v = json_object_get(obj, "tools");
    if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0)) {
        srv_error_set(err, 400, INVALID, "unsupported_parameter", "tools",
                      "tool calls are not supported by this model");
        return -1;
    }

    v = json_object_get(obj, "response_format");
    if (v && !json_is_null(v)) {
        json_t *type = json_is_object(v) ? json_object_get(v, "type") : NULL;
        if (!json_is_string(type) || strcmp(json_string_value(type), "text")) {
            srv_error_set(err, 400, INVALID, "unsupported_parameter", "response_format",
                          "only response_format {\"type\": \"text\"} is supported");
            return -1;
        }
    }
    return 0;
}

static int get_stops(json_t *obj, srv_api_request *req, srv_error *err) {
    json_t *v = json_object_get(obj, "stop");
    if (!v || json_is_null(v)) return 0;
    json_t *single[1] = {v};
    size_t n = 1;
    if (json_is_array(v)) {
        n = json_array_size(v);
        if (n > SRV_MAX_STOPS) {
            srv_error_set(err, 400, INVALID, "invalid_value", "stop",
                          "'stop' has %zu strings; at most %d are allowed", n, SRV_MAX_STOPS);
            return -1;
        }
    } else if (!json_is_string(v)) {
        return bad_type(err, "stop", "a string or an array of strings");
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(v) ? json_array_get(v, i) : single[0];
        if (!json_is_string(s)) return bad_type(err, "stop", "a string or an array of strings");
        size_t len = json_string_length(s);
        if (len == 0 || len > SRV_MAX_STOP_BYTES || strlen(json_string_value(s)) != len) {
            srv_error_set(err, 400, INVALID, "invalid_value", "stop",
                          "each stop string must have 1 to %d bytes and no NUL character",
                          SRV_MAX_STOP_BYTES);
            return -1;
        }
        req->stops[req->n_stops] = strdup(json_string_value(s));
        if (!req->stops[req->n_stops]) {
            srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
            return -1;
        }
        req->n_stops++;
    }
    return 0;
}

/* Sampling fields shared by all routes. */
static int get_sampling(json_t *obj, srv_api_request *req, srv_error *err) {
    long long top_k = req->sampling.top_k, seed = 0;
    if (get_float(obj, "temperature", 0, 2, &req->sampling.temperature, err) ||
        get_float(obj, "top_p", 0, 1, &req->sampling.top_p, err) ||
        get_float(obj, "min_p", 0, 1, &req->sampling.min_p, err) ||
        get_float(obj, "repetition_penalty", 0.01, 10, &req->sampling.repetition_penalty, err))
        return -1;
    if (get_int(obj, "top_k", 0, 1 << 20, &top_k, err) < 0) return -1;
    req->sampling.top_k = (int)top_k;
    int have_seed = get_int(obj, "seed", INT64_MIN, INT64_MAX, &seed, err);
    if (have_seed < 0) return -1;
    if (have_seed) {
        req->sampling.seed = (uint64_t)seed;
        req->have_seed = 1;
    }
    if (req->sampling.top_p <= 0) {
        srv_error_set(err, 400, INVALID, "invalid_value", "top_p",
                      "'top_p' must be greater than 0 and at most 1");
        return -1;
    }
    return get_stops(obj, req, err);
}

static int get_max_tokens(json_t *obj, const char *key, const srv_api_limits *lim,
                          srv_api_request *req, srv_error *err) {
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return bad_type(err, key, "an integer");
    long long x = json_integer_value(v);
    if (x < 1 || x > lim->n_ctx) {
        srv_error_set(err, 400, INVALID, "invalid_value", key,
                      "'%s' is %lld but must be from 1 to %d (the context length)", key, x,
                      lim->n_ctx);
        return -1;
    }
    req->max_tokens = (int)x;
    return 0;
}

static int get_model(json_t *obj, const srv_api_limits *lim, srv_error *err) {
    json_t *v = json_object_get(obj, "model");
    if (!v) {
        srv_error_set(err, 400, INVALID, "missing_field", "model",
                      "missing field 'model'; GET /v1/models lists the served model");
        return -1;
    }
    if (!json_is_string(v)) return bad_type(err, "model", "a string");
    if (strcmp(json_string_value(v), lim->model_name)) {
        srv_error_set(err, 404, INVALID, "model_not_found", "model",
                      "the model '%.200s' does not exist; this server serves '%s'",
                      json_string_value(v), lim->model_name);
        return -1;
    }
    return 0;
}

static int get_stream(json_t *obj, srv_api_request *req, srv_error *err) {
    if (get_bool(obj, "stream", &req->stream, err)) return -1;
    json_t *so = json_object_get(obj, "stream_options");
    if (!so || json_is_null(so)) return 0;
    if (!json_is_object(so)) return bad_type(err, "stream_options", "an object");
    static const char *const keys[] = {"include_usage", NULL};
    if (check_keys(so, keys, "stream_options", err)) return -1;
    return get_bool(so, "include_usage", &req->include_usage, err);
}

static int get_n(json_t *obj, const srv_api_limits *lim, srv_api_request *req, srv_error *err) {
    long long n = 1;
    int max_n = lim->n_parallel < SRV_MAX_N ? lim->n_parallel : SRV_MAX_N;
    if (get_int(obj, "n", 1, max_n, &n, err) < 0) return -1;
    req->n = (int)n;
    long long best_of = n;
    if (get_int(obj, "best_of", n, n, &best_of, err) < 0) return -1;
    return 0;
}

/* ---- tokenization -------------------------------------------------------- */

static int tokenize(const srv_api_limits *lim, const char *text, size_t len, int flags,
                    srv_api_request *req, srv_error *err) {
    int n = av_tokenize(lim->tok, text, len, flags, NULL, 0);
    if (n < 0) {
        srv_error_set(err, 400, INVALID, "invalid_value", "prompt",
                      "the prompt cannot be tokenized: %s", av_last_error());
        return -1;
    }
    req->ids = malloc(sizeof(int32_t) * (size_t)(n + 1));
    if (!req->ids) {
        srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory tokenizing");
        return -1;
    }
    av_tokenize(lim->tok, text, len, flags, req->ids, n);
    req->n_ids = n;
    return 0;
}

static int check_prompt_length(const srv_api_limits *lim, srv_api_request *req,
                               const char *param, srv_error *err) {
    if (req->n_ids == 0) {
        srv_error_set(err, 400, INVALID, "invalid_value", param,
                      "the prompt is empty after tokenization");
        return -1;
    }
    if (req->n_ids >= lim->n_ctx) {
        srv_error_set(err, 400, INVALID, "context_length_exceeded", param,
                      "the prompt has %d tokens but the context holds %d; shorten the prompt "
                      "or restart the server with a larger --ctx", req->n_ids, lim->n_ctx);
        return -1;
    }
    return 0;
}

static int get_prompt(json_t *obj, const srv_api_limits *lim, srv_api_request *req,
                      srv_error *err) {
    json_t *v = json_object_get(obj, "prompt");
    if (!v) {
        srv_error_set(err, 400, INVALID, "missing_field", "prompt", "missing field 'prompt'");
        return -1;
    }
    if (json_is_array(v) && json_array_size(v) == 1 && json_is_string(json_array_get(v, 0)))
        v = json_array_get(v, 0);
    if (json_is_string(v)) {
        req->prompt_text = strdup(json_string_value(v));
        if (!req->prompt_text) {
            srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
            return -1;
        }
        if (tokenize(lim, json_string_value(v), json_string_length(v), AV_TOKENIZE_BOS, req,
                     err))
            return -1;
        return check_prompt_length(lim, req, "prompt", err);
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad_type(err, "prompt", "a string, a one-string array or an array of token ids");
    size_t n = json_array_size(v);
    if (n >= (size_t)lim->n_ctx) {
        srv_error_set(err, 400, INVALID, "context_length_exceeded", "prompt",
                      "the prompt has %zu tokens but the context holds %d; shorten the prompt "
                      "or restart the server with a larger --ctx", n, lim->n_ctx);
        return -1;
    }
    req->ids = malloc(sizeof(int32_t) * n);
    if (!req->ids) {
        srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        return -1;
    }
    int vocab = av_tokenizer_vocab_size(lim->tok);
    for (size_t i = 0; i < n; i++) {
        json_t *t = json_array_get(v, i);
        if (!json_is_integer(t))
            return bad_type(err, "prompt", "a string, a one-string array or an array of token "
                            "ids");
        long long id = json_integer_value(t);
        if (id < 0 || id >= vocab) {
            srv_error_set(err, 400, INVALID, "invalid_value", "prompt",
                          "token id %lld at index %zu is outside the vocabulary [0, %d)", id, i,
                          vocab);
            return -1;
        }
        req->ids[i] = (int32_t)id;
    }
    req->n_ids = (int)n;
    return 0;
}

/* Reads a message's content: a string or an array of {"type": "text",
 * "text": ...} parts, joined. Returns a malloc'd string. */
static char *message_content(json_t *content, size_t index, srv_error *err) {
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", index);
    if (json_is_string(content)) {
        char *s = strdup(json_string_value(content));
        if (!s) srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        return s;
    }
    if (!json_is_array(content)) {
        bad_type(err, param, "a string or an array of text parts");
        return NULL;
    }
    size_t total = 1;
    size_t i;
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *type = json_object_get(part, "type");
        json_t *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type) ||
            strcmp(json_string_value(type), "text") || !json_is_string(text)) {
            srv_error_set(err, 400, INVALID, "invalid_value", param,
                          "'%s' parts must be {\"type\": \"text\", \"text\": string}; this "
                          "model reads text only", param);
            return NULL;
        }
        total += json_string_length(text);
    }
    char *s = malloc(total);
    if (!s) {
        srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        return NULL;
    }
    size_t len = 0;
    json_array_foreach(content, i, part) {
        json_t *text = json_object_get(part, "text");
        memcpy(s + len, json_string_value(text), json_string_length(text));
        len += json_string_length(text);
    }
    s[len] = 0;
    return s;
}

static int get_messages(json_t *obj, const srv_api_limits *lim, srv_api_request *req,
                        srv_error *err) {
    json_t *v = json_object_get(obj, "messages");
    if (!v) {
        srv_error_set(err, 400, INVALID, "missing_field", "messages",
                      "missing field 'messages'");
        return -1;
    }
    if (!json_is_array(v) || json_array_size(v) == 0)
        return bad_type(err, "messages", "a non-empty array of messages");
    size_t n = json_array_size(v);
    if (n > 4096) {
        srv_error_set(err, 400, INVALID, "invalid_value", "messages",
                      "'messages' has %zu entries; at most 4096 are allowed", n);
        return -1;
    }
    av_chat_message *msgs = calloc(n, sizeof *msgs);
    char **contents = calloc(n, sizeof *contents);
    int rc = -1;
    if (!msgs || !contents) {
        srv_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        goto done;
    }
    static const char *const keys[] = {"role", "content", "name", NULL};
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(v, i);
        char param[64];
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m)) {
            bad_type(err, param, "an object with 'role' and 'content'");
            goto done;
        }
        if (check_keys(m, keys, param, err)) goto done;
        json_t *role = json_object_get(m, "role");
        const char *r = json_is_string(role) ? json_string_value(role) : NULL;
        if (r && !strcmp(r, "developer")) r = "system";
        if (!r || (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant"))) {
            snprintf(param, sizeof param, "messages[%zu].role", i);
            srv_error_set(err, 400, INVALID, "invalid_value", param,
                          "'%s' must be \"system\", \"user\" or \"assistant\"", param);
            goto done;
        }
        json_t *content = json_object_get(m, "content");
        if (!content) {
            snprintf(param, sizeof param, "messages[%zu].content", i);
            srv_error_set(err, 400, INVALID, "missing_field", param, "missing field '%s'",
                          param);
            goto done;
        }
        contents[i] = message_content(content, i, err);
        if (!contents[i]) goto done;
        msgs[i] = (av_chat_message){r, contents[i]};
    }
    /* NOTE: the formatted text is tokenized with special tokens parsed, so a
     * message that contains a literal "</s>" or "<|user|>" becomes that
     * control token, as in the reference chat template. */
    char *prompt = av_chat_format(msgs, (int)n);
    if (!prompt) {
        srv_error_set(err, 400, INVALID, "invalid_value", "messages",
                      "the messages cannot be formatted: %s", av_last_error());
        goto done;
    }
    rc = tokenize(lim, prompt, strlen(prompt), AV_TOKENIZE_PARSE_SPECIAL, req, err);
    free(prompt);
    if (rc == 0) rc = check_prompt_length(lim, req, "messages", err);

done:
    if (contents)
        for (size_t i = 0; i < n; i++) free(contents[i]);
    free(contents);
    free(msgs);
    return rc;
}

/* ---- entry points -------------------------------------------------------- */

static const char *const generate_keys[] = {
    "prompt", "max_new_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
    "repetition_penalty", NULL};
static const char *const completion_keys[] = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options",
    "stop", "seed", "logprobs", "echo", "presence_penalty", "frequency_penalty", "user",
    "best_of", "suffix", "logit_bias", "top_k", "min_p", "repetition_penalty", "ignore_eos",
    NULL};
static const char *const chat_keys[] = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n",
    "stream", "stream_options", "stop", "seed", "logprobs", "top_logprobs", "presence_penalty",
    "frequency_penalty", "user", "logit_bias", "response_format", "tools", "tool_choice",
    "parallel_tool_calls", "top_k", "min_p", "repetition_penalty", "ignore_eos", NULL};

int srv_api_parse(srv_api_kind kind, const char *body, size_t len, const srv_api_limits *lim,
                  srv_api_request *req, srv_error *err) {
    memset(req, 0, sizeof *req);
    req->kind = kind;
    req->n = 1;
    av_sampler_params_default(&req->sampling);
    if (kind == API_GENERATE) {
        /* The defaults of the FastAPI service this route replaces:
         * Hugging Face sampling with temperature 0.7, top_p 0.9 and its
         * default top_k of 50. */
        req->sampling.temperature = 0.7f;
        req->sampling.top_p = 0.9f;
        req->sampling.top_k = 50;
        req->max_tokens = 100;
    } else {
        /* OpenAI's defaults: temperature 1, top_p 1, up to the context. */
        req->sampling.temperature = 1.0f;
        req->sampling.top_p = 1.0f;
        req->max_tokens = lim->n_ctx;
    }

    size_t bad;
    if (!srv_utf8_valid(body, len, &bad)) {
        srv_error_set(err, 400, INVALID, "invalid_utf8", NULL,
                      "the request body is not valid UTF-8 (invalid byte at offset %zu)", bad);
        return -1;
    }
    json_error_t jerr;
    json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        srv_error_set(err, 400, INVALID, "invalid_json", NULL,
                      "the request body is not valid JSON: %s at line %d, column %d", jerr.text,
                      jerr.line, jerr.column);
        return -1;
    }
    int rc = -1;
    if (!json_is_object(root)) {
        srv_error_set(err, 400, INVALID, "invalid_json", NULL,
                      "the request body must be a JSON object");
        goto done;
    }
    const char *const *keys = kind == API_GENERATE ? generate_keys
                              : kind == API_COMPLETION ? completion_keys : chat_keys;
    const char *where = kind == API_GENERATE ? "a /generate request"
                        : kind == API_COMPLETION ? "a completion request" : "a chat request";
    if (check_keys(root, keys, where, err)) goto done;

    if (kind == API_GENERATE) {
        json_t *p = json_object_get(root, "prompt");
        if (!p) {
            srv_error_set(err, 400, INVALID, "missing_field", "prompt", "missing field 'prompt'");
            goto done;
        }
        if (!json_is_string(p)) {
            bad_type(err, "prompt", "a string");
            goto done;
        }
        if (get_max_tokens(root, "max_new_tokens", lim, req, err) || get_sampling(root, req, err))
            goto done;
        if (get_prompt(root, lim, req, err)) goto done;
    } else {
        if (get_model(root, lim, err) || check_unsupported(root, err) ||
            get_stream(root, req, err) || get_n(root, lim, req, err) ||
            get_sampling(root, req, err) || get_bool(root, "ignore_eos", &req->ignore_eos, err))
            goto done;
        if (get_max_tokens(root, "max_tokens", lim, req, err)) goto done;
        if (kind == API_CHAT) {
            if (get_max_tokens(root, "max_completion_tokens", lim, req, err)) goto done;
            if (get_messages(root, lim, req, err)) goto done;
        } else if (get_prompt(root, lim, req, err)) {
            goto done;
        }
    }
    int positions = req->n_ids + req->max_tokens < lim->n_ctx ? req->n_ids + req->max_tokens
                                                              : lim->n_ctx;
    if (positions > lim->kv_tokens_total) {
        srv_error_set(err, 400, INVALID, "context_length_exceeded", NULL,
                      "the prompt (%d tokens) plus max_tokens (%d) needs %d KV cache positions "
                      "but the server's pool holds %d; lower max_tokens or restart with a "
                      "larger --kv-tokens", req->n_ids, req->max_tokens, positions,
                      lim->kv_tokens_total);
        goto done;
    }
    rc = 0;
done:
    json_decref(root);
    return rc;
}

void srv_api_request_free(srv_api_request *req) {
    free(req->prompt_text);
    free(req->ids);
    for (int i = 0; i < req->n_stops; i++) free(req->stops[i]);
    memset(req, 0, sizeof *req);
}

/* ---- responses ----------------------------------------------------------- */

/* Makes a JSON string of generated text; it is valid UTF-8 because the
 * streaming decoder releases only whole characters. */
static json_t *text_value(const char *text, size_t len) {
    json_t *s = json_stringn(text ? text : "", text ? len : 0);
    return s ? s : json_string("\xEF\xBF\xBD");
}

static json_t *finish_value(srv_finish f) {
    if (f == FINISH_STOP || f == FINISH_LENGTH) return json_string(srv_finish_name(f));
    return json_null();
}

static json_t *usage_value(int prompt_tokens, int completion_tokens) {
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", prompt_tokens, "completion_tokens",
                     completion_tokens, "total_tokens", prompt_tokens + completion_tokens);
}

static char *dump(json_t *root) {
    char *text = root ? json_dumps(root, JSON_COMPACT) : NULL;
    json_decref(root);
    return text;
}

char *srv_api_response(const srv_api_request *req, const char *id, const char *model,
                       long created, const srv_choice *choices, int n_choices) {
    if (req->kind == API_GENERATE) {
        size_t plen = strlen(req->prompt_text);
        char *joined = malloc(plen + choices[0].len + 1);
        if (!joined) return NULL;
        memcpy(joined, req->prompt_text, plen);
        if (choices[0].len) memcpy(joined + plen, choices[0].text, choices[0].len);
        joined[plen + choices[0].len] = 0;
        json_t *root = json_pack("{s:o}", "generated_text", text_value(joined, plen + choices[0].len));
        free(joined);
        return dump(root);
    }
    json_t *list = json_array();
    int generated = 0;
    for (int i = 0; i < n_choices; i++) {
        json_t *c;
        if (req->kind == API_CHAT)
            c = json_pack("{s:i, s:{s:s, s:o}, s:n, s:o}", "index", i, "message", "role",
                          "assistant", "content", text_value(choices[i].text, choices[i].len),
                          "logprobs", "finish_reason", finish_value(choices[i].finish));
        else
            c = json_pack("{s:i, s:o, s:n, s:o}", "index", i, "text",
                          text_value(choices[i].text, choices[i].len), "logprobs",
                          "finish_reason", finish_value(choices[i].finish));
        json_array_append_new(list, c);
        generated += choices[i].n_generated;
    }
    json_t *root = json_pack("{s:s, s:s, s:i, s:s, s:o, s:o}", "id", id, "object",
                             req->kind == API_CHAT ? "chat.completion" : "text_completion",
                             "created", (json_int_t)created, "model", model, "choices", list,
                             "usage", usage_value(req->n_ids, generated));
    return dump(root);
}

char *srv_api_chunk(const srv_api_request *req, const char *id, const char *model,
                    long created, int index, const char *text, size_t len, int first,
                    srv_finish finish, int prompt_tokens, int completion_tokens) {
    int chat = req->kind == API_CHAT;
    json_t *choices = json_array();
    json_t *usage = json_null();
    if (index < 0) {
        json_decref(usage);
        usage = usage_value(prompt_tokens, completion_tokens);
    } else if (chat) {
        json_t *delta = json_object();
        if (first) json_object_set_new(delta, "role", json_string("assistant"));
        if (finish == FINISH_NONE) json_object_set_new(delta, "content", text_value(text, len));
        json_array_append_new(choices, json_pack("{s:i, s:o, s:n, s:o}", "index", index,
                                                 "delta", delta, "logprobs", "finish_reason",
                                                 finish_value(finish)));
    } else {
        json_array_append_new(choices, json_pack("{s:i, s:o, s:n, s:o}", "index", index,
                                                 "text", text_value(text, len), "logprobs",
                                                 "finish_reason", finish_value(finish)));
    }
    json_t *root = json_pack("{s:s, s:s, s:i, s:s, s:o}", "id", id, "object",
                             chat ? "chat.completion.chunk" : "text_completion", "created",
                             (json_int_t)created, "model", model, "choices", choices);
    if (root && (index < 0 || req->include_usage)) json_object_set_new(root, "usage", usage);
    else json_decref(usage);
    return dump(root);
}

char *srv_api_models(const char *model, long created) {
    return dump(json_pack("{s:s, s:[{s:s, s:s, s:i, s:s}]}", "object", "list", "data", "id",
                          model, "object", "model", "created", (json_int_t)created, "owned_by",
                          "airavata"));
}
