/*
 * Loading and running bitsandbytes checkpoints: tests/fixtures/bnb/tiny_nf4
 * (NF4, double quantization, block size 64) and tiny_int8 (LLM.int8), the
 * tiny random Llama of tests/fixtures/hf/gqa_untied_bf16_sharded quantized
 * by transformers + bitsandbytes 0.50.2.
 *
 * Tolerance. logits_f32 is the f32 forward pass over bitsandbytes'
 * dequantized weights. This engine quantizes each activation vector to int8
 * in groups of 32, and rounds NF4 levels to int8, before the products
 * (0.5 % and 0.8 % relative RMS error per product, test_qmatmul). This
 * random tiny model amplifies that: the measured max |ours - logits_f32| is
 * 0.33 for NF4 and 0.23 for INT8 (relative RMS 3.8 % and 3.1 % of logits
 * whose RMS is 1.7), the same with every instruction set. The limits are
 * 1.5 times that: 0.5 and 0.35. For NF4 the unquantized source model is
 * 4.2 away, so passing also shows that the NF4 weights are the ones in
 * use. Greedy ids must match, except that a swap of our top two ids is
 * allowed when their margin is within twice the limit, since the
 * reference's smallest top-2 margin (0.054 NF4, 0.23 INT8) is below it.
 */
#include <stdlib.h>

#include "airavata.h"
#include "check.h"
#include "fixture_util.h"

#define FIXTURES "tests/fixtures/bnb"
/* The unquantized model that both fixtures were made from. */
#define SOURCE_EXPECTED "tests/fixtures/hf/gqa_untied_bf16_sharded/expected.safetensors"

/* Returns the id with the second highest logit. */
static int32_t second_best(const float *x, int n, int32_t best) {
    int second = best == 0 ? 1 : 0;
    for (int i = 0; i < n; i++)
        if (i != best && x[i] > x[second]) second = i;
    return second;
}

/* Greedy continuation of row 0, one token per step, against greedy_ids.
 * The reference logits of each step would come from a forward pass of
 * the reference model; they are not stored, so the margin is taken from our
 * own logits, which are within `tolerance` of them. */
static void check_greedy(av_model *m, const char *name, double tolerance, const int64_t *row0,
                         int T,
                         const int64_t *expected, int n_expected, int V) {
    av_context *ctx = av_context_create(m, NULL);
    CHECK_MSG(ctx != NULL, "%s", av_last_error());
    if (!ctx) return;
    float *logits = malloc(sizeof(float) * (size_t)V);
    int32_t tok[64], pos[64], seq[64] = {0};
    int8_t want[64] = {0};
    for (int t = 0; t < T; t++) {
        tok[t] = (int32_t)row0[t];
        pos[t] = t;
    }
    want[T - 1] = 1;
    av_batch b = {T, tok, pos, seq, want};
    CHECK(av_forward(ctx, &b, logits) == AV_OK);
    for (int i = 0; i < n_expected; i++) {
        int32_t next = argmax(logits, V);
        if (next != expected[i]) {
            /* Allowed only when the two are our top two and nearly tied. */
            int32_t second = second_best(logits, V, next);
            double margin = logits[next] - logits[second];
            CHECK_MSG(second == expected[i] && margin <= 2 * tolerance,
                      "%s: greedy step %d: %d, expected %lld (margin %.3g)", name, i, next,
                      (long long)expected[i], margin);
            next = (int32_t)expected[i]; /* continue on the reference path */
        }
        int32_t p = T + i;
        int8_t one = 1;
        av_batch step = {1, &next, &p, seq, &one};
        CHECK(av_forward(ctx, &step, logits) == AV_OK);
    }
    free(logits);
    av_context_free(ctx);
}

