/*
 * fixture_util.h - helpers of the tests that compare the forward pass with
 * reference logits stored in tests/fixtures.
 */
#ifndef AV_TEST_FIXTURE_UTIL_H
#define AV_TEST_FIXTURE_UTIL_H

#include <math.h>
#include <stdlib.h>

#include "airavata.h"

static inline double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m) m = d;
    }
    return m;
}

/* Runs the rows of input_ids [rows, T] as separate sequences in one batch
 * and writes all logits [rows, T, V] to out. */
static inline av_status forward_rows(av_model *m, const int64_t *ids, int rows, int T,
                                     float *out) {
    av_context_options co = {.n_seq = rows, .n_threads = 2};
    av_context *ctx = av_context_create(m, &co);
    if (!ctx) return AV_ERR_INVALID;
    int n = rows * T;
    int32_t *tok = malloc(sizeof(int32_t) * n), *pos = malloc(sizeof(int32_t) * n),
            *seq = malloc(sizeof(int32_t) * n);
    int8_t *want = malloc((size_t)n);
    for (int r = 0; r < rows; r++)
        for (int t = 0; t < T; t++) {
            int i = r * T + t;
            tok[i] = (int32_t)ids[i];
            pos[i] = t;
            seq[i] = r;
            want[i] = 1;
        }
    av_batch b = {n, tok, pos, seq, want};
    av_status st = av_forward(ctx, &b, out);
    free(tok);
    free(pos);
    free(seq);
    free(want);
    av_context_free(ctx);
    return st;
}

static inline int32_t argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

#endif
