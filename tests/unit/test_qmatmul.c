/* Quantized products (NF4 in place, NF4 packed and INT8): every
 * instruction set this CPU supports against the scalar reference on odd
 * shapes with 1 and 2 threads, and the scalar reference against the exact
 * f32 product of the dequantized weights.
 *
 * Tolerances.
 * - ISA vs scalar: both compute the same exact int32 sum per group of 32
 *   and the same f32 scale; only the order of the f32 accumulation of the
 *   groups differs. A sum of n terms in any order is within n * u *
 *   sum|term| of the exact sum (u = 2^-24), so two such sums are within
 *   2 * (groups + 8) * u * sum|w*x| of each other (the 8 lanes add 8).
 * - scalar vs exact: with x~ = the dequantized int8 activation (error at
 *   most d_x / 2 per value, d_x = the group's max|x| / 127) and w~ = the
 *   weight with its NF4 level rounded to int8 (error at most e_w = absmax *
 *   max|level * 127 - round(level * 127)| / 127; 0 for INT8),
 *   |w~ x~ - w x| <= |w| d_x / 2 + |x~| e_w per value. The bound is the
 *   sum of that over the row, plus the f32 accumulation term above.
 */
#include <stdint.h>

#include "check.h"
#include "kernels/kernels_isa.h"
#include "quant/quant.h"

#define U_F32 (1.0 / 16777216.0)

static uint64_t rng_state = 0x243f6a8885a308d3ull;

static uint32_t rng_next(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 32);
}

static float rng_uniform(void) { return (float)(rng_next() >> 8) / 8388608.0f - 1.0f; }

/* Approximately N(0, 1): the sum of four uniforms, rescaled. */
static float rng_normal(void) {
    return (rng_uniform() + rng_uniform() + rng_uniform() + rng_uniform()) * 0.8660254f;
}

/* A quantized matrix with the data it points to and its exact values. */
typedef struct {
    av_matrix m;
    uint8_t *codes;   /* NF4 */
    float *absmax;    /* NF4 */
    int blocksize;    /* NF4 */
    void *packed;     /* NF4 packed: the storage of av_matrix_nf4_pack */
    int8_t *q;        /* INT8, rows padded to a multiple of 32 */
    float *row_scale; /* INT8 */
    float *values;    /* rows * cols: bitsandbytes' dequantization */
    float *original;  /* rows * cols: the weights before quantization */
} qmatrix;

static float *random_weights(int64_t rows, int64_t cols) {
    float *w = malloc(sizeof(float) * (size_t)(rows * cols));
    /* Rows of different magnitudes, so scales differ across blocks. */
    for (int64_t r = 0; r < rows; r++) {
        float row_scale = 0.02f * (float)(1 + r % 7);
        for (int64_t c = 0; c < cols; c++) w[r * cols + c] = rng_normal() * row_scale;
    }
    return w;
}

static qmatrix make_nf4(int64_t rows, int64_t cols, int blocksize) {
    qmatrix t = {0};
    int64_t n = rows * cols, blocks = (n + blocksize - 1) / blocksize;
    t.original = random_weights(rows, cols);
    t.codes = malloc((size_t)(n + 1) / 2);
    t.absmax = malloc(sizeof(float) * (size_t)blocks);
    t.values = malloc(sizeof(float) * (size_t)n);
    av_nf4_quantize(t.original, AV_DTYPE_F32, n, blocksize, t.codes, t.absmax);
    av_nf4_dequantize(t.codes, t.absmax, n, blocksize, t.values);
    t.blocksize = blocksize;
    av_status st = av_matrix_nf4(&t.m, rows, cols, t.codes, t.absmax, blocksize);
    CHECK_MSG(st == AV_OK, "%s", av_last_error());
    return t;
}

/* The same matrix repacked as the loader does. */
static qmatrix make_nf4_packed(int64_t rows, int64_t cols, int blocksize) {
    qmatrix t = make_nf4(rows, cols, blocksize);
    av_status st =
        av_matrix_nf4_pack(&t.m, rows, cols, t.codes, t.absmax, blocksize, NULL, &t.packed);
    CHECK_MSG(st == AV_OK, "%s", av_last_error());
    return t;
}

