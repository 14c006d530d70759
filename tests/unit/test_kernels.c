/* Kernels: every instruction set this CPU supports against the scalar
 * reference and against double-precision sums, for all weight dtypes, odd
 * shapes and 1 or 2 threads.
 *
 * Tolerances. A sum of n products accumulated in f32, in any order, is
 * within n * u * sum|w*x| of the exact sum (u = 2^-24, the standard bound
 * for recursive or blocked summation). Two such sums are therefore within
 * 2 * n * u * sum|w*x| of each other. A bug such as a dropped tail column
 * changes a sum by about sum|w*x| / n, far above that bound for every shape
 * tested here. */
#include <float.h>
#include <stdint.h>

#include "check.h"
#include "kernels/kernels.h"

#define U_F32 (1.0 / 16777216.0) /* 2^-24, unit roundoff of f32 */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rng_next(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

/* Uniform in [-1, 1). */
static float rng_float(void) { return (float)(rng_next() >> 8) / 8388608.0f - 1.0f; }

static const av_dtype matmul_dtypes[] = {AV_DTYPE_F32, AV_DTYPE_F16, AV_DTYPE_BF16};

/* Weight storage and its exact f32 values. */
typedef struct {
    av_matrix m;
    void *data;
    float *values; /* rows * cols, the stored weights converted to f32 */
} test_matrix;

static test_matrix make_matrix(av_dtype dtype, int64_t rows, int64_t cols) {
    test_matrix t;
    size_t n = (size_t)(rows * cols);
    t.data = malloc(n * av_dtype_size(dtype) + 1);
    t.values = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) {
        float v = rng_float();
        if (dtype == AV_DTYPE_F32) {
            ((float *)t.data)[i] = v;
            t.values[i] = v;
        } else if (dtype == AV_DTYPE_F16) {
            uint16_t h = av_f32_to_f16(v);
            ((uint16_t *)t.data)[i] = h;
            t.values[i] = av_f16_to_f32(h);
        } else {
            uint16_t h = av_f32_to_bf16(v);
            ((uint16_t *)t.data)[i] = h;
            t.values[i] = av_bf16_to_f32(h);
        }
    }
    t.m = (av_matrix){.dtype = dtype, .rows = rows, .cols = cols, .data = t.data};
    return t;
}

static void free_matrix(test_matrix *t) {
    free(t->data);
    free(t->values);
}

static float *random_vector(size_t n) {
    float *v = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) v[i] = rng_float();
    return v;
}

/* Fills exact[] with the double-precision products and abs[] with
 * sum|w*x| for every (token, row). */
static void matmul_double(const test_matrix *t, const float *x, int n_tokens, double *exact,
                          double *abs_sum) {
    int64_t rows = t->m.rows, cols = t->m.cols;
    for (int tok = 0; tok < n_tokens; tok++) {
        for (int64_t r = 0; r < rows; r++) {
            double s = 0.0, a = 0.0;
            for (int64_t c = 0; c < cols; c++) {
                double p = (double)t->values[r * cols + c] * (double)x[tok * cols + c];
                s += p;
                a += fabs(p);
            }
            exact[tok * rows + r] = s;
            abs_sum[tok * rows + r] = a;
        }
    }
}

static av_isa supported_isas[3];
static int n_supported_isas;

static void find_supported_isas(void) {
    n_supported_isas = 0;
    for (int isa = AV_ISA_SCALAR; isa <= (int)av_cpu_best_isa(); isa++) {
        supported_isas[n_supported_isas++] = (av_isa)isa;
    }
}

/* Compares av_matmul (current ISA, pool) with the reference and with the
 * double sums for one shape. Returns 1 if all outputs are within bounds. */
