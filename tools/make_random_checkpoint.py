#!/usr/bin/env python3
"""Write a Hugging Face Llama checkpoint filled with random weights.

The default shape is ai4bharat/Airavata (Llama 2 7B with a 48065-token
vocabulary), so the engine and the llama.cpp baseline can be timed on the real
layout without downloading the real weights. The output folder contains
config.json, generation_config.json, tokenizer.model (copied from --tokenizer),
tokenizer_config.json and the weights in safetensors format, sharded like the
Hugging Face Hub files (model-0000K-of-0000N.safetensors plus
model.safetensors.index.json; a single model.safetensors when --shards 1).

Linear weights and embeddings are drawn from N(0, std^2) with a fixed seed and
RMSNorm weights are 1.0. Each tensor has its own random stream, derived from
(seed, tensor index), so the values do not depend on the shard count.

The safetensors writer is written here, streaming one tensor at a time in
chunks of CHUNK_ELEMENTS values, so a 13.5 GB bf16 checkpoint needs well under
1 GB of RAM. Only numpy is required; the optional --verify step also needs the
`safetensors` package.
"""

import argparse
import json
import os
import shutil
import struct
import sys
import time

import numpy as np

CHUNK_ELEMENTS = 1 << 22  # values generated per step (16 MiB as float32)

DTYPES = {
    # option: (safetensors dtype, bytes per value, torch_dtype in config.json)
    "bf16": ("BF16", 2, "bfloat16"),
    "f16": ("F16", 2, "float16"),
    "f32": ("F32", 4, "float32"),
}


def float32_to_bf16_bits(x):
    """Round float32 values to bfloat16 (round to nearest, ties to even).

    Returns the bf16 bit patterns as uint16. NaN stays NaN (quiet, sign kept)
    because adding the rounding bias could otherwise carry it into infinity.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    lsb = (bits >> 16) & 1
    rounded = (bits + (lsb + 0x7FFF)) >> 16
    nan = np.isnan(x)
    if nan.any():
        rounded[nan] = (bits[nan] >> 16) | 0x0040
    return rounded.astype(np.uint16)


def encode(values, dtype):
    """Encode float32 values as little-endian bytes of the checkpoint dtype."""
    if dtype == "bf16":
        return float32_to_bf16_bits(values).astype("<u2").tobytes()
    if dtype == "f16":
        return values.astype("<f2").tobytes()
    return values.astype("<f4").tobytes()


def tensor_specs(args):
    """List (name, shape, kind) in the order transformers saves a Llama model.

    kind is "normal" for random weights and "ones" for RMSNorm weights.
    """
    head_dim = args.hidden // args.heads
    kv_dim = args.kv_heads * head_dim
    specs = [("model.embed_tokens.weight", (args.vocab, args.hidden), "normal")]
    for layer in range(args.layers):
        prefix = f"model.layers.{layer}."
        specs += [
            (prefix + "self_attn.q_proj.weight", (args.hidden, args.hidden), "normal"),
            (prefix + "self_attn.k_proj.weight", (kv_dim, args.hidden), "normal"),
            (prefix + "self_attn.v_proj.weight", (kv_dim, args.hidden), "normal"),
            (prefix + "self_attn.o_proj.weight", (args.hidden, args.hidden), "normal"),
            (prefix + "mlp.gate_proj.weight", (args.intermediate, args.hidden), "normal"),
            (prefix + "mlp.up_proj.weight", (args.intermediate, args.hidden), "normal"),
            (prefix + "mlp.down_proj.weight", (args.hidden, args.intermediate), "normal"),
            (prefix + "input_layernorm.weight", (args.hidden,), "ones"),
            (prefix + "post_attention_layernorm.weight", (args.hidden,), "ones"),
        ]
    specs.append(("model.norm.weight", (args.hidden,), "ones"))
    if not args.tied:
        specs.append(("lm_head.weight", (args.vocab, args.hidden), "normal"))
    return specs


def element_count(shape):
    count = 1
    for dim in shape:
        count *= dim
    return count


def split_into_shards(specs, nbytes_per_value, shard_count):
    """Split the tensor list, in order, into shard_count runs of similar size."""
    sizes = [element_count(shape) * nbytes_per_value for _, shape, _ in specs]
    total = sum(sizes)
    shards = [[] for _ in range(shard_count)]
    written = 0
    for index, size in enumerate(sizes):
        # Place each tensor by the midpoint of its byte range.
        shard = min(shard_count - 1, (written + size // 2) * shard_count // total)
        shards[shard].append(index)
        written += size
    if any(not shard for shard in shards):
        raise SystemExit(f"error: --shards {shard_count} is more than this model's "
                         f"{len(specs)} tensors can fill; use fewer shards")
    return shards


def safetensors_header(entries, dtype_name):
    """Build the padded safetensors header for [(name, shape)] in file order.

    Returns (header bytes including the 8-byte length, data offsets per name).
    """
    nbytes_per_value = DTYPES[dtype_name][1]
    header = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        size = element_count(shape) * nbytes_per_value
        header[name] = {
            "dtype": DTYPES[dtype_name][0],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    # Pad with spaces so the data starts 8-byte aligned, as the reference
    # safetensors writer does.
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def tensor_rng(seed, index):
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, index])))


def write_tensor(out, index, shape, kind, args):
    """Stream one tensor's values into the open file, CHUNK_ELEMENTS at a time."""
    remaining = element_count(shape)
    if kind == "ones":
        out.write(encode(np.ones(remaining, dtype=np.float32), args.dtype))
        return
    rng = tensor_rng(args.seed, index)
    while remaining > 0:
        count = min(remaining, CHUNK_ELEMENTS)
        values = rng.standard_normal(count, dtype=np.float32)
        values *= np.float32(args.std)
        out.write(encode(values, args.dtype))
        remaining -= count


