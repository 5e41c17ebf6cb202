"""
Training-step throughput and MFU: the lecture's settings against candidate speed-ups, side by side in one run.

    python bench.py --list                                       # the presets: what each changes, its prediction
    python bench.py --total-batch-size 262144 --time-budget 540  # one GPU: gpt2 124M, B=64, T=1024, the CUDA list
    python bench.py --device cpu --n-layer 4 --n-head 4 --n-embd 256 -B 8 -T 256 --rounds 2 \\
        --configs baseline,fp32,compile,cpu-best                 # this repo's quiet CPU measurement
    python bench.py --configs baseline,best --profile trace.json # + chrome traces of 3 steps and a table of
                                                                 # the ops that took the most time (trace.*.txt)

A step is what train_gpt2.py does per optimizer step: grad_accum micro-batches of B x T random tokens
(forward, backward; random tokens time the same as text, and need neither the tokenizer nor the
shards), then gradient clipping at 1.0, the lr schedule and an AdamW step. Reported per configuration:
tokens/s from the median of the timed steps after the warm-up (the first of which compiles; --steps, 10 by
default, fewer where --max-seconds or the time limit cuts the timing short), with the
device synchronised around the timing (CUDA events per step, so the GPU bubbles that host syncs cause
are counted); MFU = FLOPs per token x tokens/s / the card's peak; peak memory; the time to the first
step (compilation included); and the ratio to `baseline`, the lecture's settings measured in the same run.

FLOPs per token = 6N + 12*L*H*Q*T (PaLM appendix B, as nanoGPT's estimate_mfu): N = non-embedding
parameters (the position embedding left out; the token embedding counts, being the lm_head matmul),
L layers, H heads, Q head size, T sequence length; 6N is the forward and backward of the matmuls with
weights, 12LHQT those of attention.

Each configuration runs in its own Python process: a failure (out of memory, a compile error, a crash)
is reported and the run goes on; --timeout kills one that hangs (max-autotune can compile for many
minutes) and --time-budget skips what no longer fits. One JSON line per configuration is appended
to --results as soon as it finishes, so a run cut short keeps what it measured.

Measured so far (benchmarks/results.jsonl), n_layer 4, n_head 4, n_embd 256, B=8, T=256 on the 2-core
AMD EPYC (Zen 4, AVX-512 BF16, no AMX) this repo is developed on, a machine shared with other work:
the lecture's settings (bf16 autocast, eager) ~1,500 tok/s; on a quiet machine (medians) --compile
1.37x and float32 0.79x. Three runs on a loaded machine (3 rounds, --cold-compile) spread widely:
--compile 1.24x, 1.55x and 1.32x, the chunked loss alone 0.84x and 0.89x (it halves the memory), fused
AdamW 1.17x and 1.15x, all three together 1.32x, 0.66x and 1.33x; one thread instead of two 0.64x in
one run and 2.12x in another, where other processes held the cores. On one H100 (torch 2.11, gpt2
124M, B=64, T=1024, 262,144 tokens a step): the lecture's settings 476,500 tok/s = 41.2% MFU, 44.3 GB,
34 s to the first step; SDPA already picks cuDNN there (cudnn = 1.000x); chunked-ce 0.963x at 27.4 GB;
best 0.972x; best-b128 0.994x at 49.8 GB.
"""

import argparse
import collections
import datetime
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, replace

import torch

from fineweb import Terminated, sigterm_as_interrupt
from gpt2_modules import GPT, MODEL_SIZES, PADDED_VOCAB_SIZE, GPTConfig, HelpFormatter, first_line
from train_gpt2 import BATCH_SIZE, SEQ_LEN, get_lr  # get_lr: the schedule, recomputed per step as in training

ROOT = os.path.dirname(os.path.abspath(__file__))
MIN_CONFIG_S = 20  # starting a worker (Python, torch, the model) and its first step: --time-budget skips below this
KILL_MARGIN_S = 5  # the worker stops timing this long before it would be killed, to report the steps it timed

# -----------------------------------------------------------------------------
# what one configuration sets


@dataclass(frozen=True)
class Settings:
    dtype: str = "bfloat16"  # autocast dtype; float32 = no autocast
    compile: str | None = "default"  # torch.compile mode (default, reduce-overhead, max-autotune...); None = eager
    sdpa: str | None = None  # force one SDPA backend (flash, cudnn, efficient, math); None = SDPA's own pick
    loss: str = "lecture"  # lecture: F.cross_entropy on the full logits; chunked: see ChunkedLinearCrossEntropy
    ce_chunk_rows: int | None = None  # rows of logits per chunk for loss=chunked; None: 8192 on CUDA, 256 on CPU
    adamw: str = "fused"  # fused, foreach or for-loop (torch.optim.AdamW's implementations)
    host_sync: bool = True  # synchronize and .item() the loss and grad norm every step, as the lecture's print does
    pinned: bool = False  # inputs from pinned memory, copied with non_blocking=True
    threads: int | None = None  # torch.set_num_threads; None = torch's default (one per core)
    batch_size: int | None = None  # micro-batch B instead of -B (tokens per step kept, in whole micro-batches)


def lecture_settings(device_type):
    """What the lecture's train_gpt2.py does on this device: bf16 autocast everywhere, TF32 on; on CUDA
    torch.compile and fused AdamW; elsewhere eager and AdamW's default (for-loop) implementation."""
    cuda = device_type == "cuda"
    return Settings(compile="default" if cuda else None, adamw="fused" if cuda else "for-loop")


@dataclass(frozen=True)
class Preset:
    changes: dict  # what differs from the lecture's settings on the device
    prediction: str  # written before the first run of the preset (issue 6 asks for it)


