"""Generate the Hugging Face reference fixtures under tests/fixtures/hf.

Each fixture is a tiny random Llama-family checkpoint written by transformers'
save_pretrained, a SentencePiece tokenizer trained here on a short Hindi and
English text, and the outputs of transformers' own forward pass on it. The C
loader, tokenizer and forward pass are tested against these files, so they
must be exactly what transformers writes and must not change between runs:
every random draw comes from a seeded torch.Generator or a fixed seed.

Usage (from the repository root):
    tools/setup-ref-venv.sh && .venv-ref/bin/python tools/make_hf_fixtures.py
    .venv-ref/bin/python tools/make_hf_fixtures.py --check   # verify only
"""
import argparse
import io
import json
import pathlib
import shutil
import sys

import numpy as np
import safetensors
import safetensors.torch
import sentencepiece as spm
import torch
import transformers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM,
                          MistralConfig, MistralForCausalLM)

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tests" / "fixtures" / "hf"

# Tokenizer training corpus: short parallel Hindi and English sentences with
# digits, punctuation, quotes and a double space, written for these fixtures.
TRAINING_TEXT = """\
The old library in our town opens at 9 in the morning and closes at 6 in the evening.
Children come after school to read stories, and their grandparents come to read the newspaper.
हमारे शहर का पुराना पुस्तकालय सुबह 9 बजे खुलता है और शाम 6 बजे बंद होता है।
बच्चे स्कूल के बाद कहानियाँ पढ़ने आते हैं, और उनके दादा-दादी अख़बार पढ़ने आते हैं।
Last year the library bought 250 new books, most of them in Hindi and English.
पिछले साल पुस्तकालय ने 250 नई किताबें खरीदीं, जिनमें ज़्यादातर हिंदी और अंग्रेज़ी में थीं।
A small model reads one token at a time and guesses the next one.
एक छोटा मॉडल एक बार में एक टोकन पढ़ता है और अगले टोकन का अनुमान लगाता है।
The river is wide after the rain; the boats wait on the bank until the water is calm.
बारिश के बाद नदी चौड़ी हो जाती है; पानी शांत होने तक नावें किनारे पर इंतज़ार करती हैं।
My friend said: "Learning a new language is like walking into a new city."
मेरे दोस्त ने कहा: "नई भाषा सीखना किसी नए शहर में घूमने जैसा है।"
Please write the date as 04-12-2024 and the price as Rs. 1,499 only.
कृपया तारीख़ 04-12-2024 लिखें और कीमत केवल 1,499 रुपये लिखें।
Tea or coffee?  चाय या कॉफ़ी?  Both are fine, धन्यवाद!
"""

# 419 pieces: 3 special + 256 byte-fallback + 100 characters + 60 merges.
# An odd vocabulary size exercises the edge handling of the output projection.
TOKENIZER_OPTIONS = dict(
    model_type="bpe",
    vocab_size=419,
    byte_fallback=True,
    normalization_rule_name="identity",
    add_dummy_prefix=True,
    remove_extra_whitespaces=False,
    split_digits=True,
    character_coverage=1.0,
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    num_threads=1,
    minloglevel=2,
)

# Sequence 0 of every fixture: this text encodes to 11 pieces, 12 ids with BOS.
PROMPT = "नदी के बाद the river"
SEQ_LEN = 12
GREEDY_NEW_TOKENS = 8

# Extra tokenizer cases: byte fallback (characters absent from the corpus),
# repeated spaces, digits and a leading space.
TOKENIZER_CASES = [
    PROMPT,
    "The library opens at 9.",
    "हमारे शहर का पुस्तकालय",
    "Tea or coffee?  चाय",
    "price 1,499 and 2024",
    " leading space",
    "ॐ शांति 🙂 zebra",
    "",
]

HIDDEN = 64
LAYERS = 2
INTERMEDIATE = 96  # deliberately not a multiple of 64
MAX_POSITIONS = 128
WEIGHT_STD = 0.2   # large enough that the logits are far from flat

