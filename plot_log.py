"""
Plot a training run: log/log.txt -> a PNG of train/val loss and HellaSwag accuracy against step,
with the lecture's reference lines (OpenAI's GPT-2 124M checkpoint and GPT-3 124M).

    python plot_log.py                          # log/log.txt -> log/loss.png
    python plot_log.py run2/log.txt -o run2.png
"""

import argparse
import os
import re
import sys
from collections import defaultdict

# reference figures, cited from the lecture (not measured by this repo)
REFERENCES = {
    "val": [("OpenAI GPT-2 (124M) on FineWeb-Edu val", 3.2924)],  # sample-10BT's shard 0, as fineweb.py writes it
    # the lecture's plotting code: GPT-2 124M at 0.2945 (its hellaswag.py's docstring prints 0.2955), and
    # GPT-3 124M's 0.337 from the GPT-3 paper
    "hella": [("OpenAI GPT-2 (124M)", 0.2945), ("OpenAI GPT-3 (124M)", 0.337)],
}


LOG_KINDS = (b"train", b"val", b"hella")  # train_gpt2.LOG_FORMATS's (not imported: it would import torch)


def read_log(path):
    """{"train": ([steps], [values]), "val": ..., "hella": ...} from `{step} {kind} {value}` lines."""
    streams = defaultdict(dict)
    # bytes, split line by line: other lines (a note added by hand, which a resume keeps) are skipped whatever
    # they hold, and a log line with a byte that is not UTF-8 is reported with its line number
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            parts = raw.split()
            if len(parts) == 3 and parts[0].isdigit() and parts[1] in LOG_KINDS:
                try:
                    parts = [p.decode("utf-8") for p in parts]
                except UnicodeDecodeError as e:
                    why = f"is not UTF-8 text ({e.reason}): is it a train_gpt2.py log?"
                    raise ValueError(f"{path}:{lineno} {why}") from e
                try:
                    streams[parts[1]][int(parts[0])] = float(parts[2])  # a resumed run's repeat wins
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: {parts[2]!r} is not a number") from None
    return {kind: (sorted(d), [d[s] for s in sorted(d)]) for kind, d in streams.items()}


def plot(path, out, references=True):
    """Draw the log at `path` into `out` and return the file written: out + ".png" when out has no extension,
    as matplotlib names it; the extension picks the format (.png, .pdf, .svg...)."""
    # a bare Figure draws with Agg and leaves pyplot's backend alone (a notebook keeps its inline plots)
    from matplotlib.figure import Figure

    if not os.path.isfile(path):  # os.path only looks: open() would wait forever on a FIFO
        what = (" is a folder: plot the log.txt in it" if os.path.isdir(path) else
                " is not a regular file" if os.path.exists(path) else ": no such file")
        raise ValueError(f"{path}{what} (train_gpt2.py writes log.txt into its --log-dir, log/ by default)")
    streams = read_log(path)
    if "train" not in streams:
        with open(path, "rb") as f:
            console = re.search(rb"^step +\d+ \| loss: ", f.read(), flags=re.M)  # the repository's own log.txt
        raise ValueError(f"{path} has no `{{step}} train {{loss}}` lines: " + (
            "it is a run's console output; plot the log.txt in that run's --log-dir" if console else
            "is it a train_gpt2.py log?"))
    fig = Figure(figsize=(14 if "hella" in streams else 8, 5))
    axes = fig.subplots(1, 2 if "hella" in streams else 1, squeeze=False)
    ax = axes[0][0]
    steps, values = streams["train"]
    ax.plot(steps, values, label=f"train loss (final {values[-1]:.4f})", lw=1)
    if "val" in streams:
        steps, values = streams["val"]
        ax.plot(steps, values, "o-", label=f"val loss (final {values[-1]:.4f})")
        if references:
            for name, value in REFERENCES["val"]:
                ax.axhline(value, color="r", ls="--", label=f"{name}: {value} (cited)")
    ax.set(xlabel="step", ylabel="loss (nats/token)", title="loss")
    ax.legend()
    ax.grid(alpha=0.3)
    if "hella" in streams:
        ax = axes[0][1]
        steps, values = streams["hella"]
        ax.plot(steps, values, "o-", label=f"this run (final {values[-1]:.4f})")
        if references:
            for (name, value), color in zip(REFERENCES["hella"], ("r", "g")):
                ax.axhline(value, color=color, ls="--", label=f"{name}: {value} (cited)")
        ax.axhline(0.25, color="gray", ls=":", label="chance: 0.25")
        ax.set(xlabel="step", ylabel="accuracy (acc_norm)", title="HellaSwag")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    if out.endswith(("/", os.sep)) or os.path.isdir(out):  # a folder: loss.png in it
        out = os.path.join(out, "loss.png")
    if not os.path.splitext(out)[1]:  # savefig would add ".png" itself; add it here so that the caller knows
        out += ".png"
    if os.path.exists(out) and not os.path.isfile(out):  # a FIFO or a device: savefig said only "not seekable"
        raise ValueError(f"{out} is not a regular file: name a .png to write, or a folder for loss.png")
    folder = os.path.dirname(out)
    try:  # a folder that is not there yet is made, as for "-o plots/run2.png"
        os.makedirs(folder or ".", exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot make the folder {folder} for {out} ({e.strerror})") from None
    fig.savefig(out, dpi=100)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", nargs="?", default="log/log.txt", help="a train_gpt2.py log.txt (default log/log.txt)")
    parser.add_argument("-o", "--out", default=None,
                        help="the PNG to write, or a folder for loss.png, made if missing "
                             "(default: loss.png beside the log)")
    parser.add_argument("--no-references", action="store_true", help="leave out the cited reference lines")
    args = parser.parse_args(argv)
    out = args.out or os.path.join(os.path.dirname(args.log) or ".", "loss.png")
    try:
        print(f"wrote {plot(args.log, out, not args.no_references)}")
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
