/*
 * sentencepiece_model.c - reads a SentencePiece model (tokenizer.model) and
 * added_tokens.json into an av_tokenizer.
 *
 * tokenizer.model is a protobuf ModelProto (sentencepiece_model.proto):
 *   1 pieces           repeated { 1 piece: string, 2 score: float, 3 type: enum }
 *   2 trainer_spec     3 model_type, 24 treat_whitespace_as_suffix,
 *                      35 byte_fallback, 44 unk_surface, 45..48 unk/bos/eos/pad piece
 *   3 normalizer_spec  1 name, 2 precompiled_charsmap, 3 add_dummy_prefix,
 *                      4 remove_extra_whitespaces, 5 escape_whitespaces
 *   5 denormalizer_spec (same message as normalizer_spec)
 * A small wire-format reader below decodes it; every varint and length is
 * checked against the buffer, so a truncated or corrupt file is an error.
 * Only what the BPE encoder and the decoder implement is accepted: the BPE
 * model type and the identity normalizer (no precompiled character map).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "tokenizer_internal.h"

/* ------------------------------------------------------------------------ */
/* Protobuf wire format                                                      */
/* ------------------------------------------------------------------------ */

enum { PB_VARINT = 0, PB_FIXED64 = 1, PB_BYTES = 2, PB_FIXED32 = 5 };

typedef struct {
    const uint8_t *p, *end;
    const uint8_t *base; /* start of the file, for offsets in messages */
    const char *path;
} pb_reader;

static av_status pb_error(const pb_reader *r, const char *what) {
    return av_set_error(AV_ERR_FORMAT,
                        "%s: invalid SentencePiece model: %s at byte %zu; the file is truncated "
                        "or not a tokenizer.model protobuf",
                        r->path, what, (size_t)(r->p - r->base));
}

static av_status pb_read_varint(pb_reader *r, uint64_t *value) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->p >= r->end) return pb_error(r, "varint runs past the end");
        uint8_t byte = *r->p++;
        v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80)) {
            *value = v;
            return AV_OK;
        }
    }
    return pb_error(r, "varint longer than 10 bytes");
}

/* Reads a field key: field number and wire type. */
static av_status pb_read_key(pb_reader *r, uint32_t *field, int *wire) {
    uint64_t key;
    av_status st = pb_read_varint(r, &key);
    if (st) return st;
    *field = (uint32_t)(key >> 3);
    *wire = (int)(key & 7);
    if (*field == 0 || key >> 32) return pb_error(r, "invalid field number");
    return AV_OK;
}

/* Reads a length-delimited field into a sub-reader over its bytes. */
static av_status pb_read_bytes(pb_reader *r, pb_reader *sub) {
    uint64_t len;
    av_status st = pb_read_varint(r, &len);
    if (st) return st;
    if (len > (uint64_t)(r->end - r->p)) return pb_error(r, "length runs past the end");
    *sub = *r;
    sub->end = r->p + len;
    r->p += len;
    return AV_OK;
}

static av_status pb_read_fixed32(pb_reader *r, uint32_t *value) {
    if (r->end - r->p < 4) return pb_error(r, "fixed32 runs past the end");
    *value = (uint32_t)r->p[0] | (uint32_t)r->p[1] << 8 | (uint32_t)r->p[2] << 16 |
             (uint32_t)r->p[3] << 24;
    r->p += 4;
    return AV_OK;
}

static av_status pb_skip(pb_reader *r, int wire) {
    uint64_t ignored;
    pb_reader sub;
    switch (wire) {
    case PB_VARINT: return pb_read_varint(r, &ignored);
    case PB_FIXED64:
        if (r->end - r->p < 8) return pb_error(r, "fixed64 runs past the end");
        r->p += 8;
        return AV_OK;
    case PB_BYTES: return pb_read_bytes(r, &sub);
    case PB_FIXED32:
        if (r->end - r->p < 4) return pb_error(r, "fixed32 runs past the end");
        r->p += 4;
        return AV_OK;
    }
    /* Groups (3, 4) are deprecated and absent from sentencepiece_model.proto. */
    return pb_error(r, "unsupported wire type");
}

