/*
 * main.c - entry point of the `airavata` program: dispatches subcommands.
 */
#include <stdio.h>
#include <string.h>

#include "airavata.h"
#include "cli.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *summary;
} commands[] = {
    {"generate", cmd_generate, "generate text from a prompt or a chat message"},
    {"info", cmd_info, "print a checkpoint's architecture, tensors, dtypes and size"},
    {"tokenize", cmd_tokenize, "print the token ids and pieces of a text"},
    {"serve", cmd_serve, "serve the model over HTTP (/generate and the OpenAI API)"},
    {"quantize", cmd_quantize, "convert a checkpoint to NF4 or int8 (bitsandbytes) or bf16/f16"},
    {"pull", cmd_pull, "download a model from the Hugging Face hub into the cache"},
    {"bench", cmd_bench, "measure size, memory, load time and speed of models or a server"},
    {"eval", cmd_eval, "perplexity and KL divergence of a quantized model against its base"},
};

static void print_usage(FILE *out) {
    fprintf(out, "usage: airavata COMMAND [OPTIONS]\n\n"
                 "Runs Llama-family language models (such as ai4bharat/Airavata) on the CPU.\n\n"
                 "commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(out, "\nRun 'airavata COMMAND --help' for the options of a command.\n\n"
                 "exit codes:\n"
                 "  0  success\n"
                 "  1  the command failed (invalid model or input, I/O error); the reason is\n"
                 "     printed on stderr\n"
                 "  2  invalid command line\n");
}

int main(int argc, char **argv) {
    if (argc < 2) {
        print_usage(stderr);
        return AV_EXIT_USAGE;
    }
    const char *name = argv[1];
    if (!strcmp(name, "--help") || !strcmp(name, "-h") || !strcmp(name, "help")) {
        print_usage(stdout);
        return AV_EXIT_OK;
    }
    if (!strcmp(name, "--version")) {
        printf("airavata %s\n", AV_VERSION_STRING);
        return AV_EXIT_OK;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(name, commands[i].name)) return commands[i].run(argc - 1, argv + 1);

    fprintf(stderr, "airavata: unknown command '%s'; run 'airavata --help' for the list\n", name);
    return AV_EXIT_USAGE;
}
