"""train_gpt2.py end to end: a tiny GPT on a tiny real-English corpus, run as the user runs it
(python and torchrun with gloo on CPU): DDP and multi-node equivalence, exact resume after SIGKILL,
the LR schedule, the lecture's console and log formats, learning, torch.compile and every bad input."""
import dataclasses
import json
import math
import os
import pathlib
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest
import torch

import gpt2_modules
import train_gpt2
from dataloaderlite import DataLoaderLite
from gpt2_modules import load_checkpoint
from gpt2_tokenizer import EOT
from test_gpt2_tokenizer import NO_NETWORK

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "train_gpt2.py")
TIMEOUT = 600  # seconds for one run: generous, a shared 2-core CI box can be slow, a hang must not be silent

# 0.1-0.3 s a step on a CPU: 3.3M parameters, almost all in the (padded GPT-2 vocab) x 64 embedding.
# B*T = 128 tokens, 256 per step: 2 micro-steps in one process, 1 on each of 2 processes.
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "64", "--block-size", "64", "-B", "4", "-T", "32",
        "--total-batch-size", "256", "--warmup-steps", "3", "--no-hellaswag", "--vocab-size", "50304",
        # float32 and eager, whatever this CPU's default: the bit-for-bit comparisons are float32's, and
        # compiling every run would cost ~30 s each (the demo test runs the default path)
        "--dtype", "float32", "--no-compile"]
# the run the resume, DDP, format and compile tests compare against: 12 steps, validation at
# 0, 3, 6, 9 and 11, samples at 6 and 11, checkpoints after steps 4, 8 and 12 (all 3 kept: tests resume from each)
REFERENCE = ["--max-steps", "12", "--eval-interval", "3", "--val-steps", "2", "--sample-interval", "6",
             "--checkpoint-interval", "4", "--keep-checkpoints", "3", "--device", "cpu"]

STEP_LINE = re.compile(r"^step +(\d+) \| loss: (\d+\.\d{6}) \| lr (\d\.\d{4}e[-+]\d{2}) \| norm: (\d+\.\d{4}) \| "
                       r"dt: \d+\.\d{2}ms \| tok/sec: \d+\.\d{2}$")


# -----------------------------------------------------------------------------
# a corpus and ways to run the script


@pytest.fixture(scope="session")
def data_root(tmp_path_factory, enc):
    """Shards of real English (Python's help topics, ~140k tokens), each document after an EOT, as fineweb.py writes."""
    from pydoc_data.topics import topics
    tokens = []
    for name in sorted(topics):
        tokens.append(EOT)
        tokens.extend(enc.encode_ordinary(topics[name]))
    tokens = np.array(tokens, dtype=np.uint16)
    folder = tmp_path_factory.mktemp("edu_fineweb_tiny")
    n_val = len(tokens) // 10
    np.save(folder / "edufineweb_val_000000.npy", tokens[:n_val])
    for i, shard in enumerate(np.array_split(tokens[n_val:], 3)):
        np.save(folder / f"edufineweb_train_{i:06d}.npy", shard)
    return str(folder)


def env_for_runs():
    # one thread per process, as torchrun sets for several processes: two processes on two cores then
    # don't fight over threads, and every run of a comparison reduces its floats in the same order
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def tiny(data_root, log_dir, *extra):
    return [*TINY, "--data-root", data_root, "--log-dir", str(log_dir), *extra]


def run_script(args, launcher=(), timeout=TIMEOUT, env=None):
    """Run train_gpt2.py (under torchrun with `launcher` as its arguments); kill its process group on timeout."""
    cmd = [sys.executable, *(["-m", "torch.distributed.run", *launcher] if launcher else []), SCRIPT, *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**env_for_runs(), **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} ran past {timeout} s\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def run_ok(args, launcher=()):
    result = run_script(args, launcher)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_lines(log_dir):
    with open(os.path.join(log_dir, "log.txt")) as f:
        return f.read().splitlines()


def logged(log_dir, kind):
    """{step: value} of log.txt's `{step} {kind} {value}` lines."""
    return {int(s): float(v) for s, k, v in (line.split() for line in log_lines(log_dir)) if k == kind}


def step_fields(stdout):
    """{step: (loss, lr, norm)} as printed: the fields of a step line that a rerun must reproduce (not dt, tok/sec)."""
    return {int(m[1]): m.groups()[1:] for m in map(STEP_LINE.match, stdout.splitlines()) if m}


