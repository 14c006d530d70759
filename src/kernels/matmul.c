/*
 * matmul.c - y = W x, the product that dominates the forward pass.
 *
 * This file owns the scalar reference (av_matmul_ref and the scalar path)
 * and the parallel driver. Rows are cut into chunks that threads take from
 * an atomic counter. A thread slowed by other work on its core then takes
 * fewer chunks instead of holding up the others. Each chunk runs the selected
 * instruction set's row function (matmul_avx2.c, matmul_avx512.c) over all
 * tokens, which reads the chunk's weights once for the whole batch.
 */
#include <stdatomic.h>
#include <string.h>

#include "kernels/kernels_isa.h"

/* Below this many multiply-adds a matmul runs on the calling thread alone:
 * waking the workers costs more than it saves. */
#define PARALLEL_MIN_WORK 16384
/* Chunks are a multiple of this many rows, a multiple of the 3-row (AVX2)
 * and 4-row (AVX-512) tiles, so only the last chunk has a row tail. */
#define CHUNK_ROW_ALIGN 48
/* Chunks per thread: enough to balance uneven progress, few enough that
 * each chunk streams a long contiguous run of weights. */
#define CHUNKS_PER_THREAD 8

static float bf16_at(const uint16_t *p, int64_t i) { return av_bf16_to_f32(p[i]); }
static float f16_at(const uint16_t *p, int64_t i) { return av_f16_to_f32(p[i]); }

/* The reference product: one f32 accumulator per output, summed in column
 * order. Rows outer, tokens inner, so each row is converted from cache. */
void av_matmul_rows_scalar(const av_matrix *w, const float *x, int n_tokens, float *y,
                           int64_t r0, int64_t r1) {
    const int64_t rows = w->rows, cols = w->cols;
    for (int64_t r = r0; r < r1; r++) {
        for (int t = 0; t < n_tokens; t++) {
            const float *xt = x + (int64_t)t * cols;
            float acc = 0.0f;
            switch (w->dtype) {
            case AV_DTYPE_F32: {
                const float *wr = (const float *)w->data + r * cols;
                for (int64_t c = 0; c < cols; c++) acc += wr[c] * xt[c];
                break;
            }
            case AV_DTYPE_F16: {
                const uint16_t *wr = (const uint16_t *)w->data + r * cols;
                for (int64_t c = 0; c < cols; c++) acc += f16_at(wr, c) * xt[c];
                break;
            }
            case AV_DTYPE_BF16: {
                const uint16_t *wr = (const uint16_t *)w->data + r * cols;
                for (int64_t c = 0; c < cols; c++) acc += bf16_at(wr, c) * xt[c];
                break;
            }
            default: break;
            }
            y[(int64_t)t * rows + r] = acc;
        }
    }
}

void av_matmul_ref(const av_matrix *w, const float *x, int n_tokens, float *y) {
    if (w->format != AV_MATRIX_DENSE) {
        av_qmatmul_ref(w, x, n_tokens, y);
        return;
    }
    av_matmul_rows_scalar(w, x, n_tokens, y, 0, w->rows);
}

typedef struct {
    const av_matrix *w;
    const float *x;
    int n_tokens;
    float *y;
    av_matmul_rows_fn rows_fn;
    int64_t chunk_rows;
    int64_t n_chunks;
    atomic_llong next_chunk;
} matmul_job;

static void matmul_worker(void *arg, int ith, int nth) {
    matmul_job *job = arg;
    for (;;) {
        int64_t chunk = atomic_fetch_add_explicit(&job->next_chunk, 1, memory_order_relaxed);
        if (chunk >= job->n_chunks) break;
        int64_t r0 = chunk * job->chunk_rows;
        int64_t r1 = r0 + job->chunk_rows < job->w->rows ? r0 + job->chunk_rows : job->w->rows;
        job->rows_fn(job->w, job->x, job->n_tokens, job->y, r0, r1);
    }
}

static int dtype_supported(av_dtype dtype) {
    return dtype == AV_DTYPE_F32 || dtype == AV_DTYPE_F16 || dtype == AV_DTYPE_BF16;
}

void av_matmul(av_threadpool *pool, const av_matrix *w, const float *x, int n_tokens,
               float *y) {
    if (n_tokens <= 0 || w->rows <= 0) return;
    if (w->format != AV_MATRIX_DENSE) {
        av_qmatmul(pool, w, x, n_tokens, y);
        return;
    }
    if (!dtype_supported(w->dtype)) {
        /* The model checks dtypes at load time; reaching here is a bug. */
        av_log(AV_LOG_ERROR, "av_matmul: unsupported weight dtype %s",
               av_dtype_name(w->dtype));
        return;
    }
    av_matmul_rows_fn rows_fn = av_kernels_table()->matmul_rows;
    int nth = av_threadpool_size(pool);
    double work = (double)w->rows * (double)w->cols * n_tokens;
    if (nth == 1 || work < PARALLEL_MIN_WORK) {
        rows_fn(w, x, n_tokens, y, 0, w->rows);
        return;
    }

    int64_t chunk = w->rows / ((int64_t)nth * CHUNKS_PER_THREAD);
    chunk = (chunk + CHUNK_ROW_ALIGN - 1) / CHUNK_ROW_ALIGN * CHUNK_ROW_ALIGN;
    if (chunk < CHUNK_ROW_ALIGN) chunk = CHUNK_ROW_ALIGN;

    matmul_job job = {
        .w = w, .x = x, .n_tokens = n_tokens, .y = y, .rows_fn = rows_fn,
        .chunk_rows = chunk, .n_chunks = (w->rows + chunk - 1) / chunk,
    };
    atomic_init(&job.next_chunk, 0);
    av_threadpool_run(pool, matmul_worker, &job);
}

void av_matrix_row(const av_matrix *w, int64_t row, float *out) {
    if (w->format != AV_MATRIX_DENSE) {
        av_qmatrix_row(w, row, out);
        return;
    }
    size_t elem = av_dtype_size(w->dtype);
    const char *src = (const char *)w->data + (size_t)row * (size_t)w->cols * elem;
    av_to_f32(out, src, w->dtype, w->cols);
}
