/*
 * test_safetensors.c - the safetensors reader and writer.
 *
 * Reads the real stories260K model file, round-trips files through the
 * writer, and checks that each kind of malformed file is rejected with a
 * message naming the tensor and the fault. Malformed files are built in a
 * temporary directory from a header string and data bytes.
 *
 * Run with `--write-sample PATH` it only writes the sample file of
 * write_sample() to PATH; the command-line tests load that file with the
 * Python safetensors package to check compatibility.
 */
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "loader/loader.h"

static char tmp_dir[] = "/tmp/av_test_safetensors_XXXXXX";

static const char *tmp_path(char *buf, size_t size, const char *name) {
    snprintf(buf, size, "%s/%s", tmp_dir, name);
    return buf;
}

static int path_exists(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Writes the 8-byte length, `header` and `data_size` bytes of data. */
static void write_raw(const char *path, const char *header, size_t data_size) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return;
    uint64_t n = strlen(header);
    uint8_t prefix[8];
    for (int i = 0; i < 8; i++) prefix[i] = (uint8_t)(n >> (8 * i));
    fwrite(prefix, 1, 8, fp);
    fwrite(header, 1, n, fp);
    for (size_t i = 0; i < data_size; i++) fputc((int)(i & 0xff), fp);
    fclose(fp);
}

/* Opens a file that must fail; checks that the message contains `expected`. */
static void expect_open_error(const char *path, const char *expected) {
    av_safetensors *st = av_safetensors_open(path);
    CHECK(st == NULL);
    CHECK_MSG(strstr(av_last_error(), expected) != NULL, "message '%s' lacks '%s'",
              av_last_error(), expected);
    CHECK_MSG(strstr(av_last_error(), path) != NULL, "message '%s' lacks the path",
              av_last_error());
    av_safetensors_close(st);
}

static void expect_header_error(const char *header, size_t data_size, const char *expected) {
    char path[512];
    tmp_path(path, sizeof path, "bad.safetensors");
    write_raw(path, header, data_size);
    expect_open_error(path, expected);
    unlink(path);
}

/* ---- reading the real model file --------------------------------------- */

static void test_read_stories260k(void) {
    char path[512];
    av_test_path(path, sizeof path, "models/stories260K/model.safetensors");
    av_safetensors *st = av_safetensors_open(path);
    CHECK_MSG(st != NULL, "%s", av_last_error());
    if (!st) return;
    CHECK(av_safetensors_count(st) == 48);
    const char *format = av_safetensors_metadata(st, "format");
    CHECK(format != NULL);
    CHECK(format && !strcmp(format, "pt"));
    CHECK(av_safetensors_metadata(st, "absent") == NULL);

    const av_tensor *emb = av_safetensors_find(st, "model.embed_tokens.weight");
    const av_tensor *k = av_safetensors_find(st, "model.layers.3.self_attn.k_proj.weight");
    const av_tensor *down = av_safetensors_find(st, "model.layers.4.mlp.down_proj.weight");
    const av_tensor *norm = av_safetensors_find(st, "model.norm.weight");
    const av_tensor *head = av_safetensors_find(st, "lm_head.weight");
    CHECK(emb != NULL);
    CHECK(k != NULL);
    CHECK(down != NULL);
    CHECK(norm != NULL);
    CHECK(head != NULL);
    CHECK(av_safetensors_find(st, "model.layers.5.mlp.up_proj.weight") == NULL);
    if (!emb || !k || !down || !norm || !head) {
        av_safetensors_close(st);
        return;
    }
    CHECK(emb->dtype == AV_DTYPE_F32);
    CHECK(emb->ndim == 2);
    CHECK(emb->shape[0] == 512);
    CHECK(emb->shape[1] == 64);
    CHECK(emb->numel == 512 * 64);
    CHECK(emb->nbytes == 512 * 64 * 4);
    CHECK(!strcmp(emb->file, path));
    CHECK(k->shape[0] == 32);
    CHECK(k->shape[1] == 64);
    CHECK(down->shape[0] == 64);
    CHECK(down->shape[1] == 172);
    CHECK(norm->ndim == 1);
    CHECK(norm->shape[0] == 64);

    /* Tensors come in file order; the first one starts the data section. */
    CHECK(av_safetensors_get(st, 0) == emb);
    CHECK(av_safetensors_get(st, 47) == head);
    CHECK(av_safetensors_get(st, 48) == NULL);

    /* The mapped bytes equal the file's bytes: the header is 4936 bytes. */
    FILE *fp = fopen(path, "rb");
    float from_file[4] = {0};
    if (fp) {
        fseek(fp, 8 + 4936, SEEK_SET);
        CHECK(fread(from_file, sizeof(float), 4, fp) == 4);
        fclose(fp);
    }
    CHECK(memcmp(emb->data, from_file, sizeof from_file) == 0);
    /* The checkpoint stores lm_head as a copy of the embedding. */
    CHECK(memcmp(emb->data, head->data, emb->nbytes) == 0);
    av_safetensors_close(st);
}

