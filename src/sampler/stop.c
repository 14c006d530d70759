/*
 * stop.c - stop strings matched on generated text.
 *
 * Streaming must not print text that may turn out to be the start of a stop
 * string, and must never split a UTF-8 character. av_stop_scan() reports
 * both where a stop string matched and how much of the text is safe to
 * release now.
 */
#include <string.h>

#include "airavata.h"

/* Moves n back so that text[0..n) does not end inside a UTF-8 character. */
static size_t utf8_boundary(const char *text, size_t len, size_t n) {
    while (n > 0 && n < len && ((unsigned char)text[n] & 0xc0) == 0x80) n--;
    return n;
}

long av_stop_scan(const char *text, size_t len, const char *const *stops, int n_stops,
                  size_t *safe_len) {
    long match = -1;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        if (sl == 0 || sl > len) continue;
        const char *hit = memmem(text, len, stops[i], sl);
        if (hit && (match < 0 || hit - text < match)) match = hit - text;
    }
    if (match >= 0) {
        if (safe_len) *safe_len = (size_t)match;
        return match;
    }

    /* Hold back the longest tail that is a proper prefix of a stop string. */
    size_t hold = 0;
    for (int i = 0; i < n_stops; i++) {
        size_t sl = strlen(stops[i]);
        for (size_t k = sl > len ? len : sl - 1; k > hold; k--) {
            if (sl && k < sl && !memcmp(text + len - k, stops[i], k)) {
                hold = k;
                break;
            }
        }
    }
    if (safe_len) *safe_len = utf8_boundary(text, len, len - hold);
    return -1;
}
