"""
HellaSwag (Zellers et al. 2019): the lecture's zero-shot evaluation of a GPT-2 model.

Each example is a context and four endings, one of them right. The model scores each ending by
its cross-entropy given the context (completion style, as for a base model that cannot answer a
multiple-choice prompt) and picks the lowest:
    acc_norm  the lowest *average* loss per ending token: the number the lecture reports
    acc       the lowest *summed* loss: biased towards short endings
The evaluation runs several examples per forward pass (4 rows each, padded on the right, shortest
examples together); causal attention means the padding never reaches the scored positions, so the
predictions are those of the one-example-at-a-time scheme (batch_size=1). Only the positions that
predict an ending token (a third of them) are projected onto the 50,304-word vocabulary.

The validation split comes from rowanz/hellaswag's GitHub into $HELLASWAG_DIR (default
~/.cache/train-gpt2/hellaswag). Offline, point at a copy of the file instead:

    python hellaswag.py --model gpt2                             # OpenAI's 124M (needs the HF hub)
    python hellaswag.py --model log/model_19073.pt               # a training checkpoint
    python hellaswag.py --model hf_gpt2/ --file hellaswag_val.jsonl --limit 1000
    HELLASWAG_FILE=hellaswag_val.jsonl python hellaswag.py --model log/model_19073.pt

On an H100 (bf16, GPT-2 124M shape) the 10,042 examples took 12.6 s at 32 examples per pass against
88.7 s one at a time, 7.05x, measured before the vocabulary projection was cut to the ending tokens.
On our 2-core CPU (bf16, GPT-2 124M shape, 300 examples) the lecture's scheme took 65.6 s and this
one 40.7 s, 1.6x (benchmarks/README.md; benchmarks/results.jsonl has the runs).
acc_norm of OpenAI's models on the 10,042 val examples, cited from the lecture (not measured here): its
hellaswag.py's docstring gives gpt2 (124M) 0.2955 and gpt2-xl (1558M) 0.4893; its plotting code draws
GPT-2 124M's line at 0.2945 (plot_log.py keeps that one, to draw the lecture's plot).
"""

import argparse
import hashlib
import http.client
import json
import os
import stat
import sys
import tempfile
import time
import urllib.request

import torch
from torch.nn import functional as F
from tqdm import tqdm

from gpt2_modules import AUTOCAST, GPT, autocast, default_dtype, first_line, is_out_of_memory, resolve_device
from gpt2_tokenizer import TokenizerUnavailable, folder_error, get_encoding

# -----------------------------------------------------------------------------
# the data: download, or a local file

URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_{split}.jsonl"
# the test split's labels are withheld for the leaderboard, so only these two can be scored
SPLITS = ("train", "val")
# the val file as published (10,042 lines); a download that differs is not kept
SHA256 = {"val": "dc1be2fa1bef56aab8e92a5be597a617e363b09239fa66822939d7fb7a8da4ec"}


def offline_hint(split, flag="--file"):
    """What to do without the download; flag: how the calling script takes a file ($HELLASWAG_FILE is val's only)."""
    if split == "val":
        return f"set HELLASWAG_FILE=/path/to/hellaswag_val.jsonl or pass {flag}"
    return f"pass {flag} /path/to/hellaswag_{split}.jsonl"


def cache_dir():
    return os.environ.get("HELLASWAG_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "train-gpt2",
                                                            "hellaswag")


