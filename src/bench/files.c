/*
 * files.c - file helpers of `bench` and `eval`: the size of a checkpoint's
 * weights on disk and reading a text file with a size limit.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bench.h"

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

int64_t av_dir_weights_bytes(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) {
        av_set_error(AV_ERR_IO, "cannot open model directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int64_t total = 0;
    struct dirent *e;
    char path[4096];
    while ((e = readdir(d))) {
        if (!ends_with(e->d_name, ".safetensors")) continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(path, &sb) == 0 && S_ISREG(sb.st_mode)) total += (int64_t)sb.st_size;
    }
    closedir(d);
    return total;
}

char *av_read_text_file(const char *path, size_t max_bytes, size_t *len_out) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        av_set_error(AV_ERR_IO, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (len + 1 >= cap) {
            if (cap > max_bytes) {
                free(buf);
                fclose(f);
                av_set_error(AV_ERR_RANGE, "%s is larger than the limit of %zu bytes", path,
                             max_bytes);
                return NULL;
            }
            char *grown = realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, f);
        len += n;
        if (n == 0) break;
    }
    int read_error = ferror(f);
    fclose(f);
    if (!buf) {
        av_set_error(AV_ERR_NOMEM, "out of memory reading %s", path);
        return NULL;
    }
    if (read_error || len > max_bytes) {
        free(buf);
        av_set_error(read_error ? AV_ERR_IO : AV_ERR_RANGE, read_error
                     ? "cannot read %s" : "%s is larger than the limit of the input", path);
        return NULL;
    }
    buf[len] = 0;
    *len_out = len;
    return buf;
}