# Predictions were written before any of these presets was run; the measured numbers are in
# benchmarks/results.jsonl. "CPU" means the 2-core AMD EPYC (Zen 4: AVX-512 with bf16 dot products,
# no AMX) this repo is developed on; "CUDA" means one H100 at gpt2 124M, B=64, T=1024.
PRESETS = {
    "baseline": Preset({}, "1.00x by definition: the lecture's settings on this device"),
    # one change each
    "fp32": Preset(dict(dtype="float32"),
                   "CPU: 0.9-1.3x (bf16 dot products but no AMX: bf16 matmuls gain little and autocast adds "
                   "casts of every weight); CUDA: ~0.3x (TF32 instead of bf16 tensor cores)"),
    "compile": Preset(dict(compile="default"),
                      "CPU: 1.05-1.3x (fuses GELU, LayerNorm, residual adds and the loss's softmax; matmuls "
                      "unchanged); CUDA: = baseline"),
    "eager": Preset(dict(compile=None), "CUDA: 0.55-0.75x (what torch.compile buys on top of flash attention)"),
    "fused-adamw": Preset(dict(adamw="fused"),
                          "CPU: 1.00-1.03x (the optimizer is a few % of a step); CUDA: = baseline"),
    "chunked-ce": Preset(dict(loss="chunked"),
                         "CUDA: 1.02-1.06x and ~10 GB less peak memory at B=64 (the B*T x 50304 logits and "
                         "their gradient never exist whole); CPU: 1.05-1.20x (the 50304-wide loss dominates "
                         "a small model; chunks of it stay in cache)"),
    # written after chunked-ce measured 0.963x with 8192-row chunks on an H100 (17 GB less memory)
    "chunked-ce-32k": Preset(dict(loss="chunked", ce_chunk_rows=32768),
                             "CUDA: 0.97-1.00x (4x fewer chunks: less per-chunk overhead than 8192 rows; a few "
                             "GB more memory than chunked-ce)"),
    "cudnn": Preset(dict(sdpa="cudnn"),
                    "CUDA: 1.02-1.05x if SDPA picks flash by default (cuDNN's fused attention is faster on "
                    "Hopper at head size 64), = baseline if it already picks cuDNN; CPU: fails (no cuDNN)"),
    "flash": Preset(dict(sdpa="flash"), "CUDA: 0.97-1.00x (FlashAttention-2 is SDPA's usual pick; slower than "
                                        "cuDNN on Hopper if that is the default)"),
    "max-autotune-no-cudagraphs": Preset(
        dict(compile="max-autotune-no-cudagraphs"),
        "CUDA: 1.00-1.04x (autotuned Triton matmul templates rarely beat cuBLAS at these shapes); first step "
        "+2-5 min"),
    "max-autotune": Preset(dict(compile="max-autotune"),
                           "CUDA: 1.00-1.05x (autotuning plus CUDA graphs of forward and backward); first step "
                           "+3-6 min: run it last, with a --timeout"),
    "reduce-overhead": Preset(dict(compile="reduce-overhead"),
                              "CUDA: 0.99-1.02x (a B=64 micro-step is ~140 ms of GPU work on an H100: "
                              "launch overhead is already hidden); more memory for the graphs' static buffers"),
    # alone, no-sync still waits for the GPU at every micro-step: a copy from pageable memory without
    # non_blocking synchronises the stream (pinned-no-sync drops both)
    "no-sync": Preset(dict(host_sync=False),
                      "CUDA: 1.00-1.01x (one host sync per 0.5M-token step idles the GPU ~1 ms while the host "
                      "relaunches)"),
    "pinned": Preset(dict(pinned=True),
                     "CUDA: 1.00-1.01x (a pageable copy synchronises the stream every micro-step; 1 MB of "
                     "tokens is nothing to copy, the stall is the cost)"),
    # written after a review pointed out the above: no host sync at all inside the step
    "pinned-no-sync": Preset(dict(pinned=True, host_sync=False),
                             "CUDA: 1.00-1.02x (the host queues the next micro-step's kernels while the GPU runs "
                             "the last; a B=64 micro-step is ~140 ms of GPU work on an H100: little to hide)"),
    "b32": Preset(dict(batch_size=32), "CUDA: 0.97-1.00x (smaller matmuls, same FLOPs per token)"),
    "b96": Preset(dict(batch_size=96), "CUDA: 0.99-1.02x, peak memory ~1.5x"),
    "b128": Preset(dict(batch_size=128),
                   "CUDA: OOM or 0.99-1.02x (the fp32 logits alone are 26 GB at B=128)"),
    "threads1": Preset(dict(threads=1), "CPU: 0.55-0.7x (one of two cores)"),
    # combinations
    "fp32-compile": Preset(dict(dtype="float32", compile="default"),
                           "CPU: 1.1-1.5x (= train_gpt2.py --dtype float32 --compile)"),
    "best": Preset(dict(sdpa="cudnn", loss="chunked", host_sync=False, pinned=True),
                   "CUDA: 1.04-1.12x, ~10 GB less memory"),
    "best-b128": Preset(dict(sdpa="cudnn", loss="chunked", host_sync=False, pinned=True, batch_size=128),
                        "CUDA: 1.04-1.13x if it fits (the chunked loss frees the 26 GB of logits)"),
    "fp32-best": Preset(dict(dtype="float32", compile="default", loss="chunked", adamw="fused"),
                        "CPU: 1.3-2.0x"),
    # written after exploratory runs on a loaded machine (not recorded) put fp32-best below bf16 + compile
    "cpu-best": Preset(dict(compile="default", loss="chunked", adamw="fused"), "CPU: 1.3-1.8x"),
    # written after a run in which another process held one of the two cores and threads1 measured 2.1x
    "cpu-best-1thread": Preset(dict(compile="default", loss="chunked", adamw="fused", threads=1),
                               "CPU: 2.0-3.0x while another process holds a core; 0.6-0.8x of cpu-best on a "
                               "quiet machine"),
}