static void test_truncated_copy_of_real_file(void) {
    char src[512], dst[512];
    av_test_path(src, sizeof src, "models/stories260K/model.safetensors");
    tmp_path(dst, sizeof dst, "truncated.safetensors");
    FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
    CHECK(in != NULL);
    CHECK(out != NULL);
    if (!in || !out) {
        if (in) fclose(in);
        if (out) fclose(out);
        return;
    }
    char buf[4096];
    size_t n = fread(buf, 1, 1000, in); /* inside the 4936-byte header */
    fwrite(buf, 1, n, out);
    fclose(in);
    fclose(out);
    expect_open_error(dst, "header length 4936 is larger than the 992 bytes after it");

    out = fopen(dst, "wb");
    fwrite(buf, 1, 5, out);
    fclose(out);
    expect_open_error(dst, "shorter than the 8-byte header length");
    unlink(dst);
}

/* ---- malformed headers ------------------------------------------------- */

static void test_bad_headers(void) {
    expect_header_error("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]",
                        8, "header is not valid JSON");
    expect_header_error("[1, 2]", 0, "header is not a JSON object");
    expect_header_error("{\"w\": 3}", 0, "tensor 'w': entry must be a JSON object");
    expect_header_error("{\"w\": {\"shape\": [2], \"data_offsets\": [0, 8]}}", 8,
                        "tensor 'w': missing \"dtype\"");
    expect_header_error("{\"w\": {\"dtype\": \"F32\", \"data_offsets\": [0, 8]}}", 8,
                        "tensor 'w': missing \"shape\"");
    expect_header_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [2]}}", 8,
                        "tensor 'w': missing \"data_offsets\"");

    expect_header_error("{\"w\": {\"dtype\": \"FP32\", \"shape\": [2], \"data_offsets\": [0, 8]}}",
                        8, "tensor 'w': unknown dtype 'FP32'");
    expect_header_error("{\"w\": {\"dtype\": \"BOOL\", \"shape\": [2], \"data_offsets\": [0, 2]}}",
                        2, "tensor 'w': dtype BOOL is not supported");

    expect_header_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [-2], \"data_offsets\": [0, 8]}}",
                        8, "tensor 'w': shape dimension 0 is negative (-2)");
    expect_header_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [2.5], \"data_offsets\": [0, 8]}}",
                        8, "shape dimension 0 is not an integer");
    expect_header_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1], "
                        "\"data_offsets\": [0, 4]}}",
                        4, "5 dimensions, at most 4 are supported");
    /* 2^32 * 2^32 overflows 64 bits. */
    expect_header_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], "
                        "\"data_offsets\": [0, 8]}}",
                        8, "needs more bytes than the 8-byte data section holds");

    expect_header_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 16]}}",
                        8, "data_offsets [0, 16] end beyond the data section, which holds 8 bytes");
    expect_header_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}",
                        8, "are not an increasing pair");
    expect_header_error("{\"w\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0]}}", 8,
                        "must be an array of two integers");

    expect_header_error("{\"lm_head.weight\": {\"dtype\": \"F32\", \"shape\": [4, 8], "
                        "\"data_offsets\": [0, 100]}}",
                        128,
                        "tensor 'lm_head.weight': data_offsets [0, 100] hold 100 bytes but shape "
                        "[4, 8] of F32 needs 128");
    expect_header_error("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}, "
                        "\"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
                        24,
                        "tensors 'a' (data_offsets [0, 16]) and 'b' (data_offsets [8, 24]) "
                        "overlap");
    /* c lies inside a; the empty b sits right after a and overlaps nothing. */
    expect_header_error("{\"a\": {\"dtype\": \"U8\", \"shape\": [16], \"data_offsets\": [0, 16]}, "
                        "\"b\": {\"dtype\": \"U8\", \"shape\": [0], \"data_offsets\": [16, 16]}, "
                        "\"c\": {\"dtype\": \"U8\", \"shape\": [2], \"data_offsets\": [12, 14]}}",
                        16, "tensors 'a' (data_offsets [0, 16]) and 'c' (data_offsets [12, 14]) overlap");

    expect_header_error("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                        "\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
                        8, "header names a key twice");
    expect_header_error("{\"__metadata__\": {\"format\": 1}}", 0,
                        "__metadata__ value of 'format' must be a string");
}

