/*
 * hf_cache.c - the Hugging Face cache layout and `-m ORG/NAME` resolution.
 *
 * The layout is the one huggingface_hub writes (see hub.h), so checkpoints
 * downloaded by transformers are used without a new download and the other
 * way around. Everything here is offline: it reads and writes the local
 * cache and never touches the network.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hub/hub.h"

static av_status copy_path(char *buf, size_t size, const char *label, const char *path) {
    int n = snprintf(buf, size, "%s", path);
    if (n < 0 || (size_t)n >= size)
        return av_set_error(AV_ERR_RANGE, "%s path is too long (%d bytes): %s", label, n, path);
    return AV_OK;
}

av_status av_hf_cache_root(char *buf, size_t size) {
    const char *hub_cache = getenv("HF_HUB_CACHE");
    if (hub_cache && *hub_cache) return copy_path(buf, size, "HF_HUB_CACHE", hub_cache);

    int n;
    const char *hf_home = getenv("HF_HOME");
    const char *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (hf_home && *hf_home) {
        n = snprintf(buf, size, "%s/hub", hf_home);
    } else if (xdg && *xdg) {
        n = snprintf(buf, size, "%s/huggingface/hub", xdg);
    } else if (home && *home) {
        n = snprintf(buf, size, "%s/.cache/huggingface/hub", home);
    } else {
        return av_set_error(AV_ERR_INVALID, "cannot locate the Hugging Face cache: HOME is not "
                            "set; set HF_HUB_CACHE to the cache directory");
    }
    if (n < 0 || (size_t)n >= size)
        return av_set_error(AV_ERR_RANGE, "the Hugging Face cache path is too long");
    return AV_OK;
}

int av_hf_is_hex(const char *s, size_t len) {
    if (strlen(s) != len) return 0;
    for (size_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

static int is_name_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
}

/* One part of a repo id: name characters only, no leading or trailing "-"
 * or ".", no "--" or "..", as the hub enforces. */
static int repo_part_valid(const char *s, size_t len) {
    if (len == 0) return 0;
    if (s[0] == '-' || s[0] == '.' || s[len - 1] == '-' || s[len - 1] == '.') return 0;
    for (size_t i = 0; i < len; i++) {
        if (!is_name_char(s[i])) return 0;
        if (i > 0 && (s[i] == '-' || s[i] == '.') && s[i - 1] == s[i]) return 0;
    }
    return 1;
}

int av_hf_repo_id_valid(const char *repo) {
    size_t len = strlen(repo);
    const char *slash = strchr(repo, '/');
    if (!slash || len > AV_HUB_MAX_REPO) return 0;
    if (strchr(slash + 1, '/')) return 0;
    return repo_part_valid(repo, (size_t)(slash - repo)) &&
           repo_part_valid(slash + 1, strlen(slash + 1));
}

/* Checks a "/"-separated relative path: every component is non-empty and
 * neither "." nor "..", and no byte is a control character or backslash. */
static int relative_path_valid(const char *path, size_t max_len) {
    size_t len = strlen(path);
    if (len == 0 || len > max_len || path[0] == '/') return 0;
    const char *part = path;
    for (;;) {
        const char *end = strchr(part, '/');
        size_t n = end ? (size_t)(end - part) : strlen(part);
        if (n == 0) return 0;
        if ((n == 1 && part[0] == '.') || (n == 2 && part[0] == '.' && part[1] == '.')) return 0;
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)part[i] < 0x20 || part[i] == '\\' || part[i] == 0x7f) return 0;
        if (!end) break;
        part = end + 1;
    }
    return 1;
}

int av_hf_revision_valid(const char *revision) {
    return relative_path_valid(revision, AV_HUB_MAX_REVISION);
}

int av_hf_file_path_valid(const char *path) {
    return relative_path_valid(path, AV_HUB_MAX_FILE_PATH);
}

av_status av_hf_repo_dir(const char *root, const char *repo, char *buf, size_t size) {
    if (!av_hf_repo_id_valid(repo))
        return av_set_error(AV_ERR_INVALID, "invalid repository id '%s': expected ORG/NAME "
                            "such as %s", repo, AV_HUB_DEFAULT_REPO);
    const char *slash = strchr(repo, '/');
    int n = snprintf(buf, size, "%s/models--%.*s--%s", root, (int)(slash - repo), repo,
                     slash + 1);
    if (n < 0 || (size_t)n >= size)
        return av_set_error(AV_ERR_RANGE, "cache path for %s under %s is too long", repo, root);
    return AV_OK;
}

