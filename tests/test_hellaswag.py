"""hellaswag.py: rendering, batched scoring against the one-example-at-a-time scheme, the rank split,
the data file's resolution and download, and the command line. Examples are written here; the real
val split is only used by the last test, when HELLASWAG_FILE names it."""
import dataclasses
import hashlib
import http.server
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading

import pytest
import torch
from torch.nn import functional as F

import hellaswag
from conftest import without_root_override
from gpt2_modules import GPT, GPTConfig
from test_train_gpt2 import HEURISTIC_OVERCOMMIT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the real val split: $HELLASWAG_FILE, or where this project's development machines keep it
REAL_VAL = os.environ.get("HELLASWAG_FILE") or os.path.join(ROOT, "..", "shared", "data", "hellaswag_val.jsonl")

# -----------------------------------------------------------------------------
# examples in the real file's format

ROOF = {"ind": 24, "activity_label": "Roof shingle removal", "ctx_a": "A man is sitting on a roof.", "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he", "split": "val", "split_type": "indomain", "label": 3,
        "endings": ["is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                    "is holding a rubik's cube.", "starts pulling up roofing on a roof."],
        "source_id": "activitynet~v_-JhWjGDPHMY"}

SUBJECTS = ["A woman", "The chef in a white apron", "Two boys", "A small brown dog", "The old fisherman",
            "A girl wearing a helmet and knee pads"]
SCENES = ["stands in a kitchen.", "is shown kneeling beside a river, holding a long wooden pole and a net.",
          "walks onto a stage.", "sits at a desk covered in papers, pens, an old lamp and three empty cups of coffee."]
ENDINGS = ["smiles.", "picks up a knife and begins chopping the onions into thin slices.",
           "falls over.", "waves at the camera while the crowd behind claps and cheers loudly for a long time.",
           "puts the net down.", "jumps.", "reads a letter aloud to the audience, then folds it and leaves the room.",
           "drinks."]


def written_examples(n=30):
    """n examples of varied lengths (contexts of 4 to ~45 tokens, endings of 2 to ~20)."""
    examples = []
    for i in range(n):
        subject, scene = SUBJECTS[i % len(SUBJECTS)], SCENES[(i * 7) % len(SCENES)]
        ctx_a = f"{subject} {scene}" + (" " + SCENES[(i + 1) % len(SCENES)] if i % 3 == 0 else "")
        ctx_b = "then, " + subject.lower() if i % 2 else "she"
        endings = [ENDINGS[(i + 3 * k) % len(ENDINGS)] for k in range(4)]
        examples.append({"ind": 1000 + i, "activity_label": "Written", "ctx_a": ctx_a, "ctx_b": ctx_b,
                         "ctx": f"{ctx_a} {ctx_b}", "split": "val", "split_type": "indomain",
                         "label": (i * 5) % 4, "endings": endings, "source_id": f"written~{i}"})
    return examples


def write_jsonl(path, examples):
    with open(path, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")
    return str(path)


def tiny_model(seed=0):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(block_size=128, vocab_size=50304, n_layer=2, n_head=2, n_embd=32))
    # GPT-2's init makes every logit ~0, so all four endings score ~ln(50304) and the predictions
    # would hinge on float noise; larger embeddings (tied to lm_head) spread the losses apart
    torch.nn.init.normal_(model.transformer.wte.weight, std=0.5)
    return model.eval()


def reference_sum_losses(model, example, enc):
    """The four endings' summed losses, each row on its own with no padding at all."""
    ctx = enc.encode(example["ctx"])
    out = []
    for ending in example["endings"]:
        end = enc.encode(" " + ending)
        row = torch.tensor([ctx + end])
        with torch.no_grad():
            logits, _ = model(row)
        out.append(F.cross_entropy(logits[0, len(ctx) - 1:-1], row[0, len(ctx):], reduction="sum").item())
    return torch.tensor(out, dtype=torch.float64)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # these models are tiny: a second thread only adds waiting, ten times over on a busy 2-core machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -----------------------------------------------------------------------------
# rendering

def test_render_example_gives_context_plus_space_prefixed_endings_and_an_ending_mask(enc):
    data, tokens, mask, label = hellaswag.render_example(ROOF)
    ctx = [32, 582, 318, 5586, 319, 257, 9753, 13, 339]  # "A man is sitting on a roof. he"
    assert enc.encode(ROOF["ctx"]) == ctx and enc.decode(ctx) == ROOF["ctx"]
    assert data["ctx_tokens"] == ctx and label == data["label"] == 3
    # the ending continues the sentence, so its first word carries the space: " is" = 318, " starts" = 4940
    assert data["ending_tokens"][0][0] == 318 and data["ending_tokens"][3][0] == 4940
    assert [len(t) for t in data["ending_tokens"]] == [11, 6, 8, 9]
    assert tokens.dtype == mask.dtype == torch.long and tokens.shape == mask.shape == (4, 9 + 11)
    for i, ending in enumerate(ROOF["endings"]):
        end = enc.encode(" " + ending)
        row = ctx + end
        assert tokens[i, :len(row)].tolist() == row
        assert tokens[i, len(row):].tolist() == [0] * (20 - len(row))  # right padding
        assert mask[i].tolist() == [0] * 9 + [1] * len(end) + [0] * (20 - len(row))


def test_render_example_cuts_the_context_from_the_left_when_a_row_exceeds_block_size(enc):
    full_ctx = enc.encode(ROOF["ctx"])
    data, tokens, mask, _ = hellaswag.render_example(ROOF, block_size=15)  # longest ending: 11 tokens
    assert data["ctx_tokens"] == full_ctx[-4:]  # the start is dropped, the end kept
    assert tokens.shape == (4, 15)
    assert tokens[0].tolist() == full_ctx[-4:] + enc.encode(" " + ROOF["endings"][0])  # the ending whole
    assert mask.sum(1).tolist() == [11, 6, 8, 9]
    with pytest.raises(ValueError, match="does not fit block_size 11"):
        hellaswag.render_example(ROOF, block_size=11)


@pytest.mark.parametrize("change, message", [
    ({"endings": ["a", "b", "c"]}, "4 non-empty strings"),
    ({"label": 4}, "'label' must be 0, 1, 2 or 3"),
    ({"label": "3"}, "'label' must be"),
    ({"ctx": ""}, "'ctx' must be a non-empty string"),
])
def test_render_example_rejects_malformed_examples(change, message):
    with pytest.raises(ValueError, match=message):
        hellaswag.render_example({**ROOF, **change})


# -----------------------------------------------------------------------------
# scoring: batched == one at a time == each row alone

@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def one_at_a_time(model):
    return hellaswag.score_examples(model, written_examples(), "cpu", batch_size=1, sort=False)


def test_scores_equal_each_row_scored_alone_without_padding(model, one_at_a_time, enc):
    examples = written_examples()
    indices, labels, sum_loss, num_tokens = one_at_a_time
    assert indices == list(range(30)) and labels.tolist() == [ex["label"] for ex in examples]
    for i in (0, 7, 29):
        torch.testing.assert_close(sum_loss[i], reference_sum_losses(model, examples[i], enc), rtol=0, atol=1e-4)
        assert num_tokens[i].tolist() == [len(enc.encode(" " + e)) for e in examples[i]["endings"]]


@pytest.mark.parametrize("batch_size", [3, 8, 64])
def test_batched_scores_and_predictions_equal_the_one_at_a_time_scheme(model, one_at_a_time, batch_size):
    indices, labels, sum_loss, num_tokens = one_at_a_time
    avg = sum_loss / num_tokens
    # the test means something only if no two endings are within float noise of each other
    best2 = avg.topk(2, dim=1, largest=False).values
    assert (best2[:, 1] - best2[:, 0]).min() > 1e-4
    assert len(set(avg.argmin(1).tolist())) > 1  # not one constant prediction
    b_indices, b_labels, b_sum_loss, b_num_tokens = hellaswag.score_examples(
        model, written_examples(), "cpu", batch_size=batch_size)
    assert b_indices == indices and torch.equal(b_labels, labels) and torch.equal(b_num_tokens, num_tokens)
    torch.testing.assert_close(b_sum_loss / b_num_tokens, avg, rtol=0, atol=1e-5)
    assert torch.equal((b_sum_loss / b_num_tokens).argmin(1), avg.argmin(1))
    assert torch.equal(b_sum_loss.argmin(1), sum_loss.argmin(1))


def expected_counts(one_at_a_time, n=30):
    _, labels, sum_loss, num_tokens = one_at_a_time
    labels, sum_loss, num_tokens = labels[:n], sum_loss[:n], num_tokens[:n]
    return (int(((sum_loss / num_tokens).argmin(1) == labels).sum()), int((sum_loss.argmin(1) == labels).sum()), n)


def test_evaluate_counts_the_argmin_of_average_and_summed_loss(model, one_at_a_time):
    _, _, sum_loss, num_tokens = one_at_a_time
    assert not torch.equal((sum_loss / num_tokens).argmin(1), sum_loss.argmin(1))  # the two criteria differ here
    norm, plain, total = expected_counts(one_at_a_time)
    assert 0 < norm < 30 and 0 < plain < 30
    assert hellaswag.evaluate(model, written_examples(), "cpu", batch_size=8) == (norm, plain, total)
    # labels where acc_norm is right everywhere and acc is not: the counts come back in that order
    pred_norm = (sum_loss / num_tokens).argmin(1)
    relabelled = [{**ex, "label": int(p)} for ex, p in zip(written_examples(), pred_norm)]
    plain_right = int((sum_loss.argmin(1) == pred_norm).sum())
    assert hellaswag.evaluate(model, relabelled, "cpu", batch_size=8) == (30, plain_right, 30) and plain_right < 30


def test_the_training_run_counts_acc_norm(model, one_at_a_time, tmp_path):
    # what train_gpt2 logs as `{step} hella {value}`: the lecture's acc_norm, not the summed-loss acc
    import train_gpt2
    _, _, sum_loss, num_tokens = one_at_a_time
    pred_norm = (sum_loss / num_tokens).argmin(1)
    relabelled = [{**ex, "label": int(p)} for ex, p in zip(written_examples(), pred_norm)]
    path = write_jsonl(tmp_path / "val.jsonl", relabelled)
    assert train_gpt2.evaluate_hellaswag(model, path, "cpu", None, rank=0, world_size=1) == (30, 30)


def test_counts_over_three_ranks_sum_to_the_single_process_counts(model, one_at_a_time):
    parts = [hellaswag.evaluate(model, written_examples(), "cpu", batch_size=4, rank=r, world_size=3)
             for r in range(3)]
    assert [p[2] for p in parts] == [10, 10, 10]
    assert tuple(sum(p[k] for p in parts) for k in range(3)) == expected_counts(one_at_a_time)
    indices = hellaswag.score_examples(model, written_examples(), "cpu", batch_size=4, rank=1, world_size=3)[0]
    assert indices == list(range(1, 30, 3))


def test_a_files_rendering_is_reused_until_the_file_changes(tmp_path, model, monkeypatch):
    path = write_jsonl(tmp_path / "val.jsonl", written_examples(4))
    monkeypatch.setenv("HELLASWAG_FILE", path)
    first = hellaswag.evaluate(model, None, "cpu")  # None: the val split by data_file's rules
    assert first[2] == 4
    with monkeypatch.context() as m:
        m.setattr(hellaswag, "render_example", lambda *a: pytest.fail("rendered the same file again"))
        assert hellaswag.evaluate(model, path, "cpu") == first
    write_jsonl(path, written_examples(6))
    assert hellaswag.evaluate(model, path, "cpu")[2] == 6


def test_bench_times_the_lectures_scheme_and_ours_with_the_same_predictions(tmp_path, model, one_at_a_time):
    # benchmarks/hellaswag_bench.py re-implements the lecture's scoring as its baseline: it must agree
    # with hellaswag.py example by example, or its speedups would compare different answers
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config)}, tmp_path / "m.pt")
    results = tmp_path / "results.jsonl"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "hellaswag_bench.py"),
           "--init-from", str(tmp_path / "m.pt"), "--file", write_jsonl(tmp_path / "val.jsonl", written_examples()),
           "--device", "cpu", "--dtype", "float32", "--batch-size", "4,8", "--warmup", "2", "--results", str(results)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert [line.split()[0] for line in out.stdout.splitlines()[-4:]] == ["lecture,", "1", "4", "8"]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [r["batch_size"] for r in records] == [4, 8]
    norm, plain, total = expected_counts(one_at_a_time)
    for r in records:
        assert r["examples"] == total and r["dtype"] == "float32"
        assert (r["acc_norm_lecture"], r["acc_lecture"]) == (norm, plain)
        assert (r["acc_norm_batched"], r["acc_batched"]) == (norm, plain)
        assert r["changed_predictions_vs_lecture"] == 0 and r["max_abs_diff_avg_loss_vs_lecture"] < 1e-4
        assert r["speedup_vs_lecture"] == pytest.approx(r["lecture_s"] / r["batched_s"], rel=0.05)


