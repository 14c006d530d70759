/*
 * test_quant.c - NF4 and LLM.int8 quantization against bitsandbytes'
 * own outputs, and reading bitsandbytes checkpoints.
 *
 * tests/fixtures/bnb/quant_cases.* hold inputs and the exact tensors that
 * bitsandbytes 0.50.2 produced for them (tools/make_bnb_fixtures.py); every
 * case is compared byte for byte. tiny_nf4/ and tiny_int8/ are models that
 * transformers saved with save_pretrained; they are read through
 * av_quant_weight_load and checked against the dequantized weights. Broken
 * checkpoints are copies of tiny_nf4 with one tensor changed.
 */
#include <jansson.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "loader/loader.h"
#include "quant/quant.h"

#define CASES_DIR "tests/fixtures/bnb"

static av_safetensors *cases;
static json_t *cases_json;

/* Returns tensor "<case>.<field>" of the fixture file, or NULL. */
static const av_tensor *field(const char *name, const char *suffix) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s.%s", name, suffix);
    return av_safetensors_find(cases, buf);
}

static uint16_t f32_to_dtype16(float v, av_dtype dtype) {
    return dtype == AV_DTYPE_BF16 ? av_f32_to_bf16(v) : av_f32_to_f16(v);
}

/* Compares float32 results with a fixture tensor stored in `dtype`. */
static int same_as_dtype(const float *values, const av_tensor *t) {
    for (int64_t i = 0; i < t->numel; i++) {
        if (t->dtype == AV_DTYPE_F32) {
            if (memcmp(&values[i], (const float *)t->data + i, 4) != 0) return 0;
        } else {
            uint16_t want;
            memcpy(&want, (const uint16_t *)t->data + i, 2);
            if (f32_to_dtype16(values[i], t->dtype) != want) return 0;
        }
    }
    return 1;
}

/* ---- NF4 cases ---------------------------------------------------------- */

static void check_nf4_case(json_t *c) {
    const char *name = json_string_value(json_object_get(c, "name"));
    int blocksize = (int)json_integer_value(json_object_get(c, "blocksize"));
    int nested = json_is_true(json_object_get(c, "double_quant"));
    const av_tensor *input = field(name, "input"), *weight = field(name, "weight");
    const av_tensor *absmax_t = field(name, "absmax"), *state_t =
                                                           field(name, "quant_state.bitsandbytes__nf4");
    CHECK_MSG(input && weight && absmax_t && state_t, "%s: fixture tensors missing", name);
    if (!input || !weight || !absmax_t || !state_t) return;
    int64_t n = input->numel, n_blocks = (n + blocksize - 1) / blocksize;

    uint8_t *codes = calloc((size_t)(n + 1) / 2, 1);
    float *absmax = calloc((size_t)n_blocks, sizeof *absmax);
    av_nf4_quantize(input->data, input->dtype, n, blocksize, codes, absmax);
    CHECK_MSG(weight->nbytes == (size_t)(n + 1) / 2 && !memcmp(codes, weight->data, weight->nbytes),
              "%s: packed codes differ", name);
    CHECK_MSG(!memcmp(field(name, "quant_map")->data, av_nf4_code, sizeof av_nf4_code),
              "%s: quant_map differs", name);

    av_nf4_state state = {.blocksize = blocksize, .dtype = input->dtype, .ndim = 2,
                          .shape = {input->shape[0], input->shape[1]}, .nested = nested,
                          .nested_blocksize = AV_NF4_NESTED_BLOCKSIZE};
    float *used_absmax = absmax, *dequantized_absmax = NULL;
    if (nested) {
        uint8_t *qabsmax = calloc((size_t)n_blocks, 1);
        int64_t n_nested = (n_blocks + 255) / 256;
        float *nested_absmax = calloc((size_t)n_nested, sizeof *nested_absmax);
        float offset = 0, map[AV_DYNAMIC_MAP_SIZE];
        CHECK(av_nf4_double_quant(absmax, n_blocks, qabsmax, nested_absmax, &offset) == AV_OK);
        state.nested_offset = offset;
        CHECK_MSG(absmax_t->nbytes == (size_t)n_blocks &&
                      !memcmp(qabsmax, absmax_t->data, (size_t)n_blocks),
                  "%s: double-quantized absmax codes differ", name);
        const av_tensor *nested_t = field(name, "nested_absmax");
        CHECK_MSG(nested_t && nested_t->nbytes == (size_t)n_nested * 4 &&
                      !memcmp(nested_absmax, nested_t->data, nested_t->nbytes),
                  "%s: nested_absmax differs", name);
        av_dynamic_map(map);
        CHECK_MSG(!memcmp(map, field(name, "nested_quant_map")->data, sizeof map),
                  "%s: nested_quant_map differs from the dynamic map", name);
        double want_offset = json_number_value(json_object_get(
            json_object_get(c, "quant_state"), "nested_offset"));
        CHECK_MSG((float)want_offset == offset, "%s: offset %.9g, bitsandbytes %.9g", name,
                  (double)offset, want_offset);
        dequantized_absmax = calloc((size_t)n_blocks, sizeof *dequantized_absmax);
        av_nf4_absmax_dequantize(map, qabsmax, nested_absmax, n_blocks, 256, offset,
                                 dequantized_absmax);
        used_absmax = dequantized_absmax;
        free(qabsmax);
        free(nested_absmax);
    } else {
        CHECK_MSG(absmax_t->nbytes == (size_t)n_blocks * 4 &&
                      !memcmp(absmax, absmax_t->data, absmax_t->nbytes),
                  "%s: absmax differs", name);
    }

    char json[512];
    int len = av_nf4_state_format(&state, json, sizeof json);
    CHECK_MSG(len == (int)state_t->nbytes && !memcmp(json, state_t->data, state_t->nbytes),
              "%s: quant state JSON differs: %s", name, json);

    float *out = calloc((size_t)n, sizeof *out);
    av_nf4_dequantize(codes, used_absmax, n, blocksize, out);
    CHECK_MSG(same_as_dtype(out, field(name, "dequantized")),
              "%s: dequantized values differ", name);
    free(out);
    free(dequantized_absmax);
    free(codes);
    free(absmax);
}

