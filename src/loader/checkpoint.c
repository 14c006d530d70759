/*
 * checkpoint.c - a Hugging Face model directory opened for reading.
 *
 * Weights come from one of two layouts:
 *   - model.safetensors, one file with every tensor;
 *   - model.safetensors.index.json, {"metadata": {...}, "weight_map":
 *     {"TENSOR": "SHARD FILE", ...}}, plus the shard files it names.
 * When both exist, model.safetensors is used and the index is ignored:
 * the single file is complete by itself, while an index can be stale.
 *
 * With an index, the checkpoint's tensors are exactly those that the
 * weight_map names; each must exist in its shard. Shard names must be plain
 * file names inside the directory. Lookup by name is a binary search over
 * a sorted array of pointers (a 7B Llama has 291 tensors).
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loader.h"

#define INDEX_FILE_MAX (64u << 20)
#define MAX_SHARDS 4096

struct av_checkpoint {
    char *dir;
    av_config config;
    av_generation_config gen;
    av_safetensors **files;
    char **paths; /* paths[i] is the path of files[i] */
    int n_files;
    const av_tensor **tensors; /* file order, then offset order */
    const av_tensor **by_name; /* same pointers sorted by name */
    int n_tensors;
    uint64_t data_bytes;
};

static char *join_path(const char *dir, const char *name) {
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = malloc(n);
    if (path) snprintf(path, n, "%s/%s", dir, name);
    return path;
}

static int file_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

