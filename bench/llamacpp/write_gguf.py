#!/usr/bin/env python3
"""Convert a Hugging Face Llama checkpoint (safetensors) to GGUF for llama.cpp.

This is the baseline's own converter, so the benchmark does not depend on a
llama.cpp source checkout. It reads model.safetensors or the shards listed in
model.safetensors.index.json (F32, F16 or BF16), and writes one GGUF file with
the `gguf` package, streaming one tensor at a time:

  - llama architecture metadata from config.json,
  - the SentencePiece vocabulary from tokenizer.model (pieces, scores, token
    types), padded with "[PAD<id>]" tokens of type UNUSED up to vocab_size,
  - 2-D weights as F16 (or F32 with --outtype f32); 1-D norm weights as F32.

Hugging Face Llama checkpoints store the q_proj and k_proj rows of each head in
the "rotate half" RoPE order (the first head_dim/2 rows pair with the last
head_dim/2), while llama.cpp's LLAMA rope pairs adjacent rows (2i, 2i+1).
unpermute_rope_rows() moves row i of the first half to 2i and row i of the
second half to 2i+1 within each head. llama.cpp's convert_hf_to_gguf.py applies
the same reordering, and it uses the key/value head count for k_proj.

With --quantize q8_0,q4_0 the F16 file is then quantized by llama.cpp itself
(llama_cpp.llama_model_quantize from llama-cpp-python).
"""

import argparse
import json
import os
import struct
import sys
import time

import numpy as np

import gguf

SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2")}
MAX_HEADER_BYTES = 100 * 1024 * 1024


class SafetensorsFile:
    """A safetensors file whose tensors are read one at a time by name.

    Plain reads instead of a memory map keep the process's resident memory at
    about one tensor, where a map would keep every page read so far counted.
    """

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > MAX_HEADER_BYTES:
                raise SystemExit(f"error: {path}: header of {header_len} bytes is too large; "
                                 "is this a safetensors file?")
            self.header = json.loads(f.read(header_len))
        self.header.pop("__metadata__", None)
        self.data_start = 8 + header_len

    def read_f32(self, name):
        """Return a tensor as a float32 array in its stored shape."""
        info = self.header[name]
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise SystemExit(f"error: {self.path}: tensor {name} has dtype {info['dtype']}; "
                             "only F32, F16 and BF16 are supported")
        begin, end = info["data_offsets"]
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            data = f.read(end - begin)
        if len(data) != end - begin:
            raise SystemExit(f"error: {self.path}: tensor {name} is truncated "
                             f"({len(data)} of {end - begin} bytes)")
        raw = np.frombuffer(data, dtype=dtype).reshape(info["shape"])
        if info["dtype"] == "BF16":
            # bf16 is the upper half of a float32.
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32)


