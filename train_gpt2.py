"""
Pre-train GPT-2 (124M) on FineWeb-Edu: the lecture's training run, as one script.

    python fineweb.py                                           # once: ~10B tokens -> edu_fineweb10B/
    python train_gpt2.py                                        # one GPU (or CPU/MPS), gradient accumulation
    torchrun --standalone --nproc_per_node=8 train_gpt2.py      # 8 GPUs on one machine (the reference run)
    torchrun --nnodes=2 --nproc_per_node=8 --node-rank=0 --rdzv-backend=c10d \\
        --rdzv-endpoint=HOST:29500 --rdzv-id=gpt2 train_gpt2.py # on each of 2 machines (node-rank 0 and 1)

Every step processes ~0.5M tokens (GPT-3 small's batch size), split into micro-batches of B x T tokens
per process and accumulated. The defaults reproduce the lecture's run: 19,073 steps = 10B tokens = one
epoch of sample-10BT. Validation loss and HellaSwag every 250 steps, samples every 250, checkpoints
every 5,000, all written to log/. `--resume auto` continues a run exactly where its last complete checkpoint
left it, after any kill; SIGTERM or SIGUSR1 (a preemption), and Ctrl-C once a step has ended, end the run after
the current step with a checkpoint.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import random
import re
import shlex
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dataloaderlite import DataLoaderLite
from fineweb import LOCAL_DIR, flock_folder, fsync_dir
from gpt2_modules import (ADAMW_BETAS, AUTOCAST, GPT, MODEL_SIZES, NUM_SAMPLES, PADDED_VOCAB_SIZE, PROMPT,
                          SAMPLE_LENGTH, SAMPLE_SEED, GPTConfig, HelpFormatter, check_seed, default_dtype, first_line,
                          generate, is_out_of_memory, load_checkpoint, resolve_device)
from gpt2_tokenizer import TokenizerUnavailable, get_encoding

# -----------------------------------------------------------------------------
# the lecture's batch and optimisation recipe (GPT-3 small's, appendix B, where the paper gives one); each is
# the default of its flag

TOTAL_BATCH_SIZE = 2**19  # 524,288 tokens per optimizer step, ~0.5M as GPT-3 small; by gradient accumulation
BATCH_SIZE = 64           # B, sequences per micro-batch and GPU: what fits an 80 GB A100 (the lecture's)
SEQ_LEN = 1024            # T, GPT-2's context
WEIGHT_DECAY = 0.1        # AdamW's decoupled weight decay, on the >= 2-D tensors only
GRAD_CLIP = 1.0           # the global gradient norm is clipped to this

# -----------------------------------------------------------------------------
# the learning-rate schedule: linear warmup, then cosine decay to 10% (GPT-3 paper, appendix B)

MAX_LR = 6e-4            # GPT-3 small's peak
MIN_LR_FRACTION = 0.1    # GPT-3 decays to 10% of the peak, whatever the peak
WARMUP_STEPS = 715       # 375M tokens of warmup, as GPT-3, at 2**19 tokens a step
MAX_STEPS = 19073        # 19,073 x 2**19 tokens = 10B tokens: one epoch of FineWeb-Edu sample-10BT


def get_lr(step, max_lr=MAX_LR, min_lr=None, warmup_steps=WARMUP_STEPS, max_steps=MAX_STEPS):
    if min_lr is None:
        min_lr = max_lr * MIN_LR_FRACTION  # the lecture's max_lr * 0.1, to the last bit (5.9999999999999995e-05)
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps  # +1: step 0 already trains at a non-zero rate
    if step > max_steps:
        return min_lr
    decay_ratio = (step - warmup_steps) / (max_steps - warmup_steps)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))  # 1 -> 0
    return min_lr + coeff * (max_lr - min_lr)


# -----------------------------------------------------------------------------
# what a run prints and logs: one place for each format (the notebook and the plot parse them)


def format_step(step, loss, lr, norm, dt_ms, tokens_per_sec):
    return (f"step {step:5d} | loss: {loss:.6f} | lr {lr:.4e} | norm: {norm:.4f} | "
            f"dt: {dt_ms:.2f}ms | tok/sec: {tokens_per_sec:.2f}")


LOG_FORMATS = {"train": "{step} train {value:.6f}", "val": "{step} val {value:.4f}", "hella": "{step} hella {value:.4f}"}
# a line of them as bytes, any line end: what else a log.txt holds (a note added by hand) is not a log line
LOG_LINE = re.compile(rb"(\d+) (" + "|".join(LOG_FORMATS).encode() + rb") \S+\r?\n")


class RunLog:
    """log/log.txt in the lecture's plotting format: `{step} {train|val|hella} {value}`, one per line."""

    def __init__(self, path, resume_step=0):
        self.path = path
        # a resumed run rewrites what happened after its checkpoint, so drop those lines first, and a last
        # line cut short (a full disk, a kill); other lines, a note added by hand say, stay as they were
        # (bytes: a byte edited in by hand must not block the resume). The rewrite is atomic, as a kill
        # here must not lose the log.
        kept = []
        if os.path.isdir(path):
            raise ConfigError(f"{path} is a folder: the run's log file goes there; move the folder away")
        if resume_step > 0 and os.path.exists(path):
            with open(path, "rb") as f:
                kept = [line for line in f if line.endswith(b"\n") and not (
                    (m := LOG_LINE.fullmatch(line)) and int(m[1]) >= resume_step)]
        with open(path + ".tmp", "wb") as f:
            f.writelines(kept)
        os.replace(path + ".tmp", path)

    def write(self, step, kind, value):
        try:
            with open(self.path, "a") as f:  # reopen per line: a crash loses nothing already logged
                f.write(LOG_FORMATS[kind].format(step=step, value=value) + "\n")
        except OSError as e:  # a full disk: a failed write names no file
            raise ConfigError(f"cannot append to {self.path} ({e.strerror or e}: is the disk full?); free some "
                              "space, then continue with --resume auto from the newest checkpoint") from e


# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    g = p.add_argument_group("data and logs")
    g.add_argument("--data-root", default=LOCAL_DIR, help="folder of .npy token shards (made by fineweb.py)")
    g.add_argument("--log-dir", default="log", help="log.txt and checkpoints go here")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="gpt2", choices=list(MODEL_SIZES),
                   help="the architecture to train from scratch (default: gpt2, 124M)")
    g.add_argument("--init-from", default="scratch",
                   help="scratch, an OpenAI name (gpt2, ...), a save_pretrained folder or a checkpoint .pt "
                        "(weights only: the optimizer and step start fresh)")
    for name, what in (("n-layer", "blocks"), ("n-head", "attention heads"), ("n-embd", "model width"),
                       ("block-size", "context length")):
        g.add_argument(f"--{name}", type=int, default=None, help=f"override the {what} of --model")
    g.add_argument("--vocab-size", type=int, default=PADDED_VOCAB_SIZE,
                   help="50304 = 50257 padded to a multiple of 128: 'nice numbers' make the matmuls faster "
                        "(the extra 47 tokens never occur, their logits are driven to -inf)")
    g = p.add_argument_group("optimisation (defaults: the lecture's GPT-3-small recipe)")
    g.add_argument("--batch-size", "-B", type=int, default=BATCH_SIZE, help="micro-batch size per process")
    g.add_argument("--seq-len", "-T", type=int, default=SEQ_LEN, help="tokens per sequence")
    g.add_argument("--total-batch-size", type=int, default=TOTAL_BATCH_SIZE,
                   help="tokens per optimizer step: 2**19 ~ 0.5M, GPT-3 small's batch; reached by gradient accumulation")
    g.add_argument("--max-lr", type=float, default=MAX_LR, help="peak learning rate (GPT-3 small)")
    g.add_argument("--min-lr", type=float, default=None,
                   help="final learning rate (default: 10%% of --max-lr, as the lecture's max_lr * 0.1; 6e-5)")
    g.add_argument("--warmup-steps", type=int, default=WARMUP_STEPS, help="375M tokens of linear warmup, as GPT-3")
    g.add_argument("--max-steps", type=int, default=MAX_STEPS, help="19,073 x 0.5M tokens = 10B tokens, one epoch")
    g.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY,
                   help="AdamW's decoupled weight decay, on the >= 2-D tensors (matmuls, embeddings) only")
    g.add_argument("--grad-clip", type=float, default=GRAD_CLIP, help="clip the global gradient norm to this")
    g = p.add_argument_group("evaluation, samples and checkpoints")
    g.add_argument("--eval-interval", type=int, default=250, help="validation (and HellaSwag) every N steps and on the last")
    g.add_argument("--val-steps", type=int, default=20, help="micro-batches per validation")
    g.add_argument("--hellaswag", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate HellaSwag with each validation (offline: set HELLASWAG_FILE)")
    g.add_argument("--hellaswag-file", default=None, help="a local hellaswag_val.jsonl instead of the download")
    g.add_argument("--sample-interval", type=int, default=250, help="print samples every N steps (not at step 0)")
    g.add_argument("--checkpoint-interval", type=int, default=5000, help="checkpoint every N steps and after the last")
    g.add_argument("--keep-checkpoints", type=int, default=2, metavar="N",
                   help="keep the N newest checkpoints, removing older ones once a new one is complete (0: keep all)")
    g.add_argument("--resume", default="none",
                   help="none, auto (the newest complete checkpoint in --log-dir) or a checkpoint path")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N steps of this invocation with a checkpoint (the schedule still follows "
                        "--max-steps): split a run into jobs of limited time, continue with --resume auto")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"],
                   help="auto: CUDA if there is a GPU, else MPS, else the CPU")
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="autocast dtype; auto: bfloat16 on CUDA and on CPUs with bf16 instructions "
                        "(AVX512_BF16, AMX), float32 elsewhere")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, and on CPU with bfloat16 where a C++ "
                        "compiler and Python's headers are found, in folders without spaces; off elsewhere)")
    g.add_argument("--seed", type=int, default=1337,
                   help="torch's seed for the initialisation (the lecture's)")
    return p.parse_args(argv)


class ConfigError(ValueError):
    pass


def check_args(args, world_size):
    """Fail on a bad combination before any process group or model exists; fill in derived defaults."""
    if args.min_lr is None:
        args.min_lr = args.max_lr * MIN_LR_FRACTION
    for name in ("batch_size", "seq_len", "total_batch_size", "max_steps", "warmup_steps", "eval_interval",
                 "val_steps", "sample_interval", "checkpoint_interval", "vocab_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("n_layer", "n_head", "n_embd", "block_size", "stop_after"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.keep_checkpoints < 0:
        raise ConfigError(f"--keep-checkpoints must be 0 (keep all) or more, got {args.keep_checkpoints}")
    if not (args.max_lr > 0 and 0 <= args.min_lr <= args.max_lr):
        raise ConfigError(f"need 0 <= --min-lr <= --max-lr and --max-lr > 0, got {args.min_lr} and {args.max_lr}")
    # AdamW's first step computes lr / (1 - beta1) (its bias correction) as a float32: beyond that range
    # (or inf) torch stopped with an overflow error halfway through updating the weights
    bias_correction = 1 - ADAMW_BETAS[0]
    if not args.max_lr / bias_correction <= torch.finfo(torch.float32).max:
        raise ConfigError(f"--max-lr {args.max_lr:g} is too large: AdamW computes it / (1 - beta1) = "
                          f"{1 / bias_correction:g} x it in float32, which overflows")
    if not args.grad_clip > 0:  # 0 would zero every gradient, and a negative value flip them
        raise ConfigError(f"--grad-clip must be positive, got {args.grad_clip}")
    for flag, folder in (("--log-dir", args.log_dir), ("--data-root", args.data_root)):
        if not folder:
            raise ConfigError(f"{flag} is empty (an unset variable?): name a folder")
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise ConfigError(f"{flag} {folder} is a file, not a folder")
    check_seed(args.seed)
    if not args.weight_decay >= 0:
        raise ConfigError(f"--weight-decay must be 0 or more, got {args.weight_decay}")
    # AdamW's decay is decoupled: each step multiplies the weights by 1 - lr * weight_decay. At 1 or more that
    # zeroes or flips them (inf: nan), and the run diverged with a hint about --max-lr instead
    if not args.max_lr * args.weight_decay < 1:
        raise ConfigError(f"--weight-decay {args.weight_decay:g} is too large for --max-lr {args.max_lr:g}: AdamW "
                          "multiplies the weights by 1 - lr * weight_decay each step, which must stay above 0 (the "
                          f"defaults: 1 - {MAX_LR:g} * {WEIGHT_DECAY:g})")
    span = args.batch_size * args.seq_len * world_size
    if args.total_batch_size % span:
        lo = args.total_batch_size // span * span
        nearest = " or ".join(str(v) for v in (lo, lo + span) if v > 0)
        raise ConfigError(f"--total-batch-size {args.total_batch_size} is not divisible by B*T*processes = "
                          f"{args.batch_size}*{args.seq_len}*{world_size} = {span}; nearest valid: {nearest}")


# -----------------------------------------------------------------------------
# processes and devices


def process_env():
    """(rank, local_rank, world_size) as torchrun sets them in the environment; (0, 0, 1) without torchrun."""
    values = []
    for key, default in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        text = os.environ.get(key, default)
        try:
            values.append(int(text))
        except ValueError:
            raise ConfigError(f"{key} is {text!r}, not a whole number: torchrun sets it; unset it to run one "
                              "process") from None
    rank, local_rank, world_size = values
    if not (world_size >= 1 and 0 <= rank < world_size and local_rank >= 0):
        raise ConfigError(f"RANK {rank}, LOCAL_RANK {local_rank} and WORLD_SIZE {world_size} do not fit together "
                          "(0 <= RANK < WORLD_SIZE): torchrun sets them; unset them to run one process")
    missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if world_size > 1 and not os.environ.get(key)]
    if missing:  # else torch's "environment variable RANK expected", which does not say why it was asked
        names = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
        raise ConfigError(f"WORLD_SIZE is {world_size} but {names} {'is' if len(missing) == 1 else 'are'} not set: "
                          "torchrun sets them all; unset WORLD_SIZE to run one process")
    return rank, local_rank, world_size


