/*
 * bpe.c - text to token ids, as SentencePiece's BPE Encode() does it.
 *
 * The steps follow SentencePiece's normalizer.cc, bpe_model.cc and
 * sentencepiece_processor.cc. The tests compare the ids with those of
 * SentencePiece 0.1.97 on Hindi and English texts.
 *   1. Normalize: with the identity normalizer this only replaces each
 *      invalid UTF-8 byte with U+FFFD, optionally drops extra spaces, adds
 *      the dummy-prefix space and turns spaces into "▁".
 *   2. Split the normalized text into characters, a USER_DEFINED piece at a
 *      position being one frozen symbol that never merges.
 *   3. Merge adjacent symbols: repeatedly take the pair whose concatenation
 *      is the piece of highest score (ties: leftmost) from a priority queue,
 *      so a text of n characters costs O(n log n), not O(n^2).
 *   4. Split merged UNUSED pieces back into the two symbols they came from.
 *   5. Map symbols to ids. A symbol that is not a piece becomes its UTF-8
 *      bytes as <0xNN> pieces with byte_fallback, else the unknown id (a run
 *      of unknown symbols giving one unknown id).
 * With AV_TOKENIZE_PARSE_SPECIAL the text is first cut at special-token
 * strings and every piece of text between them goes through these steps on
 * its own, as the Hugging Face LlamaTokenizer (legacy=true) does.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

int av_utf8_valid_char(const unsigned char *s, size_t len, size_t *mblen) {
    *mblen = 1;
    if (s[0] < 0x80) return 1;
    uint32_t cp;
    size_t n;
    if ((s[0] & 0xe0) == 0xc0) {
        n = 2;
        cp = s[0] & 0x1f;
    } else if ((s[0] & 0xf0) == 0xe0) {
        n = 3;
        cp = s[0] & 0x0f;
    } else if ((s[0] & 0xf8) == 0xf0) {
        n = 4;
        cp = s[0] & 0x07;
    } else {
        return 0; /* a continuation byte or 0xf8..0xff */
    }
    if (len < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[n] || (cp >= 0xd800 && cp < 0xe000) || cp > 0x10ffff) return 0;
    *mblen = n;
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Normalization                                                             */
/* ------------------------------------------------------------------------ */

/* Appends one space, as "▁" when whitespace is escaped. */
static size_t append_space(const av_tokenizer *tok, char *out, size_t n) {
    if (tok->escape_whitespaces) {
        memcpy(out + n, AV_SPACE_SYMBOL, AV_SPACE_SYMBOL_LEN);
        return n + AV_SPACE_SYMBOL_LEN;
    }
    out[n] = ' ';
    return n + 1;
}

/* Writes the normalized form of text[0..len) to out, which has room for
 * 3 * len + 3 bytes (every input byte may become "▁" or U+FFFD, plus the
 * dummy prefix), and returns its length. */
static size_t normalize(const av_tokenizer *tok, const char *text, size_t len, char *out) {
    const unsigned char *s = (const unsigned char *)text;
    size_t i = 0, n = 0;
    if (tok->remove_extra_whitespaces)
        while (i < len && s[i] == ' ') i++;
    if (i == len) return 0; /* an empty or all-space text has no tokens */

    if (tok->add_dummy_prefix) n = append_space(tok, out, n);
    int prev_is_space = tok->remove_extra_whitespaces;
    while (i < len) {
        size_t mblen;
        int valid = av_utf8_valid_char(s + i, len - i, &mblen);
        if (s[i] == ' ') {
            if (!prev_is_space) n = append_space(tok, out, n);
            prev_is_space = tok->remove_extra_whitespaces;
        } else {
            if (valid) {
                memcpy(out + n, s + i, mblen);
                n += mblen;
            } else {
                memcpy(out + n, "\xef\xbf\xbd", 3); /* U+FFFD for one invalid byte */
                n += 3;
            }
            prev_is_space = 0;
        }
        i += mblen;
    }
    if (tok->remove_extra_whitespaces) {
        size_t space_len = tok->escape_whitespaces ? AV_SPACE_SYMBOL_LEN : 1;
        const char *space = tok->escape_whitespaces ? AV_SPACE_SYMBOL : " ";
        while (n >= space_len && !memcmp(out + n - space_len, space, space_len)) n -= space_len;
    }
    return n;
}

