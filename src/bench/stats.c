/*
 * stats.c - the statistics behind `bench` and `eval`: percentiles of
 * repeated timings, log-softmax, KL divergence and perplexity.
 *
 * Everything is accumulated in double, because an evaluation sums millions
 * of small terms and float accumulation would lose the digits that make a
 * KL of 1e-4 distinguishable from 0.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench.h"

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorted copy of values; NULL when n <= 0 or out of memory. */
static double *sorted_copy(const double *values, int n) {
    if (n <= 0) return NULL;
    double *copy = malloc(sizeof(double) * (size_t)n);
    if (!copy) return NULL;
    memcpy(copy, values, sizeof(double) * (size_t)n);
    qsort(copy, (size_t)n, sizeof(double), compare_double);
    return copy;
}

/* Percentile of an already sorted array: the value at rank q/100 * (n - 1),
 * interpolated linearly between the two neighbouring elements. */
static double percentile_sorted(const double *sorted, int n, double q) {
    if (q <= 0) return sorted[0];
    if (q >= 100) return sorted[n - 1];
    double rank = q / 100.0 * (n - 1);
    int lo = (int)floor(rank);
    int hi = lo + 1 < n ? lo + 1 : lo;
    double frac = rank - lo;
    return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

double av_percentile(const double *values, int n, double q) {
    double *sorted = sorted_copy(values, n);
    if (!sorted) return NAN;
    double p = percentile_sorted(sorted, n, q);
    free(sorted);
    return p;
}

double av_median(const double *values, int n) { return av_percentile(values, n, 50); }

double av_mean(const double *values, int n) {
    if (n <= 0) return NAN;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += values[i];
    return sum / n;
}

double av_min(const double *values, int n) {
    if (n <= 0) return NAN;
    double m = values[0];
    for (int i = 1; i < n; i++)
        if (values[i] < m) m = values[i];
    return m;
}

double av_max(const double *values, int n) {
    if (n <= 0) return NAN;
    double m = values[0];
    for (int i = 1; i < n; i++)
        if (values[i] > m) m = values[i];
    return m;
}

void av_summarize(const double *values, int n, av_summary *out) {
    out->n = n > 0 ? n : 0;
    double *sorted = sorted_copy(values, n);
    if (!sorted) {
        out->median = out->mean = out->min = out->max = out->p10 = out->p90 = NAN;
        return;
    }
    out->median = percentile_sorted(sorted, n, 50);
    out->p10 = percentile_sorted(sorted, n, 10);
    out->p90 = percentile_sorted(sorted, n, 90);
    out->min = sorted[0];
    out->max = sorted[n - 1];
    out->mean = av_mean(sorted, n);
    free(sorted);
}

double av_log_softmax(const float *logits, int n, float *out) {
    double max = -INFINITY;
    for (int i = 0; i < n; i++)
        if (logits[i] > max) max = logits[i];
    double sum = 0;
    for (int i = 0; i < n; i++) sum += exp((double)logits[i] - max);
    double lse = max + log(sum);
    for (int i = 0; i < n; i++) out[i] = (float)((double)logits[i] - lse);
    return lse;
}

double av_kl_divergence(const float *log_p, const float *log_q, int n) {
    double kl = 0;
    for (int i = 0; i < n; i++) {
        double p = exp((double)log_p[i]);
        if (p == 0) continue;
        kl += p * ((double)log_p[i] - (double)log_q[i]);
    }
    return kl;
}

int av_argmax(const float *values, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (values[i] > values[best]) best = i;
    return best;
}

double av_perplexity(double nll_sum, int64_t n) {
    if (n <= 0) return NAN;
    return exp(nll_sum / (double)n);
}

double av_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}
