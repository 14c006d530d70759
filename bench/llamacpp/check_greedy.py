#!/usr/bin/env python3
"""Check a converted GGUF against reference greedy generations.

The reference file is JSON with a "cases" list; each case has "prompt",
"input_ids" (BOS + SentencePiece ids), "max_new_tokens", "generated_ids" and
optionally "first_step_logits". For each case this script tokenizes the prompt
with llama.cpp, decodes greedily (argmax, lowest id on ties, stop when BOS is
produced) and compares the ids exactly. It also prints the largest difference
between llama.cpp's first-step logits and the reference ones. Exits with
status 1 if any token differs, which means the conversion (for example the
q/k row order for RoPE) does not compute the same function.
"""

import argparse
import json
import sys

import numpy as np

import llama_cpp

BOS_ID = 1


def last_logits(llm):
    """Return the logits llama.cpp computed for the last evaluated token.

    llama-cpp-python's Llama.eval fills Llama.scores only when logits_all=True,
    so the row is read straight from the context.
    """
    row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(row, shape=(llm.n_vocab(),))


def greedy(llm, input_ids, max_new_tokens):
    """Decode greedily; return (generated ids, logits after the prompt)."""
    llm.reset()
    llm.eval(input_ids)
    first_logits = np.array(last_logits(llm), dtype=np.float64)
    generated = []
    for _ in range(max_new_tokens):
        next_token = int(np.argmax(last_logits(llm)))
        if next_token == BOS_ID:
            break
        generated.append(next_token)
        llm.eval([next_token])
    return generated, first_logits


def main(argv=None):
    p = argparse.ArgumentParser(description="Compare llama.cpp greedy output on a GGUF with "
                                            "reference token ids.")
    p.add_argument("model", help="GGUF file")
    p.add_argument("reference", help="JSON file with the reference cases")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    with open(args.reference, encoding="utf-8") as f:
        cases = json.load(f)["cases"]
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=512, n_threads=args.threads,
                          logits_all=False, verbose=False)

    failures = 0
    for case in cases:
        input_ids = llm.tokenize(case["prompt"].encode("utf-8"), add_bos=True)
        if input_ids != case["input_ids"]:
            print(f"FAIL tokenize {case['prompt']!r}: {input_ids} != {case['input_ids']}")
            failures += 1
            input_ids = case["input_ids"]
        generated, first_logits = greedy(llm, input_ids, case["max_new_tokens"])
        expected = case["generated_ids"]
        if generated != expected:
            at = next((i for i, (a, b) in enumerate(zip(generated, expected)) if a != b),
                      min(len(generated), len(expected)))
            print(f"FAIL generate {case['prompt']!r}: first difference at token {at}")
            print(f"  got      {generated}")
            print(f"  expected {expected}")
            failures += 1
        else:
            text = llm.detokenize(generated).decode("utf-8", errors="replace")
            print(f"ok   {case['prompt']!r}: {len(generated)} tokens match: {text!r}")
        if "first_step_logits" in case:
            reference = np.array(case["first_step_logits"], dtype=np.float64)
            print(f"     first-step logits max abs difference "
                  f"{np.max(np.abs(first_logits - reference)):.2e}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
