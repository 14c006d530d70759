"""Tests of `airavata serve` against the real server and the stories260K model.

Each server runs on 127.0.0.1 with a port it picks itself. The main server
uses a small per-step batch (--batch 48) so that prompts longer than the
budget are prefilled over several steps while other streams decode.
"""
import concurrent.futures
import json
import os
import re
import signal
import socket
import threading
import time

import openai
import pytest
import requests

from server_util import Server, open_stream_socket, post_raw, read_sse

PROMPTS = [
    "Once upon a time",
    "Lily and Ben went to the park. They saw a big dog and",
    "The little bird could not fly, so",
    "Tom had a red ball. He liked to throw it high in the sky. One day the ball went over the "
    "fence and into the garden of an old man. Tom was scared, but he knocked on the door and",
    "One day, a cat",
    "Sue found a shiny rock",
]


@pytest.fixture(scope="module")
def model_dir(shared_dir):
    return shared_dir / "models" / "stories260K"


@pytest.fixture(scope="module")
def server(airavata_bin, model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = Server(airavata_bin, model_dir, log, "--parallel", 4, "--batch", 48, "--timeout", 2,
                 "--max-body", 65536, "--threads", 1)
    yield srv
    assert srv.stop() == 0, srv.log_text()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def complete(client, prompt, **kw):
    return client.completions.create(model="stories260K", prompt=prompt, **kw)


# ---- basic routes ---------------------------------------------------------

def test_serve_help_and_bad_options(run):
    help_text = run("serve", "--help", check=True).stdout.decode()
    for option in ["--host", "--port", "--parallel", "--ctx", "--threads", "--api-key",
                   "--max-queue", "--timeout", "--kv-tokens", "--model-name", "--log-prompts"]:
        assert option in help_text, option
    assert run("serve").returncode == 2
    assert run("serve", "-m", "x", "--port", "70000").returncode == 2
    assert run("serve", "-m", "x", "--bogus").returncode == 2


def test_serve_missing_model_fails(run, tmp_path):
    proc = run("serve", "-m", tmp_path / "absent", "--port", "0", timeout=60)
    assert proc.returncode == 1
    assert b"cannot load the model" in proc.stderr


def test_health_root_and_models(server, client):
    assert requests.get(server.url + "/health").json() == {"status": "ok"}
    root = requests.get(server.url + "/")
    assert root.status_code == 200
    assert root.json()["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == ["stories260K"]
    assert client.models.retrieve("stories260K").id == "stories260K"


def test_openapi_docs_and_chat_pages(server):
    spec = requests.get(server.url + "/openapi.json").json()
    for path in ["/generate", "/v1/models", "/v1/completions", "/v1/chat/completions",
                 "/health", "/metrics", "/chat", "/docs", "/"]:
        assert path in spec["paths"], path
    docs = requests.get(server.url + "/docs")
    assert docs.headers["Content-Type"].startswith("text/html")
    assert "openapi.json" in docs.text
    chat = requests.get(server.url + "/chat")
    assert chat.headers["Content-Type"].startswith("text/html")
    assert "/v1/chat/completions" in chat.text
    assert "http://" not in chat.text
    assert "https://" not in chat.text


# ---- /generate --------------------------------------------------------------

def test_generate_returns_prompt_and_completion(server):
    resp = requests.post(server.url + "/generate", json={"prompt": "Once upon a time"})
    assert resp.status_code == 200
    body = resp.json()
    assert list(body) == ["generated_text"]
    assert body["generated_text"].startswith("Once upon a time")
    assert len(body["generated_text"]) > len("Once upon a time")


def test_generate_seed_is_reproducible(server):
    req = {"prompt": "Once upon a time", "max_new_tokens": 40, "seed": 7, "temperature": 1.0}
    first = requests.post(server.url + "/generate", json=req).json()
    second = requests.post(server.url + "/generate", json=req).json()
    assert first == second
    other = requests.post(server.url + "/generate", json={**req, "seed": 8}).json()
    assert other != first


def test_generate_greedy_matches_cli(server, run, model_dir):
    cli = run("generate", "-m", model_dir, "-p", "Once upon a time", "-n", 30, "--temp", 0,
              check=True)
    resp = requests.post(server.url + "/generate", json={
        "prompt": "Once upon a time", "max_new_tokens": 30, "temperature": 0})
    assert resp.json()["generated_text"] == "Once upon a time" + cli.stdout.decode().rstrip("\n")


# ---- OpenAI API ------------------------------------------------------------

def test_completion_stream_matches_non_stream(client):
    full = complete(client, PROMPTS[1], max_tokens=40, temperature=0)
    assert full.object == "text_completion"
    assert full.usage.completion_tokens == 40
    assert full.usage.prompt_tokens > 0
    assert full.choices[0].finish_reason == "length"
    chunks = list(complete(client, PROMPTS[1], max_tokens=40, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_chat_completion_and_stream(client):
    messages = [{"role": "system", "content": "You tell stories."},
                {"role": "user", "content": "Tell me about a dog."}]
    full = client.chat.completions.create(model="stories260K", messages=messages,
                                          max_tokens=30, temperature=0)
    assert full.object == "chat.completion"
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage.total_tokens == full.usage.prompt_tokens + full.usage.completion_tokens

    stream = client.chat.completions.create(model="stories260K", messages=messages,
                                            max_completion_tokens=30, temperature=0,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_stop_string_cuts_text(client):
    full = complete(client, "Once upon a time", max_tokens=30, temperature=0).choices[0].text
    assert " Lily" in full
    cut = complete(client, "Once upon a time", max_tokens=30, temperature=0, stop=[" Lily"])
    assert cut.choices[0].text == full[:full.index(" Lily")]
    assert cut.choices[0].finish_reason == "stop"
    chunks = list(complete(client, "Once upon a time", max_tokens=30, temperature=0,
                           stop=" Lily", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == cut.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_n_choices_with_seed(client):
    resp = complete(client, "Once upon a time", max_tokens=20, n=3, seed=11, temperature=1.0)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert len({c.text for c in resp.choices}) > 1
    again = complete(client, "Once upon a time", max_tokens=20, n=3, seed=11, temperature=1.0)
    assert [c.text for c in again.choices] == [c.text for c in resp.choices]
    assert 3 <= resp.usage.completion_tokens <= 60
    stream = list(complete(client, "Once upon a time", max_tokens=20, n=3, seed=11,
                           temperature=1.0, stream=True))
    for i in range(3):
        text = "".join(c.choices[0].text for c in stream if c.choices[0].index == i)
        assert text == resp.choices[i].text


def test_hindi_stream_is_valid_utf8(server):
    resp = requests.post(server.url + "/v1/completions", stream=True, json={
        "model": "stories260K", "prompt": "एक बार की बात है, एक छोटी लड़की", "max_tokens": 60,
        "temperature": 1.0, "seed": 3, "stream": True})
    assert resp.status_code == 200
    raw = resp.raw.read()
    raw.decode("utf-8")  # raises on invalid UTF-8
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]"
    for e in events[:-1]:
        json.loads(e)["choices"][0]["text"].encode("utf-8")


# ---- bad input ------------------------------------------------------------

BAD_REQUESTS = [
    # (route, body, status, param or None, text the message must contain)
    ("/generate", b"{not json", 400, None, "not valid JSON"),
    ("/generate", b"[1, 2]", 400, None, "JSON object"),
    ("/generate", b'{"prompt": 5}', 400, "prompt", "string"),
    ("/generate", b'{"max_new_tokens": 5}', 400, "prompt", "missing"),
    ("/generate", b'{"prompt": "a", "max_tokens": 5}', 400, "max_tokens", "unknown field"),
    ("/generate", b'{"prompt": "a", "max_new_tokens": "5"}', 400, "max_new_tokens", "integer"),
    ("/generate", b'{"prompt": "a", "max_new_tokens": 0}', 400, "max_new_tokens", "from 1"),
    ("/generate", b'{"prompt": "a", "max_new_tokens": -3}', 400, "max_new_tokens", "from 1"),
    ("/generate", b'{"prompt": "a", "max_new_tokens": 100000}', 400, "max_new_tokens", "512"),
    ("/generate", b'{"prompt": "a", "temperature": true}', 400, "temperature", "number"),
    ("/generate", b'{"prompt": "a", "top_p": 1.5}', 400, "top_p", "from 0"),
    ("/generate", b'{"prompt": "\xff\xfe"}', 400, None, "UTF-8"),
    ("/generate", b'{"prompt": "a", "prompt": "b"}', 400, None, "duplicate"),
    ("/v1/completions", b'{"model": "stories260K", "prompt": "a", "max_tokens": 0}', 400,
     "max_tokens", "from 1"),
    ("/v1/completions", b'{"model": "gpt-4", "prompt": "a"}', 404, "model", "does not exist"),
    ("/v1/completions", b'{"prompt": "a"}', 400, "model", "missing"),
    ("/v1/completions", b'{"model": "stories260K", "prompt": "a", "logprobs": 2}', 400,
     "logprobs", "not supported"),
    ("/v1/completions", b'{"model": "stories260K", "prompt": "a", "n": 9}', 400, "n", "from 1"),
    ("/v1/completions", b'{"model": "stories260K", "prompt": [1, 99999]}', 400, "prompt",
     "vocabulary"),
    ("/v1/completions", b'{"model": "stories260K", "prompt": "a", "stop": [1]}', 400, "stop",
     "string"),
    ("/v1/chat/completions", b'{"model": "stories260K", "messages": []}', 400, "messages",
     "non-empty"),
    ("/v1/chat/completions", b'{"model": "stories260K", "messages": [{"role": "robot", '
     b'"content": "hi"}]}', 400, "messages[0].role", "system"),
    ("/v1/chat/completions", b'{"model": "stories260K", "messages": [{"role": "user"}]}', 400,
     "messages[0].content", "missing"),
    ("/v1/chat/completions", b'{"model": "stories260K", "messages": [{"role": "user", '
     b'"content": "hi"}], "logprobs": true}', 400, "logprobs", "not supported"),
]


@pytest.mark.parametrize("route,body,status,param,text", BAD_REQUESTS)
def test_bad_request_gets_error_json(server, route, body, status, param, text):
    code, payload = post_raw(server.port, route, body)
    assert code == status, payload
    err = payload["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param
    assert text.lower() in err["message"].lower(), err["message"]


def test_prompt_longer_than_context(server):
    code, payload = post_raw(server.port, "/generate",
                             json.dumps({"prompt": "Once upon a time " * 300}).encode())
    assert code == 400
    message = payload["error"]["message"]
    assert re.search(r"has \d+ tokens but the context holds 512", message), message
    assert payload["error"]["code"] == "context_length_exceeded"
    assert payload["detail"] == message


def test_body_over_limit_is_413(server):
    body = json.dumps({"prompt": "a" * 70000}).encode()
    code, payload = post_raw(server.port, "/generate", body)
    assert code == 413
    assert payload["error"]["code"] == "request_too_large"


def test_unknown_route_and_method(server):
    resp = requests.get(server.url + "/v2/nothing")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    resp = requests.get(server.url + "/generate")
    assert resp.status_code == 405
    assert resp.headers["Allow"] == "POST"
    resp = requests.delete(server.url + "/health")
    assert resp.status_code == 405


def test_half_sent_request_times_out(server):
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"pro")
    start = time.time()
    data = sock.recv(4096)
    elapsed = time.time() - start
    sock.close()
    assert data == b""
    assert 1.0 < elapsed < 8.0
    assert requests.get(server.url + "/health").status_code == 200


def test_slow_request_body_times_out(server):
    # Each byte comes before the idle timeout, but the whole body does not
    # arrive within --timeout 2 seconds.
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    start = time.time()
    closed = False
    for _ in range(20):
        time.sleep(0.4)
        try:
            sock.sendall(b" ")
        except OSError:
            closed = True
            break
        sock.settimeout(0.01)
        try:
            if sock.recv(4096) == b"":
                closed = True
                break
        except socket.timeout:
            pass
    elapsed = time.time() - start
    sock.close()
    assert closed
    assert elapsed < 5.0
    assert "not received within 2 s" in server.log_text()


# ---- batching, cancellation -------------------------------------------------

def test_concurrent_streams_match_solo_runs(server):
    def stream(prompt):
        resp = requests.post(server.url + "/v1/completions", stream=True, json={
            "model": "stories260K", "prompt": prompt, "max_tokens": 120, "temperature": 0,
            "stream": True, "ignore_eos": True})
        events = read_sse(resp)
        assert events[-1] == "[DONE]"
        return "".join(e["choices"][0]["text"] for e in events[:-1])

    solo = [stream(p) for p in PROMPTS]
    before = server.metrics()
    with concurrent.futures.ThreadPoolExecutor(len(PROMPTS) * 2) as pool:
        together = list(pool.map(stream, PROMPTS * 2))
    assert together == solo * 2
    after = server.metrics()
    assert after["airavata_generated_tokens_total"] - before["airavata_generated_tokens_total"] \
        == 120 * len(PROMPTS) * 2
    # Batching: the forward steps ran several sequences each on average.
    steps = after["airavata_forward_steps_total"] - before["airavata_forward_steps_total"]
    sequences = (after["airavata_forward_step_sequences_total"]
                 - before["airavata_forward_step_sequences_total"])
    assert sequences / steps > 1.5, f"{sequences} sequences in {steps} steps"


def wait_for(predicate, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_disconnect_frees_kv_blocks(server):
    before = server.metrics()["airavata_requests_cancelled_total"]
    sock, _ = open_stream_socket(server.port, "/v1/completions", {
        "model": "stories260K", "prompt": "Once upon a time", "max_tokens": 500,
        "temperature": 0, "stream": True, "ignore_eos": True})
    sock.close()
    assert wait_for(lambda: server.metrics()["airavata_requests_cancelled_total"] == before + 1)
    m = server.metrics()
    assert m["airavata_kv_cache_blocks_used"] == 0
    assert m["airavata_active_sequences"] == 0
    line = [ln for ln in server.log_text().splitlines() if "client disconnected" in ln
            and "generated_tokens=" in ln][-1]
    generated = int(re.search(r"generated_tokens=(\d+)", line).group(1))
    assert generated < 500


def test_metrics_exposition(server):
    requests.post(server.url + "/generate", json={"prompt": "Once", "max_new_tokens": 4})
    text = requests.get(server.url + "/metrics").text
    for name in ["airavata_requests_total{", "airavata_prompt_tokens_total",
                 "airavata_generated_tokens_total", "airavata_time_to_first_token_seconds_bucket",
                 "airavata_time_per_output_token_seconds_bucket", "airavata_queue_depth",
                 "airavata_active_sequences", "airavata_kv_cache_blocks_used",
                 "airavata_kv_cache_blocks_total"]:
        assert name in text, name
    m = server.metrics()
    assert m['airavata_requests_total{route="/generate",status="200"}'] >= 1
    assert m["airavata_kv_cache_blocks_total"] == 128


# ---- separate servers: auth, queue limit, shutdown ------------------------

def test_api_key_required(airavata_bin, model_dir, tmp_path):
    srv = Server(airavata_bin, model_dir, tmp_path / "log", "--api-key", "s3cret")
    try:
        body = {"model": "stories260K", "prompt": "Once", "max_tokens": 5}
        resp = requests.post(srv.url + "/v1/completions", json=body)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "invalid_api_key"
        resp = requests.post(srv.url + "/v1/completions", json=body,
                             headers={"Authorization": "Bearer wrong"})
        assert resp.status_code == 401
        assert requests.get(srv.url + "/health").status_code == 200
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(**body).usage.completion_tokens == 5
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.completions.create(**body)
        assert "s3cret" not in srv.log_text()
    finally:
        assert srv.stop() == 0


def test_full_queue_gets_503(airavata_bin, model_dir, tmp_path):
    srv = Server(airavata_bin, model_dir, tmp_path / "log", "--parallel", 1, "--max-queue", 1,
                 "--threads", 1)
    try:
        body = {"model": "stories260K", "prompt": "Once upon a time", "max_tokens": 480,
                "ignore_eos": True, "temperature": 0}
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(
                lambda _: requests.post(srv.url + "/v1/completions", json=body), range(6)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2
        assert 503 in codes
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["Retry-After"] == "1"
        assert busy.json()["error"]["code"] == "server_overloaded"
        texts = {r.json()["choices"][0]["text"] for r in responses if r.status_code == 200}
        assert len(texts) == 1
    finally:
        assert srv.stop() == 0


def test_sigterm_finishes_running_stream(airavata_bin, model_dir, tmp_path):
    srv = Server(airavata_bin, model_dir, tmp_path / "log", "--threads", 1)
    sock, received = open_stream_socket(srv.port, "/v1/completions", {
        "model": "stories260K", "prompt": "Once upon a time", "max_tokens": 400,
        "temperature": 0, "stream": True, "ignore_eos": True})
    srv.proc.send_signal(signal.SIGTERM)
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    sock.close()
    assert srv.proc.wait(timeout=30) == 0
    assert b"data: [DONE]" in received
    assert b'"finish_reason":"length"' in received
    with pytest.raises(requests.ConnectionError):
        requests.get(srv.url + "/health", timeout=2)
    log = srv.log_text()
    assert "not accepting new connections" in log
    assert "stopped" in log
    srv.log.close()


def test_second_signal_exits_at_once(airavata_bin, model_dir, tmp_path):
    srv = Server(airavata_bin, model_dir, tmp_path / "log", "--timeout", 60)
    # A request whose body never completes keeps the first shutdown waiting.
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    time.sleep(0.3)
    srv.proc.send_signal(signal.SIGTERM)
    assert wait_for(lambda: "not accepting new connections" in srv.log_text())
    assert srv.proc.poll() is None
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=10) == 128 + signal.SIGTERM
    sock.close()
    srv.log.close()


def test_health_is_503_while_loading(airavata_bin, model_dir, tmp_path):
    # config.json is a named pipe, so loading blocks until the test writes it.
    loading = tmp_path / "model"
    loading.mkdir()
    for f in model_dir.iterdir():
        if f.name != "config.json":
            (loading / f.name).symlink_to(f)
    os.mkfifo(loading / "config.json")
    srv = Server(airavata_bin, loading, tmp_path / "log", wait_ready=False)
    resp = requests.get(srv.url + "/health", timeout=10)
    assert resp.status_code == 503
    assert resp.json() == {"status": "loading"}
    resp = requests.post(srv.url + "/generate", json={"prompt": "Once"}, timeout=10)
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "model_loading"

    # The loader may reject a config that is not a regular file and close the
    # pipe before it is written. Either way loading ends.
    try:
        (loading / "config.json").write_bytes((model_dir / "config.json").read_bytes())
    except BrokenPipeError:
        pass
    def loaded_or_exited():
        if srv.proc.poll() is not None:
            return True
        try:
            return requests.get(srv.url + "/health", timeout=10).status_code == 200
        except requests.ConnectionError:
            return srv.proc.poll() is not None

    assert wait_for(loaded_or_exited)
    if srv.proc.poll() is not None:
        assert srv.proc.returncode == 1
        assert "cannot load the model" in srv.log_text()
        srv.log.close()
    else:
        assert srv.stop() == 0


def test_prompts_are_logged_only_on_request(server, airavata_bin, model_dir, tmp_path):
    assert PROMPTS[1] not in server.log_text()
    srv = Server(airavata_bin, model_dir, tmp_path / "log", "--log-prompts")
    try:
        requests.post(srv.url + "/generate", json={"prompt": "Sue found a shiny rock",
                                                   "max_new_tokens": 4})
        assert "prompt: Sue found a shiny rock" in srv.log_text()
    finally:
        assert srv.stop() == 0
