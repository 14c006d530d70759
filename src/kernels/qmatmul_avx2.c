/*
 * qmatmul_avx2.c - the integer NF4 and INT8 products and the activation
 * quantizer with AVX2.
 *
 * One group of 32 weights becomes 32 int8 in a ymm register. NF4: the 16
 * code bytes are split into high nibbles (low lane, the even values) and
 * low nibbles (high lane, the odd values), and vpshufb looks the 4-bit codes
 * up in the int8 level table; the activations are stored in that order
 * (qmatmul.c). INT8: the 32 bytes are loaded as they are.
 *
 * vpmaddubsw multiplies unsigned by signed bytes, so the product uses
 * |w| * (x with the sign of w). Adjacent pairs are summed to int16 without
 * saturation: |w| <= 128 and |x| <= 127 (the quantizer never writes -128
 * for finite input) give at most 2 * 128 * 127 = 32512. vpmaddwd with ones
 * then sums pairs to int32, exact; the 8 lanes become f32 (exact below 2^24)
 * and are accumulated with the group's scale by FMA.
 *
 * Register tiles: R rows x T tokens (2 x 4 at most) keep R*T accumulators.
 * Each group's weights are decoded once per tile and used for T tokens,
 * which is what makes prefill faster per token than decode. Tokens are
 * processed in blocks whose int8 activations fit in about half of a
 * 512 KiB L2.
 *
 * Packed NF4 (the layout the loader uses) reads a whole 64-value block,
 * two groups, per 32-byte load. Its high nibbles are the even values of
 * both groups and its low nibbles the odd values, the order of
 * AV_XORDER_NF4_BLOCK activations. Lanes 0-3 of the int32 sums therefore
 * belong to the first group and lanes 4-7 to the second. Decode takes the four
 * rows of a tile at once, and prefill takes two rows of the tile with up to
 * three tokens, while the tile's codes (8 KiB for 4096 columns) stay in L1
 * for the next tokens. Packed INT8 is tiled the same way, one group of 32
 * bytes per row and step.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/kernels_isa.h"

#define AV_INLINE static inline __attribute__((always_inline))

#define TILE_ROWS 2
#define TILE_TOKENS 4
#define TOKEN_BLOCK_BYTES (256 * 1024)
#define TOKEN_BLOCK_MAX 128
/* Packed decode prefetches the codes this many bytes (8 steps) ahead of
 * the block it computes. The hardware prefetcher alone left the 2-core
 * EPYC at 80-85 % of its plain-read bandwidth on 7B shapes, while 768 to
 * 1280 bytes ahead measured 85-95 % (bench/matmul_speed NF4). Prefetches past
 * the end of the matrix are harmless: they never fault. */
#define PREFETCH_BYTES 1024
/* Packed NF4 prefill tile: 2 rows x 3 tokens keep 6 accumulators, the
 * decoded levels of 2 rows and one token's activations in the 16 ymm
 * registers. On 7B shapes with 64 tokens it measured about 10 % above
 * 1 row x 4 tokens, which decodes each block for as many tokens but
 * loads every activation once per row. */
#define PREFILL_ROWS 2
#define PREFILL_TOKENS 3

/* Returns the 32 NF4 values of one group as int8 levels: the high nibbles
 * of the 16 bytes in the low lane, the low nibbles in the high lane. */
AV_INLINE __m256i decode_nf4(const uint8_t *codes, __m256i table) {
    __m128i bytes = _mm_loadu_si128((const __m128i *)codes);
    __m256i nibbles = _mm256_set_m128i(bytes, _mm_srli_epi16(bytes, 4));
    nibbles = _mm256_and_si256(nibbles, _mm256_set1_epi8(15));
    return _mm256_shuffle_epi8(table, nibbles);
}

