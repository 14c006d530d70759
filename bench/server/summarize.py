"""Write the Markdown report of a bench/server/run.sh results folder.

Reads meta.json and the NAME-cCLIENTS.summary.json files that load.py wrote
and prints two tables: ours vs llama.cpp on POST /v1/completions, and ours vs
the FastAPI app on POST /generate. Each ratio is how many times better ours
is: tokens/s is ours / other, and latency is other / ours, so a value above 1
always favors ours.

Usage: python bench/server/summarize.py RESULTS_DIR > RESULTS_DIR/results.md
"""
import glob
import json
import os
import re
import sys


def load_summaries(folder):
    """Return {server name: {clients: summary}}."""
    runs = {}
    for path in glob.glob(os.path.join(folder, "*-c*.summary.json")):
        match = re.fullmatch(r"(.+)-c(\d+)\.summary\.json", os.path.basename(path))
        if not match:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                summary = json.load(f)
        except ValueError:
            continue  # load.py failed before printing its summary
        runs.setdefault(match.group(1), {})[int(match.group(2))] = summary
    return runs


def number(value, decimals=1):
    return "-" if value is None else f"{value:.{decimals}f}"


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return "-"
    return f"{numerator / denominator:.2f}x"


def latency(summary, key):
    return None if summary is None else summary["latency_ms"][key]


def rate(summary):
    return None if summary is None else summary["tokens_per_s"]


def cell(summary):
    """Format tokens/s, p50 and p95 of one measurement, with failures noted."""
    if summary is None:
        return ["-", "-", "-", "-"]
    note = f" ({summary['requests_failed']} failed)" if summary["requests_failed"] else ""
    if summary["stopped_by_time_limit"]:
        note += " (time limit)"
    return [number(rate(summary)) + note, number(latency(summary, "p50")),
            number(latency(summary, "p95")),
            f"{summary['requests_ok']} x {number(summary['tokens_per_request_mean'])}"]


def comparison_table(ours, other, other_label):
    counts = sorted(set(ours) | set(other))
    lines = [
        f"| clients | ours tok/s | {other_label} tok/s | tok/s ratio | ours p50 ms | "
        f"{other_label} p50 ms | p50 ratio | ours p95 ms | {other_label} p95 ms | p95 ratio | "
        f"ours requests x tokens | {other_label} requests x tokens |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in counts:
        a, b = ours.get(c), other.get(c)
        ca, cb = cell(a), cell(b)
        lines.append(
            f"| {c} | {ca[0]} | {cb[0]} | {ratio(rate(a), rate(b))} | {ca[1]} | {cb[1]} | "
            f"{ratio(latency(b, 'p50'), latency(a, 'p50'))} | {ca[2]} | {cb[2]} | "
            f"{ratio(latency(b, 'p95'), latency(a, 'p95'))} | {ca[3]} | {cb[3]} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    folder = argv[1]
    with open(os.path.join(folder, "meta.json"), encoding="utf-8") as f:
        meta = json.load(f)
    runs = load_summaries(folder)

    print("# Server benchmark\n")
    print(f"- airavata: `{meta['model_dir']}` (quantization: "
          f"{(meta['model_quantization'] or {}).get('quant_method', 'none')}"
          f"{', ' + meta['model_quantization'].get('bnb_4bit_quant_type', 'int8') if meta['model_quantization'] else ''})")
    print(f"- llama.cpp: `{meta['gguf']}` ({meta['gguf_file_type']})")
    print(f"- {meta['new_tokens']} new tokens per request, English and Hindi prompts "
          f"alternating, {meta['threads']} threads per server, up to {meta['requests']} "
          f"requests per client count after one warm-up request per prompt, "
          f"context {meta.get('ctx', '-')} tokens.")
    print(f"- CPU: {meta['cpu']} ({meta['cpus']} logical CPUs); load average at the "
          f"start: {' '.join(meta['loadavg_start'])}.")
    print("- Ratios are ours / other for tokens/s and other / ours for latency, so above "
          "1 favors ours. tokens/s is all generated tokens / wall time of the whole run "
          "at that client count.\n")

    if "ours" in runs or "llamacpp" in runs:
        print("## ours vs llama.cpp (llama-cpp-python server), POST /v1/completions\n")
        print("Sampling temperature 0.7, top_p 0.9, top_k 50; EOS disabled, so each request "
              "generates exactly the requested tokens.\n")
        print(comparison_table(runs.get("ours", {}), runs.get("llamacpp", {}), "llama.cpp"))
        print()
    if "python" in runs or "ours-generate" in runs:
        print("## ours vs the FastAPI app, POST /generate\n")
        print(f"The FastAPI app loads `{meta['python_model']}` with bitsandbytes "
              f"`{meta['python_quant']}` and serves one request at a time. Both servers "
              "sample with temperature 0.7 and top_p 0.9 and stop at EOS, so a request may "
              "generate fewer tokens; the last columns show requests x mean tokens.\n")
        print(comparison_table(runs.get("ours-generate", {}), runs.get("python", {}),
                               "Python"))
        print()
    methods = {name: sorted({m for s in by_count.values() for m in s["count_methods"]})
               for name, by_count in sorted(runs.items())}
    print("Generated tokens counted from: " + "; ".join(
        f"{name} {', '.join(m) or '-'}" for name, m in methods.items()) +
        " (usage: the OpenAI usage field; header: X-Generated-Tokens; retokenized: the "
        "completion text re-tokenized with tokenizer.model, which can differ slightly "
        "from the sampled ids).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