def download(split="val", folder=None, url=None, sha256=None, progress=True, timeout=30, flag="--file"):
    """The split's jsonl file in `folder` (default cache_dir()), downloaded unless it is already there.
    flag: the calling script's option for a local file, named in the error when the download fails.

    The bytes go to a temporary file that is renamed only once complete (and, for the default URL,
    checked against the published sha256), so an interrupted download never leaves a partial file
    under the real name.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown HellaSwag split {split!r}: expected one of {', '.join(SPLITS)}")
    if url is None:
        url, sha256 = URL.format(split=split), SHA256.get(split)
    folder = folder or cache_dir()
    path = os.path.join(folder, f"hellaswag_{split}.jsonl")
    if os.path.exists(path):
        return path
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".hellaswag_{split}.", suffix=".part", dir=folder)
    except OSError as e:  # a file in the way, a read-only home, a full disk
        raise ValueError(f"cannot write into the HellaSwag cache folder {folder} ({folder_error(e)}); set HELLASWAG_DIR "
                         "to another folder, or " + offline_hint(split, flag)) from e
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="iB", unit_scale=True, unit_divisor=1024, desc=os.path.basename(path),
                      disable=not progress) as bar:
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    bar.update(len(chunk))
        if total is not None and size != total:
            raise OSError(f"the connection closed after {size:,} of {total:,} bytes")
        if sha256 is not None and digest.hexdigest() != sha256:
            raise OSError(f"the file has sha256 {digest.hexdigest()[:12]}..., not the published {sha256[:12]}...")
        os.replace(tmp, path)
        return path
    except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, short reads
        reason = getattr(e, "reason", None) or str(e) or type(e).__name__
        raise ValueError(f"could not download {url} ({reason}); offline, "
                         + offline_hint(split, flag)) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# what a path is, when it is not a regular file (stat's file types)
FILE_TYPES = {stat.S_IFDIR: "a folder", stat.S_IFIFO: "a named pipe (FIFO)", stat.S_IFCHR: "a device",
              stat.S_IFBLK: "a device", stat.S_IFSOCK: "a socket"}


def not_a_file(path):
    """Why `path` is no file to read, or None. os.stat only looks: open() would wait forever on a FIFO."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as e:  # a file where a folder of the path should be, a folder we may not enter
        return f"cannot be reached ({e.strerror})"
    if not stat.S_ISREG(mode):
        return f"is {FILE_TYPES.get(stat.S_IFMT(mode), 'something else')}, not a regular file"
    return None


def data_file(split="val", path=None, flag="--file"):
    """The file to read: `path` if given, else for the val split $HELLASWAG_FILE if set (a local copy of
    it), else the (downloaded) cached split. flag: as for download()."""
    env = os.environ.get("HELLASWAG_FILE") if split == "val" else None
    for given, name in ((path, "HellaSwag file"), (env, "HELLASWAG_FILE")):
        if given:
            if (problem := not_a_file(given)) is not None:
                raise ValueError(f"{name} {given} {problem}")
            return given
    return download(split, flag=flag)


def _check(example):
    """Why `example` is not a scorable HellaSwag example, or None."""
    if not isinstance(example, dict):
        return f"expected a JSON object, got {type(example).__name__}"
    ctx, endings, label = example.get("ctx"), example.get("endings"), example.get("label")
    if not isinstance(ctx, str) or not ctx:
        return "'ctx' must be a non-empty string"
    if not isinstance(endings, list) or len(endings) != 4 or not all(isinstance(e, str) and e for e in endings):
        return "'endings' must be a list of 4 non-empty strings"
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < 4:
        return f"'label' must be 0, 1, 2 or 3, got {label!r}"
    return None


def iterate_examples(split="val", path=None):
    """The examples of a split (dicts, as in the jsonl file), from data_file(split, path).

    A file with no example at all is a ValueError once it has been read to its end: every caller
    divides by the number of examples.
    """
    file = data_file(split, path)
    found = 0
    try:
        f = open(file, "rb")  # bytes, decoded line by line, so that a non-UTF-8 byte is reported with its line
    except OSError as e:  # no read permission: ValueError, the error train_gpt2's start-up check turns into a line
        raise ValueError(f"cannot read HellaSwag file {file} ({e.strerror})") from e
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{file}:{lineno} is not UTF-8 text ({e.reason}): "
                                 "is it a HellaSwag .jsonl file?") from e
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{file}:{lineno} is not valid JSON ({e.msg})") from e
            # valid JSON that Python's json will not read: a number past int's digit limit (a ValueError that
            # names no line), arrays or objects nested past the recursion limit
            except (ValueError, RecursionError) as e:
                why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
                raise ValueError(f"{file}:{lineno} cannot be read as JSON ({why})") from e
            if (problem := _check(example)) is not None:
                raise ValueError(f"{file}:{lineno} is not a HellaSwag example: {problem}")
            found += 1
            yield example
    if not found:
        raise ValueError(f"{file} holds no HellaSwag examples (one JSON object per line expected)")


