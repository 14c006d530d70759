/* SentencePiece BPE tokenizer: encoding, decoding and the streaming decoder
 * against ids produced by SentencePiece itself, plus special tokens, added
 * tokens, hand-built models and corrupt model files. */
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "airavata.h"
#include "check.h"
#include "tokenizer/tokenizer_internal.h"

#define MAX_IDS 4096

static char temp_dir[256];

/* ------------------------------------------------------------------------ */
/* Helpers                                                                   */
/* ------------------------------------------------------------------------ */

static av_tokenizer *load_shared(const char *rel) {
    char path[512];
    av_tokenizer *tok = av_tokenizer_load(av_test_path(path, sizeof path, rel));
    CHECK_MSG(tok != NULL, "%s: %s", path, av_last_error());
    return tok;
}

static const char *temp_path(const char *name) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", temp_dir, name);
    return path;
}

static void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    CHECK(f != NULL);
    if (!f) return;
    CHECK(fwrite(data, 1, len, f) == len);
    fclose(f);
}

static unsigned char *read_whole_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *data = malloc((size_t)size);
    if (data && fread(data, 1, (size_t)size, f) != (size_t)size) {
        free(data);
        data = NULL;
    }
    fclose(f);
    *len = (size_t)size;
    return data;
}

static int utf8_is_valid(const char *s, size_t len) {
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t n = p[i] < 0x80 ? 1 : (p[i] & 0xe0) == 0xc0 ? 2 : (p[i] & 0xf0) == 0xe0 ? 3
                 : (p[i] & 0xf8) == 0xf0 ? 4 : 0;
        if (n == 0 || i + n > len) return 0;
        for (size_t k = 1; k < n; k++)
            if ((p[i + k] & 0xc0) != 0x80) return 0;
        i += n;
    }
    return 1;
}

static int ids_equal(const int32_t *ids, int n, const int32_t *expected, int n_expected) {
    if (n != n_expected) return 0;
    for (int i = 0; i < n; i++)
        if (ids[i] != expected[i]) return 0;
    return 1;
}

static int encode(const av_tokenizer *tok, const char *text, int flags, int32_t *ids) {
    int n = av_tokenize(tok, text, strlen(text), flags, ids, MAX_IDS);
    CHECK_MSG(n >= 0 && n <= MAX_IDS, "'%s': %d ids: %s", text, n, av_last_error());
    return n;
}

/* Decodes ids one token at a time; checks each chunk is valid UTF-8 and
 * returns the concatenation (malloc'd). */
static char *stream_decode(const av_tokenizer *tok, const int32_t *ids, int n, int *bad_chunks) {
    size_t cap = 64 + (size_t)n * 64, len = 0;
    char *text = malloc(cap);
    av_decoder dec;
    av_decoder_init(&dec, tok);
    char chunk[64];
    for (int i = 0; i <= n; i++) {
        int got = i < n ? av_decoder_push(&dec, ids[i], chunk, sizeof chunk)
                        : av_decoder_flush(&dec, chunk, sizeof chunk);
        if (got < 0 || !utf8_is_valid(chunk, (size_t)got) || strlen(chunk) != (size_t)got) {
            (*bad_chunks)++;
            continue;
        }
        memcpy(text + len, chunk, (size_t)got);
        len += (size_t)got;
    }
    text[len] = '\0';
    return text;
}

/* ------------------------------------------------------------------------ */
/* SentencePiece reference cases                                             */
/* ------------------------------------------------------------------------ */

/* Runs every case of the Hindi/English case file under one model; `key` is
 * the model's field in the case objects. */