def write_shard(path, indices, specs, args, progress):
    """Write one safetensors file under a temporary name, then rename it."""
    entries = [(specs[i][0], specs[i][1]) for i in indices]
    temp_path = path + ".tmp"
    with open(temp_path, "wb") as out:
        out.write(safetensors_header(entries, args.dtype))
        for i in indices:
            name, shape, kind = specs[i]
            write_tensor(out, i, shape, kind, args)
            progress(name, element_count(shape) * DTYPES[args.dtype][1])
    os.replace(temp_path, path)


def write_json(path, value):
    temp_path = path + ".tmp"
    with open(temp_path, "w", encoding="utf-8") as out:
        json.dump(value, out, indent=2)
        out.write("\n")
    os.replace(temp_path, path)


def model_config(args):
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.hidden,
        "intermediate_size": args.intermediate,
        "num_attention_heads": args.heads,
        "num_hidden_layers": args.layers,
        "num_key_value_heads": args.kv_heads,
        "vocab_size": args.vocab,
        "max_position_embeddings": args.max_position_embeddings,
        "rms_norm_eps": args.rms_norm_eps,
        "rope_theta": args.rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "initializer_range": args.std,
        "pretraining_tp": 1,
        "tie_word_embeddings": args.tied,
        "torch_dtype": DTYPES[args.dtype][2],
        "bos_token_id": 1,
        "eos_token_id": 2,
        "use_cache": True,
    }


def write_metadata(out_dir, args):
    write_json(os.path.join(out_dir, "config.json"), model_config(args))
    write_json(os.path.join(out_dir, "generation_config.json"),
               {"bos_token_id": 1, "eos_token_id": 2})
    write_json(os.path.join(out_dir, "tokenizer_config.json"), {
        "tokenizer_class": "LlamaTokenizer",
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
    })
    shutil.copyfile(args.tokenizer, os.path.join(out_dir, "tokenizer.model"))


def shard_file_names(shard_count):
    if shard_count == 1:
        return ["model.safetensors"]
    return [f"model-{k + 1:05d}-of-{shard_count:05d}.safetensors" for k in range(shard_count)]


def write_checkpoint(args):
    specs = tensor_specs(args)
    nbytes_per_value = DTYPES[args.dtype][1]
    shards = split_into_shards(specs, nbytes_per_value, args.shards)
    names = shard_file_names(args.shards)
    total_bytes = sum(element_count(s) for _, s, _ in specs) * nbytes_per_value

    os.makedirs(args.output, exist_ok=True)
    write_metadata(args.output, args)
    print(f"writing {len(specs)} tensors, {total_bytes / 1e9:.2f} GB of {args.dtype} "
          f"in {args.shards} shard(s) to {args.output}", flush=True)

    start = time.time()
    done_bytes = 0
    last_report = 0.0

    def progress(name, nbytes):
        nonlocal done_bytes, last_report
        done_bytes += nbytes
        now = time.time() - start
        if now - last_report >= 5.0 or done_bytes == total_bytes:
            last_report = now
            rate = done_bytes / max(now, 1e-9) / 1e6
            print(f"  {done_bytes / total_bytes:6.1%}  {done_bytes / 1e9:6.2f} GB  "
                  f"{rate:6.1f} MB/s  {name}", flush=True)

    weight_map = {}
    for file_name, indices in zip(names, shards):
        write_shard(os.path.join(args.output, file_name), indices, specs, args, progress)
        for i in indices:
            weight_map[specs[i][0]] = file_name
    if args.shards > 1:
        write_json(os.path.join(args.output, "model.safetensors.index.json"),
                   {"metadata": {"total_size": total_bytes}, "weight_map": weight_map})
    print(f"done in {time.time() - start:.1f} s", flush=True)
    return specs, weight_map


