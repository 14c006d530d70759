/*
 * safetensors.c - read-only access to safetensors files.
 *
 * Layout of a safetensors file:
 *   8 bytes   N, the header length, unsigned little-endian
 *   N bytes   JSON object {"NAME": {"dtype": "F32", "shape": [..],
 *             "data_offsets": [BEGIN, END]}, ..., "__metadata__": {..}}
 *   rest      the data section; BEGIN and END are relative to its start
 *
 * The file is memory-mapped read-only and tensor data is never copied:
 * av_tensor.data points into the map, which lives until
 * av_safetensors_close(). Because a checkpoint may come from anywhere, the
 * header is validated before any pointer into the data is handed out: every
 * size is checked against the file with overflow-safe arithmetic, and
 * tensors may not overlap. Gaps between tensors are allowed.
 *
 * The format does not align tensor data. Files written by the safetensors
 * package and by safetensors_writer.c order tensors so that each starts at
 * a multiple of its element size; for any other file, a tensor whose data
 * is misaligned is copied once into aligned memory at open time, so that
 * kernels may read every av_tensor.data through a pointer of its type.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loader.h"

/* A header larger than this is rejected before it is parsed. Real headers
 * are small: about 30 KB for a 7B Llama with 291 tensors. */
#define ST_HEADER_MAX (100u << 20)

typedef struct {
    char *key, *value;
} st_metadata;

struct av_safetensors {
    char *path;
    void *map; /* whole file, PROT_READ */
    size_t map_size;
    const uint8_t *data; /* start of the data section */
    size_t data_size;
    av_tensor *tensors; /* sorted by data offset, the file order */
    int n_tensors;
    const av_tensor **by_name; /* pointers into tensors, sorted by name */
    st_metadata *metadata;
    int n_metadata;
    void **copies; /* aligned copies of misaligned tensors */
    int n_copies;
};

/* ---- dtypes ------------------------------------------------------------ */

static int dtype_from_name(const char *name, av_dtype *dtype) {
    for (int d = 0; d < AV_DTYPE_COUNT; d++) {
        if (!strcmp(name, av_dtype_name((av_dtype)d))) {
            *dtype = (av_dtype)d;
            return 1;
        }
    }
    return 0;
}

/* Dtypes that the safetensors format defines but this library does not. */
static int is_other_safetensors_dtype(const char *name) {
    static const char *const names[] = {"BOOL", "I16", "U16", "U32", "U64", "F8_E5M2",
                                        "F8_E4M3", "F8_E8M0", "F6_E2M3", "F6_E3M2",
                                        "F4", "C64"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(name, names[i])) return 1;
    return 0;
}

/* ---- validation of one header entry ------------------------------------ */

/* Writes "[4, 8]" into buf. */
static const char *format_shape(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

static av_status parse_dtype(const char *path, const char *name, json_t *entry,
                             av_dtype *dtype) {
    json_t *value = json_object_get(entry, "dtype");
    if (!value)
        return av_set_error(AV_ERR_FORMAT, "%s: tensor '%s': missing \"dtype\"", path, name);
    if (!json_is_string(value))
        return av_set_error(AV_ERR_FORMAT, "%s: tensor '%s': \"dtype\" must be a string", path,
                            name);
    const char *text = json_string_value(value);
    if (dtype_from_name(text, dtype)) return AV_OK;
    if (is_other_safetensors_dtype(text))
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: tensor '%s': dtype %s is not supported; supported dtypes are "
                            "F32, F16, BF16, I8, U8, I32, I64 and F64",
                            path, name, text);
    return av_set_error(AV_ERR_FORMAT,
                        "%s: tensor '%s': unknown dtype '%s'; safetensors dtypes are "
                        "spelled like F32, F16, BF16, I8",
                        path, name, text);
}

/* Parses "shape" into t->shape and t->ndim and computes t->numel and
 * *nbytes without overflow (dims are checked against the data size). */
