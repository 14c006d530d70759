/*
 * hub.c - the Hugging Face hub's HTTP API through libcurl: the file listing
 * of a revision and resumable, verified file downloads.
 *
 * Facts about the hub this relies on (huggingface.co, as huggingface_hub
 * uses it):
 *   - GET /api/models/ORG/NAME/revision/REV?blobs=true returns {"sha":
 *     COMMIT, "siblings": [{"rfilename", "blobId", "size", "lfs": {"sha256",
 *     "size", "pointerSize"}}]}, where blobId is the git blob sha1 and lfs is
 *     present only for files stored with Git LFS.
 *   - GET /ORG/NAME/resolve/COMMIT/FILE returns the file, for LFS files after
 *     a redirect to a storage host; Range requests are honoured.
 *   - Errors carry an X-Error-Code header: RepoNotFound, RevisionNotFound,
 *     EntryNotFound, GatedRepo. For a missing repository the hub returns
 *     401 when no token is sent, so that private repositories stay hidden.
 *
 * Downloads go to BLOB.incomplete and are renamed to BLOB only after the
 * size and the hash match, so a loader never reads a truncated file.
 */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "hub/hub.h"

#define MAX_API_RESPONSE (64u << 20) /* bytes of listing JSON accepted */
#define MAX_ERROR_BODY 512           /* bytes of an error body kept for messages */
#define MAX_REDIRECTS 10
#define MAX_BACKOFF_S 30

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_result;

static void init_curl(void) { curl_init_result = curl_global_init(CURL_GLOBAL_DEFAULT); }

/* ---- requests ---------------------------------------------------------- */

/* What the header callback keeps of the last response. */
typedef struct {
    char error_code[64];      /* X-Error-Code */
    char error_message[256];  /* X-Error-Message */
    int64_t range_start;      /* first byte of Content-Range, -1 if none */
} response_headers;

static size_t on_header(char *data, size_t size, size_t count, void *user) {
    response_headers *h = user;
    size_t len = size * count;
    /* Each response of a redirect chain starts with its status line. */
    if (len >= 5 && !strncmp(data, "HTTP/", 5)) {
        h->error_code[0] = '\0';
        h->error_message[0] = '\0';
        h->range_start = -1;
        return len;
    }
    const char *colon = memchr(data, ':', len);
    if (!colon) return len;
    size_t name_len = (size_t)(colon - data);
    const char *value = colon + 1;
    size_t value_len = len - name_len - 1;
    while (value_len > 0 && (*value == ' ' || *value == '\t')) value++, value_len--;
    while (value_len > 0 && (value[value_len - 1] == '\r' || value[value_len - 1] == '\n'))
        value_len--;

    char *dest = NULL;
    size_t dest_size = 0;
    if (name_len == 12 && !strncasecmp(data, "X-Error-Code", 12)) {
        dest = h->error_code;
        dest_size = sizeof h->error_code;
    } else if (name_len == 15 && !strncasecmp(data, "X-Error-Message", 15)) {
        dest = h->error_message;
        dest_size = sizeof h->error_message;
    } else if (name_len == 13 && !strncasecmp(data, "Content-Range", 13)) {
        /* "bytes START-END/TOTAL" */
        if (value_len > 6 && !strncasecmp(value, "bytes ", 6)) {
            char num[32] = {0};
            size_t n = value_len - 6 < sizeof num - 1 ? value_len - 6 : sizeof num - 1;
            memcpy(num, value + 6, n);
            char *end;
            long long start = strtoll(num, &end, 10);
            if (end != num && *end == '-' && start >= 0) h->range_start = start;
        }
    }
    if (dest) {
        size_t n = value_len < dest_size - 1 ? value_len : dest_size - 1;
        memcpy(dest, value, n);
        dest[n] = '\0';
    }
    return len;
}

/* Creates a handle with what every request shares: redirects, timeouts,
 * the token and the header callback. */