@pytest.fixture(scope="session")
def reference(data_root, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("reference_log")
    result = run_ok(tiny(data_root, log_dir, *REFERENCE))
    return result.stdout, str(log_dir)


# -----------------------------------------------------------------------------
# the learning-rate schedule


def test_lr_warms_up_linearly_from_max_lr_over_warmup_steps():
    assert train_gpt2.get_lr(0) == pytest.approx(6e-4 / 715, rel=1e-12)
    assert train_gpt2.get_lr(356) == pytest.approx(6e-4 * 357 / 715, rel=1e-12)
    assert train_gpt2.get_lr(714) == pytest.approx(6e-4, rel=1e-12)  # the last warmup step reaches the peak


def test_lr_decays_on_a_cosine_to_min_lr_at_max_steps():
    max_lr, min_lr, warmup, max_steps = 6e-4, 6e-5, 715, 19073
    assert train_gpt2.get_lr(warmup) == pytest.approx(max_lr, rel=1e-12)  # cos(0) = 1
    middle = (warmup + max_steps) // 2  # 9894: decay ratio exactly 1/2
    assert train_gpt2.get_lr(middle) == pytest.approx((max_lr + min_lr) / 2, rel=1e-12)
    quarter = warmup + (max_steps - warmup) // 4  # 5304 = 715 + 4589.5 - 0.5
    ratio = (quarter - warmup) / (max_steps - warmup)
    expected = min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (max_lr - min_lr)
    assert train_gpt2.get_lr(quarter) == pytest.approx(expected, rel=1e-12)
    assert 0.86 * max_lr < expected < 0.87 * max_lr  # a quarter into the decay: (1 + cos(pi/4)) / 2 of the way up
    # the last step trains a hair above the floor: ratio (max_steps-1-warmup)/(max_steps-warmup)
    last = train_gpt2.get_lr(max_steps - 1)
    assert last == pytest.approx(min_lr + 0.5 * (1 + math.cos(math.pi * 18357 / 18358)) * (max_lr - min_lr), rel=1e-12)
    assert min_lr < last < min_lr * (1 + 1e-7)


def test_lr_stays_at_min_lr_from_max_steps_on():
    for step in (19073, 19074, 30000):
        assert train_gpt2.get_lr(step) == pytest.approx(6e-5, rel=1e-12)


def test_lr_defaults_equal_the_lectures_schedule_to_the_last_bit():
    # the lecture: min_lr = max_lr * 0.1 = 5.9999999999999995e-05, not the literal 6e-5
    max_lr, min_lr = 6e-4, 6e-4 * 0.1
    assert train_gpt2.get_lr(715) == min_lr + 1.0 * (max_lr - min_lr) == 0.0005999999999999998
    assert train_gpt2.get_lr(19073) == min_lr == 5.9999999999999995e-05


def test_lr_schedule_uses_the_arguments_it_is_given():
    # the tiny runs below: warmup 3, 12 steps
    assert [round(train_gpt2.get_lr(s, 6e-4, 6e-5, 3, 12), 10) for s in (0, 1, 2, 3)] == [2e-4, 4e-4, 6e-4, 6e-4]
    assert train_gpt2.get_lr(7.5, 6e-4, 6e-5, 3, 12) == pytest.approx(3.3e-4, rel=1e-12)  # the middle of 3..12
    assert train_gpt2.get_lr(12, 6e-4, 6e-5, 3, 12) == pytest.approx(6e-5, rel=1e-12)


@pytest.mark.parametrize("flags, min_lr", [([], 6e-5), (["--max-lr", "1.8e-3"], 1.8e-4),
                                           (["--max-lr", "1.8e-3", "--min-lr", "0"], 0.0)])
def test_min_lr_defaults_to_a_tenth_of_max_lr_as_in_the_lecture(flags, min_lr):
    args = train_gpt2.parse_args(flags)
    train_gpt2.check_args(args, world_size=1)
    assert args.min_lr == pytest.approx(min_lr, rel=1e-12, abs=0)


# -----------------------------------------------------------------------------
# console and log formats (the lecture's; the notebook and the plot parse them)


def test_format_step_reproduces_the_lectures_step_line():
    line = train_gpt2.format_step(0, 10.955009, 1.2e-05, 15.9685, 12701.84, 41276.54)
    # build-nanogpt's print, character for character
    assert line == "step     0 | loss: 10.955009 | lr 1.2000e-05 | norm: 15.9685 | dt: 12701.84ms | tok/sec: 41276.54"
    assert STEP_LINE.match(line)
    line = train_gpt2.format_step(19072, 3.0712, 6e-5, 0.25, 330.1, 1588123.456)
    assert line.startswith("step 19072 | loss: 3.071200 | lr 6.0000e-05 | norm: 0.2500 | dt: 330.10ms |")


def test_console_prints_the_lectures_lines(reference):
    stdout, _ = reference
    lines = stdout.splitlines()
    assert "total desired batch size: 256" in lines
    assert "=> calculated gradient accumulation steps: 2" in lines  # 256 / (4 * 32 * 1 process)
    assert "found 3 shards for split train" in lines
    assert "found 1 shards for split val" in lines
    # the three optimizer lines: 2 blocks x 4 matmuls + wte(=lm_head) + wpe decay; biases and LayerNorms don't
    assert "num decayed parameter tensors: 10, with 3,321,856 parameters" in lines
    assert "num non-decayed parameter tensors: 18, with 1,792 parameters" in lines
    assert "using fused AdamW: False" in lines  # fused AdamW is CUDA's
    steps = [line for line in lines if line.startswith("step ")]
    assert len(steps) == 12 and all(STEP_LINE.match(line) for line in steps), steps
    assert [int(STEP_LINE.match(line)[1]) for line in steps] == list(range(12))
    # each step trains at its own step's rate (warmup 3 of TINY, then the cosine to 12)
    assert [STEP_LINE.match(line)[3] for line in steps] == [f"{train_gpt2.get_lr(s, 6e-4, 6e-5, 3, 12):.4e}"
                                                            for s in range(12)]
    vals = [line for line in lines if line.startswith("validation loss: ")]
    assert len(vals) == 5 and all(re.fullmatch(r"validation loss: \d+\.\d{4}", line) for line in vals), vals
    # samples (4 per sampling, at steps 6 and 11; never at step 0); a sample's text may hold newlines
    samples = re.findall(r"^rank (\d+) sample (\d+): Hello, I'm a language model,", stdout, flags=re.M)
    assert samples == [("0", str(i)) for i in range(4)] * 2
    assert stdout.index("rank 0 sample 0: ") > stdout.index("step     5 |")


def test_log_txt_has_train_and_val_lines_in_the_plotting_format(reference):
    _, log_dir = reference
    lines = log_lines(log_dir)
    assert all(re.fullmatch(r"\d+ train \d+\.\d{6}|\d+ val \d+\.\d{4}", line) for line in lines), lines
    assert sorted(logged(log_dir, "train")) == list(range(12))
    assert sorted(logged(log_dir, "val")) == [0, 3, 6, 9, 11]
    # the lecture's order within a step: validation first, then the step's training loss
    assert lines[0].startswith("0 val ") and lines[1].startswith("0 train ") and lines[2].startswith("1 train ")
    # the losses printed on the console are the ones logged
    stdout, _ = reference
    assert {s: f[0] for s, f in step_fields(stdout).items()} == \
           {int(s): v for s, k, v in (line.split() for line in lines) if k == "train"}


def test_checkpoints_hold_every_stateful_piece_as_plain_data(reference):
    _, log_dir = reference
    assert sorted(os.listdir(log_dir)) == ["log.txt", "model_00004.pt", "model_00004.pt.json", "model_00008.pt",
                                           "model_00008.pt.json", "model_00012.pt", "model_00012.pt.json"]
    ckpt = load_checkpoint(os.path.join(log_dir, "model_00008.pt"))  # torch.load(weights_only=True)
    assert ckpt["step"] == 8
    assert ckpt["config"] == dict(block_size=64, vocab_size=50304, n_layer=2, n_head=2, n_embd=64)
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert len(ckpt["optimizer"]["state"]) == 28  # AdamW moments for every parameter tensor
    # 8 steps x 2 micro-batches of 128 tokens: the 17th window of the first shard (~325 windows) is next
    assert (ckpt["loader"]["epoch"], ckpt["loader"]["shard"], ckpt["loader"]["window"]) == (0, 0, 16)
    assert ckpt["args"]["max_steps"] == 12 and ckpt["args"]["seq_len"] == 32
    assert set(ckpt["rng"]) >= {"torch", "numpy", "python"}


# -----------------------------------------------------------------------------
# learning


def test_gradient_clipping_bounds_the_first_update(data_root, tmp_path):
    # AdamW is blind to the gradient's scale (m/sqrt(v)) except for eps: clipped to a norm of 1e-9, every gradient
    # element falls far below eps=1e-8 and the first update all but vanishes; unclipped it moves weights by ~lr
    train_gpt2.main(tiny(data_root, tmp_path, "--max-steps", "1", "--grad-clip", "1e-9", "--device", "cpu"))
    trained = load_checkpoint(str(tmp_path / "model_00001.pt"))["model"]
    torch.manual_seed(1337)  # train_gpt2's seed, drawn from before the model is built
    initial = gpt2_modules.GPT(gpt2_modules.GPTConfig.named("gpt2", n_layer=2, n_head=2, n_embd=64, block_size=64,
                                                           vocab_size=50304)).state_dict()
    moved = max((trained[k] - initial[k]).abs().max().item() for k in initial)
    assert 0 < moved < 1e-5  # weight decay alone: lr * 0.1 * |w|; an unclipped first step moves by lr = 2e-4


def test_tiny_model_loss_falls_by_two_nats_within_50_steps(data_root, tmp_path):
    run_ok(tiny(data_root, tmp_path, "--max-steps", "50", "--max-lr", "3e-3", "--min-lr", "3e-4",
                "--warmup-steps", "5", "--eval-interval", "1000", "--val-steps", "4",
                "--sample-interval", "1000", "--checkpoint-interval", "1000", "--device", "cpu"))
    train, val = logged(tmp_path, "train"), logged(tmp_path, "val")
    assert sorted(train) == list(range(50)) and sorted(val) == [0, 49]
    assert train[0] > 10.5  # ~ln(50304) = 10.83 at init
    last5 = sum(train[s] for s in range(45, 50)) / 5
    assert train[0] - last5 >= 2.0, train
    assert val[0] - val[49] >= 2.0, val  # held-out text: the model learned English, not these batches


# -----------------------------------------------------------------------------
# processes: DDP on one machine, two "nodes" on loopback


def assert_same_losses_as_reference(log_dir, reference_log_dir):
    train, expected = logged(log_dir, "train"), logged(reference_log_dir, "train")
    assert sorted(train) == sorted(expected) == list(range(12))
    assert max(abs(train[s] - expected[s]) for s in expected) <= 1e-5, (train, expected)
    assert len({round(v, 3) for v in expected.values()}) >= 10  # the steps really differ: a real comparison
    # validation: the reference's 2 micro-batches are the 2 ranks' 1 each, so the means agree
    val, expected_val = logged(log_dir, "val"), logged(reference_log_dir, "val")
    assert sorted(val) == sorted(expected_val) == [0, 3, 6, 9, 11]
    assert max(abs(val[s] - expected_val[s]) for s in expected_val) <= 1.5e-4  # 4 printed decimals


def test_ddp_two_processes_match_one_process_with_gradient_accumulation(data_root, reference, tmp_path):
    _, reference_log_dir = reference
    # HellaSwag too, 5 examples: rank 0 scores 3, rank 1 2, and the line counts all 5 (it does not change training)
    hellaswag_file = tmp_path / "hellaswag_val.jsonl"
    hellaswag_file.write_text("".join(json.dumps({"ctx": f"Step {i} of", "endings": [" a", " the", " one", " it"],
                                                  "label": i % 4}) + "\n" for i in range(5)))
    # -B 2 on each rank: a micro-step is 2 ranks x 2 x 32 = 128 tokens, the reference's (1 x 4 x 32), so rank r
    # reads rows 2r, 2r+1 of the reference's micro-step, and each rank accumulates 2 micro-steps per step, as the
    # reference does: a DDP run that all-reduced the gradient after another micro-step than the last would differ
    args = tiny(data_root, tmp_path, *REFERENCE, "-B", "2",  # val: 2 micro-steps of 128 tokens, the reference's
                "--hellaswag", "--hellaswag-file", str(hellaswag_file))
    result = run_ok(args, launcher=["--standalone", "--nproc_per_node=2"])
    accuracies = re.findall(r"^HellaSwag accuracy: (\d+)/(\d+)=", result.stdout, flags=re.M)
    assert len(accuracies) == 5 and all(total == "5" for _, total in accuracies), accuracies
    assert "=> calculated gradient accumulation steps: 2" in result.stdout.splitlines()
    assert "using device: cpu x 2 process(es)" in result.stdout
    assert_same_losses_as_reference(tmp_path, reference_log_dir)
    # the gradient too: accumulation scales each micro-step's loss, so the norms agree (unscaled, they doubled)
    ours, theirs = step_fields(result.stdout), step_fields(reference[0])
    assert sorted(ours) == list(range(12))
    norm = 2  # (loss, lr, norm)
    assert all(float(ours[s][norm]) == pytest.approx(float(theirs[s][norm]), rel=1e-3) for s in ours), (ours, theirs)
    # every rank prints its own samples
    assert len(re.findall(r"^rank 1 sample \d: ", result.stdout, flags=re.M)) == 8
    # ... from its own seed (SAMPLE_SEED + rank): with the same weights and one seed the ranks printed the same text
    # (a sample's text may hold newlines, so its first line stands for it)
    first_lines = {r: re.findall(rf"rank {r} (sample \d: .*)", result.stdout) for r in "01"}
    assert len(first_lines["1"]) == 8 and all(a != b for a, b in zip(first_lines["0"], first_lines["1"])), first_lines


def run_two_nodes(args_of_node, tmp_path):
    """train_gpt2.py as two torchrun "nodes" of one process each on loopback, node i with args_of_node[i]:
    (exit statuses, outputs)."""
    port = free_port()
    procs = []
    for node_rank, args in enumerate(args_of_node):
        launcher = ["--nnodes=2", "--nproc_per_node=1", f"--node-rank={node_rank}", "--rdzv-backend=c10d",
                    f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=test-{port}",
                    "--local-addr=127.0.0.1"]  # the agent's address for the other node: not the hostname's
        cmd = [sys.executable, "-m", "torch.distributed.run", *launcher, SCRIPT, *args]
        out = open(tmp_path / f"node{node_rank}.out", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env_for_runs(), stdout=out, stderr=subprocess.STDOUT,
                                       text=True, start_new_session=True), out))
    try:
        # a node that fails leaves the other waiting for it at the rendezvous: stop waiting then
        deadline = time.time() + TIMEOUT
        while any(p.poll() is None for p, _ in procs) and not any(p.poll() for p, _ in procs) \
                and time.time() < deadline:
            time.sleep(0.1)
    finally:
        for proc, out in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            out.close()
    return [proc.returncode for proc, _ in procs], [pathlib.Path(out.name).read_text() for _, out in procs]


