/*
 * loader.h - internal interface of the checkpoint loader.
 *
 * An av_checkpoint is a Hugging Face model directory opened for reading:
 * its config.json and generation_config.json parsed, and its safetensors
 * files (one model.safetensors, or the shards that
 * model.safetensors.index.json names) memory-mapped and validated. Tensor
 * lookup by name works across shards. The model code (src/model) decides
 * which tensors a Llama needs and checks their dtypes and shapes through
 * av_checkpoint_require().
 */
#ifndef AV_LOADER_H
#define AV_LOADER_H

#include "airavata.h"

typedef struct av_checkpoint av_checkpoint;

/* Opens a model directory. Fails with a message naming the file and the
 * problem when config.json is missing or invalid, when neither
 * model.safetensors nor model.safetensors.index.json exists, when the index
 * names a missing shard or a tensor the shard lacks, or when any safetensors
 * file is malformed. When both weight layouts exist, model.safetensors is
 * used and the index is ignored. */
av_checkpoint *av_checkpoint_open(const char *dir);
void av_checkpoint_close(av_checkpoint *ckpt);

const char *av_checkpoint_dir(const av_checkpoint *ckpt);
const av_config *av_checkpoint_config(const av_checkpoint *ckpt);
/* Fields absent from generation_config.json (or the whole file) are -1. */
const av_generation_config *av_checkpoint_generation_config(const av_checkpoint *ckpt);

int av_checkpoint_tensor_count(const av_checkpoint *ckpt);
const av_tensor *av_checkpoint_tensor(const av_checkpoint *ckpt, int index);
/* Returns the tensor called `name` in any shard, or NULL. */
const av_tensor *av_checkpoint_find(const av_checkpoint *ckpt, const char *name);
/* Bytes of the tensors of `module`: those named "<module>.<anything>", such
 * as a quantized weight and its companions (absmax, quant_map, SCB, ...). */
uint64_t av_checkpoint_module_bytes(const av_checkpoint *ckpt, const char *module);
/* Elements of the same tensors, as stored (packed codes count one per byte). */
uint64_t av_checkpoint_module_elements(const av_checkpoint *ckpt, const char *module);
/* Total bytes of tensor data over all files. */
uint64_t av_checkpoint_data_bytes(const av_checkpoint *ckpt);

/* Returns the tensor `name` after checking that it exists, that its dtype
 * is F32, F16 or BF16, and that its shape equals shape[0..ndim). On failure
 * returns NULL with an error such as
 *   "model.layers.3.mlp.up_proj.weight in DIR/model-00002-of-00003.safetensors:
 *    shape [11008, 4096] expected, found [4096, 11008]". */
const av_tensor *av_checkpoint_require(const av_checkpoint *ckpt, const char *name, int ndim,
                                       const int64_t *shape);

/* The safetensors files of the checkpoint, in the order they were opened
 * (shards in the order the index first names them). av_tensor.file of every
 * tensor is equal (strcmp) to one of these paths. */
int av_checkpoint_file_count(const av_checkpoint *ckpt);
const char *av_checkpoint_file_path(const av_checkpoint *ckpt, int index);

/* Tells the system that the process no longer needs the `bytes` bytes of
 * tensor data at `data` (because it made its own copy, as the packed
 * layouts do), so the pages stop counting in its resident memory. The data
 * stays readable: the pages are read back from the file if touched again. Does
 * nothing when the range is not inside one of the checkpoint's file maps. */
void av_checkpoint_release(const av_checkpoint *ckpt, const void *data, size_t bytes);
void av_safetensors_release(const av_safetensors *st, const void *data, size_t bytes);

/* Reads a JSON file of at most max_bytes bytes. The error message names the
 * path, and the line and column of a syntax error. */
struct json_t;
av_status av_json_load_file(const char *path, size_t max_bytes, struct json_t **out);

#endif
