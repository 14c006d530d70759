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
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/kernels_isa.h"

#define AV_INLINE static inline __attribute__((always_inline))

#define TILE_ROWS 2
#define TILE_TOKENS 4
#define TOKEN_BLOCK_BYTES (256 * 1024)
#define TOKEN_BLOCK_MAX 128

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

/* Decode (one token) of NF4 with bitsandbytes' 64-value blocks, R rows at
 * a time. One 32-byte load contains the codes of two groups, i.e. one block:
 * its high nibbles are the even values of both groups (group g in the low
 * lane, g + 1 in the high lane) and its low nibbles the odd values, so the
 * activations of the two groups are regrouped the same way once per block
 * and shared by the R rows. Lanes 0-3 of the int32 sums then belong to
 * group g and lanes 4-7 to g + 1, which is how the two activation scales are
 * laid out in `dx`. Per row and block this is one conversion and one FMA
 * instead of two, which roughly halves the instructions per weight of the
 * general tile. */
AV_INLINE void nf4_decode_block_rows(const av_matrix *w, const int8_t *xq, const float *xd,
                                     float *y, int64_t r, const int R) {
    const int64_t n_groups = w->row_stride / AV_QGROUP;
    const uint8_t *codes = (const uint8_t *)w->data;
    const __m256i table = _mm256_broadcastsi128_si256(
        _mm_loadu_si128((const __m128i *)av_nf4_levels_i8));
    const __m256i low4 = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc[4];
    for (int i = 0; i < R; i++) acc[i] = _mm256_setzero_ps();

    for (int64_t g = 0; g < n_groups; g += 2) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + g * AV_QGROUP));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (g + 1) * AV_QGROUP));
        __m256i x_even = _mm256_permute2x128_si256(x0, x1, 0x20);
        __m256i x_odd = _mm256_permute2x128_si256(x0, x1, 0x31);
        __m256 dx = _mm256_setr_m128(_mm_set1_ps(xd[g]), _mm_set1_ps(xd[g + 1]));
        for (int i = 0; i < R; i++) {
            const int64_t group = (r + i) * n_groups + g;
            __m256i c = _mm256_loadu_si256((const __m256i *)(codes + group * (AV_QGROUP / 2)));
            __m256i w_even = _mm256_shuffle_epi8(table,
                                                 _mm256_and_si256(_mm256_srli_epi16(c, 4), low4));
            __m256i w_odd = _mm256_shuffle_epi8(table, _mm256_and_si256(c, low4));
            __m256i p_even = _mm256_maddubs_epi16(_mm256_abs_epi8(w_even),
                                                  _mm256_sign_epi8(x_even, w_even));
            __m256i p_odd = _mm256_maddubs_epi16(_mm256_abs_epi8(w_odd),
                                                 _mm256_sign_epi8(x_odd, w_odd));
            __m256i sum = _mm256_add_epi32(_mm256_madd_epi16(p_even, ones),
                                           _mm256_madd_epi16(p_odd, ones));
            __m256 scale = _mm256_mul_ps(dx, _mm256_set1_ps(w->scale[group >> 1]));
            acc[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), scale, acc[i]);
        }
    }
    for (int i = 0; i < R; i++) y[r + i] = hsum8(acc[i]) * (1.0f / 127.0f);
}

AV_INLINE void qmatmul_rows(const av_matrix *w, const int8_t *xq, const float *xd, int n_tokens,
                            float *y, int64_t r0, int64_t r1, const int nf4) {
    if (nf4 && n_tokens == 1 && w->group_shift == 1 && (w->row_stride / AV_QGROUP) % 2 == 0) {
        int64_t r = r0;
        for (; r + 4 <= r1; r += 4) nf4_decode_block_rows(w, xq, xd, y, r, 4);
        for (; r < r1; r++) nf4_decode_block_rows(w, xq, xd, y, r, 1);
        return;
    }
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
    if (w->format == AV_MATRIX_NF4)
        qmatmul_rows_nf4(w, xq, xd, n_tokens, y, r0, r1);
    else
        qmatmul_rows_int8(w, xq, xd, n_tokens, y, r0, r1);
}

/* ---- activations ------------------------------------------------------------ */

/* Quantizes one full group of 32 floats (see av_quantize_row_scalar). */
AV_INLINE void quantize_group(const float *x, int nf4_order, int8_t *xq, float *xd) {
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
    }
    _mm256_storeu_si256((__m256i *)xq, bytes);
}

void av_quantize_row_avx2(const float *x, int64_t cols, int nf4_order, int8_t *xq, float *xd) {
    int64_t g = 0;
    for (; (g + 1) * AV_QGROUP <= cols; g++)
        quantize_group(x + g * AV_QGROUP, nf4_order, xq + g * AV_QGROUP, xd + g);
    if (g * AV_QGROUP < cols) {
        float tail[AV_QGROUP] = {0};
        memcpy(tail, x + g * AV_QGROUP, (size_t)(cols - g * AV_QGROUP) * sizeof(float));
        quantize_group(tail, nf4_order, xq + g * AV_QGROUP, xd + g);
    }
}