@pytest.mark.parametrize("script, args, expected", [
    ("hellaswag_bench.py", ["--batch-size", "0"], "error: --batch-size must be positive, got 0"),
    ("hellaswag_bench.py", ["--batch-size", "4,x"], "error: --batch-size takes whole numbers separated by commas, "
                                                    "got '4,x'"),
    ("hellaswag_bench.py", ["--limit", "-4"], "error: --limit must be positive, got -4"),
    ("loader_memory_bench.py", ["--tokens", "1000"], "loader_memory_bench.py: error: need B, T >= 1 and --tokens >= "
                                                     "B*T+1 = 65,537 (one batch), got B=64, T=1024, --tokens 1,000"),
])
def test_the_benchmarks_refuse_bad_flags_in_one_line(tmp_path, script, args, expected):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", script), *args, "--results", str(tmp_path / "r.jsonl")]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode in (1, 2) and out.stderr.splitlines()[-1] == expected, out.stderr
    assert not (tmp_path / "r.jsonl").exists()


@pytest.mark.skipif(not HEURISTIC_OVERCOMMIT, reason="needs vm.overcommit_memory = 0, which refuses the 400 GB at once")
def test_out_of_memory_is_one_error_line_naming_the_batch_size(tmp_path):
    # a 4M-token vocabulary (67 MB of weights): 300 examples at once need their ~24,000 ending tokens' logits,
    # ~400 GB, which the allocator refuses
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=2**22, n_layer=1, n_head=1, n_embd=4))
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config)}, tmp_path / "m.pt")
    cmd = [sys.executable, os.path.join(ROOT, "hellaswag.py"), "--model", str(tmp_path / "m.pt"), "--device", "cpu",
           "--dtype", "float32", "--file", write_jsonl(tmp_path / "val.jsonl", written_examples(300)),
           "--batch-size", "300"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert re.fullmatch(r"error: out of memory \(.*can't allocate memory.*\); a smaller --batch-size needs less\n",
                        out.stderr), out.stderr


def test_format_accuracy_is_the_lectures_line():
    assert hellaswag.format_accuracy(2523, 10042) == "HellaSwag accuracy: 2523/10042=0.2512"


# -----------------------------------------------------------------------------
# the data file: local, HELLASWAG_FILE, download

def test_iterate_examples_reads_a_local_file_and_hellaswag_file(tmp_path, monkeypatch):
    a = write_jsonl(tmp_path / "a.jsonl", written_examples(5))
    b = write_jsonl(tmp_path / "b.jsonl", [ROOF])
    monkeypatch.setenv("HELLASWAG_DIR", str(tmp_path / "cache"))  # never download here
    assert [ex["ind"] for ex in hellaswag.iterate_examples(path=a)] == [1000, 1001, 1002, 1003, 1004]
    monkeypatch.setenv("HELLASWAG_FILE", b)
    assert list(hellaswag.iterate_examples("val")) == [ROOF]
    assert len(list(hellaswag.iterate_examples("val", path=a))) == 5  # an explicit path wins
    monkeypatch.setenv("HELLASWAG_FILE", str(tmp_path / "missing.jsonl"))
    with pytest.raises(ValueError, match="HELLASWAG_FILE .*missing.jsonl does not exist"):
        list(hellaswag.iterate_examples("val"))


def test_iterate_examples_names_the_line_of_a_malformed_example(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROOF) + "\n\n" + '{"ctx": "x", "endings": ["a"' + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:3 is not valid JSON"):
        list(hellaswag.iterate_examples(path=str(path)))
    path.write_text(json.dumps({**ROOF, "label": 7}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1 is not a HellaSwag example: 'label'"):
        list(hellaswag.iterate_examples(path=str(path)))


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_download_from_an_unreachable_url_fails_in_one_line_and_leaves_no_file(tmp_path):
    url = f"http://127.0.0.1:{closed_port()}/hellaswag_val.jsonl"
    with pytest.raises(ValueError) as e:
        hellaswag.download("val", folder=str(tmp_path), url=url, progress=False)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"could not download {url}")
    assert message.endswith("; offline, set HELLASWAG_FILE=/path/to/hellaswag_val.jsonl or pass --file")
    assert os.listdir(tmp_path) == []
    # $HELLASWAG_FILE stands for the val split only: the train split's hint does not offer it
    with pytest.raises(ValueError) as e:
        hellaswag.download("train", folder=str(tmp_path), url=url, progress=False)
    assert str(e.value).endswith("; offline, pass --file /path/to/hellaswag_train.jsonl")


def test_a_cache_folder_that_cannot_be_made_fails_in_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file where the cache folder would go")
    with pytest.raises(ValueError) as e:
        hellaswag.download("val", folder=str(tmp_path / "taken"), url="http://127.0.0.1:9/x", progress=False)
    assert str(e.value) == (f"cannot write into the HellaSwag cache folder {tmp_path / 'taken'} (a file of that name "
                            "is in the way); set HELLASWAG_DIR to another folder, or set "
                            "HELLASWAG_FILE=/path/to/hellaswag_val.jsonl or pass --file")


class Server:
    """A local HTTP server whose one file can be cut short, to download from without the internet."""

    def __init__(self, body, send_bytes=None):
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:send_bytes])  # then the connection closes

            def log_message(self, *args):
                pass

        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hellaswag_val.jsonl"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_download_writes_the_file_once_and_reuses_it(tmp_path):
    body = "".join(json.dumps(ex) + "\n" for ex in written_examples(3)).encode()
    server = Server(body)
    try:
        path = hellaswag.download("val", folder=str(tmp_path), url=server.url, progress=False)
        assert path == str(tmp_path / "hellaswag_val.jsonl") and pathlib.Path(path).read_bytes() == body
        assert hellaswag.download("val", folder=str(tmp_path), url=server.url, progress=False) == path
        assert server.requests == 1 and os.listdir(tmp_path) == ["hellaswag_val.jsonl"]
        with pytest.raises(ValueError, match="sha256"):  # a mirror that serves other bytes is not kept
            hellaswag.download("val", folder=str(tmp_path / "other"), url=server.url, progress=False,
                               sha256=hashlib.sha256(b"something else").hexdigest())
        assert os.listdir(tmp_path / "other") == []
    finally:
        server.close()


