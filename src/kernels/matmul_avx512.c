/*
 * matmul_avx512.c - y = W x with AVX-512 (F, BW, VL, DQ), for W in F32, F16
 * and BF16.
 *
 * The AVX2 kernel (matmul_avx2.c) widened to 16 lanes: the same register
 * tiles, conversions and token blocking. With 32 zmm registers the main
 * tile is 4 rows x 6 tokens (24 accumulators + 4 weight vectors). Column
 * tails use masked loads (AVX512BW for the 16-bit weights), which read no
 * memory past the masked-off lanes.
 *
 * NOTE: untested on hardware: the development machine has no AVX-512, so
 * this file has only been compiled. The unit tests run it on any CPU that
 * has AVX-512.
 */
#include <immintrin.h>

#include "kernels/kernels_isa.h"

#define AV_INLINE static inline __attribute__((always_inline))

#define TILE_ROWS 4
#define TILE_TOKENS 6
/* Target bytes of activations (f32) per token block. */
#define TOKEN_BLOCK_BYTES (256 * 1024)
#define TOKEN_BLOCK_MAX 60

AV_INLINE __m512 load16(const void *base, int64_t i, av_dtype dtype) {
    if (dtype == AV_DTYPE_F32) return _mm512_loadu_ps((const float *)base + i);
    __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)base + i));
    if (dtype == AV_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Loads the lanes set in `mask`, zero in the others. */
AV_INLINE __m512 load16_masked(const void *base, int64_t i, __mmask16 mask, av_dtype dtype) {
    if (dtype == AV_DTYPE_F32) return _mm512_maskz_loadu_ps(mask, (const float *)base + i);
    __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)base + i);
    if (dtype == AV_DTYPE_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* One R x T tile: rows r..r+R-1, tokens t..t+T-1. */
AV_INLINE void tile(const av_matrix *w, const float *x, float *y, int64_t r, int t,
                    const int R, const int T, av_dtype dtype) {
    const int64_t rows = w->rows, cols = w->cols, cols16 = cols & ~(int64_t)15;
    const size_t esize = dtype == AV_DTYPE_F32 ? 4 : 2;
    const char *wbase = (const char *)w->data + (size_t)r * (size_t)cols * esize;
    const void *wr[TILE_ROWS];
    const float *xt[TILE_TOKENS];
    for (int i = 0; i < R; i++) wr[i] = wbase + (size_t)i * (size_t)cols * esize;
    for (int j = 0; j < T; j++) xt[j] = x + (int64_t)(t + j) * cols;

    __m512 acc[TILE_ROWS][TILE_TOKENS];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++) acc[i][j] = _mm512_setzero_ps();

    for (int64_t c = 0; c < cols16; c += 16) {
        __m512 wv[TILE_ROWS];
        for (int i = 0; i < R; i++) wv[i] = load16(wr[i], c, dtype);
        for (int j = 0; j < T; j++) {
            __m512 xv = _mm512_loadu_ps(xt[j] + c);
            for (int i = 0; i < R; i++) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }
    if (cols16 < cols) {
        __mmask16 mask = (__mmask16)((1u << (cols - cols16)) - 1u);
        __m512 wv[TILE_ROWS];
        for (int i = 0; i < R; i++) wv[i] = load16_masked(wr[i], cols16, mask, dtype);
        for (int j = 0; j < T; j++) {
            __m512 xv = _mm512_maskz_loadu_ps(mask, xt[j] + cols16);
            for (int i = 0; i < R; i++) acc[i][j] = _mm512_fmadd_ps(wv[i], xv, acc[i][j]);
        }
    }

    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++) y[(int64_t)(t + j) * rows + r + i] = _mm512_reduce_add_ps(acc[i][j]);
}

/* Runs tiles of R rows over tokens [t0, t1). */
AV_INLINE void tile_tokens(const av_matrix *w, const float *x, float *y, int64_t r, int t0,
                           int t1, const int R, av_dtype dtype) {
    int t = t0;
    for (; t + TILE_TOKENS <= t1; t += TILE_TOKENS) tile(w, x, y, r, t, R, TILE_TOKENS, dtype);
    switch (t1 - t) {
    case 5: tile(w, x, y, r, t, R, 5, dtype); break;
    case 4: tile(w, x, y, r, t, R, 4, dtype); break;
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

AV_INLINE void matmul_rows(const av_matrix *w, const float *x, int n_tokens, float *y,
                           int64_t r0, int64_t r1, av_dtype dtype) {
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

void av_matmul_rows_avx512(const av_matrix *w, const float *x, int n_tokens, float *y,
                           int64_t r0, int64_t r1) {
    switch (w->dtype) {
    case AV_DTYPE_F32: matmul_rows_f32(w, x, n_tokens, y, r0, r1); break;
    case AV_DTYPE_F16: matmul_rows_f16(w, x, n_tokens, y, r0, r1); break;
    case AV_DTYPE_BF16: matmul_rows_bf16(w, x, n_tokens, y, r0, r1); break;
    default: av_matmul_rows_scalar(w, x, n_tokens, y, r0, r1); break;
    }
}
