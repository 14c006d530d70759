/*
 * error.c - per-thread error messages and the logger.
 *
 * Library functions report failure by returning an av_status and recording
 * a message with av_set_error(); callers read it back with av_last_error().
 * The message lives in thread-local storage so that server threads do not
 * overwrite each other's errors.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "airavata.h"

#define AV_ERROR_MAX 1024

static _Thread_local char error_message[AV_ERROR_MAX];
static av_log_level log_level = AV_LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

const char *av_last_error(void) {
    return error_message[0] ? error_message : "no error";
}

av_status av_set_error(av_status status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return status;
}

const char *av_status_name(av_status status) {
    switch (status) {
    case AV_OK: return "ok";
    case AV_ERR_IO: return "i/o error";
    case AV_ERR_FORMAT: return "format error";
    case AV_ERR_INVALID: return "invalid argument";
    case AV_ERR_UNSUPPORTED: return "unsupported";
    case AV_ERR_NOMEM: return "out of memory";
    case AV_ERR_RANGE: return "out of range";
    }
    return "unknown status";
}

void av_log_set_level(av_log_level level) { log_level = level; }

void av_log(av_log_level level, const char *fmt, ...) {
    static const char *names[] = {"error", "warn", "info", "debug"};
    if (level > log_level) return;

    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r(&now.tv_sec, &tm);

    char line[4096];
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(now.tv_nsec / 1000000), names[level]);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);

    pthread_mutex_lock(&log_lock);
    fprintf(stderr, "%s\n", line);
    pthread_mutex_unlock(&log_lock);
}
