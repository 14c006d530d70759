"""scripts/start.sh, the README's one-command start, against a mock hub.

The script pulls the model from the mock on 127.0.0.1, quantizes it once,
and serves it; a second start reuses the cached download and the quantized
copy. AIRAVATA_BIN makes the script use the binary under test and skip the
install and build steps.
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from mock_hub import MockHub, Repo

REPO = pathlib.Path(__file__).resolve().parents[2]
REPO_ID = "test-org/stories260K"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def hub(shared_dir):
    mock = MockHub()
    mock.add_repo(Repo.from_dir(REPO_ID, shared_dir / "models" / "stories260K"))
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture
def env(tmp_path, hub, airavata_bin):
    result = {k: v for k, v in os.environ.items()
              if not k.lower().endswith("_proxy") and not k.startswith("HF_")}
    result.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf_home"),
                  NO_PROXY="127.0.0.1", AIRAVATA_BIN=airavata_bin, MODEL=REPO_ID,
                  PORT=str(free_port()), PARALLEL="2", THREADS="1")
    return result


def start(env):
    return subprocess.Popen([str(REPO / "scripts" / "start.sh")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_healthy(env, proc, timeout=60):
    url = f"http://127.0.0.1:{env['PORT']}/health"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"start.sh exited {proc.returncode}: {proc.stderr.read()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy")


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def test_start_pulls_quantizes_and_serves(env, hub):
    proc = start(env)
    try:
        wait_healthy(env, proc)
        port = env["PORT"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/chat", timeout=5) as response:
            assert b"<html" in response.read().lower()
        body = json.dumps({"prompt": "Once upon a time", "max_new_tokens": 8}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert json.load(response)["generated_text"].startswith("Once upon a time")
    finally:
        code, err = stop(proc)
    assert code == 0
    assert "quantizing" in err
    assert f"http://127.0.0.1:{env['PORT']}/chat" in err
    quantized = list((pathlib.Path(env["HF_HOME"]) / "airavata").glob("*-nf4"))
    assert len(quantized) == 1
    assert json.loads((quantized[0] / "config.json").read_text())["quantization_config"]

    # A second start downloads nothing and reuses the NF4 copy.
    hub.reset_counters()
    proc = start(env)
    try:
        wait_healthy(env, proc)
    finally:
        code, err = stop(proc)
    assert code == 0
    assert "using the cached copy" in err
    assert "using the nf4 copy" in err
    assert hub.file_requests() == []


def test_start_without_network_or_cache(env):
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"
    proc = subprocess.run([str(REPO / "scripts" / "start.sh")], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "is not in the Hugging Face cache" in proc.stderr
    assert "MODEL=/path/to/model/dir" in proc.stderr


def test_start_offline_without_cache(env):
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([str(REPO / "scripts" / "start.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1
    assert "HF_HUB_OFFLINE=1 forbids downloading" in proc.stderr


def test_start_rejects_unknown_quant(env):
    env["QUANT"] = "q3"
    proc = subprocess.run([str(REPO / "scripts" / "start.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert "QUANT=q3 is not supported" in proc.stderr