static void check_fixture(const char *name, double tolerance, av_isa isa, double *max_error) {
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
    av_safetensors *source = av_safetensors_open(SOURCE_EXPECTED);
    CHECK_MSG(source != NULL, "%s", av_last_error());
    const av_tensor *source_ref = source ? av_safetensors_find(source, "logits_f32") : NULL;
    CHECK(ids != NULL);
    CHECK(ref != NULL);
    CHECK(native != NULL);
    CHECK(greedy != NULL);
    CHECK(source_ref != NULL);
    if (!ids || !ref || !native || !greedy || !source_ref) goto out;
    CHECK(source_ref->numel == ref->numel);

    av_load_options lo = {.n_threads = 2, .quiet = 1};
    av_model *m = av_model_load(dir, &lo);
    CHECK_MSG(m != NULL, "%s: %s", name, av_last_error());
    if (!m) goto out;
    /* Loading selects the kernels again (AIRAVATA_ISA or the best), so the
     * instruction set under test is chosen after it. */
    CHECK(av_kernels_set_isa(isa) == AV_OK);
    int rows = (int)ids->shape[0], T = (int)ids->shape[1];
    int V = av_model_config(m)->vocab_size;
    CHECK(ref->shape[2] == V);

    size_t n = (size_t)rows * T * V;
    float *logits = malloc(sizeof(float) * n);
    CHECK(forward_rows(m, ids->data, rows, T, logits) == AV_OK);
    double d_ref = max_abs_diff(logits, ref->data, n);
    double d_native = max_abs_diff(logits, native->data, n);
    double ref_vs_native = max_abs_diff(ref->data, native->data, n);
    CHECK_MSG(d_ref <= tolerance, "%s: max |ours - dequantized f32| = %g", name, d_ref);
    /* The unquantized source model is much farther from logits_f32 than
     * the tolerance, so this also shows that the quantized weights are the
     * ones in use. */
    if (!strcmp(name, "tiny_nf4"))
        CHECK_MSG(d_ref < 0.5 * max_abs_diff(ref->data, source_ref->data, n),
              "%s: ours is %g from the dequantized f32 forward, the unquantized model %g", name,
              d_ref, max_abs_diff(ref->data, source_ref->data, n));
    printf("  %-9s %-6s |ours - f32| %.4f  |ours - bitsandbytes| %.4f  (f32 vs bitsandbytes "
           "%.4f, vs unquantized %.4f)\n", name, av_isa_name(av_kernels_isa()), d_ref, d_native,
           ref_vs_native, max_abs_diff(ref->data, source_ref->data, n));
    if (d_ref > *max_error) *max_error = d_ref;

    check_greedy(m, name, tolerance, ids->data, T, greedy->data, (int)greedy->numel, V);
    free(logits);
    av_model_free(m);
out:
    av_safetensors_close(source);
    av_safetensors_close(st);
}

static void check_all_isas(const char *name, double tolerance) {
    av_isa best = av_cpu_best_isa();
    double max_error = 0;
    for (int isa = AV_ISA_SCALAR; isa <= (int)best; isa++)
        check_fixture(name, tolerance, (av_isa)isa, &max_error);
    CHECK(av_kernels_set_isa(best) == AV_OK);
    /* A model whose matrices were silently left unquantized, or read as
     * zeros, would be much farther; one this close must use the weights. */
    CHECK(max_error > 0);
}

static void test_tiny_nf4(void) { check_all_isas("tiny_nf4", 0.5); }
static void test_tiny_int8(void) { check_all_isas("tiny_int8", 0.35); }

/* The in-memory size counts the bound quantized matrices, not the files:
 * NF4 [out, in] keeps in/2 bytes of codes per row plus one float per 64
 * values; INT8 keeps the int8 rows plus one float per row. */
static void test_weight_bytes(void) {
    av_load_options lo = {.n_threads = 1, .quiet = 1};
    const char *names[2] = {FIXTURES "/tiny_nf4", FIXTURES "/tiny_int8"};
    for (int k = 0; k < 2; k++) {
        av_model *m = av_model_load(names[k], &lo);
        CHECK_MSG(m != NULL, "%s", av_last_error());
        if (!m) continue;
        const av_config *c = av_model_config(m);
        uint64_t dense = 0, linear = 0, rows_total = 0;
        for (int i = 0; i < av_model_tensor_count(m); i++) {
            const av_tensor *t = av_model_tensor(m, i);
            if (t->dtype == AV_DTYPE_BF16) dense += t->nbytes;
        }
        int64_t D = c->dim, F = c->hidden_dim, q = (int64_t)c->n_heads * c->head_dim;
        int64_t kv = (int64_t)c->n_kv_heads * c->head_dim;
        int64_t shapes[7][2] = {{q, D}, {kv, D}, {kv, D}, {D, q}, {F, D}, {F, D}, {D, F}};
        for (int s = 0; s < 7; s++) {
            int64_t padded = (shapes[s][1] + 31) / 32 * 32;
            linear += (uint64_t)(shapes[s][0] * padded);
            rows_total += (uint64_t)shapes[s][0];
        }
        linear *= (uint64_t)c->n_layers;
        rows_total *= (uint64_t)c->n_layers;
        uint64_t expected = k == 0 ? dense + linear / 2 + linear / 64 * 4
                                   : dense + linear + rows_total * 4;
        CHECK_MSG(av_model_weight_bytes(m) == expected, "%s: %llu bytes, expected %llu",
                  names[k], (unsigned long long)av_model_weight_bytes(m),
                  (unsigned long long)expected);
        av_model_free(m);
    }
}

int main(void) {
    RUN(test_tiny_nf4);
    RUN(test_tiny_int8);
    RUN(test_weight_bytes);
    return CHECK_DONE();
}
