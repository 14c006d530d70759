/*
 * chat.c - Airavata's chat template (the Tulu format):
 *   "<s>" + for each message:
 *     system     "<|system|>\n" + content + "\n"
 *     user       "<|user|>\n" + content + "\n"
 *     assistant  "<|assistant|>\n" + strip(content) + "</s>" + "\n"
 *   + "<|assistant|>\n", which asks the model for the next reply.
 * strip() removes leading and trailing whitespace as Python's str.strip()
 * does, Unicode spaces included, because the model card's reference code
 * calls it.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_internal.h"

/* Returns the byte length of the whitespace character at s[0..len), or 0.
 * The set is Python's str.isspace(). */
static size_t whitespace_len(const unsigned char *s, size_t len) {
    if (s[0] == ' ' || (s[0] >= 0x09 && s[0] <= 0x0d) || (s[0] >= 0x1c && s[0] <= 0x1f))
        return 1;
    size_t mblen;
    if (s[0] < 0x80 || !av_utf8_valid_char(s, len, &mblen)) return 0;
    uint32_t cp = mblen == 2 ? (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f)
                : mblen == 3 ? (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 |
                                   (s[2] & 0x3f)
                             : 0;
    int space = cp == 0x85 || cp == 0xa0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200a) ||
                cp == 0x2028 || cp == 0x2029 || cp == 0x202f || cp == 0x205f || cp == 0x3000;
    return space ? mblen : 0;
}

/* Returns the length of the whitespace character that ends s[0..len), or 0. */
static size_t trailing_whitespace_len(const unsigned char *s, size_t len) {
    size_t start = len - 1;
    while (start > 0 && len - start < 3 && (s[start] & 0xc0) == 0x80) start--;
    size_t n = whitespace_len(s + start, len - start);
    return n == len - start ? n : 0;
}

/* Sets *start and *len to content without surrounding whitespace. */
static void strip_whitespace(const char *content, size_t *start, size_t *len) {
    const unsigned char *s = (const unsigned char *)content;
    size_t begin = 0, end = strlen(content), n;
    while (begin < end && (n = whitespace_len(s + begin, end - begin)) > 0) begin += n;
    while (end > begin && (n = trailing_whitespace_len(s + begin, end - begin)) > 0) end -= n;
    *start = begin;
    *len = end - begin;
}

static int append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (*len + n + 1 > *cap) {
        size_t new_cap = *cap ? *cap : 256;
        while (new_cap < *len + n + 1) new_cap *= 2;
        char *grown = realloc(*buf, new_cap);
        if (!grown) return -1;
        *buf = grown;
        *cap = new_cap;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

char *av_chat_format(const av_chat_message *messages, int n_messages) {
    if (n_messages < 0 || (!messages && n_messages > 0)) {
        av_set_error(AV_ERR_INVALID, "av_chat_format: NULL messages");
        return NULL;
    }
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int failed = append(&buf, &len, &cap, "<s>", 3);

    for (int i = 0; i < n_messages && !failed; i++) {
        const char *role = messages[i].role, *content = messages[i].content;
        if (!role || !content) {
            av_set_error(AV_ERR_INVALID, "chat message %d has no %s", i, role ? "content" : "role");
            free(buf);
            return NULL;
        }
        const char *header;
        size_t start = 0, content_len = strlen(content);
        const char *trailer = "\n";
        if (!strcmp(role, "system")) {
            header = "<|system|>\n";
        } else if (!strcmp(role, "user")) {
            header = "<|user|>\n";
        } else if (!strcmp(role, "assistant")) {
            header = "<|assistant|>\n";
            trailer = "</s>\n";
            strip_whitespace(content, &start, &content_len);
        } else {
            av_set_error(AV_ERR_INVALID,
                         "chat message %d has role '%s'; the roles are 'system', 'user' and "
                         "'assistant'",
                         i, role);
            free(buf);
            return NULL;
        }
        failed = append(&buf, &len, &cap, header, strlen(header)) ||
                 append(&buf, &len, &cap, content + start, content_len) ||
                 append(&buf, &len, &cap, trailer, strlen(trailer));
    }
    if (!failed) failed = append(&buf, &len, &cap, "<|assistant|>\n", 14);
    if (failed) {
        av_set_error(AV_ERR_NOMEM, "out of memory building the chat prompt");
        free(buf);
        return NULL;
    }
    return buf;
}