static int is_nf4(const av_matrix *m) {
    return m->format == AV_MATRIX_NF4 || m->format == AV_MATRIX_NF4_PACKED;
}

static qmatrix make_int8(int64_t rows, int64_t cols) {
    qmatrix t = {0};
    int64_t stride = (cols + 31) / 32 * 32;
    int8_t *dense = malloc((size_t)(rows * cols));
    float *scb = malloc(sizeof(float) * (size_t)rows);
    t.original = random_weights(rows, cols);
    t.values = malloc(sizeof(float) * (size_t)(rows * cols));
    CHECK(av_int8_quantize(t.original, AV_DTYPE_F32, rows, cols, dense, scb) == AV_OK);
    av_int8_dequantize(dense, scb, rows, cols, t.values);
    t.q = calloc((size_t)(rows * stride), 1);
    t.row_scale = malloc(sizeof(float) * (size_t)rows);
    for (int64_t r = 0; r < rows; r++) {
        memcpy(t.q + r * stride, dense + r * cols, (size_t)cols);
        t.row_scale[r] = scb[r] * (float)(1.0 / 127.0);
    }
    av_status st = av_matrix_int8(&t.m, rows, cols, stride, t.q, t.row_scale);
    CHECK_MSG(st == AV_OK, "%s", av_last_error());
    free(dense);
    free(scb);
    return t;
}

/* The same matrix repacked as the loader does. */
static qmatrix make_int8_packed(int64_t rows, int64_t cols, av_threadpool *pool) {
    qmatrix t = make_int8(rows, cols);
    int8_t *dense = malloc((size_t)(rows * cols));
    for (int64_t r = 0; r < rows; r++)
        memcpy(dense + r * cols, t.q + r * t.m.row_stride, (size_t)cols);
    av_status st = av_matrix_int8_pack(&t.m, rows, cols, dense, t.row_scale, pool, &t.packed);
    CHECK_MSG(st == AV_OK, "%s", av_last_error());
    free(dense);
    return t;
}

static void free_qmatrix(qmatrix *t) {
    free(t->packed);
    free(t->codes);
    free(t->absmax);
    free(t->q);
    free(t->row_scale);
    free(t->values);
    free(t->original);
}

static float *random_activations(size_t n) {
    float *x = malloc(sizeof(float) * n + 1);
    for (size_t i = 0; i < n; i++) x[i] = rng_normal();
    return x;
}

/* max over codes of |level * 127 - round(level * 127)| / 127. */
static double nf4_level_error(void) {
    double e = 0;
    for (int k = 0; k < 16; k++) {
        double d = fabs((double)av_nf4_code[k] * 127.0 - av_nf4_levels_i8[k]) / 127.0;
        if (d > e) e = d;
    }
    return e;
}

/* Fills bound[t * rows + r] with the scalar-vs-exact bound of the header,
 * exact[] with the double product of the dequantized weights, and abs[]
 * with sum|w*x|. */
static void exact_and_bound(const qmatrix *t, const float *x, int n_tokens, double *exact,
                            double *abs_sum, double *bound) {
    const int64_t rows = t->m.rows, cols = t->m.cols;
    const int64_t groups = (cols + 31) / 32;
    const double level_error = is_nf4(&t->m) ? nf4_level_error() : 0.0;
    for (int tok = 0; tok < n_tokens; tok++) {
        const float *xt = x + (int64_t)tok * cols;
        for (int64_t r = 0; r < rows; r++) {
            double sum = 0, abs = 0, b = 0;
            for (int64_t g = 0; g < groups; g++) {
                double amax = 0;
                for (int64_t c = g * 32; c < cols && c < g * 32 + 32; c++)
                    if (fabs(xt[c]) > amax) amax = fabs(xt[c]);
                double half_step = amax / 127.0 * 0.5 * (1 + 1e-5);
                for (int64_t c = g * 32; c < cols && c < g * 32 + 32; c++) {
                    double w = t->values[r * cols + c];
                    double e_w = 0;
                    if (is_nf4(&t->m)) e_w = t->absmax[(r * cols + c) / t->blocksize] * level_error;
                    sum += w * xt[c];
                    abs += fabs(w * xt[c]);
                    b += fabs(w) * half_step + (fabs(xt[c]) + half_step) * e_w;
                }
            }
            size_t i = (size_t)tok * (size_t)rows + (size_t)r;
            exact[i] = sum;
            abs_sum[i] = abs;
            bound[i] = b + 2.0 * (double)(groups + 8) * U_F32 * abs;
        }
    }
}