/* Returns the 8 int32 partial sums of w . x as f32; aw = |w|. */
AV_INLINE __m256 dot_group(__m256i w, __m256i aw, __m256i x) {
    __m256i pairs = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

AV_INLINE float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One R x T tile: rows r..r+R-1, tokens t..t+T-1. R, T and nf4 are
 * constants after inlining. */
AV_INLINE void tile(const av_matrix *w, const int8_t *xq, const float *xd, float *y, int64_t r,
                    int t, const int R, const int T, const int nf4) {
    const int64_t cols32 = w->row_stride, n_groups = cols32 / AV_QGROUP;
    const __m256i table = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)av_nf4_levels_i8));
    __m256 acc[TILE_ROWS][TILE_TOKENS];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++) acc[i][j] = _mm256_setzero_ps();

    for (int64_t g = 0; g < n_groups; g++) {
        __m256i wv[TILE_ROWS], aw[TILE_ROWS];
        float ws[TILE_ROWS];
        for (int i = 0; i < R; i++) {
            const int64_t group = (r + i) * n_groups + g;
            if (nf4) {
                wv[i] = decode_nf4((const uint8_t *)w->data + group * (AV_QGROUP / 2), table);
                ws[i] = w->scale[group >> w->group_shift];
            } else {
                wv[i] = _mm256_loadu_si256((const __m256i *)((const int8_t *)w->data +
                                                             group * AV_QGROUP));
                ws[i] = 1.0f;
            }
            aw[i] = _mm256_abs_epi8(wv[i]);
        }
        for (int j = 0; j < T; j++) {
            const int64_t xg = (int64_t)(t + j) * n_groups + g;
            __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + xg * AV_QGROUP));
            float dx = xd[xg];
            for (int i = 0; i < R; i++) {
                __m256 scale = _mm256_set1_ps(nf4 ? ws[i] * dx : dx);
                acc[i][j] = _mm256_fmadd_ps(dot_group(wv[i], aw[i], xv), scale, acc[i][j]);
            }
        }
    }

    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++) {
            float sum = hsum8(acc[i][j]);
            sum *= nf4 ? 1.0f / 127.0f : w->scale[r + i];
            y[(int64_t)(t + j) * w->rows + r + i] = sum;
        }
}

AV_INLINE void tile_tokens(const av_matrix *w, const int8_t *xq, const float *xd, float *y,
                           int64_t r, int t0, int t1, const int R, const int nf4) {
    int t = t0;
    for (; t + TILE_TOKENS <= t1; t += TILE_TOKENS)
        tile(w, xq, xd, y, r, t, R, TILE_TOKENS, nf4);
    switch (t1 - t) {
    case 3: tile(w, xq, xd, y, r, t, R, 3, nf4); break;
    case 2: tile(w, xq, xd, y, r, t, R, 2, nf4); break;
    case 1: tile(w, xq, xd, y, r, t, R, 1, nf4); break;
    default: break;
    }
}

static int token_block(int64_t cols32) {
    int64_t block = TOKEN_BLOCK_BYTES / cols32;
    block = block / TILE_TOKENS * TILE_TOKENS;
    if (block < TILE_TOKENS) block = TILE_TOKENS;
    if (block > TOKEN_BLOCK_MAX) block = TOKEN_BLOCK_MAX;
    return (int)block;
}

/* ---- packed NF4 ---------------------------------------------------------- */

/* Returns the integer sums of one row's block against activations in block
 * order: lanes 0-3 group 2b, lanes 4-7 group 2b + 1. w_even/w_odd are the
 * levels of the high and low nibbles. */
AV_INLINE __m256i block_sums(__m256i w_even, __m256i w_odd, __m256i x_even, __m256i x_odd) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i p_even =
        _mm256_maddubs_epi16(_mm256_abs_epi8(w_even), _mm256_sign_epi8(x_even, w_even));
    __m256i p_odd = _mm256_maddubs_epi16(_mm256_abs_epi8(w_odd), _mm256_sign_epi8(x_odd, w_odd));
    return _mm256_add_epi32(_mm256_madd_epi16(p_even, ones), _mm256_madd_epi16(p_odd, ones));
}

/* Decodes 32 code bytes into the levels of their high (even) and low (odd)
 * nibbles. */
AV_INLINE void decode_block(const uint8_t *codes, __m256i table, __m256i *w_even,
                            __m256i *w_odd) {
    const __m256i low4 = _mm256_set1_epi8(15);
    __m256i c = _mm256_loadu_si256((const __m256i *)codes);
    *w_even = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(c, 4), low4));
    *w_odd = _mm256_shuffle_epi8(table, _mm256_and_si256(c, low4));
}