def read_raw_prefix(path, name, count, nbytes_per_value):
    """Read the first count values of a tensor as raw bytes, by our own parser."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
        begin = header[name]["data_offsets"][0]
        f.seek(8 + header_len + begin)
        return f.read(count * nbytes_per_value)


def verify_checkpoint(args, specs, weight_map):
    """Open every shard with the safetensors package and check names, shapes,
    dtypes and the first values of a few tensors against a fresh draw."""
    from safetensors import safe_open

    expected_dtype = DTYPES[args.dtype][0]
    by_file = {}
    for index, (name, shape, kind) in enumerate(specs):
        by_file.setdefault(weight_map[name], []).append((index, name, shape, kind))

    for file_name, tensors in by_file.items():
        path = os.path.join(args.output, file_name)
        with safe_open(path, framework="numpy") as f:
            keys = set(f.keys())
            expected_names = {name for _, name, _, _ in tensors}
            if keys != expected_names:
                raise SystemExit(f"verify: {file_name} tensor names differ from the expected "
                                 f"ones, for example {sorted(keys ^ expected_names)[:5]}")
            for _, name, shape, _ in tensors:
                tensor_slice = f.get_slice(name)
                if tuple(tensor_slice.get_shape()) != tuple(shape):
                    raise SystemExit(f"verify: {name} has shape {tensor_slice.get_shape()}, "
                                     f"expected {list(shape)}")
                if tensor_slice.get_dtype() != expected_dtype:
                    raise SystemExit(f"verify: {name} has dtype {tensor_slice.get_dtype()}, "
                                     f"expected {expected_dtype}")

        # Compare the first values of the first and last tensor in this file.
        for index, name, shape, kind in (tensors[0], tensors[-1]):
            count = min(element_count(shape), 1024)
            if kind == "ones":
                values = np.ones(count, dtype=np.float32)
            else:
                values = tensor_rng(args.seed, index).standard_normal(count, dtype=np.float32)
                values *= np.float32(args.std)
            raw = read_raw_prefix(path, name, count, DTYPES[args.dtype][1])
            if raw != encode(values, args.dtype):
                raise SystemExit(f"verify: {name} in {file_name} does not hold the "
                                 "values drawn from its seed")
        print(f"verified {file_name}: {len(tensors)} tensors", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Write a Llama checkpoint in Hugging Face layout with random weights "
                    "(default shape: ai4bharat/Airavata, 7B).")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--tokenizer", required=True,
                   help="SentencePiece tokenizer.model to copy into the folder")
    p.add_argument("--hidden", type=int, default=4096, help="hidden size (default 4096)")
    p.add_argument("--layers", type=int, default=32, help="transformer blocks (default 32)")
    p.add_argument("--heads", type=int, default=32, help="attention heads (default 32)")
    p.add_argument("--kv-heads", type=int, default=None,
                   help="key/value heads for grouped-query attention (default: --heads)")
    p.add_argument("--intermediate", type=int, default=11008,
                   help="feed-forward size (default 11008)")
    p.add_argument("--vocab", type=int, default=48065, help="vocabulary size (default 48065)")
    p.add_argument("--max-position-embeddings", type=int, default=4096,
                   help="context length written to config.json (default 4096)")
    p.add_argument("--rms-norm-eps", type=float, default=1e-5, help="RMSNorm epsilon")
    p.add_argument("--rope-theta", type=float, default=10000.0, help="RoPE base frequency")
    p.add_argument("--tied", action="store_true",
                   help="tie lm_head to the embeddings (no lm_head.weight tensor)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16",
                   help="storage type of every tensor (default bf16)")
    p.add_argument("--shards", type=int, default=3, help="number of safetensors files (default 3)")
    p.add_argument("--seed", type=int, default=1234, help="random seed (default 1234)")
    p.add_argument("--std", type=float, default=0.02,
                   help="standard deviation of the random weights (default 0.02)")
    p.add_argument("--verify", action="store_true",
                   help="reopen the files with the safetensors package and check them")
    args = p.parse_args(argv)

    if args.kv_heads is None:
        args.kv_heads = args.heads
    for option in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab",
                   "max_position_embeddings", "shards"):
        if getattr(args, option) <= 0:
            p.error(f"--{option.replace('_', '-')} must be positive, got {getattr(args, option)}")
    if args.hidden % args.heads != 0:
        p.error(f"--hidden {args.hidden} is not divisible by --heads {args.heads}")
    if (args.hidden // args.heads) % 2 != 0:
        p.error(f"head size {args.hidden // args.heads} must be even for RoPE")
    if args.heads % args.kv_heads != 0:
        p.error(f"--heads {args.heads} is not divisible by --kv-heads {args.kv_heads}")
    if not (args.std > 0):
        p.error(f"--std must be positive, got {args.std}")
    if not os.path.isfile(args.tokenizer):
        p.error(f"tokenizer file not found: {args.tokenizer}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    specs, weight_map = write_checkpoint(args)
    if args.verify:
        verify_checkpoint(args, specs, weight_map)


if __name__ == "__main__":
    main()
