"""bench.py: the FLOPs formula, the chunked loss against the lecture's, and one quick CPU run end to end."""
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import bench
from gpt2_modules import GPT, GPTConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a guard against a hang, not a time limit: a shared 2-core CI box can be slow (a profile run that takes 19 s
# alone ran past 120 s in one fresh-clone CI run, 2026-12-02)
TIMEOUT = 400  # below pytest.ini's 600 s per test, so this guard speaks first


def test_flops_per_token_of_gpt2_124m_at_1024_is_6n_plus_attention():
    with torch.device("meta"):  # the parameter count without 0.5 GB of weights
        model = GPT(GPTConfig.named("gpt2", vocab_size=50304))
    # 124,475,904 parameters (wte tied to lm_head counted once), minus wpe's 1024 x 768
    assert model.num_params() == 124_475_904
    n = 124_475_904 - 1024 * 768
    assert model.num_params(non_embedding=True) == n == 123_689_472
    L, H, Q, T = 12, 12, 64, 1024
    assert bench.flops_per_token(model, T) == 6 * n + 12 * L * H * Q * T == 855_383_040
    # at the 55% MFU target on an H100 SXM, that is ~636k tokens/s
    assert 0.55 * 989e12 / 855_383_040 == pytest.approx(635_900, rel=1e-3)


def test_peak_table_matches_cuda_device_names():
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989
    assert bench.peak_tflops("NVIDIA H100 PCIe") == 756
    assert bench.peak_tflops("NVIDIA H200") == 989
    assert bench.peak_tflops("NVIDIA A100-SXM4-80GB") == 312
    assert bench.peak_tflops("NVIDIA GH200 480GB") == 989
    assert bench.peak_tflops("Tesla T4") is None
    # a substring match gave the small RTX A1000 the A100's peak, and the H200 NVL (a lower-clocked PCIe card) the
    # H200 SXM's: MFU against a peak the card does not have
    assert bench.peak_tflops("NVIDIA RTX A1000 Laptop GPU") is None
    assert bench.peak_tflops("NVIDIA H200 NVL") is None


@pytest.mark.parametrize("autocast", [False, True])
def test_chunked_loss_matches_the_lecture_loss_and_gradients(autocast):
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=500, n_layer=2, n_head=2, n_embd=32))
    x, y = torch.randint(0, 500, (2, 2, 32)).unbind(0)
    dtype = torch.bfloat16 if autocast else torch.float32
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)

    def loss_and_grads(m):
        model.zero_grad(set_to_none=True)
        with ctx:
            _, loss = m(x, y)
        (loss / 2).backward()  # a grad-accumulation scale must reach the stored gradients
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_loss, ref = loss_and_grads(model)
    # 16 rows a chunk: 4 chunks of the 64 rows
    loss, got = loss_and_grads(bench.ChunkedLossGPT(model, bench.pick_chunk_rows(64, 16), dtype, None))
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    tol = 1e-2 if autocast else 1e-5  # bf16 rounds the lm_head gradient per chunk instead of once
    for name, g in ref.items():
        assert (got[name] - g).abs().max() <= tol * g.abs().max(), name


def test_pick_chunk_rows_divides_the_rows_evenly():
    assert bench.pick_chunk_rows(65536, 8192) == 8192
    assert bench.pick_chunk_rows(96 * 1024, 8192) == 8192
    assert bench.pick_chunk_rows(2048, 256) == 256
    assert bench.pick_chunk_rows(2 * 3 * 5 * 7, 100) == 70
    assert bench.pick_chunk_rows(100, 8192) == 100


