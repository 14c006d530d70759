/*
 * eval_logits.c - saving and reusing the base model's predictions, so that
 * a large base model runs once per text and each quantized variant is then
 * evaluated against the file (`eval --save-base-logits` / `--base-logits`).
 *
 * File format: a safetensors file written with av_st_writer.
 *   tokens    I32 [n_tokens]           the evaluated text's token ids
 *   nll       F32 [n_targets]          -log p(true token), from F32 logits
 *   top1      I32 [n_targets]          argmax of the F32 logits
 *   logprobs  F16 [n_targets, vocab]   log-softmax of the base logits for
 *                                      every scored token, in scoring order
 *   __metadata__: format "airavata-base-logits", version "1", vocab_size,
 *                 n_ctx, stride, base_model (the base directory).
 * Log-probabilities rather than logits are stored because F16 is precise
 * near 0, where the likely tokens are: |error| <= 2^-11 * |log p|, so the
 * tokens that carry the probability mass keep ~3 significant digits, and
 * tokens with log p near -20 (p ~ 2e-9) err by ~0.01 in log p, which does
 * not move the KL. A 7B run with vocab 48065 takes 96 KB per scored token.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define BASE_LOGITS_FORMAT "airavata-base-logits"

av_status av_base_predictions_save(const char *path, const av_base_predictions *p,
                                   const av_eval_identity *id) {
    av_st_writer *w = av_st_writer_create(path);
    if (!w) return AV_ERR_IO;
    char num[4][32];
    snprintf(num[0], sizeof num[0], "%d", id->vocab);
    snprintf(num[1], sizeof num[1], "%d", id->n_ctx);
    snprintf(num[2], sizeof num[2], "%d", id->stride);
    int64_t shape_tokens[1] = {id->n_tokens};
    int64_t shape_logprobs[2] = {p->n_targets, p->vocab};
    int64_t shape_targets[1] = {p->n_targets};
    av_status rc = av_st_writer_add_metadata(w, "format", BASE_LOGITS_FORMAT);
    if (!rc) rc = av_st_writer_add_metadata(w, "version", "1");
    if (!rc) rc = av_st_writer_add_metadata(w, "vocab_size", num[0]);
    if (!rc) rc = av_st_writer_add_metadata(w, "n_ctx", num[1]);
    if (!rc) rc = av_st_writer_add_metadata(w, "stride", num[2]);
    if (!rc && id->base_dir) rc = av_st_writer_add_metadata(w, "base_model", id->base_dir);
    if (!rc) rc = av_st_writer_declare(w, "tokens", AV_DTYPE_I32, 1, shape_tokens);
    if (!rc) rc = av_st_writer_declare(w, "nll", AV_DTYPE_F32, 1, shape_targets);
    if (!rc) rc = av_st_writer_declare(w, "top1", AV_DTYPE_I32, 1, shape_targets);
    if (!rc) rc = av_st_writer_declare(w, "logprobs", AV_DTYPE_F16, 2, shape_logprobs);
    /* The 4-byte tensors come first so that each starts 4-byte aligned in
     * the memory map; the 2-byte logprobs last. */
    size_t n_t = (size_t)p->n_targets;
    if (!rc) rc = av_st_writer_write(w, id->tokens, sizeof(int32_t) * (size_t)id->n_tokens);
    if (!rc) rc = av_st_writer_write(w, p->nll, sizeof(float) * n_t);
    if (!rc) rc = av_st_writer_write(w, p->top1, sizeof(int32_t) * n_t);
    if (!rc) rc = av_st_writer_write(w, p->logprobs, sizeof(uint16_t) * n_t * (size_t)p->vocab);
    if (rc) {
        av_st_writer_abort(w);
        return rc;
    }
    return av_st_writer_finish(w);
}

/* Compares an integer metadata value with the current run's. */
static av_status check_meta_int(const av_safetensors *st, const char *path, const char *key,
                                int expected, const char *option) {
    const char *v = av_safetensors_metadata(st, key);
    if (!v)
        return av_set_error(AV_ERR_FORMAT, "%s has no %s in its metadata; it was not written "
                            "by 'airavata eval --save-base-logits'", path, key);
    if (atoi(v) != expected)
        return av_set_error(AV_ERR_INVALID, "%s was saved with %s %s but this run uses %d; "
                            "rerun with %s %s or save the base logits again", path, key, v,
                            expected, option, v);
    return AV_OK;
}

