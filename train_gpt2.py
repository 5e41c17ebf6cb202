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
every 5,000, all written to log/. `--resume auto` continues a run exactly where its last checkpoint left it.
"""

import argparse
import glob
import math
import os
import platform
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from dataloaderlite import DataError, DataLoaderLite
from gpt2_modules import GPT, MODEL_SIZES, GPTConfig, generate, load_checkpoint
from gpt2_tokenizer import TokenizerUnavailable, get_encoding

# -----------------------------------------------------------------------------
# the learning-rate schedule: linear warmup, then cosine decay to 10% (GPT-3 paper, appendix B)


def get_lr(step, max_lr=6e-4, min_lr=6e-5, warmup_steps=715, max_steps=19073):
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
    return (f"step {step:4d} | loss: {loss:.6f} | lr: {lr:.4e} | norm: {norm:.4f} | "
            f"dt: {dt_ms:.2f} | tok/sec: {tokens_per_sec:.2f}")


LOG_FORMATS = {"train": "{step} train {value:.6f}", "val": "{step} val {value:.4f}", "hella": "{step} hella {value:.4f}"}


class RunLog:
    """log/log.txt in the lecture's plotting format: `{step} {train|val|hella} {value}`, one per line."""

    def __init__(self, path, resume_step=0):
        self.path = path
        # a resumed run rewrites what happened after its checkpoint, so drop those lines first
        kept = []
        if resume_step > 0 and os.path.exists(path):
            with open(path) as f:
                kept = [line for line in f if int(line.split()[0]) < resume_step]
        with open(path, "w") as f:
            f.writelines(kept)

    def write(self, step, kind, value):
        with open(self.path, "a") as f:  # reopen per line: a crash loses nothing already logged
            f.write(LOG_FORMATS[kind].format(step=step, value=value) + "\n")


# -----------------------------------------------------------------------------
# command line


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and logs")
    g.add_argument("--data-root", default="edu_fineweb10B", help="folder of .npy token shards (made by fineweb.py)")
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
    g.add_argument("--vocab-size", type=int, default=50304,
                   help="50304 = 50257 padded to a multiple of 128: 'nice numbers' make the matmuls faster "
                        "(the extra 47 tokens never occur, their logits are driven to -inf)")
    g = p.add_argument_group("optimisation (defaults: the lecture's GPT-3-small recipe)")
    g.add_argument("--batch-size", "-B", type=int, default=64, help="micro-batch size per process")
    g.add_argument("--seq-len", "-T", type=int, default=1024, help="tokens per sequence")
    g.add_argument("--total-batch-size", type=int, default=524288,
                   help="tokens per optimizer step: 2**19 ~ 0.5M, GPT-3 small's batch; reached by gradient accumulation")
    g.add_argument("--max-lr", type=float, default=6e-4, help="peak learning rate (GPT-3 small)")
    g.add_argument("--min-lr", type=float, default=6e-5, help="final learning rate (10%% of the peak)")
    g.add_argument("--warmup-steps", type=int, default=715, help="375M tokens of linear warmup, as GPT-3")
    g.add_argument("--max-steps", type=int, default=19073, help="19,073 x 0.5M tokens = 10B tokens, one epoch")
    g.add_argument("--weight-decay", type=float, default=0.1)
    g.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this")
    g = p.add_argument_group("evaluation, samples and checkpoints")
    g.add_argument("--eval-interval", type=int, default=250, help="validation (and HellaSwag) every N steps and on the last")
    g.add_argument("--val-steps", type=int, default=20, help="micro-batches per validation")
    g.add_argument("--hellaswag", action=argparse.BooleanOptionalAction, default=True,
                   help="evaluate HellaSwag with each validation (offline: set HELLASWAG_FILE)")
    g.add_argument("--hellaswag-file", default=None, help="a local hellaswag_val.jsonl instead of the download")
    g.add_argument("--sample-interval", type=int, default=250, help="print samples every N steps (not at step 0)")
    g.add_argument("--checkpoint-interval", type=int, default=5000, help="checkpoint every N steps and after the last")
    g.add_argument("--resume", default="none", help="none, auto (the newest checkpoint in --log-dir) or a path")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="stop after N steps of this invocation with a checkpoint (the schedule still follows "
                        "--max-steps): split a run into jobs of limited time, continue with --resume auto")
    g = p.add_argument_group("hardware")
    g.add_argument("--device", default="auto", choices=["auto", "cuda", "mps", "cpu"])
    g.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"],
                   help="autocast dtype; auto: bfloat16 on CUDA, float32 elsewhere")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on for CUDA, off elsewhere)")
    g.add_argument("--seed", type=int, default=1337)
    return p.parse_args(argv)


class ConfigError(ValueError):
    pass