static int check_matmul_shape(av_threadpool *pool, av_dtype dtype, int64_t rows, int64_t cols,
                              int n_tokens) {
    test_matrix t = make_matrix(dtype, rows, cols);
    size_t ny = (size_t)(rows * n_tokens);
    float *x = random_vector((size_t)(cols * n_tokens));
    float *y = malloc(ny * sizeof(float));
    float *y_ref = malloc(ny * sizeof(float));
    double *exact = malloc(ny * sizeof(double));
    double *abs_sum = malloc(ny * sizeof(double));
    for (size_t i = 0; i < ny; i++) y[i] = NAN;

    av_matmul(pool, &t.m, x, n_tokens, y);
    av_matmul_ref(&t.m, x, n_tokens, y_ref);
    matmul_double(&t, x, n_tokens, exact, abs_sum);

    int ok = 1;
    for (size_t i = 0; i < ny && ok; i++) {
        double bound = (double)cols * U_F32 * abs_sum[i] + 1e-30;
        double d_ref = fabs((double)y_ref[i] - exact[i]);
        double d_path = fabs((double)y[i] - (double)y_ref[i]);
        if (!(d_ref <= bound) || !(d_path <= 2 * bound)) {
            fprintf(stderr,
                    "  %s %s rows %lld cols %lld tokens %d threads %d: output %zu: "
                    "got %.9g, reference %.9g, exact %.9g (bound %.3g)\n",
                    av_isa_name(av_kernels_isa()), av_dtype_name(dtype), (long long)rows,
                    (long long)cols, n_tokens, av_threadpool_size(pool), i, (double)y[i],
                    (double)y_ref[i], exact[i], bound);
            ok = 0;
        }
    }
    free_matrix(&t);
    free(x);
    free(y);
    free(y_ref);
    free(exact);
    free(abs_sum);
    return ok;
}

static void test_matmul_odd_shapes_all_isas(void) {
    static const int64_t rows_list[] = {1, 3, 17, 67};
    static const int64_t cols_list[] = {1, 7, 33, 100, 257};
    /* 37 tokens take the path that widens 16-bit weight panels once. */
    static const int tokens_list[] = {1, 2, 3, 5, 8, 13, 37};
    av_threadpool *pools[2] = {av_threadpool_create(1), av_threadpool_create(2)};
    CHECK(pools[0] && pools[1]);
    for (int k = 0; k < n_supported_isas; k++) {
        CHECK(av_kernels_set_isa(supported_isas[k]) == AV_OK);
        int bad = 0, total = 0;
        for (int d = 0; d < 3; d++)
            for (int ri = 0; ri < 4; ri++)
                for (int ci = 0; ci < 5; ci++)
                    for (int ti = 0; ti < 7; ti++)
                        for (int p = 0; p < 2; p++) {
                            total++;
                            bad += !check_matmul_shape(pools[p], matmul_dtypes[d],
                                                       rows_list[ri], cols_list[ci],
                                                       tokens_list[ti]);
                        }
        CHECK_MSG(bad == 0, "%s: %d of %d shapes out of bounds",
                  av_isa_name(supported_isas[k]), bad, total);
    }
    av_kernels_set_isa(av_cpu_best_isa());
    av_threadpool_free(pools[0]);
    av_threadpool_free(pools[1]);
}

/* Shapes large enough to be split among threads and, with 4100 columns,
 * to span several token blocks. */
static void test_matmul_large_shapes_all_isas(void) {
    static const int tokens_list[] = {1, 6, 27, 40};
    av_threadpool *pool = av_threadpool_create(2);
    CHECK(pool != NULL);
    for (int k = 0; k < n_supported_isas; k++) {
        CHECK(av_kernels_set_isa(supported_isas[k]) == AV_OK);
        for (int d = 0; d < 3; d++) {
            for (int ti = 0; ti < 4; ti++) {
                CHECK_MSG(check_matmul_shape(pool, matmul_dtypes[d], 131, 4100, tokens_list[ti]),
                          "%s %s tokens %d", av_isa_name(supported_isas[k]),
                          av_dtype_name(matmul_dtypes[d]), tokens_list[ti]);
            }
        }
    }
    av_kernels_set_isa(av_cpu_best_isa());
    av_threadpool_free(pool);
}

/* Each output's summation order depends only on the ISA, never on how rows
 * are split among threads, so 1 and 2 threads must agree bit for bit. */
