"""`airavata generate` end to end on the real stories260K model."""
import json

import pytest


@pytest.fixture(scope="module")
def stories(shared_dir):
    return shared_dir / "models" / "stories260K"


@pytest.fixture(scope="module")
def expected(stories):
    return json.loads((stories / "expected_greedy.json").read_text())["cases"]


def test_greedy_story_matches_reference(run, stories, expected):
    for case in expected:
        n = len(case["generated_ids"])
        proc = run("generate", "-m", stories, "-p", case["prompt"], "--temp", "0",
                   "-n", n, check=True)
        text = proc.stdout.decode()
        assert text.rstrip("\n") == case["generated_text"]


def test_stats_on_stderr(run, stories):
    proc = run("generate", "-m", stories, "-p", "Once upon a time", "--temp", "0", "-n", 10,
               check=True)
    err = proc.stderr.decode()
    assert "prompt: 5 tokens" in err
    assert "generation: 10 tokens" in err
    assert "tokens/s" in err


def test_same_seed_same_text(run, stories):
    args = ("generate", "-m", stories, "-p", "Lily wanted to", "--temp", "1.0", "-n", 30)
    first = run(*args, "--seed", 7, check=True).stdout
    second = run(*args, "--seed", 7, check=True).stdout
    other = run(*args, "--seed", 8, check=True).stdout
    assert first == second
    assert first != other


def test_stop_string_ends_output(run, stories, expected):
    proc = run("generate", "-m", stories, "-p", "Once upon a time", "--temp", "0",
               "--stop", "Lily", check=True)
    assert proc.stdout.decode() == ", there was a little girl named \n"
    assert "stopped: stop string" in proc.stderr.decode()


def test_prompt_from_stdin(run, stories, expected):
    proc = run("generate", "-m", stories, "-p", "-", "--temp", "0", "-n", 5,
               input=b"Once upon a time", check=True)
    assert proc.stdout.decode().startswith(expected[0]["generated_text"][:10])


def test_chat_template_runs(run, stories):
    proc = run("generate", "-m", stories, "-p", "नमस्ते", "--chat", "--system", "Be brief.",
               "--temp", "0", "-n", 8, "-v", check=True)
    assert "prompt:" in proc.stderr.decode()


def test_prompt_longer_than_context(run, stories):
    # 20 x 4 words + the trailing space piece + bos = 82 tokens
    proc = run("generate", "-m", stories, "-p", "Once upon a time " * 20, "-c", 16, "--temp", "0")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "the prompt has 82 tokens but the context holds 16" in err


def test_context_full_stops_generation(run, stories):
    proc = run("generate", "-m", stories, "-p", "Once upon a time", "-c", 12, "--temp", "0",
               "-n", 100, check=True)
    assert "context full" in proc.stderr.decode()


@pytest.mark.parametrize("args, message", [
    ((), "missing -m DIR"),
    (("-m", "x"), "exactly one of -p TEXT and -f FILE"),
    (("-m", "x", "-p", "a", "-n", "abc"), "invalid value 'abc' for --max-new-tokens"),
    (("-m", "x", "-p", "a", "-t", "0"), "invalid value '0' for --threads"),
    (("-m", "x", "-p", "a", "--bogus"), "unknown option '--bogus'"),
    (("-m", "x", "-p", "a", "--seed", "-1"), "invalid value '-1' for --seed"),
    (("-m", "x", "-p", "a", "stray"), "unexpected argument 'stray'"),
    (("-m", "x", "-p", "a", "--system", "s"), "--system needs --chat"),
])
def test_usage_errors(run, args, message):
    proc = run("generate", *args)
    assert proc.returncode == 2
    assert message in proc.stderr.decode()


@pytest.mark.parametrize("args, message", [
    (("--temp", "-1"), "temperature -1 is invalid"),
    (("--top-p", "0"), "top-p 0 is invalid"),
    (("--min-p", "1.5"), "min-p 1.5 is invalid"),
    (("--repeat-penalty", "0"), "repetition penalty 0 is invalid"),
])
def test_invalid_sampling_values(run, stories, args, message):
    proc = run("generate", "-m", stories, "-p", "Once", *args)
    assert proc.returncode == 2
    assert message in proc.stderr.decode()


def test_missing_model_dir(run, tmp_path):
    proc = run("generate", "-m", tmp_path / "nope", "-p", "hi")
    assert proc.returncode == 1
    assert "nope" in proc.stderr.decode()


def test_help(run):
    proc = run("generate", "--help", check=True)
    out = proc.stdout.decode()
    for option in ("--chat", "--temp", "--top-k", "--top-p", "--min-p", "--repeat-penalty",
                   "--seed", "--stop", "--threads", "--ctx", "exit codes"):
        assert option in out