static av_status parse_shape(const char *path, const char *name, json_t *entry,
                             size_t data_size, av_tensor *t, uint64_t *nbytes) {
    json_t *shape = json_object_get(entry, "shape");
    if (!shape)
        return av_set_error(AV_ERR_FORMAT, "%s: tensor '%s': missing \"shape\"", path, name);
    if (!json_is_array(shape))
        return av_set_error(AV_ERR_FORMAT, "%s: tensor '%s': \"shape\" must be an array", path,
                            name);
    size_t ndim = json_array_size(shape);
    if (ndim > AV_MAX_DIMS)
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: tensor '%s': %zu dimensions, at most %d are supported", path,
                            name, ndim, AV_MAX_DIMS);
    t->ndim = (int)ndim;
    uint64_t numel = 1;
    int overflow = 0;
    for (size_t i = 0; i < ndim; i++) {
        json_t *dim = json_array_get(shape, i);
        if (!json_is_integer(dim))
            return av_set_error(AV_ERR_FORMAT,
                                "%s: tensor '%s': shape dimension %zu is not an integer", path,
                                name, i);
        json_int_t d = json_integer_value(dim);
        if (d < 0)
            return av_set_error(AV_ERR_FORMAT,
                                "%s: tensor '%s': shape dimension %zu is negative (%lld)", path,
                                name, i, (long long)d);
        t->shape[i] = (int64_t)d;
        if (__builtin_mul_overflow(numel, (uint64_t)d, &numel)) overflow = 1;
    }
    uint64_t bytes = 0;
    if (overflow || __builtin_mul_overflow(numel, (uint64_t)av_dtype_size(t->dtype), &bytes) ||
        bytes > data_size) {
        char buf[128];
        return av_set_error(AV_ERR_FORMAT,
                            "%s: tensor '%s': shape %s of %s needs more bytes than the %zu-byte "
                            "data section holds",
                            path, name, format_shape(buf, sizeof buf, t->ndim, t->shape),
                            av_dtype_name(t->dtype), data_size);
    }
    t->numel = (int64_t)numel;
    *nbytes = bytes;
    return AV_OK;
}

static av_status parse_offsets(const char *path, const char *name, json_t *entry,
                               size_t data_size, uint64_t *begin, uint64_t *end) {
    json_t *offsets = json_object_get(entry, "data_offsets");
    if (!offsets)
        return av_set_error(AV_ERR_FORMAT, "%s: tensor '%s': missing \"data_offsets\"", path,
                            name);
    json_t *b = json_array_get(offsets, 0), *e = json_array_get(offsets, 1);
    if (!json_is_array(offsets) || json_array_size(offsets) != 2 || !json_is_integer(b) ||
        !json_is_integer(e))
        return av_set_error(AV_ERR_FORMAT,
                            "%s: tensor '%s': \"data_offsets\" must be an array of two integers",
                            path, name);
    json_int_t bv = json_integer_value(b), ev = json_integer_value(e);
    if (bv < 0 || ev < bv)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%lld, %lld] are not an increasing "
                            "pair of non-negative offsets",
                            path, name, (long long)bv, (long long)ev);
    if ((uint64_t)ev > data_size)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%lld, %lld] end beyond the data "
                            "section, which holds %zu bytes (truncated file?)",
                            path, name, (long long)bv, (long long)ev, data_size);
    *begin = (uint64_t)bv;
    *end = (uint64_t)ev;
    return AV_OK;
}

/* Fills t from one header entry and checks it against the data section. */
static av_status parse_tensor(av_safetensors *st, const char *name, json_t *entry,
                              av_tensor *t) {
    const char *path = st->path;
    if (!json_is_object(entry))
        return av_set_error(AV_ERR_FORMAT, "%s: tensor '%s': entry must be a JSON object", path,
                            name);
    av_status status = parse_dtype(path, name, entry, &t->dtype);
    if (status) return status;
    uint64_t nbytes = 0, begin = 0, end = 0;
    if ((status = parse_shape(path, name, entry, st->data_size, t, &nbytes))) return status;
    if ((status = parse_offsets(path, name, entry, st->data_size, &begin, &end))) return status;
    if (end - begin != nbytes) {
        char buf[128];
        return av_set_error(AV_ERR_FORMAT,
                            "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes but "
                            "shape %s of %s needs %llu",
                            path, name, (unsigned long long)begin, (unsigned long long)end,
                            (unsigned long long)(end - begin),
                            format_shape(buf, sizeof buf, t->ndim, t->shape),
                            av_dtype_name(t->dtype), (unsigned long long)nbytes);
    }
    t->name = strdup(name);
    if (!t->name) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    t->data = st->data + begin;
    t->nbytes = (size_t)nbytes;
    t->file = st->path;
    return AV_OK;
}

static av_status parse_metadata(av_safetensors *st, json_t *meta) {
    if (!json_is_object(meta))
        return av_set_error(AV_ERR_FORMAT, "%s: \"__metadata__\" must be a JSON object",
                            st->path);
    st->metadata = calloc(json_object_size(meta) + 1, sizeof *st->metadata);
    if (!st->metadata) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", st->path);
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return av_set_error(AV_ERR_FORMAT,
                                "%s: __metadata__ value of '%s' must be a string", st->path,
                                key);
        st_metadata *m = &st->metadata[st->n_metadata++];
        m->key = strdup(key);
        m->value = strdup(json_string_value(value));
        if (!m->key || !m->value) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", st->path);
    }
    return AV_OK;
}