static void check_int8_case(json_t *c) {
    const char *name = json_string_value(json_object_get(c, "name"));
    const av_tensor *input = field(name, "input"), *weight = field(name, "weight"),
                    *scb_t = field(name, "SCB");
    CHECK_MSG(input && weight && scb_t, "%s: fixture tensors missing", name);
    if (!input || !weight || !scb_t) return;
    int64_t rows = input->shape[0], cols = input->shape[1];
    int8_t *q = calloc((size_t)(rows * cols), 1);
    float *scb = calloc((size_t)rows, sizeof *scb);
    CHECK(av_int8_quantize(input->data, input->dtype, rows, cols, q, scb) == AV_OK);
    CHECK_MSG(!memcmp(q, weight->data, weight->nbytes), "%s: int8 codes differ", name);
    CHECK_MSG(!memcmp(scb, scb_t->data, scb_t->nbytes), "%s: SCB differs", name);
    float *out = calloc((size_t)(rows * cols), sizeof *out);
    av_int8_dequantize(q, scb, rows, cols, out);
    CHECK_MSG(same_as_dtype(out, field(name, "dequantized")), "%s: dequantized values differ",
              name);
    free(out);
    free(q);
    free(scb);
}

static void test_fixture_cases(void) {
    json_t *list = json_object_get(cases_json, "cases");
    CHECK(json_array_size(list) >= 18);
    size_t i;
    json_t *c;
    int nf4 = 0, int8 = 0;
    json_array_foreach(list, i, c) {
        const char *kind = json_string_value(json_object_get(c, "kind"));
        if (kind && !strcmp(kind, "nf4")) {
            check_nf4_case(c);
            nf4++;
        } else if (kind && !strcmp(kind, "int8")) {
            check_int8_case(c);
            int8++;
        }
    }
    CHECK(nf4 >= 14);
    CHECK(int8 >= 4);
}

/* ---- reading saved checkpoints ------------------------------------------ */

static const char *const linear_names[] = {"self_attn.q_proj", "self_attn.k_proj",
                                           "self_attn.v_proj", "self_attn.o_proj",
                                           "mlp.gate_proj",    "mlp.up_proj",
                                           "mlp.down_proj"};

