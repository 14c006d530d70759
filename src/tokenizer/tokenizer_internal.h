/*
 * tokenizer_internal.h - the av_tokenizer structure shared by the
 * SentencePiece model reader, the BPE encoder and the decoder.
 *
 * Pieces keep their protobuf order, so a piece's index is its token id.
 * Like SentencePiece, two hash maps find a piece id from its text: one for
 * the pieces the BPE merges may produce (NORMAL, USER_DEFINED, UNUSED) and
 * one for the reserved pieces (CONTROL, UNKNOWN, BYTE). Tokens from
 * added_tokens.json may lie past the last piece; they extend the vocabulary.
 */
#ifndef AV_TOKENIZER_INTERNAL_H
#define AV_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "airavata.h"

/* Limits on the inputs, so that every length fits the int and uint32_t
 * fields below. */
#define AV_TOK_MAX_FILE_BYTES (256u << 20)  /* tokenizer.model */
#define AV_TOK_MAX_PIECES (1 << 22)
#define AV_TOK_MAX_PIECE_BYTES 4096
#define AV_TOK_MAX_ADDED_ID (1 << 24)
#define AV_TOK_MAX_TEXT_BYTES (256u << 20)  /* one av_tokenize call */

/* "▁" (U+2581), the symbol SentencePiece writes in place of a space. */
#define AV_SPACE_SYMBOL "\xe2\x96\x81"
#define AV_SPACE_SYMBOL_LEN 3

/* Open-addressing hash map from piece text to piece id. */
typedef struct {
    int32_t *slots; /* piece id, or -1 for an empty slot */
    uint32_t mask;  /* capacity - 1, capacity a power of two */
} av_piece_map;

/* A string that AV_TOKENIZE_PARSE_SPECIAL turns into one id. */
typedef struct {
    const char *text;
    size_t len;
    int32_t id;
} av_special_token;

struct av_tokenizer {
    char *path;

    /* Pieces of the model, id = index. */
    int n_pieces;
    char *arena;             /* all piece texts, each NUL-terminated */
    uint32_t *piece_offset;  /* [n_pieces] into arena */
    uint32_t *piece_len;     /* [n_pieces] bytes, without the NUL */
    float *score;            /* [n_pieces] */
    uint8_t *type;           /* [n_pieces] av_piece_type */

    av_piece_map normal_map;   /* NORMAL, USER_DEFINED and UNUSED pieces */
    av_piece_map reserved_map; /* CONTROL, UNKNOWN and BYTE pieces */

    /* trainer_spec and normalizer_spec settings that change the output. */
    int unk_id; /* the UNKNOWN piece, which unknown characters become */
    int bos_id, eos_id, pad_id;
    int byte_fallback;
    int add_dummy_prefix;
    int remove_extra_whitespaces;
    int escape_whitespaces;
    char *unk_surface; /* decoded text of the unknown piece, " ⁇ " by default */

    int32_t byte_piece_id[256]; /* id of "<0xNN>", or unk_id when absent */
    /* No merge can join a "▁" to the character before it (no piece has
     * "▁" after another character) and no piece is UNUSED, so the encoder
     * may run the merges of each word separately with the same result. */
    int words_are_independent;
    int has_unused;             /* any UNUSED piece (needs re-segmentation) */
    size_t max_user_defined_len;
    uint8_t user_defined_first_byte[256]; /* 1 if a USER_DEFINED piece starts so */

    /* added_tokens.json entries, and the texts of ids past the model. */
    int n_added;
    av_special_token *added;
    int vocab_size;    /* n_pieces, or the largest added id + 1 */
    char **extra_text; /* [vocab_size - n_pieces], NULL for gaps */

    /* Strings matched by AV_TOKENIZE_PARSE_SPECIAL, longest first. */
    int n_specials;
    av_special_token *specials;
};

static inline const char *av_tok_piece_text(const av_tokenizer *tok, int32_t id) {
    return tok->arena + tok->piece_offset[id];
}

/* Returns the id of the piece whose text is s[0..len) in `map`, or -1. */
int32_t av_piece_map_find(const av_tokenizer *tok, const av_piece_map *map, const char *s,
                          size_t len);

/* Returns the id SentencePiece's PieceToId() gives: a reserved piece first,
 * then a mergeable one, else the unknown id. */
int32_t av_tok_piece_to_id(const av_tokenizer *tok, const char *s, size_t len);

/* Returns the byte value of a BYTE piece text "<0xNN>" (upper-case hex), or
 * -1 when the text has another form. */
int av_tok_byte_value(const char *s, size_t len);

/* Decodes one UTF-8 character at s[0..len) the way SentencePiece does:
 * returns 1 and sets *mblen for a valid character (U+FFFD included), or
 * returns 0 with *mblen = 1 for an invalid or truncated sequence, surrogate,
 * overlong form or code point above U+10FFFF. len must be at least 1. */
int av_utf8_valid_char(const unsigned char *s, size_t len, size_t *mblen);

#endif
