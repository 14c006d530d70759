/*
 * progress.c - progress output of `airavata pull` on stderr.
 *
 * When stderr is a terminal, two bars are redrawn in place: the current
 * file and the whole pull, each with bytes, rate and time left. Otherwise
 * (a log file, a pipe, a CI job) plain lines are written: one when a file
 * starts, one when it ends, and one every LOG_INTERVAL_S seconds for long
 * files.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "hub/hub.h"

#define REDRAW_INTERVAL_S 0.1
#define LOG_INTERVAL_S 30.0
#define BAR_WIDTH 24

struct av_hub_progress {
    int tty;
    int n_files, file_index;     /* file_index counts from 1 */
    uint64_t total_bytes;        /* all files of the pull */
    uint64_t finished_bytes;     /* files already ended */
    uint64_t session_bytes;      /* bytes received by this process */
    double pull_start;
    char name[128];
    int64_t size, resumed, done; /* current file */
    double file_start, last_output;
    int bars_drawn;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void format_bytes(double bytes, char *out, size_t size) {
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(out, size, "%.0f %s", bytes, units[u]);
    else
        snprintf(out, size, "%.1f %s", bytes, units[u]);
}

static void format_duration(double seconds, char *out, size_t size) {
    if (seconds < 0 || seconds > 99 * 3600.0) {
        snprintf(out, size, "--:--:--");
        return;
    }
    long s = (long)(seconds + 0.5);
    snprintf(out, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
}

av_hub_progress *av_hub_progress_create(int n_files, uint64_t total_bytes) {
    av_hub_progress *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->tty = isatty(STDERR_FILENO);
    p->n_files = n_files;
    p->total_bytes = total_bytes;
    p->pull_start = now_s();
    return p;
}

/* Removes the bars so that a log line can be printed in their place. */
static void clear_bars(av_hub_progress *p) {
    if (!p->bars_drawn) return;
    fputs("\r\033[K\033[1A\r\033[K", stderr);
    p->bars_drawn = 0;
}

void av_hub_progress_free(av_hub_progress *p) {
    if (!p) return;
    clear_bars(p);
    free(p);
}

/* One bar line: label, bar, percent, bytes, rate and time left. */
static void draw_line(const char *label, uint64_t done, uint64_t total, double rate) {
    char done_s[32], total_s[32], rate_s[32], left_s[32];
    double fraction = total ? (double)done / (double)total : 0.0;
    if (fraction > 1.0) fraction = 1.0;
    char bar[BAR_WIDTH + 1];
    int filled = (int)(fraction * BAR_WIDTH);
    for (int i = 0; i < BAR_WIDTH; i++) bar[i] = i < filled ? '#' : '.';
    bar[BAR_WIDTH] = '\0';
    format_bytes((double)done, done_s, sizeof done_s);
    format_bytes((double)total, total_s, sizeof total_s);
    format_bytes(rate, rate_s, sizeof rate_s);
    uint64_t remaining = done < total ? total - done : 0;
    double seconds_left = rate > 0 ? (double)remaining / rate : -1;
    format_duration(seconds_left, left_s, sizeof left_s);
    fprintf(stderr, "\033[K%-28.28s [%s] %3.0f%%  %s / %s  %s/s  %s left", label, bar,
            100.0 * fraction, done_s, total_s, rate_s, left_s);
}

static void draw_bars(av_hub_progress *p) {
    double t = now_s();
    double file_elapsed = t - p->file_start, pull_elapsed = t - p->pull_start;
    double file_rate = file_elapsed > 0 ? (double)(p->done - p->resumed) / file_elapsed : 0;
    uint64_t received = p->session_bytes + (uint64_t)(p->done - p->resumed);
    double pull_rate = pull_elapsed > 0 ? (double)received / pull_elapsed : 0;
    char total_label[64];
    snprintf(total_label, sizeof total_label, "total (file %d of %d)", p->file_index,
             p->n_files);

    if (p->bars_drawn) fputs("\r\033[1A", stderr);
    fputc('\r', stderr);
    draw_line(p->name, (uint64_t)p->done, p->size >= 0 ? (uint64_t)p->size : 0, file_rate);
    fputs("\n\r", stderr);
    draw_line(total_label, p->finished_bytes + (uint64_t)p->done, p->total_bytes, pull_rate);
    fflush(stderr);
    p->bars_drawn = 1;
    p->last_output = t;
}

void av_hub_progress_start(av_hub_progress *p, const char *name, int64_t size, int64_t resumed) {
    p->file_index++;
    snprintf(p->name, sizeof p->name, "%s", name);
    p->size = size;
    p->resumed = p->done = resumed;
    p->file_start = p->last_output = now_s();
    char size_s[32], resumed_s[32];
    format_bytes(size >= 0 ? (double)size : 0, size_s, sizeof size_s);
    format_bytes((double)resumed, resumed_s, sizeof resumed_s);
    if (p->tty) {
        draw_bars(p);
        return;
    }
    if (resumed > 0)
        fprintf(stderr, "pull: [%d/%d] %s (%s), resuming at %s\n", p->file_index, p->n_files,
                name, size >= 0 ? size_s : "size unknown", resumed_s);
    else
        fprintf(stderr, "pull: [%d/%d] %s (%s)\n", p->file_index, p->n_files, name,
                size >= 0 ? size_s : "size unknown");
}

void av_hub_progress_update(av_hub_progress *p, int64_t done) {
    p->done = done;
    double t = now_s();
    if (p->tty) {
        if (t - p->last_output >= REDRAW_INTERVAL_S) draw_bars(p);
    } else if (t - p->last_output >= LOG_INTERVAL_S && p->size > 0) {
        char done_s[32];
        format_bytes((double)done, done_s, sizeof done_s);
        fprintf(stderr, "pull: %s: %s, %.0f%%\n", p->name, done_s,
                100.0 * (double)done / (double)p->size);
        p->last_output = t;
    }
}

void av_hub_progress_end(av_hub_progress *p, int ok) {
    double elapsed = now_s() - p->file_start;
    uint64_t received = (uint64_t)(p->done - p->resumed);
    char received_s[32], rate_s[32];
    format_bytes((double)received, received_s, sizeof received_s);
    format_bytes(elapsed > 0 ? (double)received / elapsed : 0, rate_s, sizeof rate_s);
    clear_bars(p);
    if (ok)
        fprintf(stderr, "pull: [%d/%d] %s done: %s in %.1f s (%s/s)\n", p->file_index,
                p->n_files, p->name, received_s, elapsed, rate_s);
    p->session_bytes += received;
    p->finished_bytes += (uint64_t)(p->size >= 0 ? p->size : p->done);
    p->size = p->resumed = p->done = 0;
}

void av_hub_progress_note(av_hub_progress *p, const char *fmt, ...) {
    int redraw = p->bars_drawn;
    clear_bars(p);
    va_list ap;
    va_start(ap, fmt);
    fputs("pull: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (redraw) draw_bars(p);
}