/* Finds a tensor and checks its dtype and shape. */
static const av_tensor *expect_tensor(const av_safetensors *st, const char *path,
                                      const char *name, av_dtype dtype, int ndim, int64_t d0,
                                      int64_t d1) {
    const av_tensor *t = av_safetensors_find(st, name);
    if (!t) {
        av_set_error(AV_ERR_FORMAT, "%s has no tensor '%s'", path, name);
        return NULL;
    }
    if (t->dtype != dtype || t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1)) {
        av_set_error(AV_ERR_FORMAT, "tensor '%s' of %s is %s with %d dims [%lld, ...]; expected "
                     "%s [%lld%s]", name, path, av_dtype_name(t->dtype), t->ndim,
                     (long long)t->shape[0], av_dtype_name(dtype), (long long)d0,
                     ndim == 2 ? ", vocab" : "");
        return NULL;
    }
    return t;
}

/* Checks the saved token ids against the text's; they differ when the text
 * or the tokenizer changed. */
static av_status check_tokens(const av_safetensors *st, const char *path,
                              const av_eval_identity *id) {
    const av_tensor *t = av_safetensors_find(st, "tokens");
    if (!t || t->dtype != AV_DTYPE_I32 || t->ndim != 1)
        return av_set_error(AV_ERR_FORMAT, "%s has no I32 tensor 'tokens'", path);
    if (t->shape[0] != id->n_tokens)
        return av_set_error(AV_ERR_INVALID, "%s was saved for a text of %lld tokens but this "
                            "text has %d tokens with this model's tokenizer; use the same text "
                            "or save the base logits again", path, (long long)t->shape[0],
                            id->n_tokens);
    const int32_t *saved = t->data;
    for (int i = 0; i < id->n_tokens; i++)
        if (saved[i] != id->tokens[i])
            return av_set_error(AV_ERR_INVALID, "%s was saved for a different text or "
                                "tokenizer: token %d is %d there and %d here; use the same text "
                                "and tokenizer or save the base logits again", path, i, saved[i],
                                id->tokens[i]);
    return AV_OK;
}

av_status av_base_predictions_load(const char *path, const av_eval_identity *id,
                                   av_base_predictions *p) {
    memset(p, 0, sizeof *p);
    av_safetensors *st = av_safetensors_open(path);
    if (!st) return AV_ERR_IO;
    const char *format = av_safetensors_metadata(st, "format");
    av_status rc = AV_OK;
    if (!format || strcmp(format, BASE_LOGITS_FORMAT))
        rc = av_set_error(AV_ERR_FORMAT, "%s is not a base-logits file (metadata format is "
                          "'%s', expected '%s'); write one with --save-base-logits", path,
                          format ? format : "missing", BASE_LOGITS_FORMAT);
    if (!rc) rc = check_meta_int(st, path, "vocab_size", id->vocab, "a model with vocab_size");
    if (!rc) rc = check_meta_int(st, path, "n_ctx", id->n_ctx, "--ctx");
    if (!rc) rc = check_meta_int(st, path, "stride", id->stride, "--stride");
    if (!rc) rc = check_tokens(st, path, id);
    int n_targets = id->n_tokens - 1;
    const av_tensor *lp = NULL, *nll = NULL, *top1 = NULL;
    if (!rc && !(lp = expect_tensor(st, path, "logprobs", AV_DTYPE_F16, 2, n_targets, id->vocab)))
        rc = AV_ERR_FORMAT;
    if (!rc && !(nll = expect_tensor(st, path, "nll", AV_DTYPE_F32, 1, n_targets, 0)))
        rc = AV_ERR_FORMAT;
    if (!rc && !(top1 = expect_tensor(st, path, "top1", AV_DTYPE_I32, 1, n_targets, 0)))
        rc = AV_ERR_FORMAT;
    if (rc) {
        av_safetensors_close(st);
        return rc;
    }
    p->n_targets = n_targets;
    p->vocab = id->vocab;
    p->logprobs = (uint16_t *)lp->data;
    p->nll = (float *)nll->data;
    p->top1 = (int32_t *)top1->data;
    for (int i = 0; i < n_targets; i++)
        if (p->top1[i] < 0 || p->top1[i] >= id->vocab) {
            av_safetensors_close(st);
            memset(p, 0, sizeof *p);
            return av_set_error(AV_ERR_FORMAT, "%s: top1[%d] = %d is outside the vocabulary "
                                "of %d", path, i, p->top1[i], id->vocab);
        }
    p->file = st;
    return AV_OK;
}

void av_base_predictions_free(av_base_predictions *p) {
    if (p->file) {
        av_safetensors_close(p->file);
    } else {
        free(p->logprobs);
        free(p->nll);
        free(p->top1);
    }
    memset(p, 0, sizeof *p);
}