static const int case_rows[] = {1, 3, 17, 67};
static const int case_cols[] = {32, 64, 96, 4096};
static const int case_tokens[] = {1, 2, 3, 5, 8, 13};

typedef enum { KIND_NF4, KIND_NF4_PACKED, KIND_INT8, KIND_INT8_PACKED } qkind;
static const char *const kind_names[] = {"nf4", "nf4 packed", "int8", "int8 packed"};

/* Runs every shape of the tables on every ISA with 1 and 2 threads. */
static void check_paths(qkind kind) {
    av_isa best = av_cpu_best_isa();
    av_threadpool *pools[2] = {av_threadpool_create(1), av_threadpool_create(2)};
    int n_cases = 0;
    for (size_t ri = 0; ri < sizeof case_rows / sizeof *case_rows; ri++)
        for (size_t ci = 0; ci < sizeof case_cols / sizeof *case_cols; ci++) {
            int64_t rows = case_rows[ri], cols = case_cols[ci];
            /* Block sizes 32, 64 and 256: 64 straddles rows for 96 columns.
             * The packed layout takes 64 and 256, and columns in multiples
             * of 64. */
            int blocksize = 32 << (n_cases % 3 == 2 ? 3 : n_cases % 3);
            if (kind == KIND_NF4_PACKED) {
                if (cols % 64 != 0) continue;
                blocksize = n_cases % 2 ? 256 : 64;
            }
            qmatrix t = kind == KIND_INT8          ? make_int8(rows, cols)
                        : kind == KIND_INT8_PACKED ? make_int8_packed(rows, cols, NULL)
                        : kind == KIND_NF4         ? make_nf4(rows, cols, blocksize)
                                                   : make_nf4_packed(rows, cols, blocksize);
            int max_tokens = 13;
            float *x = random_activations((size_t)(max_tokens * cols));
            size_t n_out = (size_t)max_tokens * (size_t)rows;
            float *ref = malloc(sizeof(float) * n_out), *y = malloc(sizeof(float) * n_out);
            double *exact = malloc(sizeof(double) * n_out), *abs = malloc(sizeof(double) * n_out);
            double *bound = malloc(sizeof(double) * n_out);
            for (size_t ti = 0; ti < sizeof case_tokens / sizeof *case_tokens; ti++) {
                int n_tokens = case_tokens[ti];
                av_matmul_ref(&t.m, x, n_tokens, ref);
                exact_and_bound(&t, x, n_tokens, exact, abs, bound);
                size_t n = (size_t)n_tokens * (size_t)rows;
                for (size_t i = 0; i < n; i++)
                    CHECK_MSG(fabs(ref[i] - exact[i]) <= bound[i],
                              "%s [%lld, %lld] block %d, %d tokens, output %zu: ref %.8g, exact "
                              "%.8g, bound %.3g",
                              kind_names[kind], (long long)rows, (long long)cols,
                              blocksize, n_tokens, i, ref[i], exact[i], bound[i]);
                for (int isa = AV_ISA_SCALAR; isa <= (int)best; isa++) {
                    CHECK(av_kernels_set_isa((av_isa)isa) == AV_OK);
                    for (int p = 0; p < 2; p++) {
                        memset(y, 0, sizeof(float) * n_out);
                        av_matmul(pools[p], &t.m, x, n_tokens, y);
                        int64_t groups = (cols + 31) / 32;
                        for (size_t i = 0; i < n; i++) {
                            double tol = 2.0 * (double)(groups + 8) * U_F32 * abs[i] + 1e-30;
                            CHECK_MSG(fabs(y[i] - ref[i]) <= tol,
                                      "%s %s %d threads [%lld, %lld] %d tokens, output %zu: "
                                      "%.8g vs ref %.8g",
                                      kind_names[kind], av_isa_name((av_isa)isa), p + 1,
                                      (long long)rows, (long long)cols, n_tokens, i, y[i],
                                      ref[i]);
                        }
                    }
                }
                av_kernels_set_isa(best);
            }
            free(x);
            free(ref);
            free(y);
            free(exact);
            free(abs);
            free(bound);
            free_qmatrix(&t);
            n_cases++;
        }
    av_threadpool_free(pools[0]);
    av_threadpool_free(pools[1]);
}