/* ------------------------------------------------------------------------ */
/* BPE merges                                                                */
/* ------------------------------------------------------------------------ */

/* A symbol of the text being merged: bytes [start, start + len) of the
 * normalized text, in a doubly linked list of the symbols still alive. */
typedef struct {
    int32_t prev, next; /* -1 at the ends */
    uint32_t start, len; /* len 0: merged into its left neighbour */
    int frozen;          /* a USER_DEFINED piece, never merged */
} bpe_symbol;

/* A candidate merge of symbol `left` with its right neighbour `right`,
 * valid while their lengths still add up to `size`. */
typedef struct {
    float score;
    int32_t left, right;
    uint32_t size;
} bpe_pair;

typedef struct {
    const av_tokenizer *tok;
    const char *text; /* normalized text */
    bpe_symbol *symbols;
    bpe_pair *heap;
    size_t n_heap, cap_heap;
    int32_t *unused_left_len; /* [n_pieces] for UNUSED pieces, or NULL */
} bpe_state;

/* Heap order: higher score first, then the leftmost pair. */
static int pair_before(const bpe_pair *a, const bpe_pair *b) {
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(bpe_state *s, bpe_pair pair) {
    if (s->n_heap == s->cap_heap) {
        size_t cap = s->cap_heap ? 2 * s->cap_heap : 64;
        bpe_pair *grown = realloc(s->heap, cap * sizeof *grown);
        if (!grown) return -1;
        s->heap = grown;
        s->cap_heap = cap;
    }
    size_t i = s->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pair_before(&pair, &s->heap[parent])) break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = pair;
    return 0;
}

static bpe_pair heap_pop(bpe_state *s) {
    bpe_pair top = s->heap[0];
    bpe_pair last = s->heap[--s->n_heap];
    size_t i = 0, n = s->n_heap;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && pair_before(&s->heap[child + 1], &s->heap[child])) child++;
        if (!pair_before(&s->heap[child], &last)) break;
        s->heap[i] = s->heap[child];
        i = child;
    }
    if (n) s->heap[i] = last;
    return top;
}

/* Queues the merge of symbols left and right if their concatenation is a
 * mergeable piece. Returns -1 when out of memory. */
static int queue_pair(bpe_state *s, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return 0;
    const bpe_symbol *lhs = &s->symbols[left], *rhs = &s->symbols[right];
    if (lhs->frozen || rhs->frozen) return 0;
    uint32_t size = lhs->len + rhs->len;
    int32_t id = av_piece_map_find(s->tok, &s->tok->normal_map, s->text + lhs->start, size);
    if (id < 0) return 0;
    /* SentencePiece remembers the latest queued split of each UNUSED piece
     * to undo its merge at the end. */
    if (s->unused_left_len && s->tok->type[id] == AV_PIECE_UNUSED)
        s->unused_left_len[id] = (int32_t)lhs->len;
    bpe_pair pair = {s->tok->score[id], left, right, size};
    return heap_push(s, pair);
}

/* Splits text[0..len) into symbols: one character each, or a whole
 * USER_DEFINED piece (the longest one that starts there). */
static int32_t split_symbols(const av_tokenizer *tok, const char *text, size_t len,
                             bpe_symbol *symbols) {
    static const uint8_t char_len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    int32_t n = 0;
    size_t i = 0;
    while (i < len) {
        size_t step = 0;
        int frozen = 0;
        if (tok->max_user_defined_len && tok->user_defined_first_byte[(unsigned char)text[i]]) {
            size_t max = tok->max_user_defined_len < len - i ? tok->max_user_defined_len : len - i;
            for (size_t k = max; k > 0 && !frozen; k--) {
                int32_t id = av_piece_map_find(tok, &tok->normal_map, text + i, k);
                if (id >= 0 && tok->type[id] == AV_PIECE_USER_DEFINED) {
                    step = k;
                    frozen = 1;
                }
            }
        }
        if (!frozen) {
            step = char_len[(unsigned char)text[i] >> 4];
            if (step > len - i) step = len - i;
        }
        symbols[n] = (bpe_symbol){n - 1, -1, (uint32_t)i, (uint32_t)step, frozen};
        if (n > 0) symbols[n - 1].next = n;
        n++;
        i += step;
    }
    return n;
}