av_status av_hf_mkdirs(const char *path) {
    char tmp[4096];
    if (copy_path(tmp, sizeof tmp, "directory", path)) return AV_ERR_RANGE;
    for (char *p = tmp + 1;; p++) {
        int last = *p == '\0';
        if (*p == '/' || last) {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
                int err = errno;
                return av_set_error(AV_ERR_IO, "cannot create directory %s: %s; make the "
                                    "cache writable or point HF_HUB_CACHE at a writable "
                                    "directory", tmp, strerror(err));
            }
            if (last) break;
            *p = '/';
        }
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return av_set_error(AV_ERR_IO, "%s exists but is not a directory", path);
    return AV_OK;
}

av_status av_hf_read_ref(const char *repo_dir, const char *revision, char commit[41]) {
    if (av_hf_is_hex(revision, 40)) {
        memcpy(commit, revision, 41);
        return AV_OK;
    }
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/refs/%s", repo_dir, revision);
    if (n < 0 || (size_t)n >= sizeof path)
        return av_set_error(AV_ERR_RANGE, "ref path too long under %s", repo_dir);
    FILE *f = fopen(path, "rb");
    if (!f) {
        int err = errno;
        return av_set_error(AV_ERR_IO, "cannot read %s: %s", path, strerror(err));
    }
    char line[64] = {0};
    size_t got = fread(line, 1, sizeof line - 1, f);
    fclose(f);
    while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r' || line[got - 1] == ' '))
        line[--got] = '\0';
    if (!av_hf_is_hex(line, 40))
        return av_set_error(AV_ERR_FORMAT, "%s does not contain a 40-digit commit hash", path);
    memcpy(commit, line, 41);
    return AV_OK;
}

/* Writes `data` to `path` through path.tmp and rename, so a reader sees
 * the old or the new content and never a partial one. */
static av_status write_file_atomic(const char *path, const char *data, size_t len) {
    char tmp[4200];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp)
        return av_set_error(AV_ERR_RANGE, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        int err = errno;
        return av_set_error(AV_ERR_IO, "cannot create %s: %s", tmp, strerror(err));
    }
    ssize_t wrote = write(fd, data, len);
    int err = wrote < 0 ? errno : ENOSPC;
    if (wrote != (ssize_t)len || close(fd) != 0) {
        if (wrote == (ssize_t)len) err = errno;
        unlink(tmp);
        return av_set_error(AV_ERR_IO, "cannot write %s: %s", tmp, strerror(err));
    }
    if (rename(tmp, path) != 0) {
        err = errno;
        unlink(tmp);
        return av_set_error(AV_ERR_IO, "cannot rename %s to %s: %s", tmp, path, strerror(err));
    }
    return AV_OK;
}

/* Creates the parent directories of `path` (everything before its last
 * "/"). */
static av_status make_parent_dirs(const char *path) {
    char dir[4096];
    if (copy_path(dir, sizeof dir, "directory", path)) return AV_ERR_RANGE;
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) return AV_OK;
    *slash = '\0';
    return av_hf_mkdirs(dir);
}

av_status av_hf_write_ref(const char *repo_dir, const char *revision, const char *commit) {
    if (!av_hf_revision_valid(revision))
        return av_set_error(AV_ERR_INVALID, "invalid revision '%s'", revision);
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/refs/%s", repo_dir, revision);
    if (n < 0 || (size_t)n >= sizeof path)
        return av_set_error(AV_ERR_RANGE, "ref path too long under %s", repo_dir);
    if (make_parent_dirs(path)) return AV_ERR_IO;
    return write_file_atomic(path, commit, strlen(commit));
}