/* Computes the 4 rows of tile `tile` for one token (decode). */
static void nf4_packed_decode_tile(const av_matrix *w, const int8_t *xq, const float *xd,
                                   float *y, int64_t tile) {
    const int64_t n_blocks = w->cols / AV_NF4_BLOCK;
    const int64_t step_bytes = AV_PACK_TILE_ROWS * (AV_NF4_BLOCK / 2);
    const uint8_t *codes = (const uint8_t *)w->data + tile * n_blocks * step_bytes;
    const float *scale = w->scale + tile * n_blocks * AV_PACK_TILE_ROWS;
    const __m256i table = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)av_nf4_levels_i8));
    __m256 acc[AV_PACK_TILE_ROWS];
    for (int i = 0; i < AV_PACK_TILE_ROWS; i++) acc[i] = _mm256_setzero_ps();

    for (int64_t b = 0; b < n_blocks; b++, codes += step_bytes, scale += AV_PACK_TILE_ROWS) {
        __m256i x_even = _mm256_loadu_si256((const __m256i *)(xq + b * AV_NF4_BLOCK));
        __m256i x_odd = _mm256_loadu_si256((const __m256i *)(xq + b * AV_NF4_BLOCK + 32));
        __m256 dx = _mm256_loadu_ps(xd + b * AV_XSCALES_PER_BLOCK);
        _mm_prefetch((const char *)codes + PREFETCH_BYTES, _MM_HINT_T0);
        _mm_prefetch((const char *)codes + PREFETCH_BYTES + 64, _MM_HINT_T0);
        for (int i = 0; i < AV_PACK_TILE_ROWS; i++) {
            __m256i w_even, w_odd;
            decode_block(codes + i * (AV_NF4_BLOCK / 2), table, &w_even, &w_odd);
            __m256i sum = block_sums(w_even, w_odd, x_even, x_odd);
            __m256 s = _mm256_mul_ps(dx, _mm256_set1_ps(scale[i]));
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), s, acc[i]);
        }
    }
    for (int i = 0; i < AV_PACK_TILE_ROWS; i++) {
        int64_t r = tile * AV_PACK_TILE_ROWS + i;
        if (r < w->rows) y[r] = hsum8(acc[i]) * (1.0f / 127.0f);
    }
}

/* Computes rows i .. i + R - 1 of tile `tile` for T tokens t .. t + T - 1
 * (prefill, R <= PREFILL_ROWS, T <= PREFILL_TOKENS). */
AV_INLINE void nf4_packed_rows_tokens(const av_matrix *w, const int8_t *xq, const float *xd,
                                      float *y, int64_t tile, int i, const int R, int t,
                                      const int T) {
    const int64_t n_blocks = w->cols / AV_NF4_BLOCK;
    const int64_t scales_per_token = n_blocks * AV_XSCALES_PER_BLOCK;
    const int64_t step_bytes = AV_PACK_TILE_ROWS * (AV_NF4_BLOCK / 2);
    const uint8_t *codes = (const uint8_t *)w->data + tile * n_blocks * step_bytes +
                           i * (AV_NF4_BLOCK / 2);
    const float *scale = w->scale + tile * n_blocks * AV_PACK_TILE_ROWS + i;
    const __m256i table = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)av_nf4_levels_i8));
    __m256 acc[PREFILL_ROWS][PREFILL_TOKENS];
    for (int k = 0; k < R; k++)
        for (int j = 0; j < T; j++) acc[k][j] = _mm256_setzero_ps();

    for (int64_t b = 0; b < n_blocks; b++, codes += step_bytes, scale += AV_PACK_TILE_ROWS) {
        __m256i w_even[PREFILL_ROWS], w_odd[PREFILL_ROWS];
        for (int k = 0; k < R; k++)
            decode_block(codes + k * (AV_NF4_BLOCK / 2), table, &w_even[k], &w_odd[k]);
        for (int j = 0; j < T; j++) {
            const int8_t *xt = xq + (int64_t)(t + j) * w->cols + b * AV_NF4_BLOCK;
            __m256i xe = _mm256_loadu_si256((const __m256i *)xt);
            __m256i xo = _mm256_loadu_si256((const __m256i *)(xt + 32));
            __m256 dx = _mm256_loadu_ps(xd + (int64_t)(t + j) * scales_per_token +
                                        b * AV_XSCALES_PER_BLOCK);
            for (int k = 0; k < R; k++) {
                __m256i sum = block_sums(w_even[k], w_odd[k], xe, xo);
                __m256 s = _mm256_mul_ps(dx, _mm256_set1_ps(scale[k]));
                acc[k][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), s, acc[k][j]);
            }
        }
    }
    for (int k = 0; k < R; k++) {
        int64_t r = tile * AV_PACK_TILE_ROWS + i + k;
        if (r >= w->rows) continue;
        for (int j = 0; j < T; j++)
            y[(int64_t)(t + j) * w->rows + r] = hsum8(acc[k][j]) * (1.0f / 127.0f);
    }
}