static void check_reference_cases(const char *model_rel, const char *key) {
    av_tokenizer *tok = load_shared(model_rel);
    char path[512];
    FILE *f = fopen(av_test_path(path, sizeof path, "tokenizers/cases/hindi_english.jsonl"), "rb");
    CHECK_MSG(f != NULL, "cannot open %s", path);
    if (!tok || !f) {
        if (f) fclose(f);
        av_tokenizer_free(tok);
        return;
    }

    static char line[1 << 20];
    static int32_t ids[MAX_IDS];
    int n_cases = 0, id_failures = 0, piece_failures = 0, decode_failures = 0, stream_failures = 0;
    while (fgets(line, sizeof line, f)) {
        json_error_t err;
        json_t *c = json_loads(line, 0, &err);
        CHECK_MSG(c != NULL, "invalid case line: %s", err.text);
        if (!c) continue;
        const char *name = json_string_value(json_object_get(c, "id"));
        json_t *text_json = json_object_get(c, "text");
        const char *text = json_string_value(text_json);
        size_t text_len = json_string_length(text_json);
        json_t *expected = json_object_get(c, key);
        json_t *expected_ids = json_object_get(expected, "ids");
        json_t *expected_pieces = json_object_get(expected, "pieces");
        const char *expected_text = json_string_value(json_object_get(expected, "decoded"));
        n_cases++;

        int n = av_tokenize(tok, text, text_len, 0, ids, MAX_IDS);
        int same = n == (int)json_array_size(expected_ids);
        for (int i = 0; same && i < n; i++)
            same = ids[i] == json_integer_value(json_array_get(expected_ids, (size_t)i));
        if (!same) {
            id_failures++;
            CHECK_MSG(same, "%s %s: ids differ (%d ids, expected %zu)", key, name, n,
                      json_array_size(expected_ids));
        }
        int same_pieces = n >= 0 && n == (int)json_array_size(expected_pieces);
        for (int i = 0; same_pieces && i < n; i++) {
            const char *piece = av_tokenizer_piece(tok, ids[i]);
            const char *want = json_string_value(json_array_get(expected_pieces, (size_t)i));
            same_pieces = piece && want && !strcmp(piece, want);
        }
        if (!same_pieces) piece_failures++;

        /* Decode the reference ids, so a decoding check does not depend on
         * the encoder. */
        int n_expected = (int)json_array_size(expected_ids);
        for (int i = 0; i < n_expected && i < MAX_IDS; i++)
            ids[i] = (int32_t)json_integer_value(json_array_get(expected_ids, (size_t)i));
        char *decoded = av_detokenize(tok, ids, n_expected);
        if (!decoded || strcmp(decoded, expected_text)) {
            decode_failures++;
            CHECK_MSG(0, "%s %s: decoded '%s', expected '%s'", key, name,
                      decoded ? decoded : av_last_error(), expected_text);
        }
        int bad_chunks = 0;
        char *streamed = stream_decode(tok, ids, n_expected, &bad_chunks);
        if (bad_chunks || !decoded || strcmp(streamed, decoded)) {
            stream_failures++;
            CHECK_MSG(0, "%s %s: streamed '%s' (%d bad chunks), whole '%s'", key, name, streamed,
                      bad_chunks, decoded ? decoded : "");
        }
        free(streamed);
        free(decoded);
        json_decref(c);
    }
    fclose(f);
    CHECK_MSG(n_cases == 338, "%d cases read", n_cases);
    CHECK_MSG(id_failures == 0, "%s: %d of %d cases have other ids", key, id_failures, n_cases);
    CHECK_MSG(piece_failures == 0, "%s: %d cases have other pieces", key, piece_failures);
    CHECK_MSG(decode_failures == 0, "%s: %d cases decode differently", key, decode_failures);
    CHECK_MSG(stream_failures == 0, "%s: %d cases stream differently", key, stream_failures);
    av_tokenizer_free(tok);
}

static void test_cases_llama2(void) {
    check_reference_cases("tokenizers/llama2/tokenizer.model", "llama2");
}

static void test_cases_hindi_llama(void) {
    check_reference_cases("tokenizers/hindi-llama/tokenizer.model", "hindi_llama");
}

static void test_stories260k_prompts(void) {
    av_tokenizer *tok = load_shared("models/stories260K/tokenizer.model");
    char path[512];
    json_error_t err;
    json_t *root = json_load_file(
        av_test_path(path, sizeof path, "models/stories260K/expected_greedy.json"), 0, &err);
    CHECK_MSG(root != NULL, "%s: %s", path, err.text);
    if (!tok || !root) {
        json_decref(root);
        av_tokenizer_free(tok);
        return;
    }
    CHECK(av_tokenizer_vocab_size(tok) == 512);

    int32_t ids[MAX_IDS];
    int n = encode(tok, "Once upon a time", 0, ids);
    CHECK(ids_equal(ids, n, (int32_t[]){403, 407, 261, 378}, 4));

    json_t *cases = json_object_get(root, "cases");
    CHECK(json_array_size(cases) == 3);
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *item = json_array_get(cases, c);
        const char *prompt = json_string_value(json_object_get(item, "prompt"));
        json_t *expected = json_object_get(item, "input_ids");
        n = encode(tok, prompt, AV_TOKENIZE_BOS, ids);
        int same = n == (int)json_array_size(expected);
        for (int i = 0; same && i < n; i++)
            same = ids[i] == json_integer_value(json_array_get(expected, (size_t)i));
        CHECK_MSG(same, "prompt '%s'", prompt);

        /* The generated ids decode to the recorded text. */
        json_t *generated = json_object_get(item, "generated_ids");
        json_t *full = json_object_get(item, "full_text");
        int n_all = 0;
        for (size_t i = 0; i < json_array_size(expected); i++)
            ids[n_all++] = (int32_t)json_integer_value(json_array_get(expected, i));
        for (size_t i = 0; i < json_array_size(generated); i++)
            ids[n_all++] = (int32_t)json_integer_value(json_array_get(generated, i));
        char *text = av_detokenize(tok, ids, n_all);
        CHECK_MSG(text && !strcmp(text, json_string_value(full)), "decoded '%s'",
                  text ? text : av_last_error());
        free(text);
    }
    json_decref(root);
    av_tokenizer_free(tok);
}

