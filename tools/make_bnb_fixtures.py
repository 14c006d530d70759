"""Generate the bitsandbytes reference fixtures under tests/fixtures/bnb.

quant_cases.safetensors contains sample tensors and what bitsandbytes makes
of them, byte for byte: NF4 (with and without double quantization, block
sizes 64 and 128) and LLM.int8 row-wise int8. tiny_nf4/ and tiny_int8/ are
the tiny bf16 Llama of tests/fixtures/hf/gqa_untied_bf16_sharded quantized
by transformers' BitsAndBytesConfig and written by save_pretrained, with the
logits of bitsandbytes' own forward pass and of a float32 forward pass over
the dequantized weights.

Usage (from the repository root, after tools/make_hf_fixtures.py):
    tools/setup-ref-venv.sh && .venv-ref/bin/python tools/make_bnb_fixtures.py
"""
import json
import pathlib
import shutil
import sys
import time

import accelerate
import bitsandbytes
import bitsandbytes.functional as bnbf
import numpy as np
import safetensors
import safetensors.torch
import torch
import transformers
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_hf_fixtures as hf  # noqa: E402  (shares the forward and greedy helpers)

ROOT = pathlib.Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "tests" / "fixtures" / "bnb"
SOURCE_MODEL = ROOT / "tests" / "fixtures" / "hf" / "gqa_untied_bf16_sharded"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sample_normal(rng, shape):
    return rng.standard_normal(shape)


def sample_student_t(rng, shape):
    # Student-t with 2 degrees of freedom: heavy tails put a few large values
    # in many blocks, so absmax and the NF4 codes of the rest differ a lot.
    return rng.standard_t(2.0, shape)


def sample_with_zeros(rng, shape):
    """Normal values, 30% of them zero, and row 3 all zero.

    With 64 columns row 3 is exactly one 64-block, so its absmax is 0 and a
    dequantizer must not divide by it.
    """
    values = rng.standard_normal(shape)
    values[rng.random(shape) < 0.3] = 0.0
    values[3] = 0.0
    return values


def sample_equal_blocks(rng, shape):
    """Rows of one repeated value each (positive, negative, tiny, zero, large)."""
    row_values = np.array([0.5, -2.0, 1e-3, 0.0, 7.25, -1e-4, 3.0, -0.75])
    return np.repeat(row_values[: shape[0], None], shape[1], axis=1)


def sample_outlier_rows(rng, shape):
    """Normal values with an all-zero row and a few large outliers (int8 cases)."""
    values = rng.standard_normal(shape)
    values[2] = 0.0
    values[5, 7] = 40.0
    values[9, 0] = -25.0
    return values


SAMPLERS = {"normal": sample_normal, "student_t": sample_student_t, "zeros": sample_with_zeros,
            "equal_blocks": sample_equal_blocks, "outlier_rows": sample_outlier_rows}

# (name, sampler, shape, input dtype, block size, double quantization)
# [150, 130] has 19500 values: 305 blocks of 64, so the double quantization
# spans two 256-blocks of absmax values. [7, 37] has an odd count of values,
# so the last packed byte contains one code.
NF4_CASES = [
    ("nf4_normal_f32_bs64_dq", "normal", (150, 130), "float32", 64, True),
    ("nf4_normal_f32_bs64", "normal", (150, 130), "float32", 64, False),
    ("nf4_normal_f32_bs128_dq", "normal", (150, 130), "float32", 128, True),
    ("nf4_student_t_f32_bs64_dq", "student_t", (64, 100), "float32", 64, True),
    ("nf4_student_t_f32_bs128", "student_t", (64, 100), "float32", 128, False),
    ("nf4_zeros_f32_bs64_dq", "zeros", (40, 64), "float32", 64, True),
    ("nf4_zeros_f32_bs64", "zeros", (40, 64), "float32", 64, False),
    ("nf4_equal_blocks_f32_bs64_dq", "equal_blocks", (8, 64), "float32", 64, True),
    ("nf4_odd_size_f32_bs64_dq", "normal", (7, 37), "float32", 64, True),
    ("nf4_odd_size_f32_bs128", "normal", (7, 37), "float32", 128, False),
    ("nf4_normal_bf16_bs64_dq", "normal", (96, 64), "bfloat16", 64, True),
    ("nf4_normal_bf16_bs128", "normal", (96, 64), "bfloat16", 128, False),
    ("nf4_normal_f16_bs64_dq", "normal", (96, 64), "float16", 64, True),
    ("nf4_student_t_f16_bs64", "student_t", (33, 70), "float16", 64, False),
]