def setup_distributed(device_arg):
    """(rank, local_rank, world_size, device) for this process; joins the process group under torchrun."""
    rank, local_rank, world_size = process_env()
    device_arg = resolve_device(device_arg)  # auto: cuda, mps or cpu; a device this machine lacks is an error
    device = cuda_device(local_rank, torch.cuda.device_count()) if device_arg == "cuda" else device_arg
    if device_arg == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        if rank == 0 and "TORCHELASTIC_RUN_ID" not in os.environ:
            # not started by torchrun (which starts every process): a WORLD_SIZE left over in the shell would
            # otherwise wait here for processes that never come, in silence
            print(f"waiting for the other {world_size - 1} process(es) of WORLD_SIZE={world_size} at "
                  f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} (WORLD_SIZE is set without torchrun: "
                  "unset it and RANK to run one process)", flush=True)
        # the rendezvous waits in C++ for every process (one that never comes: until its timeout, 30 min),
        # where no Python signal handler runs: there Ctrl-C and SIGTERM end this process as they end any
        with default_signal_handling():
            dist.init_process_group(backend="nccl" if device_arg == "cuda" else "gloo")
    return rank, local_rank, world_size, device


def cuda_device(local_rank, n_gpus):
    """This process's GPU: one per process on each machine, picked by torchrun's LOCAL_RANK."""
    if local_rank >= n_gpus:  # else torch.cuda.set_device fails with "invalid device ordinal" and a traceback
        raise ConfigError(f"LOCAL_RANK is {local_rank} but this machine has {n_gpus} GPU(s): start at most "
                          f"{n_gpus} process(es) on it (torchrun --nproc_per_node={n_gpus})")
    return f"cuda:{local_rank}"


@contextmanager
def default_signal_handling():
    try:
        previous = {s: signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: no handlers of ours to set aside
        previous = {}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def default_dtype_and_compile(device_type, dtype="auto", compile=None):
    """What --dtype auto and an unset --compile mean: the fastest faithful setting we measured.

    dtype: gpt2_modules.default_dtype (bf16 on CUDA and on CPUs with bf16 dot products, else float32).
    compile: on for CUDA, as in the lecture. On a CPU, with bf16 and where inductor finds its C++
    compiler: on our 2-core AVX512_BF16 CPU the demo's step took 1.35 s against 1.94 s for the
    lecture's CPU settings (bf16 eager) and 2.10 s for float32 eager, after ~37 s of compiling (README,
    Performance). Compiling float32 measured no faster than float32 eager, so it stays off there.
    MPS: eager.
    """
    dtype = default_dtype(device_type, dtype)
    if compile is None:
        compile = device_type == "cuda" or (device_type == "cpu" and dtype == "bfloat16" and can_compile_on_cpu())
    return dtype, compile


def can_compile_on_cpu():
    # inductor builds its CPU kernels as C++ Python extensions: it needs the compiler it looks for
    # ($CXX, else g++; clang++ on macOS) and Python's headers (Debian/Ubuntu: python3-dev)
    compiler = shutil.which(os.environ.get("CXX", "clang++" if sys.platform == "darwin" else "g++"))
    return (compiler is not None and os.path.exists(os.path.join(sysconfig.get_path("include"), "Python.h"))
            and not spaced_compile_paths())


def spaced_compile_paths():
    """The folders inductor puts unquoted on the C++ compiler's command line (torch 2.13) that hold a space:
    with the venv in "My Projects", the link fails with `cannot find Projects/...`."""
    paths = [os.path.dirname(torch.__file__), sysconfig.get_path("include"),
             os.environ.get("TORCHINDUCTOR_CACHE_DIR") or tempfile.gettempdir()]  # its cache is under the latter
    return [p for p in paths if any(c.isspace() for c in p)]


def is_compile_failure(e):
    from torch._dynamo.exc import BackendCompilerFailed
    from torch._inductor.exc import InductorError
    return isinstance(e, (BackendCompilerFailed, InductorError))


def all_reduce_mean(t, world_size):
    # gloo has no ReduceOp.AVG in many torch versions: sum, then divide (exact for NCCL too)
    if world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world_size
    return t


class Diverged(ConfigError):
    pass


def check_finite(what, value, step, log_dir):
    """Stop before a diverged run writes a checkpoint. The newest one on disk is the state before it, which can
    already be headed for the divergence (weights finite, their next update not), hence no "good" in the message."""
    if not math.isfinite(value):
        before = [path for s, path in list_checkpoints(log_dir) if s <= step]
        raise Diverged(f"the {what} became {value} at step {step}; stopping without a checkpoint ("
                       + (f"the newest before it is {before[-1]}; try a lower --max-lr, from an earlier checkpoint "
                          "if that one diverges too" if before else "none was written before it; try a lower --max-lr")
                       + ")")


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


# -----------------------------------------------------------------------------
# building the model


def size_overrides(args):
    return {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "block_size") if getattr(args, k)}


def scratch_config(args):
    """The GPTConfig of a model from scratch: --model, with the size flags given over it."""
    return GPTConfig.named(args.model, vocab_size=args.vocab_size, **size_overrides(args))


def build_model(args, print0):
    """GPT from scratch (--model + overrides) or from pretrained weights (--init-from)."""
    overrides = size_overrides(args)
    if args.init_from == "scratch":
        return GPT(scratch_config(args))
    print0(f"initialising from {args.init_from}")
    model = GPT.load(args.init_from)
    if overrides:
        print0(f"note: the size overrides {overrides} are ignored: the model's size comes from {args.init_from}")
    return model


# -----------------------------------------------------------------------------
# evaluation and samples (called from the loop; each runs on every rank)