static void test_header_length_limits(void) {
    char path[512];
    tmp_path(path, sizeof path, "huge.safetensors");
    /* A header length of 2^63 must not wrap any size computation. */
    FILE *fp = fopen(path, "wb");
    uint8_t prefix[8] = {0, 0, 0, 0, 0, 0, 0, 0x80};
    fwrite(prefix, 1, 8, fp);
    fwrite("{}", 1, 2, fp);
    fclose(fp);
    expect_open_error(path, "header length 9223372036854775808 is larger than the 2 bytes");

    /* A header over the 100 MB limit, in a sparse file long enough for it. */
    fp = fopen(path, "wb");
    uint64_t length = (100u << 20) + 1;
    for (int i = 0; i < 8; i++) prefix[i] = (uint8_t)(length >> (8 * i));
    fwrite(prefix, 1, 8, fp);
    fclose(fp);
    CHECK(truncate(path, (off_t)(8 + length)) == 0);
    expect_open_error(path, "header length 104857601 exceeds the limit of 104857600 bytes");
    unlink(path);
}

static void test_valid_edge_cases(void) {
    char path[512];
    tmp_path(path, sizeof path, "edge.safetensors");
    /* A scalar, an empty tensor, a gap before c, and metadata. */
    write_raw(path,
              "{\"__metadata__\": {\"k\": \"v\"}, "
              "\"s\": {\"dtype\": \"I32\", \"shape\": [], \"data_offsets\": [0, 4]}, "
              "\"e\": {\"dtype\": \"BF16\", \"shape\": [0, 3], \"data_offsets\": [4, 4]}, "
              "\"c\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [8, 12]}}  ",
              12);
    av_safetensors *st = av_safetensors_open(path);
    CHECK_MSG(st != NULL, "%s", av_last_error());
    if (st) {
        CHECK(av_safetensors_count(st) == 3);
        const av_tensor *s = av_safetensors_find(st, "s");
        const av_tensor *e = av_safetensors_find(st, "e");
        const av_tensor *c = av_safetensors_find(st, "c");
        const char *k = av_safetensors_metadata(st, "k");
        CHECK(s != NULL);
        CHECK(e != NULL);
        CHECK(c != NULL);
        CHECK(k != NULL);
        if (s && e && c && k) {
            CHECK(s->ndim == 0);
            CHECK(s->numel == 1);
            CHECK(s->nbytes == 4);
            CHECK(e->numel == 0);
            CHECK(e->nbytes == 0);
            CHECK(c->nbytes == 4);
            CHECK(((const uint8_t *)c->data)[0] == 8);
            CHECK(!strcmp(k, "v"));
        }
    }
    av_safetensors_close(st);
    unlink(path);
}

static void test_open_missing_file(void) {
    char path[512];
    tmp_path(path, sizeof path, "absent.safetensors");
    expect_open_error(path, "cannot open");
    expect_open_error(tmp_dir, "not a regular file");
}

/* ---- writer ------------------------------------------------------------ */

/* Values of the sample file, also checked by the command-line tests. */
static float sample_f32(int i) { return (float)i * 0.5f - 3.0f; }

/* Writes a file with F32, BF16, F16, I32 and U8 tensors and metadata. Data
 * of "a" is written in three pieces to exercise partial writes. */
static av_status write_sample(const char *path) {
    av_st_writer *w = av_st_writer_create(path);
    if (!w) return AV_ERR_IO;
    int64_t shape_a[2] = {3, 5}, shape_b[1] = {7}, shape_c[3] = {2, 1, 3}, shape_d[1] = {4},
            shape_e[1] = {3};
    av_status s;
    if ((s = av_st_writer_add_metadata(w, "format", "pt")) ||
        (s = av_st_writer_add_metadata(w, "note", "written by test_safetensors")) ||
        (s = av_st_writer_declare(w, "a", AV_DTYPE_F32, 2, shape_a)) ||
        (s = av_st_writer_declare(w, "b.bf16", AV_DTYPE_BF16, 1, shape_b)) ||
        (s = av_st_writer_declare(w, "c.f16", AV_DTYPE_F16, 3, shape_c)) ||
        (s = av_st_writer_declare(w, "d.i32", AV_DTYPE_I32, 1, shape_d)) ||
        (s = av_st_writer_declare(w, "e.u8", AV_DTYPE_U8, 1, shape_e))) {
        av_st_writer_abort(w);
        return s;
    }

    float a[15];
    for (int i = 0; i < 15; i++) a[i] = sample_f32(i);
    uint16_t b[7], c[6];
    for (int i = 0; i < 7; i++) b[i] = av_f32_to_bf16(sample_f32(i));
    for (int i = 0; i < 6; i++) c[i] = av_f32_to_f16(sample_f32(i));
    int32_t d[4] = {-1, 0, 1, 2147483647};
    uint8_t e[3] = {0, 128, 255};
    if ((s = av_st_writer_write(w, a, 4 * sizeof(float))) ||
        (s = av_st_writer_write(w, a + 4, 0)) ||
        (s = av_st_writer_write(w, a + 4, 7 * sizeof(float))) ||
        (s = av_st_writer_write(w, a + 11, 4 * sizeof(float))) ||
        (s = av_st_writer_write(w, b, sizeof b)) || (s = av_st_writer_write(w, c, sizeof c)) ||
        (s = av_st_writer_write(w, d, sizeof d)) || (s = av_st_writer_write(w, e, sizeof e))) {
        av_st_writer_abort(w);
        return s;
    }
    return av_st_writer_finish(w);
}