/* Checks that field `field` has wire type `expected`. */
static av_status pb_expect(const pb_reader *r, uint32_t field, int wire, int expected) {
    if (wire == expected) return AV_OK;
    char message[80];
    snprintf(message, sizeof message, "field %u has wire type %d, expected %d", field, wire,
             expected);
    return pb_error(r, message);
}

/* ------------------------------------------------------------------------ */
/* ModelProto messages                                                       */
/* ------------------------------------------------------------------------ */

typedef struct {
    const uint8_t *text;
    size_t len;
} pb_string;

typedef struct {
    pb_string text;
    float score;
    int type;
} raw_piece;

typedef struct {
    raw_piece *pieces;
    int n_pieces, cap_pieces;
    /* trainer_spec */
    int model_type; /* 1 unigram (the proto default), 2 bpe, 3 word, 4 char */
    int byte_fallback;
    int treat_whitespace_as_suffix;
    pb_string unk_surface, unk_piece, bos_piece, eos_piece, pad_piece;
    int has_unk_surface, has_unk_piece, has_bos_piece, has_eos_piece, has_pad_piece;
    /* normalizer_spec */
    pb_string normalizer_name;
    size_t charsmap_bytes;
    int add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
    /* denormalizer_spec */
    pb_string denormalizer_name;
    size_t denormalizer_charsmap_bytes;
} raw_model;

static av_status parse_piece(pb_reader *r, raw_piece *piece) {
    piece->text.text = NULL;
    piece->text.len = 0;
    piece->score = 0.0f;
    piece->type = AV_PIECE_NORMAL;
    int has_text = 0;
    while (r->p < r->end) {
        uint32_t field;
        int wire;
        uint64_t v;
        uint32_t bits = 0;
        pb_reader sub;
        av_status st = pb_read_key(r, &field, &wire);
        if (st) return st;
        switch (field) {
        case 1:
            if ((st = pb_expect(r, field, wire, PB_BYTES)) || (st = pb_read_bytes(r, &sub)))
                return st;
            piece->text.text = sub.p;
            piece->text.len = (size_t)(sub.end - sub.p);
            has_text = 1;
            break;
        case 2:
            if ((st = pb_expect(r, field, wire, PB_FIXED32)) || (st = pb_read_fixed32(r, &bits)))
                return st;
            memcpy(&piece->score, &bits, sizeof bits);
            break;
        case 3:
            if ((st = pb_expect(r, field, wire, PB_VARINT)) || (st = pb_read_varint(r, &v)))
                return st;
            piece->type = v > 1000 ? 0 : (int)v;
            break;
        default:
            if ((st = pb_skip(r, wire))) return st;
        }
    }
    if (!has_text) return pb_error(r, "piece without text");
    return AV_OK;
}

static av_status read_string(pb_reader *r, uint32_t field, int wire, pb_string *out, int *has) {
    pb_reader sub;
    av_status st = pb_expect(r, field, wire, PB_BYTES);
    if (!st) st = pb_read_bytes(r, &sub);
    if (st) return st;
    out->text = sub.p;
    out->len = (size_t)(sub.end - sub.p);
    if (has) *has = 1;
    return AV_OK;
}

static av_status read_bool(pb_reader *r, uint32_t field, int wire, int *out) {
    uint64_t v;
    av_status st = pb_expect(r, field, wire, PB_VARINT);
    if (!st) st = pb_read_varint(r, &v);
    if (st) return st;
    *out = v != 0;
    return AV_OK;
}

static av_status parse_trainer_spec(pb_reader *r, raw_model *m) {
    while (r->p < r->end) {
        uint32_t field;
        int wire;
        uint64_t v;
        av_status st = pb_read_key(r, &field, &wire);
        if (st) return st;
        switch (field) {
        case 3:
            if ((st = pb_expect(r, field, wire, PB_VARINT)) || (st = pb_read_varint(r, &v)))
                return st;
            m->model_type = v > 1000 ? 0 : (int)v;
            break;
        case 24: st = read_bool(r, field, wire, &m->treat_whitespace_as_suffix); break;
        case 35: st = read_bool(r, field, wire, &m->byte_fallback); break;
        case 44: st = read_string(r, field, wire, &m->unk_surface, &m->has_unk_surface); break;
        case 45: st = read_string(r, field, wire, &m->unk_piece, &m->has_unk_piece); break;
        case 46: st = read_string(r, field, wire, &m->bos_piece, &m->has_bos_piece); break;
        case 47: st = read_string(r, field, wire, &m->eos_piece, &m->has_eos_piece); break;
        case 48: st = read_string(r, field, wire, &m->pad_piece, &m->has_pad_piece); break;
        default: st = pb_skip(r, wire);
        }
        if (st) return st;
    }
    return AV_OK;
}