/* [rows, cols] of a Linear of the tiny fixtures (hidden 64, 2 kv heads of
 * 8, intermediate 96). */
static void tiny_linear_shape(int i, int64_t *rows, int64_t *cols) {
    static const int64_t shapes[7][2] = {{64, 64}, {16, 64}, {16, 64}, {64, 64},
                                         {96, 64}, {96, 64}, {64, 96}};
    *rows = shapes[i][0];
    *cols = shapes[i][1];
}

static void test_read_tiny_nf4(void) {
    av_checkpoint *ckpt = av_checkpoint_open(CASES_DIR "/tiny_nf4");
    CHECK_MSG(ckpt != NULL, "%s", av_last_error());
    if (!ckpt) return;
    const av_config *c = av_checkpoint_config(ckpt);
    CHECK(c->quant.method == AV_QUANT_NF4);
    CHECK(c->quant.double_quant == 1);
    CHECK(c->quant.compute_dtype == AV_DTYPE_BF16);
    CHECK(c->quant.n_skip_modules == -1);
    CHECK(av_quant_module_skipped(&c->quant, "lm_head.weight"));
    CHECK(!av_quant_module_skipped(&c->quant, "model.layers.0.mlp.up_proj.weight"));
    for (int layer = 0; layer < 2; layer++)
        for (int i = 0; i < 7; i++) {
            char name[128];
            snprintf(name, sizeof name, "model.layers.%d.%s.weight", layer, linear_names[i]);
            int64_t rows, cols;
            tiny_linear_shape(i, &rows, &cols);
            av_quant_weight w;
            av_status status = av_quant_weight_load(ckpt, name, rows, cols, &w);
            CHECK_MSG(status == AV_OK, "%s: %s", name, av_last_error());
            if (status) continue;
            CHECK(w.method == AV_QUANT_NF4);
            CHECK(w.blocksize == 64);
            CHECK(w.double_quant == 1);
            CHECK(w.dtype == AV_DTYPE_BF16);
            CHECK(w.n_blocks == rows * cols / 64);
            /* Each block's absmax is the largest |value|, so the block's
             * largest code magnitude decodes to about it. */
            float *out = malloc((size_t)(rows * cols) * sizeof *out);
            av_nf4_dequantize(w.codes, w.absmax, rows * cols, w.blocksize, out);
            for (int64_t b = 0; b < w.n_blocks; b++) {
                float amax = 0;
                for (int64_t j = 0; j < 64; j++) amax = fmaxf(amax, fabsf(out[b * 64 + j]));
                CHECK_MSG(w.absmax[b] > 0 && fabsf(amax - w.absmax[b]) <= 1e-6f * w.absmax[b],
                          "%s block %lld: max decoded %g, absmax %g", name, (long long)b,
                          (double)amax, (double)w.absmax[b]);
            }
            free(out);
            av_quant_weight_free(&w);
        }
    av_checkpoint_close(ckpt);
}

static void test_read_tiny_int8(void) {
    av_checkpoint *ckpt = av_checkpoint_open(CASES_DIR "/tiny_int8");
    CHECK_MSG(ckpt != NULL, "%s", av_last_error());
    if (!ckpt) return;
    CHECK(av_checkpoint_config(ckpt)->quant.method == AV_QUANT_INT8);
    for (int i = 0; i < 7; i++) {
        char name[128];
        snprintf(name, sizeof name, "model.layers.1.%s.weight", linear_names[i]);
        int64_t rows, cols;
        tiny_linear_shape(i, &rows, &cols);
        av_quant_weight w;
        av_status status = av_quant_weight_load(ckpt, name, rows, cols, &w);
        CHECK_MSG(status == AV_OK, "%s: %s", name, av_last_error());
        if (status) continue;
        CHECK(w.method == AV_QUANT_INT8);
        CHECK(w.dtype == AV_DTYPE_F16);
        /* Every row with a nonzero scale reaches code +-127 at its absmax. */
        for (int64_t r = 0; r < rows; r++) {
            int peak = 0;
            for (int64_t c = 0; c < cols; c++) peak = abs(w.q[r * cols + c]) > peak ? abs(w.q[r * cols + c]) : peak;
            CHECK_MSG(w.scale[r] == 0 ? peak == 0 : peak == 127, "%s row %lld: peak %d", name,
                      (long long)r, peak);
        }
        av_quant_weight_free(&w);
    }
    av_quant_weight w;
    CHECK(av_quant_weight_load(ckpt, "model.layers.0.mlp.up_proj.weight", 64, 96, &w) ==
          AV_ERR_FORMAT);
    CHECK(strstr(av_last_error(), "shape") != NULL);
    av_checkpoint_close(ckpt);
}