def test_the_download_bar_counts_mebibytes_as_its_unit_says(tmp_path, capsys):
    # "iB" promises binary prefixes: 3 MiB showed as 3.15M (decimal) before unit_divisor=1024
    server = Server(b"x" * 3 * 2**20)
    try:
        hellaswag.download("val", folder=str(tmp_path), url=server.url, sha256=None)
    finally:
        server.close()
    assert "3.00M/3.00M" in capsys.readouterr().err


def test_download_cut_short_leaves_no_partial_file(tmp_path):
    server = Server(b"x" * 10_000, send_bytes=1_000)
    try:
        with pytest.raises(ValueError, match="could not download .*HELLASWAG_FILE"):
            hellaswag.download("val", folder=str(tmp_path), url=server.url, progress=False)
        assert os.listdir(tmp_path) == []
    finally:
        server.close()


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    latin1 = json.dumps({**ROOF, "ctx": "café"}, ensure_ascii=False).encode("latin-1")  # é: the one byte 0xe9
    path.write_bytes(json.dumps(ROOF).encode() + b"\n" + latin1)
    with pytest.raises(ValueError) as e:
        list(hellaswag.iterate_examples(path=str(path)))
    assert str(e.value) == f"{path}:2 is not UTF-8 text (invalid continuation byte): is it a HellaSwag .jsonl file?"