/* ---- packed INT8 ----------------------------------------------------------- */

/* Returns the integer sums of 32 int8 weights against 32 int8 activations. */
AV_INLINE __m256i group_sums(__m256i w, __m256i x) {
    __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

/* Computes the 4 rows of tile `tile` of a packed INT8 matrix for one token. */
static void int8_packed_decode_tile(const av_matrix *w, const int8_t *xq, const float *xd,
                                    float *y, int64_t tile) {
    const int64_t n_groups = w->row_stride / AV_QGROUP;
    const int64_t step_bytes = AV_PACK_TILE_ROWS * AV_QGROUP;
    const int8_t *q = (const int8_t *)w->data + tile * n_groups * step_bytes;
    __m256 acc[AV_PACK_TILE_ROWS];
    for (int i = 0; i < AV_PACK_TILE_ROWS; i++) acc[i] = _mm256_setzero_ps();

    for (int64_t g = 0; g < n_groups; g++, q += step_bytes) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(xq + g * AV_QGROUP));
        __m256 dx = _mm256_set1_ps(xd[g]);
        _mm_prefetch((const char *)q + PREFETCH_BYTES, _MM_HINT_T0);
        _mm_prefetch((const char *)q + PREFETCH_BYTES + 64, _MM_HINT_T0);
        for (int i = 0; i < AV_PACK_TILE_ROWS; i++) {
            __m256i sum = group_sums(_mm256_loadu_si256((const __m256i *)(q + i * AV_QGROUP)), x);
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), dx, acc[i]);
        }
    }
    for (int i = 0; i < AV_PACK_TILE_ROWS; i++) {
        int64_t r = tile * AV_PACK_TILE_ROWS + i;
        if (r < w->rows) y[r] = hsum8(acc[i]) * w->scale[r];
    }
}

/* Computes rows i .. i + R - 1 of tile `tile` of a packed INT8 matrix for T
 * tokens t .. t + T - 1 (prefill). */
AV_INLINE void int8_packed_rows_tokens(const av_matrix *w, const int8_t *xq, const float *xd,
                                       float *y, int64_t tile, int i, const int R, int t,
                                       const int T) {
    const int64_t n_groups = w->row_stride / AV_QGROUP;
    const int64_t step_bytes = AV_PACK_TILE_ROWS * AV_QGROUP;
    const int8_t *q = (const int8_t *)w->data + tile * n_groups * step_bytes + i * AV_QGROUP;
    __m256 acc[PREFILL_ROWS][PREFILL_TOKENS];
    for (int k = 0; k < R; k++)
        for (int j = 0; j < T; j++) acc[k][j] = _mm256_setzero_ps();

    for (int64_t g = 0; g < n_groups; g++, q += step_bytes) {
        __m256i wv[PREFILL_ROWS];
        for (int k = 0; k < R; k++)
            wv[k] = _mm256_loadu_si256((const __m256i *)(q + k * AV_QGROUP));
        for (int j = 0; j < T; j++) {
            const int64_t xg = (int64_t)(t + j) * n_groups + g;
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq + xg * AV_QGROUP));
            __m256 dx = _mm256_set1_ps(xd[xg]);
            for (int k = 0; k < R; k++) {
                __m256i sum = group_sums(wv[k], x);
                acc[k][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), dx, acc[k][j]);
            }
        }
    }
    for (int k = 0; k < R; k++) {
        int64_t r = tile * AV_PACK_TILE_ROWS + i + k;
        if (r >= w->rows) continue;
        for (int j = 0; j < T; j++)
            y[(int64_t)(t + j) * w->rows + r] = hsum8(acc[k][j]) * w->scale[r];
    }
}