static CURL *new_request(const av_hub_client *client, const char *url,
                         struct curl_slist **headers, response_headers *resp) {
    pthread_once(&curl_once, init_curl);
    if (curl_init_result != CURLE_OK) {
        av_set_error(AV_ERR_IO, "libcurl initialization failed: %s",
                     curl_easy_strerror(curl_init_result));
        return NULL;
    }
    CURL *curl = curl_easy_init();
    if (!curl) {
        av_set_error(AV_ERR_NOMEM, "curl_easy_init failed");
        return NULL;
    }
    *headers = NULL;
    if (client->token && *client->token) {
        char auth[1024];
        int n = snprintf(auth, sizeof auth, "Authorization: Bearer %s", client->token);
        if (n < 0 || (size_t)n >= sizeof auth) {
            curl_easy_cleanup(curl);
            av_set_error(AV_ERR_INVALID, "the access token is too long (%zu bytes)",
                         strlen(client->token));
            return NULL;
        }
        /* libcurl sends custom Authorization headers only to the host of
         * the first URL, so the token does not leak to the storage host. */
        *headers = curl_slist_append(*headers, auth);
    }
    memset(resp, 0, sizeof *resp);
    resp->range_start = -1;
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, *headers);
    curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(curl, CURLOPT_MAXREDIRS, (long)MAX_REDIRECTS);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "airavata/" AV_VERSION_STRING);
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 30L);
    /* A transfer slower than 1 byte/s for 60 s counts as stalled. */
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(curl, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, resp);
    return curl;
}

/* Returns 1 for errors worth retrying: network failures, stalls, truncated
 * transfers, HTTP 429 and 5xx. */
static int is_transient(CURLcode rc, long status) {
    switch (rc) {
    case CURLE_OK: return status == 429 || status >= 500;
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_PARTIAL_FILE:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM: return 1;
    default: return 0;
    }
}

/* Waits before retry number `attempt` (1, 2, ...): 1 s, 2 s, 4 s, ...,
 * at most MAX_BACKOFF_S. */
static void backoff(int attempt) {
    int seconds = 1;
    for (int i = 1; i < attempt && seconds < MAX_BACKOFF_S; i++) seconds *= 2;
    if (seconds > MAX_BACKOFF_S) seconds = MAX_BACKOFF_S;
    struct timespec ts = {seconds, 0};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static av_status network_error(const av_hub_client *client, const char *url, CURLcode rc,
                               const char *detail) {
    const char *hint = "";
    if (rc == CURLE_COULDNT_RESOLVE_HOST)
        hint = "; check the network connection and the HF_ENDPOINT address";
    else if (rc == CURLE_COULDNT_CONNECT)
        hint = "; is the hub reachable? check the network and HF_ENDPOINT";
    else if (rc == CURLE_PARTIAL_FILE || rc == CURLE_RECV_ERROR || rc == CURLE_GOT_NOTHING)
        hint = "; the server closed the connection, run the pull again to resume";
    return av_set_error(AV_ERR_IO, "request to %s failed: %s%s%s%s (endpoint %s)", url,
                        curl_easy_strerror(rc), detail && *detail ? ": " : "",
                        detail ? detail : "", hint, client->endpoint);
}

/* Records the error of an HTTP error status, in the hub's terms. `file` is
 * NULL for the listing request. */
static av_status http_error(const av_hub_client *client, const char *revision,
                            const char *file, long status, const response_headers *resp,
                            const char *body) {
    const char *code = resp->error_code;
    const char *repo = client->repo;
    if (!strcmp(code, "RevisionNotFound"))
        return av_set_error(AV_ERR_INVALID, "revision '%s' not found in %s (HTTP %ld); give "
                            "an existing branch, tag or commit with --revision", revision, repo,
                            status);
    if (!strcmp(code, "EntryNotFound"))
        return av_set_error(AV_ERR_IO, "file %s not found in %s at %s (HTTP %ld)",
                            file ? file : "?", repo, revision, status);
    if (status == 401 || status == 403 || !strcmp(code, "GatedRepo")) {
        int has_token = client->token && *client->token;
        if (has_token)
            return av_set_error(AV_ERR_IO, "the hub refused access to %s (HTTP %ld%s%s) with "
                                "the given token. If the model is gated, open %s/%s while "
                                "logged in and accept its license, then check that the token "
                                "(HF_TOKEN or --token) belongs to that account and can read "
                                "the repository. If the repository does not exist, check "
                                "its name", repo, status, *code ? ", " : "", code,
                                client->endpoint, repo);
        return av_set_error(AV_ERR_IO, "the hub refused access to %s (HTTP %ld%s%s): the "
                            "repository does not exist, or it is gated or private and needs "
                            "an access token. To use a gated model, open %s/%s, accept its "
                            "license, create a read token at %s/settings/tokens and set "
                            "HF_TOKEN=hf_... (or pass --token)", repo, status,
                            *code ? ", " : "", code, client->endpoint, repo, client->endpoint);
    }
    if (status == 404 || !strcmp(code, "RepoNotFound")) {
        if (file)
            return av_set_error(AV_ERR_IO, "file %s not found in %s at %s (HTTP 404)", file,
                                repo, revision);
        return av_set_error(AV_ERR_IO, "repository %s not found on %s (HTTP 404%s%s); check "
                            "the ORG/NAME spelling", repo, client->endpoint,
                            *code ? ", " : "", code);
    }
    const char *detail = *resp->error_message ? resp->error_message : body;
    return av_set_error(AV_ERR_IO, "the hub answered HTTP %ld for %s%s%s%s%s", status, repo,
                        file ? " file " : "", file ? file : "", detail && *detail ? ": " : "",
                        detail ? detail : "");
}

/* ---- listing ----------------------------------------------------------- */

typedef struct {
    char *data;
    size_t len, cap;
    int too_big;
} buffer;

static size_t on_body(char *data, size_t size, size_t count, void *user) {
    buffer *b = user;
    size_t len = size * count;
    if (b->len + len + 1 > MAX_API_RESPONSE) {
        b->too_big = 1;
        return 0;
    }
    if (b->len + len + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + len + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) return 0;
        b->data = grown;
        b->cap = cap;
    }
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return len;
}

