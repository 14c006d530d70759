#!/usr/bin/env python3
"""Measure llama.cpp prompt processing and decode speed on a GGUF file.

Loads the model with llama-cpp-python (memory-mapped), then for each
repetition clears the KV cache, evaluates a prompt of --prompt-tokens tokens in
one batch and decodes --decode-tokens tokens greedily, one at a time. Speeds
come from llama.cpp's own counters (llama_perf_context: t_p_eval_ms/n_p_eval
for batches of more than one token, t_eval_ms/n_eval for single tokens), so
Python overhead such as the argmax is not counted. Wall-clock speeds are
reported next to them as a cross-check. Prints one JSON object with the
per-repetition numbers and their medians.
"""

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

import llama_cpp

PROMPT_TEXT = (
    "The monsoon arrived early that year, and the farmers in the valley watched the "
    "clouds gather over the hills with a mix of hope and worry. The river rose slowly "
    "at first, then quickly, carrying branches and leaves past the old stone bridge. "
    "Children ran along the banks, counting the boats that drifted by, while their "
    "grandparents told stories of floods long ago. "
)


def last_logits(llm):
    """Return the logits llama.cpp computed for the last evaluated token.

    llama-cpp-python's Llama.eval fills Llama.scores only when logits_all=True,
    so the row is read straight from the context.
    """
    row = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(row, shape=(llm.n_vocab(),))


def prompt_tokens(llm, count):
    """Return count token ids: BOS followed by a repeated English passage."""
    passage = llm.tokenize(PROMPT_TEXT.encode("utf-8"), add_bos=False)
    tokens = [llm.token_bos()]
    while len(tokens) < count:
        tokens += passage
    return tokens[:count]


def run_once(llm, tokens, n_decode):
    """Evaluate the prompt and decode greedily; return llama.cpp and wall timings."""
    ctx = llm.ctx
    llm.reset()  # the next eval removes every cached position from the KV cache
    llama_cpp.llama_perf_context_reset(ctx)

    start = time.perf_counter()
    llm.eval(tokens)
    prompt_wall = time.perf_counter() - start

    start = time.perf_counter()
    for _ in range(n_decode):
        next_token = int(np.argmax(last_logits(llm)))
        llm.eval([next_token])
    # llama.cpp adds a decode call's time to its counters when the context is
    # synchronized, which reading logits does. The last decode needs it here.
    llama_cpp.llama_synchronize(ctx)
    decode_wall = time.perf_counter() - start

    perf = llama_cpp.llama_perf_context(ctx)
    if perf.n_p_eval != len(tokens) or perf.n_eval != n_decode or perf.t_eval_ms <= 0:
        raise SystemExit(f"error: llama.cpp counted {perf.n_p_eval} prompt and {perf.n_eval} "
                         f"decode tokens, expected {len(tokens)} and {n_decode}")
    return {
        "prompt_tok_s": 1000.0 * perf.n_p_eval / perf.t_p_eval_ms,
        "decode_tok_s": 1000.0 * perf.n_eval / perf.t_eval_ms,
        "prompt_wall_tok_s": len(tokens) / prompt_wall,
        "decode_wall_tok_s": n_decode / decode_wall,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description="Measure llama.cpp prompt and decode tokens per "
                                            "second on a GGUF model.")
    p.add_argument("model", help="GGUF file")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--n-ctx", type=int, default=512, help="context size in tokens (default 512)")
    p.add_argument("--prompt-tokens", type=int, default=128,
                   help="prompt length in tokens, BOS included (default 128)")
    p.add_argument("--decode-tokens", type=int, default=32,
                   help="tokens decoded one at a time after the prompt (default 32)")
    p.add_argument("--reps", type=int, default=5, help="measured repetitions (default 5)")
    p.add_argument("--no-mmap", action="store_true", help="read the model into RAM instead")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    if args.prompt_tokens < 2 or args.decode_tokens < 1 or args.reps < 1:
        p.error("--prompt-tokens must be at least 2, --decode-tokens and --reps at least 1")
    if args.prompt_tokens + args.decode_tokens > args.n_ctx:
        p.error(f"--prompt-tokens + --decode-tokens = {args.prompt_tokens + args.decode_tokens} "
                f"does not fit in --n-ctx {args.n_ctx}")

    start = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.model, n_ctx=args.n_ctx, n_batch=args.n_ctx,
                          n_threads=args.threads, n_threads_batch=args.threads,
                          use_mmap=not args.no_mmap, logits_all=False, verbose=False)
    load_s = time.perf_counter() - start
    tokens = prompt_tokens(llm, args.prompt_tokens)

    # Warm-up: a short run touches every weight page once, so the measured
    # repetitions do not include reading the file from disk.
    start = time.perf_counter()
    run_once(llm, tokens[:min(8, len(tokens))], 1)
    warmup_s = time.perf_counter() - start

    runs = []
    for rep in range(args.reps):
        runs.append(run_once(llm, tokens, args.decode_tokens))
        print(f"rep {rep + 1}/{args.reps}: " + json.dumps({k: round(v, 3) for k, v in runs[-1].items()}),
              file=sys.stderr, flush=True)

    result = {
        "model": os.path.basename(args.model),
        "file_bytes": os.path.getsize(args.model),
        "llama_cpp_python": llama_cpp.__version__,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "threads": args.threads,
        "n_ctx": args.n_ctx,
        "mmap": not args.no_mmap,
        "prompt_tokens": len(tokens),
        "decode_tokens": args.decode_tokens,
        "reps": args.reps,
        "load_s": round(load_s, 3),
        "warmup_s": round(warmup_s, 3),
        "median": {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]},
        "runs": [{k: round(v, 3) for k, v in r.items()} for r in runs],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
