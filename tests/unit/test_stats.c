/*
 * test_stats.c - percentiles, log-softmax, KL divergence and perplexity of
 * src/bench/stats.c on hand-made inputs with closed-form values.
 */
#include <math.h>

#include "bench/bench.h"
#include "check.h"

static void test_median_odd_and_even(void) {
    double odd[] = {5, 1, 3};
    double even[] = {4, 1, 3, 2};
    CHECK_NEAR(av_median(odd, 3), 3, 0);
    CHECK_NEAR(av_median(even, 4), 2.5, 1e-12);
    CHECK(odd[0] == 5); /* the input is not sorted in place */
}

static void test_percentile_linear_interpolation(void) {
    /* NumPy: np.percentile([10, 20, 30, 40, 50], q) */
    double v[] = {50, 10, 40, 20, 30};
    CHECK_NEAR(av_percentile(v, 5, 0), 10, 0);
    CHECK_NEAR(av_percentile(v, 5, 100), 50, 0);
    CHECK_NEAR(av_percentile(v, 5, 10), 14, 1e-12);
    CHECK_NEAR(av_percentile(v, 5, 90), 46, 1e-12);
    CHECK_NEAR(av_percentile(v, 5, 25), 20, 1e-12);
    CHECK_NEAR(av_percentile(v, 5, 99), 49.6, 1e-12);
}

static void test_percentile_edge_sizes(void) {
    double one[] = {7};
    CHECK_NEAR(av_percentile(one, 1, 90), 7, 0);
    CHECK(isnan(av_percentile(one, 0, 50)));
    CHECK(isnan(av_mean(one, 0)));
}

static void test_summary_of_known_array(void) {
    double v[] = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5};
    av_summary s;
    av_summarize(v, 11, &s);
    CHECK(s.n == 11);
    CHECK_NEAR(s.median, 4, 0);
    CHECK_NEAR(s.min, 1, 0);
    CHECK_NEAR(s.max, 9, 0);
    CHECK_NEAR(s.mean, 44.0 / 11, 1e-12);
    CHECK_NEAR(s.p10, 1, 1e-12);  /* rank 1.0 of 1 1 2 3 3 4 5 5 5 6 9 */
    CHECK_NEAR(s.p90, 6, 1e-12);  /* rank 9.0 */
}

static void test_log_softmax_sums_to_one(void) {
    float logits[] = {1000.0f, 1001.0f, 999.0f}; /* would overflow exp() in float */
    float lp[3];
    double lse = av_log_softmax(logits, 3, lp);
    double sum = 0;
    for (int i = 0; i < 3; i++) sum += exp(lp[i]);
    CHECK_NEAR(sum, 1, 1e-6);
    CHECK_NEAR(lse, 1001 + log(1 + exp(-1.0) + exp(-2.0)), 1e-3);
    CHECK_NEAR(lp[1] - lp[0], 1, 1e-4);
}

static void test_kl_uniform_vs_uniform_is_zero(void) {
    float a[8], lp[8], lq[8];
    for (int i = 0; i < 8; i++) a[i] = 3.0f;
    av_log_softmax(a, 8, lp);
    for (int i = 0; i < 8; i++) a[i] = -2.0f; /* shifted logits: same distribution */
    av_log_softmax(a, 8, lq);
    CHECK_NEAR(av_kl_divergence(lp, lq, 8), 0, 1e-9);
}

static void test_kl_two_point_closed_form(void) {
    /* KL(Bernoulli(p) || Bernoulli(q)) = p ln(p/q) + (1-p) ln((1-p)/(1-q)). */
    const double p = 0.9, q = 0.2;
    float lp[2] = {(float)log(p), (float)log(1 - p)};
    float lq[2] = {(float)log(q), (float)log(1 - q)};
    double want = p * log(p / q) + (1 - p) * log((1 - p) / (1 - q));
    CHECK_NEAR(av_kl_divergence(lp, lq, 2), want, 1e-6);
    /* KL is not symmetric: the reverse direction has its own closed form. */
    double reverse = q * log(q / p) + (1 - q) * log((1 - q) / (1 - p));
    CHECK_NEAR(av_kl_divergence(lq, lp, 2), reverse, 1e-6);
    CHECK(fabs(want - reverse) > 0.05);
}

static void test_kl_zero_probability_term(void) {
    /* p = (1, 0): the second term is 0 * log(0 / q) = 0, so KL = -log q_0. */
    float lp[2] = {0.0f, -INFINITY};
    float lq[2] = {(float)log(0.25), (float)log(0.75)};
    CHECK_NEAR(av_kl_divergence(lp, lq, 2), log(4.0), 1e-6);
}

static void test_perplexity_of_uniform_model(void) {
    /* A model that spreads its mass evenly over V tokens has NLL log V per
     * token, so its perplexity is V whatever the text. */
    enum { V = 512, N = 100 };
    float logits[V], lp[V];
    for (int i = 0; i < V; i++) logits[i] = 0.5f;
    av_log_softmax(logits, V, lp);
    double nll = 0;
    for (int t = 0; t < N; t++) nll -= lp[(t * 37) % V];
    CHECK_NEAR(av_perplexity(nll, N), V, 1e-2);
    CHECK(isnan(av_perplexity(0, 0)));
}

static void test_perplexity_two_tokens(void) {
    /* Probabilities 1/2 and 1/8: ppl = exp((ln 2 + ln 8) / 2) = 4. */
    CHECK_NEAR(av_perplexity(log(2.0) + log(8.0), 2), 4, 1e-12);
}

static void test_argmax_first_on_ties(void) {
    float v[] = {1, 3, 2, 3};
    CHECK(av_argmax(v, 4) == 1);
    CHECK(av_argmax(v, 1) == 0);
}

int main(void) {
    RUN(test_median_odd_and_even);
    RUN(test_percentile_linear_interpolation);
    RUN(test_percentile_edge_sizes);
    RUN(test_summary_of_known_array);
    RUN(test_log_softmax_sums_to_one);
    RUN(test_kl_uniform_vs_uniform_is_zero);
    RUN(test_kl_two_point_closed_form);
    RUN(test_kl_zero_probability_term);
    RUN(test_perplexity_of_uniform_model);
    RUN(test_perplexity_two_tokens);
    RUN(test_argmax_first_on_ties);
    return CHECK_DONE();
}
