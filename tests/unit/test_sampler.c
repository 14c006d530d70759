/* Sampling rules on hand-made logits, and stop-string scanning. */
#include "airavata.h"
#include "check.h"

static av_sampler *make(float temp, int top_k, float top_p, float min_p, float penalty,
                        uint64_t seed, int vocab) {
    av_sampler_params p;
    av_sampler_params_default(&p);
    p.temperature = temp;
    p.top_k = top_k;
    p.top_p = top_p;
    p.min_p = min_p;
    p.repetition_penalty = penalty;
    p.seed = seed;
    return av_sampler_create(&p, vocab);
}

static void test_greedy_first_max(void) {
    av_sampler *s = make(0, 0, 1, 0, 1, 0, 5);
    float logits[5] = {0.1f, 2.0f, -1.0f, 2.0f, 1.0f};
    CHECK(av_sampler_sample(s, logits, NULL, 0) == 1);
    av_sampler_free(s);
}

static void test_repetition_penalty(void) {
    /* Hugging Face semantics: positive logits divided, negative multiplied,
     * each id once however often it occurs. */
    av_sampler *s = make(0, 0, 1, 0, 2.0f, 0, 4);
    float logits[4] = {3.0f, 2.0f, -1.0f, 1.9f};
    int32_t history[3] = {0, 0, 2};
    CHECK(av_sampler_sample(s, logits, history, 3) == 1);
    CHECK_NEAR(logits[0], 1.5, 1e-6);
    CHECK_NEAR(logits[2], -2.0, 1e-6);
    CHECK_NEAR(logits[1], 2.0, 1e-6);
    av_sampler_free(s);
}

/* Draws many samples and returns counts per id. */
static void histogram(av_sampler *s, const float *logits, int vocab, int draws, int *counts) {
    float work[16];
    for (int i = 0; i < draws; i++) {
        memcpy(work, logits, sizeof(float) * vocab);
        int32_t id = av_sampler_sample(s, work, NULL, 0);
        CHECK(id >= 0 && id < vocab);
        counts[id]++;
    }
}

static void test_temperature_distribution(void) {
    /* probabilities 0.5, 0.3, 0.2 */
    float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    av_sampler *s = make(1.0f, 0, 1, 0, 1, 42, 3);
    int counts[3] = {0};
    histogram(s, logits, 3, 20000, counts);
    CHECK_NEAR(counts[0] / 20000.0, 0.5, 0.02);
    CHECK_NEAR(counts[1] / 20000.0, 0.3, 0.02);
    CHECK_NEAR(counts[2] / 20000.0, 0.2, 0.02);
    av_sampler_free(s);
}

static void test_top_p_cuts_tail(void) {
    float logits[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    av_sampler *s = make(1.0f, 0, 0.7f, 0, 1, 7, 3);
    int counts[3] = {0};
    histogram(s, logits, 3, 20000, counts);
    CHECK(counts[2] == 0);
    CHECK_NEAR(counts[0] / 20000.0, 0.625, 0.02); /* 0.5 / 0.8 */
    av_sampler_free(s);
}

static void test_top_k_and_min_p(void) {
    float logits[4] = {logf(0.4f), logf(0.3f), logf(0.2f), logf(0.1f)};
    av_sampler *s = make(1.0f, 2, 1, 0, 1, 3, 4);
    int counts[4] = {0};
    histogram(s, logits, 4, 5000, counts);
    CHECK(counts[2] == 0 && counts[3] == 0);
    av_sampler_free(s);

    /* min_p 0.6: keep p >= 0.6 * 0.4 = 0.24, so ids 0 and 1 */
    s = make(1.0f, 0, 1, 0.6f, 1, 3, 4);
    int counts2[4] = {0};
    histogram(s, logits, 4, 5000, counts2);
    CHECK(counts2[2] == 0 && counts2[3] == 0);
    CHECK(counts2[1] > 0);
    av_sampler_free(s);
}

static void test_seed_repeatable(void) {
    float logits[8];
    for (int i = 0; i < 8; i++) logits[i] = (float)(i % 3);
    int32_t a[50], b[50], c[50];
    av_sampler *s1 = make(1.0f, 0, 1, 0, 1, 1234, 8), *s2 = make(1.0f, 0, 1, 0, 1, 1234, 8);
    av_sampler *s3 = make(1.0f, 0, 1, 0, 1, 999, 8);
    for (int i = 0; i < 50; i++) {
        float w[8];
        memcpy(w, logits, sizeof w);
        a[i] = av_sampler_sample(s1, w, NULL, 0);
        memcpy(w, logits, sizeof w);
        b[i] = av_sampler_sample(s2, w, NULL, 0);
        memcpy(w, logits, sizeof w);
        c[i] = av_sampler_sample(s3, w, NULL, 0);
    }
    CHECK(memcmp(a, b, sizeof a) == 0);
    CHECK(memcmp(a, c, sizeof a) != 0);
    av_sampler_free(s1);
    av_sampler_free(s2);
    av_sampler_free(s3);
}

static void test_invalid_params(void) {
    CHECK(make(-1.0f, 0, 1, 0, 1, 0, 4) == NULL);
    CHECK(strstr(av_last_error(), "temperature -1") != NULL);
    CHECK(make(1.0f, -3, 1, 0, 1, 0, 4) == NULL);
    CHECK(make(1.0f, 0, 0.0f, 0, 1, 0, 4) == NULL);
    CHECK(strstr(av_last_error(), "top-p 0") != NULL);
    CHECK(make(1.0f, 0, 1.5f, 0, 1, 0, 4) == NULL);
    CHECK(make(1.0f, 0, 1, 2.0f, 1, 0, 4) == NULL);
    CHECK(make(1.0f, 0, 1, 0, 0.0f, 0, 4) == NULL);
    CHECK(make(NAN, 0, 1, 0, 1, 0, 4) == NULL);
}

static void test_stop_scan(void) {
    const char *stops[] = {"</s>", "\nUser:"};
    size_t safe;
    const char *t1 = "hello world";
    CHECK(av_stop_scan(t1, strlen(t1), stops, 2, &safe) == -1);
    CHECK(safe == strlen(t1));

    const char *t2 = "hello </";
    CHECK(av_stop_scan(t2, strlen(t2), stops, 2, &safe) == -1);
    CHECK(safe == 6); /* "</" may still become "</s>" */

    const char *t3 = "abc</s>def";
    CHECK(av_stop_scan(t3, strlen(t3), stops, 2, &safe) == 3);
    CHECK(safe == 3);

    const char *t4 = "नमस्ते\nUs";
    CHECK(av_stop_scan(t4, strlen(t4), stops, 2, &safe) == -1);
    CHECK(safe == strlen("नमस्ते"));

    const char *t5 = "x\nUser: y </s>";
    CHECK(av_stop_scan(t5, strlen(t5), stops, 2, &safe) == 1);

    CHECK(av_stop_scan(t1, strlen(t1), NULL, 0, &safe) == -1);
    CHECK(safe == strlen(t1));
}

int main(void) {
    RUN(test_greedy_first_max);
    RUN(test_repetition_penalty);
    RUN(test_temperature_distribution);
    RUN(test_top_p_cuts_tail);
    RUN(test_top_k_and_min_p);
    RUN(test_seed_repeatable);
    RUN(test_invalid_params);
    RUN(test_stop_scan);
    return CHECK_DONE();
}
