"""Summarizes a bench/run_cpu_decode.sh results folder: medians and ratios.

Reads airavata-<type>-r<N>-measured.txt (the stderr of `airavata generate`)
and llamacpp-<type>-r<N>.json (bench/llamacpp/speed.py output), and prints a
Markdown table of median prompt and decode tokens/s per engine and type, the
ratio airavata / llama.cpp for each pair, and the decode fraction of the
bandwidth ceiling (read bandwidth / bytes of weights read per token).
"""
import glob
import json
import os
import re
import statistics
import sys

PAIRS = [("bf16", "f16"), ("nf4", "q4_0"), ("int8", "q8_0")]
STATS = re.compile(r"prompt: (\d+) tokens in [\d.]+ s \(([\d.]+) tokens/s\); generation: "
                   r"\d+ tokens in [\d.]+ s \(([\d.]+) tokens/s")


def ours(folder, kind):
    prompt, decode = [], []
    for path in sorted(glob.glob(f"{folder}/airavata-{kind}-r*-measured.txt")):
        m = STATS.search(open(path).read())
        if m:
            prompt.append(float(m.group(2)))
            decode.append(float(m.group(3)))
    return prompt, decode


def theirs(folder, kind):
    prompt, decode = [], []
    for path in sorted(glob.glob(f"{folder}/llamacpp-{kind}-r*.json")):
        try:
            median = json.load(open(path))["median"]
        except (ValueError, KeyError):
            continue
        prompt.append(median["prompt_tok_s"])
        decode.append(median["decode_tok_s"])
    return prompt, decode


def med(values):
    return statistics.median(values) if values else float("nan")


def main(folder):
    bandwidth = None
    membw = os.path.join(folder, "membw.txt")
    if os.path.exists(membw):
        m = re.search(r"median\D*([\d.]+)\s*GB/s", open(membw).read())
        if m:
            bandwidth = float(m.group(1))
    print(f"read bandwidth (median): {bandwidth} GB/s\n")
    print("| airavata | llama.cpp | runs | airavata prompt tok/s | llama.cpp prompt tok/s "
          "| airavata decode tok/s | llama.cpp decode tok/s | decode ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for a, b in PAIRS:
        ap, ad = ours(folder, a)
        lp, ld = theirs(folder, b)
        if not ad or not ld:
            continue
        ratio = med(ad) / med(ld) if med(ld) else float("nan")
        print(f"| {a} | {b} | {len(ad)}/{len(ld)} | {med(ap):.2f} | {med(lp):.2f} | "
              f"{med(ad):.3f} | {med(ld):.3f} | {ratio:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1])