/* Parses a NormalizerSpec; the flags are only stored for the normalizer
 * (denormalize = 0), since the decoder applies no denormalizer. */
static av_status parse_normalizer_spec(pb_reader *r, raw_model *m, int denormalize) {
    while (r->p < r->end) {
        uint32_t field;
        int wire;
        pb_string charsmap = {NULL, 0};
        int ignored;
        av_status st = pb_read_key(r, &field, &wire);
        if (st) return st;
        switch (field) {
        case 1:
            st = read_string(r, field, wire,
                             denormalize ? &m->denormalizer_name : &m->normalizer_name, NULL);
            break;
        case 2:
            st = read_string(r, field, wire, &charsmap, NULL);
            if (denormalize)
                m->denormalizer_charsmap_bytes = charsmap.len;
            else
                m->charsmap_bytes = charsmap.len;
            break;
        case 3: st = read_bool(r, field, wire, denormalize ? &ignored : &m->add_dummy_prefix); break;
        case 4:
            st = read_bool(r, field, wire,
                           denormalize ? &ignored : &m->remove_extra_whitespaces);
            break;
        case 5:
            st = read_bool(r, field, wire, denormalize ? &ignored : &m->escape_whitespaces);
            break;
        default: st = pb_skip(r, wire);
        }
        if (st) return st;
    }
    return AV_OK;
}

static av_status parse_model(pb_reader *r, raw_model *m) {
    while (r->p < r->end) {
        uint32_t field;
        int wire;
        pb_reader sub;
        av_status st = pb_read_key(r, &field, &wire);
        if (st) return st;
        if (field >= 1 && field <= 5 && field != 4) {
            if ((st = pb_expect(r, field, wire, PB_BYTES)) || (st = pb_read_bytes(r, &sub)))
                return st;
        }
        switch (field) {
        case 1:
            if (m->n_pieces == AV_TOK_MAX_PIECES) {
                return av_set_error(AV_ERR_RANGE, "%s: more than %d pieces; not a tokenizer",
                                    r->path, AV_TOK_MAX_PIECES);
            }
            if (m->n_pieces == m->cap_pieces) {
                int cap = m->cap_pieces ? 2 * m->cap_pieces : 1024;
                raw_piece *grown = realloc(m->pieces, (size_t)cap * sizeof *grown);
                if (!grown) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", r->path);
                m->pieces = grown;
                m->cap_pieces = cap;
            }
            if ((st = parse_piece(&sub, &m->pieces[m->n_pieces]))) return st;
            m->n_pieces++;
            break;
        case 2: st = parse_trainer_spec(&sub, m); break;
        case 3: st = parse_normalizer_spec(&sub, m, 0); break;
        case 5: st = parse_normalizer_spec(&sub, m, 1); break;
        default: st = pb_skip(r, wire); /* 4 self_test_data and unknown fields */
        }
        if (st) return st;
    }
    return AV_OK;
}

/* ------------------------------------------------------------------------ */
/* Piece maps                                                                */
/* ------------------------------------------------------------------------ */

/* FNV-1a, 32 bits. */
static uint32_t hash_bytes(const char *s, size_t len) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 16777619u;
    }
    return h;
}

int32_t av_piece_map_find(const av_tokenizer *tok, const av_piece_map *map, const char *s,
                          size_t len) {
    if (!map->slots) return -1;
    for (uint32_t i = hash_bytes(s, len) & map->mask;; i = (i + 1) & map->mask) {
        int32_t id = map->slots[i];
        if (id < 0) return -1;
        if (tok->piece_len[id] == len && !memcmp(av_tok_piece_text(tok, id), s, len)) return id;
    }
}

