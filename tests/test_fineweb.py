"""fineweb.py: local files -> shards, atomic and resumable, with clear errors. Real datasets, tiktoken and files."""
import glob
import gzip
import json
import multiprocessing
import os
import pathlib
import re
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import fineweb
from gpt2_tokenizer import EOT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARD = 200  # tokens: the documents below make ~9 shards, with documents cut across shard boundaries

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Caf\u00e9 cr\u00e8me, na\u00efve co\u00f6peration, \u65e5\u672c\u8a9e, emoji \U0001F600 and math \u2211 x\u00b2.",
    "A document that mentions <|endoftext|> as text: it must not become a separator.",
    "",  # an empty document still gets its <|endoftext|>, as in the lecture
    "  leading spaces, tabs\tand\nnewlines\n\nand a blank line.\n",
    " ".join(f"word{i}" for i in range(400)),  # ~1,000 tokens: spans several shards
    "In the beginning was the word, and the word was tokenized.",
] + [f"Short document number {i}, with a little text of its own." for i in range(40)]


def expected_stream(enc, docs=DOCS):
    return np.array([t for d in docs for t in [EOT] + enc.encode_ordinary(d)], dtype=np.uint16)


def write_input(folder, kind, docs=DOCS, column="text"):
    """The documents as .txt files (one per document), one .jsonl or one .parquet; returns the --files args."""
    os.makedirs(folder, exist_ok=True)
    if kind == "txt":
        for i, doc in enumerate(docs):
            with open(os.path.join(folder, f"doc_{i:03d}.txt"), "w", encoding="utf-8", newline="") as f:
                f.write(doc)
        return [os.path.join(folder, "doc_*.txt")]
    if kind == "jsonl":
        path = os.path.join(folder, "docs.jsonl")
        with open(path, "w", encoding="utf-8") as f:
            for i, doc in enumerate(docs):
                f.write(json.dumps({"id": i, column: doc}) + "\n")
        return [path]
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        path = os.path.join(folder, "docs.parquet")
        pq.write_table(pa.table({"id": list(range(len(docs))), column: docs}), path, row_group_size=8)
        return [path]
    raise ValueError(kind)


def shard_files(folder):
    return sorted(glob.glob(os.path.join(folder, "edufineweb_*.npy")), key=lambda p: p.rsplit("_", 1)[-1])


def read_shards(folder):
    arrays = [np.load(p) for p in shard_files(folder)]
    for a in arrays:
        assert a.dtype == np.uint16 and a.ndim == 1
    return np.concatenate(arrays)


def run_inprocess(files, out, tmp_path, *extra):
    return fineweb.main(["--files", *files, "--local-dir", str(out), "--shard-size", str(SHARD),
                         "--cache-dir", str(tmp_path / "hf"), "--quiet", "--num-proc", "2", *extra])


def run_cli(args, tmp_path, env=None):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf"), **(env or {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "fineweb.py"), "--quiet", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=120)


def file_bytes(folder):
    return {os.path.basename(p): pathlib.Path(p).read_bytes() for p in shard_files(folder)}