/* Appends `s` to `url` with every byte outside the unreserved set (and
 * outside "/" when keep_slash) percent-encoded. */
static int append_escaped(char *url, size_t size, const char *s, int keep_slash) {
    size_t used = strlen(url);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        int plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' ||
                    *p == '~' || (keep_slash && *p == '/');
        int n = plain ? snprintf(url + used, size - used, "%c", *p)
                      : snprintf(url + used, size - used, "%%%02X", *p);
        if (n < 0 || (size_t)n >= size - used) return -1;
        used += (size_t)n;
    }
    return 0;
}

static char *dup_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static av_status parse_sibling(json_t *item, int index, av_hub_file *f) {
    json_t *name = json_object_get(item, "rfilename");
    if (!json_is_string(name))
        return av_set_error(AV_ERR_FORMAT, "hub listing: siblings[%d] has no \"rfilename\"",
                            index);
    const char *path = json_string_value(name);
    if (!av_hf_file_path_valid(path))
        return av_set_error(AV_ERR_FORMAT, "hub listing: unsafe file path '%s'", path);
    f->size = -1;
    if (!(f->path = dup_string(path))) return av_set_error(AV_ERR_NOMEM, "out of memory");

    json_t *blob = json_object_get(item, "blobId");
    if (json_is_string(blob) && av_hf_is_hex(json_string_value(blob), 40) &&
        !(f->blob_id = dup_string(json_string_value(blob))))
        return av_set_error(AV_ERR_NOMEM, "out of memory");
    json_t *size = json_object_get(item, "size");
    if (json_is_integer(size) && json_integer_value(size) >= 0) f->size = json_integer_value(size);

    json_t *lfs = json_object_get(item, "lfs");
    if (json_is_object(lfs)) {
        json_t *sha = json_object_get(lfs, "sha256");
        json_t *lfs_size = json_object_get(lfs, "size");
        if (!json_is_string(sha) || !av_hf_is_hex(json_string_value(sha), 64))
            return av_set_error(AV_ERR_FORMAT, "hub listing: file %s has an \"lfs\" entry "
                                "without a valid sha256", path);
        if (!(f->sha256 = dup_string(json_string_value(sha))))
            return av_set_error(AV_ERR_NOMEM, "out of memory");
        if (json_is_integer(lfs_size) && json_integer_value(lfs_size) >= 0)
            f->size = json_integer_value(lfs_size);
    }
    return AV_OK;
}