/* ------------------------------------------------------------------------ */
/* Special pieces, parse-special and added tokens                            */
/* ------------------------------------------------------------------------ */

static void test_llama2_special_pieces(void) {
    av_tokenizer *tok = load_shared("tokenizers/llama2/tokenizer.model");
    if (!tok) return;
    CHECK(av_tokenizer_vocab_size(tok) == 32000);
    CHECK(av_tokenizer_unk(tok) == 0);
    CHECK(av_tokenizer_bos(tok) == 1);
    CHECK(av_tokenizer_eos(tok) == 2);
    CHECK(av_tokenizer_pad(tok) == -1);
    CHECK(!strcmp(av_tokenizer_piece(tok, 1), "<s>"));
    CHECK(!strcmp(av_tokenizer_piece(tok, 13), "<0x0A>"));
    CHECK(av_tokenizer_piece(tok, 32000) == NULL);
    CHECK(av_tokenizer_piece(tok, -1) == NULL);
    CHECK(av_tokenizer_piece_type(tok, 0) == AV_PIECE_UNKNOWN);
    CHECK(av_tokenizer_piece_type(tok, 2) == AV_PIECE_CONTROL);
    CHECK(av_tokenizer_piece_type(tok, 13) == AV_PIECE_BYTE);
    CHECK(av_tokenizer_piece_type(tok, 263) == AV_PIECE_NORMAL);

    int32_t ids[MAX_IDS];
    int n = encode(tok, "Hello", AV_TOKENIZE_BOS | AV_TOKENIZE_EOS, ids);
    CHECK(ids_equal(ids, n, (int32_t[]){1, 15043, 2}, 3));

    /* Too small a buffer: the full count comes back, max_ids are written. */
    int32_t two[2] = {-7, -7};
    CHECK(av_tokenize(tok, "Hello world", 11, AV_TOKENIZE_BOS, two, 1) == 3);
    CHECK(two[0] == 1);
    CHECK(two[1] == -7);
    CHECK(av_tokenize(tok, "Hello world", 11, 0, NULL, 0) == 2);

    /* Control and unknown pieces decode to nothing and " ⁇ ". */
    int32_t mixed[] = {1, 15043, 0, 2};
    char *text = av_detokenize(tok, mixed, 4);
    CHECK(text && !strcmp(text, "Hello \xe2\x81\x87 "));
    free(text);
    int32_t out_of_range[] = {15043, 32000};
    CHECK(av_detokenize(tok, out_of_range, 2) == NULL);
    CHECK(strstr(av_last_error(), "32000") != NULL);
    av_tokenizer_free(tok);
}

static void test_parse_special(void) {
    av_tokenizer *tok = load_shared("tokenizers/llama2/tokenizer.model");
    if (!tok) return;
    int32_t ids[MAX_IDS], hello[MAX_IDS], world[MAX_IDS];
    int n_hello = encode(tok, "Hello", 0, hello);
    int n_world = encode(tok, " world", 0, world);

    int n = encode(tok, "<s>Hello</s> world<unk>", AV_TOKENIZE_PARSE_SPECIAL, ids);
    CHECK(n == 1 + n_hello + 1 + n_world + 1);
    CHECK(ids[0] == 1);
    CHECK(!memcmp(ids + 1, hello, (size_t)n_hello * sizeof *ids));
    CHECK(ids[1 + n_hello] == 2);
    /* The text after </s> is encoded on its own, dummy prefix included. */
    CHECK(!memcmp(ids + 2 + n_hello, world, (size_t)n_world * sizeof *ids));
    CHECK(ids[n - 1] == 0);

    /* Without the flag the same strings are plain text. */
    n = encode(tok, "<s>Hello</s>", 0, ids);
    int has_control = 0;
    for (int i = 0; i < n; i++) has_control |= ids[i] == 1 || ids[i] == 2;
    CHECK(n > 3);
    CHECK(!has_control);
    char *text = av_detokenize(tok, ids, n);
    CHECK(text && !strcmp(text, "<s>Hello</s>"));
    free(text);

    /* Adjacent special tokens and special tokens at both ends. */
    n = encode(tok, "</s><s>", AV_TOKENIZE_PARSE_SPECIAL, ids);
    CHECK(ids_equal(ids, n, (int32_t[]){2, 1}, 2));
    av_tokenizer_free(tok);
}