@pytest.mark.slow
def test_two_nodes_on_loopback_match_one_process_with_gradient_accumulation(data_root, reference, tmp_path):
    _, reference_log_dir = reference
    args = tiny(data_root, tmp_path, *REFERENCE, "--val-steps", "1")
    codes, outputs = run_two_nodes([args, args], tmp_path)
    assert codes == [0, 0], "\n\n".join(o[-5000:] for o in outputs)
    both = "\n".join(outputs)
    assert "using device: cpu x 2 process(es)" in both
    assert "=> calculated gradient accumulation steps: 1" in both
    assert_same_losses_as_reference(tmp_path, reference_log_dir)


@pytest.mark.slow
def test_two_nodes_that_would_resume_from_different_checkpoints_stop_with_one_error_line(data_root, tmp_path):
    # node 1's --log-dir is not node 0's (no shared filesystem): node 0 holds the checkpoint of a two-process
    # run, node 1 none. Before, rank 1 started over at step 0 with a fresh optimizer while rank 0 went on
    node0, node1 = tmp_path / "node0_log", tmp_path / "node1_log"
    run_ok(tiny(data_root, node0, "--max-steps", "2", "--eval-interval", "100", "--sample-interval", "100"),
           launcher=["--standalone", "--nproc_per_node=2"])
    node1.mkdir()
    args = [tiny(data_root, log_dir, "--max-steps", "4", "--resume", "auto") for log_dir in (node0, node1)]
    codes, outputs = run_two_nodes(args, tmp_path)
    assert codes[0] != 0, outputs[0][-5000:]
    errors = [line for line in outputs[0].splitlines() if line.startswith("error:")]
    assert errors == ["error: the ranks would resume from different checkpoints (rank 0: model_00002.pt, rank 1: "
                      "none): rank 0 writes them, so every machine must see its --log-dir (a shared filesystem), "
                      "or a copy of it"], outputs[0][-5000:]
    assert not any(line.startswith("step ") for line in outputs[0].splitlines())


# -----------------------------------------------------------------------------
# exact resume


