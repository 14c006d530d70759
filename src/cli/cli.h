/*
 * cli.h - shared pieces of the `airavata` subcommands.
 *
 * Each subcommand lives in its own file as `int cmd_NAME(int argc, char
 * **argv)`, where argv[0] is the subcommand name, and returns the process
 * exit code.
 */
#ifndef AV_CLI_H
#define AV_CLI_H

/* Exit codes of the airavata program (documented in `airavata --help`). */
enum {
    AV_EXIT_OK = 0,
    AV_EXIT_FAILURE = 1, /* the command failed: bad model, I/O error, ... */
    AV_EXIT_USAGE = 2,   /* invalid command line */
};

int cmd_generate(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_pull(int argc, char **argv);

/* Parse a whole decimal integer in [min, max], or a number, from the value
 * of option `opt`. On failure they print "airavata COMMAND: invalid value
 * ..." to stderr and return -1; the callers then exit with AV_EXIT_USAGE.
 * cli_parse_int requires min and max to fit in an int. */
int cli_parse_long(const char *command, const char *opt, const char *value, long min, long max,
                   long *out);
int cli_parse_int(const char *command, const char *opt, const char *value, long min, long max,
                  int *out);
int cli_parse_float(const char *command, const char *opt, const char *value, float *out);

#endif
