/*
 * test_checkpoint.c - opening model directories, single-file and sharded.
 *
 * The sharded checkpoint is stories260K split into two shards with the
 * safetensors writer, plus an index; its tensors must be byte-identical to
 * the single file's. Broken directories are copies of that checkpoint with
 * one file changed.
 */
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "loader/loader.h"

static char tmp_dir[] = "/tmp/av_test_checkpoint_XXXXXX";
static char stories_dir[512];

static const char *join(char *buf, size_t size, const char *dir, const char *name) {
    snprintf(buf, size, "%s/%s", dir, name);
    return buf;
}

static void write_text(const char *dir, const char *name, const char *text) {
    char path[1024];
    FILE *fp = fopen(join(path, sizeof path, dir, name), "wb");
    if (!fp) return;
    fputs(text, fp);
    fclose(fp);
}

static void copy_file(const char *src, const char *dst) {
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    char buf[65536];
    size_t n;
    while (in && out && (n = fread(buf, 1, sizeof buf, in)) > 0) fwrite(buf, 1, n, out);
    if (in) fclose(in);
    if (out) fclose(out);
}

static void remove_dir(const char *dir) {
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[1024];
    while (d && (e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            unlink(join(path, sizeof path, dir, e->d_name));
    if (d) closedir(d);
    rmdir(dir);
}

/* Writes tensors [first, last) of `src` into DIR/NAME. */
static av_status write_shard(const av_safetensors *src, int first, int last, const char *dir,
                             const char *name) {
    char path[1024];
    av_st_writer *w = av_st_writer_create(join(path, sizeof path, dir, name));
    if (!w) return AV_ERR_IO;
    av_status s = av_st_writer_add_metadata(w, "format", "pt");
    for (int i = first; !s && i < last; i++) {
        const av_tensor *t = av_safetensors_get(src, i);
        s = av_st_writer_declare(w, t->name, t->dtype, t->ndim, t->shape);
    }
    for (int i = first; !s && i < last; i++) {
        const av_tensor *t = av_safetensors_get(src, i);
        s = av_st_writer_write(w, t->data, t->nbytes);
    }
    if (s) {
        av_st_writer_abort(w);
        return s;
    }
    return av_st_writer_finish(w);
}

/* Builds DIR with config.json, two shards (tensors 0-23 and 24-47 of
 * stories260K) and model.safetensors.index.json. `skip` names a tensor the
 * index maps to shard 2 but that is left out of it (NULL: none). */
static int build_sharded(const char *dir, const char *skip) {
    char path[1024], src[1024];
    mkdir(dir, 0755);
    copy_file(join(src, sizeof src, stories_dir, "config.json"),
              join(path, sizeof path, dir, "config.json"));
    av_safetensors *st = av_safetensors_open(join(src, sizeof src, stories_dir, "model.safetensors"));
    if (!st) return 0;
    int n = av_safetensors_count(st);
    int ok = write_shard(st, 0, 24, dir, "model-00001-of-00002.safetensors") == AV_OK;
    int skip_index = -1;
    for (int i = 24; skip && i < n; i++)
        if (!strcmp(av_safetensors_get(st, i)->name, skip)) skip_index = i;
    if (skip_index >= 0) {
        /* Shard 2 without the skipped tensor: two runs around it. */
        ok = ok && write_shard(st, 24, skip_index, dir, "part-a.safetensors") == AV_OK;
        ok = ok && write_shard(st, skip_index + 1, n, dir, "model-00002-of-00002.safetensors") == AV_OK;
    } else {
        ok = ok && write_shard(st, 24, n, dir, "model-00002-of-00002.safetensors") == AV_OK;
    }

    /* The index maps every tensor; the skipped one to shard 2. */
    static char index[65536];
    size_t len = (size_t)snprintf(index, sizeof index,
                                  "{\"metadata\": {\"total_size\": 1171200}, \"weight_map\": {");
    for (int i = 0; i < n; i++) {
        const av_tensor *t = av_safetensors_get(st, i);
        int shard = i < 24 ? 1 : 2;
        if (skip_index >= 0 && i > 23 && i < skip_index) shard = 3; /* part-a */
        const char *file = shard == 1   ? "model-00001-of-00002.safetensors"
                           : shard == 2 ? "model-00002-of-00002.safetensors"
                                        : "part-a.safetensors";
        len += (size_t)snprintf(index + len, sizeof index - len, "%s\"%s\": \"%s\"", i ? ", " : "",
                                t->name, file);
    }
    snprintf(index + len, sizeof index - len, "}}");
    write_text(dir, "model.safetensors.index.json", index);
    av_safetensors_close(st);
    return ok;
}

/* ---- single file ------------------------------------------------------- */

static void test_open_stories260k(void) {
    av_checkpoint *c = av_checkpoint_open(stories_dir);
    CHECK_MSG(c != NULL, "%s", av_last_error());
    if (!c) return;
    CHECK(!strcmp(av_checkpoint_dir(c), stories_dir));
    CHECK(av_checkpoint_config(c)->n_layers == 5);
    CHECK(av_checkpoint_config(c)->n_kv_heads == 4);
    CHECK(av_checkpoint_generation_config(c)->eos_id == 2);
    CHECK(av_checkpoint_tensor_count(c) == 48);
    CHECK(av_checkpoint_data_bytes(c) == 1171200);
    CHECK(av_checkpoint_file_count(c) == 1);
    char path[1024];
    CHECK(!strcmp(av_checkpoint_file_path(c, 0), join(path, sizeof path, stories_dir, "model.safetensors")));
    CHECK(av_checkpoint_file_path(c, 1) == NULL);

    /* Every tensor is found by its own name. */
    for (int i = 0; i < av_checkpoint_tensor_count(c); i++) {
        const av_tensor *t = av_checkpoint_tensor(c, i);
        CHECK(av_checkpoint_find(c, t->name) == t);
    }
    CHECK(av_checkpoint_tensor(c, 48) == NULL);
    CHECK(av_checkpoint_find(c, "model.layers.5.mlp.up_proj.weight") == NULL);

    int64_t up[2] = {172, 64}, wrong[2] = {64, 172}, norm[1] = {64};
    CHECK(av_checkpoint_require(c, "model.layers.2.mlp.up_proj.weight", 2, up) != NULL);
    CHECK(av_checkpoint_require(c, "model.norm.weight", 1, norm) != NULL);
    CHECK(av_checkpoint_require(c, "model.layers.2.mlp.up_proj.weight", 2, wrong) == NULL);
    CHECK_MSG(strstr(av_last_error(), "model.layers.2.mlp.up_proj.weight in ") &&
                  strstr(av_last_error(), "model.safetensors: shape [64, 172] expected, found "
                                          "[172, 64]"),
              "%s", av_last_error());
    CHECK(av_checkpoint_require(c, "model.norm.weight", 2, up) == NULL);
    CHECK(av_checkpoint_require(c, "model.layers.9.mlp.up_proj.weight", 2, up) == NULL);
    CHECK(strstr(av_last_error(), "tensor 'model.layers.9.mlp.up_proj.weight' is missing") != NULL);
    av_checkpoint_close(c);
}

/* Released tensor pages read back from the file unchanged, and a range
 * outside the file maps is left alone. */
static void test_release_keeps_data_readable(void) {
    av_checkpoint *c = av_checkpoint_open(stories_dir);
    CHECK_MSG(c != NULL, "%s", av_last_error());
    if (!c) return;
    const av_tensor *t = av_checkpoint_find(c, "model.embed_tokens.weight");
    CHECK(t != NULL);
    if (t) {
        unsigned char *copy = malloc(t->nbytes);
        memcpy(copy, t->data, t->nbytes);
        av_checkpoint_release(c, t->data, t->nbytes);
        CHECK(memcmp(copy, t->data, t->nbytes) == 0);
        /* Heap memory is not in a map: releasing it must not zero it. */
        av_checkpoint_release(c, copy, t->nbytes);
        CHECK(memcmp(copy, t->data, t->nbytes) == 0);
        free(copy);
    }
    av_checkpoint_close(c);
}

static void test_require_rejects_integer_dtype(void) {
    char dir[600], path[1024], src[1024];
    join(dir, sizeof dir, tmp_dir, "int_weights");
    mkdir(dir, 0755);
    copy_file(join(src, sizeof src, stories_dir, "config.json"), join(path, sizeof path, dir, "config.json"));
    av_st_writer *w = av_st_writer_create(join(path, sizeof path, dir, "model.safetensors"));
    int64_t shape[1] = {4};
    int32_t data[4] = {1, 2, 3, 4};
    CHECK(av_st_writer_declare(w, "model.norm.weight", AV_DTYPE_I32, 1, shape) == AV_OK);
    CHECK(av_st_writer_write(w, data, sizeof data) == AV_OK);
    CHECK(av_st_writer_finish(w) == AV_OK);
    av_checkpoint *c = av_checkpoint_open(dir);
    CHECK_MSG(c != NULL, "%s", av_last_error());
    if (c) {
        CHECK(av_checkpoint_require(c, "model.norm.weight", 1, shape) == NULL);
        CHECK(strstr(av_last_error(), "dtype I32 is not supported; weights must be F32, F16 or BF16"));
    }
    av_checkpoint_close(c);
    remove_dir(dir);
}

/* ---- sharded ----------------------------------------------------------- */

static void test_sharded_matches_single(void) {
    char dir[600];
    join(dir, sizeof dir, tmp_dir, "sharded");
    CHECK_MSG(build_sharded(dir, NULL), "%s", av_last_error());
    av_checkpoint *sharded = av_checkpoint_open(dir);
    av_checkpoint *single = av_checkpoint_open(stories_dir);
    CHECK_MSG(sharded != NULL, "%s", av_last_error());
    if (sharded && single) {
        CHECK(av_checkpoint_file_count(sharded) == 2);
        CHECK(strstr(av_checkpoint_file_path(sharded, 0), "model-00001-of-00002.safetensors"));
        CHECK(strstr(av_checkpoint_file_path(sharded, 1), "model-00002-of-00002.safetensors"));
        CHECK(av_checkpoint_tensor_count(sharded) == 48);
        CHECK(av_checkpoint_data_bytes(sharded) == av_checkpoint_data_bytes(single));
        for (int i = 0; i < av_checkpoint_tensor_count(single); i++) {
            const av_tensor *a = av_checkpoint_tensor(single, i);
            const av_tensor *b = av_checkpoint_find(sharded, a->name);
            CHECK_MSG(b != NULL, "%s missing", a->name);
            if (!b) continue;
            CHECK(b->dtype == a->dtype);
            CHECK(b->ndim == a->ndim);
            CHECK(b->numel == a->numel);
            CHECK(b->nbytes == a->nbytes);
            CHECK(b->nbytes == a->nbytes && memcmp(a->data, b->data, a->nbytes) == 0);
            /* File order is kept: shard 1 contains the first 24 tensors. */
            CHECK(av_checkpoint_tensor(sharded, i) == b);
            CHECK(strstr(b->file, i < 24 ? "00001-of" : "00002-of") != NULL);
        }
    }
    av_checkpoint_close(single);
    av_checkpoint_close(sharded);
    remove_dir(dir);
}

static void expect_open_error(const char *dir, const char *expected) {
    av_checkpoint *c = av_checkpoint_open(dir);
    CHECK(c == NULL);
    CHECK_MSG(strstr(av_last_error(), expected) != NULL, "message '%s' lacks '%s'",
              av_last_error(), expected);
    av_checkpoint_close(c);
}

static void test_missing_shard(void) {
    char dir[600], path[1024];
    join(dir, sizeof dir, tmp_dir, "missing_shard");
    CHECK(build_sharded(dir, NULL));
    unlink(join(path, sizeof path, dir, "model-00002-of-00002.safetensors"));
    expect_open_error(dir, "model.safetensors.index.json names shard "
                           "'model-00002-of-00002.safetensors', which is missing from");
    remove_dir(dir);
}

static void test_tensor_absent_from_shard(void) {
    char dir[600];
    join(dir, sizeof dir, tmp_dir, "absent_tensor");
    CHECK(build_sharded(dir, "model.norm.weight"));
    expect_open_error(dir, "maps tensor 'model.norm.weight' to shard "
                           "'model-00002-of-00002.safetensors', but that shard has no tensor");
    remove_dir(dir);
}

static void test_bad_index(void) {
    char dir[600];
    join(dir, sizeof dir, tmp_dir, "bad_index");
    CHECK(build_sharded(dir, NULL));
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"model.norm.weight\": \"../model.safetensors\"}}");
    expect_open_error(dir, "shard name '../model.safetensors' of tensor 'model.norm.weight' is "
                           "not a plain file name");
    write_text(dir, "model.safetensors.index.json",
               "{\"weight_map\": {\"model.norm.weight\": \"sub/x.safetensors\"}}");
    expect_open_error(dir, "shard name 'sub/x.safetensors'");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": {\"a\": 3}}");
    expect_open_error(dir, "weight_map entry of 'a' must be a file name string");
    write_text(dir, "model.safetensors.index.json", "{\"metadata\": {}}");
    expect_open_error(dir, "missing or empty \"weight_map\"");
    write_text(dir, "model.safetensors.index.json", "{\"weight_map\": ");
    expect_open_error(dir, "model.safetensors.index.json: invalid JSON");
    remove_dir(dir);
}

