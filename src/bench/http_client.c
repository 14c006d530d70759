/*
 * http_client.c - one completion request to a running server, for
 * `airavata bench --url`.
 *
 * Two APIs are spoken: our /generate ({"prompt", "max_new_tokens"} ->
 * {"generated_text"}, which the replaced FastAPI app also serves) and the
 * OpenAI completions API (/v1/completions {"prompt", "max_tokens"} ->
 * {"choices": [{"text"}]}, served by llama.cpp's server and ours). A response
 * counts only when it is HTTP 200 with JSON of the expected shape, so a
 * server that returns garbage fails the benchmark instead of timing it.
 */
#include <curl/curl.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

/* Largest response body accepted; a 20-token completion is a few KiB. */
#define MAX_RESPONSE_BYTES (16u << 20)

typedef struct {
    char *data;
    size_t len;
    int too_large;
} response_body;

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *user) {
    response_body *body = user;
    size_t n = size * nmemb;
    if (body->len + n > MAX_RESPONSE_BYTES) {
        body->too_large = 1;
        return 0; /* aborts the transfer */
    }
    char *grown = realloc(body->data, body->len + n + 1);
    if (!grown) return 0;
    memcpy(grown + body->len, ptr, n);
    body->data = grown;
    body->len += n;
    body->data[body->len] = 0;
    return n;
}

av_status av_http_global_init(void) {
    CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK)
        return av_set_error(AV_ERR_IO, "libcurl initialization failed: %s",
                            curl_easy_strerror(rc));
    return AV_OK;
}

void av_http_global_cleanup(void) { curl_global_cleanup(); }

/* Builds the request body of the API as a malloc'd JSON string. */
static char *request_json(av_http_api api, const char *model, const char *prompt,
                          int max_new_tokens) {
    json_t *req = api == AV_API_OPENAI
        ? json_pack("{s:s, s:s, s:i, s:f}", "model", model ? model : "default", "prompt",
                    prompt, "max_tokens", max_new_tokens, "temperature", 0.0)
        : json_pack("{s:s, s:i}", "prompt", prompt, "max_new_tokens", max_new_tokens);
    char *text = req ? json_dumps(req, JSON_COMPACT) : NULL;
    json_decref(req);
    return text;
}

/* Checks that a 200 response has the generated text where the API puts it. */
static av_status check_answer(const char *url, av_http_api api, const response_body *body) {
    json_error_t jerr;
    json_t *root = json_loadb(body->data ? body->data : "", body->len, 0, &jerr);
    if (!root) {
        char head[81];
        snprintf(head, sizeof head, "%s", body->data ? body->data : "");
        return av_set_error(AV_ERR_FORMAT, "%s answered with something that is not JSON (%s); "
                            "first bytes: '%s'; is this the right URL and --api?", url,
                            jerr.text, head);
    }
    json_t *text = NULL;
    if (api == AV_API_OPENAI) {
        json_t *choices = json_object_get(root, "choices");
        json_t *first = json_is_array(choices) ? json_array_get(choices, 0) : NULL;
        text = first ? json_object_get(first, "text") : NULL;
    } else {
        text = json_object_get(root, "generated_text");
    }
    av_status st = AV_OK;
    if (!json_is_string(text))
        st = av_set_error(AV_ERR_FORMAT, "%s answered JSON without %s; is --api %s right for "
                          "this server?", url,
                          api == AV_API_OPENAI ? "choices[0].text" : "\"generated_text\"",
                          api == AV_API_OPENAI ? "openai" : "generate");
    json_decref(root);
    return st;
}

av_status av_http_complete(const char *url, av_http_api api, const char *model,
                           const char *prompt, int max_new_tokens, double timeout_s,
                           double *latency_s) {
    char endpoint[2048];
    size_t ulen = strlen(url);
    while (ulen > 0 && url[ulen - 1] == '/') ulen--;
    int n = snprintf(endpoint, sizeof endpoint, "%.*s%s", (int)ulen, url,
                     api == AV_API_OPENAI ? "/v1/completions" : "/generate");
    if (n < 0 || (size_t)n >= sizeof endpoint)
        return av_set_error(AV_ERR_INVALID, "URL of %zu bytes is too long (max 2000)", ulen);

    char *payload = request_json(api, model, prompt, max_new_tokens);
    CURL *curl = curl_easy_init();
    if (!payload || !curl) {
        free(payload);
        if (curl) curl_easy_cleanup(curl);
        return av_set_error(AV_ERR_NOMEM, "out of memory building the request to %s", endpoint);
    }
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    response_body body = {0};
    curl_easy_setopt(curl, CURLOPT_URL, endpoint);
    curl_easy_setopt(curl, CURLOPT_POSTFIELDS, payload);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1000));
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L); /* required when threads call libcurl */

    double t0 = av_now_seconds();
    CURLcode rc = curl_easy_perform(curl);
    double elapsed = av_now_seconds() - t0;
    long code = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);

    av_status st = AV_OK;
    if (body.too_large)
        st = av_set_error(AV_ERR_RANGE, "%s sent more than %u bytes; not a completion answer",
                          endpoint, MAX_RESPONSE_BYTES);
    else if (rc != CURLE_OK)
        st = av_set_error(AV_ERR_IO, "request to %s failed: %s; is the server running and the "
                          "URL right?", endpoint, curl_easy_strerror(rc));
    else if (code != 200)
        st = av_set_error(AV_ERR_IO, "%s answered HTTP %ld: %.200s", endpoint, code,
                          body.data ? body.data : "");
    else
        st = check_answer(endpoint, api, &body);
    if (!st) *latency_s = elapsed;

    free(body.data);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    free(payload);
    return st;
}

/* Body of GET url + path when the server returns 200, as a malloc'd string. */
static char *http_get(const char *url, const char *path, double timeout_s) {
    char endpoint[2048];
    size_t ulen = strlen(url);
    while (ulen > 0 && url[ulen - 1] == '/') ulen--;
    int n = snprintf(endpoint, sizeof endpoint, "%.*s%s", (int)ulen, url, path);
    CURL *curl = n > 0 && (size_t)n < sizeof endpoint ? curl_easy_init() : NULL;
    if (!curl) return NULL;
    response_body body = {0};
    curl_easy_setopt(curl, CURLOPT_URL, endpoint);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, (long)(timeout_s * 1000));
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    long code = 0;
    if (curl_easy_perform(curl) == CURLE_OK)
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(curl);
    if (code != 200) {
        free(body.data);
        return NULL;
    }
    return body.data;
}

char *av_http_openai_model(const char *url, double timeout_s) {
    char *text = http_get(url, "/v1/models", timeout_s);
    json_t *root = text ? json_loads(text, 0, NULL) : NULL;
    json_t *data = root ? json_object_get(root, "data") : NULL;
    json_t *first = json_is_array(data) ? json_array_get(data, 0) : NULL;
    json_t *id = first ? json_object_get(first, "id") : NULL;
    char *name = json_is_string(id) ? strdup(json_string_value(id)) : NULL;
    json_decref(root);
    free(text);
    return name;
}
