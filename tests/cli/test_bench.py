"""End-to-end tests of `airavata bench` on the tiny stories260K model.

The local benchmark runs the model and its NF4, int8 and bf16 copies made
by `airavata quantize`; the server benchmark runs against `airavata serve`
on 127.0.0.1, a port that refuses connections and a server that returns
garbage.
"""
import http.server
import json
import math
import re
import socket
import threading

import pytest

from server_util import Server

FAST = ["--prompt-tokens", "16", "--new-tokens", "4", "--repetitions", "2"]
METRICS = ["load_s", "prompt_tps", "decode_tps", "ttft_ms", "latency_en_ms", "rps_en",
           "latency_hi_ms", "rps_hi"]


@pytest.fixture(scope="module")
def stories(shared_dir):
    return shared_dir / "models" / "stories260K"


@pytest.fixture(scope="module")
def variants(stories, airavata_bin, tmp_path_factory):
    """stories260K (F32) and its bf16, int8 and NF4 copies."""
    import subprocess
    out = {"f32": stories}
    root = tmp_path_factory.mktemp("variants")
    for kind in ("bf16", "int8", "nf4"):
        proc = subprocess.run([airavata_bin, "quantize", "-m", str(stories), "-o",
                               str(root / kind), "--type", kind, "-q"], capture_output=True)
        assert proc.returncode == 0, proc.stderr.decode()
        out[kind] = root / kind
    return out


def test_bench_table_structure(run, stories):
    proc = run("bench", "-m", stories, *FAST, check=True)
    lines = [l for l in proc.stdout.decode().splitlines() if l.startswith("|")]
    assert len(lines) == 3  # header, separator, one model
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:3] == ["model", "size (MiB)", "peak RSS (MiB)"]
    assert "decode tok/s" in header and "req/s hi" in header
    row = [c.strip() for c in lines[2].strip("|").split("|")]
    assert len(row) == len(header)
    for cell in row[3:]:
        median = float(cell.split()[0])
        assert math.isfinite(median) and median > 0, cell
        low, high = map(float, re.search(r"\[(.*), (.*)\]", cell).groups())
        assert low <= median <= high, cell


def test_bench_json_sizes_ordered(run, variants):
    args = []
    for kind in ("nf4", "int8", "bf16", "f32"):
        args += ["-m", variants[kind]]
    proc = run("bench", *args, *FAST, "--json", check=True)
    report = json.loads(proc.stdout)
    models = report["models"]
    assert [m["model"] for m in models] == [str(variants[k]) for k in
                                            ("nf4", "int8", "bf16", "f32")]
    sizes = [m["size_bytes"] for m in models]
    assert sizes[0] < sizes[1] < sizes[2] < sizes[3], sizes
    for m in models:
        assert m["ok"] and m["repetitions_done"] == 2
        assert m["peak_rss_bytes"] > 1 << 20
        for key in METRICS:
            summary = m[key]
            assert len(summary["values"]) == 2
            assert all(math.isfinite(v) and v > 0 for v in summary["values"]), key
            assert summary["min"] <= summary["median"] <= summary["max"]


def test_bench_concurrency_and_csv(run, stories):
    proc = run("bench", "-m", stories, *FAST, "--concurrency", "3", "--csv", check=True)
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("model,size_bytes,peak_rss_bytes,repetitions_done,")
    assert len(lines) == 2
    cells = lines[1].split(",")
    assert len(cells) == len(lines[0].split(","))
    assert all(c for c in cells)


def test_bench_partial_run_reports_measured(run, stories, tmp_path):
    proc = run("bench", "-m", stories, "-m", tmp_path / "absent", *FAST, "--json")
    assert proc.returncode == 1
    assert b"absent" in proc.stderr
    report = json.loads(proc.stdout)
    good, bad = report["models"]
    assert good["ok"] and good["repetitions_done"] == 2
    assert not bad["ok"] and bad["repetitions_done"] == 0


def test_bench_chart_svg(run, variants, tmp_path):
    chart = tmp_path / "bench.svg"
    run("bench", "-m", variants["nf4"], "-m", variants["f32"], *FAST, "--chart", chart,
        check=True)
    svg = chart.read_text()
    assert svg.startswith("<?xml") and svg.rstrip().endswith("</svg>")
    assert svg.count("<circle") == 2


def test_bench_no_progress_without_terminal(run, stories):
    proc = run("bench", "-m", stories, *FAST, check=True)
    assert b"\r" not in proc.stderr


def test_bench_prompt_too_long_error(run, stories):
    proc = run("bench", "-m", stories, "--prompt-tokens", "600", "--repetitions", "1")
    assert proc.returncode == 1
    assert b"lower --prompt-tokens" in proc.stderr


def test_bench_usage_errors(run, stories):
    assert run("bench").returncode == 2
    assert run("bench", "-m", stories, "--url", "http://127.0.0.1:1").returncode == 2
    assert run("bench", "-m", stories, "--concurrency", "0").returncode == 2


@pytest.mark.parametrize("api", ["generate", "openai"])
def test_bench_url_own_server(run, airavata_bin, stories, tmp_path, api):
    srv = Server(airavata_bin, stories, tmp_path / "log")
    try:
        proc = run("bench", "--url", srv.url, "--api", api, "--new-tokens", "4",
                   "--repetitions", "2", "--concurrency", "2", "--json", check=True)
    finally:
        srv.stop()
    report = json.loads(proc.stdout)
    assert report["api"] == api
    for prompt in report["prompts"]:
        assert prompt["requests"] == 4
        assert prompt["latency_ms"]["median"] > 0
        assert prompt["requests_per_s"]["median"] > 0


def test_bench_url_refused(run):
    with socket.socket() as s:  # a port that was free a moment ago refuses connections
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run("bench", "--url", f"http://127.0.0.1:{port}", "--repetitions", "1")
    assert proc.returncode == 1
    message = proc.stderr.decode()
    assert f"127.0.0.1:{port}/generate failed" in message
    assert "| en | 0 |" in proc.stdout.decode()


class GarbageHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b"<html>not json</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_bench_url_garbage_answer(run):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), GarbageHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        proc = run("bench", "--url", f"http://127.0.0.1:{server.server_port}",
                   "--repetitions", "1")
    finally:
        server.shutdown()
        server.server_close()
    assert proc.returncode == 1
    assert b"not JSON" in proc.stderr