@torch.no_grad()
def evaluate_val(model, loader, steps, device, autocast_ctx, world_size):
    loader.reset()
    loss_accum = torch.zeros((), device=device)
    for _ in range(steps):
        x, y = loader.next_batch()
        with autocast_ctx:
            _, loss = model(x.to(device), y.to(device))
        loss_accum += loss.detach() / steps
    return all_reduce_mean(loss_accum, world_size).item()


@torch.no_grad()
def evaluate_hellaswag(model, path, device, autocast_dtype, rank, world_size):
    import hellaswag
    correct_norm, _, total = hellaswag.evaluate(model, path, device, autocast_dtype=autocast_dtype,
                                                rank=rank, world_size=world_size)
    counts = torch.tensor([correct_norm, total], device=device)
    if world_size > 1:  # each rank scored examples i % world_size == rank; add the counts up
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return int(counts[0]), int(counts[1])


def prepare_hellaswag(path, block_size, rank, world_size):
    """Render this rank's HellaSwag examples now (hellaswag.py keeps them for every evaluation), so that a
    file the model cannot score stops the run at startup rather than at its first evaluation."""
    import hellaswag
    try:
        hellaswag.render_share(path, block_size, rank, world_size)
        problem = None
    except ValueError as e:
        problem = str(e)
    if world_size > 1:
        # each rank renders its own share: an example too long for the model may be in another rank's, and only
        # rank 0 prints the error line, so every rank stops with the first rank's problem
        problems = [None] * world_size
        dist.all_gather_object(problems, problem)
        problem = next((p for p in problems if p), None)
    if problem:
        raise ConfigError(f"HellaSwag {path}: {problem}; pass another --hellaswag-file or --no-hellaswag")


def print_samples(model, enc, rank, autocast_dtype):
    rows = generate(model, enc.encode(PROMPT), SAMPLE_LENGTH, NUM_SAMPLES, seed=SAMPLE_SEED + rank,
                    autocast_dtype=autocast_dtype)
    for i, row in enumerate(rows):
        # a model with a padded vocab can (rarely, early on) sample an id the tokenizer lacks
        print(f"rank {rank} sample {i}: {enc.decode([t for t in row if t < enc.n_vocab])}", flush=True)


# -----------------------------------------------------------------------------
# checkpoints: every stateful piece's state_dict, written atomically, with a sidecar that proves it whole


def rng_state():
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2]),
            "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    # this process's GPU only: a machine with fewer GPUs than the one that saved them (8 on one node, then 4 on
    # each of 2) has no device for the rest. Rank 0 saved the states its process holds for every GPU; for GPU r
    # that equals rank r's own only while nothing draws CUDA random numbers, as here (no dropout; sampling has
    # its own generator)
    if torch.cuda.is_available() and torch.cuda.current_device() < len(s["cuda"]):
        torch.cuda.set_rng_state(s["cuda"][torch.cuda.current_device()])
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))
    random.setstate((s["python_version"], tuple(s["python"]), None))


# A checkpoint log/model_00008.pt is written as model_00008.pt.tmp; then its size and sha256 go into its
# sidecar model_00008.pt.json, and only then is the .tmp renamed. A kill at any moment leaves the earlier
# checkpoints as they were, plus at worst a .tmp or a sidecar without its checkpoint (both removed at the
# next start), and every model_*.pt this code wrote has its sidecar. --resume auto takes the newest
# checkpoint whose bytes match its sidecar: one damaged later (a disk error, a cut-short copy) is skipped.

CHECKPOINT_NAME = re.compile(r"model_(\d+)\.pt")


class CheckpointError(ValueError):
    pass


def checkpoint_path(log_dir, step):
    return os.path.join(log_dir, f"model_{step:05d}.pt")


def sidecar_path(path):
    return path + ".json"


def list_checkpoints(log_dir):
    """[(step, path)] of the checkpoints in log_dir, oldest first (by step: model_100000.pt is newer than 99999)."""
    names = os.listdir(log_dir) if os.path.isdir(log_dir) else []
    return sorted((int(m[1]), os.path.join(log_dir, n)) for n in names if (m := CHECKPOINT_NAME.fullmatch(n)))


def peek_checkpoint(path):
    """(config, args) a checkpoint was saved with, read through mmap (not gigabytes of weights); None if they
    cannot be read (what is wrong with the file, a full load says)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return dict(ckpt["config"]), dict(ckpt.get("args", {}))
    except Exception:
        return None


def file_digest(path):
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            sha.update(chunk)
    return sha.hexdigest()


class HashingWriter:
    """The file torch.save writes to: hashes the bytes on their way, and keeps the OSError (or Ctrl-C) of a failed
    write, which torch reports only as a RuntimeError ('unexpected pos ...')."""

    def __init__(self, f):
        self.f, self.sha, self.size, self.error = f, hashlib.sha256(), 0, None

    def write(self, data):
        try:
            n = self.f.write(data)
        except (OSError, KeyboardInterrupt) as e:  # a second Ctrl-C can land here too
            self.error = e
            raise
        self.sha.update(data)
        self.size += len(data)
        return n

    def flush(self):
        self.f.flush()


def save_checkpoint(path, model, optimizer, step, loader_state, args, rng=None):
    ckpt = {
        "model": model.state_dict(),  # the raw module's: no _orig_mod. or module. prefixes
        "config": asdict(model.config),
        "optimizer": optimizer.state_dict(),
        "step": step,  # optimizer steps completed; the resumed run starts at this step
        "loader": loader_state,  # the same on every rank: rank r adds its own offset
        "rng": rng or rng_state(),
        "args": vars(args),
    }
    tmp, sidecar = path + ".tmp", sidecar_path(path)
    try:
        with open(tmp, "wb") as f:
            out = HashingWriter(f)
            try:
                torch.save(ckpt, out)
            except RuntimeError:
                if out.error is None:
                    raise  # not the disk: a bug
                raise out.error
            f.flush()
            os.fsync(f.fileno())
        with open(sidecar + ".tmp", "w") as f:
            json.dump({"file": os.path.basename(path), "bytes": out.size, "sha256": out.sha.hexdigest(),
                       "step": step}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(sidecar + ".tmp", sidecar)
        os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoints, never half a file
        fsync_dir(os.path.dirname(os.path.abspath(path)))
    except OSError as e:  # a full disk, a quota: the environment, not this code
        for p in (tmp, sidecar + ".tmp"):
            if os.path.exists(p):
                os.remove(p)
        intact = [p for s, p in list_checkpoints(os.path.dirname(path)) if s < step and not checkpoint_problem(p)]
        raise CheckpointError(f"cannot write the checkpoint {path} ({e.strerror or e}: is the disk full?); "
                              + (f"the previous checkpoint {intact[-1]} is intact: free some space, then continue "
                                 "with --resume auto" if intact else
                                 "free some space, then run again: there is no earlier checkpoint to continue "
                                 "from, so the run starts over")) from e


def save_before_failure(before, model, optimizer, args, print0):
    """After a step failed before its update: a checkpoint of the state before that step, so that
    --resume auto repeats the failed step and loses none of the steps since the last checkpoint."""
    step, loader_state, rng = before
    path = checkpoint_path(args.log_dir, step)
    if not (os.path.exists(path) and checkpoint_problem(path) is None):  # not saved at the end of the last step
        try:
            save_checkpoint(path, model, optimizer, step, loader_state, args, rng=rng)
        except (CheckpointError, RuntimeError) as e:  # the run's own error is the one to report
            print0(f"could not save the state before step {step} either ({e})")
            return
        prune_checkpoints(args.log_dir, step, args.keep_checkpoints)
    print0(f"saved {path}: the state before the failed step {step}; fix the cause (the error line), then "
           "continue with --resume auto")


def checkpoint_problem(path, need_sidecar=True):
    """Why the checkpoint at path is not whole, or None: its size and sha256 against its sidecar's."""
    sidecar = sidecar_path(path)
    if not os.path.exists(sidecar):
        return f"it has no {os.path.basename(sidecar)} (written by an older train_gpt2.py?)" if need_sidecar else None
    try:
        with open(sidecar) as f:
            expected = json.load(f)
        size, sha = int(expected["bytes"]), str(expected["sha256"])
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as e:  # OverflowError: "bytes": Infinity
        return f"its sidecar {sidecar} is unreadable ({e})"
    if os.path.getsize(path) != size:
        return f"it has {os.path.getsize(path):,} bytes, not the {size:,} its sidecar records: it is truncated"
    if file_digest(path) != sha:
        return "its sha256 differs from its sidecar's: it is corrupt"
    return None


