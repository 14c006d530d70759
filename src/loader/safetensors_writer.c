/*
 * safetensors_writer.c - streaming writer of safetensors files.
 *
 * The header must come first in the file, and it contains the data offsets
 * of every tensor, so the caller declares all tensors (name, dtype, shape)
 * before writing any data. Offsets are then known: tensors are packed with
 * no gaps, as the safetensors package requires, ordered by element size
 * (largest first, declaration order among equals) so that every tensor
 * starts at a multiple of its element size, as the safetensors package
 * also orders them. The header is padded with spaces so that the data
 * section starts at a multiple of 8 bytes. The caller still writes data in
 * declaration order; each tensor's bytes go to its own offset.
 *
 * Data goes to PATH.tmp; av_st_writer_finish() checks that every declared
 * byte was written, fsyncs and renames the file to PATH, so PATH is either
 * absent, the old file, or the complete new file.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "loader.h"

/* Upper bound on declared tensors; a 7B Llama has 291. */
#define ST_WRITER_MAX_TENSORS (1 << 20)

typedef struct {
    char *name;
    av_dtype dtype;
    int ndim;
    int64_t shape[AV_MAX_DIMS];
    uint64_t nbytes;
    uint64_t offset;   /* of its data, from the start of the data section */
} declared_tensor;

struct av_st_writer {
    char *path, *tmp_path;
    FILE *fp;
    json_t *metadata;     /* string values, in insertion order */
    declared_tensor *tensors;
    int n_tensors, cap_tensors;
    int header_written;
    uint64_t data_start;  /* file offset of the data section */
    int current;          /* tensor receiving data */
    uint64_t current_written;
    int failed;           /* an earlier call failed; only abort or finish remain */
};

av_st_writer *av_st_writer_create(const char *path) {
    av_st_writer *w = calloc(1, sizeof *w);
    size_t len = strlen(path);
    if (!w || !(w->path = strdup(path)) || !(w->tmp_path = malloc(len + 5)) ||
        !(w->metadata = json_object())) {
        av_set_error(AV_ERR_NOMEM, "%s: out of memory", path);
        goto fail;
    }
    snprintf(w->tmp_path, len + 5, "%s.tmp", path);
    w->fp = fopen(w->tmp_path, "wb");
    if (!w->fp) {
        av_set_error(AV_ERR_IO, "%s: cannot create: %s", w->tmp_path, strerror(errno));
        goto fail;
    }
    return w;
fail:
    if (w) {
        free(w->path);
        free(w->tmp_path);
        json_decref(w->metadata);
        free(w);
    }
    return NULL;
}

static void writer_free(av_st_writer *w) {
    if (w->fp) fclose(w->fp);
    for (int i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
    free(w->tensors);
    json_decref(w->metadata);
    free(w->path);
    free(w->tmp_path);
    free(w);
}

/* Records the error and marks the writer failed, so later calls fail. */
#define WRITER_FAIL(w, status, ...) ((w)->failed = 1, av_set_error((status), __VA_ARGS__))

static av_status check_declaring(av_st_writer *w, const char *what) {
    if (w->failed)
        return av_set_error(AV_ERR_INVALID, "%s: an earlier call failed; abort the writer",
                            w->path);
    if (w->header_written)
        return WRITER_FAIL(w, AV_ERR_INVALID,
                           "%s: %s after tensor data was written; declare everything first",
                           w->path, what);
    return AV_OK;
}

av_status av_st_writer_add_metadata(av_st_writer *w, const char *key, const char *value) {
    av_status status = check_declaring(w, "metadata added");
    if (status) return status;
    json_t *text = json_string(value);
    if (!text || json_object_set_new(w->metadata, key, text))
        return WRITER_FAIL(w, AV_ERR_INVALID,
                           "%s: metadata '%s' is not valid UTF-8 or out of memory", w->path,
                           key);
    return AV_OK;
}

static av_status check_declaration(av_st_writer *w, const char *name, av_dtype dtype, int ndim,
                                   const int64_t *shape, uint64_t *nbytes) {
    if (!name || !*name || !strcmp(name, "__metadata__"))
        return WRITER_FAIL(w, AV_ERR_INVALID, "%s: invalid tensor name '%s'", w->path,
                           name ? name : "(null)");
    if ((unsigned)dtype >= AV_DTYPE_COUNT)
        return WRITER_FAIL(w, AV_ERR_INVALID, "%s: tensor '%s': invalid dtype %d", w->path,
                           name, (int)dtype);
    if (ndim < 0 || ndim > AV_MAX_DIMS)
        return WRITER_FAIL(w, AV_ERR_INVALID,
                           "%s: tensor '%s': %d dimensions, expected 0 to %d", w->path, name,
                           ndim, AV_MAX_DIMS);
    if (w->n_tensors >= ST_WRITER_MAX_TENSORS)
        return WRITER_FAIL(w, AV_ERR_RANGE, "%s: more than %d tensors", w->path,
                           ST_WRITER_MAX_TENSORS);
    uint64_t bytes = av_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(bytes, (uint64_t)shape[i], &bytes) ||
            bytes > (uint64_t)INT64_MAX)
            return WRITER_FAIL(w, AV_ERR_INVALID,
                               "%s: tensor '%s': dimension %d is negative or the size "
                               "overflows (%lld)",
                               w->path, name, i, (long long)shape[i]);
    }
    for (int i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return WRITER_FAIL(w, AV_ERR_INVALID, "%s: tensor '%s' declared twice", w->path,
                               name);
    *nbytes = bytes;
    return AV_OK;
}

