/*
 * test_config.c - parsing and validation of config.json and
 * generation_config.json.
 *
 * The real stories260K config must load with the values of its
 * config.json. Each invalid config is the stories260K config with one field
 * changed, written to a temporary directory. It must fail with a message
 * naming the field.
 */
#include <unistd.h>

#include "check.h"
#include "loader/loader.h"

static char tmp_dir[] = "/tmp/av_test_config_XXXXXX";

/* The stories260K config.json, with a %s slot for extra or replaced
 * fields (a later duplicate key overrides an earlier one in jansson). */
static const char *base_config =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", "
    "\"hidden_size\": 64, \"intermediate_size\": 172, \"num_hidden_layers\": 5, "
    "\"num_attention_heads\": 8, \"num_key_value_heads\": 4, \"vocab_size\": 512, "
    "\"max_position_embeddings\": 512, \"hidden_act\": \"silu\", \"rms_norm_eps\": 1e-05, "
    "\"rope_theta\": 10000.0, \"rope_scaling\": null, \"attention_bias\": false, "
    "\"mlp_bias\": false, \"bos_token_id\": 1, \"eos_token_id\": 2, "
    "\"tie_word_embeddings\": true, \"torch_dtype\": \"float32\"%s}";

static const char *write_file(const char *name, const char *text) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    FILE *fp = fopen(path, "wb");
    if (fp) {
        fputs(text, fp);
        fclose(fp);
    }
    return path;
}

/* Loads base_config with `extra` appended (", \"key\": value"). */
static av_status load_with(const char *extra, av_config *config) {
    char text[4096];
    snprintf(text, sizeof text, base_config, extra);
    return av_config_load(write_file("config.json", text), config);
}

static void expect_config_error(const char *text, av_status status, const char *expected) {
    av_config config;
    av_status got = av_config_load(write_file("config.json", text), &config);
    CHECK_MSG(got == status, "status %d, expected %d (%s)", got, status, av_last_error());
    CHECK_MSG(strstr(av_last_error(), expected) != NULL, "message '%s' lacks '%s'",
              av_last_error(), expected);
    CHECK_MSG(strstr(av_last_error(), "config.json") != NULL, "message '%s' lacks the file",
              av_last_error());
}

static void expect_extra_error(const char *extra, av_status status, const char *expected) {
    char text[4096];
    snprintf(text, sizeof text, base_config, extra);
    expect_config_error(text, status, expected);
}

static void test_load_stories260k(void) {
    char path[512];
    av_config c;
    av_status s = av_config_load(av_test_path(path, sizeof path, "models/stories260K/config.json"), &c);
    CHECK_MSG(s == AV_OK, "%s", av_last_error());
    if (s) return;
    CHECK(!strcmp(c.architecture, "LlamaForCausalLM"));
    CHECK(c.dim == 64);
    CHECK(c.hidden_dim == 172);
    CHECK(c.n_layers == 5);
    CHECK(c.n_heads == 8);
    CHECK(c.n_kv_heads == 4);
    CHECK(c.head_dim == 8);
    CHECK(c.vocab_size == 512);
    CHECK(c.max_seq_len == 512);
    CHECK_NEAR(c.norm_eps, 1e-5, 1e-12);
    CHECK_NEAR(c.rope_theta, 10000.0, 0);
    CHECK(c.tie_embeddings == 1);
    CHECK(c.bos_id == 1);
    CHECK(c.eos_id == 2);
    CHECK(c.torch_dtype == AV_DTYPE_F32);
}

static void test_defaults(void) {
    /* Without num_key_value_heads, head_dim, rope_theta, tie_word_embeddings,
     * token ids and torch_dtype. */
    av_config c;
    av_status s = av_config_load(
        write_file("config.json",
                   "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 4096, "
                   "\"intermediate_size\": 11008, \"num_hidden_layers\": 32, "
                   "\"num_attention_heads\": 32, \"vocab_size\": 48065, "
                   "\"max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-06}"),
        &c);
    CHECK_MSG(s == AV_OK, "%s", av_last_error());
    CHECK(c.n_kv_heads == 32);
    CHECK(c.head_dim == 128);
    CHECK_NEAR(c.rope_theta, 10000.0, 0);
    CHECK(c.tie_embeddings == 0);
    CHECK(c.bos_id == -1);
    CHECK(c.eos_id == -1);
    CHECK(c.torch_dtype == AV_DTYPE_F32);
}

