"""
HellaSwag evaluation speed: hellaswag.py (logits only at the ending tokens; 1 and several examples
per forward pass) against the lecture's scheme (one example at a time, logits and cross-entropy at
every position), with the same model on the same examples in the same run, and a check that all give
the lecture's predictions. Issue 6's target: >= 5x faster over the 10,042 val examples, same accuracy.

The model is a fresh GPT-2 of the named size (random weights: the timing does not depend on them,
and the predictions of both schemes are compared one by one), or --init-from a trained one.
Times are end to end, as the training loop pays them: tokenizing, batching, forward, loss.

    python benchmarks/hellaswag_bench.py --device cuda --model-size gpt2 --batch-size 16,32,64   # all 10,042
    python benchmarks/hellaswag_bench.py --device cpu --model-size gpt2 --n-layer 2 --limit 500

The file comes from --file, else $HELLASWAG_FILE, else the download cache (see hellaswag.py).
Each batch size adds one JSON line to benchmarks/results.jsonl (--no-record to skip).
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hellaswag  # noqa: E402
from bench import check_results_file  # noqa: E402
from gpt2_modules import (AUTOCAST, GPT, MODEL_SIZES, PADDED_VOCAB_SIZE, GPTConfig, autocast, check_seed,  # noqa: E402
                          default_dtype, resolve_device)
from gpt2_tokenizer import VOCAB_SIZE, TokenizerUnavailable  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results.jsonl")


def machine_name(device):
    cores = os.cpu_count()
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {cores} CPU cores"
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cores}-core {platform.machine()} CPU, {memory:.0f} GB"


def timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", default=None, help="hellaswag_val.jsonl (default: $HELLASWAG_FILE, else the cache)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, cpu, mps")
    parser.add_argument("--model-size", choices=list(MODEL_SIZES), default="gpt2")
    parser.add_argument("--n-layer", type=int, default=None, help="override the size's layer count")
    parser.add_argument("--n-head", type=int, default=None, help="override the size's head count")
    parser.add_argument("--n-embd", type=int, default=None, help="override the size's width")
    parser.add_argument("--vocab-size", type=int, default=PADDED_VOCAB_SIZE,
                        help=f"{PADDED_VOCAB_SIZE}: the training default (padded)")
    parser.add_argument("--init-from", default=None, help="score a real model instead (name, HF folder, .pt)")
    parser.add_argument("--limit", type=int, default=None, help="the first N examples (default: all)")
    parser.add_argument("--batch-size", default="16", help="examples per forward pass; a comma list runs each")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="autocast dtype; auto: as hellaswag.py (gpt2_modules.default_dtype)")
    parser.add_argument("--warmup", type=int, default=32, help="examples run through each scheme before timing")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--machine", default=None, help="the machine's description for the results file")
    parser.add_argument("--note", default="", help="a remark for the results file (e.g. the machine's load)")
    parser.add_argument("--results", default=RESULTS, help="the JSON-lines file to append to")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing")
    args = parser.parse_args(argv)

    try:
        try:
            batch_sizes = [int(b) for b in args.batch_size.split(",")]
        except ValueError:
            raise ValueError(f"--batch-size takes whole numbers separated by commas, got {args.batch_size!r}")
        if min(batch_sizes) < 1:
            raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
        if args.limit is not None and args.limit < 1:
            raise ValueError(f"--limit must be positive, got {args.limit}")
        if args.warmup < 0:
            raise ValueError(f"--warmup must be 0 or more, got {args.warmup}")
        if args.vocab_size < VOCAB_SIZE:  # the examples' token ids go up to it: a traceback mid-warm-up
            raise ValueError(f"--vocab-size must be at least GPT-2's {VOCAB_SIZE} (the tokenizer's ids), "
                             f"got {args.vocab_size}")
        check_seed(args.seed)
        if args.threads is not None:
            if args.threads < 1:
                raise ValueError(f"--threads must be positive, got {args.threads}")
            torch.set_num_threads(args.threads)
        if not args.no_record:
            check_results_file(args.results)  # a folder, say, fails now and not after the measuring
        device = torch.device(resolve_device(args.device))
        dtype = AUTOCAST[default_dtype(device.type, args.dtype)]
        file = hellaswag.data_file("val", args.file)
        examples = list(hellaswag.iterate_examples(path=file))[:args.limit]
        torch.manual_seed(args.seed)
        if args.init_from:
            model = GPT.load(args.init_from)
        else:
            overrides = {k: v for k, v in (("n_layer", args.n_layer), ("n_head", args.n_head),
                                           ("n_embd", args.n_embd)) if v is not None}
            model = GPT(GPTConfig.named(args.model_size, vocab_size=args.vocab_size, **overrides))
        # the tokenizing alone, a fixed cost inside every scheme's time, timed before the schemes: an example that
        # does not fit the model fails here, in hellaswag.py's words, not as a traceback in the middle of them
        enc = hellaswag.get_encoding()
        _, t_render = timed(lambda: [hellaswag.render_example(ex, enc, model.config.block_size) for ex in examples],
                            device)
    except (ValueError, TokenizerUnavailable) as e:
        sys.exit(f"error: {e}")
    model.to(device).eval()
    c = model.config
    model_desc = args.init_from or (f"{args.model_size} shape (n_layer={c.n_layer}, n_head={c.n_head}, "
                                    f"n_embd={c.n_embd}, vocab_size={c.vocab_size}), random init")
    print(f"model: {model_desc}, {model.num_params() / 1e6:.2f}M parameters")
    print(f"device: {device} ({machine_name(device)}), torch {torch.__version__}, "
          f"{'bfloat16 autocast' if dtype else 'float32'}, {torch.get_num_threads()} CPU threads")
    print(f"examples: {len(examples)} from {file}")

    @torch.no_grad()
    def lecture(items=examples):
        # the lecture's scheme: one example (its 4 rows) per forward pass, the logits of every position,
        # the cross-entropy of every position (here in float32, as hellaswag.py's, so that both compare
        # like with like), the mask applied afterwards, and the answer read back before the next example
        sum_loss, num_tokens = [], []
        for ex in items:
            _, tokens, mask, _ = hellaswag.render_example(ex, enc, c.block_size)
            tokens, mask = tokens.to(device), mask.to(device)
            with autocast(device.type, dtype):
                logits, _ = model(tokens)
            losses = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), tokens[:, 1:].flatten(), reduction="none")
            losses = losses.view(4, -1) * mask[:, 1:]
            sum_loss.append(losses.sum(1).cpu())
            num_tokens.append(mask[:, 1:].sum(1).cpu())
        return torch.stack(sum_loss).double(), torch.stack(num_tokens)

    def ours(batch_size, items=examples):
        # hellaswag.py: logits only where an ending token is predicted; batch_size=1 (unsorted) is the
        # lecture's one example at a time with that change alone
        return hellaswag.score_examples(model, items, device, batch_size=batch_size, autocast_dtype=dtype,
                                        sort=batch_size > 1)[2:]

    schemes = [("lecture, one at a time", lecture)]
    schemes += [(f"{b} example{'s' * (b > 1)} per pass", lambda items=examples, b=b: ours(b, items))
                for b in [1] + batch_sizes]
    if args.warmup:  # none with --warmup 0: the schemes cannot score an empty list
        for _, fn in schemes:  # warm-up: allocator, kernels, tokenizer
            timed(lambda: fn(examples[:args.warmup]), device)
    print(f"tokenizing and rendering alone: {t_render:.2f} s (included in every time below)")
    labels = torch.tensor([ex["label"] for ex in examples])
    n = len(examples)
    print(f"\n{'scheme':<26} {'time (s)':>9} {'ex/s':>8} {'speedup':>8} {'acc_norm':>16} {'acc':>16} "
          f"{'changed':>8} {'max |d avg loss|':>17}")
    results = []
    for name, fn in schemes:
        (sum_loss, num_tokens), t = timed(fn, device)
        avg = sum_loss / num_tokens
        r = {"name": name, "s": t, "avg": avg, "pred_norm": avg.argmin(1), "pred": sum_loss.argmin(1)}
        r["acc_norm"], r["acc"] = int((r["pred_norm"] == labels).sum()), int((r["pred"] == labels).sum())
        base = results[0] if results else r  # everything is compared with the lecture's scheme
        r["changed"] = int(((r["pred_norm"] != base["pred_norm"]) | (r["pred"] != base["pred"])).sum())
        r["max_diff"] = float((avg - base["avg"]).abs().max()) if n else 0.0
        results.append(r)
        acc_norm, acc = (f"{r[k]}/{n}={r[k] / n:.4f}" for k in ("acc_norm", "acc"))
        print(f"{name:<26} {t:9.2f} {n / t:8.1f} {base['s'] / t:8.2f}x {acc_norm:>16} {acc:>16} "
              f"{r['changed']:8d} {r['max_diff']:17.2e}")
    if args.no_record:
        return
    lecture_run, one = results[0], results[1]
    for b, r in zip(batch_sizes, results[2:]):
        record = {
            "date": datetime.date.today().isoformat(), "benchmark": "hellaswag_eval",
            "machine": args.machine or machine_name(device), "device": str(device), "torch": torch.__version__,
            "model": model_desc, "params": model.num_params(), "dtype": "bfloat16" if dtype else "float32",
            "examples": n, "batch_size": b, "lecture_s": round(lecture_run["s"], 3),
            "unbatched_s": round(one["s"], 3), "batched_s": round(r["s"], 3),
            "speedup_vs_lecture": round(lecture_run["s"] / r["s"], 2),
            "speedup_vs_unbatched": round(one["s"] / r["s"], 2), "render_s": round(t_render, 3),
            "acc_norm_lecture": lecture_run["acc_norm"], "acc_norm_unbatched": one["acc_norm"],
            "acc_norm_batched": r["acc_norm"], "acc_lecture": lecture_run["acc"], "acc_unbatched": one["acc"],
            "acc_batched": r["acc"], "changed_predictions_vs_lecture": r["changed"],
            "max_abs_diff_avg_loss_vs_lecture": r["max_diff"], "cpu_threads": torch.get_num_threads(),
            "note": "end to end (tokenize, batch, forward, loss); the lecture's scheme (one example at a time, "
                    "logits and cross-entropy at every position) is the baseline; unbatched = hellaswag.py "
                    "at batch_size=1 (logits only at the ending tokens)" + (f"; {args.note}" if args.note else ""),
        }
        with open(args.results, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