VARIANTS = [
    dict(name="mha_tied_f32", arch="llama", dtype=torch.float32, heads=8, kv_heads=8,
         tied=True, rope_theta=10000.0, eps=1e-5, shard=None, seed=101),
    dict(name="gqa_untied_f32", arch="llama", dtype=torch.float32, heads=8, kv_heads=2,
         tied=False, rope_theta=500000.0, eps=1e-6, shard=None, seed=102),
    dict(name="gqa_untied_bf16_sharded", arch="llama", dtype=torch.bfloat16, heads=8,
         kv_heads=2, tied=False, rope_theta=500000.0, eps=1e-5, shard="100KB", seed=103),
    dict(name="mha_untied_f16", arch="llama", dtype=torch.float16, heads=8, kv_heads=8,
         tied=False, rope_theta=10000.0, eps=1e-6, shard=None, seed=104),
    dict(name="mistral_gqa_f32", arch="mistral", dtype=torch.float32, heads=8, kv_heads=2,
         tied=False, rope_theta=10000.0, eps=1e-5, shard=None, seed=105),
]

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def train_tokenizer():
    """Train the SentencePiece BPE model and return its serialized bytes."""
    lines = [line for line in TRAINING_TEXT.splitlines() if line]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model,
                                   **TOKENIZER_OPTIONS)
    return model.getvalue()


def make_config(variant, vocab_size):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=variant["heads"],
        num_key_value_heads=variant["kv_heads"],
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=variant["eps"],
        rope_theta=variant["rope_theta"],
        tie_word_embeddings=variant["tied"],
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
    )
    if variant["arch"] == "mistral":
        return MistralConfig(sliding_window=None, **common)
    return LlamaConfig(**common)


