/*
 * chart.c - a scatter chart as a standalone SVG file, written by hand so
 * that `bench --chart` and `eval --chart` need no plotting tool.
 *
 * Layout: a fixed 720x480 canvas, a plot area with 5 ticks per axis on
 * "nice" values (1, 2 or 5 times a power of ten), one circle per point
 * with its label, and an optional third quantity drawn as the circle's
 * radius (scaled linearly from the smallest to the largest value).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "bench.h"

enum { CHART_W = 720, CHART_H = 480, MARGIN_L = 80, MARGIN_R = 160, MARGIN_T = 50,
       MARGIN_B = 60 };

typedef struct {
    double lo, hi, step;
} axis_range;

/* Rounds a raw tick step up to 1, 2 or 5 times a power of ten. */
static double nice_step(double raw) {
    if (!(raw > 0)) return 1;
    double mag = pow(10, floor(log10(raw)));
    double f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

/* Axis range that starts at 0 when all values are positive (sizes and
 * speeds read best from zero) and covers every value. */
static axis_range make_range(double lo, double hi) {
    axis_range r;
    if (lo > 0) lo = 0;
    if (hi <= lo) hi = lo + 1;
    r.step = nice_step((hi - lo) / 5);
    r.lo = floor(lo / r.step) * r.step;
    r.hi = ceil(hi / r.step) * r.step;
    if (r.hi <= r.lo) r.hi = r.lo + r.step;
    return r;
}

/* Writes text with the XML special characters escaped. */
static void write_escaped(FILE *f, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

static int point_ok(const av_chart_point *p) { return isfinite(p->x) && isfinite(p->y); }

static void write_axes(FILE *f, const av_chart_axes *axes, axis_range xr, axis_range yr) {
    const int pw = CHART_W - MARGIN_L - MARGIN_R, ph = CHART_H - MARGIN_T - MARGIN_B;
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"none\" "
            "stroke=\"#444\"/>\n", MARGIN_L, MARGIN_T, pw, ph);
    for (double v = xr.lo; v <= xr.hi + xr.step * 1e-6; v += xr.step) {
        double x = MARGIN_L + (v - xr.lo) / (xr.hi - xr.lo) * pw;
        fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#ddd\"/>\n", x,
                MARGIN_T, x, MARGIN_T + ph);
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%g</text>\n", x,
                MARGIN_T + ph + 18, v);
    }
    for (double v = yr.lo; v <= yr.hi + yr.step * 1e-6; v += yr.step) {
        double y = MARGIN_T + ph - (v - yr.lo) / (yr.hi - yr.lo) * ph;
        fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" stroke=\"#ddd\"/>\n",
                MARGIN_L, y, MARGIN_L + pw, y);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%g</text>\n", MARGIN_L - 6,
                y + 4, v);
    }
    fprintf(f, "<text x=\"%d\" y=\"28\" font-size=\"16\" font-weight=\"bold\">", MARGIN_L);
    write_escaped(f, axes->title);
    fprintf(f, "</text>\n<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">", MARGIN_L + pw / 2,
            CHART_H - 15);
    write_escaped(f, axes->x_label);
    fprintf(f, "</text>\n<text transform=\"translate(20 %d) rotate(-90)\" "
            "text-anchor=\"middle\">", MARGIN_T + ph / 2);
    write_escaped(f, axes->y_label);
    fputs("</text>\n", f);
    if (axes->z_label) {
        fprintf(f, "<text x=\"%d\" y=\"%d\">circle area: ", MARGIN_L + pw + 10, MARGIN_T + 10);
        write_escaped(f, axes->z_label);
        fputs("</text>\n", f);
    }
}

static void write_points(FILE *f, const av_chart_point *points, int n, axis_range xr,
                         axis_range yr) {
    static const char *colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e",
                                   "#8c564b"};
    const int pw = CHART_W - MARGIN_L - MARGIN_R, ph = CHART_H - MARGIN_T - MARGIN_B;
    double zmin = INFINITY, zmax = -INFINITY;
    for (int i = 0; i < n; i++)
        if (point_ok(&points[i]) && isfinite(points[i].z)) {
            zmin = fmin(zmin, points[i].z);
            zmax = fmax(zmax, points[i].z);
        }
    for (int i = 0; i < n; i++) {
        const av_chart_point *p = &points[i];
        if (!point_ok(p)) continue;
        double x = MARGIN_L + (p->x - xr.lo) / (xr.hi - xr.lo) * pw;
        double y = MARGIN_T + ph - (p->y - yr.lo) / (yr.hi - yr.lo) * ph;
        double r = 6;
        if (isfinite(p->z) && zmax > zmin) r = 5 + 15 * sqrt((p->z - zmin) / (zmax - zmin));
        const char *color = colors[i % (int)(sizeof colors / sizeof colors[0])];
        fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"%.1f\" fill=\"%s\" "
                "fill-opacity=\"0.6\" stroke=\"%s\"/>\n", x, y, r, color, color);
        fprintf(f, "<text x=\"%.1f\" y=\"%.1f\">", x + r + 4, y + 4);
        write_escaped(f, p->label);
        if (isfinite(p->z)) fprintf(f, " (%.4g)", p->z);
        fputs("</text>\n", f);
    }
}

av_status av_chart_write_svg(const char *path, const av_chart_axes *axes,
                             const av_chart_point *points, int n) {
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (!point_ok(&points[i])) continue;
        xlo = fmin(xlo, points[i].x);
        xhi = fmax(xhi, points[i].x);
        ylo = fmin(ylo, points[i].y);
        yhi = fmax(yhi, points[i].y);
    }
    if (!isfinite(xlo)) xlo = xhi = ylo = yhi = 0;
    axis_range xr = make_range(xlo, xhi), yr = make_range(ylo, yhi);

    FILE *f = fopen(path, "w");
    if (!f)
        return av_set_error(AV_ERR_IO, "cannot create chart file %s: %s", path, strerror(errno));
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "viewBox=\"0 0 %d %d\" font-family=\"sans-serif\" font-size=\"12\">\n"
            "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            CHART_W, CHART_H, CHART_W, CHART_H);
    write_axes(f, axes, xr, yr);
    write_points(f, points, n, xr, yr);
    fputs("</svg>\n", f);
    if (fclose(f) != 0)
        return av_set_error(AV_ERR_IO, "cannot write chart file %s: %s", path, strerror(errno));
    return AV_OK;
}