DEFAULT_CONFIGS = {
    # in priority order: with --time-budget, what does not fit at the end is skipped
    # what the first H100 run (baseline, cudnn, chunked-ce, best, best-b128) left unmeasured
    "cuda": ["baseline", "pinned", "pinned-no-sync", "flash", "chunked-ce-32k", "reduce-overhead", "b128",
             "max-autotune-no-cudagraphs", "max-autotune"],
    "cpu": ["baseline", "fp32", "compile", "fp32-compile", "chunked-ce", "fused-adamw", "threads1", "cpu-best",
            "cpu-best-1thread"],
}
# the model on a CPU when no size is asked for: the shape of README's CPU figures. GPT-2 small at the GPU
# default (B=64, T=1024): its bf16 worker held 21 GB on this repo's 2-core CPU when it was stopped (2026-12-02)
CPU_SHAPE = dict(n_layer=4, n_head=4, n_embd=256, batch_size=8, seq_len=256)
# the lecture's: what every size flag not given defaults to, on a CPU too once any of them is given
DEFAULT_SHAPE = dict(model="gpt2", batch_size=BATCH_SIZE, seq_len=SEQ_LEN)
SIZE_FLAGS = ("model", "n_layer", "n_head", "n_embd", "batch_size", "seq_len")

# dense bf16 tensor-core peak per GPU (NVIDIA data sheets; H100 SXM = "NVIDIA H100 80GB HBM3"); the first name
# found as a whole word wins (not "A100" in "RTX A1000"); None: a variant whose peak we have not checked (pass
# --peak-tflops), rather than its SXM sibling's, which would understate its MFU
PEAK_BF16_TFLOPS = (("H100 PCIe", 756), ("H100 NVL", 835), ("H100", 989), ("H200 NVL", None), ("H200", 989),
                    ("GH200", 989), ("A100", 312))

# what "peak mem" measures on each device: the JSON line's peak_mem_kind and the table's legend
PEAK_MEMORY_KIND = {"cuda": "torch.cuda.max_memory_allocated", "cpu": "peak RSS of the process"}


def peak_tflops(device_name):
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS
                 if re.search(rf"(?<!\w){re.escape(key)}(?!\w)", device_name)), None)