def check_args(args, world_size):
    """Fail on a bad combination before any process group or model exists."""
    for name in ("batch_size", "seq_len", "total_batch_size", "max_steps", "warmup_steps", "eval_interval",
                 "val_steps", "sample_interval", "checkpoint_interval", "vocab_size"):
        if getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("n_layer", "n_head", "n_embd", "block_size", "stop_after"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if not (args.max_lr > 0 and 0 <= args.min_lr <= args.max_lr):
        raise ConfigError(f"need 0 <= --min-lr <= --max-lr and --max-lr > 0, got {args.min_lr} and {args.max_lr}")
    span = args.batch_size * args.seq_len * world_size
    if args.total_batch_size % span:
        lo = args.total_batch_size // span * span
        nearest = " or ".join(str(v) for v in (lo, lo + span) if v > 0)
        raise ConfigError(f"--total-batch-size {args.total_batch_size} is not divisible by B*T*processes = "
                          f"{args.batch_size}*{args.seq_len}*{world_size} = {span}; nearest valid: {nearest}")


# -----------------------------------------------------------------------------
# processes and devices


def setup_distributed(device_arg):
    """(rank, local_rank, world_size, device) for this process; joins the process group under torchrun."""
    rank, local_rank, world_size = (int(os.environ.get(k, d)) for k, d in
                                    (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    if device_arg == "auto":
        device_arg = "cuda" if torch.cuda.is_available() else \
            "mps" if torch.backends.mps.is_available() else "cpu"
    if device_arg == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU (use --device cpu or auto)")
    if device_arg == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps was asked for but this torch has no MPS backend")
    device = f"cuda:{local_rank}" if device_arg == "cuda" else device_arg
    if device_arg == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1:
        dist.init_process_group(backend="nccl" if device_arg == "cuda" else "gloo")
    return rank, local_rank, world_size, device


def all_reduce_mean(t, world_size):
    # gloo has no ReduceOp.AVG in many torch versions: sum, then divide (exact for NCCL too)
    if world_size > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= world_size
    return t


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


# -----------------------------------------------------------------------------
# building the model


def build_model(args, print0):
    """GPT from scratch (--model + overrides) or from pretrained weights (--init-from)."""
    overrides = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "block_size") if getattr(args, k)}
    if args.init_from == "scratch":
        return GPT(GPTConfig.named(args.model, vocab_size=args.vocab_size, **overrides))
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


def print_samples(model, enc, rank, autocast_dtype, num=4, length=32, prompt="Hello, I'm a language model,"):
    rows = generate(model, enc.encode(prompt), length, num, seed=42 + rank, autocast_dtype=autocast_dtype)
    for i, row in enumerate(rows):
        # a model with a padded vocab can (rarely, early on) sample an id the tokenizer lacks
        print(f"rank {rank} sample{i}: {enc.decode([t for t in row if t < enc.n_vocab])}", flush=True)


# -----------------------------------------------------------------------------
# checkpoints: every stateful piece's state_dict, written atomically


def rng_state():
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
            "numpy_pos": int(np.random.get_state()[2]),
            "python": list(random.getstate()[1]), "python_version": random.getstate()[0]}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    if torch.cuda.is_available() and s["cuda"]:
        torch.cuda.set_rng_state_all(s["cuda"])
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], 0, 0.0))
    random.setstate((s["python_version"], tuple(s["python"]), None))


def checkpoint_path(log_dir, step):
    return os.path.join(log_dir, f"model_{step:05d}.pt")


def save_checkpoint(path, model, optimizer, step, loader_state, args):
    ckpt = {
        "model": model.state_dict(),  # the raw module's: no _orig_mod. or module. prefixes
        "config": asdict(model.config),
        "optimizer": optimizer.state_dict(),
        "step": step,  # optimizer steps completed; the resumed run starts at this step
        "loader": loader_state,  # the same on every rank: rank r adds its own offset
        "rng": rng_state(),
        "args": vars(args),
    }
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint, never half a file


def find_resume_checkpoint(resume, log_dir):
    if resume == "none":
        return None
    if resume == "auto":
        # newest = most steps: by length first, since model_100000.pt sorts before model_99999.pt by name
        found = sorted(glob.glob(os.path.join(log_dir, "model_*.pt")), key=lambda p: (len(p), p))
        return found[-1] if found else None
    if not os.path.isfile(resume):
        raise ConfigError(f"--resume {resume}: no such checkpoint file")
    return resume


# -----------------------------------------------------------------------------
# the training run


