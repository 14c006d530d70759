/*
 * matmul_avx2.c - y = W x with AVX2, FMA and F16C, for W in F32, F16, BF16.
 *
 * Register tiling: a tile of R rows x T tokens keeps R*T accumulators of 8
 * floats in ymm registers. Each step over 8 columns converts R weight
 * vectors once and uses each for T tokens, so the weights are read once per
 * tile of tokens instead of once per token. The main tile is 3 rows x 4
 * tokens: 12 accumulators + 3 weight vectors + 1 x vector fill the 16 ymm
 * registers (4 x 3 needs 17, and GCC 12 then spills an accumulator to the
 * stack in the inner loop). Decode (1 token) uses 3 rows x 1 token and is
 * bound by memory bandwidth, not by these registers.
 *
 * Conversions: bf16 is the top half of an f32, so zero-extending to 32
 * bits and shifting left by 16 is exact; f16 uses vcvtph2ps (F16C). Columns
 * past the last multiple of 8 are added one at a time after the horizontal
 * sum. Rows past the last multiple of 3 use 1-row tiles.
 *
 * Cache blocking: tokens are processed in blocks whose activations fit in
 * about half of a 512 KiB L2. For large batches each weight row is then
 * read from memory once per block, and x stays in L2 across the rows of a
 * chunk.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels_isa.h"

#define AV_INLINE static inline __attribute__((always_inline))

#define TILE_ROWS 3
#define TILE_TOKENS 4
/* Target bytes of activations (f32) per token block. */
#define TOKEN_BLOCK_BYTES (256 * 1024)
#define TOKEN_BLOCK_MAX 64

