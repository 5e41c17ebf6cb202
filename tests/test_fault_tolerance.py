"""train_gpt2.py against faults (issue 7): SIGKILL at random moments, preemption by SIGTERM and SIGUSR1,
damaged checkpoints, --keep-checkpoints and a full disk, each checked against an uninterrupted run of the
same tiny float32 model on CPU, whose logged losses and final weights a faulted run must equal bit for bit."""
import errno
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import train_gpt2
from gpt2_modules import load_checkpoint
from test_train_gpt2 import (ROOT, SCRIPT, TIMEOUT, assert_one_error_line, data_root, env_for_runs,  # noqa: F401
                             free_port, log_lines, logged, run_main_in_process, run_ok, run_script, step_fields, tiny,
                             without_torchs_own_warnings)

# 16 steps: validation at 0, 5, 10 and 15 (20 micro-batches, ~0.5 s: long enough to be killed inside),
# samples at 15 only, a checkpoint after every 2nd step of which the 2 newest are kept (the default)
FAULTY = ["--max-steps", "16", "--eval-interval", "5", "--val-steps", "20", "--sample-interval", "1000",
          "--checkpoint-interval", "2", "--device", "cpu"]
FINAL = ["log.txt", "model_00014.pt", "model_00014.pt.json", "model_00016.pt", "model_00016.pt.json"]