static void test_accepted_variants(void) {
    av_config c;
    CHECK(load_with(", \"eos_token_id\": [2, 7]", &c) == AV_OK);
    CHECK(c.eos_id == 2);
    CHECK(load_with(", \"torch_dtype\": \"bfloat16\"", &c) == AV_OK);
    CHECK(c.torch_dtype == AV_DTYPE_BF16);
    CHECK(load_with(", \"torch_dtype\": null, \"dtype\": \"float16\"", &c) == AV_OK);
    CHECK(c.torch_dtype == AV_DTYPE_F16);
    CHECK(load_with(", \"head_dim\": 16", &c) == AV_OK);
    CHECK(c.head_dim == 16);
    CHECK(load_with(", \"rope_theta\": 500000", &c) == AV_OK);
    CHECK(c.rope_theta == 500000.0f);
    CHECK(load_with(", \"architectures\": [\"MistralForCausalLM\"], \"sliding_window\": null",
                    &c) == AV_OK);
    CHECK(!strcmp(c.architecture, "MistralForCausalLM"));
    CHECK(load_with(", \"architectures\": [\"MistralForCausalLM\"], \"sliding_window\": 4096",
                    &c) == AV_OK);
}

static void test_missing_fields(void) {
    expect_config_error("{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 64}",
                        AV_ERR_FORMAT, "missing required field \"intermediate_size\"");
    expect_config_error("{\"hidden_size\": 64}", AV_ERR_FORMAT, "missing \"architectures\"");
    char text[4096];
    snprintf(text, sizeof text, base_config, "");
    /* Remove "vocab_size": 512 from the text. */
    char *field = strstr(text, "\"vocab_size\": 512, ");
    if (field) memmove(field, field + 19, strlen(field + 19) + 1);
    expect_config_error(text, AV_ERR_FORMAT, "missing required field \"vocab_size\"");
}

static void test_invalid_values(void) {
    expect_extra_error(", \"num_attention_heads\": 0", AV_ERR_INVALID,
                       "\"num_attention_heads\" is 0; it must be between 1 and");
    expect_extra_error(", \"hidden_size\": -64", AV_ERR_INVALID, "\"hidden_size\" is -64");
    expect_extra_error(", \"num_hidden_layers\": 2000000", AV_ERR_INVALID,
                       "\"num_hidden_layers\" is 2000000; it must be between 1 and 4096");
    expect_extra_error(", \"hidden_size\": \"64\"", AV_ERR_FORMAT,
                       "\"hidden_size\" must be an integer, found \"64\"");
    expect_extra_error(", \"vocab_size\": 512.0", AV_ERR_FORMAT,
                       "\"vocab_size\" must be an integer, found 512.0");
    expect_extra_error(", \"num_attention_heads\": 6, \"num_key_value_heads\": 6", AV_ERR_INVALID,
                       "\"hidden_size\" 64 is not divisible by \"num_attention_heads\" 6; set "
                       "\"head_dim\"");
    expect_extra_error(", \"num_key_value_heads\": 3", AV_ERR_INVALID,
                       "\"num_attention_heads\" 8 is not a multiple of \"num_key_value_heads\" 3");
    expect_extra_error(", \"head_dim\": 7", AV_ERR_INVALID, "head dimension 7 is odd");
    expect_extra_error(", \"rms_norm_eps\": 0", AV_ERR_INVALID, "\"rms_norm_eps\" is 0");
    expect_extra_error(", \"rope_theta\": -1", AV_ERR_INVALID, "\"rope_theta\" is -1");
    expect_extra_error(", \"tie_word_embeddings\": 1", AV_ERR_FORMAT,
                       "\"tie_word_embeddings\" must be true or false");
    expect_extra_error(", \"eos_token_id\": 512", AV_ERR_INVALID, "is not below vocab_size 512");
    expect_extra_error(", \"bos_token_id\": \"<s>\"", AV_ERR_FORMAT,
                       "\"bos_token_id\" must be a non-negative integer");
    expect_config_error("{\"hidden_size\": 64,}", AV_ERR_FORMAT, "invalid JSON");
    expect_config_error("[1]", AV_ERR_FORMAT, "expected a JSON object");
}