def find_resume_checkpoint(resume, log_dir, warn=print):
    """The checkpoint to resume from: None, the newest complete one in log_dir ('auto'), or the path given."""
    if resume == "none":
        # starting over would rewrite log.txt, and a later --resume auto would pick the old run's newer checkpoints
        if found := list_checkpoints(log_dir):
            raise CheckpointError(f"{log_dir}/ already holds a run's checkpoints (newest: "
                                  f"{os.path.basename(found[-1][1])}); continue it with --resume auto, or start a new "
                                  "run in another --log-dir (or move them away)")
        return None
    if resume == "auto":
        found = list_checkpoints(log_dir)
        for _, path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                return path
            warn(f"warning: skipping {path}: {problem}")
        if found:
            raise CheckpointError(f"no checkpoint in {log_dir}/ is complete ({len(found)} found, none whole); resume "
                                  f"one with --resume PATH, or move them away to start over")
        return None
    if os.path.isdir(resume):
        raise ConfigError(f"--resume {resume} is a folder: name a checkpoint file in it, or resume its newest with "
                          f"--resume auto --log-dir {shlex.quote(resume)}")
    if not os.path.isfile(resume):
        raise ConfigError(f"--resume {resume}: no such checkpoint file")
    problem = checkpoint_problem(resume, need_sidecar=False)  # a checkpoint copied without its sidecar loads
    if problem:
        raise CheckpointError(f"--resume {resume}: {problem}")
    # going back (after a loss spike, say) branches the run: the old branch's later checkpoints would be what a
    # later --resume auto continues, while log.txt holds the new branch
    named = CHECKPOINT_NAME.fullmatch(os.path.basename(resume))
    newer = [path for step, path in list_checkpoints(log_dir) if named and step > int(named[1])]
    if newer:
        raise CheckpointError(f"{log_dir}/ holds checkpoints after {os.path.basename(resume)} (newest: "
                              f"{os.path.basename(newer[-1])}): a later --resume auto would continue that run, not "
                              "this one; move them away, or resume into another --log-dir")
    return resume


def changed_args(saved, now):
    """The flags of `now` that differ from the checkpoint's `saved` ones, as '--flag old -> new', except those that
    only say how this job runs (--resume, --stop-after, --log-dir, --device)."""
    ignored = {"resume", "stop_after", "log_dir", "device"}
    return ", ".join(f"--{k.replace('_', '-')} {saved[k]} -> {v}" for k, v in now.items()
                     if k in saved and k not in ignored and saved[k] != v)


def load_optimizer_state(optimizer, saved):
    """The checkpoint's AdamW state (moments, step counts) under this run's settings.

    torch's load_state_dict restores the saved param groups' settings too: a --weight-decay changed on
    resume would be ignored, and a CPU checkpoint resumed on a GPU would run unfused AdamW after printing
    `using fused AdamW: True`. Loading the state under this optimizer's settings also lets torch place the
    step counts where those settings need them (on the GPU for the fused kernel).
    """
    ours = optimizer.state_dict()["param_groups"]
    groups = [{**theirs, **{k: v for k, v in mine.items() if k != "params"}}
              for theirs, mine in zip(saved["param_groups"], ours)]
    optimizer.load_state_dict({**saved, "param_groups": groups})


def resume(resume_path, model, optimizer, train_loader, args, world_size, print0):
    """Load a training checkpoint into this run's model, optimizer, data loader and RNGs; the step to start at."""
    # onto the CPU: torch.set_rng_state takes CPU tensors only (a checkpoint mapped to cuda failed there), and
    # load_state_dict copies the weights and the optimizer's state onto the parameters' device
    ckpt = load_checkpoint(resume_path, map_location="cpu")
    if missing := [key for key in ("optimizer", "step", "loader", "rng") if key not in ckpt]:
        raise ConfigError(f"{resume_path} holds no {', '.join(missing)} to resume from (weights only?); start "
                          f"a run from its weights with --init-from {shlex.quote(resume_path)}")
    if ckpt["config"] != asdict(model.config):
        raise ConfigError(f"{resume_path} holds a model of another shape ({ckpt['config']}) "
                          f"than this run builds ({asdict(model.config)})")
    try:
        model.load_state_dict(ckpt["model"])
        load_optimizer_state(optimizer, ckpt["optimizer"])
        train_loader.load_state_dict(ckpt["loader"])
        set_rng_state(ckpt["rng"])
        start_step = ckpt["step"]
    except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as e:
        if is_out_of_memory(e):
            raise
        # written by another version of this code, or edited: an entry missing, of another type or shape
        raise CheckpointError(f"{resume_path} is not a checkpoint this code can resume ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:300]})") from e
    if not (isinstance(start_step, int) and start_step >= 0):
        raise CheckpointError(f"{resume_path} is not a checkpoint this code can resume (its step is "
                              f"{start_step!r}, not a count of steps)")
    if (skipped := train_loader.skipped_on_resume) is not None:  # another -B, -T or process count
        saved = ckpt["loader"]
        where = (f"at the next shard, as the last {skipped:,} tokens of the checkpoint's are too few for a micro-step "
                 "of the new size" if skipped else "from the very token where the checkpoint stood")
        print0(f"note: the checkpoint read the data in micro-steps of B*T*processes = {saved['B']}*{saved['T']}*"
               f"{saved['num_processes']} tokens, this run in {args.batch_size}*{args.seq_len}*{world_size}: it "
               f"goes on {where}")
    print0(f"resumed from {resume_path} at step {start_step}")
    if changed := changed_args(ckpt.get("args", {}), vars(args)):
        print0(f"note: flags changed since that checkpoint was written: {changed}")
    if start_step >= args.max_steps:
        print0(f"nothing to train: the checkpoint is at step {start_step} and --max-steps is {args.max_steps} "
               "(a larger --max-steps trains on, with the schedule stretched to it)")
    return start_step