/* ---- packed driver ---------------------------------------------------------- */

AV_INLINE void packed_rows_tokens(const av_matrix *w, const int8_t *xq, const float *xd,
                                  float *y, int64_t tile, int i, int t, const int T,
                                  const int nf4) {
    if (nf4)
        nf4_packed_rows_tokens(w, xq, xd, y, tile, i, PREFILL_ROWS, t, T);
    else
        int8_packed_rows_tokens(w, xq, xd, y, tile, i, PREFILL_ROWS, t, T);
}

/* Computes rows [r0, r1) of a packed NF4 or INT8 product. r0 is a multiple
 * of AV_PACK_TILE_ROWS, and so is r1 unless it is the row count. */
AV_INLINE void packed_rows(const av_matrix *w, const int8_t *xq, const float *xd, int n_tokens,
                           float *y, int64_t r0, int64_t r1, const int nf4) {
    const int64_t tile0 = r0 / AV_PACK_TILE_ROWS;
    const int64_t tile1 = (r1 + AV_PACK_TILE_ROWS - 1) / AV_PACK_TILE_ROWS;
    if (n_tokens == 1) {
        for (int64_t tile = tile0; tile < tile1; tile++) {
            if (nf4)
                nf4_packed_decode_tile(w, xq, xd, y, tile);
            else
                int8_packed_decode_tile(w, xq, xd, y, tile);
        }
        return;
    }
    int block = token_block(w->row_stride);
    for (int t0 = 0; t0 < n_tokens; t0 += block) {
        int t1 = n_tokens - t0 < block ? n_tokens : t0 + block;
        for (int64_t tile = tile0; tile < tile1; tile++)
            for (int i = 0; i < AV_PACK_TILE_ROWS; i += PREFILL_ROWS) {
                int t = t0;
                for (; t + PREFILL_TOKENS <= t1; t += PREFILL_TOKENS)
                    packed_rows_tokens(w, xq, xd, y, tile, i, t, PREFILL_TOKENS, nf4);
                if (t1 - t == 2) packed_rows_tokens(w, xq, xd, y, tile, i, t, 2, nf4);
                if (t1 - t == 1) packed_rows_tokens(w, xq, xd, y, tile, i, t, 1, nf4);
            }
    }
}

static void nf4_packed_rows(const av_matrix *w, const int8_t *xq, const float *xd,
                            int n_tokens, float *y, int64_t r0, int64_t r1) {
    packed_rows(w, xq, xd, n_tokens, y, r0, r1, 1);
}

static void int8_packed_rows(const av_matrix *w, const int8_t *xq, const float *xd,
                             int n_tokens, float *y, int64_t r0, int64_t r1) {
    packed_rows(w, xq, xd, n_tokens, y, r0, r1, 0);
}

AV_INLINE void qmatmul_rows(const av_matrix *w, const int8_t *xq, const float *xd, int n_tokens,
                            float *y, int64_t r0, int64_t r1, const int nf4) {
    int block = token_block(w->row_stride);
    for (int t0 = 0; t0 < n_tokens; t0 += block) {
        int t1 = n_tokens - t0 < block ? n_tokens : t0 + block;
        int64_t r = r0;
        for (; r + TILE_ROWS <= r1; r += TILE_ROWS)
            tile_tokens(w, xq, xd, y, r, t0, t1, TILE_ROWS, nf4);
        for (; r < r1; r++) tile_tokens(w, xq, xd, y, r, t0, t1, 1, nf4);
    }
}