# -----------------------------------------------------------------------------
# rendering an example as four rows of tokens

def render_example(example, enc=None, block_size=None):
    """(data, tokens, mask, label) for one example.

    tokens (4, L) long: the context followed by each ending (encoded as " " + ending, since the
    ending continues the sentence), padded with 0 to the longest row; mask (4, L) long: 1 over the
    ending tokens, 0 over the context and the padding. data holds the token lists.
    If a row would exceed block_size, the context is cut from the left (its start is dropped) so
    that every ending fits whole; all four rows keep the same context. The real val set's longest
    row is under 1024 tokens, so GPT-2 never needs this.
    """
    if (problem := _check(example)) is not None:
        raise ValueError(f"not a HellaSwag example: {problem}")
    enc = enc or get_encoding()
    # encode_ordinary: text that spells "<|endoftext|>" is ordinary text here, not the special token
    ctx_tokens = enc.encode_ordinary(example["ctx"])
    ending_tokens = [enc.encode_ordinary(" " + ending) for ending in example["endings"]]
    longest_ending = max(len(t) for t in ending_tokens)
    if block_size is not None and len(ctx_tokens) + longest_ending > block_size:
        if longest_ending >= block_size:  # the first ending token needs one context token before it
            raise ValueError(f"an ending of {longest_ending} tokens does not fit block_size {block_size}")
        ctx_tokens = ctx_tokens[len(ctx_tokens) + longest_ending - block_size:]
    n_ctx = len(ctx_tokens)
    tokens = torch.tensor([ctx_tokens + end + [0] * (longest_ending - len(end)) for end in ending_tokens])
    mask = torch.tensor([[0] * n_ctx + [1] * len(end) + [0] * (longest_ending - len(end)) for end in ending_tokens])
    data = {"label": example["label"], "ctx_tokens": ctx_tokens, "ending_tokens": ending_tokens}
    return data, tokens, mask, example["label"]


# -----------------------------------------------------------------------------
# scoring

@torch.no_grad()
def score_rows(model, tokens, mask, autocast_dtype=None):
    """Summed cross-entropy of each row's masked tokens, (R,) float32, for tokens and mask (R, L).

    tokens must be on the model's device; mask may stay on the CPU (better: no host sync).

    Row r's loss only depends on row r's tokens up to its last masked position, so right padding
    and the other rows of the batch never change it (beyond float rounding).
    """
    device = tokens.device
    # the logits at position t predict token t + 1. Only the positions that predict an ending token
    # are projected onto the vocabulary (logits_at): neither that projection nor the float32
    # cross-entropy runs over the context and the padding, two thirds of the val set's positions.
    # A mask on the CPU gives these indices without waiting for the device.
    rows, cols = mask[:, 1:].bool().nonzero(as_tuple=True)
    # non_blocking only on CUDA, which stages a copy from pageable memory before returning; on MPS such a copy
    # can read the CPU tensor after it has been freed (pytorch/pytorch#189690: silently wrong values)
    asynchronous = device.type == "cuda"
    rows, cols = rows.to(device, non_blocking=asynchronous), cols.to(device, non_blocking=asynchronous)
    with autocast(device.type, autocast_dtype):
        logits, _ = model(tokens, logits_at=(rows, cols))  # (number of ending tokens, vocab)
    losses = F.cross_entropy(logits.float(), tokens[rows, cols + 1], reduction="none")
    return torch.zeros(tokens.size(0), device=device).index_add_(0, rows, losses)


def _block_size(model):
    for m in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        config = getattr(m, "config", None)
        if config is not None:
            return config.block_size
    return None


_last_rendered = {}  # the last file's rendering: the training loop scores the same file every few hundred steps