/* Inserts piece `id`; returns 0, or -1 if a piece with its text is present. */
static int piece_map_insert(const av_tokenizer *tok, av_piece_map *map, int32_t id) {
    const char *s = av_tok_piece_text(tok, id);
    size_t len = tok->piece_len[id];
    for (uint32_t i = hash_bytes(s, len) & map->mask;; i = (i + 1) & map->mask) {
        int32_t other = map->slots[i];
        if (other < 0) {
            map->slots[i] = id;
            return 0;
        }
        if (tok->piece_len[other] == len && !memcmp(av_tok_piece_text(tok, other), s, len))
            return -1;
    }
}

static av_status piece_map_init(av_piece_map *map, int n_entries) {
    uint32_t capacity = 16;
    while (capacity < 2u * (uint32_t)n_entries) capacity *= 2; /* load factor <= 1/2 */
    map->slots = malloc(capacity * sizeof *map->slots);
    if (!map->slots) return av_set_error(AV_ERR_NOMEM, "out of memory for the piece map");
    memset(map->slots, 0xff, capacity * sizeof *map->slots); /* all -1 */
    map->mask = capacity - 1;
    return AV_OK;
}

int32_t av_tok_piece_to_id(const av_tokenizer *tok, const char *s, size_t len) {
    int32_t id = av_piece_map_find(tok, &tok->reserved_map, s, len);
    if (id >= 0) return id;
    id = av_piece_map_find(tok, &tok->normal_map, s, len);
    return id >= 0 ? id : tok->unk_id;
}

static int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

int av_tok_byte_value(const char *s, size_t len) {
    if (len != 6 || memcmp(s, "<0x", 3) || s[5] != '>') return -1;
    int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
    if (hi < 0 || lo < 0) return -1;
    return hi * 16 + lo;
}

/* ------------------------------------------------------------------------ */
/* Building the tokenizer                                                    */
/* ------------------------------------------------------------------------ */

static const char *model_type_name(int type) {
    switch (type) {
    case 1: return "UNIGRAM";
    case 2: return "BPE";
    case 3: return "WORD";
    case 4: return "CHAR";
    }
    return "unknown";
}

static int string_equals(pb_string s, const char *text) {
    return s.len == strlen(text) && !memcmp(s.text, text, s.len);
}

/* Rejects settings the encoder or decoder does not implement. */
static av_status check_model_settings(const char *path, const raw_model *m) {
    if (m->model_type != 2) {
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: SentencePiece model type %s (%d) is not supported; only BPE "
                            "models (Llama, Mistral) are",
                            path, model_type_name(m->model_type), m->model_type);
    }
    int identity = m->normalizer_name.len == 0 || string_equals(m->normalizer_name, "identity");
    if (!identity || m->charsmap_bytes > 0) {
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: normalizer '%.*s' (precompiled character map of %zu bytes) is "
                            "not supported; only the 'identity' normalizer is",
                            path, (int)m->normalizer_name.len, (const char *)m->normalizer_name.text,
                            m->charsmap_bytes);
    }
    if (m->denormalizer_charsmap_bytes > 0) {
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: denormalizer '%.*s' (precompiled character map of %zu bytes) is "
                            "not supported",
                            path, (int)m->denormalizer_name.len,
                            (const char *)m->denormalizer_name.text, m->denormalizer_charsmap_bytes);
    }
    if (m->treat_whitespace_as_suffix) {
        return av_set_error(AV_ERR_UNSUPPORTED,
                            "%s: treat_whitespace_as_suffix=true is not supported", path);
    }
    if (m->n_pieces == 0) return av_set_error(AV_ERR_FORMAT, "%s: the model has no pieces", path);
    return AV_OK;
}

static char *dup_string(pb_string s) {
    char *out = malloc(s.len + 1);
    if (!out) return NULL;
    if (s.len) memcpy(out, s.text, s.len);
    out[s.len] = '\0';
    return out;
}

