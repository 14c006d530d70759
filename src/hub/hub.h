/*
 * hub.h - internal interface of the Hugging Face hub client and cache.
 *
 * hf_cache.c owns the on-disk layout that huggingface_hub (and so
 * transformers) uses, so that a model downloaded by either tool is found by
 * the other:
 *
 *   $HF_HUB_CACHE/models--ORG--NAME/
 *     blobs/SHA256         an LFS file, named by the sha256 of its content
 *     blobs/SHA1           a non-LFS file, named by its git blob sha1
 *     blobs/NAME.incomplete  a download in progress (resumed with Range)
 *     snapshots/COMMIT/FILE  relative symlink to ../../blobs/NAME
 *     refs/REVISION        the commit hash the branch or tag pointed at
 *
 * hub.c owns the HTTP side (libcurl): the file listing of a revision and
 * resumable, verified downloads of single files. pull.c combines both into
 * `airavata pull`. progress.c draws the progress bars.
 */
#ifndef AV_HUB_H
#define AV_HUB_H

#include <stddef.h>
#include <stdint.h>

#include "airavata.h"

#define AV_HUB_DEFAULT_ENDPOINT "https://huggingface.co"
#define AV_HUB_DEFAULT_REPO "ai4bharat/Airavata"
#define AV_HUB_MAX_REPO 96        /* the hub limits repo names to 96 characters */
#define AV_HUB_MAX_REVISION 256
#define AV_HUB_MAX_FILE_PATH 1024 /* maximum bytes of a repository file path */
#define AV_HUB_MAX_FILES 100000   /* maximum files in one listing */

/* ---- cache layout (hf_cache.c) ---------------------------------------- */

/* Writes the cache root: $HF_HUB_CACHE, else $HF_HOME/hub, else
 * $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub. */
av_status av_hf_cache_root(char *buf, size_t size);

/* Returns 1 if `repo` is a valid ORG/NAME repository id. */
int av_hf_repo_id_valid(const char *repo);
/* Returns 1 if `revision` is a safe branch, tag or commit name: it is used
 * as a file name under refs/, so ".." components and leading "/" are
 * rejected. */
int av_hf_revision_valid(const char *revision);
/* Returns 1 if `path` is a safe relative repository path (no "..", no
 * empty or absolute components) of at most AV_HUB_MAX_FILE_PATH bytes. */
int av_hf_file_path_valid(const char *path);
/* Returns 1 if `s` is exactly `len` lowercase hex digits. */
int av_hf_is_hex(const char *s, size_t len);

/* Writes ROOT/models--ORG--NAME. */
av_status av_hf_repo_dir(const char *root, const char *repo, char *buf, size_t size);

/* Reads refs/REVISION of a repo folder into commit (41 bytes). A revision
 * that is itself a 40-hex commit hash is returned as is. */
av_status av_hf_read_ref(const char *repo_dir, const char *revision, char commit[41]);
/* Writes refs/REVISION = commit through a temporary file and rename. */
av_status av_hf_write_ref(const char *repo_dir, const char *revision, const char *commit);

/* Returns 1 if snapshots/COMMIT/FILE exists and resolves to a regular file. */
int av_hf_snapshot_has(const char *repo_dir, const char *commit, const char *file);
/* Points snapshots/COMMIT/FILE at ../../blobs/BLOB (one more "../" per
 * directory in FILE), replacing an existing link atomically. */
av_status av_hf_snapshot_link(const char *repo_dir, const char *commit, const char *file,
                              const char *blob);

/* Creates `path` and its missing parents (mode 0755). */
av_status av_hf_mkdirs(const char *path);

/* ---- hub API and downloads (hub.c) ------------------------------------ */

/* One file of a repository revision, as the hub's API lists it. */
typedef struct {
    char *path;      /* rfilename, relative to the repository root */
    char *blob_id;   /* git blob sha1 (40 hex), NULL if not listed */
    char *sha256;    /* LFS object sha256 (64 hex), NULL for non-LFS files */
    int64_t size;    /* bytes of the real content, -1 if not listed */
} av_hub_file;

typedef struct {
    char commit[41];
    av_hub_file *files;
    int n_files;
} av_hub_listing;

typedef struct av_hub_progress av_hub_progress;

typedef struct {
    const char *endpoint; /* e.g. https://huggingface.co, without trailing "/" */
    const char *token;    /* sent as "Authorization: Bearer"; NULL for none */
    const char *repo;     /* ORG/NAME */
    int max_retries;      /* retries after a transient error, per request */
    av_hub_progress *progress; /* NULL: no progress output */
} av_hub_client;

/* GETs {endpoint}/api/models/{repo}/revision/{revision}?blobs=true and
 * parses the commit hash and the files with their sizes and hashes. */
av_status av_hub_list(const av_hub_client *client, const char *revision,
                      av_hub_listing *listing);
void av_hub_listing_free(av_hub_listing *listing);
const av_hub_file *av_hub_listing_find(const av_hub_listing *listing, const char *path);

/* Downloads `file` of `commit` into blob_path. The bytes go to
 * blob_path.incomplete, which is resumed with a Range request if it exists.
 * They are checked against the listed size and the sha256 (LFS) or git
 * blob sha1, and the file is renamed to blob_path only when both match.
 * On a mismatch the partial file is deleted. */
av_status av_hub_download(const av_hub_client *client, const char *commit,
                          const av_hub_file *file, const char *blob_path);

/* Returns the name of the blob that contains `file`: its sha256 for LFS files, else its
 * git blob sha1. NULL when the listing gave neither. */
const char *av_hub_blob_name(const av_hub_file *file);

/* ---- progress output (progress.c) ------------------------------------- */

/* Creates a progress display for `n_files` files of `total_bytes` bytes in
 * all. Bars are drawn when stderr is a terminal, else plain log lines. */
av_hub_progress *av_hub_progress_create(int n_files, uint64_t total_bytes);
void av_hub_progress_free(av_hub_progress *p);
/* Starts file `name` of `size` bytes (-1 unknown), of which `resumed` are
 * already on disk. */
void av_hub_progress_start(av_hub_progress *p, const char *name, int64_t size, int64_t resumed);
/* Reports that the current file now has `done` bytes on disk. */
void av_hub_progress_update(av_hub_progress *p, int64_t done);
/* Ends the current file: ok = 1 finished, 0 failed. */
void av_hub_progress_end(av_hub_progress *p, int ok);
/* Prints a log line that does not break the bars. */
void av_hub_progress_note(av_hub_progress *p, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* ---- pull (pull.c) ----------------------------------------------------- */

#define AV_HUB_MAX_INCLUDES 64

typedef struct {
    const char *repo;          /* ORG/NAME */
    const char *revision;      /* branch, tag or commit; "main" by default */
    const char *endpoint;      /* NULL: $HF_ENDPOINT or the default */
    const char *token;         /* NULL: $HF_TOKEN or the token file */
    const char *includes[AV_HUB_MAX_INCLUDES]; /* glob patterns; none: model files */
    int n_includes;
    int max_retries;
    int offline;               /* 1: resolve from the cache, no network */
    int progress;              /* 1: show progress */
} av_hub_pull_options;

/* Downloads the selected files of a repository revision into the cache
 * and writes the snapshot directory path into snapshot_dir. */
av_status av_hub_pull(const av_hub_pull_options *options, char *snapshot_dir, size_t size);

#endif