static int compare_by_name(const void *a, const void *b) {
    const av_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* ---- configs ----------------------------------------------------------- */

static av_status load_configs(av_checkpoint *c) {
    char *path = join_path(c->dir, "config.json");
    if (!path) return av_set_error(AV_ERR_NOMEM, "out of memory");
    av_status status = AV_OK;
    if (!file_exists(path))
        status = av_set_error(AV_ERR_IO, "%s: missing; a model directory needs config.json",
                              path);
    else
        status = av_config_load(path, &c->config);
    free(path);
    if (status) return status;

    av_generation_config unset = {-1, -1, -1, -1, -1, -1, -1, -1};
    c->gen = unset;
    path = join_path(c->dir, "generation_config.json");
    if (!path) return av_set_error(AV_ERR_NOMEM, "out of memory");
    if (file_exists(path)) status = av_generation_config_load(path, &c->gen);
    free(path);
    return status;
}

/* ---- files ------------------------------------------------------------- */

static av_status add_file(av_checkpoint *c, const char *name) {
    char *path = join_path(c->dir, name);
    if (!path) return av_set_error(AV_ERR_NOMEM, "out of memory");
    av_safetensors *st = av_safetensors_open(path);
    if (!st) {
        free(path);
        return AV_ERR_FORMAT; /* av_safetensors_open recorded the message */
    }
    c->paths[c->n_files] = path;
    c->files[c->n_files++] = st;
    return AV_OK;
}

/* Collects every tensor of the single file. */
static av_status open_single(av_checkpoint *c) {
    c->files = calloc(1, sizeof *c->files);
    c->paths = calloc(1, sizeof *c->paths);
    if (!c->files || !c->paths) return av_set_error(AV_ERR_NOMEM, "out of memory");
    av_status status = add_file(c, "model.safetensors");
    if (status) return status;
    int n = av_safetensors_count(c->files[0]);
    c->tensors = calloc((size_t)n + 1, sizeof *c->tensors);
    if (!c->tensors) return av_set_error(AV_ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) c->tensors[c->n_tensors++] = av_safetensors_get(c->files[0], i);
    return AV_OK;
}

/* Checks that a shard name from the index is a plain file name. */
static av_status check_shard_name(const char *index_path, const char *tensor, json_t *value) {
    const char *name = json_string_value(value);
    if (!name)
        return av_set_error(AV_ERR_FORMAT,
                            "%s: weight_map entry of '%s' must be a file name string",
                            index_path, tensor);
    if (!*name || strchr(name, '/') || strchr(name, '\\') || strstr(name, ".."))
        return av_set_error(AV_ERR_FORMAT,
                            "%s: shard name '%s' of tensor '%s' is not a plain file name in "
                            "the model directory",
                            index_path, name, tensor);
    return AV_OK;
}

/* Returns the shard called `name`, opening it on first use. */
static av_status get_shard(av_checkpoint *c, const char *index_path, char **names,
                           const char *name, av_safetensors **out) {
    for (int i = 0; i < c->n_files; i++)
        if (!strcmp(names[i], name)) {
            *out = c->files[i];
            return AV_OK;
        }
    if (c->n_files >= MAX_SHARDS)
        return av_set_error(AV_ERR_RANGE, "%s: more than %d shard files", index_path,
                            MAX_SHARDS);
    char *path = join_path(c->dir, name);
    if (!path) return av_set_error(AV_ERR_NOMEM, "out of memory");
    int exists = file_exists(path);
    int saved = errno;
    free(path);
    if (!exists)
        return av_set_error(AV_ERR_IO, "%s names shard '%s', which is missing from %s: %s",
                            index_path, name, c->dir, strerror(saved));
    if (!(names[c->n_files] = strdup(name))) return av_set_error(AV_ERR_NOMEM, "out of memory");
    av_status status = add_file(c, name);
    if (status) {
        free(names[c->n_files]);
        names[c->n_files] = NULL;
        return status;
    }
    *out = c->files[c->n_files - 1];
    return AV_OK;
}

static av_status map_weights(av_checkpoint *c, const char *index_path, json_t *weight_map) {
    size_t n = json_object_size(weight_map);
    char **names = calloc(MAX_SHARDS, sizeof *names);
    c->files = calloc(MAX_SHARDS, sizeof *c->files);
    c->paths = calloc(MAX_SHARDS, sizeof *c->paths);
    c->tensors = calloc(n + 1, sizeof *c->tensors);
    av_status status = AV_OK;
    if (!names || !c->files || !c->paths || !c->tensors) {
        status = av_set_error(AV_ERR_NOMEM, "out of memory");
        goto done;
    }
    const char *tensor;
    json_t *value;
    json_object_foreach(weight_map, tensor, value) {
        av_safetensors *shard = NULL;
        if ((status = check_shard_name(index_path, tensor, value)) ||
            (status = get_shard(c, index_path, names, json_string_value(value), &shard)))
            goto done;
        const av_tensor *t = av_safetensors_find(shard, tensor);
        if (!t) {
            status = av_set_error(AV_ERR_FORMAT,
                                  "%s maps tensor '%s' to shard '%s', but that shard has no "
                                  "tensor of that name",
                                  index_path, tensor, json_string_value(value));
            goto done;
        }
        c->tensors[c->n_tensors++] = t;
    }
done:
    if (names)
        for (int i = 0; i < MAX_SHARDS; i++) free(names[i]);
    free(names);
    return status;
}

static av_status open_sharded(av_checkpoint *c, const char *index_path) {
    json_t *root = NULL;
    av_status status = av_json_load_file(index_path, INDEX_FILE_MAX, &root);
    if (status) return status;
    json_t *weight_map = json_object_get(root, "weight_map");
    if (!json_is_object(weight_map) || json_object_size(weight_map) == 0)
        status = av_set_error(AV_ERR_FORMAT,
                              "%s: missing or empty \"weight_map\" object of tensor names to "
                              "shard files",
                              index_path);
    else
        status = map_weights(c, index_path, weight_map);
    json_decref(root);
    return status;
}

/* Sort key of a tensor: the index of its file, then its offset. */
typedef struct {
    const av_tensor *tensor;
    int file;
} placed_tensor;

static int compare_placed(const void *a, const void *b) {
    const placed_tensor *x = a, *y = b;
    if (x->file != y->file) return x->file < y->file ? -1 : 1;
    const char *dx = x->tensor->data, *dy = y->tensor->data;
    if (dx != dy) return dx < dy ? -1 : 1;
    return strcmp(x->tensor->name, y->tensor->name);
}

/* Sorts the tensors into file then offset order, builds the name index and
 * sums the data bytes. */
static av_status index_tensors(av_checkpoint *c) {
    size_t n = (size_t)c->n_tensors;
    placed_tensor *placed = calloc(n + 1, sizeof *placed);
    c->by_name = calloc(n + 1, sizeof *c->by_name);
    if (!placed || !c->by_name) {
        free(placed);
        return av_set_error(AV_ERR_NOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        placed[i].tensor = c->tensors[i];
        placed[i].file = c->n_files;
        for (int f = 0; f < c->n_files; f++)
            if (av_safetensors_find(c->files[f], c->tensors[i]->name) == c->tensors[i])
                placed[i].file = f;
    }
    qsort(placed, n, sizeof *placed, compare_placed);
    c->data_bytes = 0;
    for (size_t i = 0; i < n; i++) {
        c->tensors[i] = placed[i].tensor;
        c->by_name[i] = placed[i].tensor;
        c->data_bytes += placed[i].tensor->nbytes;
    }
    free(placed);
    qsort(c->by_name, n, sizeof *c->by_name, compare_by_name);
    return AV_OK;
}

/* ---- public interface -------------------------------------------------- */

static av_status open_weights(av_checkpoint *c) {
    char *single = join_path(c->dir, "model.safetensors");
    char *index = join_path(c->dir, "model.safetensors.index.json");
    av_status status;
    if (!single || !index)
        status = av_set_error(AV_ERR_NOMEM, "out of memory");
    else if (file_exists(single))
        status = open_single(c);
    else if (file_exists(index))
        status = open_sharded(c, index);
    else
        status = av_set_error(AV_ERR_IO,
                              "%s: no model.safetensors or model.safetensors.index.json; "
                              "weights must be in safetensors format",
                              c->dir);
    free(single);
    free(index);
    return status ? status : index_tensors(c);
}

av_checkpoint *av_checkpoint_open(const char *dir) {
    av_checkpoint *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = strdup(dir))) {
        free(c);
        av_set_error(AV_ERR_NOMEM, "out of memory");
        return NULL;
    }
    /* "DIR/" and "DIR" name the same directory; keep paths in messages tidy. */
    size_t len = strlen(c->dir);
    while (len > 1 && c->dir[len - 1] == '/') c->dir[--len] = '\0';

    struct stat sb;
    if (stat(c->dir, &sb) != 0) {
        av_set_error(AV_ERR_IO, "%s: cannot open model directory: %s", c->dir, strerror(errno));
        av_checkpoint_close(c);
        return NULL;
    }
    if (!S_ISDIR(sb.st_mode)) {
        av_set_error(AV_ERR_IO, "%s: not a directory; pass the model directory", c->dir);
        av_checkpoint_close(c);
        return NULL;
    }
    if (load_configs(c) || open_weights(c)) {
        av_checkpoint_close(c);
        return NULL;
    }
    return c;
}