def check_resume_shape(resume_path, args):
    """Before the data and the model are built: a checkpoint resumes only into a model of its own shape, and a run
    made with other size flags than the defaults (any run small enough for a CPU) needs them again. Not taken over
    in silence: the error names the flags to pass."""
    if args.init_from != "scratch":  # the shape comes from --init-from's model: resume() checks it
        return
    peeked = peek_checkpoint(resume_path)
    if peeked is None:  # what is wrong with the file, resume() says
        return
    config, saved = peeked
    try:
        ours = asdict(scratch_config(args))
    except ValueError:  # sizes that do not fit together: build_model's error line
        return
    if config == ours:
        return

    def flags(keys):
        now = vars(args)
        shown = lambda k: f"--{k.replace('_', '-')} {shlex.quote(str(saved[k]))}" if saved[k] is not None else \
            f"no --{k.replace('_', '-')}"  # noqa: E731
        return " ".join(shown(k) for k in keys if k in saved and saved[k] != now.get(k))

    # init_from: a run started from OpenAI's weights has their shape whatever its size flags say
    model_flags = flags(("init_from", "model", "n_layer", "n_head", "n_embd", "block_size", "vocab_size")) or \
        f"flags that build {config}"  # a checkpoint without its args (made otherwise)
    data_flags = flags(("batch_size", "seq_len", "total_batch_size"))
    raise ConfigError(f"{resume_path} holds a model of another shape than this run builds: resume it with "
                      f"{model_flags}" + (f" (its data flags were {data_flags}; those may change on a resume)"
                                          if data_flags else ""))


def check_same_checkpoint(resume_path, world_size):
    """Every rank must continue from the same checkpoint. Only rank 0 writes them: on several machines without a
    shared --log-dir the others would find none (or stale ones) and train on from another step, with another
    optimizer state and data position, until the ranks' loops no longer meet."""
    found = [None] * world_size
    dist.all_gather_object(found, resume_path and os.path.basename(resume_path))
    if len(set(found)) > 1:
        ranks = ", ".join(f"rank {r}: {name or 'none'}" for r, name in enumerate(found))
        raise ConfigError(f"the ranks would resume from different checkpoints ({ranks}): rank 0 writes them, so "
                          "every machine must see its --log-dir (a shared filesystem), or a copy of it")


def prune_checkpoints(log_dir, newest_step, keep):
    """Remove all but the `keep` newest checkpoints up to newest_step (just written, complete) and their sidecars.
    Checkpoints beyond newest_step (from a run this one branched off) are left alone."""
    if keep == 0:
        return
    older = [path for step, path in list_checkpoints(log_dir) if step < newest_step]
    for path in older[:max(len(older) - (keep - 1), 0)]:
        remove_checkpoint(path)


def remove_checkpoint(path):
    for p in (path, sidecar_path(path)):  # the checkpoint first: none is ever left without its sidecar
        if os.path.exists(p):
            os.remove(p)


class LogDirLock:
    """One run at a time in a log folder: a second run there would delete the first one's half-written
    checkpoint as stale, resume from its checkpoints and write its lines into the same log.txt.

    The lock is flock() on the folder itself (fineweb.flock_folder: nothing left behind, dropped however the
    process ends). Rank 0 holds it for the whole job. Where flock is missing (Windows) or unsupported (some
    network filesystems) there is no check.
    """

    def __init__(self, log_dir):
        self.log_dir, self.fd = log_dir, None

    def acquire(self):
        if self.fd is not None or not os.path.isdir(self.log_dir):
            return
        try:
            self.fd = flock_folder(self.log_dir)
        except BlockingIOError:
            raise ConfigError(f"another run is training in {self.log_dir}/ (it holds the folder's lock): let it "
                              "finish or stop it first, or give this run its own --log-dir") from None

    def acquire_on_rank0(self, rank, world_size):
        """Rank 0 takes the lock and every rank learns whether it could, so that all of them stop together
        (a rank left to go on would die in its next collective, with a traceback of its own)."""
        refused = None
        if rank == 0:
            try:
                self.acquire()
            except ConfigError as e:
                refused = str(e)
        if world_size > 1:
            box = [refused]
            dist.broadcast_object_list(box, src=0)
            refused = box[0]
        if refused:
            raise ConfigError(refused)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the lock
            self.fd = None


def remove_stale_files(log_dir, print0):
    """What a killed run leaves behind: .tmp files it was writing, a sidecar whose checkpoint was never renamed."""
    for name in sorted(os.listdir(log_dir)):
        path = os.path.join(log_dir, name)
        stale = name.endswith(".tmp") and name.startswith(("model_", "log.txt"))
        orphan = CHECKPOINT_NAME.fullmatch(name.removesuffix(".json")) and name.endswith(".json") \
            and not os.path.exists(path.removesuffix(".json"))
        if stale or orphan:
            os.remove(path)
            print0(f"removed {path}, left by a run killed while writing it")


# -----------------------------------------------------------------------------
# preemption: SLURM and cloud schedulers send SIGTERM, then SIGKILL after a grace period (torchrun passes
# SIGTERM on to its workers); SIGUSR1 is SLURM's usual early warning (`#SBATCH --signal=USR1@120`).
# Ctrl-C (SIGINT) stops the same way once a step has ended, so that it does not lose the steps since the
# last checkpoint; before that (a wrong flag, a long compile) and at a second Ctrl-C it quits at once.