/* ---- broken checkpoints ------------------------------------------------- */

static char tmp_root[] = "/tmp/av_test_quant_XXXXXX";

/* How a copy of a fixture model differs from it. */
typedef struct {
    const char *drop;          /* tensor left out */
    const char *replace;       /* tensor whose bytes become `data` */
    av_dtype dtype;
    int ndim;
    int64_t shape[2];
    const void *data;
    size_t nbytes;
    const char *config_from, *config_to; /* text replaced in config.json */
} variant;

static void write_file(const char *path, const char *text, size_t len) {
    FILE *fp = fopen(path, "wb");
    if (!fp) return;
    fwrite(text, 1, len, fp);
    fclose(fp);
}

/* Writes a copy of fixture model `src` with the changes of v into a new
 * directory and returns its path (static buffer). */
static const char *make_variant(const char *src, const variant *v) {
    static char dir[512];
    static int counter;
    snprintf(dir, sizeof dir, "%s/v%d", tmp_root, counter++);
    mkdir(dir, 0755);
    char path[600], text[8192];
    snprintf(path, sizeof path, "%s/config.json", src);
    FILE *fp = fopen(path, "rb");
    size_t len = fp ? fread(text, 1, sizeof text - 1, fp) : 0;
    if (fp) fclose(fp);
    text[len] = '\0';
    if (v->config_from) {
        char *at = strstr(text, v->config_from);
        if (at) {
            char rest[8192];
            snprintf(rest, sizeof rest, "%s", at + strlen(v->config_from));
            snprintf(at, sizeof text - (size_t)(at - text), "%s%s", v->config_to, rest);
        }
    }
    snprintf(path, sizeof path, "%s/config.json", dir);
    write_file(path, text, strlen(text));

    snprintf(path, sizeof path, "%s/model.safetensors", src);
    av_safetensors *in = av_safetensors_open(path);
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    av_st_writer *w = av_st_writer_create(path);
    if (!in || !w) return dir;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < av_safetensors_count(in); i++) {
            const av_tensor *t = av_safetensors_get(in, i);
            if (v->drop && !strcmp(t->name, v->drop)) continue;
            int changed = v->replace && !strcmp(t->name, v->replace);
            if (pass == 0)
                av_st_writer_declare(w, t->name, changed ? v->dtype : t->dtype,
                                     changed ? v->ndim : t->ndim, changed ? v->shape : t->shape);
            else
                av_st_writer_write(w, changed ? v->data : t->data,
                                   changed ? v->nbytes : t->nbytes);
        }
    av_st_writer_finish(w);
    av_safetensors_close(in);
    return dir;
}

/* Loads model.layers.0.self_attn.q_proj.weight [64, 64] from a variant and
 * checks that it fails with a message containing `expected`. */
static void check_load_fails(const char *src, const variant *v, const char *expected) {
    const char *dir = make_variant(src, v);
    av_checkpoint *ckpt = av_checkpoint_open(dir);
    CHECK_MSG(ckpt != NULL, "%s", av_last_error());
    if (!ckpt) return;
    av_quant_weight w;
    av_status status = av_quant_weight_load(ckpt, "model.layers.0.self_attn.q_proj.weight", 64,
                                            64, &w);
    CHECK_MSG(status != AV_OK && strstr(av_last_error(), expected),
              "expected an error with '%s', got status %d: %s", expected, (int)status,
              av_last_error());
    CHECK(w.absmax == NULL);
    CHECK(w.scale == NULL);
    av_checkpoint_close(ckpt);
}

#define Q_PROJ "model.layers.0.self_attn.q_proj.weight"