def manifest_of(folder):
    return json.loads(pathlib.Path(folder, "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, enc):
    """One uninterrupted run on the .jsonl input: the bytes every other run must reproduce."""
    tmp = tmp_path_factory.mktemp("reference")
    files = write_input(tmp / "in", "jsonl")
    run_inprocess(files, tmp / "out", tmp)
    return files, tmp / "out", file_bytes(tmp / "out")


# -----------------------------------------------------------------------------
# what the shards hold

@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_local_files_become_shards_that_decode_back_to_each_document_in_order(tmp_path, enc, kind):
    files = write_input(tmp_path / "in", kind)
    summary = run_inprocess(files, tmp_path / "out", tmp_path)

    want = expected_stream(enc)
    names = [os.path.basename(p) for p in shard_files(tmp_path / "out")]
    n = -(-len(want) // SHARD)
    assert n >= 5 and summary["shards"] == n
    assert names == ["edufineweb_val_000000.npy"] + [f"edufineweb_train_{i:06d}.npy" for i in range(1, n)]
    sizes = [len(np.load(p)) for p in shard_files(tmp_path / "out")]
    assert sizes == [SHARD] * (n - 1) + [len(want) - SHARD * (n - 1)]  # the last, partial shard is kept
    got = read_shards(tmp_path / "out")
    np.testing.assert_array_equal(got, want)
    # every document comes back, preceded by exactly one <|endoftext|>, in the input's order
    starts = np.flatnonzero(got == EOT)
    assert len(starts) == len(DOCS) and starts[0] == 0
    decoded = [enc.decode(got[a + 1:b].tolist()) for a, b in zip(starts, list(starts[1:]) + [len(got)])]
    assert decoded == DOCS
    assert summary["documents"] == len(DOCS) and summary["tokens"] == len(want)


def test_streaming_writes_the_same_bytes_as_a_materialised_dataset(tmp_path, reference):
    files, _, want = reference
    run_inprocess(files, tmp_path / "out", tmp_path, "--streaming")
    assert file_bytes(tmp_path / "out") == want


def test_the_printed_tokens_per_second_leaves_out_the_time_spent_opening_the_input(tmp_path, reference, capsys):
    # on the real run the opening is the download of 27 GB: a rate over the whole time would be the network's
    assert fineweb.timing(dict(seconds=10.0, new_tokens=1000, open_seconds=6.0), streaming=False) == (
        "10.0 s: 6.0 s opening the input (any download and Arrow conversion), then 4.0 s tokenizing and writing "
        "at 250 tokens/s")
    assert fineweb.timing(dict(seconds=10.0, new_tokens=1000, open_seconds=0.1), streaming=True) == (
        "10.0 s, 100 tokens/s (streamed: the download included)")
    files, _, _ = reference
    capsys.readouterr()
    summary = run_inprocess(files, tmp_path / "out", tmp_path)
    line = capsys.readouterr().out.splitlines()[-1]
    m = re.search(r"in ([\d.]+) s: ([\d.]+) s opening the input \(.*\), then ([\d.]+) s tokenizing and writing "
                  r"at ([\d,]+) tokens/s -> ", line)
    assert m, line
    total, opening, work = (float(g) for g in m.groups()[:3])
    assert abs(total - opening - work) <= 0.11 and total == round(summary["seconds"], 1)
    assert 0 < summary["open_seconds"] < summary["seconds"]  # datasets opened the file in this time
    assert m[4] == f"{summary['new_tokens'] / (summary['seconds'] - summary['open_seconds']):,.0f}"
    run_inprocess(files, tmp_path / "streamed", tmp_path, "--streaming")
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith(f"(streamed: the download included) -> {tmp_path / 'streamed'}"), last


def test_spawn_start_method_and_one_process_write_the_same_bytes(tmp_path, reference):
    # the lecture's script re-runs its top level in every spawned worker; this one must not
    files, _, want = reference
    r = run_cli(["--files", *files, "--local-dir", "spawned", "--shard-size", str(SHARD),
                 "--num-proc", "2", "--start-method", "spawn"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert file_bytes(tmp_path / "spawned") == want
    run_inprocess(files, tmp_path / "single", tmp_path, "--num-proc", "1")
    assert file_bytes(tmp_path / "single") == want


def test_local_dataset_folders_from_save_to_disk_or_of_data_files_give_the_same_bytes(tmp_path, reference):
    import datasets
    files, _, want = reference
    datasets.load_dataset("json", data_files=files, split="train", cache_dir=str(tmp_path / "hf")).save_to_disk(
        str(tmp_path / "saved"))
    write_input(tmp_path / "folder", "jsonl")
    for folder in ["saved", "folder"]:
        fineweb.main(["--dataset", str(tmp_path / folder), "--local-dir", str(tmp_path / f"out_{folder}"),
                      "--shard-size", str(SHARD), "--cache-dir", str(tmp_path / "hf"), "--quiet"])
        assert file_bytes(tmp_path / f"out_{folder}") == want


def test_a_dataset_folder_of_txt_files_reads_each_file_as_one_document_as_files_does(tmp_path, enc):
    # datasets' text builder makes every line a document and drops the newlines, unless told otherwise
    write_input(tmp_path / "folder", "txt")
    (tmp_path / "folder" / "LICENSE").write_text("not a document\n")  # not a data file: datasets leaves it
    fineweb.main(["--dataset", str(tmp_path / "folder"), "--local-dir", str(tmp_path / "out"),
                  "--shard-size", str(SHARD), "--cache-dir", str(tmp_path / "hf"), "--quiet"])
    np.testing.assert_array_equal(read_shards(tmp_path / "out"), expected_stream(enc))


def gzip_files(folder):
    """Compresses every file in folder in place (docs.jsonl -> docs.jsonl.gz), as corpora are often shipped."""
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        with open(path, "rb") as f, gzip.open(path + ".gz", "wb") as g:
            g.write(f.read())
        os.remove(path)


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_gzipped_files_and_folders_give_the_same_tokens_as_plain_ones(tmp_path, enc, kind):
    files = write_input(tmp_path / "in", kind)
    gzip_files(tmp_path / "in")
    run_inprocess([f + ".gz" for f in files], tmp_path / "out", tmp_path)
    np.testing.assert_array_equal(read_shards(tmp_path / "out"), expected_stream(enc))
    # a folder of .txt.gz files: still one document per file (datasets' default would be one per line)
    fineweb.main(["--dataset", str(tmp_path / "in"), "--local-dir", str(tmp_path / "folder"), "--shard-size",
                  str(SHARD), "--cache-dir", str(tmp_path / "hf"), "--quiet"])
    np.testing.assert_array_equal(read_shards(tmp_path / "folder"), expected_stream(enc))


def test_a_broken_gzip_file_among_several_is_named_in_the_only_error_line(tmp_path, capsys):
    files = write_input(tmp_path / "in", "txt", docs=DOCS[:3])
    gzip_files(tmp_path / "in")
    whole = gzip.compress("\n".join(DOCS).encode())
    cases = {"cut.txt.gz": (whole[:len(whole) // 2], "Compressed file ended before the end-of-stream marker"),
             "plain.txt.gz": (b"never compressed\n", "Not a gzipped file"),
             "crc.txt.gz": (whole[:-8] + bytes(8), "CRC check failed")}
    for name, (data, reason) in cases.items():
        bad = tmp_path / "in" / name
        bad.write_bytes(data)
        for streaming in ([], ["--streaming"]):
            err = fail_inprocess(["--files", files[0] + ".gz", str(bad), "--local-dir", str(tmp_path / "out"),
                                  "--cache-dir", str(tmp_path / f"hf_{name}"), *streaming], capsys)
            line = assert_clean_failure(err, str(tmp_path / "out"), f"error: {bad} is not a whole gzip file", reason)
            assert line.endswith("compress it again or leave it out"), line
        bad.unlink()
    # a JSON or UTF-8 error inside a gzipped file is named with its line or offset as in a plain one
    (tmp_path / "in" / "docs.jsonl.gz").write_bytes(gzip.compress(b'{"text": "fine"}\n{"text": "caf\xe9"}\n'))
    err = fail_inprocess(["--files", str(tmp_path / "in" / "docs.jsonl.gz"), "--local-dir", str(tmp_path / "out"),
                          "--cache-dir", str(tmp_path / "hf_json")], capsys)
    assert_clean_failure(err, str(tmp_path / "out"), "docs.jsonl.gz is not UTF-8 text (byte 0xe9 at offset 30 of "
                                                     "its decompressed text)")
    # parquet compresses inside: a gzipped one is not a kind datasets reads
    (tmp_path / "in" / "docs.parquet.gz").write_bytes(whole)
    err = fail_inprocess(["--files", str(tmp_path / "in" / "docs.parquet.gz"), "--local-dir", str(tmp_path / "out")],
                         capsys)
    assert_clean_failure(err, str(tmp_path / "out"), "cannot read", "either of them gzipped (.gz)")


def test_an_empty_gzip_file_is_named_not_read_as_an_empty_document(tmp_path, capsys):
    # gzip.open reads a 0-byte file as b"" without complaint: without the check it became one empty document
    files = write_input(tmp_path / "in", "txt", docs=DOCS[:3])
    gzip_files(tmp_path / "in")
    empty = tmp_path / "in" / "doc_009.txt.gz"
    empty.write_bytes(b"")
    for source in (["--files", files[0] + ".gz"], ["--dataset", str(tmp_path / "in")]):
        err = fail_inprocess([*source, "--local-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "hf")],
                             capsys)
        line = assert_clean_failure(err, str(tmp_path / "out"),
                                    f"error: {empty} is empty (0 bytes), so not a gzip file")
        assert line.endswith("compress it again or leave it out"), line
    # a plain text file may be empty (an empty document), and a gzipped empty text is 20 bytes, not 0
    empty.write_bytes(gzip.compress(b""))
    fineweb.main(["--files", files[0] + ".gz", "--local-dir", str(tmp_path / "out"), "--shard-size", str(SHARD),
                  "--cache-dir", str(tmp_path / "hf"), "--quiet"])


def test_a_dataset_folder_whose_path_datasets_would_glob_is_one_error_line(tmp_path, capsys):
    # datasets globs under the folder's path: "in[1]" matched nothing, or read a sibling "in1" without a word
    write_input(tmp_path / "in[1]", "jsonl")
    write_input(tmp_path / "in1", "jsonl", docs=["another corpus"])
    with pytest.raises(SystemExit):
        fineweb.main(["--dataset", str(tmp_path / "in[1]"), "--local-dir", str(tmp_path / "out"), "--quiet",
                      "--cache-dir", str(tmp_path / "hf")])
    err = capsys.readouterr().err
    assert err.startswith(f"error: --dataset {tmp_path / 'in[1]'}: datasets would read its path") and \
        err.endswith("rename it, or name its files with --files\n"), err
    assert not os.path.exists(tmp_path / "out")


def test_a_rerun_after_a_file_of_a_dataset_folder_changed_refuses_and_names_the_file(tmp_path, capsys):
    files = write_input(tmp_path / "folder", "jsonl")
    args = ["--dataset", str(tmp_path / "folder"), "--local-dir", str(tmp_path / "out"), "--shard-size",
            str(SHARD), "--cache-dir", str(tmp_path / "hf"), "--quiet"]
    fineweb.main(args)
    before = file_bytes(tmp_path / "out")
    with open(files[0], "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": 99, "text": "An edit."}) + "\n")
    capsys.readouterr()
    with pytest.raises(SystemExit):
        fineweb.main(args)
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: {tmp_path / 'out'} holds shards made with other arguments \({files[0]} changed: "
                        r"[\d,]+ -> [\d,]+ bytes\); pass another --local-dir, or delete it to start over\n", err), err
    assert file_bytes(tmp_path / "out") == before


def test_what_changed_in_the_input_files_is_said_file_by_file():
    rec = lambda path, size, mtime=1: dict(path=path, bytes=size, mtime_ns=mtime)  # noqa: E731
    old = dict(files=[rec("a", 10), rec("b", 20), rec("c", 30)], shard_size=100)
    new = dict(files=[rec("a", 10, mtime=2), rec("b", 25), rec("d", 5)], shard_size=200)
    assert fineweb.config_change(old, new) == ("d is new, c is gone, a was modified since (same size), "
                                               "b changed: 20 -> 25 bytes, shard_size: 100 -> 200")
    assert fineweb.config_change(old, dict(old, files=old["files"][::-1])) == "the files are in another order"
    assert fineweb.config_change(old, dict(old, files=old["files"] + [rec("a", 10)])) == "a is listed 2 times now"
    assert fineweb.config_change(dict(old, files=None), old) == (
        "the 3 input files were not recorded by the fineweb.py that made those shards")


def test_a_local_dir_inside_the_dataset_folder_is_refused_before_anything_is_read(tmp_path, capsys):
    write_input(tmp_path / "folder", "jsonl")
    err = fail_inprocess(["--dataset", str(tmp_path / "folder"), "--local-dir", str(tmp_path / "folder" / "shards"),
                          "--cache-dir", str(tmp_path / "hf")], capsys)
    assert err == (f"error: --local-dir {tmp_path / 'folder' / 'shards'} is inside the --dataset folder "
                   f"{tmp_path / 'folder'}: its shards and manifest would be read as input; put them in another "
                   "folder\n")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("layout", ["two kinds", "split names"])
def test_a_dataset_folder_whose_files_datasets_would_leave_out_is_refused_naming_one(tmp_path, capsys, layout):
    # datasets reads only the most common kind of file, and once some file names say a split only those: the
    # other file's documents were dropped without a word, and the manifest listed it among the inputs
    folder = tmp_path / "folder"
    write_input(folder, "jsonl")
    left_out = folder / ("notes.txt" if layout == "two kinds" else "books.jsonl")
    if layout == "two kinds":
        left_out.write_text("a document datasets' json builder never reads")
    else:
        os.rename(folder / "docs.jsonl", folder / "web_train.jsonl")
        write_input(tmp_path / "more", "jsonl", docs=DOCS[:3])
        os.rename(tmp_path / "more" / "docs.jsonl", left_out)
    err = fail_inprocess(["--dataset", str(folder), "--local-dir", str(tmp_path / "out"), "--cache-dir",
                          str(tmp_path / "hf")], capsys)
    assert err == (f"error: --dataset {folder}: datasets would not read {left_out} (it reads one kind of file, and "
                   "when some file names say a split, only those); rename it, move it out, or name the files to "
                   "read with --files\n")
    assert not shard_files(tmp_path / "out")


def test_a_dataset_folder_with_train_and_test_files_reads_the_train_split(tmp_path, enc):
    # files of other splits are read by no one here, on purpose: not the silent loss refused above
    write_input(tmp_path / "folder", "jsonl")
    os.rename(tmp_path / "folder" / "docs.jsonl", tmp_path / "folder" / "train.jsonl")
    write_input(tmp_path / "test", "jsonl", docs=["A test document."])
    os.rename(tmp_path / "test" / "docs.jsonl", tmp_path / "folder" / "test.jsonl")
    fineweb.main(["--dataset", str(tmp_path / "folder"), "--local-dir", str(tmp_path / "out"), "--shard-size",
                  str(SHARD), "--cache-dir", str(tmp_path / "hf"), "--quiet"])
    assert np.array_equal(read_shards(tmp_path / "out"), expected_stream(enc))


def test_a_dataset_folder_with_a_loading_script_is_an_error_line(tmp_path, capsys):
    # datasets 4 refuses scripts with a RuntimeError, which came out as a traceback
    write_input(tmp_path / "folder", "jsonl")
    (tmp_path / "folder" / "folder.py").write_text("import datasets\n")
    err = fail_inprocess(["--dataset", str(tmp_path / "folder"), "--local-dir", str(tmp_path / "out"),
                          "--cache-dir", str(tmp_path / "hf")], capsys)
    assert err.startswith(f"error: cannot load dataset {str(tmp_path / 'folder')!r}: ") and "folder.py" in err, err


def test_files_inside_the_local_dir_are_refused_so_a_rerun_does_not_read_its_own_manifest(tmp_path, capsys):
    # 'in/**/*.json' around in/out matched out/manifest.json on the rerun, which then refused as "other arguments"
    write_input(tmp_path / "in", "jsonl")
    os.rename(tmp_path / "in" / "docs.jsonl", tmp_path / "in" / "docs.json")
    args = ["--files", str(tmp_path / "in" / "**" / "*.json"), "--local-dir", str(tmp_path / "in" / "out"),
            "--shard-size", str(SHARD), "--cache-dir", str(tmp_path / "hf")]
    fineweb.main([*args, "--quiet"])
    before = file_bytes(tmp_path / "in" / "out")
    err = fail_inprocess(args, capsys)
    assert err == (f"error: --files takes {tmp_path / 'in' / 'out' / 'manifest.json'}, inside --local-dir "
                   f"{tmp_path / 'in' / 'out'}: the shards' folder would be read as input; narrow the pattern, or "
                   "put the shards in another folder\n")
    assert file_bytes(tmp_path / "in" / "out") == before


@pytest.mark.parametrize("how", ["the same name", "a pattern and a name", "a link", "relative and absolute"])
def test_a_file_given_twice_is_refused_naming_it_before_anything_is_tokenized(tmp_path, capsys, monkeypatch, how):
    # it was tokenized twice without a word (400 documents for 200): the val shard's documents again in train shards
    monkeypatch.chdir(tmp_path)
    path = write_input(tmp_path / "in", "jsonl")[0]
    os.symlink(path, tmp_path / "link.jsonl")
    files, detail = {
        "the same name": ([path, path], ""),
        "a pattern and a name": (["in/*.jsonl", "in/docs.jsonl"], " (in/*.jsonl and in/docs.jsonl both match it)"),
        "a link": ([path, "link.jsonl"], f" ({tmp_path / 'link.jsonl'} is the same file)"),
        "relative and absolute": (["in/docs.jsonl", path], f" (in/docs.jsonl and {path} both match it)"),
    }[how]
    err = fail_inprocess(["--files", *files, "--local-dir", "out", "--cache-dir", "hf"], capsys)
    assert err == (f"error: --files takes {path} twice{detail}: its documents would be tokenized twice, those of the "
                   "val shard into train shards too; give each file once\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "hf").exists()


def test_a_second_run_in_a_folder_another_run_is_writing_is_refused(tmp_path, reference, capsys):
    # two runs raced: each wrote shards of its own input under the same names and both ended without an error
    files, _, want = reference
    out = tmp_path / "out"
    os.makedirs(out)
    with fineweb.folder_lock(str(out)):  # as a run that is writing there holds it
        err = fail_inprocess(["--files", *files, "--local-dir", str(out), "--shard-size", str(SHARD),
                              "--cache-dir", str(tmp_path / "hf")], capsys)
    assert err == (f"error: another fineweb.py is writing shards in {out} (it holds the folder's lock): let it "
                   "finish or stop it first, or pass another --local-dir\n")
    assert os.listdir(out) == []
    run_inprocess(files, out, tmp_path)  # the lock went with the run that held it
    assert file_bytes(out) == want


SIGTERM_AFTER = """
import os, signal, sys
import fineweb
fineweb.TASK_DOCS = 1  # a task a document: shards are written while the rest is still to come
read = fineweb.iter_texts
def iter_texts(*args, **kwargs):  # a plain `kill PID` after document 20, the pool's workers busy
    for i, text in enumerate(read(*args, **kwargs)):
        if i == 20:
            os.kill(os.getpid(), signal.SIGTERM)
        yield text
fineweb.iter_texts = iter_texts
fineweb.main(sys.argv[1:])
"""


def test_sigterm_ends_the_run_with_one_error_line_and_a_rerun_carries_on(tmp_path, reference):
    # the default SIGTERM killed the parent alone, and each worker printed a BrokenPipeError traceback
    files, _, want = reference
    args = ["--files", *files, "--local-dir", str(tmp_path / "out"), "--shard-size", str(SHARD), "--num-proc", "2",
            "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, "-c", SIGTERM_AFTER, *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 143, r.stderr
    assert r.stderr == "error: terminated; run the same command again to carry on from the last complete shard\n"
    written = file_bytes(tmp_path / "out")
    assert 0 < len(written) < len(want)
    r = run_cli(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert file_bytes(tmp_path / "out") == want


def test_manifest_records_the_source_and_per_shard_counts_that_match_the_files(tmp_path, enc, reference):
    files, out, _ = reference
    manifest = manifest_of(out)
    config = manifest["config"]
    assert config["files"][0]["path"] == os.path.abspath(files[0]) and config["dataset"] is None
    assert (config["text_column"], config["tokenizer"], config["shard_size"]) == ("text", "gpt2", SHARD)
    assert manifest["complete"] is True
    shards = manifest["shards"]
    assert [s["file"] for s in shards] == [os.path.basename(p) for p in shard_files(out)]
    for s in shards:
        path = out / s["file"]
        tokens = np.load(path)
        assert s["tokens"] == len(tokens)
        assert s["bytes"] == os.path.getsize(path) == 128 + 2 * len(tokens)  # np.save's 128-byte header
        assert s["documents"] == np.count_nonzero(tokens == EOT)
        assert s["split"] == ("val" if s is shards[0] else "train")
    assert sum(s["tokens"] for s in shards) == manifest["tokens"] == len(expected_stream(enc))
    assert sum(s["documents"] for s in shards) == manifest["documents"] == len(DOCS)


def test_batch_tokenizer_equals_encode_ordinary_even_on_special_tokens_and_lone_surrogates(enc):
    docs = DOCS + ["<|endoftext|><|endoftext|>", "<|fim_prefix|> <|endofprompt|>", "broken \ud800 surrogate", "\n" * 50]
    got = fineweb.tokenize_batch(docs)
    assert got.dtype == np.uint16
    want = [t for d in docs for t in [EOT] + enc.encode_ordinary(d)]
    assert got.tolist() == want
    assert np.count_nonzero(got == EOT) == len(docs)


def test_reader_stays_a_bounded_number_of_batches_ahead_of_the_writer():
    pulled = []

    def batches():
        for i in range(50):
            pulled.append(i)
            yield [f"document {i}"]

    with fineweb.worker_pool(2) as pool:
        for k, (n, tokens) in enumerate(fineweb.tokenize_documents(batches(), pool, window=4)):
            assert n == 1 and tokens[0] == EOT
            assert len(pulled) <= k + 4  # memory is bounded by the window, not by the dataset
    assert len(pulled) == 50


def test_a_tiktoken_whose_encode_to_numpy_is_not_encode_ordinary_is_refused(enc):
    fineweb.check_tiktoken(enc)  # the installed one (>= 0.11)

    class Tiktoken_0_10:  # 0.9 and 0.10 passed their special tokens on in place of the allowed_special given
        encode_ordinary = staticmethod(enc.encode_ordinary)

        def encode_to_numpy(self, text, allowed_special, disallowed_special):
            return np.array(enc.encode(text, allowed_special="all"), dtype=np.uint32)

    class Tiktoken_0_8:  # no encode_to_numpy yet
        encode_ordinary = staticmethod(enc.encode_ordinary)

    for old in (Tiktoken_0_10(), Tiktoken_0_8()):
        with pytest.raises(fineweb.FinewebError, match=r"install tiktoken 0.11 or later: pip install -r "):
            fineweb.check_tiktoken(old)


def test_write_shards_takes_any_iterable_of_strings(tmp_path, enc):
    summary = fineweb.write_shards(iter(DOCS), str(tmp_path / "out"), shard_size=SHARD, num_proc=2, progress=False)
    np.testing.assert_array_equal(read_shards(tmp_path / "out"), expected_stream(enc))
    assert summary["documents"] == len(DOCS)


# -----------------------------------------------------------------------------
# killed runs and reruns

@pytest.mark.parametrize("crash_after", [1, 4])
def test_rerun_after_a_kill_mid_shard_ends_byte_identical_to_an_uninterrupted_run(tmp_path, reference, crash_after):
    files, _, want = reference
    args = ["--files", *files, "--local-dir", "out", "--shard-size", str(SHARD), "--num-proc", "2"]
    # the hook dies with os._exit in the middle of writing shard `crash_after`, as SIGKILL would
    r = run_cli(args, tmp_path, env={"FINEWEB_CRASH_AFTER_SHARDS": str(crash_after)})
    assert r.returncode == 137
    out = tmp_path / "out"
    assert len(shard_files(out)) == crash_after  # only complete shards under real names
    assert os.path.exists(out / (fineweb.shard_name("edufineweb", crash_after) + ".tmp"))
    assert manifest_of(out)["complete"] is False

    r = run_cli(args, tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{crash_after} kept from an earlier run" in r.stdout
    assert file_bytes(out) == want
    assert not glob.glob(str(out / "*.tmp"))


@pytest.mark.parametrize("source", ["--files", "--dataset"])
def test_a_rerun_after_the_input_and_shards_moved_together_goes_on_from_the_shards_written(tmp_path, reference,
                                                                                           source):
    # the manifest records the input files by absolute path: a repo moved to another folder (`mv` keeps bytes
    # and mtimes) was refused as "new" and "gone" files, the demo's shards included
    _, _, want = reference
    write_input(tmp_path / "repo" / "in", "jsonl")
    args = lambda repo: [source, f"{repo}/in" + ("/*.jsonl" if source == "--files" else ""),  # noqa: E731
                         "--local-dir", f"{repo}/out", "--shard-size", str(SHARD), "--num-proc", "2"]
    r = run_cli(args("repo"), tmp_path, env={"FINEWEB_CRASH_AFTER_SHARDS": "2"})
    assert r.returncode == 137 and len(shard_files(tmp_path / "repo" / "out")) == 2
    os.rename(tmp_path / "repo", tmp_path / "moved")
    r = run_cli(args("moved"), tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 kept from an earlier run" in r.stdout
    assert file_bytes(tmp_path / "moved" / "out") == want
    # the same files moved but one of them edited since: still refused, naming it
    with open(tmp_path / "moved" / "in" / "docs.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"text": "An edit."}) + "\n")
    r = run_cli(args("moved"), tmp_path)
    assert r.returncode == 1 and "holds shards made with other arguments" in r.stderr, r.stderr


def interrupted(docs, stop):
    """The documents from `start` on, then a Ctrl-C after document `stop`."""
    def documents(start):
        yield from docs[start:stop]
        raise KeyboardInterrupt
    return documents


def test_an_interrupted_pool_finishes_its_tasks_in_flight_instead_of_killing_its_workers(tmp_path):
    # `with Pool` ends in terminate(), whose SIGTERM can catch a worker holding the result queue's lock:
    # terminate() then hangs for ever (CPython #96995; it hung CI once). worker_pool joins instead.
    flag = tmp_path / "done"
    with pytest.raises(KeyboardInterrupt):
        with fineweb.worker_pool(1) as pool:
            result = pool.apply_async(_sleep_then_touch, (0.5, str(flag)))
            workers = multiprocessing.active_children()
            raise KeyboardInterrupt
    assert result.ready() and flag.exists()  # the task ran to its end: nobody was killed mid-task
    assert workers and all(p.exitcode == 0 for p in workers)  # exited on their own, not by SIGTERM (-15)


def _sleep_then_touch(seconds, path):
    import time
    time.sleep(seconds)
    open(path, "w").close()


def test_a_process_that_runs_other_threads_gets_workers_that_are_not_forked_copies_of_it(monkeypatch):
    # the notebook's Jupyter kernel and a pytest-xdist worker run threads of their own: a worker forked from such a
    # process keeps any lock those threads held at that moment, held for ever (Python 3.12+ warns: "This process is
    # multi-threaded, use of fork() may lead to deadlocks in the child")
    own = fineweb.TASK_DOCS
    monkeypatch.setattr(fineweb, "TASK_DOCS", own + 1)  # in this process only: a forked worker would see it too
    idle = threading.Event()
    thread = threading.Thread(target=idle.wait)
    thread.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fineweb.worker_pool(1) as pool:
                seen = pool.apply(_task_docs)
    finally:
        idle.set()
        thread.join()
    assert [str(w.message) for w in caught if "fork" in str(w.message)] == []
    assert seen == own  # a fresh interpreter's fineweb, not a copy of this one


def _task_docs():
    return fineweb.TASK_DOCS


@pytest.fixture
def one_document_per_task(monkeypatch):
    # ~1 MB tasks would hold all of these documents at once; one a task lets shards land before a stop
    monkeypatch.setattr(fineweb, "TASK_DOCS", 1)


@pytest.mark.parametrize("stop", [3, 7, 8, 9, 20, 31, 46])
def test_resume_after_ctrl_c_anywhere_continues_mid_document_exactly(tmp_path, enc, one_document_per_task, stop):
    # DOCS[5] spans several shards, so some stops fall inside it and the rerun resumes mid-document
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        fineweb.write_shards(interrupted(DOCS, stop), out, shard_size=SHARD, num_proc=1, progress=False)
    assert not glob.glob(os.path.join(out, "*.tmp"))
    kept = len(shard_files(out))
    # every full shard of what reached the writer: all but the <= 2 tasks in flight at the stop
    full_shards = lambda docs: len(expected_stream(enc, docs)) // SHARD  # noqa: E731
    assert full_shards(DOCS[:stop - 2]) <= kept <= full_shards(DOCS[:stop])
    summary = fineweb.write_shards(lambda start: DOCS[start:], out, shard_size=SHARD, num_proc=1, progress=False)
    assert summary["reused_shards"] == kept
    np.testing.assert_array_equal(read_shards(out), expected_stream(enc))
    assert summary["documents"] == len(DOCS)


def test_resume_where_shards_end_exactly_at_document_ends(tmp_path, enc, one_document_per_task):
    docs = ["hello" + " hello" * 98] * 9  # 99 tokens + <|endoftext|> = 100: two documents a shard, exactly
    assert len(expected_stream(enc, docs)) == 900
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        fineweb.write_shards(interrupted(docs, 7), out, shard_size=SHARD, num_proc=1, progress=False)
    manifest = manifest_of(out)
    assert [s["resume_at"] for s in manifest["shards"]] == [dict(document=d, token=100) for d in (1, 3, 5)]
    fineweb.write_shards(lambda start: docs[start:], out, shard_size=SHARD, num_proc=1, progress=False)
    np.testing.assert_array_equal(read_shards(out), expected_stream(enc, docs))
    assert [len(np.load(p)) for p in shard_files(out)] == [200, 200, 200, 200, 100]


def test_a_resumed_runs_progress_bar_counts_the_tokens_in_the_shards_not_the_head_it_skips(tmp_path, enc, capsys,
                                                                                        one_document_per_task):
    # a rerun tokenizes the document the last kept shard ends in again and drops its head: the bar counted those
    # tokens twice, ending past the total the summary printed
    docs = ["hello" + " hello" * 98] * 9  # 100 tokens each with <|endoftext|>: 900
    out = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt):
        fineweb.write_shards(interrupted(docs, 7), out, shard_size=SHARD, num_proc=1, progress=False)
    capsys.readouterr()
    summary = fineweb.write_shards(lambda start: docs[start:], out, shard_size=SHARD, num_proc=1)
    assert summary["tokens"] == 900
    last = re.split(r"[\r\n]", capsys.readouterr().err.strip())[-1]
    assert re.match(r"tokens: 100%\|[^|]*\| 900/900 ", last), last


def test_a_rerun_given_a_plain_list_skips_exactly_the_documents_already_written(tmp_path, enc, one_document_per_task):
    # guards _skip, which seeks an iterable (not a function of `start`) past the documents the kept shards hold:
    # the resumes above all pass a function, so skipping one document too few (or too many) went unseen
    out, uninterrupted = str(tmp_path / "out"), str(tmp_path / "uninterrupted")
    with pytest.raises(KeyboardInterrupt):
        fineweb.write_shards(interrupted(DOCS, 20), out, shard_size=SHARD, num_proc=1, progress=False)
    start = manifest_of(out)["shards"][-1]["resume_at"]["document"]
    assert start >= 2  # the rerun has documents to skip: a real test of the count
    summary = fineweb.write_shards(list(DOCS), out, shard_size=SHARD, num_proc=1, progress=False)
    assert summary["reused_shards"] >= 1
    fineweb.write_shards(list(DOCS), uninterrupted, shard_size=SHARD, num_proc=1, progress=False)
    assert file_bytes(out) == file_bytes(uninterrupted)
    np.testing.assert_array_equal(read_shards(out), expected_stream(enc))


def test_every_shard_and_manifest_is_fsynced_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    # guards atomic_write's fsync: a rename that reaches the disk before the file's data can leave a shard of zeros
    # under its real name after a power cut. The real calls run; each is recorded with the file's inode
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino, os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = str(tmp_path / "out")
    fineweb.write_shards(DOCS, out, shard_size=SHARD, num_proc=1, progress=False)
    renames = [i for i, e in enumerate(events) if e[0] == "replace"]
    renamed = [events[i][2] for i in renames]
    assert set(renamed) == {os.path.basename(p) for p in shard_files(out)} | {"manifest.json"}
    for previous, i in zip([-1, *renames], renames):  # the file's own fsync, since the last rename
        assert ("fsync", events[i][1]) in events[previous + 1:i], events[i]


@pytest.mark.slow
def test_reruns_after_sigkills_at_five_random_moments_match_an_uninterrupted_run(tmp_path):
    # real SIGKILLs of the whole process group (parent and workers), each at a seeded random moment:
    # after a random number (1-30) of new shards has appeared, plus a random 0-20 ms, so that kills
    # land while a shard or the manifest is being written as well as between them; ~290 shards of
    # 200 tokens, each with its fsyncs, keep the runs going long enough for five cuts
    import random
    import signal
    import time
    rng = random.Random(1337)
    files = write_input(tmp_path / "in", "jsonl", docs=DOCS * 40)
    run_inprocess(files, tmp_path / "reference", tmp_path)
    want = file_bytes(tmp_path / "reference")
    out = tmp_path / "out"
    args = [sys.executable, os.path.join(ROOT, "fineweb.py"), "--quiet", "--files", *files, "--local-dir", str(out),
            "--shard-size", str(SHARD), "--num-proc", "2", "--cache-dir", str(tmp_path / "hf")]
    kills = 0
    for _ in range(5):
        before = len(shard_files(out))
        target = before + rng.randint(1, 30)
        proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while len(shard_files(out)) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.001)
        time.sleep(rng.uniform(0, 0.02))
        if proc.poll() is not None:  # it finished first: nothing left to interrupt
            break
        os.killpg(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        kills += 1
        kept = shard_files(out)
        print(f"kill {kills}: {before} -> {len(kept)} shards (target {target})")
        for path in kept:  # whatever was there at the kill is whole and final
            assert pathlib.Path(path).read_bytes() == want[os.path.basename(path)]
        assert not manifest_of(out)["complete"]
    assert kills == 5 and 0 < len(shard_files(out)) < len(want)
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert file_bytes(out) == want
    assert not glob.glob(str(out / "*.tmp"))


def test_rerun_of_a_finished_run_rewrites_nothing(tmp_path, reference):
    files, _, want = reference
    run_inprocess(files, tmp_path / "out", tmp_path)
    before = {p: os.stat(p).st_mtime_ns for p in shard_files(tmp_path / "out")}
    summary = run_inprocess(files, tmp_path / "out", tmp_path)
    assert summary["reused_shards"] == summary["shards"] == len(want) and summary["new_tokens"] == 0
    assert {p: os.stat(p).st_mtime_ns for p in shard_files(tmp_path / "out")} == before


def test_a_damaged_shard_is_rewritten_from_where_the_intact_ones_end(tmp_path, reference):
    files, _, want = reference
    run_inprocess(files, tmp_path / "out", tmp_path)
    victim = shard_files(tmp_path / "out")[3]
    with open(victim, "r+b") as f:
        f.truncate(100)
    summary = run_inprocess(files, tmp_path / "out", tmp_path)
    assert summary["reused_shards"] == 3
    assert file_bytes(tmp_path / "out") == want


def test_rerun_with_other_arguments_into_the_same_folder_refuses(tmp_path, reference, capsys):
    files, _, want = reference
    run_inprocess(files, tmp_path / "out", tmp_path)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        fineweb.main(["--files", *files, "--local-dir", str(tmp_path / "out"), "--shard-size", "300", "--quiet"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "other arguments" in err and "shard_size: 200 -> 300" in err
    assert file_bytes(tmp_path / "out") == want


# -----------------------------------------------------------------------------
# bad input: one line, exit != 0, nothing written

def assert_clean_failure(result_or_err, out, *needles):
    if isinstance(result_or_err, subprocess.CompletedProcess):
        assert result_or_err.returncode != 0
        err = result_or_err.stderr
    else:
        err = result_or_err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    for needle in needles:
        assert needle in errors[0], errors[0]
    assert not glob.glob(os.path.join(out, "*.npy*")) and not os.path.exists(os.path.join(out, "manifest.json"))
    return errors[0]


def fail_inprocess(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        fineweb.main([*args, "--quiet"])
    assert e.value.code == 1
    return capsys.readouterr().err


def test_unreachable_or_unknown_dataset_fails_with_a_hint_to_use_local_files(tmp_path, capsys):
    # HF_HUB_OFFLINE=1 fails at once where a machine without network retries for ~20 s first
    r = run_cli(["--dataset", "nobody/no-such-dataset", "--local-dir", "out"], tmp_path)
    assert_clean_failure(r, str(tmp_path / "out"), "nobody/no-such-dataset", "--files")
    assert not (tmp_path / "out").exists()  # made to be locked, then removed: nothing was written in it
    err = fail_inprocess(["--dataset", str(tmp_path / "no_such_folder"), "--local-dir", str(tmp_path / "out")], capsys)
    assert_clean_failure(err, str(tmp_path / "out"), "there is no folder")


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_silences_the_hub_clients_retry_warnings_and_puts_them_back(caplog, quiet):
    # offline, a --dataset from the hub printed 11 of these over ~25 s before fineweb's own error line. The hub
    # client's real retry loop, with short waits, against a port where nothing listens (on any machine)
    import logging
    from huggingface_hub.utils import http_backoff
    logger = logging.getLogger("huggingface_hub.utils._http")
    level = logger.level
    caplog.set_level(logging.WARNING)
    with fineweb.datasets_progress(shown=not quiet), pytest.raises(Exception):
        http_backoff("HEAD", "http://127.0.0.1:9/datasets/HuggingFaceFW/fineweb-edu/resolve/main/README.md",
                     max_retries=1, base_wait_time=0.01, max_wait_time=0.01)
    hub = [r.getMessage() for r in caplog.records if r.name.startswith("huggingface_hub")]
    if quiet:
        assert hub == []
    else:  # fails, says it retries, fails again
        assert len(hub) == 3 and "Retrying in 0.01s [Retry 1/1]." in hub, hub
    assert logger.level == level


def test_missing_text_column_names_the_columns_that_exist(tmp_path, capsys):
    files = write_input(tmp_path / "in", "jsonl", column="content")
    err = fail_inprocess(["--files", *files, "--local-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "hf")],
                         capsys)
    assert_clean_failure(err, str(tmp_path / "out"), "'text'", "id, content", "--text-column")


@pytest.mark.parametrize("streaming", [False, True])
def test_invalid_utf8_text_file_is_named_in_the_error(tmp_path, streaming):
    write_input(tmp_path / "in", "txt", docs=DOCS[:3])
    with open(tmp_path / "in" / "doc_001.txt", "wb") as f:
        f.write(b"valid start, then \xff\xfe not UTF-8")
    r = run_cli(["--files", str(tmp_path / "in" / "*.txt"), "--local-dir", "out"]
                + (["--streaming"] if streaming else []), tmp_path)
    assert_clean_failure(r, str(tmp_path / "out"), "doc_001.txt", "not UTF-8", "0xff")


@pytest.mark.parametrize("case", ["empty jsonl", "empty txt", "no match"])
def test_empty_input_fails_without_writing_anything(tmp_path, capsys, case):
    (tmp_path / "in").mkdir()
    if case == "empty jsonl":
        (tmp_path / "in" / "docs.jsonl").write_text("")
        files, needle = [str(tmp_path / "in" / "docs.jsonl")], "no documents"
    elif case == "empty txt":
        (tmp_path / "in" / "a.txt").write_text("")
        files, needle = [str(tmp_path / "in" / "a.txt")], "error: the input's one document is empty"
    else:
        files, needle = [str(tmp_path / "in" / "*.parquet")], "no file matches"
    err = fail_inprocess(["--files", *files, "--local-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "hf")],
                         capsys)
    assert_clean_failure(err, str(tmp_path / "out"), needle)


@pytest.mark.parametrize("folder", ["of jsonl", "of txt.gz below", "from save_to_disk", "of nothing it reads"])
def test_a_folder_given_to_files_is_named_as_one_with_a_pattern_that_reads_it(tmp_path, capsys, monkeypatch, enc,
                                                                                folder):
    # it said "error: --files: no file matches in", of a folder that is right there
    monkeypatch.chdir(tmp_path)
    if folder == "of jsonl":
        write_input(tmp_path / "in", "jsonl")
        (tmp_path / "in" / "README.md").write_text("about these documents\n")
    elif folder == "of txt.gz below":  # the kind it holds most of, in subfolders: '**'
        write_input(tmp_path / "in" / "books", "txt", docs=DOCS[:3])
        gzip_files(tmp_path / "in" / "books")
        write_input(tmp_path / "in", "jsonl", docs=DOCS[3:4])
    elif folder == "from save_to_disk":  # its dataset_info.json and state.json are no documents
        import datasets
        datasets.Dataset.from_dict({"text": DOCS}).save_to_disk(str(tmp_path / "in"))
    else:
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "notes.md").write_text("not a document\n")
    err = fail_inprocess(["--files", "in", "--local-dir", "out", "--cache-dir", "hf"], capsys)
    pattern = {"of jsonl": "in/*.jsonl", "of txt.gz below": "in/**/*.txt.gz"}.get(folder)
    assert err == "error: --files: in" + {
        "from save_to_disk": " is a folder written by save_to_disk; read it with --dataset in",
        "of nothing it reads": " is a folder, with no file in it that --files reads (.txt, .jsonl/.json, either "
                               "gzipped, or .parquet)",
    }.get(folder, " is a folder; name its files with a pattern, quoted so that the shell leaves it to fineweb.py: "
                  f"--files '{pattern}'") + "\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "hf").exists()
    if pattern:  # the pattern it suggests reads the folder's documents
        run_inprocess([pattern], tmp_path / "out", tmp_path)
        np.testing.assert_array_equal(read_shards(tmp_path / "out"),
                                      expected_stream(enc, DOCS if folder == "of jsonl" else DOCS[:3]))


def test_broken_json_foreign_shards_and_a_broken_manifest_fail_cleanly(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "docs.jsonl").write_text('{"text": "fine"}\n{"text": "no closing brace"\n')
    # a subprocess: datasets logs through a handler that it bound to the stderr of the process's start
    r = run_cli(["--files", str(tmp_path / "in" / "docs.jsonl"), "--local-dir", "out"], tmp_path)
    assert_clean_failure(r, str(tmp_path / "out"), "docs.jsonl line 2 is not valid JSON")
    # a folder with shards this script did not make (no manifest) is never written into
    files = write_input(tmp_path / "in2", "jsonl")
    (tmp_path / "lecture").mkdir()
    np.save(tmp_path / "lecture" / "edufineweb_val_000000.npy", np.zeros(10, dtype=np.uint16))
    err = fail_inprocess(["--files", *files, "--local-dir", str(tmp_path / "lecture")], capsys)
    assert "no manifest.json" in err and "Traceback" not in err
    assert os.listdir(tmp_path / "lecture") == ["edufineweb_val_000000.npy"]
    # nor is a folder whose manifest is unreadable
    (tmp_path / "lecture" / "manifest.json").write_text("{not json")
    err = fail_inprocess(["--files", *files, "--local-dir", str(tmp_path / "lecture")], capsys)
    assert err.startswith("error: cannot read") and "manifest.json" in err


@pytest.mark.parametrize("streaming", [False, True])
def test_a_broken_json_file_among_several_is_named_in_the_only_error_line(tmp_path, streaming):
    # datasets raises an error that names no file (pyarrow's "in row N" counts within a block): ours names it
    files = write_input(tmp_path / "in", "jsonl", docs=DOCS[:3])
    bad = tmp_path / "in" / "later.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "no closing brace"\n')
    r = run_cli(["--files", *files, str(bad), "--local-dir", "out"] + (["--streaming"] if streaming else []),
                tmp_path)
    assert_clean_failure(r, str(tmp_path / "out"))
    # the only line: datasets' own "Failed to load JSON from file ..." line is silenced
    assert r.stderr == f"error: {bad} line 2 is not valid JSON (Expecting ',' delimiter at column 28); fix it or " \
                       "leave the file out\n"
    # likewise in a --dataset folder of .jsonl files, which datasets reads with the same json builder
    if not streaming:
        r = run_cli(["--dataset", str(tmp_path / "in"), "--local-dir", "out2"], tmp_path)
        assert_clean_failure(r, str(tmp_path / "out2"))
        assert r.stderr == f"error: {bad} line 2 is not valid JSON (Expecting ',' delimiter at column 28); " \
                           "fix it or leave the file out\n"


def test_a_json_file_of_one_document_is_read_and_named_with_its_line_when_broken(tmp_path, capsys):
    # datasets reads a .json file that is one JSON array of records as well as JSON lines
    (tmp_path / "in").mkdir()
    good, bad = tmp_path / "in" / "good.json", tmp_path / "in" / "bad.json"
    good.write_text(json.dumps([{"text": doc} for doc in DOCS[:3]], indent=1))
    bad.write_text('[{"text": "a"},\n {"text": "b"}\n')  # the closing bracket is missing
    fineweb.main(["--files", str(good), "--local-dir", str(tmp_path / "out"), "--shard-size", str(SHARD),
                  "--cache-dir", str(tmp_path / "hf"), "--num-proc", "1", "--quiet"])
    assert sum(len(np.load(p)) for p in shard_files(tmp_path / "out")) > 0
    err = fail_inprocess(["--files", str(good), str(bad), "--local-dir", str(tmp_path / "out2"),
                          "--cache-dir", str(tmp_path / "hf2")], capsys)
    assert_clean_failure(err, str(tmp_path / "out2"),
                         f"{bad} line 3 is not valid JSON (Expecting ',' delimiter at column 1)")


@pytest.mark.parametrize("streaming", [False, True])
def test_an_empty_parquet_file_among_others_is_read_as_no_documents(tmp_path, enc, streaming):
    # datasets took its read batch size from row group 0, which an empty file has with 0 rows: "BatchSize must
    # be greater than 0", for the whole run, naming no file
    import pyarrow as pa
    import pyarrow.parquet as pq
    files = write_input(tmp_path / "in", "parquet", docs=DOCS[:5])
    empty = str(tmp_path / "in" / "empty.parquet")
    pq.write_table(pa.table({"id": pa.array([], pa.int64()), "text": pa.array([], pa.string())}), empty)
    run_inprocess([empty, *files], tmp_path / "out", tmp_path, *(["--streaming"] if streaming else []))
    assert np.array_equal(read_shards(tmp_path / "out"), expected_stream(enc, DOCS[:5]))


def test_a_file_named_like_a_glob_pattern_is_that_file(tmp_path, enc):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data[1].txt").write_text(DOCS[1], encoding="utf-8")
    (tmp_path / "in" / "data1.txt").write_text(DOCS[2], encoding="utf-8")  # what the pattern data[1].txt matches
    run_inprocess([str(tmp_path / "in" / "data[1].txt")], tmp_path / "out", tmp_path)
    assert np.array_equal(read_shards(tmp_path / "out"), expected_stream(enc, DOCS[1:2]))


def test_a_local_dir_that_links_to_nothing_stops_before_the_input_is_read(tmp_path, capsys):
    # exists() is False for such a link: the check passed, and the first shard's makedirs failed with "File exists"
    os.symlink(tmp_path / "gone", tmp_path / "shards")
    files = write_input(tmp_path / "in", "jsonl")
    err = fail_inprocess(["--files", *files, "--local-dir", str(tmp_path / "shards"), "--cache-dir",
                          str(tmp_path / "hf")], capsys)
    assert err == (f"error: --local-dir {tmp_path / 'shards'}: {tmp_path / 'shards'} is a link to "
                   f"{tmp_path / 'gone'}, which does not exist\n")
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("where", ["the folder", "a parent"])
def test_a_local_dir_that_is_a_file_stops_before_the_input_is_read(tmp_path, capsys, where):
    (tmp_path / "taken").write_text("not a folder")
    local_dir = tmp_path / "taken" / ("" if where == "the folder" else "shards")
    files = write_input(tmp_path / "in", "jsonl")
    err = fail_inprocess(["--files", *files, "--local-dir", str(local_dir), "--cache-dir", str(tmp_path / "hf")],
                         capsys)
    assert err == f"error: --local-dir {local_dir}: {tmp_path / 'taken'} is a file, not a folder\n"
    assert not (tmp_path / "hf").exists()  # the input was never opened


@pytest.mark.parametrize("where", ["the folder", "a parent"])
def test_a_cache_dir_that_is_a_file_stops_before_the_input_is_read(tmp_path, capsys, where):
    # it was "error: cannot load <the input file>: [Errno 17] File exists: ...", blaming the input
    (tmp_path / "taken").write_text("not a folder")
    cache_dir = tmp_path / "taken" / ("" if where == "the folder" else "hf")
    files = write_input(tmp_path / "in", "jsonl")
    err = fail_inprocess(["--files", *files, "--local-dir", str(tmp_path / "out"), "--cache-dir", str(cache_dir)],
                         capsys)
    assert err == f"error: --cache-dir {cache_dir}: {tmp_path / 'taken'} is a file, not a folder\n"
    assert not (tmp_path / "out").exists()


def test_an_empty_local_dir_stops_before_the_input_is_read(tmp_path, capsys):
    files = write_input(tmp_path / "in", "jsonl")
    err = fail_inprocess(["--files", *files, "--local-dir", "", "--cache-dir", str(tmp_path / "hf")], capsys)
    assert err == "error: --local-dir is empty (an unset variable?): name the folder for the shards\n"
    assert not (tmp_path / "hf").exists()


def test_quiet_silences_the_progress_bars_of_datasets_too_and_restores_them(tmp_path, capsys):
    import datasets
    files = write_input(tmp_path / "in", "jsonl")
    capsys.readouterr()
    run_inprocess(files, tmp_path / "quiet", tmp_path)
    out, err = capsys.readouterr()
    assert err == "" and "Generating train split" not in out
    assert not datasets.utils.are_progress_bars_disabled()  # process-wide: off only while fineweb reads
    fineweb.main(["--files", *files, "--local-dir", str(tmp_path / "loud"), "--shard-size", str(SHARD),
                  "--cache-dir", str(tmp_path / "hf_loud"), "--num-proc", "1"])
    assert "Generating train split" in capsys.readouterr().err  # what --quiet took away


def test_fineweb_edu_named_explicitly_still_means_the_sample_10bt_subset(tmp_path):
    def remote_name(*argv):
        return fineweb.check_args(fineweb.parse_args(list(argv))).remote_name

    assert remote_name() == remote_name("--dataset", "HuggingFaceFW/fineweb-edu") == "sample-10BT"
    assert remote_name("--dataset", "huggingfacefw/FineWeb-Edu") == "sample-10BT"  # hub ids ignore case
    assert remote_name("--dataset", "HuggingFaceFW/fineweb-edu", "--remote-name", "sample-100BT") == "sample-100BT"
    assert remote_name("--dataset", "HuggingFaceFW/fineweb") is None  # another dataset: its own default config
    # what the help promises
    r = subprocess.run([sys.executable, os.path.join(ROOT, "fineweb.py"), "--help"], capture_output=True, text=True)
    assert "(default: sample-10BT for HuggingFaceFW/fineweb-edu, none for other datasets)" in " ".join(r.stdout.split())
    # and the plan it prints, then the load it tries (the hub is offline here, and its cache empty)
    r = run_cli(["--dataset", "HuggingFaceFW/fineweb-edu", "--local-dir", "out"], tmp_path,
                env=dict(HF_HUB_CACHE=str(tmp_path / "hub")))
    assert r.stdout.startswith("fineweb: HuggingFaceFW/fineweb-edu (sample-10BT) -> out/edufineweb_*.npy")
    assert_clean_failure(r, str(tmp_path / "out"), "cannot load dataset 'HuggingFaceFW/fineweb-edu' (sample-10BT)")


@pytest.mark.parametrize("value", ["nan", "inf", "1e300", "0", "-3", "1.5", "1e8x"])
def test_shard_size_that_is_not_a_whole_number_of_tokens_that_fits_in_memory_fails_in_one_line(tmp_path, capsys,
                                                                                                value):
    files = write_input(tmp_path / "in", "jsonl", docs=DOCS[:3])
    err = fail_inprocess(["--files", *files, "--local-dir", str(tmp_path / "out"), "--shard-size", value], capsys)
    limit = fineweb.max_shard_size()
    assert 10**9 < limit < 2**62  # 2 bytes a token of this machine's memory: more than a GB, less than 8 EB
    assert assert_clean_failure(err, str(tmp_path / "out")) == (
        f"error: --shard-size must be a whole number of tokens from 1 to {limit:,} (a shard is built in memory, "
        f"2 bytes a token), got {value}")


def test_shard_size_reads_1e8_and_underscores_as_whole_numbers():
    assert fineweb.parse_shard_size("1e8") == fineweb.parse_shard_size("100_000_000") == 100_000_000
    assert fineweb.parse_shard_size("2.5e3") == 2500 and fineweb.parse_shard_size("1") == 1
    # digits are read as an int, never through a float that would round them
    assert fineweb.parse_shard_size("123456789") == 123456789


def test_files_with_dataset_and_a_bad_num_proc_fail_in_one_line(tmp_path, capsys):
    files = write_input(tmp_path / "in", "jsonl", docs=DOCS[:3])
    out = str(tmp_path / "out")
    err = fail_inprocess(["--files", *files, "--dataset", "x/y", "--local-dir", out], capsys)
    assert assert_clean_failure(err, out) == "error: --files reads local files: give it without --dataset and --remote-name"
    err = fail_inprocess(["--files", *files, "--num-proc", "0", "--local-dir", out], capsys)
    assert assert_clean_failure(err, out) == "error: --num-proc must be at least 1 (got 0)"


def test_non_utf8_json_and_dataset_folder_files_are_named_in_the_error(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    # a JSON array: datasets reads it with pandas, whose error is a ValueError about "UTF-8", not a decode error
    (tmp_path / "in" / "docs.json").write_bytes(b'[{"text": "fine"}, {"text": "caf\xe9 in latin-1"}]')
    err = fail_inprocess(["--files", str(tmp_path / "in" / "docs.json"), "--local-dir", str(tmp_path / "out"),
                          "--cache-dir", str(tmp_path / "hf")], capsys)
    assert assert_clean_failure(err, str(tmp_path / "out")) == (
        f"error: {tmp_path / 'in' / 'docs.json'} is not UTF-8 text (byte 0xe9 at offset 32); "
        "re-encode it or leave it out")
    # a local folder of data files, streamed: the file is only opened while the documents are read
    write_input(tmp_path / "folder", "txt", docs=DOCS[:3])
    (tmp_path / "folder" / "doc_001.txt").write_bytes(b"ok, then \xff")
    err = fail_inprocess(["--dataset", str(tmp_path / "folder"), "--streaming", "--local-dir", str(tmp_path / "out"),
                          "--cache-dir", str(tmp_path / "hf")], capsys)
    assert assert_clean_failure(err, str(tmp_path / "out")) == (
        f"error: {tmp_path / 'folder' / 'doc_001.txt'} is not UTF-8 text (byte 0xff at offset 9); "
        "re-encode it or leave it out")


def test_first_non_utf8_counts_offsets_across_chunks_and_characters_cut_by_them(tmp_path):
    path = tmp_path / "f"
    for data, want in [(b"ab\xe2\x82\xaccd\xff", (7, 0xff)),  # the euro sign is cut by the 2-byte chunks
                       (b"a\xe2\x82\xacb", None),
                       (b"abc\xe2\x82", (3, 0xe2)),  # a character cut short by the end of the file
                       (b"\xe2\x82\xe2\x82\xac", (0, 0xe2)), (b"", None)]:
        path.write_bytes(data)
        assert fineweb.first_non_utf8(str(path), chunk=2) == want, data
        assert fineweb.first_non_utf8(str(path)) == want, data


def test_help_lists_every_option():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "fineweb.py"), "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for flag in ["--remote-name", "--dataset", "--files", "--text-column", "--local-dir", "--shard-size",
                 "--num-proc", "--streaming", "--start-method"]:
        assert flag in r.stdout
