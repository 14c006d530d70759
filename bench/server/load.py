"""Closed-loop HTTP load generator for the server benchmark.

`--clients` threads each send one request, wait for the response, and send the
next, until `--requests` requests have been sent or `--time-limit` seconds
have passed. Requests alternate between an English and a Hindi instruction
(the prompts of `airavata bench`). The summary gives the aggregate generated
tokens/s (all generated tokens / wall time from the first request to the last
response), requests/s and the p50/p95 latency.

Generated tokens are counted from, in order of preference: the OpenAI
`usage.completion_tokens` field, the X-Generated-Tokens header that
bench/fastapi_app/app.py sends, or re-tokenizing the completion text with the
model's tokenizer.model (sentencepiece). The summary records which one was
used, because re-tokenizing can differ from the ids the server sampled.

Uses only the standard library, plus sentencepiece for the last method.
"""
import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request

PROMPTS = [("en", "how to manage time effectively?"),
           ("hi", "समय का प्रबंधन कैसे करें?")]

# Sampling of the replaced FastAPI service (transformers' top_k default is 50),
# sent to the OpenAI API too so that every server samples the same way.
SAMPLING = {"temperature": 0.7, "top_p": 0.9, "top_k": 50}

MAX_CLIENTS = 256
MAX_REQUESTS = 100000