def test_resume_auto_after_sigkill_matches_uninterrupted_run(data_root, reference, tmp_path):
    reference_stdout, reference_log_dir = reference
    args = tiny(data_root, tmp_path, *REFERENCE)
    checkpoint = tmp_path / "model_00008.pt"
    with open(tmp_path / "killed.out", "w") as out:
        proc = subprocess.Popen([sys.executable, SCRIPT, *args], cwd=ROOT, env=env_for_runs(), stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + TIMEOUT
            while not checkpoint.exists() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.01)  # the file appears whole: written to .tmp, then renamed
            still_running = proc.poll() is None
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    assert still_running and proc.returncode == -signal.SIGKILL, (tmp_path / "killed.out").read_text()[-3000:]
    assert not (tmp_path / "model_00012.pt").exists()

    result = run_ok([*args, "--resume", "auto"])
    assert f"resumed from {checkpoint} at step 8" in result.stdout
    # log.txt, the killed run's lines before step 8 and the resumed run's after, is the uninterrupted run's
    # to the last printed digit (the killed run may have logged step 8 before it died: that line is redone)
    assert log_lines(tmp_path) == log_lines(reference_log_dir)
    expected = step_fields(reference_stdout)
    resumed = step_fields(result.stdout)
    assert sorted(resumed) == [8, 9, 10, 11]
    assert resumed == {s: expected[s] for s in resumed}
    # and it ends where the uninterrupted run ended, down to the last weight
    ours = load_checkpoint(str(tmp_path / "model_00012.pt"))["model"]
    theirs = load_checkpoint(os.path.join(reference_log_dir, "model_00012.pt"))["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def test_help_describes_every_flag_and_shows_its_default(capsys):
    # README sends readers to --help for the defaults; --data-root, -B and --max-lr showed none
    with pytest.raises(SystemExit):
        train_gpt2.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    for shown in ["--data-root DATA_ROOT folder of .npy token shards (made by fineweb.py) (default: edu_fineweb10B)",
                  "micro-batch size per process (default: 64)", "(GPT-3 small) (default: 0.0006)",
                  "(default: 1337)", "(default: 0.1)", "(0: keep all) (default: 2)"]:
        assert shown in text, shown
    assert "(default: None)" not in text and text.count("(default:") >= 25
    # every flag has a help text, on its own line or on the next (--weight-decay, --seed and --device had none)
    with pytest.raises(SystemExit):
        train_gpt2.parse_args(["--help"])
    lines = capsys.readouterr().out.splitlines()
    flags = [i for i, line in enumerate(lines) if re.match(r"^  -", line)]
    for i in flags:
        described = re.match(r"^  -\S.*?  +\S", lines[i]) or re.match(r"^ {20,}\S", lines[i + 1])
        assert described, lines[i]


def test_a_resume_names_the_flags_that_changed_since_its_checkpoint():
    saved = vars(train_gpt2.parse_args(["--data-root", "old_shards", "--resume", "none"]))
    now = vars(train_gpt2.parse_args(["--data-root", "new_shards", "--resume", "auto", "--total-batch-size", "262144",
                                      "--stop-after", "5", "--log-dir", "elsewhere"]))
    assert train_gpt2.changed_args(saved, now) == "--data-root old_shards -> new_shards, --total-batch-size 524288 " \
                                                  "-> 262144"


def test_resume_from_a_checkpoint_path_matches_uninterrupted_run(data_root, reference, tmp_path):
    reference_stdout, reference_log_dir = reference
    checkpoint = os.path.join(reference_log_dir, "model_00004.pt")
    result = run_ok(tiny(data_root, tmp_path, *REFERENCE, "--resume", checkpoint))
    assert f"resumed from {checkpoint} at step 4" in result.stdout
    assert "note: flags changed" not in result.stdout  # another --log-dir and --resume change nothing of the run
    expected_lines = [line for line in log_lines(reference_log_dir) if int(line.split()[0]) >= 4]
    assert log_lines(tmp_path) == expected_lines  # val at 6, 9, 11 too: the val loader starts over each time
    expected = step_fields(reference_stdout)
    resumed = step_fields(result.stdout)
    assert sorted(resumed) == list(range(4, 12))
    assert resumed == {s: expected[s] for s in resumed}
    # the samples at steps 6 and 11 are the same text as well
    samples = re.findall(r"^rank 0 sample \d: .*$", result.stdout, flags=re.M)
    assert samples == re.findall(r"^rank 0 sample \d: .*$", reference_stdout, flags=re.M)


def test_a_resume_with_a_smaller_batch_size_goes_on_with_the_same_tokens(data_root, reference, tmp_path):
    # what the out-of-memory error line advises: a smaller -B, the same --total-batch-size by more accumulation
    reference_stdout, reference_log_dir = reference
    checkpoint = os.path.join(reference_log_dir, "model_00004.pt")
    result = run_ok(tiny(data_root, tmp_path, *REFERENCE, "--resume", checkpoint, "-B", "2"))
    assert "note: flags changed since that checkpoint was written: --batch-size 4 -> 2" in result.stdout
    assert "note: the checkpoint read the data in micro-steps of B*T*processes = 4*32*1 tokens, this run in 2*32*1: " \
           "it goes on from the very token where the checkpoint stood\n" in result.stdout
    assert "gradient accumulation steps: 4" in result.stdout
    expected, resumed = step_fields(reference_stdout), step_fields(result.stdout)
    assert sorted(resumed) == list(range(4, 12))
    # the same 256 tokens a step in the same order, in 4 micro-steps of 64 instead of 2 of 128: the same
    # losses and gradient norms but for float32's order of summation
    for s in range(4, 12):
        assert float(resumed[s][0]) == pytest.approx(float(expected[s][0]), abs=2e-5), s
        assert float(resumed[s][2]) == pytest.approx(float(expected[s][2]), rel=1e-3), s


def test_a_resume_trains_with_this_runs_weight_decay_not_the_checkpoints(data_root, reference, tmp_path):
    reference_stdout, reference_log_dir = reference
    checkpoint = os.path.join(reference_log_dir, "model_00008.pt")
    result = run_ok(tiny(data_root, tmp_path, *REFERENCE, "--resume", checkpoint, "--weight-decay", "50"))
    assert "note: flags changed since that checkpoint was written: --weight-decay 0.1 -> 50.0" in result.stdout
    expected, resumed = step_fields(reference_stdout), step_fields(result.stdout)
    assert resumed[8][0] == expected[8][0]  # the loss before the first update under the new decay
    assert all(resumed[s][0] != expected[s][0] for s in (9, 10, 11))  # torch's load_state_dict kept 0.1: equal
    saved = load_checkpoint(str(tmp_path / "model_00012.pt"))
    assert [g["weight_decay"] for g in saved["optimizer"]["param_groups"]] == [50.0, 0.0] == [
        saved["args"]["weight_decay"], 0.0]


def test_optimizer_state_loads_under_this_runs_settings_fused_or_not():
    torch.manual_seed(0)
    model = gpt2_modules.GPT(gpt2_modules.GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8))
    x = torch.randint(0, 16, (2, 8))
    old = model.configure_optimizers(0.1, 1e-3, "cpu", verbose=False)  # unfused, as on a CPU
    model(x, x)[1].backward()
    old.step()
    groups = [{"params": g["params"], "weight_decay": wd} for g, wd in zip(old.param_groups, (0.5, 0.0))]
    new = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=True)  # as a GPU run builds it
    train_gpt2.load_optimizer_state(new, old.state_dict())
    assert [(g["weight_decay"], g["fused"]) for g in new.param_groups] == [(0.5, True), (0.0, True)]
    for p in model.parameters():
        assert torch.equal(new.state[p]["exp_avg"], old.state[p]["exp_avg"])
        assert new.state[p]["step"].item() == 1
    new.step()  # the fused kernel takes the loaded state
    assert all(new.state[p]["step"].item() == 2 for p in model.parameters())


def test_resume_restores_the_random_states_the_checkpoint_saved(data_root, tmp_path):
    # guards set_rng_state in resume: without it a resumed run drew other random numbers than the uninterrupted one
    # (nothing in the tiny runs draws from them after the initialisation, so the comparisons of runs missed it)
    torch.manual_seed(7)
    np.random.seed(7)
    random.seed(7)
    model = gpt2_modules.GPT(gpt2_modules.GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8))
    optimizer = model.configure_optimizers(0.1, 1e-3, "cpu", verbose=False)
    loader = DataLoaderLite(2, 8, 0, 1, "train", data_root=data_root, verbose=False)
    args = train_gpt2.parse_args(["--data-root", data_root, "--log-dir", str(tmp_path)])
    path = str(tmp_path / "model_00003.pt")
    train_gpt2.save_checkpoint(path, model, optimizer, 3, loader.state_dict(), args)
    saved = load_checkpoint(path)["rng"]
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])  # what follows the save
    torch.manual_seed(1)  # another run's states
    np.random.seed(1)
    random.seed(1)
    assert train_gpt2.resume(path, model, optimizer, loader, args, 1, lambda *a, **k: None) == 3
    assert torch.equal(torch.get_rng_state(), saved["torch"])
    assert np.random.get_state()[1].tolist() == saved["numpy"].tolist()
    assert np.random.get_state()[2] == saved["numpy_pos"]
    assert list(random.getstate()[1]) == saved["python"]
    drawn = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(drawn[0], expected[0]) and drawn[1].tolist() == expected[1].tolist() and drawn[2] == expected[2]


# which checkpoint --resume auto picks (the newest complete one): tests/test_fault_tolerance.py


# -----------------------------------------------------------------------------
# torch.compile