void av_checkpoint_close(av_checkpoint *c) {
    if (!c) return;
    for (int i = 0; i < c->n_files; i++) {
        av_safetensors_close(c->files[i]);
        free(c->paths[i]);
    }
    free(c->files);
    free(c->paths);
    free(c->tensors);
    free(c->by_name);
    free(c->dir);
    free(c);
}

const char *av_checkpoint_dir(const av_checkpoint *c) { return c->dir; }
const av_config *av_checkpoint_config(const av_checkpoint *c) { return &c->config; }

const av_generation_config *av_checkpoint_generation_config(const av_checkpoint *c) {
    return &c->gen;
}

int av_checkpoint_tensor_count(const av_checkpoint *c) { return c->n_tensors; }

const av_tensor *av_checkpoint_tensor(const av_checkpoint *c, int index) {
    if (index < 0 || index >= c->n_tensors) return NULL;
    return c->tensors[index];
}

const av_tensor *av_checkpoint_find(const av_checkpoint *c, const char *name) {
    int lo = 0, hi = c->n_tensors - 1;
    while (lo <= hi) {
        int mid = lo + (hi - lo) / 2;
        int cmp = strcmp(name, c->by_name[mid]->name);
        if (cmp == 0) return c->by_name[mid];
        if (cmp < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

uint64_t av_checkpoint_data_bytes(const av_checkpoint *c) { return c->data_bytes; }

void av_checkpoint_release(const av_checkpoint *c, const void *data, size_t bytes) {
    for (int i = 0; i < c->n_files; i++) av_safetensors_release(c->files[i], data, bytes);
}

int av_checkpoint_file_count(const av_checkpoint *c) { return c->n_files; }

const char *av_checkpoint_file_path(const av_checkpoint *c, int index) {
    if (index < 0 || index >= c->n_files) return NULL;
    return c->paths[index];
}

static const char *format_dims(char *buf, size_t size, int ndim, const int64_t *shape) {
    size_t n = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < size) snprintf(buf + n, size - n, "]");
    return buf;
}

const av_tensor *av_checkpoint_require(const av_checkpoint *c, const char *name, int ndim,
                                       const int64_t *shape) {
    const av_tensor *t = av_checkpoint_find(c, name);
    if (!t) {
        av_set_error(AV_ERR_FORMAT,
                     "%s: tensor '%s' is missing from the checkpoint's %d tensors; is this a "
                     "Llama checkpoint with Hugging Face tensor names?",
                     c->dir, name, c->n_tensors);
        return NULL;
    }
    if (t->dtype != AV_DTYPE_F32 && t->dtype != AV_DTYPE_F16 && t->dtype != AV_DTYPE_BF16) {
        if (t->dtype == AV_DTYPE_U8 || t->dtype == AV_DTYPE_I8) {
            /* A bitsandbytes weight whose config lost its quantization block. */
            av_set_error(AV_ERR_FORMAT,
                         "%s in %s: dtype %s looks like a bitsandbytes %s weight, but "
                         "config.json has no quantization_config; restore the "
                         "quantization_config block that was saved with the weights",
                         name, t->file, av_dtype_name(t->dtype),
                         t->dtype == AV_DTYPE_U8 ? "4-bit" : "8-bit");
            return NULL;
        }
        av_set_error(AV_ERR_UNSUPPORTED,
                     "%s in %s: dtype %s is not supported; weights must be F32, F16 or BF16",
                     name, t->file, av_dtype_name(t->dtype));
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char want[128], found[128];
        av_set_error(AV_ERR_FORMAT, "%s in %s: shape %s expected, found %s", name, t->file,
                     format_dims(want, sizeof want, ndim, shape),
                     format_dims(found, sizeof found, t->ndim, t->shape));
        return NULL;
    }
    return t;
}

/* Sums the bytes (or the elements) of the tensors named "<module>.<anything>". */
static uint64_t module_total(const av_checkpoint *ckpt, const char *module, int elements) {
    size_t len = strlen(module);
    uint64_t total = 0;
    for (int i = 0; i < av_checkpoint_tensor_count(ckpt); i++) {
        const av_tensor *t = av_checkpoint_tensor(ckpt, i);
        if (strncmp(t->name, module, len) != 0 || t->name[len] != '.') continue;
        total += elements ? (uint64_t)t->numel : (uint64_t)t->nbytes;
    }
    return total;
}

uint64_t av_checkpoint_module_bytes(const av_checkpoint *ckpt, const char *module) {
    return module_total(ckpt, module, 0);
}

uint64_t av_checkpoint_module_elements(const av_checkpoint *ckpt, const char *module) {
    return module_total(ckpt, module, 1);
}
