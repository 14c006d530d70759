/* Airavata's chat template: the prompt strings of typical conversations. */
#include "airavata.h"
#include "check.h"

static void check_prompt(const av_chat_message *messages, int n, const char *expected) {
    char *prompt = av_chat_format(messages, n);
    CHECK_MSG(prompt && !strcmp(prompt, expected), "got '%s'", prompt ? prompt : av_last_error());
    free(prompt);
}

static void test_system_and_user(void) {
    av_chat_message messages[] = {
        {"system", "आप एक सहायक हैं।"},
        {"user", "भारत की राजधानी क्या है?"},
    };
    check_prompt(messages, 2,
                 "<s><|system|>\nआप एक सहायक हैं।\n<|user|>\nभारत की राजधानी क्या है?\n"
                 "<|assistant|>\n");
}

static void test_user_only(void) {
    av_chat_message message = {"user", "Hello"};
    check_prompt(&message, 1, "<s><|user|>\nHello\n<|assistant|>\n");
}

static void test_no_messages(void) {
    check_prompt(NULL, 0, "<s><|assistant|>\n");
}

static void test_multi_turn_with_assistant(void) {
    /* Assistant replies are stripped, Unicode spaces included; user and
     * system contents are kept as they are. */
    av_chat_message messages[] = {
        {"user", "  नमस्ते  "},
        {"assistant", " \n\tनमस्ते! मैं आपकी कैसे मदद कर सकता हूँ?\xe3\x80\x80\n "},
        {"user", "Tell me a story."},
    };
    check_prompt(messages, 3,
                 "<s><|user|>\n  नमस्ते  \n"
                 "<|assistant|>\nनमस्ते! मैं आपकी कैसे मदद कर सकता हूँ?</s>\n"
                 "<|user|>\nTell me a story.\n<|assistant|>\n");
}

static void test_assistant_whitespace_only(void) {
    av_chat_message messages[] = {{"user", "a"}, {"assistant", " \xc2\xa0\n"}};
    check_prompt(messages, 2, "<s><|user|>\na\n<|assistant|>\n</s>\n<|assistant|>\n");
}

static void test_unknown_role(void) {
    av_chat_message messages[] = {{"user", "hi"}, {"tool", "{}"}};
    CHECK(av_chat_format(messages, 2) == NULL);
    CHECK(strstr(av_last_error(), "'tool'") != NULL);
    CHECK(strstr(av_last_error(), "message 1") != NULL);

    av_chat_message missing = {"user", NULL};
    CHECK(av_chat_format(&missing, 1) == NULL);
    CHECK(strstr(av_last_error(), "content") != NULL);
}

int main(void) {
    RUN(test_system_and_user);
    RUN(test_user_only);
    RUN(test_no_messages);
    RUN(test_multi_turn_with_assistant);
    RUN(test_assistant_whitespace_only);
    RUN(test_unknown_role);
    return CHECK_DONE();
}