static av_status parse_listing(const char *url, const char *text, av_hub_listing *listing) {
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    if (!root)
        return av_set_error(AV_ERR_FORMAT, "%s returned invalid JSON: %s (line %d)", url,
                            jerr.text, jerr.line);
    av_status st = AV_OK;
    json_t *sha = json_object_get(root, "sha");
    json_t *siblings = json_object_get(root, "siblings");
    if (!json_is_string(sha) || !av_hf_is_hex(json_string_value(sha), 40)) {
        st = av_set_error(AV_ERR_FORMAT, "%s: the response has no 40-digit \"sha\" commit "
                          "hash", url);
    } else if (!json_is_array(siblings) || json_array_size(siblings) > AV_HUB_MAX_FILES) {
        st = av_set_error(AV_ERR_FORMAT, "%s: the response has no \"siblings\" file list "
                          "(or more than %d files)", url, AV_HUB_MAX_FILES);
    } else {
        memcpy(listing->commit, json_string_value(sha), 41);
        size_t n = json_array_size(siblings);
        listing->files = calloc(n ? n : 1, sizeof *listing->files);
        if (!listing->files) st = av_set_error(AV_ERR_NOMEM, "out of memory");
        for (size_t i = 0; !st && i < n; i++) {
            st = parse_sibling(json_array_get(siblings, i), (int)i,
                               &listing->files[listing->n_files]);
            listing->n_files++;
        }
    }
    json_decref(root);
    return st;
}

av_status av_hub_list(const av_hub_client *client, const char *revision,
                      av_hub_listing *listing) {
    memset(listing, 0, sizeof *listing);
    char url[4096];
    int n = snprintf(url, sizeof url, "%s/api/models/%s/revision/", client->endpoint,
                     client->repo);
    if (n < 0 || (size_t)n >= sizeof url || append_escaped(url, sizeof url, revision, 0) ||
        strlen(url) + sizeof "?blobs=true" > sizeof url)
        return av_set_error(AV_ERR_RANGE, "hub URL too long for %s", client->repo);
    strcat(url, "?blobs=true");

    av_status st = AV_ERR_IO;
    for (int attempt = 0;; attempt++) {
        buffer body = {0};
        struct curl_slist *headers;
        response_headers resp;
        CURL *curl = new_request(client, url, &headers, &resp);
        if (!curl) return AV_ERR_IO;
        curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(curl, CURLOPT_WRITEDATA, &body);
        CURLcode rc = curl_easy_perform(curl);
        long status = 0;
        curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        curl_easy_cleanup(curl);
        curl_slist_free_all(headers);

        if (rc == CURLE_OK && status == 200) {
            st = parse_listing(url, body.data ? body.data : "", listing);
            free(body.data);
            if (st) av_hub_listing_free(listing);
            return st;
        }
        if (body.too_big) {
            free(body.data);
            return av_set_error(AV_ERR_RANGE, "%s returned more than %u bytes", url,
                                MAX_API_RESPONSE);
        }
        if (rc == CURLE_OK && !is_transient(rc, status)) {
            char detail[MAX_ERROR_BODY + 1] = {0};
            if (body.data) snprintf(detail, sizeof detail, "%s", body.data);
            free(body.data);
            return http_error(client, revision, NULL, status, &resp, detail);
        }
        free(body.data);
        if (rc != CURLE_OK)
            st = network_error(client, url, rc, NULL);
        else
            st = av_set_error(AV_ERR_IO, "%s answered HTTP %ld", url, status);
        if (attempt >= client->max_retries || !is_transient(rc, status)) return st;
        if (client->progress)
            av_hub_progress_note(client->progress, "%s; retrying (%d of %d)", av_last_error(),
                                 attempt + 1, client->max_retries);
        backoff(attempt + 1);
    }
}

void av_hub_listing_free(av_hub_listing *listing) {
    for (int i = 0; i < listing->n_files; i++) {
        free(listing->files[i].path);
        free(listing->files[i].blob_id);
        free(listing->files[i].sha256);
    }
    free(listing->files);
    listing->files = NULL;
    listing->n_files = 0;
}

const av_hub_file *av_hub_listing_find(const av_hub_listing *listing, const char *path) {
    for (int i = 0; i < listing->n_files; i++)
        if (!strcmp(listing->files[i].path, path)) return &listing->files[i];
    return NULL;
}

const char *av_hub_blob_name(const av_hub_file *file) {
    return file->sha256 ? file->sha256 : file->blob_id;
}

/* ---- downloads --------------------------------------------------------- */

/* State of one file download across its attempts. */
typedef struct {
    const av_hub_client *client;
    const av_hub_file *file;
    const char *partial_path;
    CURL *curl;
    int fd;
    int64_t offset;         /* bytes in the partial file, all hashed */
    EVP_MD_CTX *md;         /* sha256 of LFS files, git blob sha1 otherwise */
    int response_checked;   /* the status of this attempt's response is known */
    long status;
    response_headers resp;
    int locked;             /* this process holds the partial file's lock */
    int write_errno;        /* errno of a failed write, 0 if none */
    int range_mismatch;     /* a 206 started at the wrong byte */
    char error_body[MAX_ERROR_BODY + 1];
    size_t error_len;
} download;