def train(args):
    rank, local_rank, world_size, device = setup_distributed(args.device)
    master = rank == 0
    print0 = print if master else (lambda *a, **k: None)
    device_type = device.split(":")[0]
    use_compile = device_type == "cuda" if args.compile is None else args.compile
    dtype = ("bfloat16" if device_type == "cuda" else "float32") if args.dtype == "auto" else args.dtype
    autocast_dtype = torch.bfloat16 if dtype == "bfloat16" else None
    autocast_ctx = torch.autocast(device_type=device_type, dtype=torch.bfloat16) if autocast_dtype else nullcontext()
    print0(f"using device: {device} x {world_size} process(es) | dtype {dtype} | compile {use_compile} | "
           f"torch {torch.__version__} | python {platform.python_version()} | {platform.node()}")
    print0("config: " + " ".join(f"{k}={v}" for k, v in vars(args).items()))

    torch.manual_seed(args.seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed(args.seed)
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 matmuls for what autocast leaves in fp32

    B, T = args.batch_size, args.seq_len
    grad_accum_steps = args.total_batch_size // (B * T * world_size)
    print0(f"total desired batch size: {args.total_batch_size}")
    print0(f"=> calculated gradient accumulation steps: {grad_accum_steps}")

    train_loader = DataLoaderLite(B, T, rank, world_size, "train", data_root=args.data_root, device=device,
                                  verbose=master)
    val_loader = DataLoaderLite(B, T, rank, world_size, "val", data_root=args.data_root, device=device,
                                verbose=master)
    hellaswag_path = None
    if args.hellaswag:
        import hellaswag
        hellaswag_path = hellaswag.data_file("val", args.hellaswag_file)

    model = build_model(args, print0)
    if T > model.config.block_size:
        raise ConfigError(f"--seq-len {T} exceeds the model's block size {model.config.block_size}")
    model.to(device)
    optimizer = model.configure_optimizers(weight_decay=args.weight_decay, learning_rate=args.max_lr,
                                           device_type=device_type, verbose=master)

    start_step = 0
    resume_path = find_resume_checkpoint(args.resume, args.log_dir)
    if resume_path:
        ckpt = load_checkpoint(resume_path, map_location=device)
        if ckpt["config"] != asdict(model.config):
            raise ConfigError(f"{resume_path} holds a model of another shape ({ckpt['config']}) "
                              f"than this run builds ({asdict(model.config)})")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        train_loader.load_state_dict(ckpt["loader"])
        set_rng_state(ckpt["rng"])
        start_step = ckpt["step"]
        print0(f"resumed from {resume_path} at step {start_step}")
    elif args.resume == "auto":
        print0(f"no checkpoint in {args.log_dir}/ yet: starting from step 0")

    raw_model = model
    if use_compile:
        model = torch.compile(model)
    if world_size > 1:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    enc = get_encoding()

    os.makedirs(args.log_dir, exist_ok=True)
    log = RunLog(os.path.join(args.log_dir, "log.txt"), start_step) if master else None
    lr_at = lambda s: get_lr(s, args.max_lr, args.min_lr, args.warmup_steps, args.max_steps)

    for step in range(start_step, args.max_steps):
        t0 = time.time()
        last_step = step == args.max_steps - 1

        # once in a while: validation loss, HellaSwag, samples (the lecture's order)
        if step % args.eval_interval == 0 or last_step:
            model.eval()
            val_loss = evaluate_val(model, val_loader, args.val_steps, device, autocast_ctx, world_size)
            print0(f"Validation loss {val_loss:.4f}")
            if master:
                log.write(step, "val", val_loss)
            if hellaswag_path:
                # the uncompiled module: HellaSwag's shapes vary by example, which would recompile
                correct, total = evaluate_hellaswag(raw_model, hellaswag_path, device, autocast_dtype,
                                                    rank, world_size)
                print0(f"HellaSwag accuracy: {correct}/{total}={correct / total:.4f}")
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
        optimizer.step()
        synchronize(device)  # wait for the GPU before reading the clock
        dt = time.time() - t0
        loss_value = loss_accum.item()
        if not math.isfinite(loss_value):
            raise ConfigError(f"the loss became {loss_value} at step {step}; stopping without a checkpoint "
                              f"(the last good one is the newest in {args.log_dir}/; try a lower --max-lr)")
        tokens_per_sec = B * T * grad_accum_steps * world_size / dt
        print0(format_step(step, loss_value, lr, norm.item(), dt * 1000, tokens_per_sec), flush=True)
        if master:
            log.write(step, "train", loss_value)

        stopping = args.stop_after is not None and step + 1 - start_step >= args.stop_after
        if master and ((step + 1) % args.checkpoint_interval == 0 or last_step or stopping):
            path = checkpoint_path(args.log_dir, step + 1)
            save_checkpoint(path, raw_model, optimizer, step + 1, train_loader.state_dict(), args)
            print0(f"saved {path}")
        if stopping and not last_step:
            print0(f"stopped after {args.stop_after} steps as asked (--stop-after); continue with --resume auto")
            break

    if world_size > 1:
        dist.destroy_process_group()


def main(argv=None):
    args = parse_args(argv)
    try:
        check_args(args, int(os.environ.get("WORLD_SIZE", 1)))
        train(args)
    except (ValueError, TokenizerUnavailable) as e:  # DataError, ConfigError and the models' own checks
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr)
        if dist.is_initialized():
            dist.destroy_process_group()
        sys.exit(1)


if __name__ == "__main__":
    main()
