/*
 * kv_cache.c - the paged key/value cache.
 *
 * The pool is one anonymous mapping reserved up front with MAP_NORESERVE:
 * the kernel backs a block with memory only when a sequence first writes
 * it, so a context sized for long sequences costs memory in proportion to
 * the positions actually used.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "model_internal.h"

av_status av_kv_init(av_kv_cache *kv, const av_config *c, int n_seq, int n_ctx,
                     int pool_tokens) {
    memset(kv, 0, sizeof *kv);
    kv->max_blocks_per_seq = (n_ctx + AV_KV_BLOCK - 1) / AV_KV_BLOCK;
    kv->n_pool_blocks = pool_tokens > 0 ? (pool_tokens + AV_KV_BLOCK - 1) / AV_KV_BLOCK
                                        : kv->max_blocks_per_seq * n_seq;
    kv->n_seq = n_seq;
    kv->block_floats = (size_t)c->n_layers * (size_t)c->n_kv_heads * 2 * AV_KV_BLOCK *
                       (size_t)c->head_dim;
    kv->pool_bytes = (size_t)kv->n_pool_blocks * kv->block_floats * sizeof(float);

    void *pool = mmap(NULL, kv->pool_bytes, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (pool == MAP_FAILED)
        return av_set_error(AV_ERR_NOMEM,
                            "cannot reserve %.1f GiB for the KV cache (%d sequences x %d "
                            "positions); lower --ctx or the number of parallel sequences",
                            (double)kv->pool_bytes / (1 << 30), n_seq, n_ctx);
    kv->pool = pool;

    kv->free_list = malloc(sizeof(int32_t) * (size_t)kv->n_pool_blocks);
    kv->seqs = calloc((size_t)n_seq, sizeof(av_kv_seq));
    if (!kv->free_list || !kv->seqs) goto nomem;
    /* Hand out low block indices first so used memory stays compact. */
    for (int i = 0; i < kv->n_pool_blocks; i++) kv->free_list[i] = kv->n_pool_blocks - 1 - i;
    kv->n_free = kv->n_pool_blocks;
    for (int s = 0; s < n_seq; s++) {
        kv->seqs[s].block_table = malloc(sizeof(int32_t) * (size_t)kv->max_blocks_per_seq);
        if (!kv->seqs[s].block_table) goto nomem;
    }
    return AV_OK;

nomem:
    return av_set_error(AV_ERR_NOMEM, "out of memory allocating KV cache tables");
}

void av_kv_free(av_kv_cache *kv) {
    if (kv->pool) munmap(kv->pool, kv->pool_bytes);
    if (kv->seqs)
        for (int s = 0; s < kv->n_seq; s++) free(kv->seqs[s].block_table);
    free(kv->seqs);
    free(kv->free_list);
    memset(kv, 0, sizeof *kv);
}

av_status av_kv_reserve(av_kv_cache *kv, int seq, int new_len) {
    av_kv_seq *s = &kv->seqs[seq];
    int need = (new_len + AV_KV_BLOCK - 1) / AV_KV_BLOCK;
    if (need > kv->max_blocks_per_seq)
        return av_set_error(AV_ERR_RANGE, "sequence %d needs %d positions, more than the %d "
                            "the context holds", seq, new_len,
                            kv->max_blocks_per_seq * AV_KV_BLOCK);
    while (s->n_blocks < need) {
        if (kv->n_free == 0)
            return av_set_error(AV_ERR_RANGE, "KV cache pool exhausted (%d blocks of %d "
                                "positions)", kv->n_pool_blocks, AV_KV_BLOCK);
        s->block_table[s->n_blocks++] = kv->free_list[--kv->n_free];
    }
    return AV_OK;
}

void av_kv_truncate(av_kv_cache *kv, int seq, int len) {
    av_kv_seq *s = &kv->seqs[seq];
    if (len < 0) len = 0;
    if (len < s->len) s->len = len;
    /* Blocks past the cached length are released too: av_kv_reserve() may
     * have taken them for a batch that then failed. */
    int keep = (len + AV_KV_BLOCK - 1) / AV_KV_BLOCK;
    while (s->n_blocks > keep) {
        int32_t block = s->block_table[--s->n_blocks];
        /* Give the memory back to the kernel: a freed block may stay unused
         * for a long time. */
        madvise(kv->pool + (size_t)block * kv->block_floats, kv->block_floats * sizeof(float),
                MADV_DONTNEED);
        kv->free_list[kv->n_free++] = block;
    }
}

float *av_kv_row(const av_kv_cache *kv, const av_config *c, int seq, int layer, int kv_head,
                 int is_value, int pos) {
    const av_kv_seq *s = &kv->seqs[seq];
    int32_t block = s->block_table[pos / AV_KV_BLOCK];
    size_t offset = (((size_t)layer * (size_t)c->n_kv_heads + (size_t)kv_head) * 2 +
                     (size_t)is_value) * AV_KV_BLOCK + (size_t)(pos % AV_KV_BLOCK);
    return kv->pool + (size_t)block * kv->block_floats + offset * (size_t)c->head_dim;
}