def test_quick_cpu_run_prints_the_table_appends_json_lines_and_survives_a_failing_config(tmp_path):
    results = tmp_path / "results.jsonl"
    results.write_text('{"benchmark": "earlier"}\n')  # appended to, never overwritten
    cmd = [sys.executable, os.path.join(ROOT, "bench.py"), "--device", "cpu", "--n-layer", "2", "--n-head", "2",
           "--n-embd", "32", "--vocab-size", "512", "-B", "2", "-T", "32", "--total-batch-size", "128",
           "--steps", "10", "--warmup", "1", "--configs", "fp32,cudnn", "--results", str(results)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert "FLOPs per token = 6N + 12*L*H*Q*T, N = non-embedding parameters" in out.stdout

    table = out.stdout[out.stdout.index("config "):]
    rows = {line.split()[0]: line.split() for line in table.splitlines()[2:] if line.strip()}
    assert list(rows)[:3] == ["baseline", "fp32", "cudnn"]  # baseline first although not asked for
    for name in ("baseline", "fp32"):
        _, B, T, tok_s, mfu, ratio, mem, first, status = rows[name]
        assert (B, T, mfu, status) == ("2", "32", "n/a", "ok")
        assert float(tok_s.replace(",", "")) > 0 and float(mem) > 0 and float(first) >= 0
    assert rows["baseline"][5] == "1.000x" and re.fullmatch(r"\d+\.\d{3}x", rows["fp32"][5])
    assert rows["cudnn"][-1] == "error"  # no cuDNN attention on a CPU: reported, and the run went on

    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert lines[0] == {"benchmark": "earlier"}
    by_config = {r["config"]: r for r in lines[1:]}
    assert set(by_config) == {"baseline", "fp32", "cudnn"}
    base, fp32 = by_config["baseline"], by_config["fp32"]
    # the lecture's CPU settings: bf16 autocast, eager, AdamW's for-loop implementation
    assert base["settings"]["dtype"] == "bfloat16" and base["settings"]["compile"] is None
    assert base["settings"]["adamw"] == "for-loop" and fp32["settings"]["dtype"] == "float32"
    assert base["grad_accum"] == 2 and base["steps_timed"] == 10  # 128 tokens per step = 2 micro-batches of 2 x 32
    # per block 12 C^2 weights and 13 C biases and LayerNorm gains; then ln_f and wte (= lm_head)
    n = 2 * (12 * 32 * 32 + 13 * 32) + 2 * 32 + 512 * 32
    assert base["non_embedding_params"] == n and base["flops_per_token"] == 6 * n + 12 * 2 * 2 * 16 * 32
    assert base["tok_per_s"] == pytest.approx(128 / base["step_s_median"]) and base["first_step_s"] > 0
    assert base["tok_per_s_fastest"] == pytest.approx(128 / min(base["step_s"]))
    assert base["tok_per_s_fastest"] >= base["tok_per_s"]  # tok/s is the default estimator: the median step
    assert fp32["ratio_vs_baseline"] == pytest.approx(fp32["tok_per_s"] / base["tok_per_s"])
    assert 5 < base["loss_step0"] < 8  # ~ln(512) = 6.24 from a fresh init
    assert base["loss_step0"] == pytest.approx(fp32["loss_step0"], abs=0.05)  # same seed, same data
    assert base["machine"]["cpu_count"] == os.cpu_count() and base["date"] and base["torch"] == torch.__version__
    assert by_config["cudnn"]["status"] == "error" and "scaled_dot_product_attention" in by_config["cudnn"]["error"]
    assert all(r["prediction"] for r in by_config.values())


def test_a_cpu_given_no_size_measures_the_small_cpu_shape_not_gpt2_small(tmp_path):
    # GPT-2 small at B=64, T=1024, the GPU default: its worker held 21 GB of this CPU's memory when it was stopped
    results = tmp_path / "r.jsonl"
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--device", "cpu", "--vocab-size", "512",
                          "--steps", "1", "--warmup", "1", "--configs", "baseline", "--results", str(results)],
                         cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == ("no size asked for: on a CPU, n_layer 4, n_head 4, n_embd 256, B=8, T=256 "
                                          "(--model gpt2 for GPT-2 small at B=64, T=1024: over 20 GB of memory)")
    assert table_rows(out.stdout)["baseline"][1:3] == ["8", "256"]
    record = json.loads(results.read_text())
    assert (record["model"], record["model_overrides"], record["T"]) == (
        "gpt2", {"n_layer": 4, "n_head": 4, "n_embd": 256}, 256)
    assert record["non_embedding_params"] == 4 * (12 * 256 * 256 + 13 * 256) + 2 * 256 + 512 * 256

    def shape(device, *flags):
        args = bench.parse_args(list(flags))
        bench.fill_in_shape(args, device)
        return args.model, args.n_layer, args.n_head, args.n_embd, args.batch_size, args.seq_len

    assert shape("cpu") == ("gpt2", 4, 4, 256, 8, 256)
    # any size flag: the rest are GPT-2 small's defaults, as on a GPU
    assert shape("cpu", "-B", "2") == ("gpt2", None, None, None, 2, 1024)
    assert shape("cpu", "--model", "gpt2") == shape("cuda") == ("gpt2", None, None, None, 64, 1024)
    assert shape("cuda", "--n-layer", "2", "-T", "64") == ("gpt2", 2, None, None, 64, 64)