class Preemption:
    """Notes SIGTERM/SIGUSR1/SIGINT; the loop asks at the end of each step and stops there with a checkpoint."""

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1", "SIGINT") if hasattr(signal, name))

    def __init__(self):
        self.received = 0  # the number of the last signal received, 0 if none
        self.step_ended = False  # set by the loop: from then on a Ctrl-C has steps to save
        self.previous = {}
        try:
            self.previous = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        except ValueError:  # not the main thread (train_gpt2.main called from a thread): no handlers
            pass

    def _note(self, signum, frame):
        if signum == signal.SIGINT:
            if not self.step_ended or self.received == signal.SIGINT:
                raise KeyboardInterrupt  # nothing to save yet, or the second Ctrl-C
            if speaking_rank() == 0:
                # os.write, not print: a handler can run in the middle of a print to the same stream
                os.write(2, b"Ctrl-C: stopping after this step with a checkpoint (Ctrl-C again to quit at once)\n")
        self.received = signum

    def agreed(self, device, world_size):
        """The signal that any rank received (0 if none), so that every rank stops after the same step."""
        if world_size == 1:
            return self.received
        flag = torch.tensor(self.received, device=device)  # a CPU tensor for gloo, a CUDA one for NCCL
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# -----------------------------------------------------------------------------
# the training run