def flops_per_token(model, seq_len):
    """6N + 12*L*H*Q*T with N the non-embedding parameters (see the module docstring)."""
    c = model.config
    return 6 * model.num_params(non_embedding=True) + 12 * c.n_layer * c.n_head * (c.n_embd // c.n_head) * seq_len


# -----------------------------------------------------------------------------
# the loss without whole logits


def cross_entropy_chunk(h, w, targets, scale):
    """Summed loss and the gradients of h and w for one chunk of rows; the dtypes of the lecture's autocast:
    a bf16 lm_head matmul, an fp32 log-softmax (F.cross_entropy runs in fp32 under autocast)."""
    logits = (h @ w.t()).float()
    lse = torch.logsumexp(logits, dim=1)
    loss = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    g = torch.exp(logits - lse[:, None])  # softmax
    g = g.scatter_add(1, targets[:, None], torch.full_like(lse[:, None], -1.0))  # minus the one-hot target
    g = (g * scale).to(h.dtype)  # the gradient reaches the bf16 matmul in bf16, as in autocast's backward
    return loss, g @ w, g.t() @ h


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """mean(F.cross_entropy(h @ w.T, targets)) without ever holding the (rows x vocab) logits whole.

    The logits are made ce_chunk_rows rows at a time and turned at once into the chunk's loss and its
    gradients with respect to h and w, then dropped: no extra FLOPs (the backward's two matmuls move into
    forward), and memory of one chunk instead of B*T x 50304 fp32 logits, their bf16 copy and gradient.
    backward only scales the stored gradients. The same math as the lecture's loss; the gradient of w is
    summed over chunks in fp32 (the lecture rounds it to bf16 once, after one big matmul).
    """

    @staticmethod
    def forward(ctx, h, w, targets, chunk_rows, dtype, chunk_fn):
        n = h.size(0)
        hc, wc = h.to(dtype), w.to(dtype)
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(hc)
        grad_w = torch.zeros_like(w, dtype=torch.float32)
        with torch.autocast(h.device.type, enabled=False):
            for i in range(0, n, chunk_rows):
                l, gh, gw = chunk_fn(hc[i:i + chunk_rows], wc, targets[i:i + chunk_rows], 1.0 / n)
                loss += l
                grad_h[i:i + chunk_rows] = gh
                grad_w += gw
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = h.dtype, w.dtype
        return loss / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        return ((grad_h * grad_loss).to(ctx.dtypes[0]), (grad_w * grad_loss).to(ctx.dtypes[1]),
                None, None, None, None)


class ChunkedLossGPT(torch.nn.Module):
    """GPT's forward up to the final LayerNorm (compiled when asked), then the chunked loss against lm_head."""

    def __init__(self, model, chunk_rows, dtype, compile_mode):
        super().__init__()
        self.model = model
        self.chunk_rows, self.dtype = chunk_rows, dtype
        self.trunk = torch.compile(self.hidden, mode=compile_mode) if compile_mode else self.hidden
        # one compiled kernel set for every chunk: rows divide evenly (see pick_chunk_rows), so one shape
        self.chunk_fn = torch.compile(cross_entropy_chunk, dynamic=False) if compile_mode else cross_entropy_chunk

    def hidden(self, idx):
        t = self.model.transformer
        x = t.wte(idx) + t.wpe(torch.arange(idx.size(1), device=idx.device))
        for block in t.h:
            x = block(x)
        return t.ln_f(x)

    def forward(self, idx, targets):
        h = self.trunk(idx)
        loss = ChunkedLinearCrossEntropy.apply(h.view(-1, h.size(-1)), self.model.lm_head.weight, targets.view(-1),
                                               self.chunk_rows, self.dtype, self.chunk_fn)
        return None, loss


def pick_chunk_rows(rows, target):
    """The largest divisor of rows that is <= target, so that every chunk has the same shape."""
    return next(d for d in range(min(rows, target), 0, -1) if rows % d == 0)


# -----------------------------------------------------------------------------
# one configuration, in its own process


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def default_sdpa_backend(model, B, T, device, dtype):
    """The backend SDPA picks by itself for this model's attention shape (CUDA only), for the record."""
    if device.type != "cuda":
        return None
    c = model.config
    q = torch.zeros(B, c.n_head, T, c.n_embd // c.n_head, device=device, dtype=dtype)
    try:
        from torch.nn.attention import SDPBackend
        return SDPBackend(torch._fused_sdp_choice(q, q, q, is_causal=True)).name
    except Exception as e:  # a private API: report, never fail over it
        return f"unknown ({type(e).__name__})"


def sdpa_context(backend):
    if backend is None:
        return nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    names = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([names[backend]])


def make_optimizer(model, impl, lr=6e-4, weight_decay=0.1):
    # the parameter groups and hyperparameters of GPT.configure_optimizers, with the implementation chosen
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    kind = {"fused": dict(fused=True), "foreach": dict(foreach=True), "for-loop": dict(foreach=False)}[impl]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, **kind)


def write_profile(job, train_step, first_step, device, log):
    """A chrome trace of job["profile_steps"] more steps, and beside it the table of the ops that took the most time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for k in range(job["profile_steps"]):
            train_step(first_step + k)
            prof.step()
        synchronize(device)
    with suppress(FileNotFoundError):  # an earlier run's trace must not pass for this one's
        os.remove(job["profile"])
    prof.export_chrome_trace(job["profile"])
    if not os.path.exists(job["profile"]):  # torch logs why on stderr, and returns as if it had written it
        raise OSError(f"the profiler wrote no trace to {job['profile']}")
    log(f"wrote the profiler trace of {job['profile_steps']} steps to {job['profile']}")
    # the trace of a GPU step can be too large to fetch from a lent machine; the table of the ops
    # and kernels that took the most time, each counted once (self time), tells where the step goes
    summary = os.path.splitext(job["profile"])[0] + ".txt"
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with open(summary, "w") as f:
        f.write(prof.key_averages().table(sort_by=sort, row_limit=40) + "\n")
    log(f"wrote the ops that took the most {sort} to {summary}")


def run_config(job, log, measured=lambda result: None):
    """Build, warm up and time one configuration; returns the measurements as a dict. measured(result) gets
    them once timed, before the profile: a profile that hangs or runs past the time limit keeps the timing."""
    s = Settings(**job["settings"])
    device = torch.device(job["device"])
    if s.threads:
        torch.set_num_threads(s.threads)
    torch.set_float32_matmul_precision("high")  # TF32, as the lecture sets on every device
    torch.manual_seed(1337)
    B, T = job["B"], job["T"]
    grad_accum = job["grad_accum"]
    config = GPTConfig.named(job["model"], vocab_size=job["vocab_size"], block_size=max(1024, T),
                             **{k: v for k, v in job["overrides"].items() if v})
    raw_model = GPT(config).to(device)
    dtype = torch.bfloat16 if s.dtype == "bfloat16" else torch.float32
    autocast = torch.autocast(device.type, dtype=dtype) if s.dtype == "bfloat16" else nullcontext()
    chunk_rows = None
    if s.loss == "chunked":
        chunk_rows = pick_chunk_rows(B * T, s.ce_chunk_rows or (8192 if device.type == "cuda" else 256))
        model = ChunkedLossGPT(raw_model, chunk_rows, dtype, s.compile)
    else:
        model = torch.compile(raw_model, mode=s.compile) if s.compile else raw_model
    optimizer = make_optimizer(raw_model, s.adamw)
    cudagraphs = s.compile in ("reduce-overhead", "max-autotune")
    if cudagraphs:
        # with .grad unset, the first micro-step's backward hands its CUDA-graph output buffer to .grad as is,
        # and the next replay overwrites it under the accumulation ("accessing tensor output of CUDAGraphs that
        # has been overwritten", pytorch/pytorch#169545): .grad buffers of our own, zeroed in place, avoid it
        for p in raw_model.parameters():
            p.grad = torch.zeros_like(p)

    # a few distinct batches of random token ids, int64 on the host as DataLoaderLite hands them over
    g = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(4):
        buf = torch.randint(0, min(50257, config.vocab_size), (B * T + 1,), generator=g)
        x, y = buf[:-1].view(B, T).clone(), buf[1:].view(B, T).clone()
        batches.append((x.pin_memory(), y.pin_memory()) if s.pinned and device.type == "cuda" else (x, y))

    micro = 0

    def train_step(step):
        nonlocal micro
        optimizer.zero_grad(set_to_none=not cudagraphs)
        loss_accum = torch.zeros((), device=device)
        for _ in range(grad_accum):
            x, y = batches[micro % len(batches)]
            micro += 1
            x, y = x.to(device, non_blocking=s.pinned), y.to(device, non_blocking=s.pinned)
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()
            with autocast:
                _, loss = model(x, y)
            loss = loss / grad_accum
            loss_accum += loss.detach()
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), 1.0)
        for group in optimizer.param_groups:
            group["lr"] = get_lr(step)
        optimizer.step()
        if s.host_sync:  # the lecture prints every step: a device sync and two .item()s
            synchronize(device)
            loss_accum.item(), norm.item()
        return loss_accum

    result = dict(sdpa_default=default_sdpa_backend(raw_model, B, T, device, dtype), ce_chunk_rows=chunk_rows,
                  non_embedding_params=raw_model.num_params(non_embedding=True),
                  flops_per_token=flops_per_token(raw_model, T))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with sdpa_context(s.sdpa):
        t0 = time.perf_counter()
        result["loss_step0"] = train_step(0).item()
        synchronize(device)
        result["first_step_s"] = time.perf_counter() - t0
        log(f"first step (compilation included) {result['first_step_s']:.1f} s, loss {result['loss_step0']:.4f}")
        for i in range(1, job["warmup"]):
            train_step(i)
        synchronize(device)

        # timed steps: CUDA events between steps (no sync needed to place them), wall clock on CPU
        times, loss = [], None
        events = [torch.cuda.Event(enable_timing=True) for _ in range(job["steps"] + 1)] if device.type == "cuda" else None
        start = time.perf_counter()
        if events:
            events[0].record()
        last = start
        for i in range(job["steps"]):
            loss = train_step(job["warmup"] + i)
            if events:
                events[i + 1].record()
            else:
                now = time.perf_counter()
                times.append(now - last)
                last = now
            if (i + 1) % 5 == 0 or i + 1 == job["steps"]:
                log(f"timed step {i + 1}/{job['steps']}")
            if time.perf_counter() - start > job["max_seconds"] and i + 1 < job["steps"]:
                log(f"stopping after {i + 1} timed steps: --max-seconds {job['max_seconds']} reached")
                break
            if time.time() > job["stop_at"] and i + 1 < job["steps"]:  # else the kill would lose every step
                log(f"stopping after {i + 1} timed steps: the time limit ({job['limit']}) is near")
                break
        synchronize(device)
        window = time.perf_counter() - start
        if events:
            times = [events[k].elapsed_time(events[k + 1]) / 1000 for k in range(i + 1)]
        result["loss_last"] = loss.item()
        tokens = B * T * grad_accum
        result.update(step_s=times, steps_timed=len(times), step_s_median=statistics.median(times),
                      tok_per_s=tokens / statistics.median(times), tok_per_s_window=tokens * len(times) / window,
                      peak_mem_gb=(torch.cuda.max_memory_allocated() if device.type == "cuda" else
                                   resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 1e9,
                      peak_mem_kind=PEAK_MEMORY_KIND[device.type],
                      threads=torch.get_num_threads())

        if job.get("profile"):
            measured(dict(result, profile_error="the profile did not finish (killed at the time limit)"))
            try:
                write_profile(job, train_step, job["warmup"] + len(times), device, log)
            except Exception as e:  # the timing above stands: a profiler that fails here must not lose it
                result["profile_error"] = f"{type(e).__name__}: {first_line(e)}"
                log(f"the profile failed ({result['profile_error']}); the timing is kept")
    return result


def exit_with_parent():
    """The worker has a session of its own, so that a timeout kills its compile workers with it; but then nothing
    stops it when bench.py itself is killed (SIGKILL, the OOM killer, a test's timeout: two workers once went on
    profiling for half an hour). So it watches its parent, and takes its process group down when that is gone."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def worker_main(job_json):
    exit_with_parent()
    job = json.loads(job_json)
    log = lambda msg: print(f"  [{job['name']}] {msg}", flush=True)
    device = torch.device(job["device"])
    out = dict(device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
               torch=torch.__version__, cuda=torch.version.cuda)

    def write(result):
        with open(job["result_path"], "w") as f:
            json.dump(result, f)

    try:
        out.update(run_config(job, log, measured=lambda result: write(dict(out, **result, status="ok"))),
                   status="ok")
    except torch.cuda.OutOfMemoryError as e:
        out.update(status="OOM", error=first_line(e))
    except Exception as e:  # any failure of one configuration is reported, and the run goes on
        out.update(status="error", error=f"{type(e).__name__}: {first_line(e)}"[:500])
    if out["status"] != "ok":
        log(f"{out['status']}: {out['error']}")
    write(out)


# -----------------------------------------------------------------------------
# the run: each configuration in a fresh process, then the table


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def run_in_process(job, timeout, limit="--timeout"):
    """Run one configuration in a child process; kill its whole process group (compile workers) on timeout.
    limit: what set the timeout, for the message."""
    env = dict(os.environ)
    tmp = None
    if job["cold_compile"]:  # no inductor/triton cache from earlier configurations: honest first-step times
        tmp = tempfile.mkdtemp(prefix="bench_inductor_")
        env.update(TORCHINDUCTOR_CACHE_DIR=tmp, TRITON_CACHE_DIR=os.path.join(tmp, "triton"))
    # a Ctrl-C (or SIGTERM) inside Popen, after the fork, would leave a worker that nothing kills: hold the
    # signal until proc is known, then deliver it where the finally below kills the worker
    held = []
    previous = {s: signal.signal(s, lambda signum, _: held.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        proc = subprocess.Popen([sys.executable, "-u", os.path.abspath(__file__), "--_worker", json.dumps(job)],
                                cwd=ROOT, env=env, start_new_session=True)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    try:
        if held:
            signal.raise_signal(held[0])
        rc = proc.wait(timeout=timeout)
        no_result = dict(status="crashed", error=f"the worker exited with code {rc} without a result")
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        no_result = dict(status="timeout", error=f"killed after {round(timeout, 1):g} s ({limit})")
    finally:  # this run interrupted or terminated: the worker, in its own session, must not outlive it
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()  # reaped, not left a zombie (Python 3.13 warns of one: "subprocess ... is still running")
    try:  # also after a timeout: one killed while profiling wrote its timing before the profile
        with open(job["result_path"]) as f:
            return json.load(f)
    except (OSError, ValueError):
        return no_result


def machine_info(device_name):
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        ram = None
    return dict(device=device_name, cpu=cpu_name(), cpu_count=os.cpu_count(),
                ram_gb=round(ram, 1) if ram else None, platform=platform.platform())


def format_table(rows, seq_len):
    head = ("config", "B", "T", "tok/s", "MFU", "vs baseline", "peak mem GB", "first step s", "status")
    lines = [head]
    for r in rows:
        ok = r["status"] == "ok"
        lines.append((r["config"], str(r["B"]), str(seq_len),
                      f"{r['tok_per_s']:,.0f}" if ok else "-",
                      f"{100 * r['mfu']:.1f}%" if ok and r.get("mfu") is not None else "n/a",
                      f"{r['ratio_vs_baseline']:.3f}x" if ok and r.get("ratio_vs_baseline") else "-",
                      f"{r['peak_mem_gb']:.2f}" if ok else "-",
                      f"{r['first_step_s']:.2f}" if ok else "-",
                      r["status"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    fmt = lambda line: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
    return "\n".join([fmt(lines[0]), "  ".join("-" * w for w in widths)] + [fmt(line) for line in lines[1:]])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)  # shows the defaults
    p.add_argument("--configs", default=None,
                   help="comma-separated presets (see --list); baseline is added first if missing. "
                        f"Default on CUDA: {','.join(DEFAULT_CONFIGS['cuda'])}; elsewhere: {','.join(DEFAULT_CONFIGS['cpu'])}")
    p.add_argument("--list", action="store_true", help="print the presets and their predictions, and exit")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"],
                   help="auto: CUDA if torch sees a GPU, else the CPU")
    p.add_argument("--model", default=None, choices=list(MODEL_SIZES),
                   help="default gpt2; a CPU given none of the size flags measures n_layer 4, n_head 4, n_embd 256, "
                        "B=8, T=256 instead")
    p.add_argument("--n-layer", type=int, default=None, help="override the blocks of --model")
    p.add_argument("--n-head", type=int, default=None, help="override the attention heads of --model")
    p.add_argument("--n-embd", type=int, default=None, help="override the width of --model")
    p.add_argument("--vocab-size", type=int, default=PADDED_VOCAB_SIZE,
                   help="GPT-2's 50257 padded to a multiple of 128, as train_gpt2.py")
    p.add_argument("--batch-size", "-B", type=int, default=None,
                   help="micro-batch size (a preset may change it); default 64, on a CPU see --model")
    p.add_argument("--seq-len", "-T", type=int, default=None, help="default 1024, on a CPU see --model")
    p.add_argument("--total-batch-size", type=int, default=None,
                   help="tokens per optimizer step, reached by gradient accumulation (rounded to whole "
                        "micro-batches); default: one micro-batch. Training uses 524288")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (median of these)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first, the first of which compiles")
    p.add_argument("--rounds", type=int, default=1,
                   help="run the whole list this many times, interleaved, and pool the step times (for a "
                        "machine shared with other work: drifting load then hits every configuration alike)")
    p.add_argument("--estimator", default="median", choices=["median", "best-round", "fastest"],
                   help="tok/s from the median of all timed steps of all rounds (default), the best round's "
                        "median, or the fastest step (timeit's rule, for a machine shared with bursts of other "
                        "work: interference only ever adds time); the JSON line has all three")
    p.add_argument("--max-seconds", type=float, default=120,
                   help="stop timing a configuration after this many seconds (fewer steps are then reported)")
    p.add_argument("--timeout", type=float, default=300,
                   help="kill a configuration that runs longer than this many seconds, compilation included")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds for the whole run: later configurations get what is left, or are skipped "
                        f"when less than {MIN_CONFIG_S} s is left")
    p.add_argument("--cold-compile", action="store_true",
                   help="a fresh inductor cache per configuration (honest first-step times, slower)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="the device's dense bf16 peak in TFLOPS, for MFU, if PEAK_BF16_TFLOPS lacks it")
    p.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results.jsonl"),
                   help="append one JSON line per configuration here; default: benchmarks/results.jsonl, the "
                        "repo's tracked record of measurements (name another file for a trial run)")
    p.add_argument("--profile", default=None,
                   help="write a chrome trace of a few steps here (with several configs: NAME.<config>.json), "
                        "and beside it (.txt) the table of the ops that took the most time")
    p.add_argument("--profile-steps", type=int, default=3, help="steps in each profile, after the timed ones")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args._worker:
        return worker_main(args._worker)
    if args.list:
        for name, preset in PRESETS.items():
            print(f"{name}: {preset.changes or 'the lecture'}\n    prediction: {preset.prediction}")
        return
    device_type = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device_type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda was asked for but torch sees no CUDA GPU (use --device cpu)")
    fill_in_shape(args, device_type)
    names = args.configs.split(",") if args.configs else list(DEFAULT_CONFIGS[device_type])
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        sys.exit(f"error: unknown preset(s) {', '.join(unknown)}: expected some of {', '.join(PRESETS)}")
    for name in ("batch_size", "seq_len", "steps", "warmup", "vocab_size", "rounds", "profile_steps", "n_layer",
                 "n_head", "n_embd", "total_batch_size", "peak_tflops", "max_seconds", "timeout", "time_budget"):
        value = getattr(args, name)  # None: not given, the default applies
        if value is not None and not value > 0:  # `not >` rejects nan too
            shown = f"{value:g}" if isinstance(value, float) else value
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {shown}")
    names = list(dict.fromkeys(["baseline"] + names))  # the lecture's settings first, each preset once
    overrides = dict(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd)
    try:
        GPTConfig.named(args.model, vocab_size=args.vocab_size, block_size=max(1024, args.seq_len),
                        **{k: v for k, v in overrides.items() if v})
    except ValueError as e:
        sys.exit(f"error: {e}")
    profile_dir = os.path.dirname(os.path.abspath(args.profile)) if args.profile else None
    if profile_dir and not os.path.isdir(profile_dir):
        sys.exit(f"error: --profile {args.profile}: there is no folder {profile_dir}")
    if args.profile and os.path.isdir(args.profile):  # torch's export would replace an empty folder by the trace
        sys.exit(f"error: --profile {args.profile} is a folder: name the trace file, "
                 f"e.g. {os.path.join(args.profile, 'trace.json')}")
    if profile_dir:  # torch's export only logs a file it cannot open: found out here, not after the measuring
        try:
            with tempfile.TemporaryFile(dir=profile_dir):
                pass
        except OSError as e:
            sys.exit(f"error: --profile {args.profile}: cannot write in {profile_dir} ({e.strerror or e})")
    if args.profile:  # the worker runs in the repo's folder: a relative path is this folder's
        args.profile = os.path.abspath(args.profile)
    check_results_file(args.results)
    gpu_b, gpu_t = DEFAULT_SHAPE["batch_size"], DEFAULT_SHAPE["seq_len"]
    if device_type == "cpu" and (args.batch_size, args.seq_len) == (gpu_b, gpu_t):
        # said before the first worker fills the memory: one size flag leaves -B and -T at the GPU's
        print(f"note: B={gpu_b}, T={gpu_t} is a GPU's micro-batch (-B and -T default to it once any size flag is "
              "given): on this repo's 2-core CPU, GPT-2 small's worker held 21 GB at it; give smaller -B and -T "
              f"(README's CPU figures: B={CPU_SHAPE['batch_size']}, T={CPU_SHAPE['seq_len']})", flush=True)

    sigterm_as_interrupt()  # a plain `kill` as Ctrl-C: the worker killed (run_in_process), what was measured kept
    run_id = datetime.datetime.now().strftime("%Y-%m-%dT%H:%M:%S") + f"-{os.getpid()}"
    print(f"bench.py run {run_id} | device {device_type} | torch {torch.__version__} | python "
          f"{platform.python_version()} | {os.cpu_count()} CPUs | model {args.model} "
          f"{ {k: v for k, v in overrides.items() if v} } vocab {args.vocab_size} | T {args.seq_len} | "
          f"{args.rounds} round(s), tok/s = {args.estimator} | results -> {args.results}", flush=True)
    print("FLOPs per token = 6N + 12*L*H*Q*T, N = non-embedding parameters (all but the position embedding: "
          "the token embedding is also the output layer); MFU against the dense bf16 peak", flush=True)
    base = lecture_settings(device_type)
    step_tokens = args.total_batch_size or args.batch_size * args.seq_len  # an optimizer step's, for every preset
    run_start = time.perf_counter()
    results = {name: [] for name in names}  # one result per round
    rows = []
    interrupted = None  # the KeyboardInterrupt (Ctrl-C) or Terminated (SIGTERM) that cut the run short
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        try:
            for r in range(args.rounds):
                for k, name in enumerate(names):
                    settings = replace(base, **PRESETS[name].changes)
                    B = settings.batch_size or args.batch_size
                    # the baseline's tokens per step for every preset, as near as whole micro-batches of B get
                    grad_accum = max(1, round(step_tokens / (B * args.seq_len)))
                    round_note = f" round {r + 1}/{args.rounds}" if args.rounds > 1 else ""
                    print(f"[{k + 1}/{len(names)}{round_note}] {name}: B={B} T={args.seq_len} grad_accum={grad_accum}"
                          f"{'' if B * args.seq_len * grad_accum == step_tokens else ' (not the baseline tokens/step)'}"
                          f" | {PRESETS[name].changes or 'the lecture'} | prediction: {PRESETS[name].prediction}",
                          flush=True)
                    timeout, limit = args.timeout, "--timeout"
                    left = None if args.time_budget is None else args.time_budget - (time.perf_counter() - run_start)
                    if left is not None and left < MIN_CONFIG_S:
                        why = (f"{max(left, 0):.0f} s left of --time-budget {args.time_budget:g} s, less than the "
                               f"{MIN_CONFIG_S} s a configuration takes at least")
                        print(f"  [{name}] skipped: {why}", flush=True)
                        result = dict(status="skipped", error=why, B=B, grad_accum=grad_accum)
                    else:
                        if left is not None and left < timeout:
                            timeout, limit = left, f"what was left of --time-budget {args.time_budget:g} s"
                        profile = args.profile if r == 0 else None
                        if profile and len(names) > 1:
                            stem, ext = os.path.splitext(profile)
                            profile = f"{stem}.{name}{ext or '.json'}"
                        job = dict(name=name, settings=asdict(settings), device=device_type, model=args.model,
                                   overrides=overrides, vocab_size=args.vocab_size, B=B, T=args.seq_len,
                                   grad_accum=grad_accum, steps=args.steps, warmup=args.warmup,
                                   max_seconds=args.max_seconds, stop_at=time.time() + timeout - KILL_MARGIN_S,
                                   limit=limit, profile=profile, profile_steps=args.profile_steps,
                                   cold_compile=args.cold_compile, result_path=os.path.join(tmp, f"{r}-{k}.json"))
                        load_before = os.getloadavg()[0]
                        result = run_in_process(job, timeout, limit)
                        result.update(B=B, grad_accum=grad_accum, load_avg_1min=[load_before, os.getloadavg()[0]])
                        if result["status"] in ("timeout", "crashed"):  # the worker could not say it itself
                            print(f"  [{name}] {result['status']}: {result['error']}", flush=True)
                    results[name].append(result)
                    if result["status"] == "ok":
                        print(f"  [{name}] {result['tok_per_s']:,.0f} tok/s (median step "
                              f"{1000 * result['step_s_median']:.1f} ms) | first step {result['first_step_s']:.1f} s"
                              f" | peak mem {result['peak_mem_gb']:.2f} GB", flush=True)
                    if r == args.rounds - 1:  # written as soon as it is final: a run cut short keeps what it measured
                        rows.append(record_config(name, results[name], rows, args, device_type, run_id, overrides))
        except KeyboardInterrupt as e:  # Ctrl-C: the worker is killed (run_in_process); keep what was measured
            interrupted = e
            # what finished in earlier rounds only, with the rounds it has (its JSON line's `rounds`)
            recorded = {r["config"] for r in rows}
            for name in names:
                if results[name] and name not in recorded:
                    rows.append(record_config(name, results[name], rows, args, device_type, run_id, overrides))

    what = {"median": "the median of all timed steps", "best-round": "the best round's median step",
            "fastest": "the fastest timed step"}[args.estimator]
    print(f"\ntok/s: {what}; MFU n/a where the peak is unknown (CPU); peak mem: {PEAK_MEMORY_KIND[device_type]}")
    print(format_table(rows, args.seq_len), flush=True)
    statuses = ", ".join(f"{n} {status}" for status, n in collections.Counter(r["status"] for r in rows).items())
    unsaved = [r["config"] for r in rows if not r["appended"]]
    print(f"\n{len(rows)} configuration(s) ({statuses}) x {args.rounds} round(s) in "
          f"{time.perf_counter() - run_start:.0f} s; {len(rows) - len(unsaved)} JSON line(s) appended to "
          f"{args.results}", flush=True)
    if unsaved:
        sys.exit(f"error: the JSON lines of {', '.join(unsaved)} could not be appended to {args.results}; "
                 "they are printed above")
    if interrupted is not None:
        cut = [r["config"] for r in rows if r["rounds"] < args.rounds]
        terminated = isinstance(interrupted, Terminated)
        print(f"error: {'terminated' if terminated else 'interrupted'}; the {len(rows)} configuration(s) in the "
              "table above are all that was measured" + (f" ({', '.join(cut)} in fewer than {args.rounds} rounds)"
                                                         if cut else ""), file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if terminated else signal.SIGINT))  # as the shell counts
    if not any(r["status"] == "ok" for r in rows):  # a run that measured nothing is a failure, not a result
        sys.exit(f"error: no configuration was measured ({statuses}); the reasons are printed above")


def record_config(name, runs, rows, args, device_type, run_id, overrides):
    """Summarise one configuration's rounds, append its JSON line, and return its table row."""
    row = summarise(name, runs, args, device_type)
    row["rounds"] = len(runs)  # fewer than --rounds in a run that was interrupted
    baseline = next((r for r in rows if r["config"] == "baseline" and r["status"] == "ok"), None)
    if name == "baseline" and row["status"] == "ok":
        baseline = row
    row["ratio_vs_baseline"] = row["tok_per_s"] / baseline["tok_per_s"] if row["status"] == "ok" and baseline else None
    if row["status"] == "ok":
        mfu = f"{100 * row['mfu']:.1f}%" if row["mfu"] is not None else "n/a"
        ratio = f"{row['ratio_vs_baseline']:.3f}x" if row["ratio_vs_baseline"] else "n/a"
        print(f"  [{name}] => {row['tok_per_s']:,.0f} tok/s | MFU {mfu} | {ratio} baseline", flush=True)
    settings = replace(lecture_settings(device_type), **PRESETS[name].changes)
    record = dict(benchmark="train_step", run_id=run_id, date=datetime.date.today().isoformat(),
                  machine=machine_info(row.get("device_name", device_type)),
                  torch=row.pop("torch", torch.__version__), cuda=row.pop("cuda", torch.version.cuda),
                  python=platform.python_version(), config=name, prediction=PRESETS[name].prediction,
                  settings=asdict(settings), model=args.model,
                  model_overrides={k: v for k, v in overrides.items() if v}, vocab_size=args.vocab_size,
                  T=args.seq_len, total_batch_size=args.total_batch_size,
                  tokens_per_step=row["B"] * args.seq_len * row["grad_accum"], steps=args.steps, warmup=args.warmup,
                  cold_compile=args.cold_compile,
                  flops_formula="6N + 12*L*H*Q*T, N = non-embedding parameters",
                  **{k: v for k, v in row.items() if k != "config"})
    line = json.dumps(record)
    try:
        with open(args.results, "a") as f:
            f.write(line + "\n")
        row["appended"] = True
    except OSError as e:  # a full disk, a file gone: the measurement must not go with it
        print(f"  [{name}] cannot append to {args.results} ({e.strerror or e}); its JSON line:\n{line}", flush=True)
        row["appended"] = False
    return row


def fill_in_shape(args, device_type):
    """The size flags not given: DEFAULT_SHAPE's, but on a CPU given none of them, CPU_SHAPE."""
    if device_type == "cpu" and all(getattr(args, name) is None for name in SIZE_FLAGS):
        print(f"no size asked for: on a CPU, n_layer {CPU_SHAPE['n_layer']}, n_head {CPU_SHAPE['n_head']}, n_embd "
              f"{CPU_SHAPE['n_embd']}, B={CPU_SHAPE['batch_size']}, T={CPU_SHAPE['seq_len']} (--model gpt2 for GPT-2 "
              f"small at B={DEFAULT_SHAPE['batch_size']}, T={DEFAULT_SHAPE['seq_len']}: over 20 GB of memory)",
              flush=True)
        for name, value in CPU_SHAPE.items():
            setattr(args, name, value)
    for name, value in DEFAULT_SHAPE.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def check_results_file(path):
    """Opens --results for appending before anything is measured: a path that cannot be written fails at once,
    not after the first configuration's minutes of measuring."""
    try:
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.exists(parent):
            os.makedirs(parent)
        with open(path, "a"):
            pass
    except OSError as e:
        sys.exit(f"error: cannot append to --results {path} ({e.strerror or e})")


def summarise(name, runs, args, device_type):
    """One row per configuration: the step times of all its rounds pooled, their median turned into tok/s."""
    ok = [r for r in runs if r["status"] == "ok"]
    row = dict(config=name, B=runs[0]["B"], grad_accum=runs[0]["grad_accum"], status="ok" if ok else runs[0]["status"])
    if not ok:
        return dict(row, error=runs[0].get("error"), **{k: runs[0][k] for k in ("device_name", "torch", "cuda")
                                                         if k in runs[0]})
    first = ok[0]
    steps = [t for r in ok for t in r["step_s"]]
    tokens = first["B"] * args.seq_len * first["grad_accum"]
    row.update({k: first[k] for k in ("device_name", "torch", "cuda", "sdpa_default", "ce_chunk_rows",
                                      "non_embedding_params", "flops_per_token", "first_step_s", "loss_step0",
                                      "loss_last", "peak_mem_kind", "threads")})
    estimates = {"median": tokens / statistics.median(steps), "best-round": max(r["tok_per_s"] for r in ok),
                 "fastest": tokens / min(steps)}
    row.update(step_s_median=statistics.median(steps), tok_per_s_pooled_median=estimates["median"],
               tok_per_s_best_round=estimates["best-round"], tok_per_s_fastest=estimates["fastest"],
               estimator=args.estimator, tok_per_s=estimates[args.estimator],
               tok_per_s_rounds=[r["tok_per_s"] for r in ok], tok_per_s_window_rounds=[r["tok_per_s_window"] for r in ok],
               steps_timed=len(steps), step_s=steps, peak_mem_gb=max(r["peak_mem_gb"] for r in ok),
               load_avg_1min=[r["load_avg_1min"] for r in ok],
               failed_rounds=[r.get("error") for r in runs if r["status"] != "ok"] or None,
               profile_error=next((r["profile_error"] for r in ok if r.get("profile_error")), None))
    peak = args.peak_tflops or (peak_tflops(first["device_name"]) if device_type == "cuda" else None)
    row.update(peak_tflops=peak, mfu=first["flops_per_token"] * row["tok_per_s"] / (peak * 1e12) if peak else None)
    return row


if __name__ == "__main__":
    main()
