/*
 * The forward pass against Hugging Face transformers on the tiny random
 * checkpoints in tests/fixtures/hf (MHA and GQA, tied and untied head, F32,
 * F16 and BF16, one file and sharded, Llama and Mistral configs).
 *
 * Tolerance: logits_f32 is transformers' forward of the stored weights
 * upcast to f32, which is exactly what this engine computes (16-bit weights
 * widen to f32 without rounding, activations stay f32), so only the order
 * of f32 summation differs: 1e-4 absolute on logits of magnitude up to ~7.
 * logits_native (transformers in bf16/f16) rounds every activation to the
 * 16-bit type; ours must be no farther from it than logits_f32 is, plus the
 * same 1e-4.
 */
#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>

#include "airavata.h"
#include "check.h"
#include "fixture_util.h"

#define FIXTURES "tests/fixtures/hf"

static void check_fixture(const char *name) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/%s", FIXTURES, name);
    snprintf(path, sizeof path, "%s/expected.safetensors", dir);
    av_safetensors *st = av_safetensors_open(path);
    CHECK_MSG(st != NULL, "%s", av_last_error());
    if (!st) return;
    const av_tensor *ids = av_safetensors_find(st, "input_ids");
    const av_tensor *ref = av_safetensors_find(st, "logits_f32");
    const av_tensor *native = av_safetensors_find(st, "logits_native");
    const av_tensor *greedy = av_safetensors_find(st, "greedy_ids");
    CHECK(ids && ref && native && greedy);
    if (!ids || !ref || !native || !greedy) goto out;

    av_model *m = av_model_load(dir, NULL);
    CHECK_MSG(m != NULL, "%s: %s", name, av_last_error());
    if (!m) goto out;
    int rows = (int)ids->shape[0], T = (int)ids->shape[1];
    int V = av_model_config(m)->vocab_size;
    CHECK(ref->shape[2] == V);

    size_t n = (size_t)rows * T * V;
    float *logits = malloc(sizeof(float) * n);
    CHECK(forward_rows(m, ids->data, rows, T, logits) == AV_OK);
    double d_ref = max_abs_diff(logits, ref->data, n);
    double d_native = max_abs_diff(logits, native->data, n);
    double ref_vs_native = max_abs_diff(ref->data, native->data, n);
    CHECK_MSG(d_ref <= 1e-4, "%s: max |ours - transformers f32| = %g", name, d_ref);
    CHECK_MSG(d_native <= ref_vs_native + 1e-4,
              "%s: max |ours - transformers native| = %g, transformers f32 vs native %g", name,
              d_native, ref_vs_native);
    printf("  %-26s |ours - f32| %.2e  |ours - native| %.2e\n", name, d_ref, d_native);

    /* Greedy continuation of row 0, one token per step. */
    av_context *ctx = av_context_create(m, NULL);
    const int64_t *row0 = ids->data;
    int32_t tok[64], pos[64], seq[64] = {0};
    int8_t want[64] = {0};
    for (int t = 0; t < T; t++) {
        tok[t] = (int32_t)row0[t];
        pos[t] = t;
    }
    want[T - 1] = 1;
    av_batch b = {T, tok, pos, seq, want};
    CHECK(av_forward(ctx, &b, logits) == AV_OK);
    const int64_t *expected = greedy->data;
    for (int i = 0; i < greedy->numel; i++) {
        int32_t next = argmax(logits, V);
        CHECK_MSG(next == expected[i], "%s: greedy step %d: %d, expected %lld", name, i, next,
                  (long long)expected[i]);
        int32_t p = T + i;
        int8_t one = 1;
        av_batch step = {1, &next, &p, seq, &one};
        CHECK(av_forward(ctx, &step, logits) == AV_OK);
    }
    av_context_free(ctx);
    free(logits);
    av_model_free(m);
out:
    av_safetensors_close(st);
}

static void test_all_fixtures(void) {
    const char *names[] = {"mha_tied_f32", "gqa_untied_f32", "gqa_untied_bf16_sharded",
                           "mha_untied_f16", "mistral_gqa_f32"};
    for (int i = 0; i < 5; i++) check_fixture(names[i]);
}

static void test_all_fixtures_scalar(void) {
    av_isa best = av_kernels_isa();
    CHECK(av_kernels_set_isa(AV_ISA_SCALAR) == AV_OK);
    test_all_fixtures();
    CHECK(av_kernels_set_isa(best) == AV_OK);
}

int main(void) {
    RUN(test_all_fixtures);
    RUN(test_all_fixtures_scalar);
    return CHECK_DONE();
}