static void test_nf4_paths_match_reference(void) { check_paths(KIND_NF4); }
static void test_nf4_packed_paths_match_reference(void) { check_paths(KIND_NF4_PACKED); }
static void test_int8_paths_match_reference(void) { check_paths(KIND_INT8); }
static void test_int8_packed_paths_match_reference(void) { check_paths(KIND_INT8_PACKED); }

/* The packed layout holds the same codes and scales: its reference equals
 * the in-place reference up to the order of the f32 accumulation, and its
 * rows equal the in-place rows exactly. Packing on 3 threads writes the
 * same bytes as on one. */
static void test_nf4_packed_matches_in_place(void) {
    const int64_t shapes[][2] = {{1, 64}, {6, 128}, {9, 4096}, {37, 256}};
    av_threadpool *pool = av_threadpool_create(3);
    for (size_t k = 0; k < 4; k++) {
        int64_t rows = shapes[k][0], cols = shapes[k][1];
        qmatrix t = make_nf4_packed(rows, cols, 128);
        av_matrix in_place, threaded;
        CHECK(av_matrix_nf4(&in_place, rows, cols, t.codes, t.absmax, 128) == AV_OK);
        void *storage = NULL;
        CHECK(av_matrix_nf4_pack(&threaded, rows, cols, t.codes, t.absmax, 128, pool,
                                 &storage) == AV_OK);
        CHECK(av_matrix_bytes(&threaded) == av_matrix_bytes(&t.m));
        CHECK_MSG(memcmp(storage, t.packed, av_matrix_bytes(&t.m)) == 0,
                  "[%lld, %lld]: packing on 3 threads differs", (long long)rows,
                  (long long)cols);
        free(storage);
        float *x = random_activations((size_t)(2 * cols));
        float *y = malloc(sizeof(float) * (size_t)(2 * rows));
        float *y_in_place = malloc(sizeof(float) * (size_t)(2 * rows));
        double *exact = malloc(sizeof(double) * (size_t)(2 * rows));
        double *abs = malloc(sizeof(double) * (size_t)(2 * rows));
        double *bound = malloc(sizeof(double) * (size_t)(2 * rows));
        av_matmul_ref(&t.m, x, 2, y);
        av_matmul_ref(&in_place, x, 2, y_in_place);
        exact_and_bound(&t, x, 2, exact, abs, bound);
        for (int64_t i = 0; i < 2 * rows; i++)
            CHECK_MSG(fabs(y[i] - y_in_place[i]) <= 2.0 * (cols / 32 + 8) * U_F32 * abs[i],
                      "[%lld, %lld] output %lld: packed %.8g, in place %.8g", (long long)rows,
                      (long long)cols, (long long)i, y[i], y_in_place[i]);
        float *row = malloc(sizeof(float) * (size_t)cols);
        float *row_in_place = malloc(sizeof(float) * (size_t)cols);
        for (int64_t r = 0; r < rows; r++) {
            av_matrix_row(&t.m, r, row);
            av_matrix_row(&in_place, r, row_in_place);
            CHECK_MSG(memcmp(row, row_in_place, sizeof(float) * (size_t)cols) == 0,
                      "[%lld, %lld] row %lld differs", (long long)rows, (long long)cols,
                      (long long)r);
        }
        free(row);
        free(row_in_place);
        free(x);
        free(y);
        free(y_in_place);
        free(exact);
        free(abs);
        free(bound);
        free_qmatrix(&t);
    }
    av_threadpool_free(pool);
}

/* INT8 rows whose length is not a multiple of 32 are padded with zeros,
 * in place and packed (packed on 2 threads). */