/* Copies the piece texts, scores and types, and checks each piece. */
static av_status copy_pieces(av_tokenizer *tok, const char *path, const raw_model *m) {
    size_t arena_bytes = 0;
    for (int i = 0; i < m->n_pieces; i++) {
        const raw_piece *p = &m->pieces[i];
        if (p->text.len == 0)
            return av_set_error(AV_ERR_FORMAT, "%s: piece %d is empty", path, i);
        if (p->text.len > AV_TOK_MAX_PIECE_BYTES) {
            return av_set_error(AV_ERR_FORMAT, "%s: piece %d has %zu bytes, the limit is %d",
                                path, i, p->text.len, AV_TOK_MAX_PIECE_BYTES);
        }
        if (p->type < AV_PIECE_NORMAL || p->type > AV_PIECE_BYTE) {
            return av_set_error(AV_ERR_FORMAT, "%s: piece %d has invalid type %d", path, i,
                                p->type);
        }
        if (isnan(p->score))
            return av_set_error(AV_ERR_FORMAT, "%s: piece %d has a NaN score", path, i);
        arena_bytes += p->text.len + 1;
    }

    size_t n = (size_t)(unsigned)m->n_pieces; /* 1 .. AV_TOK_MAX_PIECES */
    tok->n_pieces = m->n_pieces;
    tok->arena = malloc(arena_bytes);
    tok->piece_offset = malloc(n * sizeof *tok->piece_offset);
    tok->piece_len = malloc(n * sizeof *tok->piece_len);
    tok->score = malloc(n * sizeof *tok->score);
    tok->type = malloc(n);
    if (!tok->arena || !tok->piece_offset || !tok->piece_len || !tok->score || !tok->type)
        return av_set_error(AV_ERR_NOMEM, "%s: out of memory for %d pieces", path, m->n_pieces);

    size_t offset = 0;
    for (int i = 0; i < m->n_pieces; i++) {
        const raw_piece *p = &m->pieces[i];
        memcpy(tok->arena + offset, p->text.text, p->text.len);
        tok->arena[offset + p->text.len] = '\0';
        tok->piece_offset[i] = (uint32_t)offset;
        tok->piece_len[i] = (uint32_t)p->text.len;
        tok->score[i] = p->score;
        tok->type[i] = (uint8_t)p->type;
        offset += p->text.len + 1;
    }
    return AV_OK;
}

/* Fills both piece maps and the per-type tables, with SentencePiece's
 * checks: unique texts, exactly one UNKNOWN piece, BYTE pieces only with
 * byte_fallback and only of the form <0xNN>. */
static av_status index_pieces(av_tokenizer *tok, const char *path) {
    int n_normal = 0, n_reserved = 0;
    for (int i = 0; i < tok->n_pieces; i++) {
        int t = tok->type[i];
        if (t == AV_PIECE_NORMAL || t == AV_PIECE_USER_DEFINED || t == AV_PIECE_UNUSED)
            n_normal++;
        else
            n_reserved++;
    }
    av_status st = piece_map_init(&tok->normal_map, n_normal);
    if (!st) st = piece_map_init(&tok->reserved_map, n_reserved);
    if (st) return st;

    tok->unk_id = -1;
    for (int i = 0; i < tok->n_pieces; i++) {
        int t = tok->type[i];
        const char *text = av_tok_piece_text(tok, i);
        int mergeable = t == AV_PIECE_NORMAL || t == AV_PIECE_USER_DEFINED || t == AV_PIECE_UNUSED;
        if (piece_map_insert(tok, mergeable ? &tok->normal_map : &tok->reserved_map, i)) {
            return av_set_error(AV_ERR_FORMAT, "%s: piece %d '%s' is defined twice", path, i,
                                text);
        }
        if (t == AV_PIECE_UNKNOWN) {
            if (tok->unk_id >= 0) {
                return av_set_error(AV_ERR_FORMAT,
                                    "%s: pieces %d and %d are both of type UNKNOWN", path,
                                    tok->unk_id, i);
            }
            tok->unk_id = i;
        }
        if (t == AV_PIECE_BYTE) {
            if (!tok->byte_fallback) {
                return av_set_error(AV_ERR_FORMAT,
                                    "%s: piece %d '%s' is of type BYTE but byte_fallback is off",
                                    path, i, text);
            }
            if (av_tok_byte_value(text, tok->piece_len[i]) < 0) {
                return av_set_error(AV_ERR_FORMAT,
                                    "%s: BYTE piece %d is '%s', expected the form <0xNN>", path,
                                    i, text);
            }
        }
        if (t == AV_PIECE_UNUSED) tok->has_unused = 1;
        if (t == AV_PIECE_USER_DEFINED) {
            tok->user_defined_first_byte[(unsigned char)text[0]] = 1;
            if (tok->piece_len[i] > tok->max_user_defined_len)
                tok->max_user_defined_len = tok->piece_len[i];
        }
    }
    if (tok->unk_id < 0)
        return av_set_error(AV_ERR_FORMAT, "%s: the model has no piece of type UNKNOWN", path);

    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        tok->byte_piece_id[b] = av_tok_piece_to_id(tok, name, 6);
    }
    return AV_OK;
}

