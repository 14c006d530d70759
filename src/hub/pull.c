/*
 * pull.c - downloads a model repository revision into the Hugging Face
 * cache: picks the files, skips the ones already cached, downloads the
 * rest (hub.c) and links them into the snapshot (hf_cache.c).
 *
 * Without --include patterns the files are those av_model_load reads:
 * config.json, generation_config.json, the tokenizer files, and
 * model.safetensors or model.safetensors.index.json with the shards its
 * weight_map names. Other files (READMEs, PyTorch .bin weights) are left
 * out.
 */
#include <fnmatch.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hub/hub.h"

#define MAX_TOKEN_BYTES 512

static const char *const DEFAULT_FILES[] = {
    "config.json",          "generation_config.json",  "tokenizer.model",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "tokenizer.json",       "model.safetensors.index.json", "model.safetensors",
};

/* The selected files of the listing; `selected` is parallel to it. */
typedef struct {
    av_hub_client client;
    const char *revision;
    const av_hub_listing *listing;
    char repo_dir[4096];
    char *selected;
    int n_downloaded, n_cached;
    uint64_t bytes_downloaded;
} pull_state;

static av_status resolve_endpoint(const char *option, char *buf, size_t size) {
    const char *endpoint = option;
    if (!endpoint) endpoint = getenv("HF_ENDPOINT");
    if (!endpoint || !*endpoint) endpoint = AV_HUB_DEFAULT_ENDPOINT;
    if (strncmp(endpoint, "http://", 7) && strncmp(endpoint, "https://", 8))
        return av_set_error(AV_ERR_INVALID, "invalid hub endpoint '%s' (from HF_ENDPOINT): "
                            "expected an http:// or https:// URL such as %s", endpoint,
                            AV_HUB_DEFAULT_ENDPOINT);
    int n = snprintf(buf, size, "%s", endpoint);
    if (n < 0 || (size_t)n >= size)
        return av_set_error(AV_ERR_RANGE, "hub endpoint URL too long");
    while (n > 0 && buf[n - 1] == '/') buf[--n] = '\0';
    return AV_OK;
}

/* Reads the token that `huggingface-cli login` saves: $HF_TOKEN_PATH, else
 * $HF_HOME/token, else ~/.cache/huggingface/token. Returns 0 if none. */
static int read_token_file(char *buf, size_t size) {
    char path[4096];
    const char *token_path = getenv("HF_TOKEN_PATH");
    const char *hf_home = getenv("HF_HOME");
    const char *home = getenv("HOME");
    if (token_path && *token_path)
        snprintf(path, sizeof path, "%s", token_path);
    else if (hf_home && *hf_home)
        snprintf(path, sizeof path, "%s/token", hf_home);
    else if (home && *home)
        snprintf(path, sizeof path, "%s/.cache/huggingface/token", home);
    else
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(buf, 1, size - 1, f);
    fclose(f);
    buf[n] = '\0';
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    return n > 0;
}

static av_status blob_path_of(const pull_state *s, const char *blob, char *buf, size_t size) {
    int n = snprintf(buf, size, "%s/blobs/%s", s->repo_dir, blob);
    if (n < 0 || (size_t)n >= size) return av_set_error(AV_ERR_RANGE, "blob path too long");
    return AV_OK;
}

static int is_regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Returns 1 if `file` has to be downloaded: neither in the snapshot nor
 * as a blob. */
static int needs_download(const pull_state *s, const av_hub_file *file) {
    if (av_hf_snapshot_has(s->repo_dir, s->listing->commit, file->path)) return 0;
    char blob_path[4200];
    const char *blob = av_hub_blob_name(file);
    if (!blob || blob_path_of(s, blob, blob_path, sizeof blob_path)) return 1;
    return !is_regular_file(blob_path);
}

/* Makes `file` present in the snapshot, downloading its blob if needed. */
static av_status fetch_file(pull_state *s, const av_hub_file *file) {
    const char *commit = s->listing->commit;
    if (av_hf_snapshot_has(s->repo_dir, commit, file->path)) {
        s->n_cached++;
        return AV_OK;
    }
    const char *blob = av_hub_blob_name(file);
    if (!blob)
        return av_set_error(AV_ERR_FORMAT, "the hub listing gives no blob id or sha256 for %s, "
                            "so it cannot be stored in the cache", file->path);
    char blobs_dir[4200], blob_path[4200];
    snprintf(blobs_dir, sizeof blobs_dir, "%s/blobs", s->repo_dir);
    if (blob_path_of(s, blob, blob_path, sizeof blob_path)) return AV_ERR_RANGE;
    if (is_regular_file(blob_path)) {
        s->n_cached++;
    } else {
        if (av_hf_mkdirs(blobs_dir)) return AV_ERR_IO;
        if (av_hub_download(&s->client, commit, file, blob_path)) return AV_ERR_IO;
        s->n_downloaded++;
        s->bytes_downloaded += file->size > 0 ? (uint64_t)file->size : 0;
    }
    return av_hf_snapshot_link(s->repo_dir, commit, file->path, blob);
}