@pytest.mark.parametrize("flags, noted", [(["--n-layer", "2"], True), (["--model", "gpt2", "-B", "64", "-T", "1024"], True),
                                          (["--n-layer", "2", "-B", "8"], False)])
def test_a_cpu_at_the_gpus_micro_batch_is_noted_before_it_starts(tmp_path, flags, noted):
    # one size flag left -B and -T at B=64, T=1024 without a word: GPT-2 small's worker held 21 GB of this CPU.
    # --time-budget 1 skips the configuration, so nothing that large starts here
    out = subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), "--device", "cpu", *flags, "--configs",
                          "baseline", "--time-budget", "1", "--results", str(tmp_path / "r.jsonl")],
                         cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.stderr == "error: no configuration was measured (1 skipped); the reasons are printed above\n"
    note = ("note: B=64, T=1024 is a GPU's micro-batch (-B and -T default to it once any size flag is given): on "
            "this repo's 2-core CPU, GPT-2 small's worker held 21 GB at it; give smaller -B and -T (README's CPU "
            "figures: B=8, T=256)")
    lines = out.stdout.splitlines()
    assert [line for line in lines if line.startswith("note:")] == ([note] if noted else [])
    assert lines[int(noted)].startswith("bench.py run ")  # the note comes first, before the header


TINY = ["--device", "cpu", "--n-layer", "2", "--n-head", "2", "--n-embd", "32", "--vocab-size", "512", "-B", "2",
        "-T", "32", "--steps", "2", "--warmup", "1"]