@pytest.mark.parametrize("line, why", [
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    (json.dumps(ROOF)[:-1] + ', "x": ' + "9" * 5000 + "}",
     "Exceeds the limit (4300 digits) for integer string conversion: value has 5000 digits"
     if sys.version_info >= (3, 11) else  # Python 3.10's int words it without "digits"
     "Exceeds the limit (4300) for integer string conversion: value has 5000 digits"),
], ids=["deep nesting", "5000-digit number"])
def test_json_that_python_cannot_read_is_named_with_its_line(tmp_path, line, why):
    # valid JSON past Python's limits: a RecursionError traceback, or int's ValueError naming no file; a ValueError
    # naming the line is also what train_gpt2.py's start-up check (prepare_hellaswag) turns into its error line
    import train_gpt2
    path = tmp_path / "odd.jsonl"
    path.write_text(json.dumps(ROOF) + "\n" + line + "\n")
    expected = f"{path}:2 cannot be read as JSON ({why})"
    with pytest.raises(ValueError) as e:
        list(hellaswag.iterate_examples(path=str(path)))
    assert str(e.value) == expected
    with pytest.raises(train_gpt2.ConfigError) as e:
        train_gpt2.prepare_hellaswag(str(path), 128, 0, 1)
    assert str(e.value) == f"HellaSwag {path}: {expected}; pass another --hellaswag-file or --no-hellaswag"