@pytest.mark.slow
def test_compiled_run_trains_validates_and_samples_like_the_eager_run(data_root, reference, tmp_path):
    reference_stdout, reference_log_dir = reference
    # steps 0-2 are warmup, whose learning rates do not depend on --max-steps: comparable to the reference
    result = run_ok(tiny(data_root, tmp_path, "--compile", "--max-steps", "3", "--eval-interval", "3",
                         "--val-steps", "2", "--sample-interval", "6", "--checkpoint-interval", "4",
                         "--device", "cpu"))
    assert "compile True" in result.stdout
    train, expected = logged(tmp_path, "train"), logged(reference_log_dir, "train")
    assert sorted(train) == [0, 1, 2]
    assert max(abs(train[s] - expected[s]) for s in train) < 1e-4, (train, expected)
    val = logged(tmp_path, "val")
    assert sorted(val) == [0, 2]
    assert abs(val[0] - logged(reference_log_dir, "val")[0]) <= 1.5e-4
    assert math.isfinite(val[2]) and val[2] < val[0]
    assert len(re.findall(r"^rank 0 sample \d: Hello, I'm a language model,", result.stdout, flags=re.M)) == 4
    ckpt = load_checkpoint(str(tmp_path / "model_00003.pt"))
    assert not any(k.startswith("_orig_mod.") for k in ckpt["model"])


