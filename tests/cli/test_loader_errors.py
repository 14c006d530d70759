"""Malformed checkpoints must make `airavata info` exit 1 with a message
that names the file, the tensor or field, and the fault.

Each case starts from a valid copy of stories260K in a temporary directory
and breaks one thing.
"""
import json
import shutil
import struct

import pytest

STORIES = "models/stories260K"


def read_safetensors(path):
    """Return (header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write_safetensors(path, header, data):
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.fixture
def model(tmp_path, shared_dir):
    """A writable copy of stories260K (config and weights)."""
    src = shared_dir / STORIES
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(src / name, tmp_path / name)
    return tmp_path


def expect_failure(run, model_dir, *fragments):
    proc = run("info", "-m", model_dir)
    message = proc.stderr.decode()
    assert proc.returncode == 1, message
    assert proc.stdout == b""
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def edit_header(model_dir, edit):
    path = model_dir / "model.safetensors"
    header, data = read_safetensors(path)
    data = edit(header, data) or data
    write_safetensors(path, header, data)


def edit_config(model_dir, **changes):
    path = model_dir / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is ...:
            del config[key]
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def test_valid_copy_loads(run, model):
    assert run("info", "-m", model).returncode == 0


def test_truncated_file(run, model):
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5])
    expect_failure(run, model, "model.safetensors: file is 5 bytes, shorter than the 8-byte")


def test_truncated_data(run, model):
    path = model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-4])
    expect_failure(run, model, "tensor 'lm_head.weight'", "end beyond the data section")


def test_header_length_larger_than_file(run, model):
    path = model / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw[8:])
    expect_failure(run, model, f"header length {len(raw)} is larger than the {len(raw) - 8} bytes")


def test_header_not_json(run, model):
    path = model / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"#" + raw[9:])
    expect_failure(run, model, "model.safetensors: header is not valid JSON")


def test_offsets_out_of_range(run, model):
    def edit(header, data):
        header["model.norm.weight"]["data_offsets"] = [len(data) - 128, len(data) + 128]
    edit_header(model, edit)
    expect_failure(run, model, "tensor 'model.norm.weight'", "end beyond the data section")


def test_overlapping_offsets(run, model):
    def edit(header, data):
        begin = header["model.layers.0.input_layernorm.weight"]["data_offsets"][0]
        header["model.norm.weight"]["data_offsets"] = [begin + 128, begin + 384]
    edit_header(model, edit)
    expect_failure(run, model, "'model.norm.weight'", "overlap")


def test_wrong_dtype_string(run, model):
    edit_header(model, lambda header, data: header["lm_head.weight"].update(dtype="float32"))
    expect_failure(run, model, "tensor 'lm_head.weight': unknown dtype 'float32'")


def test_shape_offset_size_mismatch(run, model):
    edit_header(model, lambda header, data: header["model.norm.weight"].update(shape=[32]))
    expect_failure(run, model, "tensor 'model.norm.weight': data_offsets",
                   "hold 256 bytes but shape [32] of F32 needs 128")


def test_missing_shard(run, model):
    header, data = read_safetensors(model / "model.safetensors")
    (model / "model.safetensors").rename(model / "model-00001-of-00002.safetensors")
    weight_map = {name: "model-00001-of-00002.safetensors" for name in header
                  if name != "__metadata__"}
    weight_map["lm_head.weight"] = "model-00002-of-00002.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    expect_failure(run, model, "model.safetensors.index.json names shard "
                   "'model-00002-of-00002.safetensors', which is missing")


def test_index_tensor_absent_from_shard(run, model):
    header, data = read_safetensors(model / "model.safetensors")
    (model / "model.safetensors").rename(model / "model-00001-of-00001.safetensors")
    weight_map = {name: "model-00001-of-00001.safetensors" for name in header
                  if name != "__metadata__"}
    weight_map["model.extra.weight"] = "model-00001-of-00001.safetensors"
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    expect_failure(run, model, "maps tensor 'model.extra.weight' to shard "
                   "'model-00001-of-00001.safetensors', but that shard has no tensor")


def test_index_shard_outside_directory(run, model):
    (model / "model.safetensors").rename(model / "weights.safetensors")
    index = {"weight_map": {"lm_head.weight": "../weights.safetensors"}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    expect_failure(run, model, "shard name '../weights.safetensors'", "not a plain file name")


def test_config_missing_field(run, model):
    edit_config(model, intermediate_size=...)
    expect_failure(run, model, "config.json: missing required field \"intermediate_size\"")


def test_config_zero_heads(run, model):
    edit_config(model, num_attention_heads=0)
    expect_failure(run, model, "config.json: \"num_attention_heads\" is 0")


def test_config_hidden_not_divisible_by_heads(run, model):
    edit_config(model, num_attention_heads=6, num_key_value_heads=3, head_dim=...)
    expect_failure(run, model, "\"hidden_size\" 64 is not divisible by \"num_attention_heads\" 6",
                   "set \"head_dim\"")


def test_config_kv_heads_not_dividing_heads(run, model):
    edit_config(model, num_key_value_heads=3)
    expect_failure(run, model, "\"num_attention_heads\" 8 is not a multiple of "
                   "\"num_key_value_heads\" 3")


def test_config_unsupported_architecture(run, model):
    edit_config(model, architectures=["GPTNeoXForCausalLM"])
    expect_failure(run, model, "config.json: architecture GPTNeoXForCausalLM is not supported")


def test_config_rope_scaling(run, model):
    edit_config(model, rope_scaling={"type": "dynamic", "factor": 2.0})
    expect_failure(run, model, "\"rope_scaling\" is {\"type\":\"dynamic\"", "must be null")


def test_missing_config(run, model):
    (model / "config.json").unlink()
    expect_failure(run, model, "config.json: missing")


def test_no_weights(run, model):
    (model / "model.safetensors").unlink()
    expect_failure(run, model, "no model.safetensors or model.safetensors.index.json")