@pytest.mark.parametrize("kind", ["folder", "device", "fifo"])
def test_a_path_that_is_no_regular_file_is_named_for_what_it_is(tmp_path, monkeypatch, kind):
    # it was said not to exist; a FIFO is looked at with os.stat, never opened (open() would wait for a writer)
    path = {"folder": str(tmp_path), "device": os.devnull, "fifo": str(tmp_path / "pipe")}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    what = {"folder": "a folder", "device": "a device", "fifo": "a named pipe (FIFO)"}[kind]
    with pytest.raises(ValueError) as e:  # --file, and train_gpt2.py's --hellaswag-file
        list(hellaswag.iterate_examples(path=path))
    assert str(e.value) == f"HellaSwag file {path} is {what}, not a regular file"
    monkeypatch.setenv("HELLASWAG_FILE", path)
    with pytest.raises(ValueError) as e:
        hellaswag.data_file("val")
    assert str(e.value) == f"HELLASWAG_FILE {path} is {what}, not a regular file"


@pytest.mark.parametrize("flag", ["--file", "--model"])
def test_a_file_it_may_not_read_is_one_error_line_with_the_os_reason(tmp_path, model, flag):
    # --file: a PermissionError traceback; --model: GPT.load called the checkpoint "not a torch.save archive"
    file, ckpt = write_jsonl(tmp_path / "val.jsonl", written_examples(3)), tmp_path / "model.pt"
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config)}, ckpt)
    locked = {"--file": file, "--model": str(ckpt)}[flag]
    os.chmod(locked, 0)
    result = subprocess.run([*without_root_override(), sys.executable, os.path.join(ROOT, "hellaswag.py"),
                             "--model", str(ckpt), "--file", file, "--device", "cpu"],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    expected = {"--file": f"cannot read HellaSwag file {file}", "--model": f"cannot read the checkpoint {ckpt}"}[flag]
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"error: {expected} (Permission denied)\n")


