"""Write tests/fixtures/bnb/stories260K_quantized.json.

The stories260K checkpoint (in the shared reference data, $AIRAVATA_SHARED or
../shared) is loaded by transformers with three BitsAndBytesConfig settings
and saved with save_pretrained. For every saved tensor the JSON records its
dtype, shape and the SHA-256 of its bytes, plus the saved quantization_config,
so tests/cli/test_quantize.py can check that `airavata quantize` writes the
same bytes without needing torch. Run with the reference environment:

    .venv-ref/bin/python tools/make_bnb_extra_fixtures.py

torch runs with one thread: the double-quantization offset is a float32 mean
whose last bit depends on the summation order.
"""
import hashlib
import json
import os
import pathlib
import tempfile

import bitsandbytes
import torch
import transformers
from safetensors import safe_open
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("AIRAVATA_SHARED", REPO.parent / "shared"))
SOURCE = SHARED / "models" / "stories260K"
OUT = REPO / "tests" / "fixtures" / "bnb" / "stories260K_quantized.json"

VARIANTS = {
    # name: (airavata quantize arguments, BitsAndBytesConfig)
    "nf4": (["--type", "nf4"],
            BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=torch.float32)),
    # BitsAndBytesConfig has no block size option (transformers always uses
    # 64), so other block sizes are covered by quant_cases instead.
    "nf4_no_dq": (["--type", "nf4", "--no-double-quant"],
                  BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                     bnb_4bit_use_double_quant=False,
                                     bnb_4bit_compute_dtype=torch.float32)),
    "int8": (["--type", "int8"], BitsAndBytesConfig(load_in_8bit=True)),
}


def describe(path):
    tensors = {}
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        for name in sorted(f.keys()):
            t = f.get_tensor(name).contiguous()
            raw = t.view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes()
            tensors[name] = {"dtype": f.get_slice(name).get_dtype(),
                             "shape": list(f.get_slice(name).get_shape()),
                             "sha256": hashlib.sha256(raw).hexdigest()}
    config = json.loads((path / "config.json").read_text())
    return tensors, config["quantization_config"]


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    variants = {}
    for name, (args, config) in VARIANTS.items():
        model = AutoModelForCausalLM.from_pretrained(SOURCE, quantization_config=config,
                                                     device_map="cpu", dtype=torch.float32)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tensors, quantization_config = describe(pathlib.Path(tmp))
        variants[name] = {"args": args, "quantization_config": quantization_config,
                          "tensors": tensors}
    record = {
        "source": "stories260K (float32, tied embeddings), loaded with device_map cpu and "
                  "dtype float32, saved with save_pretrained(safe_serialization=True)",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "bitsandbytes": bitsandbytes.__version__},
        "variants": variants,
    }
    OUT.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