/* Returns the id of a special piece as SentencePiece's bos_id() and friends
 * do: the piece named in trainer_spec if it has type `type`, else -1. */
static int special_piece_id(const av_tokenizer *tok, pb_string name, int has_name,
                            const char *default_name, int type) {
    const char *text = has_name ? (const char *)name.text : default_name;
    size_t len = has_name ? name.len : strlen(default_name);
    int32_t id = av_tok_piece_to_id(tok, text, len);
    return id >= 0 && tok->type[id] == type ? id : -1;
}

/* Rebuilds the list of strings that AV_TOKENIZE_PARSE_SPECIAL matches:
 * the texts of CONTROL and UNKNOWN pieces and the added tokens, longest
 * first so that the longest match wins. An added token takes precedence over
 * a piece with the same text. */
static av_status build_specials(av_tokenizer *tok) {
    int n_max = tok->n_added;
    for (int i = 0; i < tok->n_pieces; i++)
        if (tok->type[i] == AV_PIECE_CONTROL || tok->type[i] == AV_PIECE_UNKNOWN) n_max++;

    av_special_token *specials = malloc((size_t)(n_max ? n_max : 1) * sizeof *specials);
    if (!specials) return av_set_error(AV_ERR_NOMEM, "out of memory for special tokens");
    int n = 0;
    for (int i = 0; i < tok->n_added; i++) specials[n++] = tok->added[i];
    for (int i = 0; i < tok->n_pieces; i++) {
        if (tok->type[i] != AV_PIECE_CONTROL && tok->type[i] != AV_PIECE_UNKNOWN) continue;
        av_special_token s = {av_tok_piece_text(tok, i), tok->piece_len[i], i};
        int duplicate = 0;
        for (int j = 0; j < tok->n_added && !duplicate; j++)
            duplicate = tok->added[j].len == s.len && !memcmp(tok->added[j].text, s.text, s.len);
        if (!duplicate) specials[n++] = s;
    }
    /* Insertion sort by length, descending: the list is short. */
    for (int i = 1; i < n; i++) {
        av_special_token s = specials[i];
        int j = i;
        for (; j > 0 && specials[j - 1].len < s.len; j--) specials[j] = specials[j - 1];
        specials[j] = s;
    }
    free(tok->specials);
    tok->specials = specials;
    tok->n_specials = n;
    return AV_OK;
}

/* Sets words_are_independent (see tokenizer_internal.h). */
static void check_word_independence(av_tokenizer *tok) {
    tok->words_are_independent = tok->escape_whitespaces && !tok->has_unused;
    for (int i = 0; i < tok->n_pieces && tok->words_are_independent; i++) {
        int t = tok->type[i];
        if (t != AV_PIECE_NORMAL && t != AV_PIECE_USER_DEFINED) continue;
        const char *text = av_tok_piece_text(tok, i);
        size_t len = tok->piece_len[i];
        for (size_t k = 1; k + AV_SPACE_SYMBOL_LEN <= len; k++) {
            if (memcmp(text + k, AV_SPACE_SYMBOL, AV_SPACE_SYMBOL_LEN)) continue;
            int after_space = k >= AV_SPACE_SYMBOL_LEN &&
                              !memcmp(text + k - AV_SPACE_SYMBOL_LEN, AV_SPACE_SYMBOL,
                                      AV_SPACE_SYMBOL_LEN);
            if (!after_space) {
                tok->words_are_independent = 0;
                break;
            }
        }
    }
}