@pytest.mark.parametrize("content", ["", "\n\n  \n"], ids=["empty", "blank lines"])
def test_a_file_without_examples_is_refused_where_it_is_read(tmp_path, model, content):
    # train_gpt2.py's start-up check renders the file with render_share and turns a ValueError into its error
    # line; before, such a file passed start-up and the first evaluation divided by zero examples
    path = tmp_path / "none.jsonl"
    path.write_text(content)
    expected = f"{path} holds no HellaSwag examples (one JSON object per line expected)"
    for call in (lambda: hellaswag.render_share(str(path), 128, 0, 1), lambda: hellaswag.evaluate(model, path, "cpu"),
                 lambda: list(hellaswag.iterate_examples(path=str(path)))):
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == expected


def test_a_rank_whose_share_of_a_small_file_is_empty_scores_nothing(tmp_path, model):
    path = write_jsonl(tmp_path / "one.jsonl", written_examples(1))
    assert len(hellaswag.render_share(path, 128, 0, 2)) == 1
    assert hellaswag.render_share(path, 128, 1, 2) == []  # not an error: the file holds an example, rank 0 has it
    assert hellaswag.evaluate(model, path, "cpu", rank=1, world_size=2) == (0, 0, 0)


# -----------------------------------------------------------------------------
# the command line

