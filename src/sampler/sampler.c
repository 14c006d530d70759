/*
 * sampler.c - turns logits into the next token id.
 *
 * The steps follow the order in which Hugging Face's generate() applies
 * them: repetition penalty on the raw logits, then temperature, top-k,
 * top-p (nucleus) and min-p filtering, then a draw from the renormalized
 * distribution. Temperature 0 means greedy: the first index of the maximum
 * logit after the penalty. The random generator is seeded from the params
 * alone, so one seed always gives the same tokens for the same logits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "airavata.h"

typedef struct {
    float logit;
    int32_t id;
} candidate;

struct av_sampler {
    av_sampler_params params;
    int vocab_size;
    uint64_t rng_state;
    candidate *cands;  /* [vocab_size] */
    uint8_t *seen;     /* [vocab_size] marks for the repetition penalty */
};

void av_sampler_params_default(av_sampler_params *p) {
    p->temperature = 0.0f;
    p->top_k = 0;
    p->top_p = 1.0f;
    p->min_p = 0.0f;
    p->repetition_penalty = 1.0f;
    p->repetition_window = 0;
    p->seed = 0;
}

/* splitmix64: a small, well-mixed 64-bit generator. */
static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform float in [0, 1) with 24 random bits. */
static float random_unit(uint64_t *state) {
    return (float)(next_random(state) >> 40) * (1.0f / 16777216.0f);
}

av_sampler *av_sampler_create(const av_sampler_params *params, int vocab_size) {
    const av_sampler_params *p = params;
    if (vocab_size <= 0) {
        av_set_error(AV_ERR_INVALID, "sampler: vocabulary size %d must be positive", vocab_size);
        return NULL;
    }
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature)) {
        av_set_error(AV_ERR_INVALID, "temperature %g is invalid: use 0 (greedy) or a positive "
                     "value", p->temperature);
        return NULL;
    }
    if (p->top_k < 0) {
        av_set_error(AV_ERR_INVALID, "top-k %d is invalid: use 0 (off) or a positive count",
                     p->top_k);
        return NULL;
    }
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f)) {
        av_set_error(AV_ERR_INVALID, "top-p %g is invalid: use a value in (0, 1] (1 is off)",
                     p->top_p);
        return NULL;
    }
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f)) {
        av_set_error(AV_ERR_INVALID, "min-p %g is invalid: use a value in [0, 1] (0 is off)",
                     p->min_p);
        return NULL;
    }
    if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty)) {
        av_set_error(AV_ERR_INVALID, "repetition penalty %g is invalid: use a positive value "
                     "(1 is off)", p->repetition_penalty);
        return NULL;
    }
    if (p->repetition_window < 0) {
        av_set_error(AV_ERR_INVALID, "repetition window %d is invalid: use 0 (all tokens) or "
                     "a positive count", p->repetition_window);
        return NULL;
    }

    av_sampler *s = calloc(1, sizeof *s);
    if (!s) goto nomem;
    s->params = *p;
    s->vocab_size = vocab_size;
    s->rng_state = p->seed;
    s->cands = malloc(sizeof(candidate) * (size_t)vocab_size);
    s->seen = calloc((size_t)vocab_size, 1);
    if (!s->cands || !s->seen) goto nomem;
    return s;

nomem:
    av_sampler_free(s);
    av_set_error(AV_ERR_NOMEM, "out of memory creating a sampler");
    return NULL;
}

void av_sampler_free(av_sampler *s) {
    if (!s) return;
    free(s->cands);
    free(s->seen);
    free(s);
}

/* Hugging Face's repetition penalty: every token id present in the window
 * has its logit divided by the penalty when positive, multiplied when
 * negative, once however often it occurs. */
static void apply_repetition_penalty(av_sampler *s, float *logits, const int32_t *history,
                                     int n_history) {
    float penalty = s->params.repetition_penalty;
    if (penalty == 1.0f || n_history <= 0) return;
    int start = 0;
    if (s->params.repetition_window > 0 && n_history > s->params.repetition_window)
        start = n_history - s->params.repetition_window;
    for (int i = start; i < n_history; i++) {
        int32_t id = history[i];
        if (id < 0 || id >= s->vocab_size || s->seen[id]) continue;
        s->seen[id] = 1;
        logits[id] = logits[id] > 0 ? logits[id] / penalty : logits[id] * penalty;
    }
    for (int i = start; i < n_history; i++)
        if (history[i] >= 0 && history[i] < s->vocab_size) s->seen[history[i]] = 0;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* Descending by logit; equal logits keep the lower id first so that the
 * order, and so the draw, does not depend on qsort's internals. */
static int compare_candidates(const void *pa, const void *pb) {
    const candidate *a = pa, *b = pb;
    if (a->logit != b->logit) return a->logit < b->logit ? 1 : -1;
    return (a->id > b->id) - (a->id < b->id);
}

int32_t av_sampler_sample(av_sampler *s, float *logits, const int32_t *history, int n_history) {
    const av_sampler_params *p = &s->params;
    int V = s->vocab_size;

    apply_repetition_penalty(s, logits, history, n_history);
    if (p->temperature == 0.0f) return argmax(logits, V);

    /* Sort candidates by logit once; top-k, top-p and min-p then each keep a
     * prefix of this order. */
    int n = 0;
    for (int i = 0; i < V; i++) {
        if (isnan(logits[i]) || logits[i] == -INFINITY) continue;
        s->cands[n].logit = logits[i] / p->temperature;
        s->cands[n].id = i;
        n++;
    }
    if (n == 0) return argmax(logits, V);
    qsort(s->cands, (size_t)n, sizeof(candidate), compare_candidates);
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;

    /* Softmax over the kept candidates, in double for the cumulative sums. */
    double max_logit = s->cands[0].logit, total = 0.0;
    for (int i = 0; i < n; i++) {
        s->cands[i].logit = (float)exp((double)s->cands[i].logit - max_logit);
        total += s->cands[i].logit;
    }

    if (p->top_p < 1.0f) {
        /* Keep the smallest prefix whose probability reaches top_p; the most
         * likely token always stays. */
        double cumulative = 0.0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cumulative += s->cands[i].logit / total;
            if (cumulative >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (p->min_p > 0.0f) {
        /* Probabilities are relative to the first (largest), whose weight is 1. */
        int keep = 1;
        while (keep < n && s->cands[keep].logit >= p->min_p) keep++;
        n = keep;
    }

    total = 0.0;
    for (int i = 0; i < n; i++) total += s->cands[i].logit;
    double r = random_unit(&s->rng_state) * total, cumulative = 0.0;
    for (int i = 0; i < n; i++) {
        cumulative += s->cands[i].logit;
        if (r < cumulative) return s->cands[i].id;
    }
    return s->cands[n - 1].id;
}