/* ---- ordering ---------------------------------------------------------- */

static int compare_by_offset(const void *a, const void *b) {
    const av_tensor *x = a, *y = b;
    if (x->data != y->data) return (const uint8_t *)x->data < (const uint8_t *)y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int compare_by_name(const void *a, const void *b) {
    const av_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Sorts the tensors by offset, rejects overlaps and builds the name index. */
static av_status index_tensors(av_safetensors *st) {
    qsort(st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, compare_by_offset);
    /* Sorted by begin, tensor i overlaps an earlier one exactly when it
     * begins before the furthest end seen so far. */
    const av_tensor *furthest = st->n_tensors ? &st->tensors[0] : NULL;
    for (int i = 1; i < st->n_tensors; i++) {
        const av_tensor *t = &st->tensors[i];
        size_t prev_begin = (size_t)((const uint8_t *)furthest->data - st->data);
        size_t prev_end = prev_begin + furthest->nbytes;
        size_t begin = (size_t)((const uint8_t *)t->data - st->data);
        if (begin < prev_end)
            return av_set_error(AV_ERR_FORMAT,
                                "%s: tensors '%s' (data_offsets [%zu, %zu]) and '%s' "
                                "(data_offsets [%zu, %zu]) overlap",
                                st->path, furthest->name, prev_begin, prev_end, t->name, begin,
                                begin + t->nbytes);
        if (begin + t->nbytes > prev_end) furthest = t;
    }
    st->by_name = malloc(((size_t)st->n_tensors + 1) * sizeof *st->by_name);
    if (!st->by_name) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", st->path);
    for (int i = 0; i < st->n_tensors; i++) st->by_name[i] = &st->tensors[i];
    qsort(st->by_name, (size_t)st->n_tensors, sizeof *st->by_name, compare_by_name);
    return AV_OK;
}

/* ---- header ------------------------------------------------------------ */

static av_status parse_header(av_safetensors *st, const char *text, size_t len) {
    json_error_t err;
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        if (strstr(err.text, "duplicate"))
            return av_set_error(AV_ERR_FORMAT, "%s: header names a key twice (%s)", st->path,
                                err.text);
        return av_set_error(AV_ERR_FORMAT,
                            "%s: header is not valid JSON: %s at line %d, column %d", st->path,
                            err.text, err.line, err.column);
    }
    av_status status = AV_OK;
    if (!json_is_object(root)) {
        status = av_set_error(AV_ERR_FORMAT, "%s: header is not a JSON object", st->path);
        goto done;
    }
    st->tensors = calloc(json_object_size(root) + 1, sizeof *st->tensors);
    if (!st->tensors) {
        status = av_set_error(AV_ERR_NOMEM, "%s: out of memory", st->path);
        goto done;
    }
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (!strcmp(key, "__metadata__")) {
            status = parse_metadata(st, value);
        } else {
            status = parse_tensor(st, key, value, &st->tensors[st->n_tensors]);
            if (!status) st->n_tensors++;
        }
        if (status) goto done;
    }
    status = index_tensors(st);
done:
    json_decref(root);
    return status;
}

/* ---- open / close ------------------------------------------------------ */

