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

#endif