/* Starts the hash over: sha256 of the content, or git's blob sha1, which
 * hashes "blob SIZE\0" followed by the content. */
static int hash_reset(download *d) {
    const EVP_MD *type = d->file->sha256 ? EVP_sha256() : EVP_sha1();
    if (!EVP_DigestInit_ex(d->md, type, NULL)) return -1;
    if (!d->file->sha256) {
        char prefix[48];
        int n = snprintf(prefix, sizeof prefix, "blob %lld", (long long)d->file->size);
        if (!EVP_DigestUpdate(d->md, prefix, (size_t)n + 1)) return -1;
    }
    return 0;
}

/* Hashes the bytes already in the partial file so the hash covers them
 * when the download resumes. */
static av_status hash_existing(download *d) {
    if (hash_reset(d)) return av_set_error(AV_ERR_IO, "hash initialization failed");
    const size_t chunk_size = 1 << 20;
    unsigned char *chunk = malloc(chunk_size);
    if (!chunk) return av_set_error(AV_ERR_NOMEM, "out of memory");
    int64_t done = 0;
    errno = 0;
    if (lseek(d->fd, 0, SEEK_SET) < 0) goto io_error;
    while (done < d->offset) {
        size_t want = d->offset - done < (int64_t)chunk_size ? (size_t)(d->offset - done)
                                                              : chunk_size;
        ssize_t got = read(d->fd, chunk, want);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) goto io_error;
        EVP_DigestUpdate(d->md, chunk, (size_t)got);
        done += got;
    }
    free(chunk);
    return AV_OK;
io_error:;
    int err = errno;
    free(chunk);
    return av_set_error(AV_ERR_IO, "cannot read %s: %s", d->partial_path,
                        err ? strerror(err) : "unexpected end of file");
}

/* Empties the partial file, for when the server sends the whole file
 * instead of the requested range. */
static int restart_from_zero(download *d) {
    if (ftruncate(d->fd, 0) != 0 || lseek(d->fd, 0, SEEK_SET) != 0) {
        d->write_errno = errno;
        return -1;
    }
    d->offset = 0;
    return hash_reset(d);
}

static size_t on_file_data(char *data, size_t size, size_t count, void *user) {
    download *d = user;
    size_t len = size * count;
    if (!d->response_checked) {
        d->response_checked = 1;
        curl_easy_getinfo(d->curl, CURLINFO_RESPONSE_CODE, &d->status);
        if (d->status == 206 && d->resp.range_start != d->offset) {
            d->range_mismatch = 1;
            return 0;
        }
        if (d->status == 200 && d->offset > 0) {
            if (d->client->progress)
                av_hub_progress_note(d->client->progress, "the server ignored the range "
                                     "request; downloading %s from the start", d->file->path);
            if (restart_from_zero(d)) return 0;
        }
    }
    if (d->status != 200 && d->status != 206) {
        size_t room = MAX_ERROR_BODY - d->error_len;
        size_t n = len < room ? len : room;
        memcpy(d->error_body + d->error_len, data, n);
        d->error_len += n;
        d->error_body[d->error_len] = '\0';
        return len;
    }
    if (d->file->size >= 0 && d->offset + (int64_t)len > d->file->size) {
        d->write_errno = EFBIG; /* more bytes than the listing promised */
        return 0;
    }
    size_t written = 0;
    while (written < len) {
        ssize_t n = write(d->fd, data + written, len - written);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            d->write_errno = n < 0 ? errno : ENOSPC;
            /* What did reach the disk is valid data: keep it hashed so
             * the byte count and the hash stay in step. */
            EVP_DigestUpdate(d->md, data, written);
            d->offset += (int64_t)written;
            return 0;
        }
        written += (size_t)n;
    }
    EVP_DigestUpdate(d->md, data, len);
    d->offset += (int64_t)len;
    if (d->client->progress) av_hub_progress_update(d->client->progress, d->offset);
    return len;
}

static void digest_hex(EVP_MD_CTX *md, char *hex) {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_DigestFinal_ex(md, digest, &n);
    for (unsigned int i = 0; i < n; i++) sprintf(hex + 2 * i, "%02x", digest[i]);
    hex[2 * n] = '\0';
}