static void test_matmul_threads_bitwise_equal(void) {
    av_threadpool *one = av_threadpool_create(1), *two = av_threadpool_create(2);
    CHECK(one && two);
    for (int k = 0; k < n_supported_isas; k++) {
        CHECK(av_kernels_set_isa(supported_isas[k]) == AV_OK);
        for (int d = 0; d < 3; d++) {
            test_matrix t = make_matrix(matmul_dtypes[d], 301, 515);
            float *x = random_vector(515 * 9);
            float *y1 = malloc(301 * 9 * sizeof(float)), *y2 = malloc(301 * 9 * sizeof(float));
            av_matmul(one, &t.m, x, 9, y1);
            av_matmul(two, &t.m, x, 9, y2);
            CHECK_MSG(memcmp(y1, y2, 301 * 9 * sizeof(float)) == 0, "%s %s",
                      av_isa_name(supported_isas[k]), av_dtype_name(matmul_dtypes[d]));
            free_matrix(&t);
            free(x);
            free(y1);
            free(y2);
        }
    }
    av_kernels_set_isa(av_cpu_best_isa());
    av_threadpool_free(one);
    av_threadpool_free(two);
}

static void test_set_isa_rejects_unsupported(void) {
    CHECK(av_kernels_set_isa(AV_ISA_SCALAR) == AV_OK);
    CHECK(av_kernels_isa() == AV_ISA_SCALAR);
    if (av_cpu_best_isa() < AV_ISA_AVX512) {
        CHECK(av_kernels_set_isa(AV_ISA_AVX512) == AV_ERR_UNSUPPORTED);
        CHECK(strstr(av_last_error(), "avx512") != NULL);
        CHECK(av_kernels_isa() == AV_ISA_SCALAR); /* unchanged */
    }
    CHECK(av_kernels_set_isa((av_isa)7) == AV_ERR_INVALID);
    CHECK(av_kernels_set_isa(av_cpu_best_isa()) == AV_OK);
    CHECK(strcmp(av_isa_name(AV_ISA_AVX2), "avx2") == 0);
}

static void test_kernels_init_reads_environment(void) {
    setenv("AIRAVATA_ISA", "scalar", 1);
    CHECK(av_kernels_init() == AV_OK);
    CHECK(av_kernels_isa() == AV_ISA_SCALAR);

    setenv("AIRAVATA_ISA", "sse9", 1);
    CHECK(av_kernels_init() == AV_ERR_INVALID);
    CHECK(strstr(av_last_error(), "sse9") != NULL);
    CHECK(av_kernels_isa() == AV_ISA_SCALAR); /* unchanged */

    if (av_cpu_best_isa() < AV_ISA_AVX512) {
        setenv("AIRAVATA_ISA", "avx512", 1);
        CHECK(av_kernels_init() == AV_ERR_UNSUPPORTED);
        CHECK(strstr(av_last_error(), "AIRAVATA_ISA=avx512") != NULL);
    }

    unsetenv("AIRAVATA_ISA");
    CHECK(av_kernels_init() == AV_OK);
    CHECK(av_kernels_isa() == av_cpu_best_isa());
}

static const int op_sizes[] = {1, 2, 7, 8, 15, 16, 17, 33, 100, 4096, 4099};
#define N_OP_SIZES ((int)(sizeof op_sizes / sizeof op_sizes[0]))

static void test_dot_and_axpy_all_isas(void) {
    for (int k = 0; k < n_supported_isas; k++) {
        CHECK(av_kernels_set_isa(supported_isas[k]) == AV_OK);
        for (int s = 0; s < N_OP_SIZES; s++) {
            int n = op_sizes[s];
            float *a = random_vector((size_t)n), *b = random_vector((size_t)n);
            float *y = random_vector((size_t)n), *y0 = malloc((size_t)n * sizeof(float));
            memcpy(y0, y, (size_t)n * sizeof(float));

            double exact = 0.0, abs_sum = 0.0;
            for (int i = 0; i < n; i++) {
                exact += (double)a[i] * b[i];
                abs_sum += fabs((double)a[i] * b[i]);
            }
            CHECK_NEAR(av_dot_f32(a, b, n), exact, n * U_F32 * abs_sum);

            /* One multiply and one add per element: within 2u of the exact
             * result's magnitude terms. */
            float alpha = 0.73f;
            av_axpy_f32(y, alpha, a, n);
            int bad = 0;
            for (int i = 0; i < n; i++) {
                double e = (double)y0[i] + (double)alpha * a[i];
                double tol = 2 * U_F32 * (fabs((double)y0[i]) + fabs((double)alpha * a[i]));
                if (!(fabs((double)y[i] - e) <= tol)) bad++;
            }
            CHECK_MSG(bad == 0, "%s axpy n %d: %d elements off",
                      av_isa_name(supported_isas[k]), n, bad);
            free(a);
            free(b);
            free(y);
            free(y0);
        }
    }
    av_kernels_set_isa(av_cpu_best_isa());
}