static av_status build_tokenizer(av_tokenizer *tok, const char *path, const raw_model *m) {
    av_status st = check_model_settings(path, m);
    if (st) return st;
    tok->byte_fallback = m->byte_fallback;
    tok->add_dummy_prefix = m->add_dummy_prefix;
    tok->remove_extra_whitespaces = m->remove_extra_whitespaces;
    tok->escape_whitespaces = m->escape_whitespaces;
    if ((st = copy_pieces(tok, path, m)) || (st = index_pieces(tok, path))) return st;
    check_word_independence(tok);

    tok->bos_id = special_piece_id(tok, m->bos_piece, m->has_bos_piece, "<s>", AV_PIECE_CONTROL);
    tok->eos_id = special_piece_id(tok, m->eos_piece, m->has_eos_piece, "</s>", AV_PIECE_CONTROL);
    tok->pad_id = special_piece_id(tok, m->pad_piece, m->has_pad_piece, "<pad>", AV_PIECE_CONTROL);
    pb_string default_surface = {(const uint8_t *)" \xe2\x81\x87 ", 5}; /* " ⁇ " */
    tok->unk_surface = dup_string(m->has_unk_surface ? m->unk_surface : default_surface);
    if (!tok->unk_surface) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    tok->vocab_size = tok->n_pieces;
    return build_specials(tok);
}

static av_status read_file(const char *path, uint8_t **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        return av_set_error(AV_ERR_IO, "%s: cannot open the tokenizer model: %s", path,
                            strerror(errno));
    }

    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        if (len == cap) {
            if (cap >= AV_TOK_MAX_FILE_BYTES) {
                free(buf);
                fclose(f);
                return av_set_error(AV_ERR_RANGE, "%s: larger than %u bytes; not a tokenizer",
                                    path, AV_TOK_MAX_FILE_BYTES);
            }
            uint8_t *grown = realloc(buf, cap * 2);
            if (!grown) break;
            buf = grown;
            cap *= 2;
        }
        size_t got = fread(buf + len, 1, cap - len, f);
        len += got;
        if (got == 0) break;
    }

    int failed = ferror(f);
    fclose(f);
    if (!buf) return av_set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    if (failed) {
        free(buf);
        return av_set_error(AV_ERR_IO, "%s: read failed", path);
    }
    *data = buf;
    *size = len;
    return AV_OK;
}

av_tokenizer *av_tokenizer_load(const char *path) {
    if (!path) {
        av_set_error(AV_ERR_INVALID, "av_tokenizer_load: path is NULL");
        return NULL;
    }
    uint8_t *data = NULL;
    size_t size = 0;
    if (read_file(path, &data, &size)) return NULL;

    raw_model m;
    memset(&m, 0, sizeof m);
    m.model_type = 1; /* proto defaults */
    m.add_dummy_prefix = 1;
    m.remove_extra_whitespaces = 1;
    m.escape_whitespaces = 1;

    av_tokenizer *tok = calloc(1, sizeof *tok);
    av_status st = tok ? AV_OK : av_set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    if (!st) {
        tok->path = strdup(path);
        if (!tok->path) st = av_set_error(AV_ERR_NOMEM, "%s: out of memory", path);
    }
    if (!st) {
        pb_reader r = {data, data + size, data, path};
        st = parse_model(&r, &m);
    }
    if (!st) st = build_tokenizer(tok, path, &m);
    free(m.pieces);
    free(data);
    if (st) {
        av_tokenizer_free(tok);
        return NULL;
    }
    return tok;
}

void av_tokenizer_free(av_tokenizer *tok) {
    if (!tok) return;
    free(tok->path);
    free(tok->arena);
    free(tok->piece_offset);
    free(tok->piece_len);
    free(tok->score);
    free(tok->type);
    free(tok->normal_map.slots);
    free(tok->reserved_map.slots);
    free(tok->unk_surface);
    for (int i = 0; i < tok->n_added; i++) free((char *)tok->added[i].text);
    free(tok->added);
    free(tok->extra_text);
    free(tok->specials);
    free(tok);
}

/* ------------------------------------------------------------------------ */
/* added_tokens.json                                                         */
/* ------------------------------------------------------------------------ */

/* Adds or replaces one added token. */
static av_status add_token(av_tokenizer *tok, const char *text, int32_t id) {
    for (int i = 0; i < tok->n_added; i++) {
        if (!strcmp(tok->added[i].text, text)) {
            tok->added[i].id = id;
            return AV_OK;
        }
    }
    av_special_token *grown = realloc(tok->added, (size_t)(tok->n_added + 1) * sizeof *grown);
    if (!grown) return av_set_error(AV_ERR_NOMEM, "out of memory for added tokens");
    tok->added = grown;
    char *copy = strdup(text);
    if (!copy) return av_set_error(AV_ERR_NOMEM, "out of memory for added tokens");
    tok->added[tok->n_added++] = (av_special_token){copy, strlen(copy), id};
    return AV_OK;
}