static av_status check_free_space(const download *d) {
    if (d->file->size < 0) return AV_OK;
    struct statvfs vfs;
    if (fstatvfs(d->fd, &vfs) != 0) return AV_OK; /* unknown: let the writes tell */
    uint64_t free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    uint64_t needed = (uint64_t)(d->file->size - d->offset);
    if (needed > free_bytes)
        return av_set_error(AV_ERR_IO, "not enough disk space for %s: %llu bytes needed, "
                            "%llu free where %s is; free some space or point HF_HUB_CACHE "
                            "at a larger disk", d->file->path, (unsigned long long)needed,
                            (unsigned long long)free_bytes, d->partial_path);
    return AV_OK;
}

/* Runs one GET of the file from d->offset on. Returns AV_OK when the
 * transfer completed; else records the error and sets *retry when another
 * attempt may succeed. */
static av_status fetch_once(download *d, const char *url, const char *commit, int *retry) {
    *retry = 0;
    struct curl_slist *headers;
    CURL *curl = new_request(d->client, url, &headers, &d->resp);
    if (!curl) return AV_ERR_IO;
    d->curl = curl;
    d->response_checked = 0;
    d->status = 0;
    d->write_errno = 0;
    d->range_mismatch = 0;
    d->error_len = 0;
    d->error_body[0] = '\0';
    char range[48];
    if (d->offset > 0) {
        snprintf(range, sizeof range, "%lld-", (long long)d->offset);
        curl_easy_setopt(curl, CURLOPT_RANGE, range);
    }
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_file_data);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, d);
    CURLcode rc = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(curl);
    curl_slist_free_all(headers);
    d->curl = NULL;

    if (d->write_errno) {
        if (d->write_errno == EFBIG && d->file->size >= 0 && d->offset >= d->file->size)
            return av_set_error(AV_ERR_FORMAT, "the server sent more than the %lld bytes the "
                                "listing gives for %s", (long long)d->file->size,
                                d->file->path);
        return av_set_error(AV_ERR_IO, "cannot write %s: %s; free some disk space (or fix the "
                            "cache directory) and run the pull again, it resumes from the "
                            "%lld bytes already written", d->partial_path,
                            strerror(d->write_errno), (long long)d->offset);
    }
    if (d->range_mismatch) {
        *retry = 1;
        if (restart_from_zero(d)) *retry = 0;
        return av_set_error(AV_ERR_IO, "the server answered a range request for %s with the "
                            "wrong range", d->file->path);
    }
    if (status == 416 && d->file->size >= 0 && d->offset == d->file->size) return AV_OK;
    if (status == 416) {
        *retry = restart_from_zero(d) == 0;
        return av_set_error(AV_ERR_IO, "the server rejected the resume range of %s (HTTP 416)",
                            d->file->path);
    }
    if (rc == CURLE_OK && (status == 200 || status == 206)) return AV_OK;
    if (rc == CURLE_OK) {
        *retry = is_transient(rc, status);
        return http_error(d->client, commit, d->file->path, status, &d->resp, d->error_body);
    }
    *retry = is_transient(rc, status);
    return network_error(d->client, url, rc, NULL);
}

static av_status file_url(const av_hub_client *client, const char *commit, const char *path,
                          char *url, size_t size) {
    int n = snprintf(url, size, "%s/%s/resolve/%s/", client->endpoint, client->repo, commit);
    if (n < 0 || (size_t)n >= size || append_escaped(url, size, path, 1))
        return av_set_error(AV_ERR_RANGE, "URL too long for %s", path);
    return AV_OK;
}

/* Checks size and hash of the complete partial file; deletes it on a
 * mismatch. */
static av_status verify(download *d) {
    const av_hub_file *f = d->file;
    if (f->size >= 0 && d->offset != f->size) {
        unlink(d->partial_path);
        return av_set_error(AV_ERR_IO, "download of %s ended at %lld bytes, the hub lists %lld; "
                            "the partial file was deleted, run the pull again", f->path,
                            (long long)d->offset, (long long)f->size);
    }
    const char *expected = f->sha256 ? f->sha256 : f->blob_id;
    if (!expected || (!f->sha256 && f->size < 0)) return AV_OK; /* nothing to check against */
    char actual[2 * EVP_MAX_MD_SIZE + 1];
    digest_hex(d->md, actual);
    if (strcmp(actual, expected)) {
        unlink(d->partial_path);
        return av_set_error(AV_ERR_IO, "checksum mismatch for %s: the hub lists %s %s, the "
                            "downloaded bytes hash to %s; the corrupt download was deleted, "
                            "run the pull again", f->path, f->sha256 ? "sha256" : "git sha1",
                            expected, actual);
    }
    return AV_OK;
}

