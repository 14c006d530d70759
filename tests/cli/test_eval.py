"""End-to-end tests of `airavata eval` on the tiny stories260K model.

A model compared with itself must give KL ~ 0, 100% top-1 agreement and a
perplexity ratio of 1; a copy with perturbed weights must give KL > 0.
Saved base logits must reproduce the numbers of a run with the base model,
and mismatched models or too-short texts must fail with a clear message.
"""
import json
import shutil

import pytest

WINDOW = ["--ctx", "64", "--stride", "32"]


@pytest.fixture(scope="module")
def stories(shared_dir):
    return shared_dir / "models" / "stories260K"


@pytest.fixture(scope="module")
def perturbed(stories, tmp_path_factory):
    """Copy of stories260K with Gaussian noise added to every layer matrix."""
    np = pytest.importorskip("numpy")
    st = pytest.importorskip("safetensors.numpy")
    out = tmp_path_factory.mktemp("perturbed")
    for name in ("config.json", "generation_config.json", "tokenizer.model"):
        shutil.copy(stories / name, out / name)
    tensors = st.load_file(str(stories / "model.safetensors"))
    rng = np.random.default_rng(0)
    for name, value in tensors.items():
        if name.endswith("_proj.weight"):
            noise = rng.normal(0, 0.05 * float(value.std()), value.shape)
            tensors[name] = (value + noise).astype(value.dtype)
    st.save_file(tensors, str(out / "model.safetensors"))
    return out


def eval_json(run, *args):
    proc = run("eval", *args, "--json", check=True)
    return json.loads(proc.stdout)