# (name, sampler, shape, input dtype): weights quantized by bnb.nn.Int8Params.
INT8_CASES = [
    ("int8_normal_f32", "normal", (37, 100), "float32"),
    ("int8_normal_bf16", "normal", (64, 96), "bfloat16"),
    ("int8_outlier_rows_f16", "outlier_rows", (33, 70), "float16"),
    ("int8_equal_blocks_f32", "equal_blocks", (8, 64), "float32"),
]


def make_input(index, sampler, shape, dtype_name):
    rng = np.random.default_rng(1000 + index)
    values = SAMPLERS[sampler](rng, shape).astype(np.float32)
    return torch.from_numpy(values).to(DTYPES[dtype_name])


def dequantize_nf4_numpy(packed, quant_state_json, tensors, prefix):
    """Decode NF4 codes without bitsandbytes, from the serialized tensors only.

    Each byte contains two 4-bit codes, the first value in the high nibble.
    Value i is quant_map[code_i] * absmax[i // blocksize]. With double
    quantization absmax is stored as uint8 codes: absmax[b] =
    nested_quant_map[code_b] * nested_absmax[b // nested_blocksize] + offset.
    """
    state = json.loads(quant_state_json)
    count = int(np.prod(state["shape"]))
    codes = np.stack([packed >> 4, packed & 15], axis=1).reshape(-1)[:count]
    quant_map = tensors[prefix + "quant_map"].numpy()
    absmax = tensors[prefix + "absmax"]
    if "nested_blocksize" in state:
        nested_map = tensors[prefix + "nested_quant_map"].numpy()
        nested_absmax = tensors[prefix + "nested_absmax"].numpy()
        blocks = np.arange(absmax.numel()) // state["nested_blocksize"]
        absmax = (nested_map[absmax.numpy()] * nested_absmax[blocks]
                  + np.float32(state["nested_offset"])).astype(np.float32)
    else:
        absmax = absmax.numpy()
    values = quant_map[codes] * absmax[np.arange(count) // state["blocksize"]]
    return values.reshape(state["shape"])


def quantize_nf4_case(index, case, tensors, records):
    name, sampler, shape, dtype_name, blocksize, double_quant = case
    x = make_input(index, sampler, shape, dtype_name)
    packed, state = bnbf.quantize_4bit(x, blocksize=blocksize, compress_statistics=double_quant,
                                       quant_type="nf4")
    dequantized = bnbf.dequantize_4bit(packed, state)

    prefix = name + "."
    tensors[prefix + "input"] = x
    tensors[prefix + "weight"] = packed
    for key, value in state.as_dict(packed=True).items():
        tensors[prefix + key] = value
    tensors[prefix + "dequantized"] = dequantized

    state_json = bytes(tensors[prefix + "quant_state.bitsandbytes__nf4"].tolist()).decode()
    ours = dequantize_nf4_numpy(packed.numpy().reshape(-1), state_json, tensors, prefix)
    ours = torch.from_numpy(ours).to(x.dtype)
    if not torch.equal(ours, dequantized):
        diff = (ours.float() - dequantized.float()).abs().max().item()
        sys.exit(f"{name}: the documented NF4 layout does not reproduce bitsandbytes' "
                 f"dequantization (max abs diff {diff})")

    records.append({
        "name": name, "kind": "nf4", "sampler": sampler, "shape": list(shape),
        "input_dtype": dtype_name, "blocksize": blocksize, "double_quant": double_quant,
        "quant_state": json.loads(state_json),
        "tensors": sorted(k[len(prefix):] for k in tensors if k.startswith(prefix)),
        "max_abs_error": (dequantized.float() - x.float()).abs().max().item(),
    })


def quantize_int8_case(index, case, tensors, records):
    name, sampler, shape, dtype_name = case
    x = make_input(100 + index, sampler, shape, dtype_name)
    param = bitsandbytes.nn.Int8Params(x.clone(), requires_grad=False, has_fp16_weights=False)
    param = param.to("cpu")  # Int8Params.to() quantizes a float weight, even to the CPU
    weight, scb = param.data, param.SCB
    dequantized = bnbf.int8_vectorwise_dequant(weight, scb)

    # bitsandbytes multiplies by the float32 reciprocal of 127, after the scale.
    ours = (weight.float() * scb[:, None]) * torch.tensor(1.0 / 127.0, dtype=torch.float32)
    if not torch.equal(ours, dequantized.float()):
        diff = (ours - dequantized.float()).abs().max().item()
        sys.exit(f"{name}: (weight * SCB) * float32(1/127) does not reproduce bitsandbytes' "
                 f"dequantization (max abs diff {diff})")
    # Quantization: Int8Params first casts the weight to float16 (x16). SCB
    # is each row's absmax of x16 and the code is round-half-to-even of
    # x16 * (127 / SCB), computed in float32. A row of zeros has SCB 0 and codes 0.
    x16 = x.to(torch.float16).float()
    scale = torch.where(scb == 0, 0.0, 127.0 / torch.where(scb == 0, 1.0, scb))
    expected_codes = torch.round(x16 * scale[:, None])
    if not torch.equal(scb, x16.abs().amax(dim=1)):
        sys.exit(f"{name}: SCB is not the absmax of each float16-rounded row")
    if not torch.equal(expected_codes, weight.float()):
        mismatches = int((expected_codes != weight.float()).sum())
        sys.exit(f"{name}: {mismatches} int8 codes differ from round(x16 * (127 / SCB))")

    prefix = name + "."
    tensors[prefix + "input"] = x
    tensors[prefix + "weight"] = weight
    tensors[prefix + "SCB"] = scb
    tensors[prefix + "dequantized"] = dequantized
    records.append({
        "name": name, "kind": "int8", "sampler": sampler, "shape": list(shape),
        "input_dtype": dtype_name,
        "tensors": ["input", "weight", "SCB", "dequantized"],
        "scb_dtype": str(scb.dtype).removeprefix("torch."),
        "max_abs_error": (dequantized.float() - x.float()).abs().max().item(),
    })


def write_quant_cases():
    tensors, records = {}, []
    for index, case in enumerate(NF4_CASES):
        quantize_nf4_case(index, case, tensors, records)
    for index, case in enumerate(INT8_CASES):
        quantize_int8_case(index, case, tensors, records)

    tensors = {key: value.contiguous() for key, value in tensors.items()}
    safetensors.torch.save_file(tensors, str(OUT_DIR / "quant_cases.safetensors"))
    doc = {
        "layout": {
            "nf4": ("<case>.weight is U8 [ceil(n/2), 1]: two codes per byte, the first value "
                    "in the high nibble. Value i = quant_map[code_i] * absmax[i // blocksize]. "
                    "With double_quant, absmax is U8 codes and absmax[b] = "
                    "nested_quant_map[code_b] * nested_absmax[b // nested_blocksize] + "
                    "nested_offset (from quant_state). <case>.dequantized is "
                    "bitsandbytes.functional.dequantize_4bit in the input dtype."),
            "int8": ("<case>.weight is I8 [rows, cols], <case>.SCB is F32 [rows], the "
                     "absmax of each row of x16 = float16(input), and weight = round(x16 * (127 / SCB)) "
                     "in float32 (0 for a row of zeros). Value = (weight * SCB) * float32(1/127) in float32, "
                     "which is what bitsandbytes computes. <case>.dequantized is "
                     "bitsandbytes.functional.int8_vectorwise_dequant."),
        },
        "versions": versions(),
        "cases": records,
    }
    (OUT_DIR / "quant_cases.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"quant_cases: {len(records)} cases, {len(tensors)} tensors")


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "bitsandbytes": bitsandbytes.__version__, "accelerate": accelerate.__version__,
            "safetensors": safetensors.__version__}


def quantized_linear_weights(model):
    """Return {module name: float32 dequantized weight} for every bnb linear layer."""
    weights = {}
    for name, module in model.named_modules():
        if isinstance(module, bitsandbytes.nn.Linear4bit):
            weights[name] = bnbf.dequantize_4bit(module.weight.data,
                                                 module.weight.quant_state).float()
        elif isinstance(module, bitsandbytes.nn.Linear8bitLt):
            # The first forward pass moves SCB from the weight to the layer state.
            scb = module.weight.SCB if module.weight.SCB is not None else module.state.SCB
            weights[name] = bnbf.int8_vectorwise_dequant(module.weight.data, scb).float()
    return weights


def dequantized_f32_model(quantized):
    """Return the float32 source model with its linear weights replaced by the
    dequantized weights of quantized: the exact math of weight-only dequantization."""
    model = hf.load_model(SOURCE_MODEL, torch.float32)
    weights = quantized_linear_weights(quantized)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, weight in weights.items():
            modules[name].weight.copy_(weight)
    return model, sorted(weights)


def load_quantized(path, config=None):
    """Load path on the CPU, quantized by config, or as saved when config is None."""
    # Passing quantization_config=None would load a saved quantized
    # checkpoint as a plain model and reject its packed weight shapes.
    extra = {"quantization_config": config} if config is not None else {}
    return AutoModelForCausalLM.from_pretrained(path, device_map="cpu", attn_implementation="eager",
                                                **extra).eval()


@torch.no_grad()
def native_greedy(model, prompt):
    out = model.generate(input_ids=prompt[None], attention_mask=torch.ones_like(prompt[None]),
                         max_new_tokens=hf.GREEDY_NEW_TOKENS, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, prompt.numel():]


def write_model(name, config, description):
    out = OUT_DIR / name
    if out.exists():
        shutil.rmtree(out)

    quantized = load_quantized(SOURCE_MODEL, config)
    quantized.save_pretrained(out, safe_serialization=True)
    shutil.copy(SOURCE_MODEL / "tokenizer.model", out / "tokenizer.model")

    input_ids = safetensors.torch.load_file(str(SOURCE_MODEL / "expected.safetensors"))["input_ids"]
    logits_native = hf.forward_logits(quantized, input_ids)

    # The saved checkpoint must load as a pre-quantized model and give the
    # same logits as the model that was quantized on the fly.
    reloaded = load_quantized(out)
    logits_reloaded = hf.forward_logits(reloaded, input_ids)
    if not torch.equal(logits_reloaded, logits_native):
        diff = (logits_reloaded - logits_native).abs().max().item()
        sys.exit(f"{name}: reloaded quantized checkpoint changes the logits (max abs diff {diff})")

    model_f32, quantized_modules = dequantized_f32_model(reloaded)
    logits_f32 = hf.forward_logits(model_f32, input_ids)
    greedy_ids, greedy_margin = hf.greedy_continuation(model_f32, input_ids[0])
    greedy_native = native_greedy(reloaded, input_ids[0])

    safetensors.torch.save_file(
        {"input_ids": input_ids.contiguous(),
         "logits_f32": logits_f32.contiguous(),
         "logits_native": logits_native.contiguous(),
         "greedy_ids": greedy_ids.contiguous(),
         "greedy_ids_native": greedy_native.contiguous()},
        str(out / "expected.safetensors"))

    native_diff = (logits_native - logits_f32).abs().max().item()
    info = {
        "variant": name,
        "source": "tests/fixtures/hf/gqa_untied_bf16_sharded",
        "quantization": description,
        "quantized_modules": quantized_modules,
        "prompt": hf.PROMPT,
        "logits_f32": ("float32 forward pass with every quantized linear weight replaced by "
                       "bitsandbytes' dequantization of it, other weights upcast from bf16: "
                       "the exact math of weight-only dequantization"),
        "logits_native": "transformers + bitsandbytes forward pass on the CPU, cast to float32",
        "greedy_ids": f"{hf.GREEDY_NEW_TOKENS} greedy ids after input_ids[0], float32 dequantized model",
        "greedy_min_top2_margin": greedy_margin,
        "greedy_ids_native": "greedy ids of the transformers + bitsandbytes model",
        "logits_native_vs_f32_max_abs_diff": native_diff,
        "versions": versions(),
    }
    (out / "expected.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    print(f"{name}: greedy {greedy_ids.tolist()}, native greedy {greedy_native.tolist()}, "
          f"native vs f32 max diff {native_diff:.3g}")


def main():
    start = time.monotonic()
    torch.set_num_threads(1)  # the results must not depend on the thread count
    if not (SOURCE_MODEL / "expected.safetensors").exists():
        sys.exit(f"{SOURCE_MODEL} not found: run tools/make_hf_fixtures.py first")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    write_quant_cases()
    print(f"{time.monotonic() - start:.0f} s")

    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    write_model("tiny_nf4", nf4, "NF4, double quantization, block size 64, compute dtype bfloat16")
    int8 = BitsAndBytesConfig(load_in_8bit=True)
    write_model("tiny_int8", int8, ("LLM.int8: int8 rows with a per-row absmax (SCB), "
                                    "outlier threshold 6.0; bitsandbytes casts bf16 "
                                    "activations to fp16 for the int8 matmul"))


if __name__ == "__main__":
    main()