static av_status open_partial(download *d) {
    d->fd = open(d->partial_path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (d->fd < 0) {
        int err = errno;
        return av_set_error(AV_ERR_IO, "cannot create %s: %s; make the cache writable or "
                            "point HF_HUB_CACHE at a writable directory", d->partial_path,
                            strerror(err));
    }
    /* Two pulls of the same file would interleave their writes. */
    if (flock(d->fd, LOCK_EX | LOCK_NB) != 0)
        return av_set_error(AV_ERR_IO, "%s is locked: another airavata pull is downloading "
                            "%s; wait for it to finish", d->partial_path, d->file->path);
    d->locked = 1;
    struct stat st;
    if (fstat(d->fd, &st) != 0) {
        int err = errno;
        return av_set_error(AV_ERR_IO, "cannot stat %s: %s", d->partial_path, strerror(err));
    }
    d->offset = st.st_size;
    if (d->file->size >= 0 && d->offset > d->file->size) {
        if (ftruncate(d->fd, 0) != 0) {
            int err = errno;
            return av_set_error(AV_ERR_IO, "cannot truncate %s: %s", d->partial_path,
                                strerror(err));
        }
        d->offset = 0;
    }
    if (hash_existing(d)) return AV_ERR_IO;
    if (lseek(d->fd, d->offset, SEEK_SET) < 0) {
        int err = errno;
        return av_set_error(AV_ERR_IO, "cannot seek in %s: %s", d->partial_path, strerror(err));
    }
    return AV_OK;
}

static av_status download_attempts(download *d, const char *commit) {
    char url[8192];
    if (file_url(d->client, commit, d->file->path, url, sizeof url)) return AV_ERR_RANGE;
    for (int attempt = 0;; attempt++) {
        if (d->file->size >= 0 && d->offset == d->file->size && d->offset > 0) return AV_OK;
        int retry = 0;
        av_status st = fetch_once(d, url, commit, &retry);
        if (st == AV_OK) return AV_OK;
        if (!retry || attempt >= d->client->max_retries) return st;
        if (d->client->progress)
            av_hub_progress_note(d->client->progress, "%s; retrying from byte %lld (%d of %d)",
                                 av_last_error(), (long long)d->offset, attempt + 1,
                                 d->client->max_retries);
        backoff(attempt + 1);
    }
}

av_status av_hub_download(const av_hub_client *client, const char *commit,
                          const av_hub_file *file, const char *blob_path) {
    char partial[4200];
    int n = snprintf(partial, sizeof partial, "%s.incomplete", blob_path);
    if (n < 0 || (size_t)n >= sizeof partial)
        return av_set_error(AV_ERR_RANGE, "path too long: %s", blob_path);
    download d = {.client = client, .file = file, .partial_path = partial, .fd = -1};
    if (!(d.md = EVP_MD_CTX_new())) return av_set_error(AV_ERR_NOMEM, "out of memory");

    av_status st = open_partial(&d);
    int started = !st && client->progress;
    if (started) av_hub_progress_start(client->progress, file->path, file->size, d.offset);
    if (!st) st = check_free_space(&d);
    if (!st) st = download_attempts(&d, commit);
    if (!st) st = verify(&d);
    if (!st && fsync(d.fd) != 0) {
        int err = errno;
        st = av_set_error(AV_ERR_IO, "cannot write %s: %s", partial, strerror(err));
    }
    if (!st && rename(partial, blob_path) != 0) {
        int err = errno;
        st = av_set_error(AV_ERR_IO, "cannot rename %s to %s: %s", partial, blob_path,
                          strerror(err));
    }
    if (started) av_hub_progress_end(client->progress, st == AV_OK);
    /* An empty partial file contains nothing worth resuming. It is removed
     * before close() releases the lock. */
    if (st && d.locked) {
        struct stat sb;
        if (stat(partial, &sb) == 0 && sb.st_size == 0) unlink(partial);
    }
    if (d.fd >= 0) close(d.fd);
    EVP_MD_CTX_free(d.md);
    return st;
}