@pytest.mark.parametrize("flag", ["--file", "--hellaswag-file"])  # the second: train_gpt2.py's name, in README
def test_cli_scores_a_training_checkpoint_on_a_local_file(tmp_path, model, one_at_a_time, flag):
    path = tmp_path / "model_00010.pt"
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config)}, path)
    file = write_jsonl(tmp_path / "val.jsonl", written_examples())
    result = subprocess.run([sys.executable, os.path.join(ROOT, "hellaswag.py"), "--model", str(path),
                             flag, file, "--device", "cpu", "--batch-size", "4", "--limit", "25"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == f"HellaSwag: 25 examples from {file}"  # the file given, whatever split it holds
    norm25, plain25, _ = expected_counts(one_at_a_time, 25)
    assert lines[2].startswith(f"acc:      {plain25}/25={plain25 / 25:.4f}")
    assert lines[3].startswith(f"acc_norm: {norm25}/25={norm25 / 25:.4f}")


def run_cli_in_process(args):
    with pytest.raises(SystemExit) as e:
        hellaswag.main(args)
    return str(e.value.code)


@pytest.mark.parametrize("case", ["missing file", "malformed line", "missing model", "not a checkpoint",
                                  "checkpoint of another shape", "empty file", "bad limit"])
def test_cli_bad_inputs_give_one_error_line(tmp_path, model, case):
    good_file = write_jsonl(tmp_path / "val.jsonl", written_examples(3))
    good_ckpt = tmp_path / "good.pt"
    torch.save({"model": model.state_dict(), "config": dataclasses.asdict(model.config)}, good_ckpt)
    args = {"--model": str(good_ckpt), "--file": good_file, "--device": "cpu"}
    if case == "missing file":
        args["--file"] = str(tmp_path / "nope.jsonl")
    elif case == "malformed line":
        (tmp_path / "bad.jsonl").write_text(json.dumps(ROOF) + "\nnot json\n")
        args["--file"] = str(tmp_path / "bad.jsonl")
    elif case == "missing model":
        args["--model"] = str(tmp_path / "missing.pt")
    elif case == "not a checkpoint":
        (tmp_path / "text.pt").write_text("hello")
        args["--model"] = str(tmp_path / "text.pt")
    elif case == "checkpoint of another shape":
        config = {**dataclasses.asdict(model.config), "n_embd": 2 * model.config.n_embd}
        torch.save({"model": model.state_dict(), "config": config}, tmp_path / "shape.pt")
        args["--model"] = str(tmp_path / "shape.pt")
    elif case == "empty file":
        (tmp_path / "empty.jsonl").write_text("")
        args["--file"] = str(tmp_path / "empty.jsonl")
    elif case == "bad limit":
        args["--limit"] = "0"
    message = run_cli_in_process([x for kv in args.items() for x in kv])
    assert message.startswith("error: ") and "\n" not in message


def test_cli_refuses_a_split_beside_a_file_and_reads_hellaswag_file_as_the_val_split(tmp_path, monkeypatch):
    # the file given is what gets scored: a --split label on it could name the wrong split
    file = write_jsonl(tmp_path / "hellaswag_val.jsonl", written_examples(3))
    assert run_cli_in_process(["--file", file, "--split", "train"]) == \
        f"error: --split train picks a split to read, but --file {file} is scored as given: drop one of them"
    # $HELLASWAG_FILE is a local copy of the val split: what --split val (or no --split) reads, and only that
    monkeypatch.setenv("HELLASWAG_FILE", file)
    monkeypatch.setenv("HELLASWAG_DIR", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    train = write_jsonl(tmp_path / "cache" / "hellaswag_train.jsonl", written_examples(2))  # as if downloaded
    assert hellaswag.data_file("val") == file
    assert hellaswag.data_file("train") == train


@pytest.mark.parametrize("device, expected", [
    ("gpu", "error: unknown device 'gpu': expected auto, cpu, cuda, cuda:N or mps"),
    ("cuda", "error: --device cuda was asked for but torch sees no CUDA GPU (use --device cpu or auto)"),
])
def test_cli_device_this_machine_lacks_is_one_error_line(tmp_path, device, expected):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    file = write_jsonl(tmp_path / "val.jsonl", written_examples(3))
    assert run_cli_in_process(["--model", "gpt2", "--file", file, "--device", device]) == expected


def test_cli_error_exits_nonzero_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "hellaswag.py"), "--model", "gpt2",
                             "--file", str(tmp_path / "nope.jsonl")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == f"error: HellaSwag file {tmp_path / 'nope.jsonl'} does not exist\n"


# -----------------------------------------------------------------------------
# the real validation split, when this machine has it

@pytest.mark.skipif(not os.path.exists(REAL_VAL), reason="no real hellaswag_val.jsonl: set HELLASWAG_FILE")
def test_real_val_split_renders(enc):
    with open(REAL_VAL, "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == hellaswag.SHA256["val"]
    examples = list(hellaswag.iterate_examples(path=REAL_VAL))
    assert len(examples) == 10042
    assert sorted({ex["label"] for ex in examples}) == [0, 1, 2, 3]
    for ex in examples[:100]:
        data, tokens, mask, label = hellaswag.render_example(ex, enc, block_size=1024)
        n_ctx = len(data["ctx_tokens"])
        assert tokens.shape == mask.shape and tokens.size(0) == 4 and tokens.size(1) <= 1024
        assert tokens.size(1) == n_ctx + max(len(t) for t in data["ending_tokens"])
        assert mask[:, :n_ctx].sum() == 0
        assert mask.sum(1).tolist() == [len(t) for t in data["ending_tokens"]]
        assert label == ex["label"] in (0, 1, 2, 3)