static av_status map_file(av_safetensors *st) {
    int fd = open(st->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return av_set_error(AV_ERR_IO, "%s: cannot open: %s", st->path, strerror(errno));
    struct stat sb;
    av_status status = AV_OK;
    if (fstat(fd, &sb) != 0) {
        status = av_set_error(AV_ERR_IO, "%s: cannot stat: %s", st->path, strerror(errno));
    } else if (!S_ISREG(sb.st_mode)) {
        status = av_set_error(AV_ERR_IO, "%s: not a regular file", st->path);
    } else if (sb.st_size < 8) {
        status = av_set_error(AV_ERR_FORMAT,
                              "%s: file is %lld bytes, shorter than the 8-byte header length "
                              "(truncated or not a safetensors file)",
                              st->path, (long long)sb.st_size);
    } else {
        st->map_size = (size_t)sb.st_size;
        st->map = mmap(NULL, st->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (st->map == MAP_FAILED) {
            st->map = NULL;
            status = av_set_error(AV_ERR_IO, "%s: cannot mmap %zu bytes: %s", st->path,
                                  st->map_size, strerror(errno));
        }
    }
    close(fd); /* the mapping stays valid */
    return status;
}

static av_status read_header(av_safetensors *st) {
    const uint8_t *bytes = st->map;
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | bytes[i];
    if (header_len > st->map_size - 8)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: header length %llu is larger than the %zu bytes after it "
                            "(truncated or not a safetensors file)",
                            st->path, (unsigned long long)header_len, st->map_size - 8);
    if (header_len > ST_HEADER_MAX)
        return av_set_error(AV_ERR_FORMAT, "%s: header length %llu exceeds the limit of %u bytes",
                            st->path, (unsigned long long)header_len, ST_HEADER_MAX);
    st->data = bytes + 8 + header_len;
    st->data_size = st->map_size - 8 - (size_t)header_len;
    return parse_header(st, (const char *)bytes + 8, (size_t)header_len);
}

/* Copies every tensor whose data is not aligned to its element size into
 * aligned memory and points it there. */
static av_status align_tensors(av_safetensors *st) {
    int n_misaligned = 0;
    size_t bytes = 0;
    for (int i = 0; i < st->n_tensors; i++) {
        const av_tensor *t = &st->tensors[i];
        if ((uintptr_t)t->data % av_dtype_size(t->dtype) != 0) {
            n_misaligned++;
            bytes += t->nbytes;
        }
    }
    if (n_misaligned == 0) return AV_OK;

    st->copies = calloc((size_t)n_misaligned, sizeof(void *));
    if (!st->copies) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", st->path);
    for (int i = 0; i < st->n_tensors; i++) {
        av_tensor *t = &st->tensors[i];
        if ((uintptr_t)t->data % av_dtype_size(t->dtype) == 0) continue;
        void *copy = aligned_alloc(64, (t->nbytes + 63) / 64 * 64);
        if (!copy)
            return av_set_error(AV_ERR_NOMEM, "%s: out of memory copying tensor '%s' (%zu "
                                "bytes) to aligned memory", st->path, t->name, t->nbytes);
        memcpy(copy, t->data, t->nbytes);
        t->data = copy;
        st->copies[st->n_copies++] = copy;
    }
    av_log(AV_LOG_WARN, "%s: %d tensors are not aligned to their element size; copied %.1f MiB "
           "to aligned memory", st->path, n_misaligned, (double)bytes / (1 << 20));
    return AV_OK;
}

av_safetensors *av_safetensors_open(const char *path) {
    av_safetensors *st = calloc(1, sizeof *st);
    if (!st || !(st->path = strdup(path))) {
        free(st);
        av_set_error(AV_ERR_NOMEM, "%s: out of memory", path);
        return NULL;
    }
    if (map_file(st) || read_header(st) || align_tensors(st)) {
        av_safetensors_close(st);
        return NULL;
    }
    return st;
}

void av_safetensors_release(const av_safetensors *st, const void *data, size_t bytes) {
    const uint8_t *begin = data, *map = st->map;
    /* Not in this file's map: an aligned copy, or another file. */
    if (!map || begin < map || bytes > st->map_size ||
        (size_t)(begin - map) > st->map_size - bytes)
        return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t first = ((uintptr_t)begin + page - 1) / page * page;
    uintptr_t last = ((uintptr_t)begin + bytes) / page * page;
    /* Only whole pages inside the range: neighbours may still be in use.
     * The mapping is private and read-only, so dropped pages read back
     * from the file if touched again. */
    if (last > first) madvise((void *)first, last - first, MADV_DONTNEED);
}

void av_safetensors_close(av_safetensors *st) {
    if (!st) return;
    if (st->map) munmap(st->map, st->map_size);
    for (int i = 0; i < st->n_tensors; i++) free((char *)st->tensors[i].name);
    for (int i = 0; i < st->n_metadata; i++) {
        free(st->metadata[i].key);
        free(st->metadata[i].value);
    }
    for (int i = 0; i < st->n_copies; i++) free(st->copies[i]);
    free(st->copies);
    free(st->tensors);
    free(st->by_name);
    free(st->metadata);
    free(st->path);
    free(st);
}

/* ---- queries ----------------------------------------------------------- */

int av_safetensors_count(const av_safetensors *st) { return st ? st->n_tensors : 0; }

const av_tensor *av_safetensors_get(const av_safetensors *st, int index) {
    if (!st || index < 0 || index >= st->n_tensors) return NULL;
    return &st->tensors[index];
}

const av_tensor *av_safetensors_find(const av_safetensors *st, const char *name) {
    if (!st || !name) return NULL;
    int lo = 0, hi = st->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        const av_tensor *t = st->by_name[mid];
        int c = strcmp(name, t->name);
        if (c == 0) return t;
        if (c < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

const char *av_safetensors_metadata(const av_safetensors *st, const char *key) {
    if (!st || !key) return NULL;
    for (int i = 0; i < st->n_metadata; i++)
        if (!strcmp(st->metadata[i].key, key)) return st->metadata[i].value;
    return NULL;
}
