"""
HellaSwag evaluation speed: several examples per forward pass against one example at a time (the
lecture's scheme), with the same model on the same examples in the same run, and a check that both
give the same predictions. Issue 6's target: >= 5x faster over the 10,042 val examples, same accuracy.

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import hellaswag  # noqa: E402
from gpt2_modules import GPT, MODEL_SIZES, GPTConfig  # noqa: E402
from gpt2_tokenizer import TokenizerUnavailable  # noqa: E402

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
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cuda, cpu, mps")
    parser.add_argument("--model-size", choices=list(MODEL_SIZES), default="gpt2")
    parser.add_argument("--n-layer", type=int, default=None, help="override the size's layer count")
    parser.add_argument("--n-head", type=int, default=None, help="override the size's head count")
    parser.add_argument("--n-embd", type=int, default=None, help="override the size's width")
    parser.add_argument("--vocab-size", type=int, default=50304, help="50304: the training default (padded)")
    parser.add_argument("--init-from", default=None, help="score a real model instead (name, HF folder, .pt)")
    parser.add_argument("--limit", type=int, default=None, help="the first N examples (default: all)")
    parser.add_argument("--batch-size", default="16", help="examples per forward pass; a comma list runs each")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="autocast dtype; auto: bfloat16 on cuda, float32 elsewhere")
    parser.add_argument("--warmup", type=int, default=32, help="examples run through each scheme before timing")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--machine", default=None, help="the machine's description for the results file")
    parser.add_argument("--note", default="", help="a remark for the results file (e.g. the machine's load)")
    parser.add_argument("--results", default=RESULTS, help="the JSON-lines file to append to")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        batch_sizes = [int(b) for b in args.batch_size.split(",")]
        device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"bfloat16": torch.bfloat16, "float32": None}.get(
            args.dtype, torch.bfloat16 if device.type == "cuda" else None)
        file = hellaswag.data_file("val", args.file)
        examples = list(hellaswag.iterate_examples(path=file))[:args.limit]
        torch.manual_seed(args.seed)
        if args.init_from:
            model = GPT.load(args.init_from)
        else:
            overrides = {k: v for k, v in (("n_layer", args.n_layer), ("n_head", args.n_head),
                                           ("n_embd", args.n_embd)) if v is not None}
            model = GPT(GPTConfig.named(args.model_size, vocab_size=args.vocab_size, **overrides))
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

    def run(batch_size, items=examples):
        # batch_size=1 with sort=False is the one-example-at-a-time scheme of the lecture
        return hellaswag.score_examples(model, items, device, batch_size=batch_size, autocast_dtype=dtype,
                                        sort=batch_size > 1)

    for b in [1] + batch_sizes:  # warm-up: allocator, kernels, tokenizer
        timed(lambda: run(b, examples[:args.warmup]), device)
    # the tokenizing alone, a fixed cost inside both schemes' times
    enc = hellaswag.get_encoding()
    _, t_render = timed(lambda: [hellaswag.render_example(ex, enc, c.block_size) for ex in examples], device)
    print(f"tokenizing and rendering alone: {t_render:.2f} s (included in every time below)")
    (_, labels, sum_loss, num_tokens), t_one = timed(lambda: run(1), device)
    avg = sum_loss / num_tokens
    pred_norm, pred = avg.argmin(1), sum_loss.argmin(1)
    n = len(labels)
    acc_norm, acc = int((pred_norm == labels).sum()), int((pred == labels).sum())
    print(f"\n{'scheme':<26} {'time (s)':>9} {'ex/s':>8} {'speedup':>8} {'acc_norm':>16} {'acc':>16} "
          f"{'changed':>8} {'max |d avg loss|':>17}")
    print(f"{'one example at a time':<26} {t_one:9.2f} {n / t_one:8.1f} {1:8.2f}x "
          f"{f'{acc_norm}/{n}={acc_norm / n:.4f}':>16} {f'{acc}/{n}={acc / n:.4f}':>16} {'-':>8} {'-':>17}")
    for b in batch_sizes:
        (_, _, b_sum, b_num), t_b = timed(lambda: run(b), device)
        b_avg = b_sum / b_num
        b_norm, b_plain = b_avg.argmin(1), b_sum.argmin(1)
        changed = int(((b_norm != pred_norm) | (b_plain != pred)).sum())
        b_acc_norm, b_acc = int((b_norm == labels).sum()), int((b_plain == labels).sum())
        max_diff = float((b_avg - avg).abs().max()) if n else 0.0
        print(f"{f'{b} examples per pass':<26} {t_b:9.2f} {n / t_b:8.1f} {t_one / t_b:8.2f}x "
              f"{f'{b_acc_norm}/{n}={b_acc_norm / n:.4f}':>16} {f'{b_acc}/{n}={b_acc / n:.4f}':>16} "
              f"{changed:8d} {max_diff:17.2e}")
        if args.no_record:
            continue
        record = {
            "date": datetime.date.today().isoformat(), "benchmark": "hellaswag_eval",
            "machine": args.machine or machine_name(device), "device": str(device), "torch": torch.__version__,
            "model": model_desc, "params": model.num_params(), "dtype": "bfloat16" if dtype else "float32",
            "examples": n, "batch_size": b, "unbatched_s": round(t_one, 3), "batched_s": round(t_b, 3),
            "speedup": round(t_one / t_b, 2), "render_s": round(t_render, 3),
            "acc_norm_unbatched": acc_norm, "acc_norm_batched": b_acc_norm,
            "acc_unbatched": acc, "acc_batched": b_acc, "changed_predictions": changed,
            "max_abs_diff_avg_loss": max_diff, "cpu_threads": torch.get_num_threads(),
            "note": "end to end (tokenize, batch, forward, loss); batch_size=1 unsorted is the baseline"
                    + (f"; {args.note}" if args.note else ""),
        }
        with open(args.results, "a") as f:
            f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
