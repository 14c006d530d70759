/*
 * args.c - option value parsing shared by the subcommands.
 *
 * Every command reports an invalid value the same way, naming the command,
 * the option, the value and the accepted range.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "cli.h"

int cli_parse_long(const char *command, const char *opt, const char *value, long min, long max,
                   long *out) {
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    if (errno || end == value || *end || v < min || v > max) {
        fprintf(stderr, "airavata %s: invalid value '%s' for %s: expected an integer from %ld "
                "to %ld\n", command, value, opt, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_int(const char *command, const char *opt, const char *value, long min, long max,
                  int *out) {
    long v;
    if (cli_parse_long(command, opt, value, min, max, &v)) return -1;
    *out = (int)v;
    return 0;
}

int cli_parse_float(const char *command, const char *opt, const char *value, float *out) {
    char *end;
    errno = 0;
    float v = strtof(value, &end);
    if (errno || end == value || *end) {
        fprintf(stderr, "airavata %s: invalid value '%s' for %s: expected a number\n", command,
                value, opt);
        return -1;
    }
    *out = v;
    return 0;
}
