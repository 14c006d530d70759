"""`airavata generate` and `airavata info` on bitsandbytes NF4 and INT8 models.

The models come from `airavata quantize` applied to the real stories260K
model (dim 64, intermediate size 172: the MLP's down projection has 172
columns, which is not a multiple of 32, so the NF4 fallback and the padded
INT8 rows are exercised as well as the packed layouts).
"""
import json
import re
import shutil

import pytest


@pytest.fixture(scope="module")
def stories(shared_dir):
    return shared_dir / "models" / "stories260K"


@pytest.fixture(scope="module")
def quantized(airavata_bin, stories, tmp_path_factory):
    import subprocess

    out = {}
    root = tmp_path_factory.mktemp("quantized")
    for qtype in ("nf4", "int8"):
        target = root / qtype
        proc = subprocess.run([str(airavata_bin), "quantize", "-m", str(stories), "-o",
                               str(target), "--type", qtype, "--quiet"],
                              capture_output=True, timeout=300)
        assert proc.returncode == 0, proc.stderr.decode()
        out[qtype] = target
    return out


@pytest.mark.parametrize("qtype", ["nf4", "int8"])
def test_generate_greedy_text(run, quantized, qtype):
    proc = run("generate", "-m", quantized[qtype], "-p", "Once upon a time", "--temp", "0",
               "-n", 24, check=True)
    text = proc.stdout.decode()
    # The tiny story model writes English words, not a repeated token.
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 8, text
    assert len(set(words)) >= 5, text
    err = proc.stderr.decode()
    assert re.search(r"repacked \d+ %s matrices \([0-9.]+ GiB\) in [0-9.]+ s" % qtype.upper(),
                     err), err


def test_nf4_and_int8_follow_float_model(run, stories, quantized):
    """Greedy text of the quantized models starts like the float model's."""
    args = ("-p", "Lily wanted to", "--temp", "0", "-n", 6)
    float_text = run("generate", "-m", stories, *args, check=True).stdout.decode()
    int8_text = run("generate", "-m", quantized["int8"], *args, check=True).stdout.decode()
    # LLM.int8 keeps 8 bits per weight, so the first words agree.
    assert int8_text.split()[:4] == float_text.split()[:4], (int8_text, float_text)


@pytest.mark.parametrize("qtype", ["nf4", "int8"])
def test_info_shows_quantization(run, quantized, qtype):
    text = run("info", "-m", quantized[qtype], check=True).stdout.decode()
    assert "quantization:" in text
    assert re.search(r"quant type\s+%s" % qtype, text), text
    assert "bits per weight" in text
    assert "size in memory" in text
    assert "16-bit modules" in text
    if qtype == "nf4":
        assert re.search(r"block size\s+64", text), text
        assert re.search(r"double quant\s+yes", text), text
    info = json.loads(run("info", "-m", quantized[qtype], "--json", check=True).stdout)
    q = info["quantization"]
    assert q["quant_type"] == qtype
    assert q["quantized_matrices"] == 5 * 7  # stories260K has 5 layers
    assert q["bits_per_weight_memory"] == pytest.approx(_bits_in_memory(qtype), rel=1e-9), q


# [rows, cols] of the Linear weights of one stories260K layer.
STORIES_LINEARS = [(64, 64), (32, 64), (32, 64), (64, 64), (172, 64), (172, 64), (64, 172)]


def _bits_in_memory(qtype):
    """Bits per weight of the bound matrices: NF4 keeps 4 bits plus one
    float per block of 64, except that a column count that is not a multiple
    of 32 (down_proj's 172) is dequantized to 32-bit floats; INT8 keeps rows
    padded to a multiple of 32 plus one float per row."""
    bits = weights = 0
    for rows, cols in STORIES_LINEARS:
        weights += rows * cols
        if qtype == "nf4":
            bits += rows * cols * (4 + 32 / 64) if cols % 32 == 0 else rows * cols * 32
        else:
            bits += rows * ((cols + 31) // 32 * 32) * 8 + rows * 32
    return bits / weights


def test_info_float_model_has_no_quantization(run, stories):
    info = json.loads(run("info", "-m", stories, "--json", check=True).stdout)
    assert info["quantization"] is None
    assert "quantization:" not in run("info", "-m", stories, check=True).stdout.decode()


def _drop_tensor(src_dir, dst_dir, tensor):
    """Copies a model directory, rewriting model.safetensors without `tensor`."""
    import struct

    shutil.copytree(src_dir, dst_dir)
    path = dst_dir / "model.safetensors"
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    out_header, chunks, offset = {}, [], 0
    for name, entry in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        if name == tensor:
            continue
        begin, end = entry["data_offsets"]
        chunks.append(data[begin:end])
        out_header[name] = dict(entry, data_offsets=[offset, offset + end - begin])
        offset += end - begin
    if meta is not None:
        out_header["__metadata__"] = meta
    text = json.dumps(out_header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(chunks))


@pytest.mark.parametrize("qtype,tensor", [
    ("nf4", "model.layers.1.mlp.up_proj.weight.absmax"),
    ("int8", "model.layers.2.self_attn.q_proj.SCB"),
])
def test_missing_companion_tensor_fails(run, quantized, tmp_path, qtype, tensor):
    broken = tmp_path / "broken"
    _drop_tensor(quantized[qtype], broken, tensor)
    for command in (("generate", "-m", broken, "-p", "Hi", "-n", 2), ("info", "-m", broken)):
        proc = run(*command)
        assert proc.returncode != 0
        err = proc.stderr.decode()
        assert tensor in err, err
        assert "missing" in err, err
        assert "Traceback" not in err and "Sanitizer" not in err, err


def _edit_config(src_dir, dst_dir, edit):
    shutil.copytree(src_dir, dst_dir)
    config = json.loads((dst_dir / "config.json").read_text())
    edit(config)
    (dst_dir / "config.json").write_text(json.dumps(config))


def test_nf4_without_quantization_config_fails(run, quantized, tmp_path):
    broken = tmp_path / "broken"
    _edit_config(quantized["nf4"], broken, lambda c: c.pop("quantization_config"))
    proc = run("generate", "-m", broken, "-p", "Hi", "-n", 2)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "no quantization_config" in err, err
    assert "4-bit" in err, err
    info = run("info", "-m", broken)
    assert info.returncode == 0
    assert b"bitsandbytes quantization state" in info.stderr
    assert b"no quantization_config" in info.stderr


@pytest.mark.parametrize("weights,claimed,message", [
    ("nf4", "int8", "declares 8-bit"),
    ("int8", "nf4", "declares 4-bit NF4"),
])
def test_config_claiming_other_type_fails(run, quantized, tmp_path, weights, claimed, message):
    broken = tmp_path / "broken"
    claimed_config = json.loads((quantized[claimed] / "config.json").read_text())
    _edit_config(quantized[weights], broken,
                 lambda c: c.update(quantization_config=claimed_config["quantization_config"]))
    proc = run("generate", "-m", broken, "-p", "Hi", "-n", 2)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert message in err, err
    assert "disagree" in err, err


def test_int8_without_quantization_config_warns_in_info(run, quantized, tmp_path):
    broken = tmp_path / "broken"
    _edit_config(quantized["int8"], broken, lambda c: c.pop("quantization_config"))
    info = run("info", "-m", broken)
    assert info.returncode == 0
    assert b"SCB is bitsandbytes quantization state" in info.stderr