def http_json(url, body, timeout):
    """POST `body` as JSON (GET when None); return (status, headers, parsed JSON)."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.headers, json.loads(response.read().decode("utf-8"))


def openai_model_id(base_url, timeout):
    """Return the first model id that GET /v1/models lists."""
    _, _, listing = http_json(base_url + "/v1/models", None, timeout)
    return listing["data"][0]["id"]


class Counter:
    """Counts generated tokens, preferring what the server reports."""

    def __init__(self, tokenizer_path):
        self.tokenizer_path = tokenizer_path
        self.processor = None
        self.lock = threading.Lock()

    def retokenize(self, text):
        with self.lock:
            if self.processor is None:
                if not self.tokenizer_path:
                    raise RuntimeError("the server reports no token count; pass --tokenizer "
                                       "PATH/tokenizer.model to count by re-tokenizing")
                import sentencepiece
                self.processor = sentencepiece.SentencePieceProcessor(
                    model_file=self.tokenizer_path)
            return len(self.processor.encode(text))

    def count(self, api, prompt, headers, payload):
        """Return (generated tokens, method, completion text) of one response."""
        if api == "openai":
            text = payload["choices"][0]["text"]
            usage = payload.get("usage") or {}
            if isinstance(usage.get("completion_tokens"), int):
                return usage["completion_tokens"], "usage", text
            return self.retokenize(text), "retokenized", text
        full = payload["generated_text"]
        text = full[len(prompt):] if full.startswith(prompt) else full
        header = headers.get("X-Generated-Tokens")
        if header is not None:
            return int(header), "header", text
        return self.retokenize(text), "retokenized", text


def build_body(args, model_id, prompt):
    if args.api == "openai":
        body = {"model": model_id, "prompt": prompt, "max_tokens": args.new_tokens}
        body.update(SAMPLING)
    else:
        body = {"prompt": prompt, "max_new_tokens": args.new_tokens}
    body.update(args.extra)
    return body


def send_one(args, model_id, counter, index):
    """Send request `index`; return its record (latency in seconds)."""
    name, prompt = PROMPTS[index % len(PROMPTS)]
    path = "/v1/completions" if args.api == "openai" else "/generate"
    record = {"index": index, "prompt": name}
    started = time.perf_counter()
    try:
        _, headers, payload = http_json(args.url + path, build_body(args, model_id, prompt),
                                       args.timeout)
        record["latency_s"] = time.perf_counter() - started
        tokens, method, text = counter.count(args.api, prompt, headers, payload)
        record.update(tokens=tokens, count_method=method, text=text)
    except urllib.error.HTTPError as e:
        detail = e.read()[:500].decode("utf-8", "replace")
        record["error"] = f"HTTP {e.code} from {path}: {detail}"
    except (OSError, ValueError, KeyError, IndexError, TypeError, RuntimeError) as e:
        record["error"] = f"{type(e).__name__} on {path}: {e}"
    record["end_s"] = time.perf_counter()
    return record


def percentile(sorted_values, q):
    """Return the q-th percentile (0-100) with linear interpolation between ranks."""
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def summarize(args, records, wall_s, stopped_by_time):
    ok = [r for r in records if "error" not in r]
    latencies = sorted(r["latency_s"] for r in ok)
    tokens = sum(r["tokens"] for r in ok)
    methods = sorted({r["count_method"] for r in ok})

    def ms(value):
        return None if value is None else round(value * 1e3, 3)

    return {
        "url": args.url, "api": args.api, "clients": args.clients,
        "new_tokens": args.new_tokens, "requests_sent": len(records),
        "requests_ok": len(ok), "requests_failed": len(records) - len(ok),
        "stopped_by_time_limit": stopped_by_time, "wall_s": round(wall_s, 4),
        "generated_tokens": tokens,
        "tokens_per_request_mean": round(tokens / len(ok), 3) if ok else None,
        "tokens_per_s": round(tokens / wall_s, 4) if ok and wall_s > 0 else None,
        "requests_per_s": round(len(ok) / wall_s, 4) if ok and wall_s > 0 else None,
        "latency_ms": {"p50": ms(percentile(latencies, 50)), "p95": ms(percentile(latencies, 95)),
                       "mean": ms(sum(latencies) / len(latencies)) if ok else None,
                       "min": ms(latencies[0]) if ok else None,
                       "max": ms(latencies[-1]) if ok else None},
        "count_methods": methods,
        "loadavg_start": args.loadavg_start, "loadavg_end": read_loadavg(),
        "errors": [r["error"] for r in records if "error" in r][:5],
    }


def read_loadavg():
    """Return the 1, 5 and 15 minute load averages, or None off Linux."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def run_load(args, model_id, counter):
    """Run the closed loop; return (records, wall seconds, stopped by the time limit)."""
    records, lock = [], threading.Lock()
    args.loadavg_start = read_loadavg()
    next_index = [0]
    stopped = [False]
    started = time.perf_counter()
    deadline = started + args.time_limit

    def client():
        while True:
            with lock:
                if next_index[0] >= args.requests:
                    return
                if time.perf_counter() >= deadline:
                    stopped[0] = True
                    return
                index = next_index[0]
                next_index[0] += 1
            record = send_one(args, model_id, counter, index)
            with lock:
                records.append(record)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max((r["end_s"] for r in records), default=time.perf_counter())
    return records, end - started, stopped[0]


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--api", choices=["generate", "openai"], default="generate",
                        help="POST /generate or POST /v1/completions (default generate)")
    parser.add_argument("--clients", type=int, default=1, help="concurrent clients (default 1)")
    parser.add_argument("--requests", type=int, default=16,
                        help="requests to send in total, warm-up excluded (default 16)")
    parser.add_argument("--new-tokens", type=int, default=20,
                        help="max_new_tokens / max_tokens per request (default 20)")
    parser.add_argument("--time-limit", type=float, default=600,
                        help="seconds after which no new request is sent (default 600)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="seconds one request may take (default 600)")
    parser.add_argument("--extra", default="{}",
                        help="JSON object merged into every request body, e.g. "
                             "'{\"ignore_eos\": true}'")
    parser.add_argument("--tokenizer", help="tokenizer.model used to count tokens when the "
                        "server reports no count")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed warm-up request per prompt")
    parser.add_argument("--out", help="write the summary and per-request records here (JSON)")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        parser.error(f"--clients {args.clients} is out of range; use 1 to {MAX_CLIENTS}")
    if not 1 <= args.requests <= MAX_REQUESTS:
        parser.error(f"--requests {args.requests} is out of range; use 1 to {MAX_REQUESTS}")
    if args.new_tokens < 1:
        parser.error(f"--new-tokens {args.new_tokens} must be at least 1")
    try:
        args.extra = json.loads(args.extra)
    except ValueError as e:
        parser.error(f"--extra is not valid JSON: {e}")
    if not isinstance(args.extra, dict):
        parser.error("--extra must be a JSON object")
    args.url = args.url.rstrip("/")
    return args


def main(argv=None):
    args = parse_args(argv)
    counter = Counter(args.tokenizer)
    model_id = None
    if args.api == "openai":
        try:
            model_id = openai_model_id(args.url, args.timeout)
        except (OSError, ValueError, KeyError, IndexError) as e:
            print(f"load.py: GET {args.url}/v1/models failed: {e}", file=sys.stderr)
            return 1
    if not args.no_warmup:
        for i in range(len(PROMPTS)):
            record = send_one(args, model_id, counter, i)
            if "error" in record:
                print(f"load.py: warm-up request failed: {record['error']}", file=sys.stderr)
                return 1

    records, wall_s, stopped = run_load(args, model_id, counter)
    summary = summarize(args, records, wall_s, stopped)
    if args.out:
        records.sort(key=lambda r: r["index"])
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"summary": summary, "requests": records}, f, ensure_ascii=False, indent=1)
    print(json.dumps(summary, ensure_ascii=False))
    if summary["requests_failed"]:
        print(f"load.py: {summary['requests_failed']} of {len(records)} requests failed; first "
              f"error: {summary['errors'][0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