static void test_unsupported_features(void) {
    expect_extra_error(", \"architectures\": [\"GPT2LMHeadModel\"]", AV_ERR_UNSUPPORTED,
                       "architecture GPT2LMHeadModel is not supported");
    expect_extra_error(", \"architectures\": [\"MistralForCausalLM\"], \"sliding_window\": 256",
                       AV_ERR_UNSUPPORTED,
                       "\"sliding_window\" is 256, below max_position_embeddings 512");
    expect_extra_error(", \"hidden_act\": \"gelu\"", AV_ERR_UNSUPPORTED,
                       "\"hidden_act\" is \"gelu\"; only \"silu\" is supported");
    expect_extra_error(", \"attention_bias\": true", AV_ERR_UNSUPPORTED, "\"attention_bias\" is true");
    expect_extra_error(", \"mlp_bias\": true", AV_ERR_UNSUPPORTED, "\"mlp_bias\" is true");
    expect_extra_error(", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}",
                       AV_ERR_UNSUPPORTED, "\"rope_scaling\" is {\"type\":\"linear\"");
    expect_extra_error(", \"torch_dtype\": \"int8\"", AV_ERR_UNSUPPORTED,
                       "\"torch_dtype\" is \"int8\"");
}

static void test_missing_file(void) {
    char path[600];
    snprintf(path, sizeof path, "%s/absent.json", tmp_dir);
    av_config c;
    CHECK(av_config_load(path, &c) == AV_ERR_IO);
    CHECK(strstr(av_last_error(), "absent.json: cannot open") != NULL);
}

static void test_generation_config(void) {
    char path[512];
    av_generation_config g;
    av_status s = av_generation_config_load(
        av_test_path(path, sizeof path, "models/stories260K/generation_config.json"), &g);
    CHECK_MSG(s == AV_OK, "%s", av_last_error());
    CHECK(g.bos_id == 1);
    CHECK(g.eos_id == 2);
    CHECK(g.pad_id == -1);
    /* do_sample false there: greedy. */
    CHECK(g.temperature == 0);
    CHECK(g.top_p == -1);
    CHECK(g.top_k == -1);
    CHECK(g.repetition_penalty == -1);
    CHECK(g.max_new_tokens == -1);

    s = av_generation_config_load(
        write_file("generation_config.json",
                   "{\"temperature\": 0.6, \"top_p\": 0.9, \"top_k\": 50, "
                   "\"repetition_penalty\": 1.1, \"max_new_tokens\": 256, "
                   "\"eos_token_id\": [2, 3], \"pad_token_id\": 0}"),
        &g);
    CHECK_MSG(s == AV_OK, "%s", av_last_error());
    CHECK_NEAR(g.temperature, 0.6, 1e-6);
    CHECK_NEAR(g.top_p, 0.9, 1e-6);
    CHECK(g.top_k == 50);
    CHECK_NEAR(g.repetition_penalty, 1.1, 1e-6);
    CHECK(g.max_new_tokens == 256);
    CHECK(g.bos_id == -1);
    CHECK(g.eos_id == 2);
    CHECK(g.pad_id == 0);

    s = av_generation_config_load(write_file("generation_config.json", "{\"top_p\": 1.5}"), &g);
    CHECK(s == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "generation_config.json: \"top_p\" is 1.5") != NULL);
    s = av_generation_config_load(write_file("generation_config.json", "{\"top_k\": \"x\"}"), &g);
    CHECK(s == AV_ERR_FORMAT);
    CHECK(strstr(av_last_error(), "\"top_k\" must be an integer") != NULL);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_load_stories260k);
    RUN(test_defaults);
    RUN(test_accepted_variants);
    RUN(test_missing_fields);
    RUN(test_invalid_values);
    RUN(test_unsupported_features);
    RUN(test_missing_file);
    RUN(test_generation_config);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", tmp_dir);
    unlink(path);
    snprintf(path, sizeof path, "%s/generation_config.json", tmp_dir);
    unlink(path);
    rmdir(tmp_dir);
    return CHECK_DONE();
}