def train(args, preemption, lock):
    rank, local_rank, world_size, device = setup_distributed(args.device)
    master = rank == 0
    lock.acquire_on_rank0(rank, world_size)  # a folder that is there already: before its checkpoints are read
    print0 = print if master else (lambda *a, **k: None)
    device_type = device.split(":")[0]
    dtype, use_compile = default_dtype_and_compile(device_type, args.dtype, args.compile)
    autocast_dtype = AUTOCAST[dtype]
    autocast_ctx = torch.autocast(device_type=device_type, dtype=autocast_dtype) if autocast_dtype else nullcontext()
    print0(f"using device: {device} x {world_size} process(es) | dtype {dtype} | compile {use_compile} | "
           f"torch {torch.__version__} | python {platform.python_version()} | {platform.node()}")
    print0("config: " + " ".join(f"{k}={v}" for k, v in vars(args).items()))
    # before anything slow: which checkpoint this run continues, if any (or why it may not start), and the
    # tokenizer the samples need (an empty offline cache is an error line now, not after the model is built)
    resume_path = find_resume_checkpoint(args.resume, args.log_dir, warn=lambda m: print0(m, file=sys.stderr))
    if world_size > 1:
        check_same_checkpoint(resume_path, world_size)
    if resume_path:
        check_resume_shape(resume_path, args)
    enc = get_encoding()

    torch.manual_seed(args.seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(args.seed)
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for what autocast leaves in fp32

    B, T = args.batch_size, args.seq_len
    grad_accum_steps = args.total_batch_size // (B * T * world_size)
    print0(f"total desired batch size: {args.total_batch_size}")
    print0(f"=> calculated gradient accumulation steps: {grad_accum_steps}")
    if device_type == "cpu" and (B, T) == (BATCH_SIZE, SEQ_LEN):
        # said before the long silence: GPT-2 124M, `python train_gpt2.py --no-hellaswag`, 2026-12-02
        print0(f"note: B={B}, T={T} is a GPU's micro-batch ({grad_accum_steps} a step here), slow on a CPU: on "
               "this repo's 2-core CPU, GPT-2 124M had not finished its first validation (20 of them) 15 minutes "
               "after starting. For a CPU-sized run, `python demo.py` prints a train_gpt2.py command to copy; or "
               "give smaller sizes (--batch-size, --seq-len, --total-batch-size, --n-layer, --n-embd)")

    train_loader = DataLoaderLite(B, T, rank, world_size, "train", data_root=args.data_root, device=device,
                                  verbose=master)
    val_loader = DataLoaderLite(B, T, rank, world_size, "val", data_root=args.data_root, device=device,
                                verbose=master)
    hellaswag_path = None
    if args.hellaswag:
        import hellaswag
        hellaswag_path = hellaswag.data_file("val", args.hellaswag_file,
                                             flag="--hellaswag-file (or leave HellaSwag out with --no-hellaswag)")

    model = build_model(args, print0)
    if T > model.config.block_size:
        raise ConfigError(f"--seq-len {T} exceeds the model's block size {model.config.block_size}")
    train_loader.vocab_size = val_loader.vocab_size = model.config.vocab_size  # each batch's ids checked
    if hellaswag_path:
        prepare_hellaswag(hellaswag_path, model.config.block_size, rank, world_size)
    model.to(device)
    optimizer = model.configure_optimizers(weight_decay=args.weight_decay, learning_rate=args.max_lr,
                                           device_type=device_type, verbose=master)

    start_step = resume(resume_path, model, optimizer, train_loader, args, world_size, print0) if resume_path else 0
    if not resume_path and args.resume == "auto":
        print0(f"no checkpoint in {args.log_dir}/ yet: starting from step 0")

    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if world_size > 1:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)

    os.makedirs(args.log_dir, exist_ok=True)
    lock.acquire_on_rank0(rank, world_size)  # a folder this run made: before anything is removed or written there
    if master:
        remove_stale_files(args.log_dir, print0)
    log = RunLog(os.path.join(args.log_dir, "log.txt"), start_step) if master else None
    lr_at = lambda s: get_lr(s, args.max_lr, args.min_lr, args.warmup_steps, args.max_steps)

    signum = 0  # the signal that ends this run early, if one does
    before = None
    try:
        for step in range(start_step, args.max_steps):
            t0 = time.time()
            last_step = step == args.max_steps - 1
            # the state before this step, to save if the step fails before its update (a shard gone, out
            # of memory): the weights and AdamW's state change only in optimizer.step()
            before = (step, train_loader.state_dict(), rng_state()) if master and step > start_step else None

            # once in a while: validation loss, HellaSwag, samples (the lecture's order)
            if step % args.eval_interval == 0 or last_step:
                model.eval()
                val_loss = evaluate_val(model, val_loader, args.val_steps, device, autocast_ctx, world_size)
                print0(f"validation loss: {val_loss:.4f}")
                check_finite("validation loss", val_loss, step, args.log_dir)
                if master:
                    log.write(step, "val", val_loss)
                if hellaswag_path:
                    # the uncompiled module: HellaSwag's shapes vary by example, which would recompile
                    correct, total = evaluate_hellaswag(raw_model, hellaswag_path, device, autocast_dtype,
                                                        rank, world_size)
                    print0(hellaswag.format_accuracy(correct, total))
                    if master:
                        log.write(step, "hella", correct / total)
            if (step > 0 and step % args.sample_interval == 0) or last_step:
                raw_model.eval()
                print_samples(raw_model, enc, rank, autocast_dtype)

            # one optimisation step: grad_accum_steps micro-batches, one optimizer update
            model.train()
            optimizer.zero_grad(set_to_none=True)
            loss_accum = torch.zeros((), device=device)
            for micro_step in range(grad_accum_steps):
                x, y = train_loader.next_batch()
                # DDP all-reduces gradients on every backward; only the last micro-step's is needed
                sync = world_size == 1 or micro_step == grad_accum_steps - 1
                with nullcontext() if sync else model.no_sync():
                    with autocast_ctx:
                        _, loss = model(x, y)
                    # the gradients of the micro-steps add up: scale each loss so they add up to the mean
                    loss = loss / grad_accum_steps
                    loss_accum += loss.detach()
                    loss.backward()
            all_reduce_mean(loss_accum, world_size)
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            lr = lr_at(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            before = None  # from here on the weights and AdamW's state are no longer the state before the step
            optimizer.step()
            synchronize(device)  # wait for the GPU before reading the clock
            dt = time.time() - t0
            loss_value, norm_value = loss_accum.item(), norm.item()
            # a non-finite gradient norm means this update wrote NaNs into the weights, even with a finite loss
            check_finite("loss", loss_value, step, args.log_dir)
            check_finite("gradient norm", norm_value, step, args.log_dir)
            # before the step's line: a Ctrl-C right after that line (between it and this, it quit at once as if
            # no step had ended, as a CI run caught) must stop after the step with a checkpoint
            preemption.step_ended = True
            tokens_per_sec = B * T * grad_accum_steps * world_size / dt
            print0(format_step(step, loss_value, lr, norm_value, dt * 1000, tokens_per_sec), flush=True)
            if master:
                log.write(step, "train", loss_value)

            # a checkpoint at the end of this step if it is time, or if a signal or --stop-after ends this job
            signum = preemption.agreed(device, world_size)
            stopping = signum or (args.stop_after is not None and step + 1 - start_step >= args.stop_after)
            if master and ((step + 1) % args.checkpoint_interval == 0 or last_step or stopping):
                path = checkpoint_path(args.log_dir, step + 1)
                save_checkpoint(path, raw_model, optimizer, step + 1, train_loader.state_dict(), args)
                prune_checkpoints(args.log_dir, step + 1, args.keep_checkpoints)
                print0(f"saved {path}")
            if stopping and not last_step:
                why = f"{signal.Signals(signum).name} received" if signum else f"--stop-after {args.stop_after}"
                print0(f"stopped after step {step} ({why}) with a checkpoint; continue with --resume auto")
                break
    except Exception as e:
        # a failed step loses nothing since the last checkpoint: save the state before it (rank 0's, which
        # every rank shares), unless the run diverged (that state is already bad: the nan shows in it)
        if before is not None and not isinstance(e, Diverged):
            save_before_failure(before, raw_model, optimizer, args, print0)
        raise

    if world_size > 1:
        # leave together: a rank that tears down while rank 0 still writes its checkpoint can lose the
        # rendezvous store under it and abort at exit (seen with two nodes on loopback)
        dist.barrier()
        dist.destroy_process_group()
    return signum


def main(argv=None):
    args = parse_args(argv)
    preemption = Preemption()  # from the start: SIGTERM during setup stops the run after its first step
    lock = LogDirLock(args.log_dir)
    world_size = 1
    try:
        _, _, world_size = process_env()
        if world_size > 1:
            whole_lines()
        check_args(args, world_size)
        if train(args, preemption, lock) == signal.SIGINT:
            die_of_sigint()  # after its checkpoint
    except KeyboardInterrupt:  # a Ctrl-C before the first step ended, or a second one
        fail(f"interrupted; --resume auto continues from the newest complete checkpoint in {args.log_dir}/, "
             "if there is one", sigint=True)
    except (ValueError, TokenizerUnavailable, OSError) as e:
        # DataError, ConfigError, CheckpointError, the models' own checks; OSError: the environment (a log
        # folder this user may not write, a full disk while writing log.txt)
        fail(f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else e)
    except Exception as e:
        if world_size > 1 and is_lost_peer(e):
            # this rank waited in a collective for one that stopped: that one's own error line says why
            fail("another process of this run stopped (its error line says why)", rank0_only=True)
        if is_out_of_memory(e):
            fail(f"out of memory ({first_line(e)}); a smaller --batch-size needs less, and gradient "
                 "accumulation keeps --total-batch-size (README: Other GPU counts, 40 GB cards)")
        if not is_compile_failure(e):
            raise
        spaced = spaced_compile_paths()
        fail(f"torch.compile failed on this machine ({first_line(e)}); run with --no-compile "
             + (f"(inductor cannot build its kernels where a folder it hands the C++ compiler holds a space: "
                f"{spaced[0]})" if spaced else "(on a CPU, compiling needs a C++ compiler and Python's headers)"))
    finally:
        lock.release()
        preemption.restore()


def whole_lines():
    """One write() per printed line on stdout and stderr.

    Every rank, and torchrun itself, writes to the same terminal or pipe; when Python runs unbuffered
    (PYTHONUNBUFFERED=1 or -u, common so that logs appear at once) print() writes a line's end
    separately, and another process's line could land in the middle of this one (it broke a DDP test).
    """
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # a notebook's streams have no such method
            stream.reconfigure(line_buffering=True, write_through=False)


def fail(message, sigint=False, rank0_only=False):
    """The error line, from rank 0. Most errors are every rank's (the same flags, files and shapes), and a line
    from each of 8 ranks would bury the first; but one rank can fail alone (its GPU out of memory, its
    node's copy of a shard), and rank 0 then knows nothing of it. So another rank waits a moment and speaks
    only if it is still running: torchrun stops every rank as soon as rank 0 exits with an error."""
    rank = speaking_rank()
    if rank == 0:
        print(f"error: {message}", file=sys.stderr)
    elif sigint or rank0_only:  # a Ctrl-C reaches every rank; a lost peer has its own error line
        time.sleep(2)  # torchrun stops every rank as soon as one exits: let rank 0 speak first
    else:
        with suppress(ValueError):  # (not the main thread: no handler can be set, nor was ours)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # torchrun's SIGTERM then ends this rank at once
        time.sleep(5)
        print(f"error: rank {rank}: {message}", file=sys.stderr)
    if dist.is_initialized():
        dist.destroy_process_group()
    if sigint:
        die_of_sigint()
    sys.exit(1)


def speaking_rank():
    """This process's rank, for who prints: 0 also where the environment's ranks are unusable (then this
    process is the one to say so)."""
    try:
        return process_env()[0]
    except ConfigError:
        return 0


def is_lost_peer(e):
    """A gloo collective that failed because another process of the run went away (a plain RuntimeError from its
    TCP transport). NCCL raises nothing here: the waiting rank waits until torchrun stops it."""
    return isinstance(e, RuntimeError) and any(
        words in str(e) for words in ("Connection closed by peer", "Connection reset by peer"))


def die_of_sigint():
    """End as Ctrl-C's default would (status 130 in a shell): a shell loop or `&&` chain stops too, which a
    plain exit status would not make it do."""
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


if __name__ == "__main__":
    main()
