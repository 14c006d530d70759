/*
 * eval_chat.c - the chat-style check of `airavata eval`: greedy answers of
 * the base and the quantized model to a few Hindi and English instructions,
 * so that a reader sees where quantization changes real output.
 *
 * Both models decode greedily (argmax, first index on ties) and stop at
 * the end-of-sequence token or after new_tokens tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static const struct {
    const char *language, *instruction;
} instructions[] = {
    {"en", "Give three tips for staying healthy."},
    {"en", "Explain what a computer does in one sentence."},
    {"hi", "स्वस्थ रहने के लिए तीन सुझाव दीजिए।"},
    {"hi", "भारत की राजधानी क्या है?"},
};

/* Greedy answer of `model` to the chat prompt `prompt` (n_prompt ids):
 * writes up to new_tokens ids to `out` and their count to *n_out. */
static av_status greedy_answer(av_model *model, int n_threads, const int32_t *prompt,
                               int n_prompt, int new_tokens, int32_t *out, int *n_out) {
    const av_config *cfg = av_model_config(model);
    int n_ctx = n_prompt + new_tokens;
    if (n_ctx > cfg->max_seq_len) n_ctx = cfg->max_seq_len;
    if (n_prompt >= n_ctx)
        return av_set_error(AV_ERR_RANGE, "the chat prompt of %d tokens does not fit the "
                            "model's %d positions", n_prompt, cfg->max_seq_len);
    av_context_options copts = {.n_ctx = n_ctx, .n_threads = n_threads};
    av_context *ctx = av_context_create(model, &copts);
    float *logits = malloc(sizeof(float) * (size_t)cfg->vocab_size);
    int n_batch = ctx ? av_context_n_batch(ctx) : 0;
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)(n_batch > 0 ? n_batch : 1));
    int32_t *seq = calloc((size_t)(n_batch > 0 ? n_batch : 1), sizeof(int32_t));
    int8_t *want = calloc((size_t)(n_batch > 0 ? n_batch : 1), 1);
    av_status rc = AV_OK;
    if (!ctx) rc = AV_ERR_INVALID;
    else if (!logits || !pos || !seq || !want) rc = av_set_error(AV_ERR_NOMEM, "out of memory");

    for (int start = 0; !rc && start < n_prompt; start += n_batch) {
        int n = n_prompt - start < n_batch ? n_prompt - start : n_batch;
        for (int i = 0; i < n; i++) {
            pos[i] = start + i;
            want[i] = start + i == n_prompt - 1;
        }
        av_batch b = {n, prompt + start, pos, seq, want};
        rc = av_forward(ctx, &b, logits);
    }
    int n_gen = 0, eos = av_tokenizer_eos(av_model_tokenizer(model));
    while (!rc && n_gen < new_tokens && n_prompt + n_gen < n_ctx) {
        int32_t next = av_argmax(logits, cfg->vocab_size);
        if (next == eos) break;
        out[n_gen++] = next;
        if (n_gen == new_tokens || n_prompt + n_gen >= n_ctx) break;
        int32_t p = n_prompt + n_gen - 1, s0 = 0;
        int8_t one = 1;
        av_batch b = {1, &next, &p, &s0, &one};
        rc = av_forward(ctx, &b, logits);
    }
    *n_out = n_gen;
    free(logits);
    free(pos);
    free(seq);
    free(want);
    av_context_free(ctx);
    return rc;
}

static int32_t *encode_chat(const av_tokenizer *tok, const char *instruction, int *n_out) {
    av_chat_message msg = {"user", instruction};
    char *text = av_chat_format(&msg, 1);
    if (!text) return NULL;
    size_t len = strlen(text);
    int n = av_tokenize(tok, text, len, AV_TOKENIZE_PARSE_SPECIAL, NULL, 0);
    int32_t *ids = n > 0 ? malloc(sizeof(int32_t) * (size_t)n) : NULL;
    if (ids) av_tokenize(tok, text, len, AV_TOKENIZE_PARSE_SPECIAL, ids, n);
    else av_set_error(AV_ERR_NOMEM, "out of memory tokenizing a chat prompt");
    free(text);
    *n_out = n;
    return ids;
}

static int first_difference(const int32_t *a, int na, const int32_t *b, int nb) {
    int n = na < nb ? na : nb;
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return i;
    return na == nb ? -1 : n;
}

av_status av_eval_chat_compare(av_model *base, av_model *quant, int n_threads, int new_tokens,
                               json_t *results) {
    const av_tokenizer *tok = av_model_tokenizer(base);
    int32_t *answer_base = malloc(sizeof(int32_t) * (size_t)new_tokens);
    int32_t *answer_quant = malloc(sizeof(int32_t) * (size_t)new_tokens);
    av_status rc = answer_base && answer_quant ? AV_OK
                                               : av_set_error(AV_ERR_NOMEM, "out of memory");
    for (size_t i = 0; !rc && i < sizeof instructions / sizeof instructions[0]; i++) {
        int n_prompt = 0, n_base = 0, n_quant = 0;
        int32_t *prompt = encode_chat(tok, instructions[i].instruction, &n_prompt);
        if (!prompt) {
            rc = AV_ERR_INVALID;
            break;
        }
        rc = greedy_answer(base, n_threads, prompt, n_prompt, new_tokens, answer_base, &n_base);
        if (!rc)
            rc = greedy_answer(quant, n_threads, prompt, n_prompt, new_tokens, answer_quant,
                               &n_quant);
        free(prompt);
        if (rc) break;
        char *text_base = av_detokenize(tok, answer_base, n_base);
        char *text_quant = av_detokenize(av_model_tokenizer(quant), answer_quant, n_quant);
        if (text_base && text_quant)
            json_array_append_new(results, json_pack(
                "{s:s, s:s, s:s, s:s, s:i, s:i, s:i}", "language", instructions[i].language,
                "instruction", instructions[i].instruction, "base", text_base, "quant",
                text_quant, "base_tokens", n_base, "quant_tokens", n_quant, "first_difference",
                first_difference(answer_base, n_base, answer_quant, n_quant)));
        else rc = av_set_error(AV_ERR_NOMEM, "detokenizing a chat answer failed");
        free(text_base);
        free(text_quant);
    }
    free(answer_base);
    free(answer_quant);
    return rc;
}