static void test_added_tokens(void) {
    av_tokenizer *tok = load_shared("tokenizers/llama2/tokenizer.model");
    if (!tok) return;
    const char *json = "{\"<|user|>\": 32000, \"<|assistant|>\": 32001, \"<|system|>\": 32003}";
    write_file(temp_path("added_tokens.json"), json, strlen(json));
    CHECK_MSG(av_tokenizer_load_added_tokens(tok, temp_path("added_tokens.json")) == AV_OK, "%s",
              av_last_error());
    CHECK(av_tokenizer_vocab_size(tok) == 32004);
    CHECK(!strcmp(av_tokenizer_piece(tok, 32001), "<|assistant|>"));
    CHECK(av_tokenizer_piece(tok, 32002) == NULL); /* a gap between added ids */
    CHECK(av_tokenizer_piece_type(tok, 32000) == AV_PIECE_USER_DEFINED);

    av_chat_message msg = {"user", "नमस्ते"};
    char *prompt = av_chat_format(&msg, 1);
    int32_t ids[MAX_IDS], body[MAX_IDS], newline[MAX_IDS];
    int n = encode(tok, prompt, AV_TOKENIZE_PARSE_SPECIAL, ids);
    int n_body = encode(tok, "\nनमस्ते\n", 0, body);
    int n_newline = encode(tok, "\n", 0, newline);
    CHECK(n == 2 + n_body + 1 + n_newline);
    CHECK(ids[0] == 1);
    CHECK(ids[1] == 32000);
    CHECK(!memcmp(ids + 2, body, (size_t)n_body * sizeof *ids));
    CHECK(ids[2 + n_body] == 32001);
    CHECK(ids_equal(newline, n_newline, (int32_t[]){29871, 13}, 2));

    /* Added tokens decode to their text, in both decoders. The dummy-prefix
     * "▁" of each text segment after the first stays a space. */
    char *text = av_detokenize(tok, ids, n);
    CHECK(text && !strcmp(text, "<|user|> \nनमस्ते\n<|assistant|> \n"));
    int bad_chunks = 0;
    char *streamed = stream_decode(tok, ids, n, &bad_chunks);
    CHECK(bad_chunks == 0);
    CHECK(text && !strcmp(streamed, text));
    free(streamed);
    free(text);
    free(prompt);

    /* Without the flag the added tokens are plain text too. */
    n = encode(tok, "<|user|>", 0, ids);
    CHECK(n > 1);
    CHECK(ids[0] != 32000);

    const char *bad = "{\"<|user|>\": -5}";
    write_file(temp_path("bad_added.json"), bad, strlen(bad));
    CHECK(av_tokenizer_load_added_tokens(tok, temp_path("bad_added.json")) == AV_ERR_FORMAT);
    CHECK(strstr(av_last_error(), "<|user|>") != NULL);
    write_file(temp_path("bad_added.json"), "[1, 2", 5);
    CHECK(av_tokenizer_load_added_tokens(tok, temp_path("bad_added.json")) == AV_ERR_FORMAT);
    CHECK(av_tokenizer_load_added_tokens(tok, temp_path("missing.json")) == AV_ERR_IO);
    CHECK(strstr(av_last_error(), "missing.json") != NULL);
    av_tokenizer_free(tok);
}

/* ------------------------------------------------------------------------ */
/* Streaming decoder                                                         */
/* ------------------------------------------------------------------------ */

static void test_decoder_split_character(void) {
    av_tokenizer *tok = load_shared("tokenizers/llama2/tokenizer.model");
    if (!tok) return;
    av_decoder dec;
    char out[64];
    /* "॥" (U+0965) is E0 A5 A5, three byte-fallback pieces <0xNN> = 3 + NN. */
    av_decoder_init(&dec, tok);
    CHECK(av_decoder_push(&dec, 1, out, sizeof out) == 0);         /* <s> */
    CHECK(av_decoder_push(&dec, 29871, out, sizeof out) == 0);     /* "▁" at the start */
    CHECK(av_decoder_push(&dec, 3 + 0xE0, out, sizeof out) == 0);
    CHECK(av_decoder_push(&dec, 3 + 0xA5, out, sizeof out) == 0);
    CHECK(av_decoder_push(&dec, 3 + 0xA5, out, sizeof out) == 3);
    CHECK(!strcmp(out, "\xe0\xa5\xa5"));
    CHECK(av_decoder_push(&dec, 15043, out, sizeof out) == 6);   /* "▁Hello" */
    CHECK(!strcmp(out, " Hello"));
    CHECK(dec.n_tokens == 6);

    /* A lead byte followed by ASCII: the lead byte becomes U+FFFD at once. */
    av_decoder_init(&dec, tok);
    CHECK(av_decoder_push(&dec, 3 + 0xE0, out, sizeof out) == 0);
    CHECK(av_decoder_push(&dec, 3 + 'A', out, sizeof out) == 4);
    CHECK(!strcmp(out, "\xef\xbf\xbd" "A"));

    /* An incomplete character at the end: one U+FFFD per held byte. */
    av_decoder_init(&dec, tok);
    CHECK(av_decoder_push(&dec, 3 + 0xE0, out, sizeof out) == 0);
    CHECK(av_decoder_push(&dec, 3 + 0xA5, out, sizeof out) == 0);
    CHECK(av_decoder_flush(&dec, out, sizeof out) == 6);
    CHECK(!strcmp(out, "\xef\xbf\xbd\xef\xbf\xbd"));
    int32_t ids[] = {3 + 0xE0, 3 + 0xA5};
    char *whole = av_detokenize(tok, ids, 2);
    CHECK(whole && !strcmp(whole, "\xef\xbf\xbd\xef\xbf\xbd"));
    free(whole);

    /* A bad id is an error and changes nothing. */
    CHECK(av_decoder_push(&dec, 99999, out, sizeof out) == -1);
    av_tokenizer_free(tok);
}