static void test_bad_nf4_states(void) {
    const char *src = CASES_DIR "/tiny_nf4";
    variant missing_state = {.drop = Q_PROJ ".quant_state.bitsandbytes__nf4"};
    check_load_fails(src, &missing_state, "quant_state.bitsandbytes__nf4");

    variant missing_nested = {.drop = Q_PROJ ".nested_absmax"};
    check_load_fails(src, &missing_nested, "nested_absmax");

    static const struct {
        const char *json, *expected;
    } states[] = {
        {"{\"quant_type\": \"nf4\", \"blocksize\": 100, \"dtype\": \"bfloat16\", "
         "\"shape\": [64, 64], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", "
         "\"nested_offset\": 0.5}",
         "blocksize 100"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
         "\"shape\": [64, 32], \"nested_blocksize\": 256, \"nested_dtype\": \"float32\", "
         "\"nested_offset\": 0.5}",
         "\"shape\" is [64, 32]"},
        {"{\"quant_type\": \"fp4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
         "\"shape\": [64, 64]}",
         "quant_type \"fp4\""},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
         "\"shape\": [64, 64], \"nested_offset\": 0.5}",
         "only 1 of nested_blocksize"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"int8\", "
         "\"shape\": [64, 64]}",
         "\"dtype\" is int8"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64", "not valid JSON"},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
         "\"shape\": [64, 64], \"extra\": 1}",
         "unknown quant state field \"extra\""},
        {"{\"quant_type\": \"nf4\", \"blocksize\": 64, \"dtype\": \"bfloat16\", "
         "\"shape\": [64, 64]}",
         "bnb_4bit_use_double_quant"},
    };
    for (size_t i = 0; i < sizeof states / sizeof states[0]; i++) {
        variant v = {.replace = Q_PROJ ".quant_state.bitsandbytes__nf4", .dtype = AV_DTYPE_U8,
                     .ndim = 1, .shape = {(int64_t)strlen(states[i].json)},
                     .data = states[i].json, .nbytes = strlen(states[i].json)};
        check_load_fails(src, &v, states[i].expected);
    }

    uint8_t absmax[32] = {0};
    variant short_absmax = {.replace = Q_PROJ ".absmax", .dtype = AV_DTYPE_U8, .ndim = 1,
                            .shape = {32}, .data = absmax, .nbytes = sizeof absmax};
    check_load_fails(src, &short_absmax, "shape [64] expected");

    static uint16_t weights16[64 * 64];
    variant sixteen_bit = {.replace = Q_PROJ, .dtype = AV_DTYPE_BF16, .ndim = 2,
                           .shape = {64, 64}, .data = weights16, .nbytes = sizeof weights16};
    check_load_fails(src, &sixteen_bit, "declares 4-bit NF4 weights, but this tensor is BF16");

    variant no_double_quant = {.config_from = "\"bnb_4bit_use_double_quant\": true",
                               .config_to = "\"bnb_4bit_use_double_quant\": false"};
    check_load_fails(src, &no_double_quant, "bnb_4bit_use_double_quant to false");

    float map[16];
    memcpy(map, av_nf4_code, sizeof map);
    map[3] = 0.25f;
    variant other_map = {.replace = Q_PROJ ".quant_map", .dtype = AV_DTYPE_F32, .ndim = 1,
                         .shape = {16}, .data = map, .nbytes = sizeof map};
    check_load_fails(src, &other_map, "standard NF4 levels");
}

static void test_bad_int8_states(void) {
    const char *src = CASES_DIR "/tiny_int8";
    variant missing_scb = {.drop = "model.layers.0.self_attn.q_proj.SCB"};
    check_load_fails(src, &missing_scb, "q_proj.SCB");

    uint8_t col32 = 1;
    variant tiled = {.replace = "model.layers.0.self_attn.q_proj.weight_format",
                     .dtype = AV_DTYPE_U8, .ndim = 0, .data = &col32, .nbytes = 1};
    check_load_fails(src, &tiled, "weight_format 1");

    float scb[64];
    for (int i = 0; i < 64; i++) scb[i] = i == 5 ? -1.0f : 1.0f;
    variant negative = {.replace = "model.layers.0.self_attn.q_proj.SCB", .dtype = AV_DTYPE_F32,
                        .ndim = 1, .shape = {64}, .data = scb, .nbytes = sizeof scb};
    check_load_fails(src, &negative, "row 5 has scale -1");
}

