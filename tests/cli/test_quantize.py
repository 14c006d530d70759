"""Tests of `airavata quantize`.

The reference is tests/fixtures/bnb/stories260K_quantized.json: the dtype,
shape and SHA-256 of every tensor that transformers + bitsandbytes saved for
stories260K (tools/make_bnb_extra_fixtures.py). The output of `airavata
quantize` must match it tensor for tensor and byte for byte, load with the
`safetensors` package when it is installed, and appear atomically.
"""
import hashlib
import json
import os
import struct

import pytest


def read_safetensors(path):
    """Return {name: (dtype, shape, bytes)} of a safetensors file."""
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    header.pop("__metadata__", None)
    base = 8 + header_len
    return {name: (entry["dtype"], entry["shape"],
                   data[base + entry["data_offsets"][0]:base + entry["data_offsets"][1]])
            for name, entry in header.items()}


@pytest.fixture(scope="module")
def reference(fixtures_dir):
    return json.loads((fixtures_dir / "bnb" / "stories260K_quantized.json").read_text())


@pytest.fixture(scope="module")
def stories(shared_dir):
    return shared_dir / "models" / "stories260K"


@pytest.mark.parametrize("variant", ["nf4", "nf4_no_dq", "int8"])
def test_matches_transformers_bytes(run, stories, tmp_path, reference, variant):
    want = reference["variants"][variant]
    out = tmp_path / "out"
    run("quantize", "-m", stories, "-o", out, *want["args"], "-q", check=True)
    tensors = read_safetensors(out / "model.safetensors")
    assert sorted(tensors) == sorted(want["tensors"])
    for name, (dtype, shape, raw) in tensors.items():
        expected = want["tensors"][name]
        assert (dtype, shape) == (expected["dtype"], expected["shape"]), name
        assert hashlib.sha256(raw).hexdigest() == expected["sha256"], name
    config = json.loads((out / "config.json").read_text())
    assert config["quantization_config"] == want["quantization_config"]
    for name in ("tokenizer.model", "generation_config.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        assert (out / name).read_bytes() == (stories / name).read_bytes(), name


def test_output_loads_with_safetensors_package(run, stories, tmp_path):
    safetensors = pytest.importorskip("safetensors")
    out = tmp_path / "q4"
    run("quantize", "-m", stories, "-o", out, "--type", "nf4", "-q", check=True)
    with safetensors.safe_open(str(out / "model.safetensors"), "np") as f:
        names = list(f.keys())
        state = f.get_tensor("model.layers.0.mlp.up_proj.weight.quant_state.bitsandbytes__nf4")
    assert "model.layers.0.mlp.up_proj.weight.nested_absmax" in names
    quant_state = json.loads(bytes(state.tolist()).decode())
    assert quant_state["shape"] == [172, 64]
    assert quant_state["blocksize"] == 64


def test_bf16_conversion(run, stories, tmp_path):
    out = tmp_path / "bf16"
    run("quantize", "-m", stories, "-o", out, "--type", "bf16", "-q", check=True)
    source = read_safetensors(stories / "model.safetensors")
    converted = read_safetensors(out / "model.safetensors")
    # stories260K ties lm_head to the embeddings; like transformers, the
    # output does not store the tied copy.
    assert sorted(converted) == sorted(set(source) - {"lm_head.weight"})
    for name, (dtype, shape, raw) in converted.items():
        assert dtype == "BF16" and shape == source[name][1], name
        floats = struct.unpack(f"<{len(source[name][2]) // 4}f", source[name][2])
        # Round to nearest even on the top 16 bits of each float32.
        rounded = []
        for value in floats:
            (bits,) = struct.unpack("<I", struct.pack("<f", value))
            bits += 0x7FFF + ((bits >> 16) & 1)
            rounded.append(bits >> 16)
        assert raw == struct.pack(f"<{len(rounded)}H", *rounded), name
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16"
    assert "quantization_config" not in config


def test_output_runs_info(run, stories, tmp_path):
    out = tmp_path / "q8"
    run("quantize", "-m", stories, "-o", out, "--type", "int8", "-q", check=True)
    proc = run("info", "-m", out)
    assert proc.returncode == 0, proc.stderr.decode()


def test_sharded_output(run, stories, tmp_path):
    out = tmp_path / "sharded"
    run("quantize", "-m", stories, "-o", out, "--type", "nf4", "--shard-size", "0.0002", "-q",
        check=True)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert not (out / "model.safetensors").exists()
    seen = {}
    for shard in shards:
        for name in read_safetensors(out / shard):
            seen[name] = shard
    assert seen == index["weight_map"]


def test_existing_output_needs_force(run, stories, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "config.json").write_text("{}")
    proc = run("quantize", "-m", stories, "-o", out, "--type", "nf4")
    assert proc.returncode == 1
    assert b"--force" in proc.stderr
    assert os.listdir(out) == ["config.json"]
    assert (out / "config.json").read_text() == "{}"
    assert sorted(os.listdir(tmp_path)) == ["existing"]

    run("quantize", "-m", stories, "-o", out, "--type", "nf4", "--force", "-q", check=True)
    assert "quantization_config" in json.loads((out / "config.json").read_text())
    assert sorted(os.listdir(tmp_path)) == ["existing"]


def test_force_rejects_non_model_directory(run, stories, tmp_path):
    out = tmp_path / "documents"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    proc = run("quantize", "-m", stories, "-o", out, "--type", "int8", "--force")
    assert proc.returncode == 1
    assert (out / "notes.txt").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory_leaves_nothing(run, stories, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        proc = run("quantize", "-m", stories, "-o", parent / "out", "--type", "nf4")
        assert proc.returncode == 1
        assert os.listdir(parent) == []
    finally:
        parent.chmod(0o700)


def test_failure_removes_temporary_directory(run, stories, tmp_path):
    # An f16 target rejects values beyond +-65504; a bf16 copy of stories260K
    # with one huge value makes the conversion fail after files were written.
    model = tmp_path / "model"
    model.mkdir()
    for name in os.listdir(stories):
        (model / name).write_bytes((stories / name).read_bytes())
    tensors = read_safetensors(model / "model.safetensors")
    dtype, shape, raw = tensors["model.norm.weight"]
    data = (model / "model.safetensors").read_bytes()
    offset = data.index(raw)
    data = data[:offset] + struct.pack("<f", 1e6) + data[offset + 4:]
    (model / "model.safetensors").write_bytes(data)

    proc = run("quantize", "-m", model, "-o", tmp_path / "out", "--type", "f16")
    assert proc.returncode == 1
    assert b"float16 range" in proc.stderr
    assert b"removed the partial output" in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["model"]


@pytest.mark.parametrize("args, message", [
    (["--type", "q3"], b"unknown --type"),
    (["--type", "nf4", "--block-size", "100"], b"--block-size"),
    (["--type", "nf4", "--block-size", "16"], b"--block-size"),
    (["--type", "nf4", "--shard-size", "-1"], b"--shard-size"),
    (["--type", "nf4", "--bogus"], b"unknown option"),
    (["--type", "int8", "--block-size", "128"], b"--block-size applies to --type nf4 only"),
    (["--type", "bf16", "--no-double-quant"], b"--no-double-quant applies to --type nf4"),
])
def test_invalid_arguments(run, stories, tmp_path, args, message):
    proc = run("quantize", "-m", stories, "-o", tmp_path / "out", *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert os.listdir(tmp_path) == []


def test_missing_type_is_usage_error(run, stories, tmp_path):
    proc = run("quantize", "-m", stories, "-o", tmp_path / "out")
    assert proc.returncode == 2


def test_missing_model(run, tmp_path):
    proc = run("quantize", "-m", tmp_path / "nope", "-o", tmp_path / "out", "--type", "nf4")
    assert proc.returncode == 1
    assert b"nope" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_quantized_input_rejected(run, fixtures_dir, tmp_path):
    proc = run("quantize", "-m", fixtures_dir / "bnb" / "tiny_nf4", "-o", tmp_path / "out",
               "--type", "int8")
    assert proc.returncode == 1
    assert b"already quantized" in proc.stderr


def test_help(run):
    proc = run("quantize", "--help")
    assert proc.returncode == 0
    assert b"--block-size" in proc.stdout and b"--no-double-quant" in proc.stdout


def test_missing_output_parent(run, stories, tmp_path):
    proc = run("quantize", "-m", stories, "-o", tmp_path / "nodir" / "out", "--type", "nf4")
    assert proc.returncode == 1
    assert b"does not exist; create it first" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_quantize_head_untied(run, fixtures_dir, tmp_path):
    out = tmp_path / "out"
    proc = run("quantize", "-m", fixtures_dir / "hf" / "gqa_untied_f32", "-o", out,
               "--type", "nf4", "--quantize-head", "--quiet")
    assert proc.returncode == 0, proc.stderr
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quant["llm_int8_skip_modules"] == []
    info = run("info", "-m", out)
    assert info.returncode == 0
    assert b"16-bit modules   none" in info.stdout
    # The quantized head has 419 rows, so the last row tile is padded.
    gen = run("generate", "-m", out, "-p", "Hello", "-n", 3, "--temp", 0)
    assert gen.returncode == 0, gen.stderr


def test_quantize_head_tied_has_no_effect(run, stories, tmp_path):
    out = tmp_path / "out"
    proc = run("quantize", "-m", stories, "-o", out, "--type", "nf4", "--quantize-head",
               "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert b"--quantize-head has no effect" in proc.stderr
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert quant["llm_int8_skip_modules"] is None