@pytest.fixture(scope="module")
def uninterrupted(data_root, tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("uninterrupted")
    result = run_ok(tiny(data_root, log_dir, *FAULTY))
    return result.stdout, log_dir


def assert_same_run(log_dir, uninterrupted_log_dir):
    """log.txt to the last printed digit and the final weights to the last bit: the uninterrupted run's."""
    assert log_lines(log_dir) == log_lines(uninterrupted_log_dir)
    assert sorted(logged(log_dir, "train")) == list(range(16)) and sorted(logged(log_dir, "val")) == [0, 5, 10, 15]
    ours = load_checkpoint(str(log_dir / "model_00016.pt"))["model"]
    theirs = load_checkpoint(str(uninterrupted_log_dir / "model_00016.pt"))["model"]
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


def newest_complete_step(log_dir):
    """The step --resume auto should continue from (0 if none)."""
    complete = [s for s, p in train_gpt2.list_checkpoints(str(log_dir)) if train_gpt2.checkpoint_problem(p) is None]
    return max(complete, default=0)


class Background:
    """train_gpt2.py (or torchrun) running in its own process group, its output going to a file we can watch."""

    def __init__(self, args, out_path, launcher=()):
        self.out_path = out_path
        self.out = open(out_path, "w")
        cmd = [sys.executable, *(["-m", "torch.distributed.run", *launcher] if launcher else []), SCRIPT, *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env_for_runs(), stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.deadline = time.time() + TIMEOUT

    def output(self):
        return self.out_path.read_text()

    def wait_until(self, condition, what):
        while not condition():
            if self.proc.poll() is not None or time.time() > self.deadline:
                self.kill()
                pytest.fail(f"the run ended (status {self.proc.returncode}) before {what}:\n{self.output()[-3000:]}")
            time.sleep(0.001)

    def wait_for_line(self, pattern, what):
        self.wait_until(lambda: re.search(pattern, self.output(), flags=re.M), what)

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def wait(self):
        try:
            self.proc.wait(timeout=max(self.deadline - time.time(), 1))
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
            pytest.fail(f"the run did not end:\n{self.output()[-3000:]}")
        finally:
            self.out.close()
        return self.proc.returncode


def step_line(step):
    return rf"^step +{step} \|"


# -----------------------------------------------------------------------------
# SIGKILL at random moments, then --resume auto: exactly the uninterrupted run


@pytest.mark.slow
def test_resume_auto_after_sigkill_at_eight_random_moments_matches_uninterrupted_run(data_root, uninterrupted,
                                                                                    tmp_path):
    _, uninterrupted_log_dir = uninterrupted
    log_dir = tmp_path / "log"
    args = tiny(data_root, log_dir, *FAULTY, "--resume", "auto")
    rng = random.Random(7)

    # Each moment waits for a cue in the output or the folder of the run it kills, and lets the run get at
    # most a few steps past where it resumed, so that on any machine, fast or slow, every cue is still
    # ahead: the resumed step stays <= 14 before the last kill, which leaves validation at 15 and the
    # checkpoint at 16 to aim at.
    def during_start_up(run, start):
        # importing torch, loading and checking the checkpoint, removing stale files, rewriting log.txt
        deadline = time.time() + rng.uniform(0.1, 1.5)
        run.wait_until(lambda: time.time() > deadline or re.search(r"^step ", run.output(), re.M), "start-up")

    def inside_a_step(run, start):
        step = min(start + rng.randint(1, 3), 15)
        run.wait_for_line(step_line(step - 1), f"step {step - 1}")
        time.sleep(rng.uniform(0.0, 0.05))  # a step takes ~0.15 s here

    def writing_a_checkpoint(run, start):
        step = min((start + rng.randint(0, 2)) // 2 * 2 + 2, 16)  # a checkpoint ahead
        tmp = log_dir / f"model_{step:05d}.pt.tmp"
        run.wait_until(lambda: not tmp.exists(), "the start-up's removal of an earlier kill's .tmp")
        run.wait_until(tmp.exists, f"the checkpoint write of step {step}")

    def validating(run, start):
        step = (start // 5 + 1) * 5  # the next validation after the resumed step's own
        assert step <= 15, "the run got too far for this test to aim at a validation"
        # it comes right after step-1's line (and its checkpoint, which the run prints when saved)
        cue = rf"^saved .*model_{step:05d}\.pt$" if step % 2 == 0 else step_line(step - 1)
        run.wait_for_line(cue, f"the validation at step {step}")
        time.sleep(rng.uniform(0.0, 0.05))  # a validation takes ~0.4 s here
        return step

    moments = [during_start_up, inside_a_step, validating, writing_a_checkpoint] * 2
    for i, moment in enumerate(moments):
        start = newest_complete_step(log_dir)
        run = Background(args, tmp_path / f"run{i}.out")
        validated_step = moment(run, start)
        run.kill()
        assert run.wait() == -signal.SIGKILL, run.output()[-3000:]
        if start and moment is not during_start_up:  # (which may be killed before it says so)
            resumed = f"resumed from {train_gpt2.checkpoint_path(str(log_dir), start)} at step {start}"
            assert resumed in run.output().splitlines()
        # the kill hit what it aimed at
        if moment is writing_a_checkpoint:
            assert any(n.endswith(".pt.tmp") for n in os.listdir(log_dir))
        if moment is validating:
            assert not re.search(rf"^{validated_step} val ", (log_dir / "log.txt").read_text(), flags=re.M)
            assert f"{validated_step - 1} train " in (log_dir / "log.txt").read_text()
        # and every checkpoint on disk is whole (one being written is still a .tmp); the kept 2, or 3 if the
        # kill came between a new checkpoint and the pruning of the oldest
        assert all(train_gpt2.checkpoint_problem(p) is None for _, p in train_gpt2.list_checkpoints(str(log_dir)))
        assert len(train_gpt2.list_checkpoints(str(log_dir))) <= 3

    assert newest_complete_step(log_dir) < 16  # the run still had work left for the last resume
    result = run_ok(args)
    assert re.search(r"^removed .*model_\d+\.pt\.tmp, left by a run killed while writing it$", result.stdout, re.M)
    assert_same_run(log_dir, uninterrupted_log_dir)
    assert sorted(os.listdir(log_dir)) == FINAL  # no stale .tmp: removed at the start of the last run


# -----------------------------------------------------------------------------
# preemption: SIGTERM, SIGUSR1, --stop-after


def test_stop_after_then_sigterm_then_resume_auto_matches_uninterrupted_run(data_root, uninterrupted, tmp_path):
    _, uninterrupted_log_dir = uninterrupted
    args = tiny(data_root, tmp_path, *FAULTY, "--resume", "auto")
    # a job of limited length: 3 steps, then a checkpoint after step 2 (off the every-2-steps schedule)
    result = run_ok([*args, "--stop-after", "3"])
    assert result.stdout.splitlines()[-2:] == [
        f"saved {tmp_path / 'model_00003.pt'}",
        "stopped after step 2 (--stop-after 3) with a checkpoint; continue with --resume auto"]
    # preempted in the middle of the next job: it ends the step it is in, saves it and exits 0
    run = Background(args, tmp_path / "preempted.out")
    run.wait_for_line(step_line(6), "step 6")
    run.kill(signal.SIGTERM)
    assert run.wait() == 0, run.output()[-3000:]
    last = max(logged(tmp_path, "train"))
    assert last >= 6
    assert run.output().splitlines()[-2:] == [
        f"saved {tmp_path / f'model_{last + 1:05d}.pt'}",
        f"stopped after step {last} (SIGTERM received) with a checkpoint; continue with --resume auto"]
    assert newest_complete_step(tmp_path) == last + 1
    # the --stop-after and preemption checkpoints count among the 2 kept
    written = {2, 3, last + 1, *range(4, last + 2, 2)}
    assert [s for s, _ in train_gpt2.list_checkpoints(str(tmp_path))] == sorted(written)[-2:]
    result = run_ok(args)
    assert f"resumed from {train_gpt2.checkpoint_path(str(tmp_path), last + 1)} at step {last + 1}" in result.stdout
    assert_same_run(tmp_path, uninterrupted_log_dir)
    assert sorted(os.listdir(tmp_path)) == sorted(FINAL + ["preempted.out"])


def test_ctrl_c_stops_after_the_step_with_a_checkpoint_and_a_second_quits_at_once(data_root, uninterrupted,
                                                                                    tmp_path):
    _, uninterrupted_log_dir = uninterrupted
    args = tiny(data_root, tmp_path, *FAULTY, "--resume", "auto")
    # one Ctrl-C: the step ends and a checkpoint is written; then the run dies of SIGINT, as Ctrl-C's default
    # would, so that a shell loop around it stops too; --resume auto continues as if nothing had happened
    run = Background(args, tmp_path / "ctrl_c.out")
    run.wait_for_line(step_line(2), "step 2")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.wait() == -signal.SIGINT, run.output()[-3000:]
    last = max(logged(tmp_path, "train"))
    out = run.output()
    assert "Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to quit at once)" in out
    assert "Traceback" not in out
    assert out.splitlines()[-1] == (f"stopped after step {last} (SIGINT received) with a checkpoint; "
                                    "continue with --resume auto")
    assert newest_complete_step(tmp_path) == last + 1
    run_ok(args)
    assert_same_run(tmp_path, uninterrupted_log_dir)

    # a second Ctrl-C, in the middle of a long validation (one before every step here): one error line, at once
    twice = tmp_path / "twice"
    run = Background(tiny(data_root, twice, *FAULTY, "--eval-interval", "1", "--val-steps", "500"),
                     tmp_path / "ctrl_c_twice.out")
    run.wait_for_line(step_line(0), "step 0")
    os.kill(run.proc.pid, signal.SIGINT)
    run.wait_for_line(r"^Ctrl-C: stopping", "the first Ctrl-C's line")  # two signals at once would count as one
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.wait() == -signal.SIGINT
    out = run.output()
    assert "Traceback" not in out, out[-3000:]
    assert out.splitlines()[-1] == (f"error: interrupted; --resume auto continues from the newest complete "
                                    f"checkpoint in {twice}/, if there is one")
    assert not re.search(r"^stopped after", out, flags=re.M)


def test_ctrl_c_before_the_first_step_has_ended_quits_at_once_and_saves_nothing(data_root, tmp_path):
    # a wrong flag noticed during start-up (or a long compile): there is nothing to save, and a checkpoint
    # would only stand in the way of the corrected run
    run = Background(tiny(data_root, tmp_path, *FAULTY), tmp_path / "early.out")
    run.wait_for_line(r"^config: ", "the config line")
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.wait() == -signal.SIGINT
    assert run.output().splitlines()[-1].startswith("error: interrupted; ")
    assert train_gpt2.list_checkpoints(str(tmp_path)) == []
    run_ok(tiny(data_root, tmp_path, "--max-steps", "2", "--device", "cpu"))  # the same folder starts a new run


def data_whose_second_train_shard_starts_at_step_5(data_root, tmp_path):
    """(folder, path of train shard 1): train shard 0 holds exactly 5 steps of 256 tokens (+1 for the last target),
    so step 5 is the first to read shard 1, with one process or two."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(os.path.join(data_root, "edufineweb_val_000000.npy"), data)
    tokens = np.concatenate([np.load(p) for p in sorted(glob.glob(os.path.join(data_root, "*_train_*.npy")))])
    np.save(data / "edufineweb_train_000000.npy", tokens[:5 * 256 + 1])
    np.save(data / "edufineweb_train_000001.npy", tokens[5 * 256 + 1:20_000])
    return data, data / "edufineweb_train_000001.npy"


def test_a_step_that_fails_before_its_update_is_saved_and_the_resumed_run_matches(data_root, tmp_path):
    # a shard gone mid-run (an NFS hiccup, a cleanup job): the steps since the last checkpoint are not lost.
    # Shard 1 is moved away as soon as the loader has checked it: step 5 fails, whatever the timing
    data, shard = data_whose_second_train_shard_starts_at_step_5(data_root, tmp_path)
    uninterrupted = run_ok(tiny(str(data), tmp_path / "whole", *FAULTY))
    log_dir = tmp_path / "log"
    args = tiny(str(data), log_dir, *FAULTY, "--checkpoint-interval", "1000", "--resume", "auto")
    run = Background(args, tmp_path / "failed.out")
    run.wait_for_line(r"^found 2 shards for split train$", "the train shards found")
    shard.rename(tmp_path / "away.npy")
    assert run.wait() == 1
    assert run.output().splitlines()[-2:] == [
        f"saved {log_dir / 'model_00005.pt'}: the state before the failed step 5; fix the cause (the error line), "
        "then continue with --resume auto", f"error: No such file or directory: {shard}"]
    assert max(logged(log_dir, "train")) == 4
    assert [s for s, _ in train_gpt2.list_checkpoints(str(log_dir))] == [5]
    (tmp_path / "away.npy").rename(shard)
    result = run_ok(args)
    assert f"resumed from {log_dir / 'model_00005.pt'} at step 5" in result.stdout
    assert step_fields(result.stdout) == {s: f for s, f in step_fields(uninterrupted.stdout).items() if s >= 5}
    assert_same_run(log_dir, tmp_path / "whole")


@pytest.mark.slow
def test_a_token_id_beyond_the_vocabulary_mid_run_is_an_error_line_naming_the_shard_not_an_abort(
        data_root, tmp_path):
    # shards of another tokenizer (uint16 holds ids up to 65,535). Compiled on a CPU, an inductor kernel's
    # index check used to stop the run: here a RuntimeError traceback; in step 0's validation, an abort
    # ("terminate called ... index out of bounds"); on a GPU, a device-side assert. The loader now checks
    # each batch on the host, before the model sees it.
    data, shard = data_whose_second_train_shard_starts_at_step_5(data_root, tmp_path)
    tokens = np.load(shard)
    tokens[100] = 60_000
    np.save(shard, tokens)
    log_dir = tmp_path / "log"
    result = run_script(tiny(str(data), log_dir, *FAULTY, "--max-steps", "6", "--compile", "--checkpoint-interval",
                             "1000"))
    assert result.returncode == 1, result.stdout[-3000:]
    assert result.stdout.splitlines()[-1] == (
        f"saved {log_dir / 'model_00005.pt'}: the state before the failed step 5; fix the cause (the error line), "
        "then continue with --resume auto")
    assert without_torchs_own_warnings(result.stderr).splitlines() == [
        f"error: {shard} holds token id 60000 (its token 100), out of range for the model's vocab_size 50,304: the "
        "shards come from another tokenizer than GPT-2's, or the vocab_size is below its 50,257 tokens"], \
        result.stderr[-3000:]
    assert "compile True" in result.stdout
    assert max(logged(log_dir, "train")) == 4


@pytest.mark.slow
def test_under_torchrun_a_rank_that_fails_alone_says_why_and_rank_0_saves_the_state_before_the_step(
        data_root, tmp_path):
    # A shard cut short mid-run, where rank 0's micro-batch still fits and rank 1's does not: an error only rank 1
    # meets. It used to die silently (rank 0 speaks for all ranks) while rank 0 printed gloo's traceback.
    data, shard = data_whose_second_train_shard_starts_at_step_5(data_root, tmp_path)
    header = np.lib.format.open_memmap(shard, mode="r").offset
    log_dir = tmp_path / "log"
    args = tiny(str(data), log_dir, *FAULTY, "--val-steps", "10", "--checkpoint-interval", "1000", "--resume", "auto")
    launcher = ["--standalone", "--nproc_per_node=2"]
    run = Background(args, tmp_path / "failed.out", launcher)
    run.wait_for_line(step_line(0), "step 0")  # both ranks have checked their shards' headers by now
    os.truncate(shard, header + 2 * 200)  # rank 0 reads tokens 0-128 of it, rank 1 tokens 128-256
    assert run.wait() == 1
    out = run.output()
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: rank 1: {shard} ends before token 257, which this micro-step reads, although its header says "
        f"{20_000 - 5 * 256 - 1:,}: it was cut short after it was checked; restore it, or rerun the fineweb.py "
        "command that made it",
        "error: another process of this run stopped (its error line says why)"], out[-3000:]
    assert "[rank" not in out and "gloo" not in out, out[-3000:]  # no worker's traceback, only torchrun's report
    assert f"saved {log_dir / 'model_00005.pt'}: the state before the failed step 5" in out
    assert max(logged(log_dir, "train")) == 4
    assert [s for s, _ in train_gpt2.list_checkpoints(str(log_dir))] == [5]
    # whole, and a checkpoint like any other (resuming one bit for bit: the single-process test above)
    assert train_gpt2.checkpoint_problem(str(log_dir / "model_00005.pt")) is None
    assert load_checkpoint(str(log_dir / "model_00005.pt"))["step"] == 5


def test_a_diverged_run_saves_nothing_and_names_the_newest_checkpoint_before_it(data_root, tmp_path, capsys):
    AGAIN = "try a lower --max-lr, from an earlier checkpoint if that one diverges too"
    args = tiny(data_root, tmp_path, "--max-steps", "6", "--checkpoint-interval", "2", "--eval-interval", "100",
                "--device", "cpu")
    run_ok([*args, "--stop-after", "2"])
    diverge = ["--max-lr", "1e30", "--weight-decay", "0"]  # at once; no decay: check_args refuses any at that lr
    line = assert_one_error_line(run_main_in_process([*args, "--resume", "auto", *diverge], capsys))
    assert re.fullmatch(r"error: the (loss|gradient norm) became (nan|inf) at step [2-5]; stopping without a "
                        rf"checkpoint \(the newest before it is {tmp_path / 'model_00002.pt'}; {AGAIN}\)", line), line
    assert [s for s, _ in train_gpt2.list_checkpoints(str(tmp_path))] == [2]
    # validated at every step, the weights' nans show first in the validation loss, before the step's update:
    # the state "before the failed step" is then nans too, and must not be saved as one
    line = assert_one_error_line(run_main_in_process([*args, "--resume", "auto", *diverge,
                                                      "--eval-interval", "1", "--val-steps", "1"], capsys))
    assert re.fullmatch(r"error: the validation loss became nan at step [3-5]; stopping without a checkpoint "
                        rf"\(the newest before it is {tmp_path / 'model_00002.pt'}; {AGAIN}\)", line), line
    assert [s for s, _ in train_gpt2.list_checkpoints(str(tmp_path))] == [2]
    fresh = tiny(data_root, tmp_path / "fresh", "--max-steps", "6", "--eval-interval", "100", "--device", "cpu")
    line = assert_one_error_line(run_main_in_process([*fresh, *diverge], capsys))
    assert line.endswith("stopping without a checkpoint (none was written before it; try a lower --max-lr)"), line


def test_a_second_run_in_a_log_dir_in_use_stops_at_once_and_leaves_the_first_alone(data_root, tmp_path):
    # left to go on, the second run would delete the first one's half-written checkpoint as stale, resume
    # from its checkpoints and write into its log.txt
    log_dir = tmp_path / "log"  # made by the first run: it takes the lock after making it
    args = tiny(data_root, log_dir, "--max-steps", "1000", "--eval-interval", "1000", "--sample-interval", "1000",
                "--checkpoint-interval", "1", "--device", "cpu", "--resume", "auto")
    first = Background(args, tmp_path / "first.out")
    first.wait_for_line(step_line(2), "step 2")
    second = run_script(args)
    assert second.returncode == 1 and assert_one_error_line(second) == (
        f"error: another run is training in {log_dir}/ (it holds the folder's lock): let it finish or stop it "
        "first, or give this run its own --log-dir")
    assert "step" not in second.stdout and "resumed" not in second.stdout  # it stopped before reading anything
    first.kill(signal.SIGTERM)
    assert first.wait() == 0, first.output()[-3000:]
    assert "error" not in first.output() and "removed" not in first.output()
    last = max(logged(log_dir, "train"))
    assert sorted(logged(log_dir, "train")) == list(range(last + 1))  # one run's lines, none twice
    # the lock ends with its run: the next one in that folder carries on
    result = run_ok([*args, "--max-steps", str(last + 2)])
    assert f"at step {last + 1}" in result.stdout


def test_a_log_dir_in_use_stops_every_torchrun_rank_with_one_error_line(data_root, tmp_path):
    holder = train_gpt2.LogDirLock(str(tmp_path))  # this process plays the run already training there
    holder.acquire()
    try:
        result = run_script(tiny(data_root, tmp_path, "--max-steps", "2", "--device", "cpu"),
                            launcher=["--standalone", "--nproc_per_node=2"])
    finally:
        holder.release()
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: another run is training in {tmp_path}/ (it holds the folder's lock): let it finish "
                      "or stop it first, or give this run its own --log-dir"], result.stderr
    assert "[rank1]" not in result.stderr and "gloo" not in result.stderr  # rank 1 stopped too, not in a collective


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_a_rendezvous_that_waits_for_a_process_that_never_comes(data_root, tmp_path, sig):
    # WORLD_SIZE=2 with only rank 0 started: the rendezvous waits in C++ (30 min), where our handlers never run,
    # and SIGTERM or Ctrl-C used to be noted for after a first step that never came: only SIGKILL ended it
    psutil = pytest.importorskip("psutil")
    port = free_port()
    env = {**env_for_runs(), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, SCRIPT, *tiny(data_root, tmp_path / "log", "--total-batch-size", "256")],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + TIMEOUT
        # rank 0 serves the rendezvous store on MASTER_PORT: once it listens there, it is waiting for rank 1
        while not any(c.status == psutil.CONN_LISTEN and c.laddr.port == port
                      for c in psutil.Process(proc.pid).net_connections(kind="tcp")):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
        out, _ = proc.communicate()
    assert proc.returncode == -sig
    # and the wait was not silent: a WORLD_SIZE left in the shell would look like a hang
    assert out.splitlines() == [f"waiting for the other 1 process(es) of WORLD_SIZE=2 at 127.0.0.1:{port} (WORLD_SIZE "
                                "is set without torchrun: unset it and RANK to run one process)"], out


def test_the_log_dir_lock_is_held_until_released(tmp_path):
    first, second = train_gpt2.LogDirLock(str(tmp_path)), train_gpt2.LogDirLock(str(tmp_path))
    first.acquire()
    with pytest.raises(train_gpt2.ConfigError, match="another run is training in"):
        second.acquire()
    first.release()
    second.acquire()
    second.release()
    assert os.listdir(tmp_path) == []  # nothing left behind


def worker_pid(launcher_pid, rank):
    """The pid of torchrun's worker with RANK=rank (a child of the launcher)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read().split(b"\0")
        except OSError:  # a process that ended meanwhile
            continue
        if ppid == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers in /proc")
def test_under_torchrun_a_signal_to_one_rank_or_to_torchrun_stops_every_rank_after_the_same_step(
        data_root, uninterrupted, tmp_path):
    # DDP: 1 micro-batch on each of 2 ranks = the 2 micro-steps of the uninterrupted run, and 10 validation
    # micro-batches on each = its 20. If the ranks disagreed on the step to stop after, one would wait in
    # the next step's all-reduce for a rank that has left, and the run would hang instead of ending.
    _, uninterrupted_log_dir = uninterrupted
    args = tiny(data_root, tmp_path, *FAULTY, "--val-steps", "10", "--resume", "auto")
    launcher = ["--standalone", "--nproc_per_node=2"]

    def preempt(name, after_step, send):
        run = Background(args, tmp_path / f"{name}.out", launcher)
        run.wait_for_line(step_line(after_step), f"step {after_step}")
        send(run)
        status = run.wait()
        last = max(logged(tmp_path, "train"))
        stopped = f"stopped after step {last} ({name} received) with a checkpoint; continue with --resume auto"
        assert stopped in run.output().splitlines(), run.output()[-3000:]
        assert newest_complete_step(tmp_path) == last + 1 < 16
        return status, last

    # SIGUSR1 to rank 1 alone: it tells rank 0, and both stop; torchrun sees its workers end well
    def to_rank_1(run):
        pid = worker_pid(run.proc.pid, 1)
        assert pid is not None
        os.kill(pid, signal.SIGUSR1)

    status, last = preempt("SIGUSR1", 3, to_rank_1)
    assert status == 0
    # SIGTERM to torchrun (as SLURM sends it): torchrun passes it on and gives the workers 30 s
    # (--shutdown-timeout) to end; it exits 1 itself (its own SignalException) after they have
    preempt("SIGTERM", last + 2, lambda run: os.kill(run.proc.pid, signal.SIGTERM))
    run_ok(args, launcher)
    # DDP sums its gradients in another order than accumulation: equal to float32 rounding, not bit for bit
    train, expected = logged(tmp_path, "train"), logged(uninterrupted_log_dir, "train")
    assert sorted(train) == list(range(16))
    assert max(abs(train[s] - expected[s]) for s in expected) <= 1e-5, (train, expected)


# -----------------------------------------------------------------------------
# a damaged newest checkpoint: detected, skipped with a warning, the previous one used


def damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif how == "bit flip":
        data[len(data) // 2] ^= 0x01  # inside a tensor: torch.load would read it without complaint
        path.write_bytes(data)
    elif how == "no sidecar":
        os.remove(str(path) + ".json")
    elif how == "sidecar garbage":
        (path.parent / (path.name + ".json")).write_text("{not json")


@pytest.mark.parametrize("how, problem", [
    ("truncated", r"it has [\d,]+ bytes, not the [\d,]+ its sidecar records: it is truncated"),
    ("bit flip", r"its sha256 differs from its sidecar's: it is corrupt"),
], ids=["truncated", "bit-flip"])
def test_damaged_newest_checkpoint_is_skipped_with_a_warning_and_the_run_still_matches(
        data_root, uninterrupted, tmp_path, how, problem):
    _, uninterrupted_log_dir = uninterrupted
    for name in FINAL:
        shutil.copy(uninterrupted_log_dir / name, tmp_path / name)
    damage(tmp_path / "model_00016.pt", how)
    result = run_ok(tiny(data_root, tmp_path, *FAULTY, "--resume", "auto"))
    assert re.fullmatch(rf"warning: skipping {re.escape(str(tmp_path / 'model_00016.pt'))}: {problem}\n",
                        result.stderr), result.stderr
    assert f"resumed from {tmp_path / 'model_00014.pt'} at step 14" in result.stdout
    assert_same_run(tmp_path, uninterrupted_log_dir)
    assert train_gpt2.checkpoint_problem(str(tmp_path / "model_00016.pt")) is None  # rewritten whole


def fake_checkpoints(folder, steps):
    """Checkpoint files with their sidecars, as save_checkpoint leaves them (the content is not a checkpoint's)."""
    for step in steps:
        path = train_gpt2.checkpoint_path(str(folder), step)
        with open(path, "wb") as f:
            f.write(f"weights after step {step}".encode())
        with open(train_gpt2.sidecar_path(path), "w") as f:
            json.dump({"bytes": os.path.getsize(path), "sha256": train_gpt2.file_digest(path), "step": step}, f)


def test_resume_auto_takes_the_newest_checkpoint_that_matches_its_sidecar(tmp_path):
    warnings = []
    find = lambda: train_gpt2.find_resume_checkpoint("auto", str(tmp_path), warn=warnings.append)  # noqa: E731
    assert find() is None  # a fresh run starts at step 0
    fake_checkpoints(tmp_path, [5000, 99999, 100000, 20000, 120000])
    (tmp_path / "model_130000.pt.tmp").write_bytes(b"")  # a save cut short: never resumed from
    assert find() == str(tmp_path / "model_120000.pt")  # by step: model_100000.pt sorts before 99999 by name
    for step, how in ((120000, "truncated"), (100000, "no sidecar"), (99999, "sidecar garbage")):
        damage(tmp_path / f"model_{step:05d}.pt", how)
    assert find() == str(tmp_path / "model_20000.pt")
    assert [re.match(r"warning: skipping (\S+): ", w)[1] for w in warnings] == \
           [str(tmp_path / f"model_{s}.pt") for s in (120000, 100000, 99999)]
    assert "has no model_100000.pt.json (written by an older train_gpt2.py?)" in warnings[1]
    assert "sidecar" in warnings[2] and "unreadable" in warnings[2]


@pytest.mark.parametrize("record", ['{"bytes": Infinity, "sha256": "0"}', '{"bytes": NaN, "sha256": "0"}',
                                    '{"bytes": "many", "sha256": "0"}', '[1, 2]'])
def test_a_sidecar_with_a_record_that_is_not_a_size_makes_its_checkpoint_skipped_not_a_traceback(tmp_path, record):
    # json reads Infinity, and int(inf) is an OverflowError, which the sidecar check once let through
    fake_checkpoints(tmp_path, [4, 8])
    (tmp_path / "model_00008.pt.json").write_text(record)
    warnings = []
    assert train_gpt2.find_resume_checkpoint("auto", str(tmp_path), warn=warnings.append) == \
        str(tmp_path / "model_00004.pt")
    assert len(warnings) == 1 and "model_00008.pt.json is unreadable" in warnings[0], warnings


def tiny_model_and_optimizer():
    model = torch.nn.Linear(64, 64)
    model.config = train_gpt2.GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=16)
    return model, torch.optim.AdamW(model.parameters())


class Killed(BaseException):
    """A SIGKILL at that moment: nothing after it runs, no handler cleans up (it is no OSError)."""


def test_a_checkpoint_is_renamed_after_its_sidecar_so_a_kill_between_leaves_no_checkpoint_without_one(
        tmp_path, monkeypatch):
    # guards the order of save_checkpoint's renames: the .pt renamed first, a kill before its sidecar's rename
    # left a model_*.pt without a sidecar, which --resume auto skips with a warning
    model, optimizer = tiny_model_and_optimizer()
    args = train_gpt2.parse_args([])
    first, second = str(tmp_path / "model_00001.pt"), str(tmp_path / "model_00002.pt")
    renames, real_replace = [], os.replace

    def recorded(src, dst):
        renames.append((os.path.basename(src), os.path.basename(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recorded)
    train_gpt2.save_checkpoint(first, model, optimizer, 1, {}, args)
    assert renames == [("model_00001.pt.json.tmp", "model_00001.pt.json"), ("model_00001.pt.tmp", "model_00001.pt")]

    def killed_at_the_second_rename(src, dst):
        renames.append((os.path.basename(src), os.path.basename(dst)))
        if len(renames) == 4:
            raise Killed
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_at_the_second_rename)
    with pytest.raises(Killed):
        train_gpt2.save_checkpoint(second, model, optimizer, 2, {}, args)
    monkeypatch.setattr(os, "replace", real_replace)
    warnings = []
    assert train_gpt2.find_resume_checkpoint("auto", str(tmp_path), warn=warnings.append) == first
    assert warnings == []  # nothing to skip: model_00002.pt was never there
    assert not os.path.exists(second)


def test_resume_auto_refuses_to_start_over_when_no_checkpoint_is_complete(data_root, tmp_path, capsys):
    # an older train_gpt2.py wrote no sidecars: starting from step 0 would overwrite that run's log
    fake_checkpoints(tmp_path, [4, 8])
    for step in (4, 8):
        damage(tmp_path / f"model_{step:05d}.pt", "no sidecar")
    log_before = "0 train 10.9\n"
    (tmp_path / "log.txt").write_text(log_before)
    result = run_main_in_process(tiny(data_root, tmp_path, "--resume", "auto", "--device", "cpu"), capsys)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and lines[:2] == [
        f"warning: skipping {tmp_path / f'model_{s:05d}.pt'}: it has no model_{s:05d}.pt.json (written by an older "
        "train_gpt2.py?)" for s in (8, 4)]
    assert lines[2] == (f"error: no checkpoint in {tmp_path}/ is complete (2 found, none whole); resume one with "
                        "--resume PATH, or move them away to start over")
    assert (tmp_path / "log.txt").read_text() == log_before


def test_resume_of_a_given_path_whose_sidecar_disagrees_is_an_error_line(data_root, uninterrupted, tmp_path, capsys):
    for name in ("model_00014.pt", "model_00014.pt.json"):
        shutil.copy(uninterrupted[1] / name, tmp_path / name)
    damage(tmp_path / "model_00014.pt", "bit flip")
    path = str(tmp_path / "model_00014.pt")
    line = assert_one_error_line(run_main_in_process(tiny(data_root, tmp_path / "log", "--resume", path), capsys))
    assert line == f"error: --resume {path}: its sha256 differs from its sidecar's: it is corrupt"


@pytest.mark.parametrize("edit, reason", [
    (lambda c: c.__setitem__("model", [1, 2]), "is not a training checkpoint of this project (its 'model' and "
                                               "'config' are a list and a dict, not dicts)"),
    (lambda c: c.__setitem__("optimizer", {}), "is not a checkpoint this code can resume (KeyError: 'param_groups')"),
    (lambda c: c["loader"].pop("B"), "is not a checkpoint this code can resume (KeyError: 'B')"),
    (lambda c: c.__setitem__("rng", {}), "is not a checkpoint this code can resume (KeyError: 'torch')"),
    (lambda c: c["model"].pop("lm_head.weight"), "is not a checkpoint this code can resume (RuntimeError: Error(s) "
                                                 "in loading state_dict for GPT: Missing key(s) in state_dict: "
                                                 '"lm_head.weight".)'),
    (lambda c: c.__setitem__("step", -3), "is not a checkpoint this code can resume (its step is -3, not a count "
                                          "of steps)"),
], ids=["model a list", "optimizer empty", "loader without B", "rng empty", "a weight missing", "negative step"])
def test_a_checkpoint_edited_or_of_another_version_is_an_error_line_on_resume(data_root, uninterrupted, tmp_path,
                                                                             capsys, edit, reason):
    # each of these ended in a traceback (a KeyError, load_state_dict's RuntimeError), or, for the step, trained on
    ckpt = torch.load(uninterrupted[1] / "model_00014.pt", weights_only=True)
    edit(ckpt)
    path = tmp_path / "edited.pt"
    torch.save(ckpt, path)
    line = assert_one_error_line(run_main_in_process(tiny(data_root, tmp_path / "log", "--resume", str(path)), capsys))
    assert line == f"error: {path} {reason}"
    assert not os.path.exists(tmp_path / "log" / "log.txt")


# -----------------------------------------------------------------------------
# --keep-checkpoints and stale files


def test_keep_checkpoints_removes_the_oldest_only_beyond_n_and_only_up_to_the_new_one(tmp_path):
    fake_checkpoints(tmp_path, [2, 4, 6, 8])
    train_gpt2.prune_checkpoints(str(tmp_path), 8, keep=3)
    assert [s for s, _ in train_gpt2.list_checkpoints(str(tmp_path))] == [4, 6, 8]
    assert sorted(os.listdir(tmp_path)) == [f"model_{s:05d}.pt{ext}" for s in (4, 6, 8) for ext in ("", ".json")]
    # a run resumed from step 4 of a folder that holds a later branch: the new checkpoint at 6 is kept,
    # and so is the other branch's 8, which is not this run's to judge
    fake_checkpoints(tmp_path, [6])
    train_gpt2.prune_checkpoints(str(tmp_path), 6, keep=1)
    assert [s for s, _ in train_gpt2.list_checkpoints(str(tmp_path))] == [6, 8]
    train_gpt2.prune_checkpoints(str(tmp_path), 8, keep=0)  # 0: keep all
    assert [s for s, _ in train_gpt2.list_checkpoints(str(tmp_path))] == [6, 8]


def test_keep_checkpoints_flag_keeps_that_many_in_a_run(uninterrupted, data_root, tmp_path):
    stdout, log_dir = uninterrupted
    assert sorted(os.listdir(log_dir)) == FINAL  # the default keeps 2 of the 8 written
    assert len(re.findall(r"^saved ", stdout, flags=re.M)) == 8  # lines, not words: a sample can say "saved"
    run_ok(tiny(data_root, tmp_path, *FAULTY, "--max-steps", "5", "--eval-interval", "100", "--val-steps", "1",
                "--checkpoint-interval", "1", "--keep-checkpoints", "3"))
    assert [s for s, _ in train_gpt2.list_checkpoints(str(tmp_path))] == [3, 4, 5]


def test_stale_files_of_killed_writes_are_removed_and_nothing_else(tmp_path):
    fake_checkpoints(tmp_path, [4])
    stale = ["model_00008.pt.tmp", "model_00008.pt.json", "model_00008.pt.json.tmp", "log.txt.tmp"]
    kept = ["model_00004.pt", "model_00004.pt.json", "log.txt", "notes.json", "other.tmp"]
    for name in stale + kept[2:]:
        (tmp_path / name).write_text("x")
    printed = []
    train_gpt2.remove_stale_files(str(tmp_path), printed.append)
    assert sorted(os.listdir(tmp_path)) == sorted(kept)
    assert len(printed) == len(stale)


def test_log_txt_rewrite_drops_a_line_cut_short(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("0 val 10.9000\n0 train 10.912345\n1 train 10.8\n2 train 10.7")  # the disk filled mid-line
    train_gpt2.RunLog(str(path), resume_step=3)
    assert path.read_text() == "0 val 10.9000\n0 train 10.912345\n1 train 10.8\n"


def test_log_txt_rewrite_drops_the_resumed_step_and_later_and_keeps_notes_and_stray_bytes(tmp_path):
    # the checkpoint after 2 steps resumes at step 2: its lines come again from the resumed run; lines that are
    # not log lines (a note, a line edited by hand, a byte that is not UTF-8) stay, byte for byte
    path = tmp_path / "log.txt"
    path.write_bytes(b"0 train 10.9\n# lr too high? \xff\n1 train 10.8 edited\n1 train 10.8\n2 val 10.7000\n"
                     b"restarted on node 3\n5 spike seen\n2 train 10.7\n12 train 1\n3 train 1\n")
    train_gpt2.RunLog(str(path), resume_step=2)
    assert path.read_bytes() == (b"0 train 10.9\n# lr too high? \xff\n1 train 10.8 edited\n1 train 10.8\n"
                                 b"restarted on node 3\n5 spike seen\n")
    # a log saved with Windows line ends: its lines are log lines all the same
    path.write_bytes(b"0 train 10.7\r\n# a note\r\n1 train 10.6\r\n2 train 10.5\r\n3 train 10.4\r\n")
    train_gpt2.RunLog(str(path), resume_step=2)
    assert path.read_bytes() == b"0 train 10.7\r\n# a note\r\n1 train 10.6\r\n"


def test_a_full_disk_while_appending_to_log_txt_names_the_file(tmp_path):
    log = train_gpt2.RunLog(str(tmp_path / "log.txt"))
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    os.remove(tmp_path / "log.txt")
    os.symlink("/dev/full", tmp_path / "log.txt")  # every write fails with ENOSPC
    with pytest.raises(train_gpt2.ConfigError) as e:
        log.write(3, "train", 1.0)
    assert str(e.value) == (f"cannot append to {tmp_path / 'log.txt'} (No space left on device: is the disk full?); "
                            "free some space, then continue with --resume auto from the newest checkpoint")


def save_checkpoint_whose_write_fails(path, step, error, monkeypatch):
    """save_checkpoint of a small model, where every write() past the file's first bytes raises `error`."""
    class Failing:
        def write(self, data):
            raise error

    class FailingAfterTheFirstBytes(train_gpt2.HashingWriter):
        def write(self, data):
            if self.size:
                self.f = Failing()
            return super().write(data)

    monkeypatch.setattr(train_gpt2, "HashingWriter", FailingAfterTheFirstBytes)
    model = torch.nn.Linear(64, 64)
    model.config = train_gpt2.GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=16)
    optimizer = torch.optim.AdamW(model.parameters())
    train_gpt2.save_checkpoint(str(path), model, optimizer, step, {}, train_gpt2.parse_args([]))


def test_full_disk_at_the_first_checkpoint_does_not_offer_a_checkpoint_to_continue_from(tmp_path, monkeypatch):
    # with no earlier checkpoint, "continue with --resume auto" would promise what is not there: it starts over
    path = tmp_path / "model_00005.pt"
    with pytest.raises(train_gpt2.CheckpointError) as e:
        save_checkpoint_whose_write_fails(path, 5, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), monkeypatch)
    assert str(e.value) == (f"cannot write the checkpoint {path} (No space left on device: is the disk full?); free "
                            "some space, then run again: there is no earlier checkpoint to continue from, so the "
                            "run starts over")
    assert os.listdir(tmp_path) == []  # no .tmp left


def test_a_second_ctrl_c_while_a_checkpoint_is_written_is_an_interrupt_not_a_runtime_error(tmp_path, monkeypatch):
    # torch's writer turns an exception in the file's write() into RuntimeError('unexpected pos ...'); a second
    # Ctrl-C there was a traceback and exit 1 instead of `error: interrupted` and 130. Past the first bytes, the
    # KeyboardInterrupt is raised where the SIGINT handler runs: in the file's write()
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_whose_write_fails(tmp_path / "model_00001.pt", 1, KeyboardInterrupt(), monkeypatch)
    assert not os.path.exists(tmp_path / "model_00001.pt")  # the .tmp is removed at the next start


# -----------------------------------------------------------------------------
# a full disk: RLIMIT_FSIZE makes any write past the limit fail with EFBIG, as a full disk fails with ENOSPC


def limit_file_size(limit):
    resource = pytest.importorskip("resource")  # POSIX only

    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
    return preexec


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one_and_says_so(data_root, uninterrupted, tmp_path):
    _, uninterrupted_log_dir = uninterrupted
    for name in ("log.txt", "model_00014.pt", "model_00014.pt.json"):
        shutil.copy(uninterrupted_log_dir / name, tmp_path / name)
    size = os.path.getsize(tmp_path / "model_00014.pt")  # ~40 MB
    cmd = [sys.executable, SCRIPT, *tiny(data_root, tmp_path, *FAULTY, "--resume", "auto")]
    result = subprocess.run(cmd, cwd=ROOT, env=env_for_runs(), capture_output=True, text=True, timeout=TIMEOUT,
                            preexec_fn=limit_file_size(size // 2))
    line = assert_one_error_line(result)
    assert line == (f"error: cannot write the checkpoint {tmp_path / 'model_00016.pt'} (File too large: is the disk "
                    f"full?); the previous checkpoint {tmp_path / 'model_00014.pt'} is intact: free some space, then "
                    "continue with --resume auto")
    assert sorted(os.listdir(tmp_path)) == ["log.txt", "model_00014.pt", "model_00014.pt.json"]  # no .tmp left
    assert train_gpt2.checkpoint_problem(str(tmp_path / "model_00014.pt")) is None
    # with room again, the run finishes as if nothing had happened
    run_ok(tiny(data_root, tmp_path, *FAULTY, "--resume", "auto"))
    assert_same_run(tmp_path, uninterrupted_log_dir)


def test_full_disk_while_writing_a_shard_is_one_error_line_and_no_short_shard(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Short document number {i}, with a little text."}) + "\n"
                            for i in range(300)))
    cmd = [sys.executable, os.path.join(ROOT, "fineweb.py"), "--quiet", "--streaming", "--files", str(docs),
           "--local-dir", str(tmp_path / "out"), "--shard-size", "2000", "--num-proc", "1"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hf"))
    # 2,000 tokens = 4,128 bytes a shard: the first one does not fit
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT,
                            preexec_fn=limit_file_size(3000))
    assert result.returncode != 0
    assert not any(name.endswith(".npy") for name in os.listdir(tmp_path / "out"))
    assert_one_error_line(result)