static void test_writer_round_trip(void) {
    char path[512], tmp[600];
    tmp_path(path, sizeof path, "round.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    av_status s = write_sample(path);
    CHECK_MSG(s == AV_OK, "%s", av_last_error());
    CHECK(!path_exists(tmp));

    /* The data section starts at a multiple of 8 and the padding is spaces. */
    FILE *fp = fopen(path, "rb");
    uint8_t prefix[8] = {0};
    char header[4096] = {0};
    if (fp) {
        CHECK(fread(prefix, 1, 8, fp) == 8);
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--) n = (n << 8) | prefix[i];
        CHECK(n % 8 == 0);
        CHECK(n < sizeof header);
        if (n < sizeof header) CHECK(fread(header, 1, n, fp) == n);
        size_t len = strlen(header);
        CHECK(len == n);
        CHECK(header[0] == '{');
        size_t last = len;
        while (last > 0 && header[last - 1] == ' ') last--;
        CHECK(last > 0);
        CHECK(last > 0 && header[last - 1] == '}');
        fclose(fp);
    }

    av_safetensors *st = av_safetensors_open(path);
    CHECK_MSG(st != NULL, "%s", av_last_error());
    if (!st) return;
    CHECK(av_safetensors_count(st) == 5);
    CHECK(!strcmp(av_safetensors_metadata(st, "format"), "pt"));
    CHECK(!strcmp(av_safetensors_metadata(st, "note"), "written by test_safetensors"));
    const av_tensor *a = av_safetensors_find(st, "a");
    const av_tensor *b = av_safetensors_find(st, "b.bf16");
    const av_tensor *c = av_safetensors_find(st, "c.f16");
    const av_tensor *d = av_safetensors_find(st, "d.i32");
    const av_tensor *e = av_safetensors_find(st, "e.u8");
    CHECK(a != NULL);
    CHECK(b != NULL);
    CHECK(c != NULL);
    CHECK(d != NULL);
    CHECK(e != NULL);
    if (!a || !b || !c || !d || !e) {
        av_safetensors_close(st);
        return;
    }
    CHECK(a->dtype == AV_DTYPE_F32);
    CHECK(a->ndim == 2);
    CHECK(a->shape[0] == 3);
    CHECK(a->shape[1] == 5);
    for (int i = 0; i < 15; i++) CHECK(((const float *)a->data)[i] == sample_f32(i));

    CHECK(b->dtype == AV_DTYPE_BF16);
    CHECK(b->nbytes == 14);
    for (int i = 0; i < 7; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)b->data + 2 * i, 2);
        CHECK(av_bf16_to_f32(h) == sample_f32(i));
    }

    CHECK(c->dtype == AV_DTYPE_F16);
    CHECK(c->ndim == 3);
    CHECK(c->shape[0] == 2);
    CHECK(c->shape[1] == 1);
    CHECK(c->shape[2] == 3);
    for (int i = 0; i < 6; i++) {
        uint16_t h;
        memcpy(&h, (const uint8_t *)c->data + 2 * i, 2);
        CHECK(av_f16_to_f32(h) == sample_f32(i));
    }

    int32_t d_expected[4] = {-1, 0, 1, 2147483647};
    CHECK(d->nbytes == sizeof d_expected);
    CHECK(memcmp(d->data, d_expected, sizeof d_expected) == 0);
    CHECK(e->nbytes == 3);
    CHECK(((const uint8_t *)e->data)[2] == 255);

    /* Declaration order is the file order. */
    CHECK(av_safetensors_get(st, 0) == a);
    CHECK(av_safetensors_get(st, 4) == e);
    av_safetensors_close(st);
    unlink(path);
}

