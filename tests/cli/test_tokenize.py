"""`airavata tokenize`: ids and pieces against SentencePiece's own output."""
import json

import pytest


def load_cases(shared_dir):
    path = shared_dir / "tokenizers" / "cases" / "hindi_english.jsonl"
    with open(path, encoding="utf-8") as f:
        return {case["id"]: case for case in map(json.loads, f)}


@pytest.fixture(scope="module")
def cases(shared_dir):
    return load_cases(shared_dir)


@pytest.fixture(scope="module")
def hindi_model(shared_dir):
    return shared_dir / "tokenizers" / "hindi-llama" / "tokenizer.model"


@pytest.fixture(scope="module")
def llama2_model(shared_dir):
    return shared_dir / "tokenizers" / "llama2" / "tokenizer.model"


def hindi_case(cases):
    """A multi-word Hindi sentence with several tokens."""
    case = cases["hw-012"]
    assert len(case["hindi_llama"]["ids"]) > 3
    return case


def parse_lines(stdout):
    lines = stdout.decode("utf-8").splitlines()
    pairs = [line.split("\t", 1) for line in lines]
    return [int(i) for i, _ in pairs], [piece for _, piece in pairs]


def test_plain_output_hindi(run, cases, hindi_model):
    case = hindi_case(cases)
    proc = run("tokenize", "--tokenizer", hindi_model, case["text"], check=True)
    ids, pieces = parse_lines(proc.stdout)
    assert ids == [1] + case["hindi_llama"]["ids"]
    assert pieces == ["<s>"] + case["hindi_llama"]["pieces"]


def test_json_output(run, cases, llama2_model):
    case = hindi_case(cases)
    proc = run("tokenize", "--tokenizer", llama2_model, "--json", case["text"], check=True)
    result = json.loads(proc.stdout)
    assert result["ids"] == [1] + case["llama2"]["ids"]
    assert result["pieces"] == ["<s>"] + case["llama2"]["pieces"]


@pytest.mark.parametrize("case_id", ["hw-004", "hw-010", "hw-002", "mo-001"])
def test_no_bos_matches_sentencepiece(run, cases, hindi_model, case_id):
    case = cases[case_id]
    proc = run("tokenize", "--tokenizer", hindi_model, "--json", "--no-bos", case["text"],
               check=True)
    result = json.loads(proc.stdout)
    assert result["ids"] == case["hindi_llama"]["ids"]
    assert result["pieces"] == case["hindi_llama"]["pieces"]


def test_text_from_stdin(run, cases, hindi_model):
    case = cases["hw-012"]
    proc = run("tokenize", "--tokenizer", hindi_model, "--json", "--no-bos", "-",
               input=case["text"].encode("utf-8"), check=True)
    assert json.loads(proc.stdout)["ids"] == case["hindi_llama"]["ids"]


def test_control_characters_escaped(run, llama2_model):
    proc = run("tokenize", "--tokenizer", llama2_model, "--no-bos", "a\nb", check=True)
    ids, pieces = parse_lines(proc.stdout)
    assert 13 in ids
    assert "<0x0A>" in pieces
    assert len(proc.stdout.decode().splitlines()) == len(ids)


def test_chat_with_added_tokens(run, tmp_path, llama2_model):
    (tmp_path / "tokenizer.model").symlink_to(llama2_model)
    (tmp_path / "added_tokens.json").write_text(
        json.dumps({"<|system|>": 32000, "<|user|>": 32001, "<|assistant|>": 32002}))
    proc = run("tokenize", "-m", tmp_path, "--json", "--chat", "नमस्ते", check=True)
    result = json.loads(proc.stdout)
    ids, pieces = result["ids"], result["pieces"]
    # "<s><|user|>\nनमस्ते\n<|assistant|>\n": each text between special tokens
    # is encoded on its own, with the dummy prefix.
    body = run("tokenize", "--tokenizer", llama2_model, "--json", "--no-bos", "\nनमस्ते\n",
               check=True)
    body_ids = json.loads(body.stdout)["ids"]
    assert ids == [1, 32001] + body_ids + [32002, 29871, 13]
    assert pieces[:2] == ["<s>", "<|user|>"]
    assert pieces[-3] == "<|assistant|>"

    no_bos = run("tokenize", "-m", tmp_path, "--json", "--chat", "--no-bos", "नमस्ते",
                 check=True)
    assert json.loads(no_bos.stdout)["ids"] == ids[1:]


def test_without_chat_special_strings_are_text(run, llama2_model):
    proc = run("tokenize", "--tokenizer", llama2_model, "--json", "--no-bos", "<s>", check=True)
    ids = json.loads(proc.stdout)["ids"]
    assert 1 not in ids
    assert len(ids) > 1


def test_missing_tokenizer_file(run, tmp_path):
    missing = tmp_path / "nothing" / "tokenizer.model"
    proc = run("tokenize", "--tokenizer", missing, "hello")
    assert proc.returncode == 1
    assert str(missing) in proc.stderr.decode()


def test_model_dir_without_tokenizer(run, tmp_path):
    proc = run("tokenize", "-m", tmp_path, "hello")
    assert proc.returncode == 1
    assert str(tmp_path / "tokenizer.model") in proc.stderr.decode()


def test_corrupt_tokenizer_file(run, tmp_path, llama2_model):
    corrupt = tmp_path / "tokenizer.model"
    corrupt.write_bytes(llama2_model.read_bytes()[:5000])
    proc = run("tokenize", "--tokenizer", corrupt, "hello")
    assert proc.returncode == 1
    assert str(corrupt) in proc.stderr.decode()


@pytest.mark.parametrize("args", [
    [],
    ["hello"],
    ["--tokenizer"],
    ["--tokenizer", "x.model"],
    ["--tokenizer", "x.model", "--bogus", "hello"],
    ["--tokenizer", "x.model", "-m", "dir", "hello"],
    ["--tokenizer", "x.model", "one", "two"],
])
def test_usage_errors(run, args):
    proc = run("tokenize", *args)
    assert proc.returncode == 2
    assert b"airavata tokenize" in proc.stderr


def test_help(run):
    proc = run("tokenize", "--help")
    assert proc.returncode == 0
    assert b"usage: airavata tokenize" in proc.stdout