/* Recomputes vocab_size and the texts of ids past the model's pieces. */
static av_status index_added_tokens(av_tokenizer *tok) {
    int vocab_size = tok->n_pieces;
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].id + 1 > vocab_size) vocab_size = tok->added[i].id + 1;
    free(tok->extra_text);
    tok->extra_text = NULL;
    tok->vocab_size = tok->n_pieces;
    if (vocab_size > tok->n_pieces) {
        tok->extra_text = calloc((size_t)(vocab_size - tok->n_pieces), sizeof *tok->extra_text);
        if (!tok->extra_text) return av_set_error(AV_ERR_NOMEM, "out of memory for added tokens");
        for (int i = 0; i < tok->n_added; i++) {
            if (tok->added[i].id >= tok->n_pieces)
                tok->extra_text[tok->added[i].id - tok->n_pieces] = (char *)tok->added[i].text;
        }
    }
    tok->vocab_size = vocab_size;
    return build_specials(tok);
}

av_status av_tokenizer_load_added_tokens(av_tokenizer *tok, const char *path) {
    if (!tok || !path) return av_set_error(AV_ERR_INVALID, "av_tokenizer_load_added_tokens: NULL argument");
    json_error_t err;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!root) {
        FILE *f = fopen(path, "rb");
        if (!f) return av_set_error(AV_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        fclose(f);
        return av_set_error(AV_ERR_FORMAT, "%s:%d:%d: invalid JSON: %s", path, err.line,
                            err.column, err.text);
    }
    av_status st = AV_OK;
    if (!json_is_object(root)) {
        st = av_set_error(AV_ERR_FORMAT,
                          "%s: expected an object of token text to id, such as "
                          "{\"<|user|>\": 48064}",
                          path);
    }
    const char *text;
    json_t *value;
    json_object_foreach(root, text, value) {
        if (st) break;
        if (!json_is_integer(value) || json_integer_value(value) < 0 ||
            json_integer_value(value) >= AV_TOK_MAX_ADDED_ID) {
            st = av_set_error(AV_ERR_FORMAT,
                              "%s: the id of \"%s\" must be an integer in [0, %d)", path, text,
                              AV_TOK_MAX_ADDED_ID);
        } else if (text[0] == '\0' || strlen(text) > AV_TOK_MAX_PIECE_BYTES) {
            st = av_set_error(AV_ERR_FORMAT, "%s: an added token is empty or longer than %d bytes",
                              path, AV_TOK_MAX_PIECE_BYTES);
        } else {
            st = add_token(tok, text, (int32_t)json_integer_value(value));
        }
    }
    json_decref(root);
    if (!st) st = index_added_tokens(tok);
    return st;
}

/* ------------------------------------------------------------------------ */
/* Accessors                                                                 */
/* ------------------------------------------------------------------------ */

int av_tokenizer_vocab_size(const av_tokenizer *tok) { return tok ? tok->vocab_size : 0; }
int av_tokenizer_bos(const av_tokenizer *tok) { return tok ? tok->bos_id : -1; }
int av_tokenizer_eos(const av_tokenizer *tok) { return tok ? tok->eos_id : -1; }
int av_tokenizer_unk(const av_tokenizer *tok) { return tok ? tok->unk_id : -1; }
int av_tokenizer_pad(const av_tokenizer *tok) { return tok ? tok->pad_id : -1; }

const char *av_tokenizer_piece(const av_tokenizer *tok, int32_t id) {
    if (!tok || id < 0 || id >= tok->vocab_size) return NULL;
    if (id < tok->n_pieces) return av_tok_piece_text(tok, id);
    return tok->extra_text[id - tok->n_pieces];
}

/* Added tokens past the model's pieces are USER_DEFINED; ids without a
 * piece give 0, which is no av_piece_type. */
av_piece_type av_tokenizer_piece_type(const av_tokenizer *tok, int32_t id) {
    if (!av_tokenizer_piece(tok, id)) return (av_piece_type)0;
    if (id < tok->n_pieces) return (av_piece_type)tok->type[id];
    return AV_PIECE_USER_DEFINED;
}