class Checkpoint:
    """The tensors of a Hugging Face checkpoint folder, sharded or not."""

    def __init__(self, folder):
        index_path = os.path.join(folder, "model.safetensors.index.json")
        if os.path.exists(index_path):
            with open(index_path, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        else:
            single = os.path.join(folder, "model.safetensors")
            if not os.path.exists(single):
                raise SystemExit(f"error: {folder} has neither model.safetensors nor "
                                 "model.safetensors.index.json")
            weight_map = {name: "model.safetensors" for name in SafetensorsFile(single).header}
        self.files = {}
        self.file_of = {}
        for name, file_name in weight_map.items():
            if file_name not in self.files:
                self.files[file_name] = SafetensorsFile(os.path.join(folder, file_name))
            self.file_of[name] = self.files[file_name]

    def __contains__(self, name):
        return name in self.file_of

    def shape(self, name):
        return tuple(self.file_of[name].header[name]["shape"])

    def read_f32(self, name):
        if name not in self.file_of:
            raise SystemExit(f"error: tensor {name} is missing from the checkpoint")
        return self.file_of[name].read_f32(name)


def unpermute_rope_rows(weight, n_heads):
    """Reorder q/k projection rows from rotate-half to interleaved RoPE pairs.

    weight: [n_heads * head_dim, n_in]. Within each head, row r of the first
    half moves to 2r and row r of the second half moves to 2r + 1.
    """
    rows, cols = weight.shape
    head_dim = rows // n_heads
    halves = weight.reshape(n_heads, 2, head_dim // 2, cols)
    return halves.transpose(0, 2, 1, 3).reshape(rows, cols)


def load_config(folder):
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    arch = config.get("architectures", ["LlamaForCausalLM"])
    if arch != ["LlamaForCausalLM"]:
        raise SystemExit(f"error: config.json architectures is {arch}; only LlamaForCausalLM "
                         "is supported")
    config.setdefault("num_key_value_heads", config["num_attention_heads"])
    config.setdefault("rope_theta", 10000.0)
    config.setdefault("tie_word_embeddings", False)
    if config.get("rope_scaling"):
        raise SystemExit(f"error: rope_scaling {config['rope_scaling']} is not supported")
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    if config.get("head_dim", head_dim) != head_dim:
        raise SystemExit(f"error: head_dim {config['head_dim']} differs from "
                         f"hidden_size / num_attention_heads = {head_dim}")
    return config


def load_vocab(tokenizer_path, vocab_size):
    """Read SentencePiece pieces, scores and GGUF token types, padded to vocab_size."""
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor()
    sp.Load(tokenizer_path)
    n_pieces = sp.GetPieceSize()
    if n_pieces > vocab_size:
        raise SystemExit(f"error: {tokenizer_path} has {n_pieces} pieces, more than "
                         f"vocab_size {vocab_size} in config.json")
    tokens, scores, types = [], [], []
    for token_id in range(n_pieces):
        tokens.append(sp.IdToPiece(token_id).encode("utf-8"))
        scores.append(sp.GetScore(token_id))
        if sp.IsUnknown(token_id):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.IsControl(token_id):
            types.append(gguf.TokenType.CONTROL)
        elif sp.IsUnused(token_id):
            types.append(gguf.TokenType.UNUSED)
        elif sp.IsByte(token_id):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    for token_id in range(n_pieces, vocab_size):
        tokens.append(f"[PAD{token_id}]".encode("utf-8"))
        scores.append(-10000.0)
        types.append(gguf.TokenType.UNUSED)
    return tokens, scores, types, sp


def tensor_plan(config, checkpoint):
    """List (gguf name, hf name, rope heads or None) in llama.cpp's usual order."""
    n_heads = config["num_attention_heads"]
    n_kv_heads = config["num_key_value_heads"]
    plan = [("token_embd.weight", "model.embed_tokens.weight", None)]
    for layer in range(config["num_hidden_layers"]):
        hf = f"model.layers.{layer}."
        blk = f"blk.{layer}."
        plan += [
            (blk + "attn_norm.weight", hf + "input_layernorm.weight", None),
            (blk + "attn_q.weight", hf + "self_attn.q_proj.weight", n_heads),
            (blk + "attn_k.weight", hf + "self_attn.k_proj.weight", n_kv_heads),
            (blk + "attn_v.weight", hf + "self_attn.v_proj.weight", None),
            (blk + "attn_output.weight", hf + "self_attn.o_proj.weight", None),
            (blk + "ffn_norm.weight", hf + "post_attention_layernorm.weight", None),
            (blk + "ffn_gate.weight", hf + "mlp.gate_proj.weight", None),
            (blk + "ffn_up.weight", hf + "mlp.up_proj.weight", None),
            (blk + "ffn_down.weight", hf + "mlp.down_proj.weight", None),
        ]
    plan.append(("output_norm.weight", "model.norm.weight", None))
    # A tied model has no lm_head; llama.cpp then reuses token_embd for the output.
    if "lm_head.weight" in checkpoint and not config["tie_word_embeddings"]:
        plan.append(("output.weight", "lm_head.weight", None))
    return plan


def output_dtype(shape, outtype):
    # Norm weights (1-D) stay F32, as llama.cpp's own converter stores them.
    if len(shape) == 1 or outtype == "f32":
        return np.dtype("<f4")
    return np.dtype("<f2")


def add_metadata(writer, config, vocab, outtype, name):
    tokens, scores, types, sp = vocab
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(config["rope_theta"]))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_vocab_size(config["vocab_size"])
    file_type = gguf.LlamaFileType.ALL_F32 if outtype == "f32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(file_type)

    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(config.get("bos_token_id", sp.bos_id()))
    writer.add_eos_token_id(config.get("eos_token_id", sp.eos_id()))
    if sp.unk_id() >= 0:
        writer.add_unk_token_id(sp.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def write_gguf(folder, out_path, outtype):
    config = load_config(folder)
    checkpoint = Checkpoint(folder)
    tokenizer_path = os.path.join(folder, "tokenizer.model")
    vocab = load_vocab(tokenizer_path, config["vocab_size"])
    plan = tensor_plan(config, checkpoint)

    temp_path = out_path + ".tmp"
    writer = gguf.GGUFWriter(temp_path, arch="llama")
    add_metadata(writer, config, vocab, outtype, os.path.basename(os.path.normpath(folder)))

    # Tensor infos go into the header before any data, so declare every tensor
    # first and then stream the data in the same order.
    for gguf_name, hf_name, _ in plan:
        shape = checkpoint.shape(hf_name)
        dtype = output_dtype(shape, outtype)
        writer.add_tensor_info(gguf_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()

    start = time.time()
    for count, (gguf_name, hf_name, rope_heads) in enumerate(plan, 1):
        weight = checkpoint.read_f32(hf_name)
        if rope_heads is not None:
            weight = unpermute_rope_rows(weight, rope_heads)
        writer.write_tensor_data(np.ascontiguousarray(weight, dtype=output_dtype(weight.shape, outtype)))
        if count % 20 == 0 or count == len(plan):
            print(f"  {count}/{len(plan)} tensors, {time.time() - start:.0f} s  {gguf_name}",
                  flush=True)
    writer.close()
    os.replace(temp_path, out_path)
    print(f"wrote {out_path} ({os.path.getsize(out_path) / 1e9:.2f} GB)", flush=True)


QUANT_TYPES = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
               "f16": "LLAMA_FTYPE_MOSTLY_F16"}


def quantize(in_path, out_path, kind, threads):
    """Quantize a GGUF with llama.cpp's llama_model_quantize."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[kind])
    params.nthread = threads
    temp_path = out_path + ".tmp"
    start = time.time()
    status = llama_cpp.llama_model_quantize(in_path.encode(), temp_path.encode(),
                                           ctypes.byref(params))
    if status != 0:
        raise SystemExit(f"error: llama_model_quantize {in_path} -> {kind} failed "
                         f"with status {status}")
    os.replace(temp_path, out_path)
    print(f"wrote {out_path} ({os.path.getsize(out_path) / 1e9:.2f} GB) "
          f"in {time.time() - start:.0f} s", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description="Convert a Hugging Face Llama checkpoint folder "
                                            "to GGUF, optionally quantizing it with llama.cpp.")
    p.add_argument("model", help="folder with config.json, tokenizer.model and safetensors")
    p.add_argument("-o", "--output", required=True,
                   help="output .gguf path; quantized files replace its -f16/-f32 suffix or "
                        "add -q8_0 / -q4_0")
    p.add_argument("--outtype", choices=["f16", "f32"], default="f16",
                   help="storage type of 2-D weights (default f16)")
    p.add_argument("--quantize", default="",
                   help="comma-separated llama.cpp types to make from the output: q8_0,q4_0")
    p.add_argument("--threads", type=int, default=2, help="quantization threads (default 2)")
    p.add_argument("--skip-convert", action="store_true",
                   help="reuse an existing --output file and only quantize")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    kinds = [k for k in args.quantize.split(",") if k]
    for kind in kinds:
        if kind not in QUANT_TYPES:
            p.error(f"--quantize {kind} is not one of {', '.join(QUANT_TYPES)}")
    if not args.skip_convert:
        write_gguf(args.model, args.output, args.outtype)
    stem = args.output[:-len(".gguf")] if args.output.endswith(".gguf") else args.output
    for suffix in ("-f16", "-f32"):
        if stem.endswith(suffix):
            stem = stem[:-len(suffix)]
    for kind in kinds:
        quantize(args.output, f"{stem}-{kind}.gguf", kind, args.threads)


if __name__ == "__main__":
    main()
