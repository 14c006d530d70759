/*
 * Forward pass of the real stories260K model against its expected outputs
 * (an independent float64 implementation and llama2.c agree on them), and
 * the batched forward against one-sequence-at-a-time runs.
 */
#include <jansson.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "airavata.h"
#include "check.h"

#define MAX_IDS 128

typedef struct {
    int32_t input[MAX_IDS];
    int n_input;
    int32_t generated[MAX_IDS];
    int n_generated;
    float first_logits[512];
} stories_case;

static char model_dir[1024];
static stories_case cases[3];
static int n_cases;

static int load_cases(void) {
    char path[1200];
    snprintf(path, sizeof path, "%s/expected_greedy.json", model_dir);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root) {
        fprintf(stderr, "cannot read %s: %s\n", path, err.text);
        return -1;
    }
    json_t *list = json_object_get(root, "cases");
    size_t i;
    json_t *c;
    json_array_foreach(list, i, c) {
        if (n_cases == 3) break;
        stories_case *sc = &cases[n_cases++];
        json_t *v;
        size_t j;
        json_array_foreach(json_object_get(c, "input_ids"), j, v) sc->input[sc->n_input++] = (int32_t)json_integer_value(v);
        json_array_foreach(json_object_get(c, "generated_ids"), j, v) sc->generated[sc->n_generated++] = (int32_t)json_integer_value(v);
        json_array_foreach(json_object_get(c, "first_step_logits"), j, v) if (j < 512) sc->first_logits[j] = (float)json_number_value(v);
    }
    json_decref(root);
    return n_cases == 3 ? 0 : -1;
}

/* Prefills `ids` into sequence `seq` and returns the logits of the last token. */
static av_status prefill(av_context *ctx, int seq, const int32_t *ids, int n, float *logits) {
    int32_t pos[MAX_IDS], seqs[MAX_IDS];
    int8_t want[MAX_IDS];
    int start = av_context_seq_len(ctx, seq);
    for (int i = 0; i < n; i++) {
        pos[i] = start + i;
        seqs[i] = seq;
        want[i] = i == n - 1;
    }
    av_batch b = {n, ids, pos, seqs, want};
    return av_forward(ctx, &b, logits);
}

static int32_t argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void test_first_step_logits(void) {
    av_model *m = av_model_load(model_dir, NULL);
    CHECK_MSG(m != NULL, "%s", av_last_error());
    if (!m) return;
    for (int c = 0; c < n_cases; c++) {
        av_context *ctx = av_context_create(m, NULL);
        float logits[512];
        CHECK(prefill(ctx, 0, cases[c].input, cases[c].n_input, logits) == AV_OK);
        double max_diff = 0;
        for (int i = 0; i < 512; i++) {
            double d = fabs(logits[i] - cases[c].first_logits[i]);
            if (d > max_diff) max_diff = d;
        }
        CHECK_MSG(max_diff <= 1e-4, "case %d: max |logit diff| %g", c, max_diff);
        av_context_free(ctx);
    }
    av_model_free(m);
}

static void greedy_ids(av_model *m, const stories_case *sc, int32_t *out) {
    av_context *ctx = av_context_create(m, NULL);
    float logits[512];
    CHECK(prefill(ctx, 0, sc->input, sc->n_input, logits) == AV_OK);
    for (int i = 0; i < sc->n_generated; i++) {
        out[i] = argmax(logits, 512);
        if (i + 1 < sc->n_generated) CHECK(prefill(ctx, 0, &out[i], 1, logits) == AV_OK);
    }
    av_context_free(ctx);
}

static void test_greedy_ids(void) {
    av_model *m = av_model_load(model_dir, NULL);
    if (!m) return;
    for (int c = 0; c < n_cases; c++) {
        int32_t ids[MAX_IDS];
        greedy_ids(m, &cases[c], ids);
        int first_diff = -1;
        for (int i = 0; i < cases[c].n_generated && first_diff < 0; i++)
            if (ids[i] != cases[c].generated[i]) first_diff = i;
        CHECK_MSG(first_diff < 0, "case %d: first differing token at %d", c, first_diff);
    }
    av_model_free(m);
}