static void test_int8_padded_columns(void) {
    const int64_t shapes[][2] = {{5, 37}, {19, 100}, {2, 1}};
    av_threadpool *pool = av_threadpool_create(2);
    for (size_t s = 0; s < 6; s++) {
        qmatrix t = s < 3 ? make_int8(shapes[s][0], shapes[s][1])
                          : make_int8_packed(shapes[s - 3][0], shapes[s - 3][1], pool);
        int64_t rows = t.m.rows, cols = t.m.cols;
        float *x = random_activations((size_t)(3 * cols));
        size_t n = (size_t)(3 * rows);
        float *y = malloc(sizeof(float) * n), *ref = malloc(sizeof(float) * n);
        double *exact = malloc(sizeof(double) * n), *abs = malloc(sizeof(double) * n);
        double *bound = malloc(sizeof(double) * n);
        av_matmul_ref(&t.m, x, 3, ref);
        av_matmul(pool, &t.m, x, 3, y);
        exact_and_bound(&t, x, 3, exact, abs, bound);
        for (size_t i = 0; i < n; i++) {
            CHECK_MSG(fabs(ref[i] - exact[i]) <= bound[i], "[%lld, %lld] output %zu: %g vs %g",
                      (long long)rows, (long long)cols, i, ref[i], exact[i]);
            CHECK_MSG(fabs(y[i] - ref[i]) <= 1e-5 * abs[i] + 1e-30,
                      "[%lld, %lld] output %zu: %g vs ref %g", (long long)rows,
                      (long long)cols, i, y[i], ref[i]);
        }
        free(x);
        free(y);
        free(ref);
        free(exact);
        free(abs);
        free(bound);
        free_qmatrix(&t);
    }
    av_threadpool_free(pool);
}

/* Every instruction set writes the same activation bytes and scales. */
static void test_activation_quantizer_matches(void) {
    const int64_t cols_cases[] = {1, 31, 32, 33, 96, 4096, 4100};
    for (size_t k = 0; k < sizeof cols_cases / sizeof *cols_cases; k++) {
        int64_t cols = cols_cases[k], cols32 = (cols + 31) / 32 * 32;
        float *x = random_activations((size_t)cols);
        if (cols > 40) {
            for (int i = 0; i < 32; i++) x[32 + i] = 0.0f; /* an all-zero group */
            x[5] = 1e30f;                                  /* a large outlier */
        }
        for (int order = AV_XORDER_NATURAL; order <= AV_XORDER_NF4_BLOCK; order++) {
            int8_t *q_ref = malloc((size_t)cols32), *q = malloc((size_t)cols32);
            float *d_ref = malloc(sizeof(float) * (size_t)(cols32 / 32));
            float *d = malloc(sizeof(float) * (size_t)(cols32 / 32));
            av_quantize_row_scalar(x, cols, (av_xorder)order, q_ref, d_ref);
            if (av_cpu_best_isa() >= AV_ISA_AVX2) {
                av_quantize_row_avx2(x, cols, (av_xorder)order, q, d);
                CHECK_MSG(memcmp(q, q_ref, (size_t)cols32) == 0, "cols %lld order %d: codes",
                          (long long)cols, order);
                CHECK_MSG(memcmp(d, d_ref, sizeof(float) * (size_t)(cols32 / 32)) == 0,
                          "cols %lld order %d: scales", (long long)cols, order);
            }
            /* Dequantized values are within half a step of the input. */
            for (int64_t c = 0; c < cols; c++) {
                int64_t g = c / 32, i = c % 32;
                int64_t slot = order ? g * 32 + (i & 1) * 16 + i / 2 : c;
                /* Block order: pairs of groups, evens of both then odds.
                 * An unpaired last group keeps the group order. */
                if (order == AV_XORDER_NF4_BLOCK && !(g % 2 == 0 && g + 1 == cols32 / 32))
                    slot = (g / 2) * 64 + (i & 1) * 32 + (g % 2) * 16 + i / 2;
                CHECK_MSG(fabs(q_ref[slot] * (double)d_ref[g] - x[c]) <=
                              d_ref[g] * 0.5 * (1 + 1e-5),
                          "cols %lld order %d value %lld", (long long)cols, order, (long long)c);
            }
            for (int64_t c = cols; c < cols32 && !order; c++) CHECK(q_ref[c] == 0);
            free(q_ref);
            free(q);
            free(d_ref);
            free(d);
        }
        free(x);
    }
}

static void test_nf4_level_table(void) {
    for (int k = 0; k < 16; k++)
        CHECK_MSG(av_nf4_levels_i8[k] == (int8_t)lrint(av_nf4_code[k] * 127.0),
                  "code %d: table %d, round(level * 127) %ld", k, av_nf4_levels_i8[k],
                  lrint(av_nf4_code[k] * 127.0));
}