static void select_file(pull_state *s, const char *path) {
    for (int i = 0; i < s->listing->n_files; i++)
        if (!strcmp(s->listing->files[i].path, path)) s->selected[i] = 1;
}

/* Selects the shards named in the weight_map of the (already fetched)
 * model.safetensors.index.json. */
static av_status select_shards(pull_state *s) {
    char path[4200];
    snprintf(path, sizeof path, "%s/snapshots/%s/model.safetensors.index.json", s->repo_dir,
             s->listing->commit);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return av_set_error(AV_ERR_FORMAT, "%s: invalid JSON: %s (line %d)", path, jerr.text,
                            jerr.line);
    json_t *map = json_object_get(root, "weight_map");
    av_status st = AV_OK;
    if (!json_is_object(map)) {
        st = av_set_error(AV_ERR_FORMAT, "%s has no \"weight_map\" object", path);
    } else {
        const char *tensor;
        json_t *file;
        json_object_foreach(map, tensor, file) {
            const char *name = json_is_string(file) ? json_string_value(file) : NULL;
            if (!name || !av_hf_file_path_valid(name)) {
                st = av_set_error(AV_ERR_FORMAT, "%s: tensor %s maps to an invalid file name",
                                  path, tensor);
                break;
            }
            if (!av_hub_listing_find(s->listing, name)) {
                st = av_set_error(AV_ERR_FORMAT, "%s names shard %s for tensor %s, but the "
                                  "repository has no such file", path, name, tensor);
                break;
            }
            select_file(s, name);
        }
    }
    json_decref(root);
    return st;
}

static av_status select_default_files(pull_state *s, int show_progress) {
    const char *repo = s->client.repo;
    if (!av_hub_listing_find(s->listing, "config.json"))
        return av_set_error(AV_ERR_FORMAT, "%s has no config.json at revision %s: it is not a "
                            "transformers model repository", repo, s->revision);
    for (size_t i = 0; i < sizeof DEFAULT_FILES / sizeof DEFAULT_FILES[0]; i++)
        select_file(s, DEFAULT_FILES[i]);

    const av_hub_file *index = av_hub_listing_find(s->listing, "model.safetensors.index.json");
    if (index) {
        /* The index names the shards, so it is fetched before the others. */
        if (show_progress && needs_download(s, index))
            s->client.progress = av_hub_progress_create(1, index->size > 0 ? index->size : 0);
        av_status st = fetch_file(s, index);
        av_hub_progress_free(s->client.progress);
        s->client.progress = NULL;
        if (st) return st;
        s->selected[index - s->listing->files] = 0; /* fetched already */
        return select_shards(s);
    }
    if (!av_hub_listing_find(s->listing, "model.safetensors"))
        return av_set_error(AV_ERR_UNSUPPORTED, "%s has neither model.safetensors nor "
                            "model.safetensors.index.json at revision %s; airavata loads "
                            "safetensors checkpoints only (use --include to download other "
                            "files)", repo, s->revision);
    return AV_OK;
}

static av_status select_included_files(pull_state *s, const av_hub_pull_options *o) {
    int any = 0;
    for (int i = 0; i < s->listing->n_files; i++)
        for (int k = 0; k < o->n_includes; k++)
            if (fnmatch(o->includes[k], s->listing->files[i].path, 0) == 0) {
                s->selected[i] = 1;
                any = 1;
            }
    if (!any)
        return av_set_error(AV_ERR_INVALID, "no file of %s at revision %s matches the "
                            "--include patterns (the repository has %d files)", s->client.repo,
                            s->revision, s->listing->n_files);
    return AV_OK;
}

/* Fetches every selected file, with one progress display over those that
 * need a download. */