static void test_rmsnorm_all_isas(void) {
    for (int k = 0; k < n_supported_isas; k++) {
        CHECK(av_kernels_set_isa(supported_isas[k]) == AV_OK);
        for (int s = 0; s < N_OP_SIZES; s++) {
            int n = op_sizes[s];
            float *x = random_vector((size_t)n), *w = random_vector((size_t)n);
            float *out = malloc((size_t)n * sizeof(float));
            float eps = 1e-5f;
            double ss = 0.0;
            for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
            double scale = 1.0 / sqrt(ss / n + eps);

            av_rmsnorm(out, x, w, n, eps);
            /* The sum is in double (negligible error); rounding the scale to
             * f32 and two multiplies add at most 3u relative error. Dropping
             * one of 4099 terms would move the scale by about 1e-4. */
            int bad = 0;
            for (int i = 0; i < n; i++) {
                double e = x[i] * scale * w[i];
                if (!(fabs(out[i] - e) <= 4 * U_F32 * fabs(e) + 1e-30)) bad++;
            }
            /* In place gives the same result. */
            av_rmsnorm(x, x, w, n, eps);
            CHECK(memcmp(x, out, (size_t)n * sizeof(float)) == 0);
            CHECK_MSG(bad == 0, "%s rmsnorm n %d: %d elements off",
                      av_isa_name(supported_isas[k]), n, bad);
            free(x);
            free(w);
            free(out);
        }
    }
    av_kernels_set_isa(av_cpu_best_isa());
}

static void test_softmax_against_double(void) {
    for (int s = 0; s < N_OP_SIZES; s++) {
        int n = op_sizes[s];
        float *x = random_vector((size_t)n);
        double *e = malloc((size_t)n * sizeof(double));
        for (int i = 0; i < n; i++) x[i] *= 20.0f; /* logits in [-20, 20) */
        double max = x[0], sum = 0.0;
        for (int i = 1; i < n; i++) max = x[i] > max ? x[i] : max;
        for (int i = 0; i < n; i++) sum += e[i] = exp((double)x[i] - max);

        float *d = malloc((size_t)n * sizeof(float)); /* |x - max|, the exp arguments */
        for (int i = 0; i < n; i++) d[i] = (float)fabs((double)x[i] - max);

        av_softmax(x, n);
        /* Rounding x - max to f32 changes exp's result by up to |x - max| * u
         * relative; expf adds about 1 ulp and the normalization 2u more
         * (the sum itself is in double). */
        int bad = 0;
        double total = 0.0;
        for (int i = 0; i < n; i++) {
            double p = e[i] / sum;
            total += x[i];
            if (!(fabs(x[i] - p) <= (d[i] + 5.0) * U_F32 * p + 1e-30)) bad++;
        }
        free(d);
        CHECK_MSG(bad == 0, "softmax n %d: %d elements off", n, bad);
        CHECK_NEAR(total, 1.0, 1e-5);
        free(x);
        free(e);
    }
    float big[3] = {1000.0f, 1000.0f, -1000.0f}; /* exp overflows without the max shift */
    av_softmax(big, 3);
    CHECK_NEAR(big[0], 0.5, 1e-7);
    CHECK_NEAR(big[2], 0.0, 1e-30);
}