def test_eval_self_kl_zero(run, stories, fixtures_dir):
    text = fixtures_dir / "eval" / "story_en.txt"
    report = eval_json(run, "-m", stories, "--base", stories, "--text", text, *WINDOW,
                       "--chat-tokens", "8")
    assert report["tokens"] > 64
    assert report["scored_tokens"] == report["tokens"] - 1
    assert report["kl_mean"] < 1e-4
    assert report["kl_max"] < 1e-3
    assert report["kl_mean"] >= 0
    assert report["top1_agreement"] == 1.0
    assert report["ppl_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert 1.0 < report["ppl_base"] < 512
    assert len(report["chat"]) == 4
    assert {item["language"] for item in report["chat"]} == {"en", "hi"}
    assert all(item["first_difference"] == -1 for item in report["chat"])


def test_eval_perturbed_kl_positive(run, stories, perturbed, fixtures_dir):
    text = fixtures_dir / "eval" / "story_en.txt"
    same = eval_json(run, "-m", stories, "--base", stories, "--text", text, *WINDOW,
                     "--chat-tokens", "0")
    report = eval_json(run, "-m", perturbed, "--base", stories, "--text", text, *WINDOW,
                       "--chat-tokens", "0")
    assert report["kl_mean"] > 1e-3
    assert report["kl_mean"] > 100 * same["kl_mean"]
    assert report["kl_p50"] <= report["kl_p90"] <= report["kl_p99"] <= report["kl_max"]
    assert report["ppl_base"] == pytest.approx(same["ppl_base"], rel=1e-9)
    assert report["ppl_quant"] != pytest.approx(report["ppl_base"], rel=1e-6)
    assert report["chat"] is None


def test_eval_hindi_text(run, stories, perturbed, fixtures_dir):
    text = fixtures_dir / "eval" / "story_hi.txt"
    report = eval_json(run, "-m", perturbed, "--base", stories, "--text", text, *WINDOW,
                       "--chat-tokens", "0")
    assert report["scored_tokens"] == report["tokens"] - 1
    assert report["kl_mean"] > 0
    assert 0 <= report["top1_agreement"] <= 1


def test_saved_base_logits_reused(run, stories, perturbed, fixtures_dir, tmp_path):
    text = fixtures_dir / "eval" / "story_en.txt"
    saved = tmp_path / "base.safetensors"
    direct = eval_json(run, "-m", perturbed, "--base", stories, "--text", text, *WINDOW,
                       "--chat-tokens", "0", "--save-base-logits", saved)
    assert saved.exists()
    reused = eval_json(run, "-m", perturbed, "--base-logits", saved, "--text", text, *WINDOW)
    for key in ("ppl_base", "ppl_quant", "kl_mean", "kl_p99", "kl_max", "top1_agreement"):
        assert reused[key] == pytest.approx(direct[key], rel=1e-9, abs=1e-12), key
    assert reused["base"] is None


def test_saved_logits_store_f16(stories, fixtures_dir, run, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    text = fixtures_dir / "eval" / "story_en.txt"
    saved = tmp_path / "base.safetensors"
    report = eval_json(run, "-m", stories, "--base", stories, "--text", text, *WINDOW,
                       "--chat-tokens", "0", "--save-base-logits", saved)
    tensors = st.load_file(str(saved))
    assert tensors["logprobs"].dtype.name == "float16"
    assert tensors["logprobs"].shape == (report["scored_tokens"], 512)
    assert tensors["tokens"].shape == (report["tokens"],)
    assert tensors["nll"].shape == (report["scored_tokens"],)


def test_saved_logits_other_text_rejected(run, stories, fixtures_dir, tmp_path):
    saved = tmp_path / "base.safetensors"
    run("eval", "-m", stories, "--base", stories, "--text", fixtures_dir / "eval" /
        "story_en.txt", *WINDOW, "--chat-tokens", "0", "--save-base-logits", saved, check=True)
    proc = run("eval", "-m", stories, "--base-logits", saved, "--text",
               fixtures_dir / "eval" / "story_hi.txt", *WINDOW)
    assert proc.returncode == 1
    assert b"saved for a text of" in proc.stderr


def test_saved_logits_other_stride_rejected(run, stories, fixtures_dir, tmp_path):
    saved = tmp_path / "base.safetensors"
    text = fixtures_dir / "eval" / "story_en.txt"
    run("eval", "-m", stories, "--base", stories, "--text", text, *WINDOW, "--chat-tokens",
        "0", "--save-base-logits", saved, check=True)
    proc = run("eval", "-m", stories, "--base-logits", saved, "--text", text, "--ctx", "64",
               "--stride", "16")
    assert proc.returncode == 1
    assert b"stride 32 but this run uses 16" in proc.stderr


def test_mismatched_vocab_error(run, stories, fixtures_dir):
    other = fixtures_dir / "hf" / "mha_tied_f32"
    proc = run("eval", "-m", other, "--base", stories, "--text",
               fixtures_dir / "eval" / "story_en.txt", *WINDOW)
    assert proc.returncode == 1
    message = proc.stderr.decode()
    assert "vocab_size 419" in message
    assert "has 512" in message


def test_mismatched_architecture_error(run, fixtures_dir):
    llama = fixtures_dir / "hf" / "mha_tied_f32"
    mistral = fixtures_dir / "hf" / "mistral_gqa_f32"
    proc = run("eval", "-m", mistral, "--base", llama, "--text",
               fixtures_dir / "eval" / "story_en.txt", "--ctx", "32", "--stride", "16")
    assert proc.returncode == 1
    message = proc.stderr.decode()
    assert "MistralForCausalLM" in message
    assert "LlamaForCausalLM" in message


def test_too_short_text_error(run, stories, fixtures_dir):
    proc = run("eval", "-m", stories, "--base", stories, "--text",
               fixtures_dir / "eval" / "short.txt", "--ctx", "64")
    assert proc.returncode == 1
    assert b"at least 64 are needed" in proc.stderr


def test_empty_text_error(run, stories, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    proc = run("eval", "-m", stories, "--base", stories, "--text", empty, "--ctx", "64")
    assert proc.returncode == 1
    assert b"at least 64 are needed" in proc.stderr


def test_missing_model_error(run, stories, fixtures_dir, tmp_path):
    proc = run("eval", "-m", tmp_path / "absent", "--base", stories, "--text",
               fixtures_dir / "eval" / "story_en.txt")
    assert proc.returncode == 1
    assert b"absent" in proc.stderr


def test_eval_chart_svg(run, stories, perturbed, fixtures_dir, tmp_path):
    chart = tmp_path / "eval.svg"
    run("eval", "-m", perturbed, "--base", stories, "--text",
        fixtures_dir / "eval" / "story_en.txt", *WINDOW, "--chat-tokens", "0", "--chart",
        chart, check=True)
    svg = chart.read_text()
    assert svg.startswith("<?xml")
    assert svg.count("<circle") == 2
    assert "KL" in svg


def test_eval_usage_errors(run, stories):
    assert run("eval", "-m", stories).returncode == 2
    assert run("eval", "-m", stories, "--text", "x", "--base", stories, "--base-logits",
               "y").returncode == 2
    assert run("eval", "-m", stories, "--text", "x", "--base", stories, "--ctx", "32",
               "--stride", "32").returncode == 2