av_status av_st_writer_declare(av_st_writer *w, const char *name, av_dtype dtype, int ndim,
                               const int64_t *shape) {
    av_status status = check_declaring(w, "tensor declared");
    uint64_t nbytes = 0;
    if (status || (status = check_declaration(w, name, dtype, ndim, shape, &nbytes)))
        return status;
    if (w->n_tensors == w->cap_tensors) {
        int cap = w->cap_tensors ? 2 * w->cap_tensors : 64;
        declared_tensor *grown = realloc(w->tensors, (size_t)cap * sizeof *grown);
        if (!grown) return WRITER_FAIL(w, AV_ERR_NOMEM, "%s: out of memory", w->path);
        w->tensors = grown;
        w->cap_tensors = cap;
    }
    declared_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return WRITER_FAIL(w, AV_ERR_NOMEM, "%s: out of memory", w->path);
    t->dtype = dtype;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->nbytes = nbytes;
    w->n_tensors++;
    return AV_OK;
}

/* Assigns data offsets: tensors of 8-byte elements first, then 4, 2 and 1,
 * each group in declaration order, so every offset is a multiple of its
 * element size. */
static void assign_offsets(av_st_writer *w) {
    uint64_t offset = 0;
    for (size_t size = 8; size >= 1; size /= 2)
        for (int i = 0; i < w->n_tensors; i++) {
            declared_tensor *t = &w->tensors[i];
            if (av_dtype_size(t->dtype) != size) continue;
            t->offset = offset;
            offset += t->nbytes;
        }
}

/* Builds the header JSON: metadata first, then tensors in declaration
 * order with the offsets assign_offsets() chose. */
static json_t *build_header(av_st_writer *w) {
    json_t *root = json_object();
    if (!root) return NULL;
    if (json_object_size(w->metadata) > 0 &&
        json_object_set(root, "__metadata__", w->metadata))
        goto fail;
    assign_offsets(w);
    for (int i = 0; i < w->n_tensors; i++) {
        const declared_tensor *t = &w->tensors[i];
        json_t *shape = json_array();
        for (int d = 0; shape && d < t->ndim; d++)
            if (json_array_append_new(shape, json_integer(t->shape[d]))) {
                json_decref(shape);
                shape = NULL;
            }
        if (!shape) goto fail;
        json_t *entry = json_pack("{s:s, s:o, s:[I,I]}", "dtype", av_dtype_name(t->dtype),
                                  "shape", shape, "data_offsets", (json_int_t)t->offset,
                                  (json_int_t)(t->offset + t->nbytes));
        if (!entry || json_object_set_new(root, t->name, entry)) goto fail;
    }
    return root;
fail:
    json_decref(root);
    return NULL;
}

static av_status write_header(av_st_writer *w) {
    json_t *root = build_header(w);
    char *text = root ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!text) return WRITER_FAIL(w, AV_ERR_NOMEM, "%s: cannot build the header", w->path);

    /* Pad with spaces so that 8 + header length is a multiple of 8. */
    size_t len = strlen(text);
    size_t padded = (len + 7) / 8 * 8;
    uint8_t prefix[8];
    for (int i = 0; i < 8; i++) prefix[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(prefix, 1, 8, w->fp) == 8 && fwrite(text, 1, len, w->fp) == len;
    for (size_t i = len; ok && i < padded; i++) ok = fputc(' ', w->fp) != EOF;
    free(text);
    if (!ok)
        return WRITER_FAIL(w, AV_ERR_IO, "%s: write failed: %s", w->tmp_path, strerror(errno));
    w->header_written = 1;
    w->data_start = 8 + (uint64_t)padded;
    return AV_OK;
}