static void test_swiglu_against_double(void) {
    int n = 1000;
    float *g = random_vector((size_t)n), *up = random_vector((size_t)n);
    double *e = malloc((size_t)n * sizeof(double));
    for (int i = 0; i < n; i++) {
        g[i] *= 30.0f; /* covers both saturated tails of the sigmoid */
        e[i] = g[i] / (1.0 + exp(-(double)g[i])) * up[i];
    }
    av_swiglu(g, up, n);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        /* expf, one add, one divide and one multiply: a few ulp. */
        if (!(fabs(g[i] - e[i]) <= 8 * U_F32 * fabs(e[i]) + 1e-30)) bad++;
    }
    CHECK_MSG(bad == 0, "swiglu: %d of %d elements off", bad, n);
    float neg = -200.0f, one = 1.0f;
    av_swiglu(&neg, &one, 1); /* exp(200) overflows to inf: silu is -0 */
    CHECK(neg == 0.0f);
    free(g);
    free(up);
    free(e);
}

/* Bulk conversions must equal the scalar conversions for every 16-bit
 * pattern (NaNs only need to stay NaN). */
static void test_to_f32_every_pattern_all_isas(void) {
    uint16_t *h = malloc(65536 * sizeof(uint16_t));
    float *out = malloc(65536 * sizeof(float));
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    for (int k = 0; k < n_supported_isas; k++) {
        CHECK(av_kernels_set_isa(supported_isas[k]) == AV_OK);
        int bad_f16 = 0, bad_bf16 = 0;
        av_to_f32(out, h, AV_DTYPE_F16, 65536);
        for (int i = 0; i < 65536; i++) {
            float e = av_f16_to_f32(h[i]);
            if (isnan(e) ? !isnan(out[i]) : memcmp(&e, &out[i], 4) != 0) bad_f16++;
        }
        av_to_f32(out, h, AV_DTYPE_BF16, 65536);
        for (int i = 0; i < 65536; i++) {
            float e = av_bf16_to_f32(h[i]);
            if (isnan(e) ? !isnan(out[i]) : memcmp(&e, &out[i], 4) != 0) bad_bf16++;
        }
        CHECK_MSG(bad_f16 == 0, "%s: %d f16 values differ", av_isa_name(supported_isas[k]),
                  bad_f16);
        CHECK_MSG(bad_bf16 == 0, "%s: %d bf16 values differ", av_isa_name(supported_isas[k]),
                  bad_bf16);
        /* Odd lengths leave a tail; the element after it must be untouched. */
        out[13] = 42.0f;
        av_to_f32(out, h + 0x3c00, AV_DTYPE_F16, 13);
        CHECK(out[0] == 1.0f);
        CHECK(out[13] == 42.0f);
    }
    av_kernels_set_isa(av_cpu_best_isa());
    free(h);
    free(out);
}

static void test_matrix_row_all_dtypes(void) {
    for (int d = 0; d < 3; d++) {
        test_matrix t = make_matrix(matmul_dtypes[d], 5, 37);
        float row[37];
        for (int r = 0; r < 5; r++) {
            av_matrix_row(&t.m, r, row);
            CHECK_MSG(memcmp(row, t.values + r * 37, sizeof row) == 0, "%s row %d",
                      av_dtype_name(matmul_dtypes[d]), r);
        }
        free_matrix(&t);
    }
}

int main(void) {
    find_supported_isas();
    printf("instruction sets tested:");
    for (int k = 0; k < n_supported_isas; k++) printf(" %s", av_isa_name(supported_isas[k]));
    printf("\n");
    RUN(test_matmul_odd_shapes_all_isas);
    RUN(test_matmul_large_shapes_all_isas);
    RUN(test_matmul_threads_bitwise_equal);
    RUN(test_set_isa_rejects_unsupported);
    RUN(test_kernels_init_reads_environment);
    RUN(test_dot_and_axpy_all_isas);
    RUN(test_rmsnorm_all_isas);
    RUN(test_softmax_against_double);
    RUN(test_swiglu_against_double);
    RUN(test_to_f32_every_pattern_all_isas);
    RUN(test_matrix_row_all_dtypes);
    return CHECK_DONE();
}