static void test_writer_no_tensors(void) {
    char path[512];
    tmp_path(path, sizeof path, "empty.safetensors");
    av_st_writer *w = av_st_writer_create(path);
    CHECK(w != NULL);
    CHECK(av_st_writer_finish(w) == AV_OK);
    av_safetensors *st = av_safetensors_open(path);
    CHECK_MSG(st != NULL, "%s", av_last_error());
    CHECK(av_safetensors_count(st) == 0);
    av_safetensors_close(st);
    unlink(path);
}

static void test_writer_abort_leaves_nothing(void) {
    char path[512], tmp[600];
    tmp_path(path, sizeof path, "aborted.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    av_st_writer *w = av_st_writer_create(path);
    int64_t shape[1] = {4};
    CHECK(av_st_writer_declare(w, "x", AV_DTYPE_F32, 1, shape) == AV_OK);
    float x[2] = {1, 2};
    CHECK(av_st_writer_write(w, x, sizeof x) == AV_OK);
    CHECK(path_exists(tmp));
    av_st_writer_abort(w);
    CHECK(!path_exists(tmp));
    CHECK(!path_exists(path));
}

static void test_writer_rejects_misuse(void) {
    char path[512], tmp[600];
    tmp_path(path, sizeof path, "misuse.safetensors");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int64_t shape[1] = {2}, negative[1] = {-1};
    float x[3] = {1, 2, 3};

    av_st_writer *w = av_st_writer_create(path);
    CHECK(av_st_writer_declare(w, "x", AV_DTYPE_F32, 1, shape) == AV_OK);
    CHECK(av_st_writer_declare(w, "x", AV_DTYPE_F32, 1, shape) == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "tensor 'x' declared twice") != NULL);
    av_st_writer_abort(w);

    w = av_st_writer_create(path);
    CHECK(av_st_writer_declare(w, "n", AV_DTYPE_F32, 1, negative) == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "dimension 0 is negative") != NULL);
    av_st_writer_abort(w);

    w = av_st_writer_create(path);
    CHECK(av_st_writer_declare(w, "__metadata__", AV_DTYPE_F32, 1, shape) == AV_ERR_INVALID);
    av_st_writer_abort(w);

    /* Too many bytes for the current tensor. */
    w = av_st_writer_create(path);
    CHECK(av_st_writer_declare(w, "x", AV_DTYPE_F32, 1, shape) == AV_OK);
    CHECK(av_st_writer_write(w, x, sizeof x) == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "write of 12 bytes exceeds the 8 bytes left") != NULL);
    CHECK(av_st_writer_finish(w) != AV_OK);
    CHECK(!path_exists(path));
    CHECK(!path_exists(tmp));

    /* Declaring after data was written. */
    w = av_st_writer_create(path);
    CHECK(av_st_writer_declare(w, "x", AV_DTYPE_F32, 1, shape) == AV_OK);
    CHECK(av_st_writer_write(w, x, 4) == AV_OK);
    CHECK(av_st_writer_declare(w, "y", AV_DTYPE_F32, 1, shape) == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "declare everything first") != NULL);
    av_st_writer_abort(w);

    /* Finishing with a tensor incomplete removes the temporary file. */
    w = av_st_writer_create(path);
    CHECK(av_st_writer_declare(w, "x", AV_DTYPE_F32, 1, shape) == AV_OK);
    CHECK(av_st_writer_write(w, x, 4) == AV_OK);
    CHECK(av_st_writer_finish(w) == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "tensor 'x' received 4 of its 8 bytes") != NULL);
    CHECK(!path_exists(path));
    CHECK(!path_exists(tmp));

    /* Creating in a missing directory fails with the path. */
    char missing[600];
    snprintf(missing, sizeof missing, "%s/no/such/dir/x.safetensors", tmp_dir);
    CHECK(av_st_writer_create(missing) == NULL);
    CHECK(strstr(av_last_error(), "cannot create") != NULL);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--write-sample")) {
        if (write_sample(argv[2]) != AV_OK) {
            fprintf(stderr, "%s\n", av_last_error());
            return 1;
        }
        return 0;
    }
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_read_stories260k);
    RUN(test_truncated_copy_of_real_file);
    RUN(test_bad_headers);
    RUN(test_header_length_limits);
    RUN(test_valid_edge_cases);
    RUN(test_open_missing_file);
    RUN(test_writer_round_trip);
    RUN(test_writer_no_tensors);
    RUN(test_writer_abort_leaves_nothing);
    RUN(test_writer_rejects_misuse);
    rmdir(tmp_dir);
    return CHECK_DONE();
}