def init_weights(model, seed, dtype):
    """Draw every parameter from a seeded generator, in name order.

    Matrices get N(0, WEIGHT_STD^2); RMSNorm weights get U(0.5, 1.5) so that a
    forward pass that skips or misapplies a norm weight gives other logits.
    The values are rounded to dtype but kept in float32, so the model can run
    the exact float32 math of the checkpoint it will save.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                values = torch.rand(param.shape, generator=gen) + 0.5
            else:
                values = torch.randn(param.shape, generator=gen) * WEIGHT_STD
            param.copy_(values.to(dtype).float())


def build_model(variant, vocab_size):
    config = make_config(variant, vocab_size)
    config._attn_implementation = "eager"
    model_class = MistralForCausalLM if variant["arch"] == "mistral" else LlamaForCausalLM
    torch.manual_seed(variant["seed"])
    model = model_class(config).eval()
    init_weights(model, variant["seed"], variant["dtype"])
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, do_sample=False)
    return model


def make_input_ids(sp, seed):
    """Return I64 [2, SEQ_LEN]: the encoded PROMPT with BOS, then random ids."""
    prompt_ids = [sp.bos_id()] + sp.encode(PROMPT)
    if len(prompt_ids) != SEQ_LEN:
        raise SystemExit(f"PROMPT encodes to {len(prompt_ids)} ids with BOS, expected "
                         f"{SEQ_LEN}: change PROMPT or the tokenizer options")
    gen = torch.Generator().manual_seed(seed)
    random_ids = torch.randint(3, sp.get_piece_size(), (SEQ_LEN,), generator=gen)
    return torch.stack([torch.tensor(prompt_ids, dtype=torch.int64), random_ids])


def load_model(path, dtype):
    model_class = (MistralForCausalLM if json.loads((path / "config.json").read_text())
                   ["model_type"] == "mistral" else LlamaForCausalLM)
    model = model_class.from_pretrained(path, dtype=dtype, attn_implementation="eager")
    return model.eval()


@torch.no_grad()
def forward_logits(model, input_ids):
    """Return F32 [2, T, V] logits of one full-sequence forward pass."""
    mask = torch.ones_like(input_ids)
    return model(input_ids=input_ids, attention_mask=mask).logits.float()


@torch.no_grad()
def greedy_continuation(model, prompt):
    """Return the GREEDY_NEW_TOKENS greedy ids after prompt (I64 [T]) and the
    smallest gap between the top two logits over those steps."""
    out = model.generate(input_ids=prompt[None], attention_mask=torch.ones_like(prompt[None]),
                         max_new_tokens=GREEDY_NEW_TOKENS, min_new_tokens=0,
                         do_sample=False, eos_token_id=None, pad_token_id=0)
    new_ids = out[0, prompt.numel():]

    # The same continuation by full recomputation without the KV cache: the
    # two must agree, or the reference depends on the cache implementation.
    ids = prompt.clone()
    min_margin = float("inf")
    for _ in range(GREEDY_NEW_TOKENS):
        logits = forward_logits(model, ids[None])
        top2 = logits[0, -1].topk(2).values
        min_margin = min(min_margin, (top2[0] - top2[1]).item())
        ids = torch.cat([ids, logits[0, -1].argmax().reshape(1)])
    if not torch.equal(ids[prompt.numel():], new_ids):
        raise SystemExit(f"generate() gave {new_ids.tolist()} but the uncached greedy loop "
                         f"gave {ids[prompt.numel():].tolist()}")
    return new_ids, min_margin


def weight_files(path):
    return sorted(p.name for p in path.glob("*.safetensors") if p.name != "expected.safetensors")


def write_variant(variant, tokenizer_bytes, sp):
    out = OUT_DIR / variant["name"]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    model = build_model(variant, sp.get_piece_size())
    input_ids = make_input_ids(sp, variant["seed"])
    # Logits of the in-memory float32 model: the reloaded checkpoint must
    # reproduce them bit for bit. Casting the model to the checkpoint dtype
    # also casts the RoPE inverse frequencies, so it runs only after this.
    logits_before_save = forward_logits(model, input_ids)
    model.to(variant["dtype"])

    save_args = dict(safe_serialization=True)
    if variant["shard"]:
        save_args["max_shard_size"] = variant["shard"]
    model.save_pretrained(out, **save_args)
    (out / "tokenizer.model").write_bytes(tokenizer_bytes)

    files = weight_files(out)
    if variant["shard"]:
        if not 2 <= len(files) <= 3 or not (out / "model.safetensors.index.json").exists():
            raise SystemExit(f"{variant['name']}: expected 2-3 shards and an index, got {files}")
    elif files != ["model.safetensors"]:
        raise SystemExit(f"{variant['name']}: expected one model.safetensors, got {files}")

    model_f32 = load_model(out, torch.float32)
    logits_f32 = forward_logits(model_f32, input_ids)
    if not torch.equal(logits_f32, logits_before_save):
        diff = (logits_f32 - logits_before_save).abs().max().item()
        raise SystemExit(f"{variant['name']}: reloaded checkpoint changes the logits "
                         f"(max abs diff {diff})")
    greedy_ids, greedy_margin = greedy_continuation(model_f32, input_ids[0])

    model_native = load_model(out, variant["dtype"])
    logits_native = forward_logits(model_native, input_ids)

    safetensors.torch.save_file(
        {"input_ids": input_ids.contiguous(),
         "logits_f32": logits_f32.contiguous(),
         "logits_native": logits_native.contiguous(),
         "greedy_ids": greedy_ids.contiguous()},
        str(out / "expected.safetensors"))

    native_diff = (logits_native - logits_f32).abs().max().item()
    info = {
        "variant": variant["name"],
        "architecture": type(model_f32).__name__,
        "dtype": DTYPE_NAMES[variant["dtype"]],
        "weight_files": files,
        "num_attention_heads": variant["heads"],
        "num_key_value_heads": variant["kv_heads"],
        "tie_word_embeddings": variant["tied"],
        "rope_theta": variant["rope_theta"],
        "rms_norm_eps": variant["eps"],
        "prompt": PROMPT,
        "input_ids_rows": ["PROMPT encoded with BOS", "random ids in [3, vocab_size)"],
        "greedy": f"{GREEDY_NEW_TOKENS} greedy ids after input_ids[0], float32 model",
        "greedy_min_top2_margin": greedy_margin,
        "logits_f32_max_abs": logits_f32.abs().max().item(),
        "logits_f32_std": logits_f32.std().item(),
        "logits_native_vs_f32_max_abs_diff": native_diff,
        "tolerance_notes": (
            "logits_f32 is the forward pass of the stored weights upcast to float32 "
            "(eager attention), so an f32 implementation should match it to about 1e-4 "
            "absolute; only the summation order differs. logits_native runs in the "
            "checkpoint dtype and differs from logits_f32 by up to "
            "logits_native_vs_f32_max_abs_diff, the scale of that dtype's rounding. "
            "greedy_ids must match exactly: at every step the top logit leads the "
            "second by at least greedy_min_top2_margin."),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "safetensors": safetensors.__version__,
                     "sentencepiece": spm.__version__},
    }
    (out / "expected.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    print(f"{variant['name']}: {len(files)} weight file(s), greedy {greedy_ids.tolist()}, "
          f"native vs f32 max diff {native_diff:.3g}")


def write_tokenizer_cases(sp):
    """Write tokenizer_cases.json: one case per line, ids without BOS."""
    lines = []
    for text in TOKENIZER_CASES:
        ids = sp.encode(text)
        case = {"text": text, "ids": ids, "pieces": sp.encode(text, out_type=str),
                "decoded": sp.decode(ids)}
        lines.append("  " + json.dumps(case, ensure_ascii=False))
    header = (f'{{"tokenizer": "tokenizer.model of every fixture (identical bytes)",\n'
              f' "sentencepiece": "{spm.__version__}",\n "cases": [\n')
    (OUT_DIR / "tokenizer_cases.json").write_text(header + ",\n".join(lines) + "\n]}\n")


def load_weights_f64(path):
    """Return every tensor of the checkpoint at path as a float64 numpy array."""
    weights = {}
    for name in weight_files(path):
        for key, tensor in safetensors.torch.load_file(str(path / name)).items():
            weights[key] = tensor.double().numpy()
    return weights


def rms_norm(x, weight, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate_half_rope(x, theta):
    """Apply RoPE to x [heads, T, head_dim] the way Hugging Face Llama does.

    The checkpoint's q/k rows are permuted so that a head's dimension i pairs
    with i + head_dim/2 (rotate_half), not with its neighbour i + 1.
    """
    head_dim = x.shape[-1]
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2) / head_dim)
    angles = np.arange(x.shape[1])[:, None] * inv_freq[None, :]   # [T, head_dim/2]
    cos = np.cos(np.concatenate([angles, angles], axis=-1))
    sin = np.sin(np.concatenate([angles, angles], axis=-1))
    half = head_dim // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def numpy_forward(path, ids):
    """Return float64 logits [T, V] of one sequence, computed without transformers.

    An independent statement of the math the C forward pass implements, used
    to confirm that logits_f32 is the plain Llama computation.
    """
    config = json.loads((path / "config.json").read_text())
    w = load_weights_f64(path)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    head_dim = config["hidden_size"] // heads
    theta = config["rope_parameters"]["rope_theta"]
    eps = config["rms_norm_eps"]
    seq_len = len(ids)
    causal = np.triu(np.full((seq_len, seq_len), -np.inf), k=1)

    x = w["model.embed_tokens.weight"][ids]
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(seq_len, heads, head_dim)
        k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(seq_len, kv_heads, head_dim)
        v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(seq_len, kv_heads, head_dim)
        q = rotate_half_rope(q.transpose(1, 0, 2), theta)
        k = rotate_half_rope(k.transpose(1, 0, 2), theta)
        v = v.transpose(1, 0, 2)
        group = heads // kv_heads  # query head i reads kv head i // group
        k = np.repeat(k, group, axis=0)
        v = np.repeat(v, group, axis=0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(head_dim) + causal
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        probs = scores / scores.sum(axis=-1, keepdims=True)
        attn = (probs @ v).transpose(1, 0, 2).reshape(seq_len, heads * head_dim)
        x = x + attn @ w[p + "self_attn.o_proj.weight"].T

        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1.0 + np.exp(-gate)) * up) @ w[p + "mlp.down_proj.weight"].T

    x = rms_norm(x, w["model.norm.weight"], eps)
    lm_head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x @ lm_head.T


def check_variant(variant):
    """Reload a saved fixture and confirm it reproduces its expected outputs."""
    out = OUT_DIR / variant["name"]
    expected = safetensors.torch.load_file(str(out / "expected.safetensors"))
    input_ids = expected["input_ids"]
    logits_f32 = forward_logits(load_model(out, torch.float32), input_ids)
    logits_native = forward_logits(load_model(out, variant["dtype"]), input_ids)
    f32_diff = (logits_f32 - expected["logits_f32"]).abs().max().item()
    native_diff = (logits_native - expected["logits_native"]).abs().max().item()
    greedy, _ = greedy_continuation(load_model(out, torch.float32), input_ids[0])
    numpy_diff = max(
        np.abs(numpy_forward(out, row.numpy()) - expected["logits_f32"][i].double().numpy()).max()
        for i, row in enumerate(input_ids))
    greedy_same = torch.equal(greedy, expected["greedy_ids"])
    print(f"{variant['name']}: f32 diff {f32_diff:.3g}, native diff {native_diff:.3g}, "
          f"float64 numpy forward diff {numpy_diff:.3g}, greedy {'same' if greedy_same else 'DIFFERENT'}")
    return f32_diff <= 1e-5 and native_diff <= 1e-5 and numpy_diff <= 1e-4 and greedy_same


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="reload the existing fixtures and verify them; write nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the results must not depend on the thread count

    if args.check:
        results = [check_variant(v) for v in VARIANTS]
        if not all(results):
            sys.exit("some fixtures no longer reproduce their expected outputs")
        return

    tokenizer_bytes = train_tokenizer()
    sp = spm.SentencePieceProcessor(model_proto=tokenizer_bytes)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for variant in VARIANTS:
        write_variant(variant, tokenizer_bytes, sp)
    write_tokenizer_cases(sp)


if __name__ == "__main__":
    main()