def test_compiling_on_cpu_needs_the_compiler_inductor_would_use_and_pythons_headers(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-anywhere")
    assert not train_gpt2.can_compile_on_cpu()
    monkeypatch.setenv("CXX", sys.executable)  # any program on disk counts as found
    headers = os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h"))
    assert train_gpt2.can_compile_on_cpu() == headers


def test_a_failing_compiler_is_one_error_line_that_suggests_no_compile(data_root, tmp_path):
    # a compiler that exists but fails, as on a machine without Python's headers: not 100 lines of inductor
    env = {"CXX": "/bin/false", "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = run_script(tiny(data_root, tmp_path, "--compile", "--max-steps", "1", "--device", "cpu"), env=env)
    line = assert_one_error_line(result)
    assert "torch.compile failed" in line and "--no-compile" in line and "C++ compiler" in line


def test_a_folder_with_a_space_that_inductor_would_hand_the_compiler_turns_cpu_compiling_off(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "in ductor"))
    assert train_gpt2.spaced_compile_paths() == [str(tmp_path / "in ductor")]
    assert not train_gpt2.can_compile_on_cpu()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    assert str(tmp_path / "inductor") not in train_gpt2.spaced_compile_paths()


@pytest.mark.slow
def test_torch_in_a_folder_with_a_space_trains_eagerly_by_default_and_says_why_compiling_fails(data_root, tmp_path):
    # a venv in "My Projects": torch's folder reaches the linker unquoted (`cannot find Projects/...`);
    # torch imported through a link with a space in its path is the same case, without a second venv
    site = tmp_path / "my venv"
    site.mkdir()
    (site / "site-packages").symlink_to(os.path.dirname(os.path.dirname(torch.__file__)))
    env = {"PYTHONPATH": str(site / "site-packages"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    # TINY's --dtype float32 --no-compile dropped: the defaults, which compile on a CPU with bf16 (as this one)
    flags = [f for f in tiny(data_root, tmp_path / "auto", "--max-steps", "1", "--device", "cpu")
             if f not in ("--dtype", "float32", "--no-compile")]
    result = run_script(flags, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"\| compile False \|", result.stdout), result.stdout[:2000]
    result = run_script(tiny(data_root, tmp_path / "asked", "--max-steps", "1", "--device", "cpu", "--compile"),
                        env=env)
    result.stderr = without_torchs_own_warnings(result.stderr)
    line = assert_one_error_line(result)
    assert "torch.compile failed" in line and f"holds a space: {site / 'site-packages'}" in line, line


@pytest.mark.parametrize("device,bf16,cxx,flags,expected", [
    ("cuda", False, False, {}, ("bfloat16", True)),
    ("mps", True, True, {}, ("float32", False)),
    ("cpu", True, True, {}, ("bfloat16", True)),  # the fastest on our AVX512_BF16 CPU, as measured
    ("cpu", True, False, {}, ("bfloat16", False)),  # no C++ compiler for inductor: eager
    ("cpu", False, True, {}, ("float32", False)),  # bf16 would be emulated; compiled float32 gained nothing
    ("cpu", False, True, {"dtype": "bfloat16"}, ("bfloat16", True)),
    ("cpu", True, True, {"dtype": "float32"}, ("float32", False)),
    ("cpu", True, True, {"compile": False}, ("bfloat16", False)),
    ("cuda", False, False, {"dtype": "float32", "compile": False}, ("float32", False)),
])
def test_default_dtype_and_compile(monkeypatch, device, bf16, cxx, flags, expected):
    monkeypatch.setattr(gpt2_modules, "cpu_has_bf16", lambda: bf16)
    monkeypatch.setattr(train_gpt2, "can_compile_on_cpu", lambda: cxx)
    assert train_gpt2.default_dtype_and_compile(device, **flags) == expected


# -----------------------------------------------------------------------------
# bad input: one line `error: ...` on stderr, exit status != 0, no traceback


def without_torchs_own_warnings(stderr):
    """stderr less what torch itself says on some machines when a run compiles: torch's words, not ours.
    - a CUDA build of torch on a machine without a GPU, as inductor compiles for the CPU: one logged line
      ("No CUDA runtime is found, using CUDA_HOME=...", from torch.utils.cpp_extension);
    - on Python 3.13.0 exactly, dynamo's "Guards may run slower on Python 3.13.0" RuntimeWarning (CPython #125608,
      fixed in 3.13.1): the warning's line, then the indented source line Python prints under it."""
    kept, skip_source_line = [], False
    for line in stderr.splitlines(keepends=True):
        if skip_source_line and line.startswith("  "):
            skip_source_line = False
            continue
        skip_source_line = bool(re.search(r"RuntimeWarning: Guards may run slower on Python 3\.13\.0\.", line))
        if not skip_source_line and not re.match(r"W\d{4} .*\] No CUDA runtime is found", line):
            kept.append(line)
    return "".join(kept)


def test_without_torchs_own_warnings_drops_torchs_lines_and_keeps_ours():
    # the lines in the form torch 2.13.0 prints them (a CUDA build without a GPU; Python 3.13.0)
    ours = "error: the shards hold token id 60000\n  an indented line of ours\n"
    stderr = ("W1203 08:41:07.123000 4242 torch/utils/cpp_extension.py:178] No CUDA runtime is found, using "
              "CUDA_HOME='/usr/local/cuda'\n"
              "/venv/lib/python3.13/site-packages/torch/_dynamo/guards.py:1343: RuntimeWarning: Guards may run slower "
              "on Python 3.13.0. Consider upgrading to Python 3.13.1+.\n"
              "  warnings.warn(\n")
    assert without_torchs_own_warnings(stderr + ours) == ours
    assert without_torchs_own_warnings(ours + stderr) == ours
    assert without_torchs_own_warnings("RuntimeWarning: something else\n  x\n") == "RuntimeWarning: something else\n  x\n"


def assert_one_error_line(result):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def _overcommit_mode():
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip()
    except OSError:
        return None


HEURISTIC_OVERCOMMIT = _overcommit_mode() == "0"


def run_main_in_process(argv, capsys):
    """train_gpt2.main as the CLI calls it, in this process (no interpreter start): its error line and exit status."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_gpt2.main(argv)
    err = capsys.readouterr().err
    return subprocess.CompletedProcess(argv, exit_info.value.code, "", err)


@pytest.mark.parametrize("extra, expected", [
    (["--total-batch-size", "300"], r"--total-batch-size 300 is not divisible by B\*T\*processes = 4\*32\*1 = 128; "
                                    r"nearest valid: 256 or 384"),
    (["--total-batch-size", "100"], r"nearest valid: 128$"),
    (["-T", "128", "--total-batch-size", "512"], r"--seq-len 128 exceeds the model's block size 64"),
    (["-B", "0"], r"--batch-size must be positive, got 0"),
    (["--n-embd", "-64"], r"--n-embd must be positive, got -64"),
    (["--max-steps", "0"], r"--max-steps must be positive"),
    (["--n-embd", "63"], r"n_embd \(63\) must be divisible by n_head \(2\)"),
    (["--keep-checkpoints", "-1"], r"--keep-checkpoints must be 0 \(keep all\) or more, got -1"),
    (["--max-lr", "inf"], r"--max-lr inf is too large: AdamW computes it / \(1 - beta1\) = 10 x it in float32, "
                          r"which overflows$"),
    (["--max-lr", "1e38"], r"--max-lr 1e\+38 is too large"),  # torch's overflow error, mid-update, before
    (["--grad-clip", "0"], r"--grad-clip must be positive, got 0.0"),
    (["--grad-clip", "-1"], r"--grad-clip must be positive, got -1.0"),
    (["--weight-decay", "-5"], r"--weight-decay must be 0 or more, got -5.0"),
    # the run diverged at step 1 and blamed --max-lr
    (["--weight-decay", "inf"], r"^error: --weight-decay inf is too large for --max-lr 0.0006: AdamW multiplies the "
                                r"weights by 1 - lr \* weight_decay each step, which must stay above 0 \(the "
                                r"defaults: 1 - 0.0006 \* 0.1\)$"),
    (["--weight-decay", "2000"], r"^error: --weight-decay 2000 is too large for --max-lr 0.0006"),
    (["--seed", str(2**64)], r"--seed must fit in 64 bits, got 18446744073709551616$"),
    (["--log-dir", __file__], r"^error: --log-dir .*test_train_gpt2.py is a file, not a folder$"),
    (["--resume", os.path.dirname(__file__)], r"^error: --resume .*tests is a folder: name a checkpoint file in it, or "
                                              r"resume its newest with --resume auto --log-dir .*tests$"),
    (["--log-dir", ""], r"^error: --log-dir is empty \(an unset variable\?\): name a folder$"),
    (["--data-root", ""], r"^error: --data-root is empty \(an unset variable\?\): name a folder$"),
    # 4M wide: an 800 GB token embedding, which Linux's default overcommit heuristic refuses at once
    pytest.param(["--n-embd", "4000000", "--n-head", "1"], r"out of memory \(.*can't allocate memory.*\); a "
                 r"smaller --batch-size needs less, and gradient accumulation keeps",
                 marks=pytest.mark.skipif(not HEURISTIC_OVERCOMMIT, reason="needs vm.overcommit_memory = 0")),
])
def test_bad_sizes_stop_with_one_error_line(data_root, tmp_path, capsys, extra, expected):
    line = assert_one_error_line(run_main_in_process(tiny(data_root, tmp_path, "--max-steps", "2", *extra), capsys))
    assert re.search(expected, line), line
    assert not os.path.exists(tmp_path / "log.txt")  # stopped before the run began


@pytest.mark.parametrize("env, expected", [
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE is 'abc', not a whole number: torchrun sets it; unset it to run one process"),
    ({"RANK": "abc"}, "RANK is 'abc', not a whole number: torchrun sets it; unset it to run one process"),
    ({"LOCAL_RANK": "1.5"}, "LOCAL_RANK is '1.5', not a whole number: torchrun sets it; unset it to run one process"),
    # 0 divided the batch by zero; a RANK beyond WORLD_SIZE printed nothing at all (only rank 0 speaks)
    ({"WORLD_SIZE": "0"}, "RANK 0, LOCAL_RANK 0 and WORLD_SIZE 0 do not fit together (0 <= RANK < WORLD_SIZE): "
                          "torchrun sets them; unset them to run one process"),
    ({"RANK": "5"}, "RANK 5, LOCAL_RANK 0 and WORLD_SIZE 1 do not fit together (0 <= RANK < WORLD_SIZE): "
                    "torchrun sets them; unset them to run one process"),
    # a WORLD_SIZE left in the shell: torch's "environment variable RANK expected, but not set" said not why
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE is 2 but RANK, MASTER_ADDR and MASTER_PORT are not set: torchrun sets them "
                          "all; unset WORLD_SIZE to run one process"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"},
     "WORLD_SIZE is 2 but MASTER_PORT is not set: torchrun sets them all; unset WORLD_SIZE to run one process"),
    ({"WORLD_SIZE": "2", "MASTER_PORT": "29500"},
     "WORLD_SIZE is 2 but RANK and MASTER_ADDR are not set: torchrun sets them all; unset WORLD_SIZE to run one "
     "process"),
])
def test_torchrun_variables_it_would_never_set_are_an_error_line(data_root, tmp_path, capsys, monkeypatch, env,
                                                                 expected):
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    line = assert_one_error_line(run_main_in_process(tiny(data_root, tmp_path / "log", "--max-steps", "2"), capsys))
    assert line == f"error: {expected}"
    assert not os.path.exists(tmp_path / "log")


def test_a_log_txt_that_is_a_folder_is_named(data_root, tmp_path, capsys):
    (tmp_path / "log" / "log.txt").mkdir(parents=True)
    line = assert_one_error_line(run_main_in_process(tiny(data_root, tmp_path / "log", "--max-steps", "1"), capsys))
    assert line == (f"error: {tmp_path / 'log' / 'log.txt'} is a folder: the run's log file goes there; move the "
                    "folder away")
    assert os.listdir(tmp_path / "log") == ["log.txt"]  # no log.txt.tmp left behind


@pytest.mark.parametrize("case, expected", [
    ("missing", r"no shards for split 'train' in .*/data/ \(files like edufineweb_train_000001.npy\): make them with "
                r"`python fineweb.py --local-dir .*/data`"),
    ("empty", r"no shards for split 'train' in .*/data/ .*: make them with `python fineweb.py --local-dir .*/data`"),
    ("no val shard", r"no shards for split 'val' in .*/data/ \(files like edufineweb_val_000000.npy\)"),
    ("int32 shard", r"edufineweb_train_000001.npy is not a 1-D uint16 token array: dtype int32, shape \(\d+,\)$"),
    ("2-D shard", r"edufineweb_train_000001.npy is not a 1-D uint16 token array: dtype uint16, shape \(\d+, 2\)$"),
    ("truncated shard", r"edufineweb_train_000001.npy cannot be loaded as a .npy array \(.*\): it is truncated or "
                        r"not a shard; delete it and rerun the fineweb.py command that made it \(it rewrites only "
                        r"what is missing\)$"),
])
def test_bad_data_folders_stop_with_one_error_line(data_root, tmp_path, capsys, case, expected):
    folder = tmp_path / "data"
    if case != "missing":
        folder.mkdir()
    if case not in ("missing", "empty"):
        for name in os.listdir(data_root):
            if not (case == "no val shard" and "_val_" in name):
                shutil.copy(os.path.join(data_root, name), folder / name)
    bad = folder / "edufineweb_train_000001.npy"
    if case == "int32 shard":
        np.save(bad, np.load(bad).astype(np.int32))
    elif case == "2-D shard":
        np.save(bad, np.load(bad)[:1000].reshape(-1, 2))
    elif case == "truncated shard":
        bad.write_bytes(bad.read_bytes()[: os.path.getsize(bad) // 2])
    line = assert_one_error_line(run_main_in_process(tiny(str(folder), tmp_path / "log"), capsys))
    assert re.search(expected, line), line
    assert not os.path.exists(tmp_path / "log")  # stopped before the run began


@pytest.mark.parametrize("sizes, noted", [([], True), (["-B", "8"], False), (["-T", "256"], False)])
def test_a_cpu_run_at_a_gpus_micro_batch_says_so_before_the_long_wait(tmp_path, capsys, sizes, noted):
    # GPT-2 124M at B=64, T=1024 on this repo's 2-core CPU had not finished its first validation 15 minutes
    # after starting, in silence; the note comes before the shards are even looked for
    with pytest.raises(SystemExit):
        train_gpt2.main(["--device", "cpu", "--no-hellaswag", "--data-root", str(tmp_path / "none"),
                         "--log-dir", str(tmp_path / "log"), *sizes])
    out = capsys.readouterr().out
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    if noted:
        assert len(notes) == 1 and notes[0].startswith("note: B=64, T=1024 is a GPU's micro-batch (8 a step here), "
                                                       "slow on a CPU: "), out
        assert "`python demo.py` prints a train_gpt2.py command to copy" in notes[0]
    else:
        assert notes == [], out


def test_hellaswag_examples_too_long_for_the_model_stop_the_run_at_start_up(data_root, tmp_path, capsys):
    # found when the examples are rendered, before the first step, not at the first evaluation
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text(json.dumps({"ctx": "A man", "endings": [" word" * 100, " b", " c", " d"], "label": 0}) + "\n")
    line = assert_one_error_line(run_main_in_process(
        tiny(data_root, tmp_path / "log", "--hellaswag", "--hellaswag-file", str(path)), capsys))
    assert re.fullmatch(rf"error: HellaSwag {re.escape(str(path))}: an ending of 10\d tokens does not fit block_size "
                        r"64; pass another --hellaswag-file or --no-hellaswag", line), line
    assert not os.path.exists(tmp_path / "log")


def test_hellaswag_without_its_file_or_download_names_this_scripts_flags(data_root, tmp_path, capsys, monkeypatch):
    # hellaswag.py's --file is not a flag here: the hint named it, and `train_gpt2.py --file` failed again
    monkeypatch.delenv("HELLASWAG_FILE", raising=False)
    (tmp_path / "taken").write_text("a file where the HellaSwag cache folder would go")  # no download tried
    monkeypatch.setenv("HELLASWAG_DIR", str(tmp_path / "taken"))
    line = assert_one_error_line(run_main_in_process(tiny(data_root, tmp_path / "log", "--hellaswag"), capsys))
    assert line.endswith("; set HELLASWAG_DIR to another folder, or set HELLASWAG_FILE=/path/to/hellaswag_val.jsonl "
                         "or pass --hellaswag-file (or leave HellaSwag out with --no-hellaswag)"), line
    assert not os.path.exists(tmp_path / "log")


def test_an_empty_hellaswag_file_stops_the_run_at_start_up(data_root, tmp_path, capsys):
    # before, it passed start-up and the first evaluation divided by its 0 examples (ZeroDivisionError)
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("")
    line = assert_one_error_line(run_main_in_process(
        tiny(data_root, tmp_path / "log", "--hellaswag", "--hellaswag-file", str(path)), capsys))
    assert line == (f"error: HellaSwag {path}: {path} holds no HellaSwag examples (one JSON object per line "
                    "expected); pass another --hellaswag-file or --no-hellaswag")
    assert not os.path.exists(tmp_path / "log")


def test_device_cuda_without_a_gpu_is_an_error_line(data_root, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    # a real interpreter: nothing else (a warning, a traceback) may reach stderr
    line = assert_one_error_line(run_script(tiny(data_root, tmp_path, "--device", "cuda")))
    assert "--device cuda" in line and "no CUDA GPU" in line


def test_more_processes_than_gpus_is_an_error_line_that_names_the_count():
    # torchrun --nproc_per_node=8 on a 4-GPU machine: ranks 4-7 died in torch.cuda.set_device with a traceback
    assert [train_gpt2.cuda_device(r, 4) for r in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    with pytest.raises(train_gpt2.ConfigError) as e:
        train_gpt2.cuda_device(4, 4)
    assert str(e.value) == ("LOCAL_RANK is 4 but this machine has 4 GPU(s): start at most 4 process(es) on it "
                            "(torchrun --nproc_per_node=4)")


def test_an_empty_tokenizer_cache_offline_is_an_error_line_before_the_model_is_built(data_root, tmp_path):
    # the samples need the tokenizer; it used to be fetched after the model was built and compiled
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache"), "NO_PROXY": "", "no_proxy": "", **NO_NETWORK}
    result = run_script(tiny(data_root, tmp_path / "log"), env=env)
    line = assert_one_error_line(result)
    assert "neither downloadable nor cached" in line and "python gpt2_tokenizer.py --seed-cache" in line, line
    assert "num decayed parameter tensors" not in result.stdout  # configure_optimizers never ran
    assert not os.path.exists(tmp_path / "log")


def test_resume_from_a_checkpoint_with_later_ones_beside_it_is_an_error_line(data_root, reference, tmp_path, capsys):
    # going back to step 4 would leave steps 8 and 12 of the old branch for a later --resume auto to pick
    log_dir = tmp_path / "log"
    shutil.copytree(reference[1], log_dir)
    line = assert_one_error_line(run_main_in_process(
        tiny(data_root, log_dir, *REFERENCE, "--resume", str(log_dir / "model_00004.pt")), capsys))
    assert line == (f"error: {log_dir}/ holds checkpoints after model_00004.pt (newest: model_00012.pt): a later "
                    "--resume auto would continue that run, not this one; move them away, or resume into another "
                    "--log-dir")
    assert log_lines(log_dir) == log_lines(reference[1])  # the old run's log is untouched


def test_resume_of_a_checkpoint_of_weights_only_is_an_error_line(data_root, reference, tmp_path, capsys):
    ckpt = torch.load(os.path.join(reference[1], "model_00004.pt"), weights_only=True)
    del ckpt["optimizer"]  # slimmed to save space
    torch.save(ckpt, tmp_path / "slim model.pt")
    line = assert_one_error_line(run_main_in_process(
        tiny(data_root, tmp_path / "log", "--resume", str(tmp_path / "slim model.pt")), capsys))
    # the flag quoted, to copy
    assert line == (f"error: {tmp_path / 'slim model.pt'} holds no optimizer to resume from (weights only?); start a "
                    f"run from its weights with --init-from '{tmp_path / 'slim model.pt'}'")


def test_resume_of_a_missing_file_is_an_error_line(data_root, tmp_path, capsys):
    missing = str(tmp_path / "nope" / "model_00004.pt")
    line = assert_one_error_line(run_main_in_process(tiny(data_root, tmp_path, "--resume", missing), capsys))
    assert f"--resume {missing}: no such checkpoint file" in line


@pytest.mark.parametrize("content", ["text", "foreign", "truncated"])
def test_resume_of_a_file_that_is_no_checkpoint_is_an_error_line(data_root, reference, tmp_path, capsys, content):
    path = tmp_path / "model_00004.pt"
    if content == "text":
        path.write_text("step 4, trust me\n")
    elif content == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)  # a torch file, not one of ours
    else:
        data = pathlib.Path(reference[1], "model_00004.pt").read_bytes()
        path.write_bytes(data[: len(data) // 2])
    line = assert_one_error_line(run_main_in_process(tiny(data_root, tmp_path, "--resume", str(path)), capsys))
    assert str(path) in line and "checkpoint" in line


def test_resume_of_another_models_checkpoint_is_an_error_line_naming_the_flags_to_pass(data_root, reference,
                                                                                        tmp_path, capsys):
    checkpoint = os.path.join(reference[1], "model_00004.pt")  # n_embd 64
    line = assert_one_error_line(run_main_in_process(
        tiny(data_root, tmp_path, "--n-embd", "32", "--resume", checkpoint), capsys))
    assert line == f"error: {checkpoint} holds a model of another shape than this run builds: resume it with --n-embd 64"
    assert not os.path.exists(tmp_path / "log.txt")
    # a CPU-sized run resumed with none of its flags: it was "B*T ... fewer than one micro-step needs: use a
    # smaller B or T", then, with those fixed, a 124M model built only to be refused with two configs to compare
    line = assert_one_error_line(run_main_in_process(
        ["--data-root", data_root, "--log-dir", str(tmp_path), "--resume", checkpoint, "--no-hellaswag"], capsys))
    assert line == (f"error: {checkpoint} holds a model of another shape than this run builds: resume it with "
                    "--n-layer 2 --n-head 2 --n-embd 64 --block-size 64 (its data flags were --batch-size 4 "
                    "--seq-len 32 --total-batch-size 256; those may change on a resume)")


def test_a_resume_without_the_init_from_of_its_run_names_it(tmp_path):
    # a run started from a save_pretrained folder (or OpenAI's weights) has that model's shape, whatever --model says
    model = gpt2_modules.GPT(gpt2_modules.GPTConfig(block_size=64, vocab_size=50257, n_layer=1, n_head=2, n_embd=32))
    path = str(tmp_path / "model_00004.pt")
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config),
                "args": vars(train_gpt2.parse_args(["--init-from", "/models/hf tiny"]))}, path)
    with pytest.raises(train_gpt2.ConfigError) as e:
        train_gpt2.check_resume_shape(path, train_gpt2.parse_args([]))
    assert str(e.value) == (f"{path} holds a model of another shape than this run builds: resume it with "
                            "--init-from '/models/hf tiny'")  # quoted, to copy
    train_gpt2.check_resume_shape(path, train_gpt2.parse_args(["--init-from", "/models/hf tiny"]))  # resume() checks


def test_the_batch_size_check_counts_every_process():
    # guards span = B*T*world_size: 384 is a multiple of B*T = 128 but not of the 256 tokens 2 processes read
    args = train_gpt2.parse_args(["-B", "4", "-T", "32", "--total-batch-size", "384"])
    train_gpt2.check_args(args, world_size=1)  # 3 micro-steps in one process
    with pytest.raises(train_gpt2.ConfigError) as e:
        train_gpt2.check_args(args, world_size=2)
    assert str(e.value) == ("--total-batch-size 384 is not divisible by B*T*processes = 4*32*2 = 256; "
                            "nearest valid: 256 or 512")


def test_bad_input_under_torchrun_prints_one_error_line(data_root, tmp_path):
    # every rank finds the problem; rank 0 says it (torchrun then adds its own report of the failed ranks)
    # --max-steps 1: had the check missed the bad size (as a span without the process count did), the
    # run would have trained for 1 step, not 19,073 into the 600 s timeout
    result = run_script(tiny(data_root, tmp_path, "--total-batch-size", "384", "--max-steps", "1"),
                        launcher=["--standalone", "--nproc_per_node=2"])
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: --total-batch-size 384 is not divisible by B*T*processes = 4*32*2 = 256; "
                      "nearest valid: 256 or 512"], result.stderr


def test_a_hellaswag_example_only_rank_1_renders_stops_every_rank_with_rank_0s_error_line(data_root, tmp_path):
    # each rank renders its share (examples i % 2 == rank): rank 1 alone found this one, and its error line,
    # which only rank 0 prints, was lost (rank 0 died in a collective with a gloo traceback)
    path = tmp_path / "hellaswag_val.jsonl"
    fine = {"ctx": "A man", "endings": [" a", " b", " c", " d"], "label": 0}
    path.write_text("".join(json.dumps(ex) + "\n" for ex in
                            [fine, {**fine, "endings": [" word" * 100, " b", " c", " d"]}, fine]))
    result = run_script(tiny(data_root, tmp_path / "log", "--hellaswag", "--hellaswag-file", str(path)),
                        launcher=["--standalone", "--nproc_per_node=2"])
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and re.fullmatch(rf"error: HellaSwag {re.escape(str(path))}: an ending of 10\d tokens "
                                             r"does not fit block_size 64; pass another --hellaswag-file or "
                                             r"--no-hellaswag", errors[0]), result.stderr
    assert "gloo" not in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_resume_on_cuda_continues_the_run(data_root, tmp_path):
    # a checkpoint mapped onto the GPU handed torch.set_rng_state a CUDA tensor, which it refuses (TypeError)
    cuda = [a if a != "cpu" else "cuda" for a in REFERENCE]
    run_ok(tiny(data_root, tmp_path / "full", *cuda))
    run_ok(tiny(data_root, tmp_path / "split", *cuda, "--stop-after", "5"))
    out = run_ok(tiny(data_root, tmp_path / "split", *cuda, "--resume", "auto"))
    assert "resumed from" in out.stdout
    train, expected = logged(tmp_path / "split", "train"), logged(tmp_path / "full", "train")
    assert sorted(train) == sorted(expected) == list(range(12))
    # not bit for bit: CUDA's attention backward may add in another order from run to run
    assert max(abs(train[s] - expected[s]) for s in expected) <= 1e-3, (train, expected)


def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(data_root, tmp_path):
    # Adam moves every weight by ~lr whatever the gradient: after step 0 at lr 3e29 the activations
    # overflow float32, and step 1's loss is nan (no weight decay: at that lr check_args refuses any)
    result = run_script(tiny(data_root, tmp_path, "--max-lr", "1e30", "--weight-decay", "0", "--max-steps", "6",
                             "--val-steps", "1", "--checkpoint-interval", "1", "--device", "cpu"))
    line = assert_one_error_line(result)
    assert re.search(r"the loss became (nan|inf|-inf) at step 1;", line), line
    assert "lower --max-lr" in line
    assert sorted(os.listdir(tmp_path)) == ["log.txt", "model_00001.pt", "model_00001.pt.json"]  # after step 0 only
    assert list(logged(tmp_path, "train")) == [0]  # the bad loss is not logged
    assert [int(m[1]) for m in map(STEP_LINE.match, result.stdout.splitlines()) if m] == [0]


def test_a_nan_gradient_norm_stops_the_run_before_its_weights_reach_a_checkpoint(data_root, tmp_path):
    # at lr 1e5 (here, 1e4 to 3e5), step 1's loss is finite but its gradient overflows to a nan norm: that
    # update writes nans into every weight, which a check of the loss alone would save as model_00002.pt
    # (no weight decay: at that lr, 0.1 would zero the weights, which check_args refuses)
    result = run_script(tiny(data_root, tmp_path, "--max-lr", "1e5", "--min-lr", "0", "--warmup-steps", "2",
                             "--weight-decay", "0",
                             "--max-steps", "6", "--val-steps", "1", "--checkpoint-interval", "1", "--device", "cpu"))
    line = assert_one_error_line(result)
    assert re.search(r"the gradient norm became nan at step 1;", line), line
    assert sorted(os.listdir(tmp_path)) == ["log.txt", "model_00001.pt", "model_00001.pt.json"]
    weights = load_checkpoint(str(tmp_path / "model_00001.pt"))["model"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_new_run_beside_another_runs_checkpoints_is_an_error_line(data_root, tmp_path, capsys):
    run_ok(tiny(data_root, tmp_path, "--max-steps", "2", "--val-steps", "1", "--device", "cpu"))
    log_before = (tmp_path / "log.txt").read_text()
    # starting over here would rewrite log.txt, and --resume auto would later pick this run's model_00002.pt
    line = assert_one_error_line(run_main_in_process(
        tiny(data_root, tmp_path, "--max-steps", "4", "--device", "cpu"), capsys))
    assert line == (f"error: {tmp_path}/ already holds a run's checkpoints (newest: model_00002.pt); continue it with "
                    "--resume auto, or start a new run in another --log-dir (or move them away)")
    assert (tmp_path / "log.txt").read_text() == log_before
    # resuming a finished run says that there is nothing left to train
    result = run_ok(tiny(data_root, tmp_path, "--max-steps", "2", "--device", "cpu", "--resume", "auto"))
    assert ("nothing to train: the checkpoint is at step 2 and --max-steps is 2 (a larger --max-steps trains on, "
            "with the schedule stretched to it)") in result.stdout.splitlines()
    assert (tmp_path / "log.txt").read_text() == log_before