AV_INLINE __m256 load8(const void *base, int64_t i, av_dtype dtype) {
    if (dtype == AV_DTYPE_F32) return _mm256_loadu_ps((const float *)base + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + i));
    if (dtype == AV_DTYPE_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AV_INLINE float load1(const void *base, int64_t i, av_dtype dtype) {
    if (dtype == AV_DTYPE_F32) return ((const float *)base)[i];
    uint16_t h = ((const uint16_t *)base)[i];
    if (dtype == AV_DTYPE_F16) return _cvtsh_ss(h);
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

AV_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One R x T tile: rows r..r+R-1, tokens t..t+T-1. R and T are constants
 * after inlining, so the accumulator arrays live in registers. */
/* One R x T tile whose first weight row starts at wbase: rows r..r+R-1 of
 * the output, tokens t..t+T-1. R and T are constants after inlining, so the
 * accumulator arrays live in registers. */
AV_INLINE void tile_at(const char *wbase, const int64_t cols, const int64_t rows,
                       const float *x, float *y, int64_t r, int t, const int R, const int T,
                       av_dtype dtype) {
    const int64_t cols8 = cols & ~(int64_t)7;
    const size_t esize = dtype == AV_DTYPE_F32 ? 4 : 2;
    const void *wr[TILE_ROWS];
    const float *xt[TILE_TOKENS];
    for (int i = 0; i < R; i++) wr[i] = wbase + (size_t)i * (size_t)cols * esize;
    for (int j = 0; j < T; j++) xt[j] = x + (int64_t)(t + j) * cols;

    __m256 acc[TILE_ROWS][TILE_TOKENS];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++) acc[i][j] = _mm256_setzero_ps();

    for (int64_t c = 0; c < cols8; c += 8) {
        __m256 wv[TILE_ROWS];
        for (int i = 0; i < R; i++) wv[i] = load8(wr[i], c, dtype);
        for (int j = 0; j < T; j++) {
            __m256 xv = _mm256_loadu_ps(xt[j] + c);
            for (int i = 0; i < R; i++) acc[i][j] = _mm256_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }

    for (int i = 0; i < R; i++) {
        for (int j = 0; j < T; j++) {
            float s = hsum8(acc[i][j]);
            for (int64_t c = cols8; c < cols; c++) s += load1(wr[i], c, dtype) * xt[j][c];
            y[(int64_t)(t + j) * rows + r + i] = s;
        }
    }
}

AV_INLINE void tile(const av_matrix *w, const float *x, float *y, int64_t r, int t,
                    const int R, const int T, av_dtype dtype) {
    const size_t esize = dtype == AV_DTYPE_F32 ? 4 : 2;
    const char *wbase = (const char *)w->data + (size_t)r * (size_t)w->cols * esize;
    tile_at(wbase, w->cols, w->rows, x, y, r, t, R, T, dtype);
}

/* Runs tiles of R rows over tokens [t0, t1). */
AV_INLINE void tile_tokens(const av_matrix *w, const float *x, float *y, int64_t r, int t0,
                           int t1, const int R, av_dtype dtype) {
    int t = t0;
    for (; t + TILE_TOKENS <= t1; t += TILE_TOKENS) tile(w, x, y, r, t, R, TILE_TOKENS, dtype);
    switch (t1 - t) {
    case 3: tile(w, x, y, r, t, R, 3, dtype); break;
    case 2: tile(w, x, y, r, t, R, 2, dtype); break;
    case 1: tile(w, x, y, r, t, R, 1, dtype); break;
    default: break;
    }
}

static int token_block(int64_t cols) {
    int64_t block = TOKEN_BLOCK_BYTES / (cols * 4);
    block = block / TILE_TOKENS * TILE_TOKENS;
    if (block < TILE_TOKENS) block = TILE_TOKENS;
    if (block > TOKEN_BLOCK_MAX) block = TOKEN_BLOCK_MAX;
    return (int)block;
}

/* Batches of at least this many tokens widen 16-bit weights once per panel. */
#define PANEL_MIN_TOKENS 32

/* Widens n values of a 16-bit row to f32. */
AV_INLINE void widen_row(float *dst, const void *src, int64_t n, av_dtype dtype) {
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) _mm256_storeu_ps(dst + c, load8(src, c, dtype));
    for (; c < n; c++) dst[c] = load1(src, c, dtype);
}

/* Runs R-row tiles whose weights start at wbase over tokens [t0, t1). */
AV_INLINE void tile_tokens_at(const char *wbase, int64_t cols, int64_t rows, const float *x,
                              float *y, int64_t r, int t0, int t1, const int R,
                              av_dtype dtype) {
    int t = t0;
    for (; t + TILE_TOKENS <= t1; t += TILE_TOKENS)
        tile_at(wbase, cols, rows, x, y, r, t, R, TILE_TOKENS, dtype);
    switch (t1 - t) {
    case 3: tile_at(wbase, cols, rows, x, y, r, t, R, 3, dtype); break;
    case 2: tile_at(wbase, cols, rows, x, y, r, t, R, 2, dtype); break;
    case 1: tile_at(wbase, cols, rows, x, y, r, t, R, 1, dtype); break;
    default: break;
    }
}

/* Batched product of 16-bit weights: each panel of TILE_ROWS rows is
 * widened to f32 once and then multiplied with every token, so the
 * inner loop is pure f32 FMA and each weight is converted and read from
 * memory once per call. Activations stream from the L2/L3 caches. Returns
 * 0 when the panel buffer cannot be allocated, and the caller then uses
 * the token-blocked path. */
static int matmul_rows_panel(const av_matrix *w, const float *x, int n_tokens, float *y,
                             int64_t r0, int64_t r1, av_dtype dtype) {
    const int64_t cols = w->cols;
    size_t panel_bytes = ((size_t)TILE_ROWS * (size_t)cols * sizeof(float) + 31) / 32 * 32;
    float *panel = aligned_alloc(32, panel_bytes);
    if (!panel) return 0;
    const size_t row_bytes = (size_t)cols * 2;
    for (int64_t r = r0; r < r1; r += TILE_ROWS) {
        int R = r1 - r < TILE_ROWS ? (int)(r1 - r) : TILE_ROWS;
        for (int i = 0; i < R; i++)
            widen_row(panel + (size_t)i * (size_t)cols,
                      (const char *)w->data + (size_t)(r + i) * row_bytes, cols, dtype);
        if (R == TILE_ROWS) {
            tile_tokens_at((const char *)panel, cols, w->rows, x, y, r, 0, n_tokens, TILE_ROWS,
                           AV_DTYPE_F32);
        } else {
            for (int i = 0; i < R; i++)
                tile_tokens_at((const char *)(panel + (size_t)i * (size_t)cols), cols, w->rows,
                               x, y, r + i, 0, n_tokens, 1, AV_DTYPE_F32);
        }
    }
    free(panel);
    return 1;
}

AV_INLINE void matmul_rows(const av_matrix *w, const float *x, int n_tokens, float *y,
                           int64_t r0, int64_t r1, av_dtype dtype) {
    if (dtype != AV_DTYPE_F32 && n_tokens >= PANEL_MIN_TOKENS &&
        matmul_rows_panel(w, x, n_tokens, y, r0, r1, dtype))
        return;
    int block = token_block(w->cols);
    for (int t0 = 0; t0 < n_tokens; t0 += block) {
        int t1 = n_tokens - t0 < block ? n_tokens : t0 + block;
        int64_t r = r0;
        for (; r + TILE_ROWS <= r1; r += TILE_ROWS) {
            tile_tokens(w, x, y, r, t0, t1, TILE_ROWS, dtype);
        }
        for (; r < r1; r++) tile_tokens(w, x, y, r, t0, t1, 1, dtype);
    }
}

static void matmul_rows_f32(const av_matrix *w, const float *x, int n, float *y, int64_t r0,
                            int64_t r1) {
    matmul_rows(w, x, n, y, r0, r1, AV_DTYPE_F32);
}

static void matmul_rows_f16(const av_matrix *w, const float *x, int n, float *y, int64_t r0,
                            int64_t r1) {
    matmul_rows(w, x, n, y, r0, r1, AV_DTYPE_F16);
}

static void matmul_rows_bf16(const av_matrix *w, const float *x, int n, float *y, int64_t r0,
                             int64_t r1) {
    matmul_rows(w, x, n, y, r0, r1, AV_DTYPE_BF16);
}

void av_matmul_rows_avx2(const av_matrix *w, const float *x, int n_tokens, float *y,
                         int64_t r0, int64_t r1) {
    switch (w->dtype) {
    case AV_DTYPE_F32: matmul_rows_f32(w, x, n_tokens, y, r0, r1); break;
    case AV_DTYPE_F16: matmul_rows_f16(w, x, n_tokens, y, r0, r1); break;
    case AV_DTYPE_BF16: matmul_rows_bf16(w, x, n_tokens, y, r0, r1); break;
    default: av_matmul_rows_scalar(w, x, n_tokens, y, r0, r1); break;
    }
}
