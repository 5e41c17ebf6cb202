"""
DataLoaderLite: GPT-2 training batches read from the token shards that fineweb.py writes
(edu_fineweb10B/edufineweb_{val|train}_NNNNNN.npy, 1-D uint16 arrays, val is shard 0).

    from dataloaderlite import DataLoaderLite
    loader = DataLoaderLite(B=64, T=1024, process_rank=ddp_rank, num_processes=ddp_world_size,
                            split="train", device=device, verbose=master_process)
    x, y = loader.next_batch()  # int64 (B, T) each, on `device`; y is x shifted by one token

A library for train_gpt2.py. Run on its own, it lists what a data folder holds, checking each shard's
header as training does at start-up (a missing split or a broken shard gives training's error line), and
says "incomplete" for a folder whose fineweb.py run has not finished:

    python dataloaderlite.py edu_fineweb10B     # val: 1 shard, 100,000,000 tokens / train: 99 shards, ...

The token order is the lecture's: rank r reads B*T+1 tokens at offset r*B*T of the current micro-step,
a micro-step moves B*T*num_processes tokens, and a shard that cannot hold another whole micro-step hands
over to the next one (after the last shard: shard 0 again, a new epoch); a shard shorter than one micro-step
(fineweb.py's leftover last shard can be) is skipped. Extras that leave that order alone: a memory
footprint of a few batches whatever the shard size, state_dict()/load_state_dict() for exact
resumption, DataError on bad shards (and on shards that differ from the sizes fineweb.py's manifest.json
records, and, given vocab_size, on a token id the model has no embedding for), a warning for an
unfinished fineweb.py run, and shuffle=True (off by default).
"""

import argparse
import json
import os
import re
import shlex
import sys

import numpy as np
import torch

from fineweb import LOCAL_DIR, MANIFEST, PREFIX, shard_name
from gpt2_tokenizer import VOCAB_SIZE


class DataError(ValueError):
    """A problem with the shards or the loader's arguments that the user can fix; the message says how."""


# -----------------------------------------------------------------------------
# shards on disk

def shard_pattern(split):
    # the exact name pattern (hidden files aside), so that temp files and the manifest are never read as shards;
    # six digits or more: fineweb.py writes {index:06d}, which has a seventh from shard 1,000,000 on
    return re.compile(rf"[^.].*_{re.escape(split)}_(\d{{6,}})\.npy")


def find_shards(data_root, split):
    """The split's shard paths, sorted by index."""
    pattern = shard_pattern(split)
    try:
        names = [n for n in os.listdir(data_root) if pattern.fullmatch(n)] if os.path.isdir(data_root) else []
    except OSError as e:  # a folder this user may not list
        raise DataError(f"cannot list the shards in {data_root}/ ({e.strerror})") from None
    if not names:
        # fineweb.py writes into its --local-dir, edu_fineweb10B/ unless told otherwise
        local_dir = "" if os.path.normpath(data_root) == LOCAL_DIR else f" --local-dir {shlex.quote(data_root)}"
        example = shard_name(PREFIX, 0 if split == "val" else 1)  # fineweb.py's shard 0 is val, train starts at 1
        raise DataError(f"no shards for split {split!r} in {data_root}/ (files like {example}): "
                        f"make them with `python fineweb.py{local_dir}` (or `python fineweb.py --files ...{local_dir}` "
                        "for local text)")
    names.sort(key=lambda n: (int(pattern.fullmatch(n)[1]), n))  # by name, shard 1000000 would come before 100001
    return [os.path.join(data_root, name) for name in names]