static void test_broken_shard_reports_its_path(void) {
    char dir[600];
    join(dir, sizeof dir, tmp_dir, "broken_shard");
    CHECK(build_sharded(dir, NULL));
    write_text(dir, "model-00002-of-00002.safetensors", "abc");
    expect_open_error(dir, "model-00002-of-00002.safetensors: file is 3 bytes");
    remove_dir(dir);
}

static void test_single_file_preferred_over_index(void) {
    char dir[600], path[1024], src[1024];
    join(dir, sizeof dir, tmp_dir, "both");
    CHECK(build_sharded(dir, NULL));
    /* A broken index is ignored when model.safetensors exists. */
    write_text(dir, "model.safetensors.index.json", "not json");
    copy_file(join(src, sizeof src, stories_dir, "model.safetensors"),
              join(path, sizeof path, dir, "model.safetensors"));
    av_checkpoint *c = av_checkpoint_open(dir);
    CHECK_MSG(c != NULL, "%s", av_last_error());
    if (c) {
        CHECK(av_checkpoint_file_count(c) == 1);
        CHECK(strstr(av_checkpoint_file_path(c, 0), "/model.safetensors") != NULL);
    }
    av_checkpoint_close(c);
    remove_dir(dir);
}

static void test_directory_errors(void) {
    char dir[600], path[1024], src[1024];
    join(dir, sizeof dir, tmp_dir, "no_weights");
    mkdir(dir, 0755);
    expect_open_error(dir, "config.json: missing; a model directory needs config.json");
    copy_file(join(src, sizeof src, stories_dir, "config.json"), join(path, sizeof path, dir, "config.json"));
    expect_open_error(dir, "no model.safetensors or model.safetensors.index.json");
    write_text(dir, "config.json", "{\"architectures\": [\"BertModel\"]}");
    expect_open_error(dir, "architecture BertModel is not supported");
    remove_dir(dir);

    join(dir, sizeof dir, tmp_dir, "does_not_exist");
    expect_open_error(dir, "cannot open model directory");
    join(path, sizeof path, stories_dir, "config.json");
    expect_open_error(path, "not a directory");
}

int main(void) {
    av_test_path(stories_dir, sizeof stories_dir, "models/stories260K");
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_open_stories260k);
    RUN(test_release_keeps_data_readable);
    RUN(test_require_rejects_integer_dtype);
    RUN(test_sharded_matches_single);
    RUN(test_missing_shard);
    RUN(test_tensor_absent_from_shard);
    RUN(test_bad_index);
    RUN(test_broken_shard_reports_its_path);
    RUN(test_single_file_preferred_over_index);
    RUN(test_directory_errors);
    remove_dir(tmp_dir);
    return CHECK_DONE();
}