static void test_nf4_rejects_unaligned_columns(void) {
    av_matrix m;
    uint8_t codes[64] = {0};
    float absmax[4] = {1, 1, 1, 1};
    CHECK(av_matrix_nf4(&m, 2, 48, codes, absmax, 64) == AV_ERR_UNSUPPORTED);
    CHECK(av_matrix_nf4(&m, 2, 33, codes, absmax, 64) == AV_ERR_UNSUPPORTED);
    CHECK(av_matrix_nf4(&m, 2, 32, codes, absmax, 48) == AV_ERR_INVALID);
    CHECK(av_matrix_nf4(&m, 2, 32, codes, absmax, 16) == AV_ERR_INVALID);
    CHECK(av_matrix_nf4(&m, 2, 32, codes, absmax, 64) == AV_OK);
    /* The packed layout needs whole 64-value blocks. */
    void *storage = &m;
    CHECK(av_matrix_nf4_pack(&m, 2, 96, codes, absmax, 64, NULL, &storage) == AV_ERR_UNSUPPORTED);
    CHECK(storage == NULL);
    CHECK(m.data == NULL);
    CHECK(av_matrix_nf4_pack(&m, 1, 64, codes, absmax, 32, NULL, &storage) == AV_ERR_UNSUPPORTED);
    CHECK(av_matrix_nf4_pack(&m, 1, 64, codes, absmax, 96, NULL, &storage) == AV_ERR_INVALID);
    CHECK(av_matrix_nf4_pack(&m, 1, 64, codes, absmax, 64, NULL, &storage) == AV_OK);
    CHECK(m.format == AV_MATRIX_NF4_PACKED);
    CHECK(storage != NULL);
    free(storage);
    CHECK(av_matrix_int8(&m, 2, 32, 16, (const int8_t *)codes, absmax) == AV_ERR_INVALID);
    CHECK(av_matrix_int8(&m, 2, 40, 40, (const int8_t *)codes, absmax) == AV_ERR_INVALID);
}

/* Row lookup and the byte count. */
static void test_matrix_row_and_bytes(void) {
    qmatrix t = make_nf4(3, 96, 64);
    float row[128];
    av_matrix_row(&t.m, 2, row);
    for (int c = 0; c < 96; c++) {
        double absmax = t.absmax[(2 * 96 + c) / 64];
        CHECK_MSG(fabs(row[c] - t.values[2 * 96 + c]) <= absmax * nf4_level_error() + 1e-6,
                  "nf4 column %d: %g vs %g", c, row[c], t.values[2 * 96 + c]);
    }
    CHECK(av_matrix_bytes(&t.m) == 3 * 96 / 2 + (3 * 96 / 64 + 1) * 4);
    free_qmatrix(&t);

    /* Packed: 3 rows take a tile of 4, 2 blocks each: 8 blocks of 32 code
     * bytes and one f32 scale. */
    t = make_nf4_packed(3, 128, 64);
    av_matrix_row(&t.m, 2, row);
    for (int c = 0; c < 128; c++)
        CHECK_MSG(fabs(row[c] - t.values[2 * 128 + c]) <=
                      t.absmax[(2 * 128 + c) / 64] * nf4_level_error() + 1e-6,
                  "nf4 packed column %d: %g vs %g", c, row[c], t.values[2 * 128 + c]);
    CHECK(av_matrix_bytes(&t.m) == 8 * (32 + 4));
    free_qmatrix(&t);

    t = make_int8(3, 40);
    av_matrix_row(&t.m, 1, row);
    for (int c = 0; c < 40; c++)
        CHECK_NEAR(row[c], t.values[40 + c], 1e-6 * fabs(t.values[40 + c]) + 1e-12);
    CHECK(av_matrix_bytes(&t.m) == 3 * 64 + 3 * 4);
    free_qmatrix(&t);

    /* Packed: a tile of 4 rows of 64 bytes, and 3 row scales. */
    t = make_int8_packed(3, 40, NULL);
    av_matrix_row(&t.m, 1, row);
    for (int c = 0; c < 40; c++)
        CHECK_NEAR(row[c], t.values[40 + c], 1e-6 * fabs(t.values[40 + c]) + 1e-12);
    CHECK(av_matrix_bytes(&t.m) == 4 * 64 + 3 * 4);
    free_qmatrix(&t);
}