static void test_greedy_ids_scalar_path(void) {
    av_isa best = av_kernels_isa();
    CHECK(av_kernels_set_isa(AV_ISA_SCALAR) == AV_OK);
    av_model *m = av_model_load(model_dir, NULL);
    if (m) {
        int32_t ids[MAX_IDS];
        greedy_ids(m, &cases[0], ids);
        CHECK(memcmp(ids, cases[0].generated, sizeof(int32_t) * cases[0].n_generated) == 0);
        av_model_free(m);
    }
    CHECK(av_kernels_set_isa(best) == AV_OK);
}

/* Three prompts of different lengths prefilled in one batch as three
 * sequences, then decoded together, must give the logits of running each
 * alone. */
static void test_batch_matches_single(void) {
    av_load_options lo = {.n_threads = 2};
    av_model *m = av_model_load(model_dir, &lo);
    if (!m) return;
    enum { STEPS = 6, V = 512 };
    static float single[3][STEPS][V], batched[3][STEPS][V];

    for (int c = 0; c < 3; c++) {
        av_context *ctx = av_context_create(m, NULL);
        CHECK(prefill(ctx, 0, cases[c].input, cases[c].n_input, single[c][0]) == AV_OK);
        for (int s = 1; s < STEPS; s++)
            CHECK(prefill(ctx, 0, &cases[c].generated[s - 1], 1, single[c][s]) == AV_OK);
        av_context_free(ctx);
    }

    av_context_options co = {.n_seq = 3};
    av_context *ctx = av_context_create(m, &co);
    int32_t tok[MAX_IDS], pos[MAX_IDS], seq[MAX_IDS];
    int8_t want[MAX_IDS];
    int n = 0;
    for (int c = 0; c < 3; c++)
        for (int i = 0; i < cases[c].n_input; i++) {
            tok[n] = cases[c].input[i];
            pos[n] = i;
            seq[n] = c;
            want[n] = i == cases[c].n_input - 1;
            n++;
        }
    float out[3 * V];
    av_batch b = {n, tok, pos, seq, want};
    CHECK(av_forward(ctx, &b, out) == AV_OK);
    for (int c = 0; c < 3; c++) memcpy(batched[c][0], out + c * V, sizeof(float) * V);
    for (int s = 1; s < STEPS; s++) {
        for (int c = 0; c < 3; c++) {
            tok[c] = cases[c].generated[s - 1];
            pos[c] = av_context_seq_len(ctx, c);
            seq[c] = c;
            want[c] = 1;
        }
        av_batch step = {3, tok, pos, seq, want};
        CHECK(av_forward(ctx, &step, out) == AV_OK);
        for (int c = 0; c < 3; c++) memcpy(batched[c][s], out + c * V, sizeof(float) * V);
    }
    av_context_free(ctx);

    double max_diff = 0;
    for (int c = 0; c < 3; c++)
        for (int s = 0; s < STEPS; s++)
            for (int i = 0; i < V; i++) {
                double d = fabs(single[c][s][i] - batched[c][s][i]);
                if (d > max_diff) max_diff = d;
            }
    CHECK_MSG(max_diff <= 1e-4, "max |batched - single| %g", max_diff);
    av_model_free(m);
}

