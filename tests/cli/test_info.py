"""Tests of `airavata info` and of safetensors compatibility with the Python
`safetensors` package.

Expected values come from the checkpoint's own config.json and from the
safetensors headers read here in Python, not from the program.
"""
import json
import pathlib
import shutil
import struct
import subprocess

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

STORIES = "models/stories260K"


def read_header(path):
    """Return the JSON header of a safetensors file as a dict."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(length))


def info_json(run, model_dir):
    proc = run("info", "-m", model_dir, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


@pytest.fixture
def stories_dir(shared_dir):
    return shared_dir / STORIES


@pytest.fixture
def sharded_dir(tmp_path, stories_dir):
    """stories260K split by the Python safetensors package into two shards
    and an index, with the same config.json."""
    tensors = load_file(str(stories_dir / "model.safetensors"))
    names = list(read_header(stories_dir / "model.safetensors"))
    names.remove("__metadata__")
    shards = {
        "model-00001-of-00002.safetensors": names[:20],
        "model-00002-of-00002.safetensors": names[20:],
    }
    weight_map = {}
    for shard, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(tmp_path / shard),
                  metadata={"format": "pt"})
        weight_map.update({n: shard for n in shard_names})
    index = {"metadata": {"total_size": 1171200}, "weight_map": weight_map}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(stories_dir / "config.json", tmp_path / "config.json")
    return tmp_path


def test_info_text_stories260k(run, stories_dir):
    proc = run("info", "-m", stories_dir)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = dict(line.split(":", 1) for line in proc.stdout.decode().splitlines()
                 if ":" in line and not line.startswith(" "))
    fields = {k.strip(): v.strip() for k, v in lines.items()}
    config = json.loads((stories_dir / "config.json").read_text())
    assert fields["architecture"] == config["architectures"][0]
    assert fields["layers"] == str(config["num_hidden_layers"])
    assert fields["heads"] == str(config["num_attention_heads"])
    assert fields["kv heads"] == str(config["num_key_value_heads"])
    assert fields["head dim"] == str(config["head_dim"])
    assert fields["hidden size"] == str(config["hidden_size"])
    assert fields["intermediate size"] == str(config["intermediate_size"])
    assert fields["vocab size"] == str(config["vocab_size"])
    assert fields["context length"] == str(config["max_position_embeddings"])
    assert fields["tied embeddings"] == "yes"
    assert fields["tensors"] == "48"
    assert fields["size"].startswith("1171200 bytes")
    assert "model.safetensors  48 tensors, 1171200 bytes" in proc.stdout.decode()


def test_info_json_stories260k(run, stories_dir):
    info = info_json(run, stories_dir)
    config = json.loads((stories_dir / "config.json").read_text())
    for key in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
                "hidden_size", "intermediate_size", "vocab_size", "max_position_embeddings",
                "tie_word_embeddings", "bos_token_id", "eos_token_id", "rope_theta",
                "rms_norm_eps"):
        assert info["config"][key] == config[key], key
    assert info["config"]["num_hidden_layers"] == 5
    assert info["config"]["num_attention_heads"] == 8
    assert info["config"]["num_key_value_heads"] == 4
    assert info["config"]["vocab_size"] == 512

    header = read_header(stories_dir / "model.safetensors")
    del header["__metadata__"]
    assert info["tensor_count"] == len(header)
    assert info["parameters"] == sum(int(np.prod(t["shape"])) for t in header.values())
    data_bytes = sum(t["data_offsets"][1] - t["data_offsets"][0] for t in header.values())
    assert info["bytes"] == data_bytes
    assert info["dtypes"] == {"F32": {"tensors": len(header), "bytes": data_bytes}}
    assert info["gib"] == pytest.approx(data_bytes / 2**30)
    assert info["files"] == [{"name": "model.safetensors", "tensors": 48, "bytes": data_bytes}]


def test_info_sharded_checkpoint(run, sharded_dir, stories_dir):
    info = info_json(run, sharded_dir)
    single = info_json(run, stories_dir)
    assert info["tensor_count"] == 48
    assert info["parameters"] == single["parameters"]
    assert info["bytes"] == single["bytes"]
    assert info["config"] == single["config"]
    shard_bytes = [sum(t["data_offsets"][1] - t["data_offsets"][0]
                       for name, t in read_header(sharded_dir / f["name"]).items()
                       if name != "__metadata__")
                   for f in info["files"]]
    assert [f["name"] for f in info["files"]] == ["model-00001-of-00002.safetensors",
                                                 "model-00002-of-00002.safetensors"]
    assert [f["tensors"] for f in info["files"]] == [20, 28]
    assert [f["bytes"] for f in info["files"]] == shard_bytes

    text = run("info", "-m", sharded_dir).stdout.decode()
    assert "files:             2" in text
    assert "model-00002-of-00002.safetensors  28 tensors" in text


def test_info_help_and_usage(run):
    proc = run("info", "--help")
    assert proc.returncode == 0
    assert b"--json" in proc.stdout
    assert b"-m, --model DIR" in proc.stdout
    proc = run("info")
    assert proc.returncode == 2
    assert b"missing -m DIR" in proc.stderr
    proc = run("info", "-m")
    assert proc.returncode == 2
    assert b"-m needs a directory argument" in proc.stderr
    proc = run("info", "--bogus")
    assert proc.returncode == 2
    assert b"unknown option '--bogus'" in proc.stderr


def test_writer_output_loads_in_python(airavata_bin, tmp_path):
    """A file from av_st_writer (written by test_safetensors --write-sample)
    loads in the Python safetensors package with the written values."""
    helper = pathlib.Path(airavata_bin).parent / "test_safetensors"
    if not helper.exists():
        pytest.fail(f"{helper} not found: build the unit tests next to the airavata binary")
    path = tmp_path / "sample.safetensors"
    subprocess.run([str(helper), "--write-sample", str(path)], check=True, timeout=60)
    assert not (tmp_path / "sample.safetensors.tmp").exists()

    # safe_open validates the whole header; numpy cannot hold bfloat16, so
    # the BF16 tensor is compared through its raw bits below.
    with safe_open(str(path), framework="np") as f:
        assert sorted(f.keys()) == ["a", "b.bf16", "c.f16", "d.i32", "e.u8"]
        assert f.metadata() == {"format": "pt", "note": "written by test_safetensors"}
        tensors = {name: f.get_tensor(name) for name in f.keys() if name != "b.bf16"}
    values = np.arange(15, dtype=np.float32) * 0.5 - 3.0
    assert tensors["a"].dtype == np.float32
    np.testing.assert_array_equal(tensors["a"], values.reshape(3, 5))
    assert tensors["c.f16"].dtype == np.float16
    np.testing.assert_array_equal(tensors["c.f16"], values[:6].astype(np.float16).reshape(2, 1, 3))
    np.testing.assert_array_equal(tensors["d.i32"], np.array([-1, 0, 1, 2147483647], np.int32))
    np.testing.assert_array_equal(tensors["e.u8"], np.array([0, 128, 255], np.uint8))

    header = read_header(path)
    assert header["b.bf16"]["dtype"] == "BF16"
    assert header["b.bf16"]["shape"] == [7]
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    assert (8 + length) % 8 == 0
    begin, end = header["b.bf16"]["data_offsets"]
    bits = np.frombuffer(raw[8 + length + begin:8 + length + end], dtype=np.uint16)
    floats = (bits.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(floats, values[:7])