static void qmatmul_rows_nf4(const av_matrix *w, const int8_t *xq, const float *xd,
                             int n_tokens, float *y, int64_t r0, int64_t r1) {
    qmatmul_rows(w, xq, xd, n_tokens, y, r0, r1, 1);
}

static void qmatmul_rows_int8(const av_matrix *w, const int8_t *xq, const float *xd,
                              int n_tokens, float *y, int64_t r0, int64_t r1) {
    qmatmul_rows(w, xq, xd, n_tokens, y, r0, r1, 0);
}

void av_qmatmul_rows_avx2(const av_matrix *w, const int8_t *xq, const float *xd, int n_tokens,
                          float *y, int64_t r0, int64_t r1) {
    if (w->format == AV_MATRIX_NF4_PACKED)
        nf4_packed_rows(w, xq, xd, n_tokens, y, r0, r1);
    else if (w->format == AV_MATRIX_INT8_PACKED)
        int8_packed_rows(w, xq, xd, n_tokens, y, r0, r1);
    else if (w->format == AV_MATRIX_NF4)
        qmatmul_rows_nf4(w, xq, xd, n_tokens, y, r0, r1);
    else
        qmatmul_rows_int8(w, xq, xd, n_tokens, y, r0, r1);
}

/* ---- activations ------------------------------------------------------------ */

/* Quantizes one full group of 32 floats (see av_quantize_row_scalar).
 * With nf4_order the even values go to xq[0..15] and the odd ones to
 * xq[odd_offset..odd_offset + 15]. */
AV_INLINE void quantize_group(const float *x, int nf4_order, int64_t odd_offset, int8_t *xq,
                              float *xd) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 v[4];
    for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(x + 8 * k);
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask),
                                           _mm256_and_ps(v[1], abs_mask)),
                             _mm256_max_ps(_mm256_and_ps(v[2], abs_mask),
                                           _mm256_and_ps(v[3], abs_mask)));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    float amax = _mm_cvtss_f32(h);
    float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    *xd = amax / 127.0f;

    __m256 scale = _mm256_set1_ps(inv);
    __m256i i[4];
    for (int k = 0; k < 4; k++) i[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], scale));
    /* The packs interleave 128-bit lanes; the permute restores the order. */
    __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(i[0], i[1]),
                                       _mm256_packs_epi32(i[2], i[3]));
    bytes = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    if (nf4_order) {
        /* Per lane: even bytes then odd bytes; then the even halves of both
         * lanes, then the odd halves. */
        const __m256i split = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13,
                                               15, 0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11,
                                               13, 15);
        bytes = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(bytes, split), 0xd8);
        _mm_storeu_si128((__m128i *)xq, _mm256_castsi256_si128(bytes));
        _mm_storeu_si128((__m128i *)(xq + odd_offset), _mm256_extracti128_si256(bytes, 1));
        return;
    }
    _mm256_storeu_si256((__m256i *)xq, bytes);
}

void av_quantize_row_avx2(const float *x, int64_t cols, av_xorder order, int8_t *xq,
                          float *xd) {
    const int64_t n_groups = (cols + AV_QGROUP - 1) / AV_QGROUP;
    const int half = AV_QGROUP / 2;
    for (int64_t g = 0; g < n_groups; g++) {
        /* Destination of the group's first (even) value and of its odd
         * values, relative to it (see av_xorder). */
        int64_t dst = g * AV_QGROUP, odd_offset = half;
        int nf4_order = order != AV_XORDER_NATURAL;
        if (order == AV_XORDER_NF4_BLOCK && !((g & 1) == 0 && g + 1 == n_groups)) {
            dst = (g & ~(int64_t)1) * AV_QGROUP + (g & 1) * half;
            odd_offset = AV_QGROUP;
        }
        if ((g + 1) * AV_QGROUP <= cols) {
            quantize_group(x + g * AV_QGROUP, nf4_order, odd_offset, xq + dst, xd + g);
        } else {
            float tail[AV_QGROUP] = {0};
            memcpy(tail, x + g * AV_QGROUP, (size_t)(cols - g * AV_QGROUP) * sizeof(float));
            quantize_group(tail, nf4_order, odd_offset, xq + dst, xd + g);
        }
    }
}