/* Runs the merges over the normalized text; returns -1 when out of memory. */
static int merge_symbols(bpe_state *s, int32_t n_symbols) {
    for (int32_t i = 1; i < n_symbols; i++)
        if (queue_pair(s, i - 1, i)) return -1;

    while (s->n_heap > 0) {
        bpe_pair top = heap_pop(s);
        bpe_symbol *lhs = &s->symbols[top.left], *rhs = &s->symbols[top.right];
        /* Skip pairs made stale by an earlier merge of either symbol. */
        if (lhs->len == 0 || rhs->len == 0 || lhs->len + rhs->len != top.size) continue;

        lhs->len += rhs->len;
        lhs->next = rhs->next;
        if (rhs->next >= 0) s->symbols[rhs->next].prev = top.left;
        rhs->len = 0;
        if (queue_pair(s, lhs->prev, top.left) || queue_pair(s, top.left, lhs->next)) return -1;
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Symbols to ids                                                            */
/* ------------------------------------------------------------------------ */

typedef struct {
    int32_t *ids;
    int max_ids;
    int n_ids;
    int prev_is_unk; /* the last id came from an unknown symbol */
} id_writer;

static void write_id(id_writer *w, int32_t id) {
    if (w->n_ids < w->max_ids) w->ids[w->n_ids] = id;
    w->n_ids++;
}

/* Writes the ids of one final symbol text[0..len). */
static void write_symbol(const bpe_state *s, const char *text, size_t len, id_writer *w) {
    const av_tokenizer *tok = s->tok;
    int32_t id = av_tok_piece_to_id(tok, text, len);

    if (tok->type[id] == AV_PIECE_UNUSED && s->unused_left_len && s->unused_left_len[id] > 0 &&
        (size_t)s->unused_left_len[id] < len) {
        size_t left_len = (size_t)s->unused_left_len[id];
        write_symbol(s, text, left_len, w);
        write_symbol(s, text + left_len, len - left_len, w);
        return;
    }

    int is_unk = id == tok->unk_id;
    if (is_unk && tok->byte_fallback) {
        for (size_t i = 0; i < len; i++) write_id(w, tok->byte_piece_id[(unsigned char)text[i]]);
    } else if (!(is_unk && w->prev_is_unk)) {
        write_id(w, id);
    }
    w->prev_is_unk = is_unk;
}

/* Returns the end of the word that starts at text[start]: the first "▁"
 * after the word's leading "▁"s and at least one other character, or len.
 * The result is above start when start < len. */
static size_t word_end(const char *text, size_t start, size_t len) {
    size_t i = start;
    while (len - i >= AV_SPACE_SYMBOL_LEN && !memcmp(text + i, AV_SPACE_SYMBOL, AV_SPACE_SYMBOL_LEN))
        i += AV_SPACE_SYMBOL_LEN;
    while (i < len) {
        const char *p = memchr(text + i, AV_SPACE_SYMBOL[0], len - i);
        if (!p) return len;
        i = (size_t)(p - text);
        if (len - i >= AV_SPACE_SYMBOL_LEN && !memcmp(p, AV_SPACE_SYMBOL, AV_SPACE_SYMBOL_LEN))
            return i;
        i++;
    }
    return len;
}

/* Merges normalized[start..end) and writes the ids of its symbols. */
static int encode_symbols(bpe_state *s, const char *normalized, size_t start, size_t end,
                          id_writer *w) {
    s->text = normalized + start;
    s->n_heap = 0;
    int32_t n_symbols = split_symbols(s->tok, s->text, end - start, s->symbols);
    if (merge_symbols(s, n_symbols)) return -1;
    for (int32_t i = n_symbols ? 0 : -1; i >= 0; i = s->symbols[i].next)
        write_symbol(s, s->text + s->symbols[i].start, s->symbols[i].len, w);
    return 0;
}

/* Encodes one piece of text (no special tokens in it) and appends its ids.
 * When the model allows it, each word is merged on its own: the heap stays
 * small and the result is the same. Returns 0, or -1 on error. */
static int encode_text(const av_tokenizer *tok, const char *text, size_t len, id_writer *w) {
    if (len == 0) return 0;
    char *normalized = malloc(3 * len + 3);
    bpe_state s = {tok, NULL, NULL, NULL, 0, 0, NULL};
    int rc = -1;
    if (!normalized) goto done;
    size_t n = normalize(tok, text, len, normalized);
    size_t max_symbols = n;
    if (tok->words_are_independent) {
        max_symbols = 0;
        for (size_t start = 0, end; start < n; start = end) {
            end = word_end(normalized, start, n);
            if (end - start > max_symbols) max_symbols = end - start;
        }
    }
    s.symbols = malloc((max_symbols + 1) * sizeof *s.symbols);
    if (!s.symbols) goto done;
    if (tok->has_unused) {
        s.unused_left_len = calloc((size_t)tok->n_pieces, sizeof *s.unused_left_len);
        if (!s.unused_left_len) goto done;
    }

    w->prev_is_unk = 0;
    if (tok->words_are_independent) {
        for (size_t start = 0, end; start < n; start = end) {
            end = word_end(normalized, start, n);
            if (encode_symbols(&s, normalized, start, end, w)) goto done;
        }
    } else if (encode_symbols(&s, normalized, 0, n, w)) {
        goto done;
    }
    rc = 0;
done:
    if (rc) av_set_error(AV_ERR_NOMEM, "out of memory tokenizing %zu bytes", len);
    free(normalized);
    free(s.symbols);
    free(s.heap);
    free(s.unused_left_len);
    return rc;
}

/* Returns the longest special token that starts at text[0..len), or NULL. */
static const av_special_token *match_special(const av_tokenizer *tok, const char *text,
                                             size_t len) {
    for (int i = 0; i < tok->n_specials; i++) {
        const av_special_token *sp = &tok->specials[i];
        if (sp->len <= len && !memcmp(text, sp->text, sp->len)) return sp;
    }
    return NULL;
}

/* Encodes text, cutting it at special tokens, which become their ids. */
static int encode_with_specials(const av_tokenizer *tok, const char *text, size_t len,
                                id_writer *w) {
    uint8_t first_byte[256] = {0};
    for (int i = 0; i < tok->n_specials; i++) first_byte[(unsigned char)tok->specials[i].text[0]] = 1;

    size_t segment_start = 0;
    for (size_t i = 0; i < len;) {
        const av_special_token *sp =
            first_byte[(unsigned char)text[i]] ? match_special(tok, text + i, len - i) : NULL;
        if (!sp) {
            i++;
            continue;
        }
        if (encode_text(tok, text + segment_start, i - segment_start, w)) return -1;
        write_id(w, sp->id);
        i += sp->len;
        segment_start = i;
    }
    return encode_text(tok, text + segment_start, len - segment_start, w);
}

int av_tokenize(const av_tokenizer *tok, const char *text, size_t len, int flags,
                int32_t *ids, int max_ids) {
    if (!tok || (!text && len > 0) || max_ids < 0 || (!ids && max_ids > 0)) {
        av_set_error(AV_ERR_INVALID, "av_tokenize: NULL tokenizer, text or ids");
        return -1;
    }
    if (len > AV_TOK_MAX_TEXT_BYTES) {
        av_set_error(AV_ERR_RANGE, "text of %zu bytes exceeds the limit of %u bytes per call",
                     len, AV_TOK_MAX_TEXT_BYTES);
        return -1;
    }
    if ((flags & AV_TOKENIZE_BOS) && tok->bos_id < 0) {
        av_set_error(AV_ERR_INVALID, "%s: the model has no bos piece to prepend", tok->path);
        return -1;
    }
    if ((flags & AV_TOKENIZE_EOS) && tok->eos_id < 0) {
        av_set_error(AV_ERR_INVALID, "%s: the model has no eos piece to append", tok->path);
        return -1;
    }

    id_writer w = {ids, max_ids, 0, 0};
    if (flags & AV_TOKENIZE_BOS) write_id(&w, tok->bos_id);
    int rc = (flags & AV_TOKENIZE_PARSE_SPECIAL) ? encode_with_specials(tok, text, len, &w)
                                                 : encode_text(tok, text, len, &w);
    if (rc) return -1;
    if (flags & AV_TOKENIZE_EOS) write_id(&w, tok->eos_id);
    return w.n_ids;
}
