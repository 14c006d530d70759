"""The Python service that `airavata serve` replaces, rebuilt as the baseline
for the server benchmark.

It is a FastAPI app around Hugging Face transformers: the model is loaded once
with bitsandbytes quantization (NF4 with double quantization and bfloat16
compute, or int8), and POST /generate {"prompt": str, "max_new_tokens": int =
100} returns {"generated_text": prompt + completion}, sampled with
do_sample=True, temperature 0.7 and top_p 0.9 (top_k stays at the
transformers default of 50). A lock makes requests run one at a time, as the
original service did with a single worker and one model.

The differences from the original are all outside the measured path. The
model directory, quantization, port and thread count come from the command
line. GET /health exists for the benchmark's readiness check. Each /generate
response carries an X-Generated-Tokens header, so the load generator can
count tokens without re-tokenizing; the JSON body is unchanged.

Run: python bench/fastapi_app/app.py --model DIR [--quant nf4|int8|none]
     [--port 8002] [--threads 2]
"""
import argparse
import json
import logging
import os
import threading
import time

import torch
import uvicorn
from fastapi import FastAPI, Response
from pydantic import BaseModel
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

log = logging.getLogger("fastapi_app")


def quantization_config(quant):
    """Return the BitsAndBytesConfig for `quant`, or None for unquantized."""
    if quant == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    if quant == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_model(model_dir, quant):
    """Load the tokenizer and model on the CPU.

    A directory that already stores bitsandbytes weights (its config.json has
    quantization_config) is loaded as stored, because transformers rejects a
    second quantization config for it.
    """
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        stored = json.load(f).get("quantization_config")
    kwargs = {"device_map": "cpu"}
    if stored:
        log.info("%s is already quantized (%s); --quant %s is ignored",
                 model_dir, stored.get("quant_method"), quant)
    elif quant != "none":
        kwargs["quantization_config"] = quantization_config(quant)
    else:
        kwargs["dtype"] = torch.float32
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    model.eval()
    return tokenizer, model


class GenerateRequest(BaseModel):
    prompt: str
    max_new_tokens: int = 100


def build_app(tokenizer, model):
    app = FastAPI()
    lock = threading.Lock()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/generate")
    def generate(request: GenerateRequest, response: Response):
        inputs = tokenizer(request.prompt, return_tensors="pt").to(model.device)
        with lock, torch.no_grad():
            outputs = model.generate(
                **inputs,
                max_new_tokens=request.max_new_tokens,
                do_sample=True,
                temperature=0.7,
                top_p=0.9,
                pad_token_id=tokenizer.eos_token_id,
            )
        generated = outputs.shape[1] - inputs["input_ids"].shape[1]
        response.headers["X-Generated-Tokens"] = str(generated)
        text = tokenizer.decode(outputs[0][inputs["input_ids"].shape[1]:],
                                skip_special_tokens=True)
        return {"generated_text": request.prompt + text}

    return app


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory in Hugging Face layout")
    parser.add_argument("--quant", choices=["nf4", "int8", "none"], default="nf4",
                        help="bitsandbytes quantization applied at load time (default nf4)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8002, help="TCP port (default 8002)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch intra-op threads (default 2)")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    tokenizer, model = load_model(args.model, args.quant)
    log.info("loaded %s (quant %s) in %.1f s with %d threads", args.model, args.quant,
             time.perf_counter() - started, torch.get_num_threads())
    uvicorn.run(build_app(tokenizer, model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