static av_status fetch_selected(pull_state *s, int show_progress) {
    int n_todo = 0;
    uint64_t todo_bytes = 0;
    for (int i = 0; i < s->listing->n_files; i++) {
        const av_hub_file *f = &s->listing->files[i];
        if (s->selected[i] && needs_download(s, f)) {
            n_todo++;
            todo_bytes += f->size > 0 ? (uint64_t)f->size : 0;
        }
    }
    if (show_progress && n_todo > 0) s->client.progress = av_hub_progress_create(n_todo, todo_bytes);
    av_status st = AV_OK;
    for (int i = 0; !st && i < s->listing->n_files; i++)
        if (s->selected[i]) st = fetch_file(s, &s->listing->files[i]);
    av_hub_progress_free(s->client.progress);
    s->client.progress = NULL;
    return st;
}

/* Writes refs/REVISION unless the revision is the commit itself or the
 * ref already has this value (so a read-only complete cache still
 * works). */
static av_status update_ref(const pull_state *s) {
    const char *commit = s->listing->commit;
    if (!strcmp(s->revision, commit)) return AV_OK;
    char current[41];
    if (av_hf_read_ref(s->repo_dir, s->revision, current) == AV_OK && !strcmp(current, commit))
        return AV_OK;
    return av_hf_write_ref(s->repo_dir, s->revision, commit);
}

static av_status pull_offline(const av_hub_pull_options *o, char *snapshot_dir, size_t size) {
    char arg[AV_HUB_MAX_REPO + AV_HUB_MAX_REVISION + 2];
    snprintf(arg, sizeof arg, "%s@%s", o->repo, o->revision);
    if (av_model_resolve(arg, snapshot_dir, size) == AV_OK) return AV_OK;
    return av_set_error(AV_ERR_IO, "%s is not in the Hugging Face cache ($HF_HUB_CACHE, else "
                        "$HF_HOME/hub) and HF_HUB_OFFLINE=1 forbids downloading it; unset "
                        "HF_HUB_OFFLINE to download it", arg);
}

av_status av_hub_pull(const av_hub_pull_options *o, char *snapshot_dir, size_t size) {
    const char *revision = o->revision ? o->revision : "main";
    if (!av_hf_repo_id_valid(o->repo))
        return av_set_error(AV_ERR_INVALID, "invalid repository id '%s': expected ORG/NAME "
                            "such as %s", o->repo, AV_HUB_DEFAULT_REPO);
    if (!av_hf_revision_valid(revision))
        return av_set_error(AV_ERR_INVALID, "invalid revision '%s'", revision);
    if (o->offline) {
        av_hub_pull_options copy = *o;
        copy.revision = revision;
        return pull_offline(&copy, snapshot_dir, size);
    }

    char endpoint[2048], token[MAX_TOKEN_BYTES], root[4096];
    if (resolve_endpoint(o->endpoint, endpoint, sizeof endpoint)) return AV_ERR_INVALID;
    const char *token_value = o->token;
    if (!token_value) token_value = getenv("HF_TOKEN");
    if ((!token_value || !*token_value) && read_token_file(token, sizeof token))
        token_value = token;
    if (av_hf_cache_root(root, sizeof root)) return AV_ERR_INVALID;

    pull_state s = {0};
    s.client = (av_hub_client){.endpoint = endpoint, .token = token_value, .repo = o->repo,
                               .max_retries = o->max_retries};
    s.revision = revision;
    if (av_hf_repo_dir(root, o->repo, s.repo_dir, sizeof s.repo_dir)) return AV_ERR_INVALID;

    av_hub_listing listing;
    if (av_hub_list(&s.client, revision, &listing)) return AV_ERR_IO;
    s.listing = &listing;
    s.selected = calloc((size_t)listing.n_files + 1, 1);
    av_status st = s.selected ? AV_OK : av_set_error(AV_ERR_NOMEM, "out of memory");

    if (!st && o->n_includes > 0) {
        st = select_included_files(&s, o);
    } else if (!st) {
        st = select_default_files(&s, o->progress);
    }
    if (!st) st = fetch_selected(&s, o->progress);
    if (!st) st = update_ref(&s);
    if (!st) {
        int n = snprintf(snapshot_dir, size, "%s/snapshots/%s", s.repo_dir, listing.commit);
        if (n < 0 || (size_t)n >= size) st = av_set_error(AV_ERR_RANGE, "snapshot path too long");
    }
    if (!st) {
        char bytes[32];
        snprintf(bytes, sizeof bytes, "%.1f MiB", (double)s.bytes_downloaded / 1048576.0);
        av_log(AV_LOG_INFO, "pull: %s@%s (commit %s): %d files downloaded (%s), %d already in "
               "the cache", o->repo, revision, listing.commit, s.n_downloaded, bytes,
               s.n_cached);
    }
    free(s.selected);
    av_hub_listing_free(&listing);
    return st;
}