static uint32_t next_random(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

/* Random id sequences, rich in byte pieces that form valid, truncated and
 * invalid UTF-8: the stream always equals the whole decoding. */
static void test_decoder_random_ids(void) {
    av_tokenizer *tok = load_shared("tokenizers/llama2/tokenizer.model");
    if (!tok) return;
    static const int32_t others[] = {0, 1, 2, 29871, 15043, 30444, 259, 13};
    static const unsigned char bytes[] = {0xe0, 0xa4, 0xa5, 0x95, 0xf0, 0x9f, 0x98, 0x80,
                                          0xc3, 0xa9, 0xed, 0xa0, 0xff, 'a', ' '};
    uint32_t state = 7;
    int failures = 0;
    for (int trial = 0; trial < 3000; trial++) {
        int32_t ids[24];
        int n = 1 + (int)(next_random(&state) % 24);
        for (int i = 0; i < n; i++) {
            uint32_t r = next_random(&state);
            ids[i] = r % 4 == 0 ? others[(r >> 4) % 8] : 3 + bytes[(r >> 4) % sizeof bytes];
        }
        char *whole = av_detokenize(tok, ids, n);
        int bad_chunks = 0;
        char *streamed = stream_decode(tok, ids, n, &bad_chunks);
        if (!whole || bad_chunks || strcmp(whole, streamed) || !utf8_is_valid(whole, strlen(whole)))
            failures++;
        free(whole);
        free(streamed);
    }
    CHECK_MSG(failures == 0, "%d of 3000 random sequences streamed differently", failures);
    av_tokenizer_free(tok);
}

/* Random text with invalid bytes: each invalid byte becomes U+FFFD, so the
 * decoding equals the text with those bytes replaced. */
static void test_round_trip_invalid_utf8(void) {
    av_tokenizer *tok = load_shared("tokenizers/hindi-llama/tokenizer.model");
    if (!tok) return;
    static const char *parts[] = {"क", "्", "ष", "a", "Z", " ", "\n", "😀", "ॐ", "\t"};
    uint32_t state = 99;
    int failures = 0;
    for (int trial = 0; trial < 500; trial++) {
        char text[256], expected[512];
        size_t len = 0, expected_len = 0;
        int n_parts = (int)(next_random(&state) % 20);
        for (int i = 0; i < n_parts; i++) {
            uint32_t r = next_random(&state);
            if (r % 5 == 0) {
                /* A lone continuation byte or 0xff: always invalid. */
                text[len++] = (char)(r % 3 == 0 ? 0xff : 0x80 + (r >> 8) % 64);
                memcpy(expected + expected_len, "\xef\xbf\xbd", 3);
                expected_len += 3;
            } else {
                const char *part = parts[(r >> 4) % 10];
                memcpy(text + len, part, strlen(part));
                memcpy(expected + expected_len, part, strlen(part));
                len += strlen(part);
                expected_len += strlen(part);
            }
        }
        expected[expected_len] = '\0';
        int32_t ids[MAX_IDS];
        int n = av_tokenize(tok, text, len, 0, ids, MAX_IDS);
        char *decoded = n >= 0 ? av_detokenize(tok, ids, n) : NULL;
        if (!decoded || strcmp(decoded, expected)) failures++;
        free(decoded);
    }
    CHECK_MSG(failures == 0, "%d of 500 random texts did not round-trip", failures);
    av_tokenizer_free(tok);
}

/* ------------------------------------------------------------------------ */
/* Hand-built models                                                         */
/* ------------------------------------------------------------------------ */

typedef struct {
    unsigned char data[8192];
    size_t len;
} proto_buffer;

static void put_varint(proto_buffer *b, uint64_t v) {
    do {
        b->data[b->len++] = (unsigned char)((v & 0x7f) | (v >= 0x80 ? 0x80 : 0));
        v >>= 7;
    } while (v);
}

static void put_key(proto_buffer *b, int field, int wire) { put_varint(b, (uint64_t)field << 3 | (uint64_t)wire); }

static void put_bytes(proto_buffer *b, int field, const void *data, size_t len) {
    put_key(b, field, 2);
    put_varint(b, len);
    memcpy(b->data + b->len, data, len);
    b->len += len;
}

static void put_message(proto_buffer *b, int field, const proto_buffer *sub) {
    put_bytes(b, field, sub->data, sub->len);
}

static void put_piece(proto_buffer *b, const char *text, float score, int type) {
    proto_buffer p = {{0}, 0};
    put_bytes(&p, 1, text, strlen(text));
    put_key(&p, 2, 5);
    memcpy(p.data + p.len, &score, 4); /* little-endian hosts only */
    p.len += 4;
    put_key(&p, 3, 0);
    put_varint(&p, (uint64_t)type);
    put_message(b, 1, &p);
}

typedef struct {
    int model_type;
    int byte_fallback;
    int add_dummy_prefix;
    int remove_extra_whitespaces;
    const char *normalizer;
    size_t charsmap_bytes;
} model_options;

/* Writes a model with pieces <unk> <s> </s> a b c ab bc aa ▁ ▁a ▁b, the
 * user-defined piece "<sep>" and the unused piece "ca". */
static const char *write_test_model(const char *name, model_options o) {
    proto_buffer model = {{0}, 0}, trainer = {{0}, 0}, normalizer = {{0}, 0};
    put_piece(&model, "<unk>", 0, 2);
    put_piece(&model, "<s>", 0, 3);
    put_piece(&model, "</s>", 0, 3);
    put_piece(&model, "a", -1, 1);        /* 3 */
    put_piece(&model, "b", -1, 1);        /* 4 */
    put_piece(&model, "c", -1, 1);        /* 5 */
    put_piece(&model, "ab", -2, 1);       /* 6 */
    put_piece(&model, "bc", -1.5f, 1);    /* 7 */
    put_piece(&model, "aa", -2, 1);       /* 8 */
    put_piece(&model, "\xe2\x96\x81", -1, 1);         /* 9 "▁" */
    put_piece(&model, "\xe2\x96\x81" "a", -3, 1);     /* 10 "▁a" */
    put_piece(&model, "\xe2\x96\x81" "b", -3, 1);     /* 11 "▁b" */
    put_piece(&model, "<sep>", 0, 4);     /* 12 */
    put_piece(&model, "ca", -0.5f, 5);    /* 13, unused */
    put_piece(&model, "<0x41>", 0, o.byte_fallback ? 6 : 1); /* 14 */

    put_key(&trainer, 3, 0);
    put_varint(&trainer, (uint64_t)o.model_type);
    put_key(&trainer, 35, 0);
    put_varint(&trainer, (uint64_t)o.byte_fallback);
    put_message(&model, 2, &trainer);

    put_bytes(&normalizer, 1, o.normalizer, strlen(o.normalizer));
    if (o.charsmap_bytes) {
        static const char zeros[64];
        put_bytes(&normalizer, 2, zeros, o.charsmap_bytes);
    }
    put_key(&normalizer, 3, 0);
    put_varint(&normalizer, (uint64_t)o.add_dummy_prefix);
    put_key(&normalizer, 4, 0);
    put_varint(&normalizer, (uint64_t)o.remove_extra_whitespaces);
    put_message(&model, 3, &normalizer);

    const char *path = temp_path(name);
    write_file(path, model.data, model.len);
    return path;
}

static const model_options plain_bpe = {2, 0, 0, 0, "identity", 0};

static int encode_ids(const av_tokenizer *tok, const char *text, const int32_t *want, int n_want) {
    int32_t ids[64];
    int n = av_tokenize(tok, text, strlen(text), 0, ids, 64);
    if (n != n_want) return 0;
    for (int i = 0; i < n; i++)
        if (ids[i] != want[i]) return 0;
    return 1;
}

static void test_merge_order(void) {
    av_tokenizer *tok = av_tokenizer_load(write_test_model("bpe.model", plain_bpe));
    CHECK_MSG(tok != NULL, "%s", av_last_error());
    if (!tok) return;
    /* "bc" (-1.5) beats "ab" (-2). */
    CHECK(encode_ids(tok, "abc", (int32_t[]){3, 7}, 2));
    /* Equal scores: the leftmost pair merges first. */
    CHECK(encode_ids(tok, "aaa", (int32_t[]){8, 3}, 2));
    CHECK(encode_ids(tok, "aaaa", (int32_t[]){8, 8}, 2));
    /* The user-defined piece is one symbol that never merges. */
    CHECK(encode_ids(tok, "a<sep>b", (int32_t[]){3, 12, 4}, 3));
    /* "ca" is UNUSED: it may merge, but it is split back into c and a. */
    CHECK(encode_ids(tok, "ca", (int32_t[]){5, 3}, 2));
    /* Without byte fallback a run of unknown characters is one unknown id. */
    CHECK(encode_ids(tok, "axyzb", (int32_t[]){3, 0, 4}, 3));
    CHECK(encode_ids(tok, "x\xff", (int32_t[]){0}, 1));
    CHECK(av_tokenizer_bos(tok) == 1);
    CHECK(av_tokenizer_eos(tok) == 2);
    av_tokenizer_free(tok);
}

static void test_whitespace_options(void) {
    model_options o = plain_bpe;
    o.add_dummy_prefix = 1;
    o.remove_extra_whitespaces = 1;
    av_tokenizer *tok = av_tokenizer_load(write_test_model("ws.model", o));
    CHECK_MSG(tok != NULL, "%s", av_last_error());
    if (!tok) return;
    /* Leading, repeated and trailing spaces collapse to "▁a▁b". */
    CHECK(encode_ids(tok, "   a    b  ", (int32_t[]){10, 11}, 2));
    CHECK(encode_ids(tok, "    ", NULL, 0));
    int32_t ids[] = {10, 11};
    char *text = av_detokenize(tok, ids, 2);
    CHECK(text && !strcmp(text, "a b"));
    free(text);
    av_tokenizer_free(tok);

    o.remove_extra_whitespaces = 0;
    tok = av_tokenizer_load(write_test_model("ws2.model", o));
    CHECK_MSG(tok != NULL, "%s", av_last_error());
    if (!tok) return;
    CHECK(encode_ids(tok, " a", (int32_t[]){9, 10}, 2));
    av_tokenizer_free(tok);
}

static void test_unsupported_models(void) {
    model_options o = plain_bpe;
    o.model_type = 1;
    const char *path = write_test_model("unigram.model", o);
    CHECK(av_tokenizer_load(path) == NULL);
    CHECK(strstr(av_last_error(), "UNIGRAM") != NULL);
    CHECK(strstr(av_last_error(), "unigram.model") != NULL);

    o = plain_bpe;
    o.normalizer = "nmt_nfkc";
    o.charsmap_bytes = 32;
    CHECK(av_tokenizer_load(write_test_model("nfkc.model", o)) == NULL);
    CHECK(strstr(av_last_error(), "nmt_nfkc") != NULL);

    o = plain_bpe;
    o.normalizer = "nfkc_cf";
    CHECK(av_tokenizer_load(write_test_model("nfkc_cf.model", o)) == NULL);
    CHECK(strstr(av_last_error(), "nfkc_cf") != NULL);

    /* A BYTE piece in a model without byte_fallback. */
    o = plain_bpe;
    o.byte_fallback = 0;
    proto_buffer model = {{0}, 0};
    put_piece(&model, "<unk>", 0, 2);
    put_piece(&model, "<0x41>", 0, 6);
    proto_buffer trainer = {{0}, 0};
    put_key(&trainer, 3, 0);
    put_varint(&trainer, 2);
    put_message(&model, 2, &trainer);
    write_file(temp_path("bytes.model"), model.data, model.len);
    CHECK(av_tokenizer_load(temp_path("bytes.model")) == NULL);
    CHECK(strstr(av_last_error(), "byte_fallback") != NULL);
}

/* ------------------------------------------------------------------------ */
/* Corrupt files                                                             */
/* ------------------------------------------------------------------------ */

static void test_corrupt_model_files(void) {
    char path[512];
    size_t len = 0;
    unsigned char *data =
        read_whole_file(av_test_path(path, sizeof path, "tokenizers/llama2/tokenizer.model"), &len);
    CHECK(data != NULL);
    CHECK(len > 1000);
    if (!data) return;

    CHECK(av_tokenizer_load(temp_path("does-not-exist.model")) == NULL);
    CHECK(strstr(av_last_error(), "does-not-exist.model") != NULL);

    write_file(temp_path("empty.model"), "", 0);
    CHECK(av_tokenizer_load(temp_path("empty.model")) == NULL);

    /* Truncated copies: every cut inside a piece or a spec must fail. */
    const size_t cuts[] = {1, 2, 3, 7, 100, 1001, len / 2, len - 300, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_file(temp_path("cut.model"), data, cuts[i]);
        av_tokenizer *tok = av_tokenizer_load(temp_path("cut.model"));
        CHECK_MSG(tok == NULL, "a copy cut at %zu bytes loaded", cuts[i]);
        CHECK(strstr(av_last_error(), "cut.model") != NULL);
        av_tokenizer_free(tok);
    }

    /* Flipped bytes: loading either fails cleanly or gives a tokenizer that
     * encodes and decodes without crashing. */
    unsigned char *copy = malloc(len);
    uint32_t seed = 12345;
    int loaded = 0;
    for (int trial = 0; trial < 40; trial++) {
        memcpy(copy, data, len);
        for (int k = 0; k < 4; k++) {
            seed = seed * 1664525u + 1013904223u;
            size_t at = (trial < 20 ? seed % 64 : seed % len);
            copy[at] ^= (unsigned char)(seed >> 24 | 1);
        }
        write_file(temp_path("flipped.model"), copy, len);
        av_tokenizer *tok = av_tokenizer_load(temp_path("flipped.model"));
        if (!tok) {
            CHECK(strstr(av_last_error(), "flipped.model") != NULL);
            continue;
        }
        loaded++;
        int32_t ids[MAX_IDS];
        int n = av_tokenize(tok, "नमस्ते world", strlen("नमस्ते world"), AV_TOKENIZE_BOS, ids,
                            MAX_IDS);
        if (n > 0 && n <= MAX_IDS) free(av_detokenize(tok, ids, n));
        av_tokenizer_free(tok);
    }
    printf("     %d of 40 models with flipped bytes still loaded\n", loaded);
    free(copy);
    free(data);
}

/* ------------------------------------------------------------------------ */
/* Long text and speed                                                       */
/* ------------------------------------------------------------------------ */

static void test_long_hindi_text(void) {
    av_tokenizer *tok = load_shared("tokenizers/hindi-llama/tokenizer.model");
    if (!tok) return;
    const char *sentence = "भारत एक विशाल देश है, जिसकी संस्कृति और भाषाएँ बहुत विविध हैं। "
                           "Airavata is a Hindi instruction-tuned model. ";
    size_t sentence_len = strlen(sentence), repeat = 4000;
    size_t len = sentence_len * repeat;
    char *text = malloc(len + 1);
    for (size_t i = 0; i < repeat; i++) memcpy(text + i * sentence_len, sentence, sentence_len);
    text[len] = '\0';

    int n_max = (int)len;
    int32_t *ids = malloc((size_t)n_max * sizeof *ids);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int n = av_tokenize(tok, text, len, 0, ids, n_max);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    CHECK(n > 0);
    CHECK(n < n_max);
    printf("     encoded %.2f MB of Hindi/English text into %d ids in %.3f s (%.2f MB/s)\n",
           (double)len / 1e6, n, seconds, (double)len / 1e6 / seconds);

    char *decoded = n > 0 ? av_detokenize(tok, ids, n) : NULL;
    CHECK(decoded && !strcmp(decoded, text));
    free(decoded);

    /* Merging word by word gives the ids of merging the whole text at once. */
    CHECK(tok->words_are_independent == 1);
    tok->words_are_independent = 0;
    int32_t *whole_ids = malloc((size_t)n_max * sizeof *whole_ids);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int n_whole = av_tokenize(tok, text, len, 0, whole_ids, n_max);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    seconds = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    printf("     whole-text merges: %.2f MB/s\n", (double)len / 1e6 / seconds);
    CHECK(ids_equal(whole_ids, n_whole, ids, n));
    free(whole_ids);
    free(ids);
    free(text);
    av_tokenizer_free(tok);
}

int main(void) {
    snprintf(temp_dir, sizeof temp_dir, "%s/av-tokenizer-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(temp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_cases_llama2);
    RUN(test_cases_hindi_llama);
    RUN(test_stories260k_prompts);
    RUN(test_llama2_special_pieces);
    RUN(test_parse_special);
    RUN(test_added_tokens);
    RUN(test_decoder_split_character);
    RUN(test_decoder_random_ids);
    RUN(test_round_trip_invalid_utf8);
    RUN(test_merge_order);
    RUN(test_whitespace_options);
    RUN(test_unsupported_models);
    RUN(test_corrupt_model_files);
    RUN(test_long_hindi_text);

    const char *names[] = {"added_tokens.json", "bad_added.json", "bpe.model", "ws.model",
                           "ws2.model", "unigram.model", "nfkc.model", "nfkc_cf.model",
                           "bytes.model", "empty.model", "cut.model", "flipped.model"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) remove(temp_path(names[i]));
    rmdir(temp_dir);
    return CHECK_DONE();
}
