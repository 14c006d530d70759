/*
 * decode.c - token ids to text, whole (av_detokenize) or one token at a time
 * (av_decoder_*), with the rules of SentencePiece's Decode():
 *   - CONTROL pieces (<s>, </s>) produce nothing;
 *   - the UNKNOWN piece produces trainer_spec.unk_surface (" ⁇ " by default);
 *   - a run of BYTE pieces is joined into bytes, and each byte that does not
 *     start a valid UTF-8 character of the run becomes U+FFFD;
 *   - other pieces produce their text with "▁" turned into a space. When the
 *     model adds a dummy prefix or removes extra whitespace, a piece loses
 *     one leading "▁" while the output is still empty and no earlier piece
 *     has lost one (with remove_extra_whitespaces every piece may lose one
 *     until text appears). SentencePiece 0.1.97 decodes ["▁", "▁%"] to " %".
 * Tokens from added_tokens.json past the model's pieces produce their text
 * unchanged, like a USER_DEFINED piece.
 *
 * Both decoders share decode_piece() and the byte-run rule, so the stream of
 * av_decoder_push() outputs concatenates to exactly av_detokenize().
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

static const char replacement_char[] = "\xef\xbf\xbd"; /* U+FFFD */

/* Growable output string. */
typedef struct {
    char *data;
    size_t len, cap;
} text_buffer;

static int buffer_append(text_buffer *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *grown = realloc(b->data, cap);
        if (!grown) return -1;
        b->data = grown;
        b->cap = cap;
    }
    if (n > 0) memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
    return 0;
}

static av_status check_id(const av_tokenizer *tok, int32_t id) {
    if (id < 0 || id >= tok->vocab_size || !av_tokenizer_piece(tok, id)) {
        return av_set_error(AV_ERR_INVALID, "token id %d is not in the vocabulary of %s (%d ids)",
                            (int)id, tok->path, tok->vocab_size);
    }
    return AV_OK;
}

static int is_byte_piece(const av_tokenizer *tok, int32_t id) {
    return id < tok->n_pieces && tok->type[id] == AV_PIECE_BYTE;
}

/* Writes the text of non-byte token `id` to out (room for its piece length
 * or the unknown surface, whichever is longer) and returns its length. With
 * `strip_leading_space` a leading "▁" may be dropped; *leading_space_done is
 * then set when no later piece may drop one. */
static size_t decode_piece(const av_tokenizer *tok, int32_t id, int strip_leading_space,
                           int *leading_space_done, char *out) {
    if (id >= tok->n_pieces) {
        const char *text = tok->extra_text[id - tok->n_pieces];
        size_t len = strlen(text);
        memcpy(out, text, len);
        return len;
    }
    if (tok->type[id] == AV_PIECE_CONTROL) return 0;
    if (tok->type[id] == AV_PIECE_UNKNOWN) {
        size_t len = strlen(tok->unk_surface);
        memcpy(out, tok->unk_surface, len);
        return len;
    }

    const char *piece = av_tok_piece_text(tok, id);
    size_t len = tok->piece_len[id], i = 0, n = 0;
    if (strip_leading_space && (tok->add_dummy_prefix || tok->remove_extra_whitespaces) &&
        len >= AV_SPACE_SYMBOL_LEN && !memcmp(piece, AV_SPACE_SYMBOL, AV_SPACE_SYMBOL_LEN)) {
        i = AV_SPACE_SYMBOL_LEN;
        if (!tok->remove_extra_whitespaces) *leading_space_done = 1;
    }
    while (i < len) {
        if (len - i >= AV_SPACE_SYMBOL_LEN && !memcmp(piece + i, AV_SPACE_SYMBOL, AV_SPACE_SYMBOL_LEN)) {
            out[n++] = ' ';
            i += AV_SPACE_SYMBOL_LEN;
        } else {
            out[n++] = piece[i++];
        }
    }
    return n;
}

/* Returns the most bytes decode_piece() can write for any token. */
static size_t max_piece_text(const av_tokenizer *tok, int32_t id) {
    size_t len = id < tok->n_pieces ? tok->piece_len[id] : strlen(tok->extra_text[id - tok->n_pieces]);
    size_t unk_len = strlen(tok->unk_surface);
    return len > unk_len ? len : unk_len;
}

/* Decodes bytes[0..n) of a byte run: each valid UTF-8 character as itself,
 * each other byte as U+FFFD. Returns the bytes written to out (room for 3n).
 * With `final` = 0 the run may continue, so a trailing incomplete but still
 * possible character is left undecoded, and *consumed is its offset. */
static size_t decode_byte_run(const unsigned char *bytes, size_t n, int final, char *out,
                              size_t *consumed) {
    size_t i = 0, written = 0;
    while (i < n) {
        size_t mblen;
        if (av_utf8_valid_char(bytes + i, n - i, &mblen)) {
            memcpy(out + written, bytes + i, mblen);
            written += mblen;
            i += mblen;
            continue;
        }
        if (!final && bytes[i] >= 0xc0 && bytes[i] <= 0xf7) {
            /* An incomplete character waits for more bytes while every byte
             * after its lead byte is a continuation byte. */
            size_t need = 2;
            if (bytes[i] >= 0xe0) need = 3;
            if (bytes[i] >= 0xf0) need = 4;
            int possible = n - i < need;
            for (size_t k = i + 1; k < n && possible; k++) possible = (bytes[k] & 0xc0) == 0x80;
            if (possible) break;
        }
        memcpy(out + written, replacement_char, 3);
        written += 3;
        i++;
    }
    *consumed = i;
    return written;
}

