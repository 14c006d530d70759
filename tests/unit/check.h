/*
 * check.h - the minimal harness of the C unit tests.
 *
 * A test file defines functions `static void test_xxx(void)` and lists them
 * in main() with RUN(test_xxx). CHECK failures are counted and reported
 * with file and line; the program exits non-zero if any check failed.
 * Paths to shared reference data come from av_test_data_dir().
 */
#ifndef AV_TEST_CHECK_H
#define AV_TEST_CHECK_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;
static int check_count;
static const char *check_current = "";

#define CHECK(cond)                                                                   \
    do {                                                                              \
        check_count++;                                                                \
        if (!(cond)) {                                                                \
            check_failures++;                                                         \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,      \
                    check_current, #cond);                                            \
        }                                                                             \
    } while (0)

#define CHECK_MSG(cond, ...)                                                          \
    do {                                                                              \
        check_count++;                                                                \
        if (!(cond)) {                                                                \
            check_failures++;                                                         \
            fprintf(stderr, "%s:%d: %s: check failed: %s: ", __FILE__, __LINE__,      \
                    check_current, #cond);                                            \
            fprintf(stderr, __VA_ARGS__);                                             \
            fprintf(stderr, "\n");                                                    \
        }                                                                             \
    } while (0)

#define CHECK_NEAR(a, b, tol) \
    CHECK_MSG(fabs((double)(a) - (double)(b)) <= (tol), "%.9g vs %.9g (tol %g)", \
              (double)(a), (double)(b), (double)(tol))

#define RUN(fn)                                                                       \
    do {                                                                              \
        int before = check_failures;                                                  \
        check_current = #fn;                                                          \
        fn();                                                                         \
        printf("%s %s\n", check_failures == before ? "ok  " : "FAIL", #fn);          \
    } while (0)

#define CHECK_DONE()                                                                  \
    (printf("%d checks, %d failed\n", check_count, check_failures),                   \
     check_failures ? 1 : 0)

/* Directory of the shared reference data: $AIRAVATA_SHARED or ../shared. */
static inline const char *av_test_data_dir(void) {
    const char *dir = getenv("AIRAVATA_SHARED");
    return dir && *dir ? dir : "../shared";
}

/* Writes "<shared dir>/<rel>" into buf and returns buf. */
static inline const char *av_test_path(char *buf, size_t size, const char *rel) {
    snprintf(buf, size, "%s/%s", av_test_data_dir(), rel);
    return buf;
}

#endif