def check_manifest(data_root, split, shards):
    """Checks the split's shards against the manifest.json that fineweb.py keeps beside them, by size only (a stat,
    no reading); returns whether that manifest says the run finished, or None where there is no manifest (shards
    made otherwise, or by a fineweb.py before manifests)."""
    path = os.path.join(data_root, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            manifest = json.load(f)
    except OSError as e:
        raise DataError(f"cannot read {path} ({e.strerror})") from None
    except ValueError as e:
        raise DataError(f"{path} is not valid JSON ({e}): it is damaged; remake this folder with fineweb.py, or "
                        f"delete {MANIFEST} to train on the shards unchecked") from None
    pattern = shard_pattern(split)
    try:
        recorded = {s["file"]: s["bytes"] for s in manifest["shards"] if pattern.fullmatch(s["file"])}
    except (KeyError, TypeError):
        recorded = None
    if recorded is None or any(type(size) is not int for size in recorded.values()):
        raise DataError(f"{path} does not list the shards' files and sizes as fineweb.py writes it: it is damaged; "
                        f"remake this folder with fineweb.py, or delete {MANIFEST} to train on the shards unchecked")
    rerun = "rerun the fineweb.py command that made this folder (it rewrites the shards from that one on)"
    on_disk = {os.path.basename(shard): shard for shard in shards}
    for name, size in recorded.items():
        if name not in on_disk:
            raise DataError(f"{path} records {name} but it is not in {data_root}/: {rerun}, or delete {MANIFEST} "
                            "to train on the shards that are there")  # fewer shards on purpose (a smaller disk)
        if (actual := os.path.getsize(on_disk[name])) != size:
            # written over after fineweb.py recorded it, e.g. by a second fineweb.py run in the same folder
            raise DataError(f"{on_disk[name]} has {actual:,} bytes but {path} records {size:,}: it changed after "
                            f"fineweb.py wrote it; {rerun}")
    complete = manifest.get("complete", False) is True
    # an unfinished run may have written a shard and been stopped before recording it (it is whole: fineweb.py
    # writes each shard to a temp file and renames it), but a finished run recorded all of its shards
    unrecorded = [shard for name, shard in on_disk.items() if name not in recorded]
    if complete and unrecorded:
        raise DataError(f"{unrecorded[0]} is not among the {len(recorded)} {split} shards that {path} records for "
                        "the finished fineweb.py run that made this folder: it came from elsewhere; move it out")
    return complete


# a warning for each folder at most once a process, though the train and val loaders both see it
_warned_incomplete = set()


def warn_incomplete(data_root):
    if os.path.realpath(data_root) not in _warned_incomplete:
        _warned_incomplete.add(os.path.realpath(data_root))
        print(f"warning: {data_root}/ holds an unfinished fineweb.py run ({MANIFEST} says it is incomplete): "
              "training on the shards it has so far; rerun fineweb.py with the same arguments to finish it",
              file=sys.stderr)


def read_header(path):
    """(header size in bytes, number of tokens) of a shard, checked without reading its tokens."""
    if not os.path.isfile(path):  # a FIFO would block the read below forever
        raise DataError(f"{path} is not a regular file, so not a shard")
    try:
        # np.load(path, mmap_mode="r") for a .npy file, minus its fallbacks to .npz and pickle,
        # whose errors would hide what is wrong with the file
        tokens = np.lib.format.open_memmap(path, mode="r")
    except PermissionError as e:  # a whole shard this user may not read: not one to delete
        raise DataError(f"cannot read {path} ({e.strerror}): give this user read access to it") from None
    except (ValueError, OSError) as e:
        raise DataError(f"{path} cannot be loaded as a .npy array ({e}): it is truncated or not a shard; delete "
                        "it and rerun the fineweb.py command that made it (it rewrites only what is missing)") from None
    if tokens.dtype != np.uint16 or tokens.ndim != 1:
        raise DataError(f"{path} is not a 1-D uint16 token array: dtype {tokens.dtype}, shape {tokens.shape}")
    return tokens.offset, len(tokens)


# -----------------------------------------------------------------------------
# the loader

class DataLoaderLite:

    def __init__(self, B, T, process_rank, num_processes, split, data_root=LOCAL_DIR,
                 shuffle=False, seed=1337, device="cpu", verbose=True, vocab_size=None):
        if B <= 0 or T <= 0:
            raise DataError(f"B and T must be positive, got B={B}, T={T}")
        if not 0 <= process_rank < num_processes:
            raise DataError(f"process_rank must be in 0..{num_processes - 1} for num_processes={num_processes}, "
                            f"got {process_rank}")
        if split not in ("train", "val"):
            raise DataError(f"split must be 'train' or 'val', got {split!r}")
        self.B, self.T = B, T
        self.process_rank, self.num_processes = process_rank, num_processes
        self.split, self.shuffle, self.seed = split, shuffle, seed
        self.device = torch.device(device)
        # a token id at or above the model's vocab_size (shards of another tokenizer, a --vocab-size below
        # GPT-2's 50,257) is a DataError here, on the host: on a GPU it would be an opaque device-side assert,
        # compiled on a CPU a kernel's traceback or an abort; a max over one batch costs microseconds
        self.vocab_size = vocab_size
        # how far one micro-step (one next_batch() on every rank) moves, all ranks together; an optimizer step
        # of train_gpt2.py is grad_accum_steps of them
        self.micro_step_tokens = B * T * num_processes

        shards = find_shards(data_root, split)
        if check_manifest(data_root, split, shards) is False and process_rank == 0:  # one warning, not one a rank
            warn_incomplete(data_root)  # a user may start on part of the data on purpose: not an error
        headers = [read_header(path) for path in shards]  # every shard checked, the ones skipped below too
        # a shard shorter than one micro-step holds no batch: fineweb.py's last shard is what was left over, which
        # can be a few tokens; it is skipped, as the loader skips the tail of every shard that is no whole micro-step
        need = self.micro_step_tokens + 1
        need_text = f"B*T*num_processes+1 = {B}*{T}*{num_processes}+1 = {need:,}"
        kept = [(path, header) for path, header in zip(shards, headers) if header[1] >= need]
        short = [(path, n) for path, (_, n) in zip(shards, headers) if n < need]
        if not kept:
            path, n = max(short, key=lambda s: s[1])
            raise DataError(f"{path} has {n:,} tokens, fewer than one micro-step needs: {need_text}, and no {split} "
                            "shard has more; use a smaller B or T")
        self.shards = [path for path, _ in kept]
        self.all_lengths = [(path, n) for path, (_, n) in zip(shards, headers)]  # for a resume at another size
        self.offsets, self.lengths = zip(*(header for _, header in kept))
        if verbose:
            print(f"found {len(shards)} shards for split {split}")
            for path, n in short:
                print(f"skipping {path}: its {n:,} tokens are fewer than one micro-step needs ({need_text})")
        self.reset()

    def reset(self):
        self.skipped_on_resume = None
        self._enter(epoch=0, shard=0, window=0)

    def _enter(self, epoch, shard, window, first=0):
        """Stand before `window` (a micro-step's index in the visit order) of the epoch's `shard`-th shard, whose
        micro-steps start at token `first` (0 but in the shard where a resume at another size landed)."""
        self.epoch, self.shard, self.window, self.first = epoch, shard, window, first
        self.current_shard = self._shard_order()[shard]  # index into self.shards
        # micro-step k of a shard starts at token k*micro_step_tokens and needs micro_step_tokens+1 tokens (the +1
        # is the last target), so a shard of n tokens holds (n-1)//micro_step_tokens of them. This bound is the
        # same on every rank, so all ranks move on at the same micro-step; upstream added the rank's own
        # offset to it, which moved the higher ranks on early and dropped tokens (build-nanogpt PR #109).
        n_windows = (self.lengths[self.current_shard] - 1 - first) // self.micro_step_tokens
        self.windows = self._window_order(self.current_shard, n_windows)

    # Shuffling (build-nanogpt PR #52: a fixed order repeats the same loss pattern every epoch).
    # The unit shuffled is one micro-step's window of B*T*num_processes(+1) tokens, the span that the ranks
    # split between them, so the ranks still partition each window exactly as without shuffling and a
    # shuffled run with W ranks reads the same batches as one process with batch B*W. The orders are a
    # pure function of (seed, epoch, shard), the same on every rank, with no generator state to save.

    def _shard_order(self):
        if not self.shuffle:
            return list(range(len(self.shards)))
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.shards)).tolist()

    def _window_order(self, shard, n_windows):
        if not self.shuffle:
            return range(n_windows)
        return np.random.default_rng([self.seed, self.epoch, shard]).permutation(n_windows).tolist()

    # -------------------------------------------------------------------------

    def next_batch(self):
        B, T = self.B, self.T
        start = self.first + self.windows[self.window] * self.micro_step_tokens + self.process_rank * B * T
        # a read of just this slice, not a slice of a long-lived np.memmap: a memory map keeps every
        # page it has touched in this process's RSS, up to the whole shard (200 MB for 100M tokens),
        # while a read keeps RSS at a few batches (benchmarks/loader_memory_bench.py measures both)
        path, offset = self.shards[self.current_shard], self.offsets[self.current_shard]
        tokens = np.fromfile(path, dtype=np.uint16, count=B * T + 1, offset=offset + 2 * start)
        if len(tokens) < B * T + 1:  # np.fromfile reads what is there without complaint
            raise DataError(f"{path} ends before token {start + B * T + 1:,}, which this micro-step reads, although "
                            f"its header says {self.lengths[self.current_shard]:,}: it was cut short after it was "
                            "checked; restore it, or rerun the fineweb.py command that made it")
        if self.vocab_size is not None and tokens.max() >= self.vocab_size:
            bad = int(np.argmax(tokens >= self.vocab_size))
            raise DataError(f"{path} holds token id {tokens[bad]} (its token {start + bad:,}), out of range for "
                            f"the model's vocab_size {self.vocab_size:,}: the shards come from another tokenizer "
                            f"than GPT-2's, or the vocab_size is below its {VOCAB_SIZE:,} tokens")
        buf = torch.from_numpy(tokens.astype(np.int64))
        if self.device.type == "cuda":
            # from pinned memory the copy runs asynchronously; torch's pinned-memory cache keeps this
            # block until its copy has finished, so a fresh pin per batch is safe without a sync
            buf = buf.pin_memory().to(self.device, non_blocking=True)
        else:
            buf = buf.to(self.device)
        x = buf[:-1].view(B, T)  # inputs
        y = buf[1:].view(B, T)  # targets
        self.window += 1
        if self.window == len(self.windows):  # this shard holds no further whole micro-step: move on
            last = self.shard == len(self.shards) - 1
            self._enter(epoch=self.epoch + last, shard=0 if last else self.shard + 1, window=0)
        return x, y

    # -------------------------------------------------------------------------
    # checkpointing: plain Python values, so torch.load(weights_only=True) reads them. The position
    # is the same on every rank (rank r only adds r*B*T inside a micro-step), so rank 0's state resumes all.

    _SETTINGS = ("B", "T", "num_processes", "split", "shuffle", "seed")
    _MICRO_STEP = ("B", "T", "num_processes")  # these may change on a resume (a smaller B after running out of memory)

    def state_dict(self):
        state = {key: getattr(self, key) for key in self._SETTINGS}
        # epoch: passes completed; shard: index into the epoch's shard order; window: micro-steps already read in it;
        # first: the token where that shard's micro-steps start (0 unless a resume at another size landed there)
        state.update(epoch=self.epoch, shard=self.shard, window=self.window, first=self.first)
        return state

    def load_state_dict(self, state):
        for key in self._SETTINGS:
            if key not in self._MICRO_STEP and state.get(key) != getattr(self, key):
                raise DataError(f"the loader state was saved with {key}={state.get(key)!r} but this loader has "
                                f"{key}={getattr(self, key)!r}; resume with the settings of the saved run")
        for key in ("epoch", "shard", "window", "first"):
            if not (isinstance(state.get(key, 0), int) and state.get(key, 0) >= 0):
                raise DataError(f"the loader state's {key} is {state.get(key)!r}, not a count: it is damaged")
        self.skipped_on_resume = None  # tokens skipped to carry the saved position over to another micro-step size
        # the same micro-step size split otherwise (4 GPUs at B=32 after 8 at B=16) reads the same spans: as saved
        if state["B"] * state["T"] * state["num_processes"] != self.micro_step_tokens:
            state = self._carried_over(state)
        if not state["shard"] < len(self.shards):
            raise self._shard_gone(state, len(self.shards))
        here = (self.epoch, self.shard, self.window, self.first)
        self._enter(state["epoch"], state["shard"], state["window"], state.get("first", 0))
        if not self.window < len(self.windows):
            self._enter(*here)
            raise self._folder_changed(state)

    def _shard_gone(self, state, found):
        return DataError(f"the loader state points at shard {state['shard']} but {found} {self.split} shards were "
                         "found: the data folder changed since it was saved")

    @staticmethod
    def _folder_changed(state):
        return DataError(f"the loader state points at micro-step {state['window']} of shard {state['shard']}, which "
                         "holds fewer: the data folder changed since it was saved")

    def _carried_over(self, state):
        """state, saved with another micro-step size (B*T*num_processes), as a position in this loader: the same
        token stream, cut into micro-steps of this size from the very token where the saved one stood. Nothing is
        read twice or skipped, but the end of that shard when it holds no whole micro-step of the new size."""
        old = state["B"] * state["T"] * state["num_processes"]
        if self.shuffle:  # the shuffled unit is one micro-step's window: another size is another order altogether
            raise DataError(f"the loader state was saved with B*T*num_processes = {state['B']}*{state['T']}*"
                            f"{state['num_processes']} but this loader has {self.B}*{self.T}*{self.num_processes}, "
                            "and a shuffled order cannot be carried over to another micro-step size; resume with "
                            "the settings of the saved run")
        # the saved shard index counts the shards that held a whole micro-step at the old size
        then = [(path, n) for path, n in self.all_lengths if n >= old + 1]
        if not state["shard"] < len(then):
            raise self._shard_gone(state, len(then))
        path, n = then[state["shard"]]
        at = state.get("first", 0) + state["window"] * old  # the saved position, in tokens into that shard
        if not at + old < n:  # the micro-step saved as next must have fitted
            raise self._folder_changed(state)
        epoch, shard = state["epoch"], self.shards.index(path) if path in self.shards else None
        if shard is not None and at + self.micro_step_tokens < n:
            self.skipped_on_resume = 0
            return dict(state, epoch=epoch, shard=shard, window=0, first=at)
        # no whole micro-step of the new size left there: on to the next shard that holds one
        index = {p: i for i, (p, _) in enumerate(self.all_lengths)}  # the shards' order, by index
        later = [i for i, p in enumerate(self.shards) if index[p] > index[path]]
        self.skipped_on_resume = n - at
        return dict(state, epoch=epoch + (not later), shard=later[0] if later else 0, window=0, first=0)


# -----------------------------------------------------------------------------
# command line: what a data folder holds

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_root", nargs="?", default=LOCAL_DIR,
                        help="the folder fineweb.py wrote (default: %(default)s, as train_gpt2.py's --data-root)")
    args = parser.parse_args(argv)
    try:
        for split in ("val", "train"):
            shards = find_shards(args.data_root, split)
            complete = check_manifest(args.data_root, split, shards)
            tokens = sum(read_header(path)[1] for path in shards)  # the header checks training runs at start-up
            print(f"{split}: {len(shards)} shard{'s' * (len(shards) != 1)}, {tokens:,} tokens")
        if complete is False:
            print(f"incomplete: {MANIFEST} says the fineweb.py run that writes this folder has not finished; "
                  "rerun fineweb.py with the same arguments to finish it")
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