def run_bench(*args, timeout=TIMEOUT, cwd=ROOT):
    return subprocess.run([sys.executable, os.path.join(ROOT, "bench.py"), *TINY, *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def table_rows(stdout):
    table = stdout[stdout.index("config "):].split("\n\n")[0]
    return {line.split()[0]: line.split() for line in table.splitlines()[2:]}


def flags_without_help(help_text):
    """The flags of an argparse --help that have no help text, on their own line or on the next."""
    lines = help_text[help_text.index("\noptions:"):].splitlines() + [""]
    return [line.split()[0] for i, line in enumerate(lines) if re.match(r"^  -", line)
            and not (re.match(r"^  -\S.*?  +\S", line) or re.match(r"^ {10,}\S", lines[i + 1]))]


def test_help_describes_every_flag_and_shows_its_default(capsys):
    # --steps, --warmup, --rounds, --max-seconds and --timeout hid their defaults, the last two their unit too;
    # --profile-steps had no help at all
    with pytest.raises(SystemExit):
        bench.parse_args(["--help"])
    out = capsys.readouterr().out
    assert flags_without_help(out) == []
    text = " ".join(out.split())  # unwrapped
    for shown in ["(median of these) (default: 10)", "the first of which compiles (default: 2)",
                  "configuration alike) (default: 1)", "after this many seconds (fewer steps are then reported) "
                  "(default: 120)", "longer than this many seconds, compilation included (default: 300)",
                  "--profile-steps PROFILE_STEPS steps in each profile, after the timed ones (default: 3)",
                  "default: benchmarks/results.jsonl, the repo's tracked record of measurements",
                  "--list print the presets and their predictions, and exit --device"]:  # no "(default: False)"
        assert shown in text, shown
    assert "(default: None)" not in text and "(default: False)" not in text


@pytest.mark.parametrize("flag, value, shown", [("--n-layer", "0", "0"), ("--n-head", "-2", "-2"),
                                                ("--n-embd", "0", "0"), ("--total-batch-size", "-128", "-128"),
                                                ("--peak-tflops", "-1", "-1"), ("--peak-tflops", "nan", "nan"),
                                                ("--timeout", "0", "0"), ("--time-budget", "-5", "-5"),
                                                ("--max-seconds", "0", "0"), ("--profile-steps", "0", "0")])
def test_non_positive_sizes_peak_and_limits_fail_in_one_line_before_anything_runs(tmp_path, capsys, flag, value,
                                                                                   shown):
    # --n-layer 0 used to be dropped as "not given" (a 12-layer model was timed), --peak-tflops -1 printed MFU -0.1%
    results = tmp_path / "results.jsonl"
    with pytest.raises(SystemExit) as e:
        bench.main([*TINY, "--results", str(results), flag, value])
    assert e.value.code == f"error: {flag} must be positive, got {shown}"  # sys.exit(str): stderr, exit status 1
    assert capsys.readouterr().out == "" and not results.exists()


def test_unwritable_results_path_fails_before_measuring_anything(tmp_path, capsys):
    for path in [tmp_path, tmp_path / "a_file" / "results.jsonl"]:  # a folder; a folder that is a file
        (tmp_path / "a_file").write_text("")
        with pytest.raises(SystemExit) as e:
            bench.main([*TINY, "--results", str(path)])
        reason = "Is a directory" if path == tmp_path else "Not a directory"
        assert e.value.code == f"error: cannot append to --results {path} ({reason})"
        assert capsys.readouterr().out == ""  # not even the header: nothing was measured, nothing is lost


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full, a disk that is always full")
def test_a_measurement_that_cannot_be_appended_is_printed_and_the_run_fails_at_the_end():
    r = run_bench("--configs", "fp32", "--results", "/dev/full")  # opens for appending; every write fails
    assert r.returncode == 1
    assert r.stderr.splitlines() == ["error: the JSON lines of baseline, fp32 could not be appended to /dev/full; "
                                     "they are printed above"]
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"benchmark": "train_step"')]
    assert [(x["config"], x["status"]) for x in lines] == [("baseline", "ok"), ("fp32", "ok")]
    assert all(x["tok_per_s"] > 0 and x["steps_timed"] == 2 for x in lines)  # the measurements themselves
    assert "cannot append to /dev/full (No space left on device); its JSON line:" in r.stdout
    assert {k: v[-1] for k, v in table_rows(r.stdout).items()} == {"baseline": "ok", "fp32": "ok"}
    assert "2 configuration(s) (2 ok) x 1 round(s) in" in r.stdout and "; 0 JSON line(s) appended to" in r.stdout


def test_configurations_skipped_by_the_time_budget_are_listed_with_the_reason(tmp_path):
    results = tmp_path / "results.jsonl"
    r = run_bench("--configs", "fp32", "--time-budget", "5", "--results", str(results))
    # nothing was measured: the run fails, after the table and the JSON lines that say why
    assert r.returncode == 1 and r.stderr == ("error: no configuration was measured (2 skipped); the reasons are "
                                              "printed above\n"), r.stderr
    why = "5 s left of --time-budget 5 s, less than the 20 s a configuration takes at least"
    assert r.stdout.count(f"skipped: {why}") == 2
    assert {k: v[-1] for k, v in table_rows(r.stdout).items()} == {"baseline": "skipped", "fp32": "skipped"}
    assert "2 configuration(s) (2 skipped) x 1 round(s) in" in r.stdout
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(x["config"], x["status"], x["error"]) for x in lines] == [("baseline", "skipped", why),
                                                                      ("fp32", "skipped", why)]


def test_a_timeout_shorter_than_the_budget_floor_is_applied_not_reported_as_no_time_left(tmp_path):
    # --timeout 10 without --time-budget used to skip everything "no time left in --time-budget"; it is the user's
    # limit per configuration: here 0.2 s, less than the worker needs to import torch
    results = tmp_path / "results.jsonl"
    r = run_bench("--timeout", "0.2", "--results", str(results), "--configs", "baseline")
    # the only configuration failed: exit 1 (it used to be 0, as if the run had measured something)
    assert r.returncode == 1 and r.stderr == ("error: no configuration was measured (1 timeout); the reasons are "
                                              "printed above\n"), r.stderr
    assert "no time left" not in r.stdout and "[baseline] timeout: killed after 0.2 s (--timeout)" in r.stdout
    assert table_rows(r.stdout)["baseline"][-1] == "timeout"
    (line,) = [json.loads(line) for line in results.read_text().splitlines()]
    assert (line["status"], line["error"]) == ("timeout", "killed after 0.2 s (--timeout)")


def seconds(text):
    """The profiler table's times ('469.369us', '1.832ms') in seconds."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1}[unit]


# a sitecustomize that logs each ResourceWarning to $RESOURCE_WARNINGS: also those raised as Python exits, which
# reach no stderr
LOG_RESOURCE_WARNINGS = """
import os, warnings
warnings.filterwarnings("always", category=ResourceWarning)
_show = warnings.showwarning
def showwarning(message, category, *args, **kwargs):
    if category is not ResourceWarning:
        return _show(message, category, *args, **kwargs)
    with open(os.environ["RESOURCE_WARNINGS"], "a") as f:
        f.write(f"{message}\\n")
warnings.showwarning = showwarning
"""


def test_ctrl_c_prints_the_table_of_what_was_measured_and_one_error_line(tmp_path):
    results = tmp_path / "r.jsonl"
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(LOG_RESOURCE_WARNINGS)
    env = dict(os.environ, RESOURCE_WARNINGS=str(tmp_path / "warnings.txt"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")])))
    # each configuration times steps for 3 s: Ctrl-C lands while fp32 runs, after baseline is done
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench.py"), *TINY, "--steps", "100000",
                             "--max-seconds", "3", "--rounds", "1", "--configs", "baseline,fp32", "--results",
                             str(results)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("[2/2] fp32: "):  # baseline's line is written; fp32's worker starts
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=TIMEOUT)
    stdout = "".join(out) + rest
    assert proc.returncode == 130
    assert "Traceback" not in err and err.splitlines()[-1] == (
        "error: interrupted; the 1 configuration(s) in the table above are all that was measured")
    assert list(table_rows(stdout)) == ["baseline"]
    assert [json.loads(line)["config"] for line in results.read_text().splitlines()] == ["baseline"]
    # the killed worker is reaped: it was left a zombie until bench.py exited (Python 3.13 then warned of it)
    warned = (tmp_path / "warnings.txt").read_text() if (tmp_path / "warnings.txt").exists() else ""
    assert "still running" not in warned, warned


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_in_a_later_round_keeps_the_rounds_already_measured(tmp_path, how):
    # only the last round wrote JSON lines: fp32, measured in round 1, was lost, and SIGTERM printed no table at all
    results = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench.py"), *TINY, "--rounds", "2",
                             "--configs", "baseline,fp32", "--results", str(results)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = []
    for line in proc.stdout:
        out.append(line)
        if line.startswith("[2/2 round 2/2] fp32: "):  # baseline's second round is done; fp32's starts
            proc.send_signal(how)
            break
    rest, err = proc.communicate(timeout=TIMEOUT)
    stdout = "".join(out) + rest
    assert proc.returncode == (130 if how == signal.SIGINT else 143)
    word = "interrupted" if how == signal.SIGINT else "terminated"
    assert "Traceback" not in err and err.splitlines()[-1] == (
        f"error: {word}; the 2 configuration(s) in the table above are all that was measured (fp32 in fewer than "
        "2 rounds)")
    assert {k: v[-1] for k, v in table_rows(stdout).items()} == {"baseline": "ok", "fp32": "ok"}
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(x["config"], x["rounds"], x["steps_timed"]) for x in lines] == [("baseline", 2, 4), ("fp32", 1, 2)]


def test_a_configuration_near_its_time_limit_stops_timing_and_keeps_its_steps(tmp_path):
    # the worker timed until --max-seconds whatever its kill time: a kill at --timeout (or at what was left of
    # --time-budget) lost every step it had timed
    results = tmp_path / "r.jsonl"
    r = run_bench("--steps", "1000000", "--max-seconds", "600", "--timeout", "20", "--configs", "baseline",
                  "--results", str(results))
    assert r.returncode == 0, r.stderr
    assert re.search(r"stopping after \d+ timed steps: the time limit \(--timeout\) is near", r.stdout), r.stdout
    line = json.loads(results.read_text())
    assert line["status"] == "ok" and line["steps_timed"] >= 10 and line["tok_per_s"] > 0


def test_presets_of_another_batch_size_keep_the_baselines_tokens_per_step(tmp_path):
    # each preset ran one micro-batch of its own B: b32 stepped on half the baseline's tokens (B=64)
    results = tmp_path / "r.jsonl"
    r = run_bench("-B", "64", "--configs", "b32,b96", "--time-budget", "1", "--results", str(results))
    assert "[1/3] baseline: B=64 T=32 grad_accum=1 |" in r.stdout
    assert "[2/3] b32: B=32 T=32 grad_accum=2 |" in r.stdout
    assert "[3/3] b96: B=96 T=32 grad_accum=1 (not the baseline tokens/step) |" in r.stdout  # 1.5x: no whole number
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(x["config"], x["tokens_per_step"]) for x in lines] == [("baseline", 2048), ("b32", 2048), ("b96", 3072)]


def test_a_profile_path_in_a_missing_folder_fails_before_measuring_anything(tmp_path):
    r = run_bench("--profile", str(tmp_path / "missing" / "trace.json"), "--results", str(tmp_path / "r.jsonl"))
    assert r.returncode == 1 and r.stderr == f"error: --profile {tmp_path}/missing/trace.json: there is no folder " \
                                             f"{tmp_path}/missing\n"
    assert not (tmp_path / "r.jsonl").exists()


def test_a_profile_path_that_is_a_folder_fails_before_measuring_anything(tmp_path):
    # torch's export_chrome_trace replaced an empty folder by the trace file
    folder = tmp_path / "traces"
    folder.mkdir()
    r = run_bench("--profile", str(folder), "--results", str(tmp_path / "r.jsonl"))
    assert r.returncode == 1 and r.stderr == f"error: --profile {folder} is a folder: name the trace file, " \
                                             f"e.g. {folder}/trace.json\n"
    assert folder.is_dir() and not (tmp_path / "r.jsonl").exists()


def test_a_profile_path_in_a_folder_it_cannot_write_in_fails_before_measuring_anything(tmp_path):
    # it measured, printed "wrote the profiler trace ... to" a trace that was never written, then "the profile
    # failed", and exited 0
    from conftest import without_root_override
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    r = subprocess.run([*without_root_override(), sys.executable, os.path.join(ROOT, "bench.py"), *TINY, "--profile",
                        str(folder / "trace.json"), "--results", str(tmp_path / "r.jsonl")],
                       cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    assert (r.returncode, r.stdout, r.stderr) == (1, "", f"error: --profile {folder}/trace.json: cannot write in "
                                                         f"{folder} (Permission denied)\n")
    assert os.listdir(folder) == [] and not (tmp_path / "r.jsonl").exists()


def test_the_profile_says_wrote_only_for_a_trace_it_wrote(tmp_path):
    # torch's export logs a file it cannot write and returns: a folder gone after the start-up check, or a folder
    # at a configuration's trace path (NAME.<config>.json), was "wrote the profiler trace ... to" it
    (tmp_path / "trace.json").mkdir()
    (tmp_path / "trace.json" / "keep").write_text("")
    train_step = lambda step: torch.ones(4).sum()  # some work for the profiler to record
    for path, error in ((tmp_path / "gone" / "trace.json", f"the profiler wrote no trace to {tmp_path}/gone/trace.json"),
                        (tmp_path / "trace.json", f"[Errno 21] Is a directory: '{tmp_path}/trace.json'")):
        logged = []
        with pytest.raises(OSError) as e:
            bench.write_profile(dict(profile=str(path), profile_steps=1), train_step, 0, torch.device("cpu"),
                                logged.append)
        assert (str(e.value), logged) == (error, [])
    assert os.listdir(tmp_path / "trace.json") == ["keep"]


def test_profile_writes_a_chrome_trace_and_a_table_of_where_the_step_went(tmp_path):
    # paths relative to where it runs, not the repo (its worker's folder), where they once went
    r = run_bench("--configs", "fp32", "--profile", "trace.json", "--profile-steps", "1", "--results",
                  "results.jsonl", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("baseline", "fp32"):  # several configurations: one trace and one table each
        events = json.loads((tmp_path / f"trace.{name}.json").read_text())["traceEvents"]
        assert any(e.get("name") == "aten::addmm" for e in events)  # nn.Linear's matmul is in the trace
        table = (tmp_path / f"trace.{name}.txt").read_text()
        assert table.splitlines()[1].split()[1:3] == ["Self", "CPU"] and "Self CPU time total:" in table
        # rows sorted by self time, the first took the most: name, self %, self time, ...
        rows = [re.split(r"\s{2,}", line.strip()) for line in table.splitlines()[3:] if re.search(r"\d%", line)]
        self_s = [seconds(row[2]) for row in rows]
        assert len(rows) >= 10 and self_s == sorted(self_s, reverse=True) and "aten::addmm" in [r[0] for r in rows]
    assert f"wrote the ops that took the most self_cpu_time_total to {tmp_path}/trace.fp32.txt" in r.stdout


def test_a_profile_cut_off_by_the_timeout_keeps_the_timing_measured_before_it(tmp_path):
    # the worker writes its timing before profiling: a profile past --timeout (a slow trace export, the last
    # configuration of a GPU run with what is left of --time-budget) used to lose a finished measurement
    results = tmp_path / "results.jsonl"
    r = run_bench("--profile", str(tmp_path / "trace.json"), "--profile-steps", "1000000", "--timeout", "20", "--configs", "baseline",
                  "--results", str(results))
    assert r.returncode == 0, r.stderr
    line = json.loads(results.read_text())
    assert line["status"] == "ok" and line["tok_per_s"] > 0 and line["steps_timed"] == 2
    assert line["profile_error"] == "the profile did not finish (killed at the time limit)"
    assert table_rows(r.stdout)["baseline"][-1] == "ok" and not (tmp_path / "trace.txt").exists()


def test_the_worker_dies_with_bench_py_when_bench_py_is_killed(tmp_path):
    # the worker has its own session (a timeout kills its compile workers with it); a SIGKILL of bench.py used to
    # leave it running: a test's timeout once left two workers profiling for half an hour
    cmd = [sys.executable, os.path.join(ROOT, "bench.py"), *TINY, "--configs", "baseline", "--profile",
           str(tmp_path / "trace.json"), "--profile-steps", "1000000", "--results", str(tmp_path / "r.jsonl")]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:  # leaving the with block closes the pipe and waits for bench.py
            for line in proc.stdout:  # the worker prints here: wait until it is profiling
                if "timed step 2/2" in line:
                    break
            workers = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if alive(pid) and
                       str(tmp_path) in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")]
            assert len(workers) == 2  # bench.py and its worker
            proc.kill()
            proc.wait()
            deadline = time.time() + 30
            while any(alive(pid) for pid in workers) and time.time() < deadline:
                time.sleep(0.2)
            assert not any(alive(pid) for pid in workers)
        finally:
            proc.kill()


def alive(pid):
    """A process that runs (not gone, nor a zombie that nothing has reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("config", ["reduce-overhead", "max-autotune"])
def test_cuda_graph_modes_run_with_gradient_accumulation(tmp_path, config):
    # pytorch/pytorch#169545: with .grad unset, the second micro-step's backward overwrote the first's gradient
    # buffer, owned by the CUDA graph ("accessing tensor output of CUDAGraphs that has been overwritten")
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, os.path.join(ROOT, "bench.py"), "--device", "cuda", "--n-layer", "2", "--n-head", "2",
           "--n-embd", "64", "--vocab-size", "512", "-B", "2", "-T", "64", "--total-batch-size", "384",
           "--steps", "3", "--warmup", "2", "--configs", config, "--results", str(results)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=500)
    assert out.returncode == 0, out.stderr
    lines = {r["config"]: r for r in map(json.loads, results.read_text().splitlines())}
    assert lines[config]["status"] == "ok", lines[config].get("error")
    assert lines[config]["grad_accum"] == 3
    # the same seed and data, the same math: the losses agree with the baseline's to bf16 precision
    assert lines[config]["loss_last"] == pytest.approx(lines["baseline"]["loss_last"], abs=0.02)
