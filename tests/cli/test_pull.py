"""`airavata pull` against a local mock of the Hugging Face hub.

Every test points HF_ENDPOINT at the mock on 127.0.0.1 (or at a closed local
port), so nothing here reaches the network. The repositories the mock serves
are the real stories260K model, whole and split into shards.
"""
import fcntl
import hashlib
import json
import os
import pathlib
import resource
import socket
import struct
import subprocess

import pytest

from mock_hub import MockHub, Repo, git_blob_sha1

REPO_ID = "test-org/stories260K"
SHARDED_ID = "test-org/stories260K-sharded"
PROMPT = "Once upon a time"
DEFAULT_FILES = {"config.json", "generation_config.json", "model.safetensors",
                 "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"}


def split_safetensors(data, n_shards):
    """Split a safetensors file into shards plus the index transformers writes."""
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    body = data[8 + header_len:]
    names = [n for n in header if n != "__metadata__"]
    files, weight_map = {}, {}
    for k in range(n_shards):
        shard_name = f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        shard_header, chunks, offset = {}, [], 0
        for name in names[k::n_shards]:
            info = dict(header[name])
            start, end = info["data_offsets"]
            chunks.append(body[start:end])
            info["data_offsets"] = [offset, offset + end - start]
            offset += end - start
            shard_header[name] = info
            weight_map[name] = shard_name
        encoded = json.dumps(shard_header).encode()
        encoded += b" " * (-len(encoded) % 8)
        files[shard_name] = struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)
    index = {"metadata": {"total_size": len(body)}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    return files


@pytest.fixture(scope="module")
def stories(shared_dir):
    return shared_dir / "models" / "stories260K"


@pytest.fixture
def hub(stories):
    mock = MockHub()
    mock.add_repo(Repo.from_dir(REPO_ID, stories))
    files = {p.name: p.read_bytes() for p in stories.iterdir()
             if p.is_file() and p.name != "model.safetensors"}
    files.update(split_safetensors((stories / "model.safetensors").read_bytes(), 2))
    mock.add_repo(Repo(SHARDED_ID, files))
    mock.start()
    yield mock
    mock.stop()


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def env(tmp_path, hub, cache):
    """Environment with the mock as hub, a fresh cache and no saved token."""
    result = {k: v for k, v in os.environ.items()
              if not k.lower().endswith("_proxy") and not k.startswith("HF_")}
    result.update(HF_ENDPOINT=hub.endpoint, HF_HUB_CACHE=str(cache),
                  HF_HOME=str(tmp_path / "hf_home"), NO_PROXY="127.0.0.1")
    return result


@pytest.fixture
def airavata(airavata_bin):
    def _run(*args, env, preexec_fn=None, timeout=120):
        return subprocess.run([airavata_bin, *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=timeout, preexec_fn=preexec_fn)
    return _run


def repo_folder(cache, repo_id=REPO_ID):
    return cache / ("models--" + repo_id.replace("/", "--"))


def greedy_text(airavata, model, env):
    proc = airavata("generate", "-m", model, "-p", PROMPT, "--temp", "0", "-n", 24, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def partial_files(cache):
    return list(cache.rglob("*.incomplete"))


# ---- full pull ----------------------------------------------------------


def test_pull_then_generate_offline(airavata, hub, env, cache, stories):
    proc = airavata("pull", REPO_ID, env=env)
    assert proc.returncode == 0, proc.stderr
    snapshot = pathlib.Path(proc.stdout.strip())
    commit = hub.repos[REPO_ID].commit
    assert snapshot == repo_folder(cache) / "snapshots" / commit

    present = {p.name for p in snapshot.iterdir()}
    assert present == DEFAULT_FILES
    for name in DEFAULT_FILES:
        assert (snapshot / name).read_bytes() == (stories / name).read_bytes(), name

    # The weights went through the storage redirect, like LFS files on the hub.
    assert any(r["path"].startswith("/storage/") for r in hub.file_requests())

    offline = dict(env, HF_HUB_OFFLINE="1", HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    assert greedy_text(airavata, REPO_ID, offline) == greedy_text(airavata, stories, env)
    assert greedy_text(airavata, f"{REPO_ID}@main", offline) == greedy_text(airavata, stories, env)


def test_cache_layout_matches_huggingface_hub(airavata, hub, env, cache, stories):
    assert airavata("pull", REPO_ID, env=env).returncode == 0
    folder = repo_folder(cache)
    commit = hub.repos[REPO_ID].commit
    assert (folder / "refs" / "main").read_text() == commit

    for name in DEFAULT_FILES:
        link = folder / "snapshots" / commit / name
        data = (stories / name).read_bytes()
        lfs = name.endswith((".safetensors", ".model"))
        blob = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        assert link.is_symlink(), name
        assert os.readlink(link) == f"../../blobs/{blob}", name
        assert (folder / "blobs" / blob).read_bytes() == data, name
    assert partial_files(cache) == []


def test_sharded_checkpoint_pulls_shards(airavata, hub, env, cache, stories):
    proc = airavata("pull", SHARDED_ID, env=env)
    assert proc.returncode == 0, proc.stderr
    snapshot = pathlib.Path(proc.stdout.strip())
    names = {p.name for p in snapshot.iterdir()}
    assert "model.safetensors.index.json" in names
    assert "model-00001-of-00002.safetensors" in names
    assert "model-00002-of-00002.safetensors" in names
    assert "SOURCE.md" not in names

    offline = dict(env, HF_HUB_OFFLINE="1")
    assert greedy_text(airavata, SHARDED_ID, offline) == greedy_text(airavata, stories, env)


def test_include_selects_files(airavata, hub, env):
    proc = airavata("pull", REPO_ID, "--include", "*.md", "--include", "config.json", env=env)
    assert proc.returncode == 0, proc.stderr
    names = {p.name for p in pathlib.Path(proc.stdout.strip()).iterdir()}
    assert names == {"SOURCE.md", "config.json"}

    proc = airavata("pull", REPO_ID, "--include", "*.gguf", env=env)
    assert proc.returncode == 1
    assert "matches the --include patterns" in proc.stderr


# ---- cache reuse --------------------------------------------------------


def test_second_pull_downloads_nothing(airavata, hub, env):
    first = airavata("pull", REPO_ID, env=env)
    assert first.returncode == 0, first.stderr
    hub.reset_counters()

    second = airavata("pull", REPO_ID, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    assert hub.file_requests() == []
    assert len(hub.api_requests()) == 1
    assert "0 files downloaded" in second.stderr


def test_cache_written_by_python_tools_is_used(airavata, hub, env, cache, stories):
    # Lay out the cache as huggingface_hub does, independently of our writer.
    folder = repo_folder(cache)
    commit = hub.repos[REPO_ID].commit
    (folder / "blobs").mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    for name in DEFAULT_FILES:
        data = (stories / name).read_bytes()
        lfs = name.endswith((".safetensors", ".model"))
        blob = hashlib.sha256(data).hexdigest() if lfs else git_blob_sha1(data)
        (folder / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", folder / "snapshots" / commit / name)

    proc = airavata("pull", REPO_ID, env=env)
    assert proc.returncode == 0, proc.stderr
    assert hub.file_requests() == []
    offline = dict(env, HF_HUB_OFFLINE="1")
    assert greedy_text(airavata, REPO_ID, offline) == greedy_text(airavata, stories, env)


def test_blob_without_snapshot_link_is_linked(airavata, hub, env, cache):
    assert airavata("pull", REPO_ID, env=env).returncode == 0
    snapshot = repo_folder(cache) / "snapshots" / hub.repos[REPO_ID].commit
    (snapshot / "model.safetensors").unlink()
    hub.reset_counters()

    proc = airavata("pull", REPO_ID, env=env)
    assert proc.returncode == 0, proc.stderr
    assert hub.file_requests() == []
    assert (snapshot / "model.safetensors").is_file()


def test_revision_by_commit_hash(airavata, hub, env, cache, stories):
    commit = hub.repos[REPO_ID].commit
    proc = airavata("pull", REPO_ID, "--revision", commit, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not (repo_folder(cache) / "refs").exists()  # a commit needs no ref
    offline = dict(env, HF_HUB_OFFLINE="1")
    assert greedy_text(airavata, f"{REPO_ID}@{commit}", offline) == \
        greedy_text(airavata, stories, env)


# ---- resume and integrity -----------------------------------------------


def test_resume_after_dropped_connection(airavata, hub, env, cache, stories):
    hub.drop_after = 300_000
    hub.drop_count = 1
    first = airavata("pull", REPO_ID, "--retries", 0, env=env)
    assert first.returncode == 1
    assert "run the pull again to resume" in first.stderr
    partial = partial_files(cache)
    assert len(partial) == 1
    assert partial[0].stat().st_size == 300_000
    snapshot = repo_folder(cache) / "snapshots" / hub.repos[REPO_ID].commit
    assert not (snapshot / "model.safetensors").exists()

    hub.reset_counters()
    second = airavata("pull", REPO_ID, "--retries", 0, env=env)
    assert second.returncode == 0, second.stderr
    ranges = [r["range"] for r in hub.file_requests() if r["range"]]
    assert "bytes=300000-" in ranges
    assert (snapshot / "model.safetensors").read_bytes() == \
        (stories / "model.safetensors").read_bytes()
    assert partial_files(cache) == []


def test_retry_resumes_in_same_run(airavata, hub, env, cache, stories):
    hub.drop_after = 500_000
    hub.drop_count = 1
    proc = airavata("pull", REPO_ID, "--retries", 2, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "retrying from byte 500000" in proc.stderr
    assert "bytes=500000-" in [r["range"] for r in hub.file_requests()]
    snapshot = pathlib.Path(proc.stdout.strip())
    assert (snapshot / "model.safetensors").read_bytes() == \
        (stories / "model.safetensors").read_bytes()


def test_server_ignoring_range_restarts(airavata, hub, env, cache, stories):
    hub.drop_after = 200_000
    hub.drop_count = 1
    assert airavata("pull", REPO_ID, "--retries", 0, env=env).returncode == 1
    hub.ignore_range = True
    proc = airavata("pull", REPO_ID, "--retries", 0, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "ignored the range request" in proc.stderr
    snapshot = pathlib.Path(proc.stdout.strip())
    assert (snapshot / "model.safetensors").read_bytes() == \
        (stories / "model.safetensors").read_bytes()


def test_concurrent_download_is_rejected(airavata, hub, env, cache, stories):
    blob = hashlib.sha256((stories / "model.safetensors").read_bytes()).hexdigest()
    blobs = repo_folder(cache) / "blobs"
    blobs.mkdir(parents=True)
    partial = blobs / f"{blob}.incomplete"
    with open(partial, "wb") as held:
        held.write(b"x" * 1000)
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)  # as a running pull holds it
        proc = airavata("pull", REPO_ID, env=env)
    assert proc.returncode == 1
    assert "another airavata pull is downloading model.safetensors" in proc.stderr
    assert partial.stat().st_size == 1000


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_checksum_mismatch_deletes_download(airavata, hub, env, cache, name):
    hub.corrupt = {name}
    proc = airavata("pull", REPO_ID, env=env)
    assert proc.returncode == 1
    assert f"checksum mismatch for {name}" in proc.stderr
    assert "deleted" in proc.stderr
    assert partial_files(cache) == []
    snapshot = repo_folder(cache) / "snapshots" / hub.repos[REPO_ID].commit
    assert not (snapshot / name).exists()

    hub.corrupt = set()
    proc = airavata("pull", REPO_ID, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (snapshot / name).is_file()


# ---- access and lookup errors -------------------------------------------


def test_token_required(airavata, hub, env, cache):
    hub.require_token = "hf_test_secret"
    proc = airavata("pull", REPO_ID, env=env)
    assert proc.returncode == 1
    assert "HTTP 401" in proc.stderr
    assert "accept its license" in proc.stderr
    assert "HF_TOKEN" in proc.stderr
    assert "hf_test_secret" not in proc.stderr
    assert not list(cache.rglob("snapshots/*/*"))

    proc = airavata("pull", REPO_ID, "--token", "hf_wrong", env=env)
    assert proc.returncode == 1
    assert "HTTP 403" in proc.stderr
    assert "with the given token" in proc.stderr

    hub.reset_counters()
    proc = airavata("pull", REPO_ID, "--token", "hf_test_secret", env=env)
    assert proc.returncode == 0, proc.stderr
    auth = {r["authorization"] for r in hub.file_requests() if "/resolve/" in r["path"]}
    assert auth == {"Bearer hf_test_secret"}


def test_token_from_environment(airavata, hub, env):
    hub.require_token = "hf_env_secret"
    proc = airavata("pull", REPO_ID, env=dict(env, HF_TOKEN="hf_env_secret"))
    assert proc.returncode == 0, proc.stderr


def test_token_from_saved_file(airavata, hub, env, tmp_path):
    hub.require_token = "hf_file_secret"
    home = tmp_path / "hf_home"
    home.mkdir()
    (home / "token").write_text("hf_file_secret\n")
    proc = airavata("pull", REPO_ID, env=env)
    assert proc.returncode == 0, proc.stderr


def test_unknown_repository(airavata, hub, env, cache):
    proc = airavata("pull", "test-org/no-such-model", env=env)
    assert proc.returncode == 1
    assert "repository test-org/no-such-model not found" in proc.stderr
    assert not cache.exists()


def test_unknown_revision(airavata, hub, env, cache):
    proc = airavata("pull", REPO_ID, "--revision", "no-such-branch", env=env)
    assert proc.returncode == 1
    assert "revision 'no-such-branch' not found" in proc.stderr
    assert not cache.exists()


def test_connection_refused(airavata, env, cache):
    proc = airavata("pull", REPO_ID, "--retries", 0,
                    env=dict(env, HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}"))
    assert proc.returncode == 1
    assert "Could not connect" in proc.stderr or "Couldn't connect" in proc.stderr
    assert not cache.exists()


def test_invalid_endpoint(airavata, env):
    proc = airavata("pull", REPO_ID, env=dict(env, HF_ENDPOINT="ftp://127.0.0.1"))
    assert proc.returncode == 1
    assert "invalid hub endpoint" in proc.stderr


# ---- unwritable and full caches -----------------------------------------


def can_mount_tmpfs(path):
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(path)],
                          capture_output=True)
    if proc.returncode != 0:
        return False
    subprocess.run(["umount", str(path)], check=True)
    return True


def test_read_only_cache(airavata, hub, env, cache):
    cache.mkdir()
    mounted = False
    if os.geteuid() == 0:
        # Permission bits do not stop root, a read-only mount does.
        if not can_mount_tmpfs(cache):
            pytest.skip("running as root without permission to mount a tmpfs")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(cache)],
                       check=True)
        mounted = True
    else:
        cache.chmod(0o555)
    try:
        proc = airavata("pull", REPO_ID, env=env)
        assert proc.returncode == 1
        assert "cannot create directory" in proc.stderr
        assert "HF_HUB_CACHE" in proc.stderr
        assert list(cache.iterdir()) == []
    finally:
        if mounted:
            subprocess.run(["umount", str(cache)], check=True)
        else:
            cache.chmod(0o755)


def test_full_disk_tmpfs(airavata, hub, env, cache, stories):
    if not can_mount_tmpfs(cache):
        pytest.skip("mounting a tmpfs needs root")
    # 600 KiB is room for the small files but not the 1.1 MiB weights.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(cache)], check=True)
    try:
        proc = airavata("pull", REPO_ID, env=env)
        assert proc.returncode == 1
        assert "not enough disk space for model.safetensors" in proc.stderr
        snapshot = repo_folder(cache) / "snapshots" / hub.repos[REPO_ID].commit
        assert not (snapshot / "model.safetensors").exists()

        subprocess.run(["mount", "-o", "remount,size=4m", str(cache)], check=True)
        proc = airavata("pull", REPO_ID, env=env)
        assert proc.returncode == 0, proc.stderr
        assert (snapshot / "model.safetensors").read_bytes() == \
            (stories / "model.safetensors").read_bytes()
    finally:
        subprocess.run(["umount", str(cache)], check=True)


def test_write_error_keeps_partial_for_resume(airavata, hub, env, cache, stories):
    limit = 400_000

    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = airavata("pull", REPO_ID, env=env, preexec_fn=limit_file_size)
    assert proc.returncode == 1
    assert "File too large" in proc.stderr
    assert "run the pull again" in proc.stderr
    partial = partial_files(cache)
    assert len(partial) == 1
    assert partial[0].stat().st_size == limit
    snapshot = repo_folder(cache) / "snapshots" / hub.repos[REPO_ID].commit
    assert not (snapshot / "model.safetensors").exists()

    hub.reset_counters()
    proc = airavata("pull", REPO_ID, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"bytes={limit}-" in [r["range"] for r in hub.file_requests()]
    assert (snapshot / "model.safetensors").read_bytes() == \
        (stories / "model.safetensors").read_bytes()


# ---- offline resolution -------------------------------------------------


def test_offline_resolution_errors(airavata, env, cache):
    offline = dict(env, HF_HUB_OFFLINE="1")
    proc = airavata("generate", "-m", "test-org/not-downloaded", "-p", "x", env=offline)
    assert proc.returncode == 1
    assert "not in the Hugging Face cache" in proc.stderr or \
        "nor in the Hugging Face cache" in proc.stderr
    assert "models--test-org--not-downloaded/refs/main" in proc.stderr
    assert "airavata pull test-org/not-downloaded" in proc.stderr

    proc = airavata("generate", "-m", "test-org/not-downloaded@v2", "-p", "x", env=offline)
    assert proc.returncode == 1
    assert "refs/v2" in proc.stderr
    assert "--revision v2" in proc.stderr

    proc = airavata("generate", "-m", "no/such/dir", "-p", "x", env=offline)
    assert proc.returncode == 1
    assert "model directory no/such/dir not found" in proc.stderr


def test_offline_pull_uses_cache_only(airavata, hub, env):
    offline = dict(env, HF_HUB_OFFLINE="1")
    proc = airavata("pull", REPO_ID, env=offline)
    assert proc.returncode == 1
    assert "HF_HUB_OFFLINE" in proc.stderr
    assert hub.requests == []

    online = airavata("pull", REPO_ID, env=env)
    assert online.returncode == 0, online.stderr
    hub.reset_counters()
    proc = airavata("pull", REPO_ID, env=offline)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == online.stdout
    assert hub.requests == []


# ---- command line -------------------------------------------------------


def test_help_and_usage_errors(airavata, env):
    proc = airavata("pull", "--help", env=env)
    assert proc.returncode == 0
    assert "--revision" in proc.stdout
    assert "HF_TOKEN" in proc.stdout

    for args in (["not-a-repo-id"], ["a/b/c"], ["--retries", "x"], ["--bogus"],
                 [REPO_ID, "extra"], ["--revision", "../x"], ["--revision"]):
        proc = airavata("pull", *args, env=env)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith("airavata pull: "), args