def render_share(examples, block_size, rank, world_size):
    """[(i, tokens, mask, label)] for the examples i with i % world_size == rank."""
    enc = get_encoding()
    if examples is None or isinstance(examples, (str, os.PathLike)):
        path = data_file("val", None if examples is None else os.fspath(examples))
        stat = os.stat(path)
        key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size, block_size, rank, world_size)
        if key not in _last_rendered:
            _last_rendered.clear()
            _last_rendered[key] = render_share(iterate_examples(path=path), block_size, rank, world_size)
        return _last_rendered[key]
    return [(i, *render_example(ex, enc, block_size)[1:]) for i, ex in enumerate(examples) if i % world_size == rank]


def score_examples(model, examples, device, batch_size=32, autocast_dtype=None, rank=0, world_size=1,
                   sort=True, progress=False):
    """Per-example losses: (indices, labels, sum_loss, num_tokens) for this rank's examples.

    examples: an iterable of example dicts, the path of a jsonl file, or None for data_file("val").
    A file's rendering is kept for the next call on the same unchanged file. Example i (counting from 0)
    belongs to rank i % world_size; indices are those i, in order. labels (n,), sum_loss (n, 4) and
    num_tokens (n, 4) are CPU tensors: sum_loss / num_tokens is the average loss of each ending.
    batch_size examples (4 * batch_size rows) go through the model at once; sort=True groups
    examples of similar length to waste less on padding. batch_size=1 is the lecture's scheme.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    rendered = render_share(examples, _block_size(model), rank, world_size)
    order = sorted(range(len(rendered)), key=lambda j: rendered[j][1].size(1)) if sort else range(len(rendered))
    order = list(order)
    device = torch.device(device)
    results = []
    batches = range(0, len(order), batch_size)
    for start in tqdm(batches, desc="hellaswag", unit="batch", disable=not progress):
        batch = [rendered[j] for j in order[start:start + batch_size]]
        L = max(t.size(1) for _, t, _, _ in batch)
        tokens = torch.zeros((4 * len(batch), L), dtype=torch.long)
        mask = torch.zeros((4 * len(batch), L), dtype=torch.long)
        for k, (_, t, m, _) in enumerate(batch):
            tokens[4 * k:4 * k + 4, :t.size(1)] = t
            mask[4 * k:4 * k + 4, :m.size(1)] = m
        num_tokens = mask.sum(1)
        tokens = tokens.to(device, non_blocking=device.type == "cuda")  # not on MPS: see score_rows
        results.append((score_rows(model, tokens, mask, autocast_dtype), num_tokens))
    # one copy back at the end: no host sync between batches beyond the model's own
    sum_loss = torch.cat([r[0] for r in results]).cpu().view(-1, 4) if results else torch.zeros(0, 4)
    num_tokens = torch.cat([r[1] for r in results]).view(-1, 4) if results else torch.zeros(0, 4, dtype=torch.long)
    unsort = torch.empty(len(order), dtype=torch.long)
    unsort[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    indices = [rendered[j][0] for j in range(len(rendered))]
    labels = torch.tensor([rendered[j][3] for j in range(len(rendered))], dtype=torch.long)
    return indices, labels, sum_loss[unsort].double(), num_tokens[unsort]


def evaluate(model, examples, device, batch_size=32, autocast_dtype=None, rank=0, world_size=1, progress=False):
    """(num_correct_norm, num_correct, num_total) over this rank's share of the examples.

    examples: as for score_examples (example dicts, a jsonl path, or None). With world_size > 1
    each rank scores the examples i with i % world_size == rank and the caller sums the three
    counts over ranks (all_reduce); this function never touches torch.distributed.
    The model must already be on `device`; its train/eval mode is the caller's (GPT-2 has no
    dropout, so both give the same numbers). Prints nothing unless progress=True.
    A torch.compile'd model works, but its first call recompiles for new shapes (48 s on an H100 over
    2,000 val examples whose eager scoring took 0.9 s; printed on 2026-11-25, not recorded): pass the
    plain module.
    """
    _, labels, sum_loss, num_tokens = score_examples(model, examples, device, batch_size, autocast_dtype,
                                                     rank, world_size, progress=progress)
    pred_norm = (sum_loss / num_tokens).argmin(1)
    pred = sum_loss.argmin(1)
    return int((pred_norm == labels).sum()), int((pred == labels).sum()), len(labels)


def format_accuracy(num_correct_norm, num_total):
    """The lecture's line, e.g. 'HellaSwag accuracy: 2523/10042=0.2512' (acc_norm)."""
    return f"HellaSwag accuracy: {num_correct_norm}/{num_total}={num_correct_norm / max(num_total, 1):.4f}"