static void test_bad_quantization_configs(void) {
    static const struct {
        const char *from, *to, *expected;
    } cases_[] = {
        {"\"bnb_4bit_quant_type\": \"nf4\"", "\"bnb_4bit_quant_type\": \"fp4\"",
         "bnb_4bit_quant_type \"fp4\""},
        {"\"quant_method\": \"bitsandbytes\"", "\"quant_method\": \"gptq\"", "\"gptq\""},
        {"\"load_in_8bit\": false", "\"load_in_8bit\": true", "disagree"},
        {"\"load_in_4bit\": true", "\"load_in_4bit\": false", "disagree"},
        {"\"bnb_4bit_quant_storage\": \"uint8\"", "\"bnb_4bit_quant_storage\": \"float32\"",
         "bnb_4bit_quant_storage"},
    };
    for (size_t i = 0; i < sizeof cases_ / sizeof cases_[0]; i++) {
        variant v = {.config_from = cases_[i].from, .config_to = cases_[i].to};
        const char *dir = make_variant(CASES_DIR "/tiny_nf4", &v);
        av_checkpoint *ckpt = av_checkpoint_open(dir);
        CHECK_MSG(!ckpt && strstr(av_last_error(), cases_[i].expected),
                  "expected '%s', got: %s", cases_[i].expected, ckpt ? "(opened)" : av_last_error());
        av_checkpoint_close(ckpt);
    }
}

static void test_unquantized_checkpoint_rejected(void) {
    char path[512];
    av_checkpoint *ckpt = av_checkpoint_open(av_test_path(path, sizeof path, "models/stories260K"));
    CHECK_MSG(ckpt != NULL, "%s", av_last_error());
    if (!ckpt) return;
    CHECK(av_checkpoint_config(ckpt)->quant.method == AV_QUANT_NONE);
    av_quant_weight w;
    CHECK(av_quant_weight_load(ckpt, "model.layers.0.mlp.up_proj.weight", 172, 64, &w) ==
          AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "no quantization_config") != NULL);
    av_checkpoint_close(ckpt);
}

static void test_blocksize_validation(void) {
    static const int64_t valid[] = {32, 64, 128, 256, 512, 1024, 2048, 4096};
    static const int64_t invalid[] = {0, -64, 16, 48, 100, 8192};
    for (size_t i = 0; i < 8; i++) CHECK(av_nf4_blocksize_valid(valid[i]));
    for (size_t i = 0; i < 6; i++) CHECK(!av_nf4_blocksize_valid(invalid[i]));
}

static void test_int8_rejects_float16_overflow(void) {
    float row[4] = {1.0f, 70000.0f, 0.5f, 0.25f};
    int8_t q[4];
    float scb[1];
    CHECK(av_int8_quantize(row, AV_DTYPE_F32, 1, 4, q, scb) == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "column 1") != NULL);
}

static void remove_tmp_root(void) {
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", tmp_root);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
}

int main(void) {
    cases = av_safetensors_open(CASES_DIR "/quant_cases.safetensors");
    json_error_t err;
    cases_json = json_load_file(CASES_DIR "/quant_cases.json", 0, &err);
    if (!cases || !cases_json) {
        fprintf(stderr, "cannot open the fixtures in %s: %s\n", CASES_DIR, av_last_error());
        return 1;
    }
    if (!mkdtemp(tmp_root)) {
        fprintf(stderr, "cannot create a temporary directory\n");
        return 1;
    }
    RUN(test_fixture_cases);
    RUN(test_read_tiny_nf4);
    RUN(test_read_tiny_int8);
    RUN(test_bad_nf4_states);
    RUN(test_bad_int8_states);
    RUN(test_bad_quantization_configs);
    RUN(test_unquantized_checkpoint_rejected);
    RUN(test_blocksize_validation);
    RUN(test_int8_rejects_float16_overflow);
    remove_tmp_root();
    av_safetensors_close(cases);
    json_decref(cases_json);
    return CHECK_DONE();
}