static void test_batch_errors(void) {
    av_model *m = av_model_load(model_dir, NULL);
    if (!m) return;
    av_context_options co = {.n_ctx = 8, .n_batch = 4};
    av_context *ctx = av_context_create(m, &co);
    float logits[512];
    int32_t tok[4] = {1, 2, 3, 4}, pos[4] = {0, 1, 2, 3}, seq[4] = {0, 0, 0, 0};
    int8_t want[4] = {0, 0, 0, 1};

    int32_t bad_tok[1] = {512}, p0[1] = {0}, s0[1] = {0};
    av_batch b1 = {1, bad_tok, p0, s0, want};
    CHECK(av_forward(ctx, &b1, logits) == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "outside the vocabulary") != NULL);

    int32_t p5[1] = {5};
    av_batch b2 = {1, tok, p5, s0, want};
    CHECK(av_forward(ctx, &b2, logits) == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "continues at position 0") != NULL);

    int32_t s3[1] = {3};
    av_batch b3 = {1, tok, p0, s3, want};
    CHECK(av_forward(ctx, &b3, logits) == AV_ERR_INVALID);

    av_batch b4 = {5, tok, pos, seq, want};
    CHECK(av_forward(ctx, &b4, logits) == AV_ERR_RANGE);

    /* Fill the 8 positions, then one more must fail with a range error. */
    av_batch ok = {4, tok, pos, seq, want};
    CHECK(av_forward(ctx, &ok, logits) == AV_OK);
    int32_t pos2[4] = {4, 5, 6, 7};
    av_batch ok2 = {4, tok, pos2, seq, want};
    CHECK(av_forward(ctx, &ok2, logits) == AV_OK);
    CHECK(av_context_seq_len(ctx, 0) == 8);
    int32_t p8[1] = {8};
    av_batch full = {1, tok, p8, s0, want};
    CHECK(av_forward(ctx, &full, logits) == AV_ERR_RANGE);
    CHECK(strstr(av_last_error(), "context of 8 positions") != NULL);

    /* Truncating frees positions for reuse. */
    av_context_seq_truncate(ctx, 0, 2);
    CHECK(av_context_seq_len(ctx, 0) == 2);
    int32_t p2[1] = {2};
    av_batch again = {1, tok, p2, s0, want + 3};
    CHECK(av_forward(ctx, &again, logits) == AV_OK);

    av_context_free(ctx);

    av_context_options too_long = {.n_ctx = 100000};
    CHECK(av_context_create(m, &too_long) == NULL);
    CHECK(strstr(av_last_error(), "max_position_embeddings") != NULL);
    av_model_free(m);
}

/* A model directory without tokenizer.model fails to load with a message
 * naming the file. */
static void test_missing_tokenizer(void) {
    char tmp[] = "/tmp/av-test-model-XXXXXX";
    CHECK(mkdtemp(tmp) != NULL);
    const char *files[] = {"config.json", "model.safetensors", "generation_config.json"};
    for (int i = 0; i < 3; i++) {
        char src[1400], dst[1400];
        snprintf(src, sizeof src, "%s/%s", model_dir, files[i]);
        snprintf(dst, sizeof dst, "%s/%s", tmp, files[i]);
        CHECK(symlink(src, dst) == 0);
    }
    av_model *m = av_model_load(tmp, NULL);
    CHECK(m == NULL);
    CHECK_MSG(strstr(av_last_error(), "tokenizer.model not found") != NULL, "%s",
              av_last_error());
    for (int i = 0; i < 3; i++) {
        char dst[1400];
        snprintf(dst, sizeof dst, "%s/%s", tmp, files[i]);
        unlink(dst);
    }
    rmdir(tmp);
}

int main(void) {
    char rel[1024];
    av_test_path(rel, sizeof rel, "models/stories260K");
    /* Absolute, because test_missing_tokenizer links to it from /tmp. */
    if (!realpath(rel, model_dir)) {
        fprintf(stderr, "model directory %s not found; set AIRAVATA_SHARED\n", rel);
        return 1;
    }
    if (load_cases()) {
        fprintf(stderr, "cannot load expected outputs from %s\n", model_dir);
        return 1;
    }
    RUN(test_first_step_logits);
    RUN(test_greedy_ids);
    RUN(test_greedy_ids_scalar_path);
    RUN(test_batch_matches_single);
    RUN(test_batch_errors);
    RUN(test_missing_tokenizer);
    return CHECK_DONE();
}