int av_hf_snapshot_has(const char *repo_dir, const char *commit, const char *file) {
    char path[4096];
    int n = snprintf(path, sizeof path, "%s/snapshots/%s/%s", repo_dir, commit, file);
    if (n < 0 || (size_t)n >= sizeof path) return 0;
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

av_status av_hf_snapshot_link(const char *repo_dir, const char *commit, const char *file,
                              const char *blob) {
    if (!av_hf_file_path_valid(file))
        return av_set_error(AV_ERR_INVALID, "invalid repository file path '%s'", file);
    char link_path[4096], target[4096], tmp[4200];
    int n = snprintf(link_path, sizeof link_path, "%s/snapshots/%s/%s", repo_dir, commit, file);
    if (n < 0 || (size_t)n >= sizeof link_path)
        return av_set_error(AV_ERR_RANGE, "snapshot path too long for %s", file);

    /* snapshots/COMMIT/a/b/FILE needs "../" for each of COMMIT, a and b
     * plus one for snapshots/ to reach the repo folder. */
    size_t used = 0;
    int depth = 2;
    for (const char *p = file; *p; p++) depth += *p == '/';
    for (int i = 0; i < depth; i++) {
        memcpy(target + used, "../", 3);
        used += 3;
    }
    n = snprintf(target + used, sizeof target - used, "blobs/%s", blob);
    if (n < 0 || (size_t)n >= sizeof target - used)
        return av_set_error(AV_ERR_RANGE, "blob name too long: %s", blob);

    if (make_parent_dirs(link_path)) return AV_ERR_IO;
    n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", link_path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp) return av_set_error(AV_ERR_RANGE, "path too long");
    unlink(tmp);
    if (symlink(target, tmp) != 0) {
        int err = errno;
        return av_set_error(AV_ERR_IO, "cannot create symlink %s: %s", tmp, strerror(err));
    }
    if (rename(tmp, link_path) != 0) {
        int err = errno;
        unlink(tmp);
        return av_set_error(AV_ERR_IO, "cannot rename %s to %s: %s", tmp, link_path,
                            strerror(err));
    }
    return AV_OK;
}

/* ---- -m ORG/NAME[@REV] ------------------------------------------------- */

av_status av_model_resolve(const char *arg, char *dir, size_t size) {
    if (!arg || !*arg) return av_set_error(AV_ERR_INVALID, "empty model path");
    struct stat st;
    if (stat(arg, &st) == 0 && S_ISDIR(st.st_mode))
        return copy_path(dir, size, "model directory", arg);

    char repo[AV_HUB_MAX_REPO + 1];
    const char *revision = "main";
    const char *at = strchr(arg, '@');
    size_t repo_len = at ? (size_t)(at - arg) : strlen(arg);
    if (at) revision = at + 1;
    int repo_ok = repo_len <= AV_HUB_MAX_REPO;
    if (repo_ok) {
        memcpy(repo, arg, repo_len);
        repo[repo_len] = '\0';
        repo_ok = av_hf_repo_id_valid(repo) && av_hf_revision_valid(revision);
    }
    if (!repo_ok)
        return av_set_error(AV_ERR_IO, "model directory %s not found (and it is not a "
                            "Hugging Face repository id ORG/NAME[@REVISION])", arg);

    char root[4096], repo_dir[4096], commit[41], snapshot[4096];
    if (av_hf_cache_root(root, sizeof root)) return AV_ERR_INVALID;
    if (av_hf_repo_dir(root, repo, repo_dir, sizeof repo_dir)) return AV_ERR_INVALID;
    if (av_hf_read_ref(repo_dir, revision, commit)) {
        char reason[1024]; /* av_set_error() overwrites av_last_error()'s buffer */
        snprintf(reason, sizeof reason, "%s", av_last_error());
        return av_set_error(AV_ERR_IO, "model %s is neither a directory nor in the Hugging "
                            "Face cache: %s; download it with 'airavata pull %s%s%s' (the "
                            "cache is $HF_HUB_CACHE, else $HF_HOME/hub)", arg, reason, repo,
                            at ? " --revision " : "", at ? revision : "");
    }
    int n = snprintf(snapshot, sizeof snapshot, "%s/snapshots/%s", repo_dir, commit);
    if (n < 0 || (size_t)n >= sizeof snapshot)
        return av_set_error(AV_ERR_RANGE, "snapshot path too long under %s", repo_dir);
    if (!av_hf_snapshot_has(repo_dir, commit, "config.json"))
        return av_set_error(AV_ERR_IO, "model %s resolves to %s in the Hugging Face cache, "
                            "but that snapshot has no config.json; download it with "
                            "'airavata pull %s%s%s'", arg, snapshot, repo,
                            at ? " --revision " : "", at ? revision : "");
    return copy_path(dir, size, "snapshot", snapshot);
}