# -----------------------------------------------------------------------------
# command line

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gpt2",
                        help="an OpenAI name (gpt2, gpt2-medium, gpt2-large, gpt2-xl), a save_pretrained folder "
                             "or a training checkpoint .pt (default: gpt2)")
    parser.add_argument("--file", "--hellaswag-file", default=None,  # the second: train_gpt2.py's name
                        help="a local hellaswag_val.jsonl (default: $HELLASWAG_FILE, else download into "
                             "$HELLASWAG_DIR or ~/.cache/train-gpt2/hellaswag)")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="which split to download when no file is given (default: val)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps, cpu")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="autocast dtype; auto: bfloat16 on cuda and on CPUs with bf16 instructions "
                             "(AVX512_BF16, AMX), float32 elsewhere")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="examples per forward pass, 4 rows each (default: 32, for GPUs; on a CPU 8 was as fast "
                             "or faster in our runs; 1: one at a time)")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N examples")
    args = parser.parse_args(argv)

    try:
        if args.limit is not None and args.limit <= 0:
            raise ValueError(f"--limit must be positive, got {args.limit}")
        if args.batch_size <= 0:
            raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
        device = resolve_device(args.device)
        dtype = AUTOCAST[default_dtype(device.split(":")[0], args.dtype)]
        # a given file is scored whatever split it holds: --split would only put a wrong label on it
        if args.file and args.split:
            raise ValueError(f"--split {args.split} picks a split to read, but --file {args.file} is scored as "
                             "given: drop one of them")
        split = args.split or "val"
        file = data_file(split, args.file)  # $HELLASWAG_FILE stands for the val split
        examples = list(iterate_examples(path=file))[:args.limit]
        get_encoding()  # a missing tokenizer should fail before the model loads
        try:
            model = GPT.load(args.model)
        except (RuntimeError, TypeError, KeyError) as e:  # a checkpoint whose config and weights disagree
            raise ValueError(f"could not build a GPT from {args.model} ({type(e).__name__}: "
                             f"{first_line(e, 'no detail')})") from e
        try:
            model.to(device).eval()
        except (RuntimeError, AssertionError) as e:  # no such device, or torch built without it
            raise ValueError(f"cannot use device {device!r} ({first_line(e)})") from e
        print(f"model {args.model}: {model.num_params() / 1e6:.2f}M parameters, on {device}, "
              f"{'bfloat16 autocast' if dtype else 'float32'}, {args.batch_size} examples per forward pass")
        print(f"HellaSwag{'' if args.file else ' ' + split}: {len(examples)} examples from {file}")
        t0 = time.time()
        num_correct_norm, num_correct, num_total = evaluate(model, examples, device, args.batch_size, dtype,
                                                            progress=sys.stderr.isatty())
    except (ValueError, TokenizerUnavailable) as e:
        sys.exit(f"error: {e}")
    except RuntimeError as e:
        if not is_out_of_memory(e):
            raise
        sys.exit(f"error: out of memory ({first_line(e)}); a smaller --batch-size needs less")
    print(f"acc:      {num_correct}/{num_total}={num_correct / num_total:.4f}  (lowest summed loss)")
    print(f"acc_norm: {num_correct_norm}/{num_total}={num_correct_norm / num_total:.4f}  "
          f"(lowest average loss per token: the lecture's number)")
    print(f"took {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