char *av_detokenize(const av_tokenizer *tok, const int32_t *ids, int n_ids) {
    if (!tok || n_ids < 0 || (!ids && n_ids > 0)) {
        av_set_error(AV_ERR_INVALID, "av_detokenize: NULL tokenizer or ids");
        return NULL;
    }
    text_buffer out = {NULL, 0, 0};
    unsigned char *run = malloc((size_t)n_ids + 1);
    char *scratch = NULL;
    size_t scratch_cap = 0;
    if (!run || buffer_append(&out, "", 0)) goto nomem;

    size_t run_len = 0;
    int leading_space_done = 0;
    for (int i = 0; i <= n_ids; i++) {
        int32_t id = i < n_ids ? ids[i] : -1;
        if (i < n_ids && check_id(tok, id)) goto fail;
        if (i < n_ids && is_byte_piece(tok, id)) {
            run[run_len++] = (unsigned char)av_tok_byte_value(av_tok_piece_text(tok, id), 6);
            continue;
        }
        size_t need = 3 * run_len + (i < n_ids ? max_piece_text(tok, id) : 0);
        if (need > scratch_cap) {
            char *grown = realloc(scratch, need + 16);
            if (!grown) goto nomem;
            scratch = grown;
            scratch_cap = need + 16;
        }
        size_t consumed;
        size_t n = decode_byte_run(run, run_len, 1, scratch, &consumed);
        run_len = 0;
        if (out.len > 0 || n > 0) leading_space_done = 1;
        if (i < n_ids) n += decode_piece(tok, id, !leading_space_done, &leading_space_done, scratch + n);
        if (buffer_append(&out, scratch, n)) goto nomem;
    }
    free(run);
    free(scratch);
    return out.data;

nomem:
    av_set_error(AV_ERR_NOMEM, "out of memory decoding %d tokens", n_ids);
fail:
    free(run);
    free(scratch);
    free(out.data);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Streaming decoder                                                         */
/* ------------------------------------------------------------------------ */

void av_decoder_init(av_decoder *dec, const av_tokenizer *tok) {
    memset(dec, 0, sizeof *dec);
    dec->tok = tok;
}

/* Decodes the held bytes (final: all of them) into out; returns the length
 * or -1 if out_size is too small, in which case nothing changes. */
static int release_pending(av_decoder *dec, int final, char *out, size_t out_size,
                           size_t reserve) {
    char text[3 * sizeof dec->pending];
    size_t consumed;
    size_t n = decode_byte_run(dec->pending, (size_t)dec->n_pending, final, text, &consumed);
    if (n + reserve + 1 > out_size) {
        av_set_error(AV_ERR_RANGE, "av_decoder: output buffer of %zu bytes is too small",
                     out_size);
        return -1;
    }
    memcpy(out, text, n);
    memmove(dec->pending, dec->pending + consumed, (size_t)dec->n_pending - consumed);
    dec->n_pending -= (int)consumed;
    if (n > 0) dec->leading_space_done = 1;
    return (int)n;
}

int av_decoder_push(av_decoder *dec, int32_t id, char *out, size_t out_size) {
    if (!dec || !dec->tok || !out || out_size == 0) {
        av_set_error(AV_ERR_INVALID, "av_decoder_push: NULL decoder or output buffer");
        return -1;
    }
    const av_tokenizer *tok = dec->tok;
    if (check_id(tok, id)) return -1;
    out[0] = '\0';

    if (is_byte_piece(tok, id)) {
        /* Held bytes are always an incomplete character (at most 3 bytes). */
        dec->pending[dec->n_pending++] = (unsigned char)av_tok_byte_value(av_tok_piece_text(tok, id), 6);
        int n = release_pending(dec, 0, out, out_size, 0);
        if (n < 0) {
            dec->n_pending--;
            return -1;
        }
        out[n] = '\0';
        dec->n_tokens++;
        return n;
    }

    int n = release_pending(dec, 1, out, out_size, max_piece_text(tok, id));
    if (n < 0) return -1;
    size_t len = (size_t)n + decode_piece(tok, id, !dec->leading_space_done,
                                          &dec->leading_space_done, out + n);
    if (len > 0) dec->leading_space_done = 1;
    out[len] = '\0';
    dec->n_tokens++;
    return (int)len;
}

int av_decoder_flush(av_decoder *dec, char *out, size_t out_size) {
    if (!dec || !out || out_size == 0) {
        av_set_error(AV_ERR_INVALID, "av_decoder_flush: NULL decoder or output buffer");
        return -1;
    }
    int n = release_pending(dec, 1, out, out_size, 0);
    if (n < 0) return -1;
    out[n] = '\0';
    return n;
}