/* Moves `current` past tensors that are complete (including empty ones). */
static void skip_complete(av_st_writer *w) {
    while (w->current < w->n_tensors && w->current_written == w->tensors[w->current].nbytes) {
        w->current++;
        w->current_written = 0;
    }
}

av_status av_st_writer_write(av_st_writer *w, const void *data, size_t nbytes) {
    if (w->failed)
        return av_set_error(AV_ERR_INVALID, "%s: an earlier call failed; abort the writer",
                            w->path);
    av_status status;
    if (!w->header_written && (status = write_header(w))) return status;
    skip_complete(w);
    if (nbytes == 0) return AV_OK;
    if (w->current >= w->n_tensors)
        return WRITER_FAIL(w, AV_ERR_INVALID,
                           "%s: %zu bytes written after the data of all %d declared tensors",
                           w->path, nbytes, w->n_tensors);
    const declared_tensor *t = &w->tensors[w->current];
    uint64_t left = t->nbytes - w->current_written;
    if (nbytes > left)
        return WRITER_FAIL(w, AV_ERR_INVALID,
                           "%s: tensor '%s': write of %zu bytes exceeds the %llu bytes left of "
                           "its %llu",
                           w->path, t->name, nbytes, (unsigned long long)left,
                           (unsigned long long)t->nbytes);
    if (w->current_written == 0 &&
        fseeko(w->fp, (off_t)(w->data_start + t->offset), SEEK_SET) != 0)
        return WRITER_FAIL(w, AV_ERR_IO, "%s: seek failed: %s", w->tmp_path, strerror(errno));
    if (fwrite(data, 1, nbytes, w->fp) != nbytes)
        return WRITER_FAIL(w, AV_ERR_IO, "%s: write failed: %s", w->tmp_path, strerror(errno));
    w->current_written += nbytes;
    skip_complete(w);
    return AV_OK;
}

/* Flushes the file to disk and closes it. */
static av_status sync_and_close(av_st_writer *w) {
    int ok = fflush(w->fp) == 0 && fsync(fileno(w->fp)) == 0;
    int saved = errno;
    ok = fclose(w->fp) == 0 && ok;
    w->fp = NULL;
    if (!ok)
        return av_set_error(AV_ERR_IO, "%s: write failed: %s", w->tmp_path,
                            strerror(saved ? saved : errno));
    return AV_OK;
}

/* Best effort: makes the rename durable. A failure here loses nothing that
 * is already written, so it is not reported. */
static void sync_parent_dir(const char *path) {
    char *copy = strdup(path);
    if (!copy) return;
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
    free(copy);
}

av_status av_st_writer_finish(av_st_writer *w) {
    if (!w) return av_set_error(AV_ERR_INVALID, "av_st_writer_finish: writer is NULL");
    av_status status = AV_OK;
    if (w->failed) {
        status = av_set_error(AV_ERR_INVALID, "%s: an earlier call failed; nothing was written",
                              w->path);
    } else if (!w->header_written) {
        status = write_header(w);
    }
    if (!status) {
        skip_complete(w);
        if (w->current < w->n_tensors)
            status = av_set_error(AV_ERR_INVALID,
                                  "%s: tensor '%s' received %llu of its %llu bytes; every "
                                  "declared tensor must be written in full",
                                  w->path, w->tensors[w->current].name,
                                  (unsigned long long)w->current_written,
                                  (unsigned long long)w->tensors[w->current].nbytes);
    }
    if (!status) status = sync_and_close(w);
    if (!status && rename(w->tmp_path, w->path) != 0)
        status = av_set_error(AV_ERR_IO, "%s: cannot rename %s to it: %s", w->path, w->tmp_path,
                              strerror(errno));
    if (status) {
        if (w->fp) fclose(w->fp);
        w->fp = NULL;
        unlink(w->tmp_path);
    } else {
        sync_parent_dir(w->path);
    }
    writer_free(w);
    return status;
}

void av_st_writer_abort(av_st_writer *w) {
    if (!w) return;
    if (w->fp) fclose(w->fp);
    w->fp = NULL;
    unlink(w->tmp_path);
    writer_free(w);
}