/* Measures the relative RMS error of the integer products against the
 * exact product of the dequantized weights (N(0, 1) activations, 4096
 * columns, 256 rows), and what a 16-bit NF4 level table would give; the
 * numbers are quoted in qmatmul.c. */
static void test_precision_summary(void) {
    const int64_t rows = 256, cols = 4096;
    qmatrix nf4 = make_nf4(rows, cols, 64), int8 = make_int8(rows, cols);
    float *x = random_activations((size_t)cols);
    float *y = malloc(sizeof(float) * rows);
    double err_nf4 = 0, err_int8 = 0, err_i16 = 0, err_nf4_weights = 0;
    double norm_nf4 = 0, norm_int8 = 0, norm_original = 0;
    int8_t xq[4096], xq_natural[4096];
    float xd[128], xd_natural[128];
    av_quantize_row_scalar(x, cols, 1, xq, xd);
    av_quantize_row_scalar(x, cols, 0, xq_natural, xd_natural);

    av_matmul_ref(&nf4.m, x, 1, y);
    for (int64_t r = 0; r < rows; r++) {
        double exact = 0, original = 0, table16 = 0;
        for (int64_t c = 0; c < cols; c++) {
            exact += (double)nf4.values[r * cols + c] * x[c];
            original += (double)nf4.original[r * cols + c] * x[c];
            /* The 16-bit table: levels rounded to multiples of 2^-14. */
            uint8_t byte = nf4.codes[(r * cols + c) / 2];
            int code = c & 1 ? byte & 15 : byte >> 4;
            double level16 = nearbyint(av_nf4_code[code] * 16384.0) / 16384.0;
            table16 += level16 * nf4.absmax[(r * cols + c) / 64] * xq_natural[c] *
                       (double)xd_natural[c / 32];
        }
        err_nf4 += (y[r] - exact) * (y[r] - exact);
        err_i16 += (table16 - exact) * (table16 - exact);
        err_nf4_weights += (exact - original) * (exact - original);
        norm_nf4 += exact * exact;
        norm_original += original * original;
    }
    av_matmul_ref(&int8.m, x, 1, y);
    for (int64_t r = 0; r < rows; r++) {
        double exact = 0;
        for (int64_t c = 0; c < cols; c++) exact += (double)int8.values[r * cols + c] * x[c];
        err_int8 += (y[r] - exact) * (y[r] - exact);
        norm_int8 += exact * exact;
    }
    double rel_nf4 = sqrt(err_nf4 / norm_nf4), rel_int8 = sqrt(err_int8 / norm_int8);
    double rel_i16 = sqrt(err_i16 / norm_nf4);
    double rel_weights = sqrt(err_nf4_weights / norm_original);
    printf("  relative RMS error vs exact dequantized product: nf4 %.3f%% (16-bit table "
           "%.3f%%), int8 %.3f%%; NF4 weights vs original %.2f%%\n",
           100 * rel_nf4, 100 * rel_i16, 100 * rel_int8, 100 * rel_weights);
    /* Loose ceilings far above the measured values: a wrong scale or a
     * dropped group gives errors of 10 % and more. */
    CHECK_MSG(rel_nf4 < 0.02, "nf4 relative error %g", rel_nf4);
    CHECK_MSG(rel_int8 < 0.02, "int8 relative error %g", rel_int8);
    CHECK(rel_nf4 < rel_weights);
    free(x);
    free(y);
    free_qmatrix(&nf4);
    free_qmatrix(&int8);
}

int main(void) {
    RUN(test_nf4_level_table);
    RUN(test_activation_quantizer_matches);
    RUN(test_nf4_rejects_unaligned_columns);
    RUN(test_matrix_row_and_bytes);
    RUN(test_nf4_paths_match_reference);
    RUN(test_nf4_packed_paths_match_reference);
    RUN(test_nf4_packed_matches_in_place);
    RUN(test_int8_paths_match_reference);
    RUN(test_int8_packed_paths_match_reference);
    RUN(test_int8_padded_columns);
    RUN(test_precision_summary);
    return CHECK_DONE();
}
