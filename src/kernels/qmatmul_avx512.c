/*
 * qmatmul_avx512.c - the integer NF4 and INT8 products with AVX-512 (F, BW,
 * DQ, VL).
 *
 * The AVX2 kernel (qmatmul_avx2.c) widened to two groups of 32 per zmm
 * register: lanes 0-1 hold group g and lanes 2-3 group g + 1, with the same
 * nibble order, so the activations and the integer sums are the same.
 * AVX-512 has no vpsignb, so x takes the sign of w by a masked subtraction
 * from zero. A last odd group uses 256-bit registers.
 *
 * NOTE: untested. The development machine has no AVX-512; this path was
 * only compiled. test_qmatmul compares it with the scalar reference on any
 * CPU that has AVX-512.
 */
#include <immintrin.h>

#include "kernels/kernels_isa.h"

#define AV_INLINE static inline __attribute__((always_inline))

#define TILE_ROWS 2
#define TILE_TOKENS 4

/* Returns groups g and g + 1 of NF4 codes (32 bytes) as int8 levels. */
AV_INLINE __m512i decode_nf4_pair(const uint8_t *codes, __m512i table) {
    __m256i bytes = _mm256_loadu_si256((const __m256i *)codes);
    __m256i high = _mm256_srli_epi16(bytes, 4);
    __m256i first = _mm256_permute2x128_si256(high, bytes, 0x20);
    __m256i second = _mm256_permute2x128_si256(high, bytes, 0x31);
    __m512i nibbles = _mm512_inserti64x4(_mm512_castsi256_si512(first), second, 1);
    nibbles = _mm512_and_si512(nibbles, _mm512_set1_epi8(15));
    return _mm512_shuffle_epi8(table, nibbles);
}

AV_INLINE __m512 dot_pair(__m512i w, __m512i aw, __m512i x) {
    __m512i signed_x = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
    __m512i pairs = _mm512_maddubs_epi16(aw, signed_x);
    return _mm512_cvtepi32_ps(_mm512_madd_epi16(pairs, _mm512_set1_epi16(1)));
}

AV_INLINE __m512 pair_scale(float first, float second) {
    return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_set1_ps(first)),
                              _mm256_set1_ps(second), 1);
}

AV_INLINE __m256i decode_nf4(const uint8_t *codes, __m256i table) {
    __m128i bytes = _mm_loadu_si128((const __m128i *)codes);
    __m256i nibbles = _mm256_set_m128i(bytes, _mm_srli_epi16(bytes, 4));
    nibbles = _mm256_and_si256(nibbles, _mm256_set1_epi8(15));
    return _mm256_shuffle_epi8(table, nibbles);
}

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

AV_INLINE void tile(const av_matrix *w, const int8_t *xq, const float *xd, float *y, int64_t r,
                    int t, const int R, const int T, const int nf4) {
    const int64_t n_groups = w->row_stride / AV_QGROUP;
    const __m128i levels = _mm_loadu_si128((const __m128i *)av_nf4_levels_i8);
    const __m512i table = _mm512_broadcast_i32x4(levels);
    const __m256i table256 = _mm256_broadcastsi128_si256(levels);
    __m512 acc[TILE_ROWS][TILE_TOKENS];
    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++) acc[i][j] = _mm512_setzero_ps();

    int64_t g = 0;
    for (; g + 2 <= n_groups; g += 2) {
        __m512i wv[TILE_ROWS], aw[TILE_ROWS];
        float ws0[TILE_ROWS], ws1[TILE_ROWS];
        for (int i = 0; i < R; i++) {
            const int64_t group = (r + i) * n_groups + g;
            if (nf4) {
                wv[i] = decode_nf4_pair((const uint8_t *)w->data + group * (AV_QGROUP / 2), table);
                ws0[i] = w->scale[group >> w->group_shift];
                ws1[i] = w->scale[(group + 1) >> w->group_shift];
            } else {
                wv[i] = _mm512_loadu_si512((const int8_t *)w->data + group * AV_QGROUP);
                ws0[i] = ws1[i] = 1.0f;
            }
            aw[i] = _mm512_abs_epi8(wv[i]);
        }
        for (int j = 0; j < T; j++) {
            const int64_t xg = (int64_t)(t + j) * n_groups + g;
            __m512i xv = _mm512_loadu_si512(xq + xg * AV_QGROUP);
            for (int i = 0; i < R; i++) {
                __m512 scale = pair_scale(ws0[i] * xd[xg], ws1[i] * xd[xg + 1]);
                acc[i][j] = _mm512_fmadd_ps(dot_pair(wv[i], aw[i], xv), scale, acc[i][j]);
            }
        }
    }

    float tail[TILE_ROWS][TILE_TOKENS] = {{0}};
    if (g < n_groups) {
        for (int i = 0; i < R; i++) {
            const int64_t group = (r + i) * n_groups + g;
            __m256i wv;
            float ws = 1.0f;
            if (nf4) {
                wv = decode_nf4((const uint8_t *)w->data + group * (AV_QGROUP / 2), table256);
                ws = w->scale[group >> w->group_shift];
            } else {
                wv = _mm256_loadu_si256((const __m256i *)((const int8_t *)w->data +
                                                          group * AV_QGROUP));
            }
            __m256i aw = _mm256_abs_epi8(wv);
            for (int j = 0; j < T; j++) {
                const int64_t xg = (int64_t)(t + j) * n_groups + g;
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + xg * AV_QGROUP));
                __m256 sums = _mm256_mul_ps(dot_group(wv, aw, xv), _mm256_set1_ps(ws * xd[xg]));
                tail[i][j] = hsum8(sums);
            }
        }
    }

    for (int i = 0; i < R; i++)
        for (int j = 0; j < T; j++) {
            float sum = _mm512_reduce_add_ps(acc[i][j]) + tail[i][j];
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

AV_INLINE void qmatmul_rows(const av_matrix *w, const int8_t *xq, const float *xd, int n_tokens,
                            float *y, int64_t r0, int64_t r1, const int nf4) {
    int64_t r = r0;
    for (; r + TILE_ROWS <= r1; r += TILE_ROWS)
        tile_tokens(w, xq, xd, y, r, 0, n_tokens, TILE_ROWS, nf4);
    for (; r < r1; r++) tile_tokens(w, xq, xd, y, r, 0, n_tokens, 1, nf4);
}

static void qmatmul_rows_nf4(const av_matrix *w, const int8_t *xq, const float *xd,
                             int n_tokens, float *y, int64_t r0, int64_t r1) {
    qmatmul_rows(w, xq, xd, n_tokens, y, r0, r1, 1);
}

static void qmatmul_rows_int8(const av_matrix *w, const int8_t *xq, const float *xd,
                              int n_tokens, float *y, int64_t r0, int64_t r1) {
    qmatmul_rows(w, xq, xd, n_tokens, y, r0, r1, 0);
}

void av_qmatmul_rows_avx512(const av_matrix *w, const int8_t *xq, const float *xd,
                            int n_tokens, float *y, int64_t r0, int64_t r1) {
    /* NOTE: the packed layouts have no AVX-512 kernels yet and run the AVX2 ones. */
    if (w->format == AV_MATRIX_NF4_PACKED || w->format == AV_MATRIX_INT8_PACKED)
        av_qmatmul_rows_avx2(w, xq, xd, n_tokens, y, r0, r1);
    else if (w->format == AV_MATRIX_NF4)
        qmatmul_rows_nf4(w, xq, xd, n_tokens, y, r0, r1);
    else
        qmatmul_rows_int8(w, xq, xd, n_tokens, y, r0, r1);
}
