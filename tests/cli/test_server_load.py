"""Bounded load test of `airavata serve` with wrk (Debian package) and the
Lua script tests/load/mixed.lua: 32 concurrent clients on 127.0.0.1 for
AIRAVATA_LOAD_SECONDS seconds (default 30)."""
import os
import pathlib
import re
import shutil
import subprocess
import time

import requests

from server_util import Server

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "load" / "mixed.lua"


def test_load_has_no_failed_responses(airavata_bin, shared_dir, tmp_path):
    wrk = shutil.which("wrk")
    assert wrk, "wrk is missing: run scripts/install-deps.sh"
    seconds = int(os.environ.get("AIRAVATA_LOAD_SECONDS", "30"))
    srv = Server(airavata_bin, shared_dir / "models" / "stories260K", tmp_path / "server.log",
                 "--parallel", 8, "--max-queue", 64, "--ctx", 256)
    try:
        proc = subprocess.run([wrk, "-t2", "-c32", f"-d{seconds}s", "--timeout", "30s",
                               "-s", str(SCRIPT), srv.url], capture_output=True, text=True,
                              timeout=seconds + 120)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        m = re.search(r"load: ok=(\d+) malformed=(\d+) connect=(\d+) read=(\d+) write=(\d+) "
                      r"status=(\d+) timeout=(\d+)", out)
        assert m, out
        ok, malformed, *errors = map(int, m.groups())
        assert malformed == 0, out
        assert errors == [0, 0, 0, 0, 0], out
        assert ok >= 32, out
        print(out)

        assert requests.get(srv.url + "/health", timeout=10).json() == {"status": "ok"}
        # wrk closes its connections when time is up, mid-request: those
        # sequences are cancelled and must release their KV blocks.
        deadline = time.time() + 10
        while srv.metrics()["airavata_active_sequences"] > 0 and time.time() < deadline:
            time.sleep(0.05)
        metrics = srv.metrics()
        assert metrics["airavata_active_sequences"] == 0
        assert metrics["airavata_kv_cache_blocks_used"] == 0
        assert metrics["airavata_queue_depth"] == 0
        served = sum(v for k, v in metrics.items()
                     if k.startswith("airavata_requests_total") and 'status="200"' in k
                     and "/health" not in k)
        assert served >= ok
    finally:
        assert srv.stop() == 0
