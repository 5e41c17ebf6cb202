"""
FineWeb-Edu -> GPT-2 tokens -> uint16 shards, the training data of GPT-2 (124M).

Every document is tokenized with the GPT-2 tokenizer and preceded by <|endoftext|>, the
tokens are concatenated, and the stream is cut into shards of 100M tokens saved with np.save
as uint16 (50,257 < 2**16, so half the bytes of int32). Shard 0 is the validation split, the
rest is train; the last shard holds whatever is left. dataloaderlite.py reads them by name.

    python fineweb.py                          # FineWeb-Edu sample-10BT -> edu_fineweb10B/ (~100 shards)
    python fineweb.py --remote-name sample-100BT --local-dir edu_fineweb100B --streaming
    python fineweb.py --files 'books/*.txt' --local-dir my_shards --shard-size 1000000

Output: LOCAL_DIR/edufineweb_val_000000.npy, edufineweb_train_000001.npy, ... and manifest.json
(what was tokenized, and per shard its token and document counts). A run that is killed leaves
only complete shards behind; run the same command again and it carries on where it stopped,
ending with the same bytes as an uninterrupted run.
"""

import argparse
import codecs
import contextlib
import glob
import gzip
import importlib.metadata
import json
import logging
import multiprocessing as mp
import os
import shlex
import signal
import sys
import threading
import time
import zlib
from collections import Counter, deque

import numpy as np
from tqdm import tqdm

from gpt2_tokenizer import EOT, TokenizerUnavailable, get_encoding

DEFAULT_DATASET, DEFAULT_REMOTE_NAME = "HuggingFaceFW/fineweb-edu", "sample-10BT"  # the lecture's 10B tokens
LOCAL_DIR = "edu_fineweb10B"  # the lecture's folder: where the shards go, and where the loader looks by default
PREFIX = "edufineweb"      # file names are PREFIX_{val|train}_{index:06d}.npy whatever the dataset
MANIFEST = "manifest.json"
TASK_CHARS = 1 << 20       # ~1 MB of text per worker task: a few hundred web documents, ~50 ms of work
TASK_DOCS = 4096           # ...or this many documents, so that tiny documents still make tasks of bounded size
READ_BATCH = 1024          # rows per Arrow batch read from the dataset
FILE_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# docs.jsonl.gz: datasets decompresses these as it reads (a parquet file compresses inside)
GZIPPED = {".txt", ".json", ".jsonl"}


def available_cpus():
    """The cores this process may run on (a taskset or container can allow fewer than os.cpu_count())."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class FinewebError(Exception):
    """A problem with the input or the arguments that the user can fix; main() prints it as one line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a plain `kill`, a job scheduler's stop): handled as Ctrl-C, so the pool's workers end with the
    parent instead of each printing a BrokenPipeError traceback."""


# -----------------------------------------------------------------------------
# tokenization (runs in the worker processes)

def _init_worker():
    # Ctrl-C reaches the whole process group; let only the parent handle it, so that an
    # interrupted run prints one line instead of one KeyboardInterrupt traceback per worker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler, inherited through fork


@contextlib.contextmanager
def worker_pool(processes, start_method=None):
    """A Pool that ends with close() and join(), never terminate(), which is what `with Pool` does.

    terminate() sends SIGTERM to workers wherever they are. A worker killed while it sends a result
    keeps the result queue's lock for ever, and terminate() then waits on that lock for ever
    (CPython issue #96995, still open; it hung our CI's Ctrl-C test about once in a hundred runs).
    Joining instead costs at most the few tasks in flight (tokenize_documents' window).
    """
    context = mp.get_context(start_method)
    if start_method is None and context.get_start_method() == "fork" and threading.active_count() > 1:
        # fork copies only the calling thread: a lock another thread holds (a Jupyter kernel's, a pytest-xdist
        # worker's) stays held for ever in the workers, which Python 3.12+ warns of (DeprecationWarning)
        context = mp.get_context("spawn")
    pool = context.Pool(processes, initializer=_init_worker)
    try:
        yield pool
    finally:
        pool.close()
        pool.join()


def encode_ordinary(enc, text):
    """enc.encode_ordinary(text) as a uint32 array, without building a Python list of ints on the way.

    encode_to_numpy with no special tokens allowed and none disallowed is encode_ordinary: text that
    happens to contain "<|endoftext|>" is tokenized as plain text, so EOT only ever appears as the
    document separator and counting EOTs counts documents. Without the list, the worker code costs
    ~1.2x less per token than the lecture's (benchmarks/README.md).
    """
    try:
        return enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
    except UnicodeEncodeError:  # lone surrogates: encode_ordinary knows how to repair them, encode_to_numpy not
        return np.array(enc.encode_ordinary(text), dtype=np.uint32)


def check_tiktoken(enc):
    """encode_ordinary above needs tiktoken 0.11 or later: before 0.9 there is no encode_to_numpy, and 0.9 and
    0.10 ignore its allowed_special, so a document that quotes "<|endoftext|>" would be cut in two in silence."""
    text = "a <|endoftext|> b"
    try:
        same = encode_ordinary(enc, text).tolist() == enc.encode_ordinary(text)
    except AttributeError:
        same = False
    if not same:
        raise FinewebError(f"tiktoken {importlib.metadata.version('tiktoken')} cannot tokenize the shards faithfully "
                           "(encode_to_numpy is missing, or treats text as special tokens); install tiktoken 0.11 or "
                           "later: pip install -r requirements.txt")


_EOT = np.array([EOT], dtype=np.uint32)


def tokenize_batch(texts):
    """A list of documents -> one uint16 array: <|endoftext|> + encode_ordinary(doc) for each, in order."""
    enc = get_encoding()  # cached per process; under spawn each worker loads it once
    parts = []
    for text in texts:
        parts.append(_EOT)
        parts.append(encode_ordinary(enc, text))
    tokens = np.concatenate(parts) if parts else np.empty(0, dtype=np.uint32)
    if len(tokens) and tokens.max() >= 2**16:
        raise ValueError(f"token id {tokens.max()} does not fit uint16")  # a bug, not a user error
    return tokens.astype(np.uint16)



def _task_batches(documents, start=0):
    """Groups documents into lists of ~TASK_CHARS characters."""
    batch, chars = [], 0
    for index, text in enumerate(documents, start):
        if not isinstance(text, str):
            raise FinewebError(f"document {index} is {type(text).__name__}, not text; "
                               "point --text-column at a string column")
        batch.append(text)
        chars += len(text)
        if chars >= TASK_CHARS or len(batch) >= TASK_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def tokenize_documents(documents, pool, window):
    """Yields (number of documents, token array) for each batch of documents, in order, with at most
    `window` tasks in flight.

    Pool.imap keeps its workers busy whatever the parent does, and while the parent is slow (a big
    shard being written, a slow disk) their results pile up in it without bound; a window of
    apply_async never holds more than `window` batches of text or tokens.
    """
    pending = deque()
    for batch in documents:
        pending.append((len(batch), pool.apply_async(tokenize_batch, (batch,))))
        if len(pending) >= window:
            n, result = pending.popleft()
            yield n, result.get()
    while pending:
        n, result = pending.popleft()
        yield n, result.get()


# -----------------------------------------------------------------------------
# atomic files

def fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a directory; its renames are durable enough
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, write):
    """write(f) into path.tmp, fsync, rename over path: readers see the old file or the whole new one."""
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))


class _WriteOnly:
    def __init__(self, f):
        self.write = f.write


def flock_folder(path):
    """A descriptor of the folder path holding flock() on it, or None where there is no such lock (Windows, some
    network filesystems); BlockingIOError if another process holds it. No file is left behind: closing the
    descriptor drops the lock, and the kernel drops it when the process ends, however it ends (a SIGKILL), so a
    crashed run never blocks the next one. This and train_gpt2.py's log folder lock."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise
    except OSError:  # no locks on this filesystem
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def folder_lock(local_dir):
    """One fineweb.py at a time in local_dir: two would each write the shards of their own input under the same
    names, and the manifest of the last to write, both ending without an error."""
    try:
        fd = flock_folder(local_dir)
    except BlockingIOError:
        raise FinewebError(f"another fineweb.py is writing shards in {local_dir} (it holds the folder's lock): "
                           "let it finish or stop it first, or pass another --local-dir") from None
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # and with it the lock


def shard_name(prefix, index):
    return f"{prefix}_{'val' if index == 0 else 'train'}_{index:06d}.npy"


# -----------------------------------------------------------------------------
# shards and the manifest

def wherever(config):
    """A manifest's config without where its local input lies: each file by its path below the files' common
    folder, so that the same files moved or renamed together (a repo moved to another folder: `mv` keeps
    their bytes and mtimes) are the same input, and a rerun goes on from the shards already written."""
    files = config.get("files")
    if not files:  # a hub dataset, or a manifest of a fineweb.py before files were kept
        return config
    try:
        root = os.path.commonpath([os.path.dirname(f["path"]) for f in files])
        return {**config, "dataset": None,  # a local folder's path (hub ids have no files)
                "files": [{**f, "path": os.path.relpath(f["path"], root)} for f in files]}
    except (ValueError, TypeError, KeyError):  # a manifest edited by hand: compared as it is
        return config


def config_change(old, new):
    """What differs between two manifests' configs, in words: for the input files, which file and how."""
    short = lambda v: repr(v) if len(repr(v)) <= 60 else repr(v)[:57] + "..."  # noqa: E731
    parts = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if k == "files" and a is None and isinstance(b, list):  # a manifest of a fineweb.py before files were kept
            parts.append(f"the {len(b)} input files were not recorded by the fineweb.py that made those shards")
        elif k == "files" and isinstance(a, list) and isinstance(b, list):
            was, now = {f["path"]: f for f in a}, {f["path"]: f for f in b}
            parts += [f"{p} is new" for p in now if p not in was]
            parts += [f"{p} is gone" for p in was if p not in now]
            for p in (p for p in now if p in was and was[p] != now[p]):
                parts.append(f"{p} changed: {was[p]['bytes']:,} -> {now[p]['bytes']:,} bytes" if
                             was[p]["bytes"] != now[p]["bytes"] else f"{p} was modified since (same size)")
            for files, when in ((b, "now"), (a, "then")):
                seen = [f["path"] for f in files]
                parts += [f"{p} is listed {seen.count(p)} times {when}" for p in dict.fromkeys(seen)
                          if seen.count(p) > 1]
            if not parts:  # the same files, listed in another order
                parts.append("the files are in another order")
        else:
            parts.append(f"{k}: {short(a)} -> {short(b)}")
    return ", ".join(parts)


class ShardWriter:
    """Cuts the token stream into shards, writes each atomically and records it in the manifest.

    For every shard the manifest keeps where the stream stands after it (`resume_at`: the next token
    is token `token` of document `document`, counting its <|endoftext|> as token 0), so that a rerun
    skips the documents already done without tokenizing them and continues mid-document exactly
    where the last complete shard ends.
    """

    def __init__(self, local_dir, shard_size, config, prefix=PREFIX):
        self.local_dir, self.shard_size, self.config, self.prefix = local_dir, shard_size, config, prefix
        self.manifest_path = os.path.join(local_dir, MANIFEST)
        self.shards = []               # manifest entries of the complete shards, in order
        self.docs_started = 0          # documents whose <|endoftext|> is in the stream so far
        self.doc_tokens_written = 0    # tokens of the current (last started) document in the stream
        self.text_tokens = 0           # tokens other than <|endoftext|>, to catch an input without text
        self.skip = 0                  # tokens still to drop at the start of a resumed stream
        self.buf = None
        self.fill = 0
        self.complete = False
        self.manifest_written = False  # by this run: the first commit rewrites any earlier manifest first
        self.crash_after = os.environ.get("FINEWEB_CRASH_AFTER_SHARDS")  # test hook, see _commit

    # -- resuming

    def load(self):
        """Reads the manifest of an earlier run; returns the document to start from (0 if none)."""
        if not os.path.exists(self.manifest_path):
            strays = sorted(glob.glob(os.path.join(glob.escape(self.local_dir), f"{self.prefix}_*.npy")))
            if strays:
                raise FinewebError(f"{self.local_dir} already holds shards ({os.path.basename(strays[0])}, ...) but "
                                   f"no {MANIFEST}, so they were not made by this script; pass another "
                                   "--local-dir or delete them")
            return 0
        try:
            with open(self.manifest_path) as f:
                manifest = json.load(f)
            old_config, shards = manifest["config"], manifest["shards"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise FinewebError(f"cannot read {self.manifest_path} ({e}); delete {self.local_dir} to start over")
        if (wherever(old_config) != wherever(self.config)
                and any(os.path.exists(os.path.join(self.local_dir, s["file"])) for s in shards)):
            raise FinewebError(f"{self.local_dir} holds shards made with other arguments "
                               f"({config_change(old_config, self.config)}); "
                               "pass another --local-dir, or delete it to start over")
        # keep the longest prefix of shards that are still on disk with their recorded size
        for shard in shards:
            path = os.path.join(self.local_dir, shard["file"])
            if not os.path.exists(path) or os.path.getsize(path) != shard["bytes"]:
                break
            self.shards.append(shard)
        self.complete = manifest.get("complete", False) and len(self.shards) == len(shards)
        if not self.shards:
            return 0
        doc, token = self.shards[-1]["resume_at"]["document"], self.shards[-1]["resume_at"]["token"]
        self.docs_started, self.doc_tokens_written, self.skip = doc + 1, token, token
        return doc

    # -- writing

    def add(self, tokens):
        """Write tokens into the shards; returns how many were new (a resumed stream's first are not)."""
        if self.skip:  # the head of the document the last complete shard ends in
            n = min(self.skip, len(tokens))
            tokens, self.skip = tokens[n:], self.skip - n
        new = len(tokens)
        while len(tokens):
            if self.buf is None:
                self.buf = np.empty(self.shard_size, dtype=np.uint16)
            piece = tokens[:self.shard_size - self.fill]
            tokens = tokens[len(piece):]
            self.buf[self.fill:self.fill + len(piece)] = piece
            self.fill += len(piece)
            starts = np.flatnonzero(piece == EOT)
            self.text_tokens += len(piece) - len(starts)
            if len(starts):
                self.docs_started += len(starts)
                self.doc_tokens_written = len(piece) - starts[-1]
            else:
                self.doc_tokens_written += len(piece)
            if self.fill == self.shard_size:
                self._commit()
        return new

    def finish(self):
        """Writes the last, partial shard and marks the manifest complete."""
        if self.docs_started == 0:
            raise FinewebError("the input has no documents")
        if self.text_tokens == 0 and not self.shards:
            n = self.docs_started
            raise FinewebError("the input's one document is empty" if n == 1 else
                               f"the input's {n:,} documents are all empty")
        if self.fill:
            self._commit()
        self.complete = True
        self._write_manifest()

    def _commit(self):
        index = len(self.shards)
        name = shard_name(self.prefix, index)
        path = os.path.join(self.local_dir, name)
        tokens = self.buf[:self.fill]
        os.makedirs(self.local_dir, exist_ok=True)
        if self.crash_after is not None and index == int(self.crash_after):
            # tests simulate a kill at the worst moment: in the middle of writing a shard
            with open(path + ".tmp", "wb") as f:
                np.save(f, tokens)
                f.truncate(f.tell() // 2)
            os._exit(137)
        if not self.manifest_written:
            # before the first shard of this run: shards on disk always come with the arguments that made
            # them, and an earlier manifest's list is cut to the intact shards this run continues from
            self._write_manifest()
        # np.save into a real file writes the data with ndarray.tofile, which lets a short write (a full disk)
        # pass silently; through an object that only has .write, every chunk's write is checked
        atomic_write(path, lambda f: np.save(_WriteOnly(f), tokens))
        self.shards.append(dict(
            file=name, split="val" if index == 0 else "train", tokens=int(self.fill),
            documents=int(np.count_nonzero(tokens == EOT)),  # documents that start in this shard
            bytes=os.path.getsize(path),
            resume_at=dict(document=int(self.docs_started - 1), token=int(self.doc_tokens_written)),
        ))
        self._write_manifest()
        self.fill = 0

    def _write_manifest(self):
        manifest = dict(
            config=self.config, complete=self.complete,
            documents=sum(s["documents"] for s in self.shards), tokens=sum(s["tokens"] for s in self.shards),
            shards=self.shards,
        )
        data = (json.dumps(manifest, indent=1) + "\n").encode()
        atomic_write(self.manifest_path, lambda f: f.write(data))
        self.manifest_written = True


def write_shards(documents, local_dir, shard_size=10**8, num_proc=None, *, config=None, total_documents=None,
                 start_method=None, prefix=PREFIX, progress=True):
    """Tokenizes documents into LOCAL_DIR/PREFIX_{split}_{index:06d}.npy shards; returns a summary dict.

    documents: an iterable of strings, or a function start -> iterable of the strings from document
    `start` on (a resumed run then seeks instead of reading past what is done, and a finished one
    never opens the input). total_documents: their number if known (or a function returning it,
    called after documents), for the progress bar's ETA. config: what made the documents (dataset,
    files, ...); a rerun resumes only into a folder whose manifest has the same config and refuses
    otherwise, rather than mixing data.
    """
    if shard_size < 1:
        raise FinewebError(f"the shard size must be at least 1 token (got {shard_size})")
    num_proc = num_proc or available_cpus()
    enc = get_encoding()  # fail here, in one process, if the tokenizer files are missing
    check_tiktoken(enc)
    assert enc.n_vocab <= 2**16, "uint16 shards need a vocabulary of at most 65,536 tokens"
    config = dict(config or {}, tokenizer="gpt2", shard_size=shard_size, prefix=prefix)
    created = not os.path.isdir(local_dir)
    os.makedirs(local_dir, exist_ok=True)  # now, to lock it before its manifest is read
    try:
        with folder_lock(local_dir):
            return _write_shards(documents, local_dir, shard_size, num_proc, config, total_documents, start_method,
                                 prefix, progress)
    except BaseException:
        if created:  # a run that failed before its first shard (the hub unreachable) leaves no empty folder
            with contextlib.suppress(OSError):
                os.rmdir(local_dir)  # only ever an empty one
        raise


def _write_shards(documents, local_dir, shard_size, num_proc, config, total_documents, start_method, prefix,
                  progress):
    writer = ShardWriter(local_dir, shard_size, config, prefix)
    start = writer.load()
    reused = len(writer.shards)
    done_tokens = sum(s["tokens"] for s in writer.shards)
    t0 = time.time()
    if not writer.complete:
        # the workers start before the input is opened: forking a process after pyarrow has started
        # its reader threads is how fork-based pools deadlock, and the workers need none of it
        with worker_pool(num_proc, start_method) as pool:
            texts = documents(start) if callable(documents) else _skip(documents, start)
            total = total_documents() if callable(total_documents) else total_documents
            docs_done = start
            with tqdm(total=None, initial=done_tokens, unit="tok", unit_scale=True, dynamic_ncols=True,
                      desc="tokens", disable=not progress) as bar:
                # two tasks per worker in flight: one running and one queued, so no worker waits on the reader
                for n, tokens in tokenize_documents(_task_batches(texts, start), pool, window=2 * num_proc):
                    bar.update(writer.add(tokens))  # not the resumed document's head, already in a shard
                    docs_done += n
                    if total:  # the token total is not known in advance: extrapolate it from the documents
                        bar.total = max(int(bar.n * total / docs_done), bar.n)
                writer.finish()
                bar.total = bar.n
    seconds = time.time() - t0
    tokens = sum(s["tokens"] for s in writer.shards)
    return dict(documents=sum(s["documents"] for s in writer.shards), tokens=tokens, shards=len(writer.shards),
                reused_shards=reused, new_tokens=tokens - done_tokens, seconds=seconds,
                files=[os.path.join(local_dir, s["file"]) for s in writer.shards])


def _skip(documents, n):
    it = iter(documents)
    for _ in range(n):
        next(it, None)
    return it


# -----------------------------------------------------------------------------
# reading the input with HF datasets

def data_extension(path):
    """The extension that says what a file holds: '.jsonl' for docs.jsonl and docs.jsonl.gz."""
    stem, ext = os.path.splitext(path.lower())
    return os.path.splitext(stem)[1] if ext == ".gz" else ext


def file_kind(path):
    """How we read path: its data_extension, or '' for a compressed kind we do not read (a gzipped parquet)."""
    ext = data_extension(path)
    return ext if ext in GZIPPED or not path.lower().endswith(".gz") else ""


def resolve_files(patterns):
    """Expands globs (sorted, so that the order of documents does not depend on the file system)."""
    files, given = [], {}  # given: realpath -> (path, pattern) of each file taken
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        # a file named like a pattern (data[1].txt) is that file
        literal = not glob.has_magic(pattern) or os.path.exists(pattern)
        if literal and os.path.isdir(pattern):  # it said "no file matches" of a folder that is right there
            raise FinewebError(folder_given(pattern))
        matches = [pattern] if literal else sorted(glob.glob(pattern, recursive=True))
        matches = [m for m in matches if not os.path.isdir(m)]
        if not matches or not os.path.exists(matches[0]):
            raise FinewebError(f"--files: no file matches {pattern}")
        for path in map(os.path.abspath, matches):
            # a file taken twice (a pattern and a name, a link) was tokenized twice in silence: shard 0 (val) is
            # cut from the first documents, and their second copy went into train shards
            real = os.path.realpath(path)
            if real in given:
                first, by = given[real]
                how = (f" ({path} is the same file)" if path != first else
                       f" ({by} and {pattern} both match it)" if by != pattern else "")
                raise FinewebError(f"--files takes {first} twice{how}: its documents would be tokenized twice, "
                                   "those of the val shard into train shards too; give each file once")
            given[real] = path, pattern
            files.append(path)
    kinds = {FILE_BUILDERS.get(file_kind(f)) for f in files}
    if None in kinds:
        odd = next(f for f in files if FILE_BUILDERS.get(file_kind(f)) is None)
        raise FinewebError(f"--files: cannot read {odd}: give .txt (one document per file), "
                           ".jsonl/.json (one document per record), either of them gzipped (.gz), "
                           "or .parquet files")
    if len(kinds) > 1:
        raise FinewebError(f"--files mixes {' and '.join(sorted(kinds))} files; tokenize one kind per run "
                           "(or convert them to one)")
    return files, kinds.pop()


def folder_given(folder):
    """The error for a folder given to --files: a pattern for the kind of file --files reads that it holds most of."""
    if any(os.path.exists(os.path.join(folder, f)) for f in ("state.json", "dataset_dict.json")):
        return f"--files: {folder} is a folder written by save_to_disk; read it with --dataset {shlex.quote(folder)}"
    found = [f for f in folder_files(folder) if FILE_BUILDERS.get(file_kind(f))]
    if not found:
        return (f"--files: {folder} is a folder, with no file in it that --files reads (.txt, .jsonl/.json, either "
                "gzipped, or .parquet)")

    def suffix(f):  # .jsonl, .jsonl.gz: as the file is named (a pattern is case-sensitive)
        return f[-len(data_extension(f) + ".gz" * f.lower().endswith(".gz")):]
    common = Counter(map(suffix, found)).most_common(1)[0][0]
    nested = any(os.sep in os.path.relpath(f, folder) for f in found if suffix(f) == common)
    pattern = os.path.join(glob.escape(folder), "**" if nested else "", "*" + common)  # a folder named data[1] too
    return (f"--files: {folder} is a folder; name its files with a pattern, quoted so that the shell leaves it to "
            f"fineweb.py: --files {shlex.quote(pattern)}")


# the extensions of datasets' own file formats (a README.md or LICENSE beside them is not read)
DATA_EXTENSIONS = {".txt", ".json", ".jsonl", ".parquet", ".csv", ".tsv", ".arrow"}


def folder_files(folder):
    """The files under a local dataset folder, hidden ones aside, sorted."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, n) for n in sorted(names) if not n.startswith(".")]
    return found


def check_folder_read_whole(datasets, folder, name):
    """datasets infers which of a folder's files to read: files of one kind only (the most common one), and once
    some names say a split (web_train.jsonl), only files named for a split. Another data file beside them would
    be left out without a word: an error instead. A README.md that declares configs names the files itself."""
    readme = os.path.join(folder, "README.md")
    if os.path.isfile(readme):
        from huggingface_hub import DatasetCard
        if DatasetCard.load(readme).data.get("configs"):
            return
    data_files = datasets.load_dataset_builder(folder, name=name).config.data_files or {}
    read = {os.path.realpath(f) for files in data_files.values() for f in files}
    unread = [f for f in folder_files(folder)
              if data_extension(f) in DATA_EXTENSIONS and os.path.realpath(f) not in read]
    if unread:
        more = f" and {len(unread) - 1} more" if len(unread) > 1 else ""
        raise FinewebError(f"--dataset {folder}: datasets would not read {unread[0]}{more} (it reads one kind of "
                           "file, and when some file names say a split, only those); rename it, move it out, or "
                           "name the files to read with --files")


def file_record(path):
    # size and mtime: a file edited between runs must not be resumed into shards of its old text
    return dict(path=path, bytes=os.path.getsize(path), mtime_ns=os.stat(path).st_mtime_ns)


def open_dataset(datasets, dataset, remote_name, files, streaming, cache_dir, num_proc):
    """The input as datasets opens it: --files, a folder from save_to_disk, a folder of data files or a hub id."""
    # datasets' json builder logs "Failed to load JSON from file ..." before ours, which names the file and line
    # (explain_read_error), for --files and for a folder of .jsonl alike; the error itself is raised all the same
    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)
    if files:
        paths, builder = resolve_files(files)
        kwargs = dict(sample_by="document") if builder == "text" else {}  # .txt: a file is a document
        if builder == "parquet":  # else datasets takes its batch size from row group 0: 0 in an empty file
            kwargs = dict(batch_size=READ_BATCH)
        # datasets reads data_files as patterns too: escaped, a file named like one (data[1].txt) is that file
        ds = datasets.load_dataset(builder, data_files=[glob.escape(p) for p in paths], split="train",
                                   streaming=streaming, cache_dir=cache_dir, **kwargs)
    elif os.path.isdir(dataset) and any(os.path.exists(os.path.join(dataset, f)) for f in
                                        ("state.json", "dataset_dict.json")):
        ds = datasets.load_from_disk(dataset)  # a folder written by Dataset.save_to_disk
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise FinewebError(f"{dataset} has no train split (it has {', '.join(ds)})")
            ds = ds["train"]
        if streaming:
            ds = ds.to_iterable_dataset()
    elif os.path.isdir(dataset):  # a local folder of data files
        if glob.has_magic(os.path.abspath(dataset)):  # datasets finds the folder's files with glob patterns
            raise FinewebError(f"--dataset {dataset}: datasets would read its path {os.path.abspath(dataset)} as a "
                               "glob pattern (it holds [, * or ?), which matches other folders or none; rename "
                               "it, or name its files with --files")
        check_folder_read_whole(datasets, dataset, remote_name)
        # the data files that datasets would read: .txt ones alone make it use its text builder
        kinds = {data_extension(f) for f in folder_files(dataset)} & DATA_EXTENSIONS
        kwargs = dict(sample_by="document") if kinds == {".txt"} else {}  # as with --files: a .txt file is a document
        ds = datasets.load_dataset(dataset, name=remote_name, split="train", streaming=streaming,
                                   cache_dir=cache_dir, **kwargs)
    elif dataset.startswith(("/", "./", "../", "~")):  # meant as a path, not a hub id
        raise FinewebError(f"--dataset: there is no folder {dataset}")
    else:  # a hub id; its parquet files are converted to Arrow num_proc at a time
        ds = datasets.load_dataset(dataset, name=remote_name, split="train", streaming=streaming,
                                   cache_dir=cache_dir, **({} if streaming else dict(num_proc=num_proc)))
    return ds


def load_documents(dataset, remote_name, files, text_column, streaming, cache_dir=None, num_proc=None,
                   progress=True):
    """Opens the input as an HF (Iterable)Dataset; returns (dataset, number of documents or None)."""
    import datasets  # imported here: it takes ~1 s, and workers never need it

    with datasets_progress(progress):
        try:
            ds = open_dataset(datasets, dataset, remote_name, files, streaming, cache_dir, num_proc)
        except FinewebError:
            raise
        except StopIteration:  # datasets' json builder on a file without records
            raise FinewebError("the input has no documents")
        except (datasets.exceptions.DatasetGenerationError, UnicodeDecodeError, *GZIP_ERRORS) as e:
            raise explain_read_error(e, input_files(dataset, files))
        # RuntimeError: a folder with a loading script (name/name.py), which datasets 4 no longer runs
        except (OSError, ValueError, RuntimeError, datasets.exceptions.DatasetsError) as e:  # ConnectionError, HTTP
            what = (", ".join(files) if files else
                    f"dataset {dataset!r}" + (f" ({remote_name})" if remote_name else ""))
            raise FinewebError(f"cannot load {what}: {_one_line(e)}" + (
                "" if files else "; without the Hugging Face hub, tokenize local files with --files"))

    columns = ds.column_names
    if columns is not None and text_column not in columns:
        raise FinewebError(f"the input has no column {text_column!r} (it has {', '.join(columns)}); "
                           "choose one with --text-column")
    if columns is not None and len(columns) > 1:
        ds = ds.select_columns([text_column])  # reading only the text column skips decoding urls, scores, ...
    n = len(ds) if isinstance(ds, datasets.Dataset) else None
    if n is None and ds.info.splits and "train" in ds.info.splits:
        n = ds.info.splits["train"].num_examples or None
    return ds, n


def iter_texts(ds, text_column, paths=(), start=0):
    """The documents of ds from index start on, read in Arrow batches; paths: its files, to name a broken one."""
    import datasets

    if start:
        ds = ds.skip(start)
    try:  # a streamed file is opened, and fails, only here
        for batch in ds.iter(batch_size=READ_BATCH):
            if text_column not in batch:
                raise FinewebError(f"the input has no column {text_column!r} (it has {', '.join(batch)}); "
                                   "choose one with --text-column")
            yield from batch[text_column]
    # pyarrow's ArrowInvalid is a ValueError: a broken json/parquet file
    except (UnicodeDecodeError, datasets.exceptions.DatasetGenerationError, OSError, ValueError, *GZIP_ERRORS) as e:
        raise explain_read_error(e, paths)


@contextlib.contextmanager
def datasets_progress(shown):
    """--quiet: no progress bars from datasets and the hub either, nor the hub client's warnings as it retries
    (offline, 11 lines over ~25 s before the error line that says what failed). These switches are
    process-wide, so they are put back afterwards (demo.py and the tests go on in this process)."""
    import datasets
    import huggingface_hub.utils as hub

    turned_off = [lib for lib in (datasets.utils, hub) if not shown and not lib.are_progress_bars_disabled()]
    for lib in turned_off:
        lib.disable_progress_bars()
    retries = logging.getLogger("huggingface_hub.utils._http")  # "Retrying in 8s", "... thrown while requesting"
    level = retries.level
    if not shown:
        retries.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lib in turned_off:
            lib.enable_progress_bars()
        retries.setLevel(level)


# -----------------------------------------------------------------------------
# a broken input file, named: datasets' errors say neither which file nor which line

GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)  # not gzip at all; cut short; corrupt inside


def open_input(path, mode="rb", **kwargs):
    """An input file for our own checks (explain_read_error), decompressed as datasets reads it."""
    return (gzip.open if path.lower().endswith(".gz") else open)(path, mode, **kwargs)


def input_files(dataset, files):
    """The files the input is read from, where we know them: --files, or a local folder of data files."""
    if files:
        return resolve_files(files)[0]
    if dataset and os.path.isdir(dataset):
        found = glob.glob(os.path.join(glob.escape(dataset), "**", "*"), recursive=True)
        return sorted(os.path.abspath(f) for f in found if file_kind(f) in FILE_BUILDERS)
    return []


def explain_read_error(e, paths):
    """One line for a failure to read the input, naming the file that is not UTF-8 or not JSON: datasets'
    exceptions do not say which file it was (and pyarrow's "in row N" counts rows of a block, not lines)."""
    cause = e if isinstance(e, (UnicodeDecodeError, *GZIP_ERRORS)) else (e.__cause__ or e)
    if isinstance(cause, GZIP_ERRORS):
        for path in paths:
            if path.lower().endswith(".gz") and (bad := gzip_problem(path)):
                return FinewebError(f"{path} is not a whole gzip file ({bad}); compress it again or leave it out")
    if isinstance(cause, UnicodeDecodeError) or "utf-8" in str(cause).lower():  # ujson: "Invalid octet in UTF-8"
        for path in paths:
            if FILE_BUILDERS[file_kind(path)] == "parquet":
                continue  # binary: its strings are checked by pyarrow, which names no file either
            bad = first_non_utf8(path)
            if bad:
                where = " of its decompressed text" if path.lower().endswith(".gz") else ""
                return FinewebError(f"{path} is not UTF-8 text (byte 0x{bad[1]:02x} at offset {bad[0]}{where}); "
                                    "re-encode it or leave it out")
        if isinstance(cause, UnicodeDecodeError):
            return FinewebError(f"the input is not UTF-8 text ({cause.reason} at offset {cause.start})")
    # pyarrow's "JSON parse error: ..." and ujson's messages differ by the file's layout: parse the files ourselves
    for path in paths:
        if FILE_BUILDERS[file_kind(path)] == "json" and (bad := first_bad_json(path)):
            line, column, reason = bad
            return FinewebError(f"{path} line {line} is not valid JSON ({reason.removesuffix(' at')} at column "
                                f"{column}); fix it or leave the file out")
    return FinewebError(f"cannot read the input: {_one_line(cause)}")


def first_bad_json(path):
    """(line, column, reason) of the first line of a JSON-lines file that does not parse, or None. datasets also reads
    a .json file that is one document (an array of records, say): a file whose first line does not parse is
    read as one, and its own error, if any, is reported."""
    first = None
    try:
        with open_input(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                first = first or n
                try:
                    json.loads(line.rstrip("\r\n"))  # the column then counts within this line
                except json.JSONDecodeError as e:
                    if n > first:
                        return n, e.colno, e.msg
                    break
            else:
                return None
        with open_input(path, "rt", encoding="utf-8") as f:
            json.load(f)
    except json.JSONDecodeError as e:
        return e.lineno, e.colno, e.msg
    except (UnicodeDecodeError, OSError):  # not UTF-8 (named by explain_read_error), or unreadable
        return None
    return None


def gzip_problem(path):
    """Why path does not decompress to its end (one line), or None: read through, as only that finds a file cut short."""
    try:
        with gzip.open(path) as f:
            while f.read(1 << 20):
                pass
    except (*GZIP_ERRORS, OSError) as e:
        return _one_line(e)
    return None


def check_no_empty_gzip(paths):
    """No gzip file has 0 bytes (its header and trailer alone take 18), yet gzip, and so datasets, reads one
    as empty text: it is a download or a copy that never got going, and would pass silently."""
    for path in paths:
        if path.lower().endswith(".gz") and os.path.getsize(path) == 0:
            raise FinewebError(f"{path} is empty (0 bytes), so not a gzip file (a download or copy that failed?); "
                               "compress it again or leave it out")


def first_non_utf8(path, chunk=1 << 20):
    """(offset, byte) of the first byte of path that is not UTF-8, or None; reads a chunk at a time, as
    a corpus file can be larger than memory."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open_input(path) as f:
        while True:
            data = f.read(chunk)
            held = len(decoder.getstate()[0])  # the start of a character cut by the previous chunk
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as bad:
                return offset - held + bad.start, bad.object[bad.start]
            if not data:
                return None
            offset += len(data)


def _one_line(e):
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) < 400 else text[:400] + " ..."


# -----------------------------------------------------------------------------
# command line

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_argument_group("input (default: the FineWeb-Edu sample of the lecture)")
    src.add_argument("--dataset", default=None,
                     help="a Hugging Face dataset id, or a local folder that datasets.load_dataset or "
                          f"load_from_disk reads (default: {DEFAULT_DATASET})")
    src.add_argument("--remote-name", default=None,
                     help="the dataset's subset (config name): sample-10BT, sample-100BT, sample-350BT, ... "
                          f"(default: {DEFAULT_REMOTE_NAME} for {DEFAULT_DATASET}, none for other datasets)")
    src.add_argument("--files", nargs="+", metavar="PATH",
                     help="local files or globs instead of --dataset: .txt (one document per file, UTF-8, "
                          "line ends read as \\n), .jsonl/.json (one document per record), either gzipped (.gz), "
                          "or .parquet; read in the order given, each glob sorted")
    src.add_argument("--text-column", default="text", help="the column that holds the documents (default: %(default)s)")
    src.add_argument("--streaming", action="store_true",
                     help="read the dataset as it downloads instead of first converting all of it into the "
                          "HF cache (sample-10BT is ~28 GB of parquet, by the hub's listing)")
    src.add_argument("--cache-dir", default=None,
                     help="where datasets keeps downloads and Arrow files (default: $HF_DATASETS_CACHE or "
                          "~/.cache/huggingface/datasets)")
    out = parser.add_argument_group("output")
    out.add_argument("--local-dir", default=LOCAL_DIR,
                     help="folder for the shards and manifest.json (default: %(default)s)")
    out.add_argument("--shard-size", default=str(10**8),
                     help="tokens per shard, a whole number such as 100000000 or 1e8; 1e8 = 200 MB of uint16 "
                          "(default: 1e8)")
    run = parser.add_argument_group("run")
    run.add_argument("--num-proc", type=int, default=available_cpus(),
                     help="tokenizer processes (default: all %(default)s cores; the parent only reads and writes)")
    run.add_argument("--start-method", choices=["fork", "spawn", "forkserver"], default=None,
                     help="multiprocessing start method (default: the platform's; spawn for fork where this "
                          "process already runs other threads, as a Jupyter kernel does)")
    run.add_argument("--quiet", action="store_true",
                     help="no progress bars (ours, nor those of datasets and the hub), nor the hub client's "
                          "warnings as it retries")
    return parser.parse_args(argv)


def check_args(args):
    """Completes the defaults that depend on other arguments and rejects bad values, as FinewebError."""
    if args.files and (args.dataset or args.remote_name):
        raise FinewebError("--files reads local files: give it without --dataset and --remote-name")
    args.dataset = args.dataset or DEFAULT_DATASET
    if args.dataset.lower() == DEFAULT_DATASET.lower() and args.remote_name is None:
        # named or not, FineWeb-Edu means the lecture's 10B sample: its default config is all 1.3T tokens
        args.remote_name = DEFAULT_REMOTE_NAME
    args.shard_size = parse_shard_size(args.shard_size)
    if args.num_proc is not None and args.num_proc < 1:
        raise FinewebError(f"--num-proc must be at least 1 (got {args.num_proc})")
    check_local_dir(args.local_dir)
    if args.cache_dir:  # datasets makes it only when it opens the input, and its error there named the input
        check_local_dir(args.cache_dir, flag="--cache-dir")
    if not args.files and os.path.isdir(args.dataset):
        inside = os.path.relpath(os.path.abspath(args.local_dir), os.path.abspath(args.dataset))
        if not (inside == os.pardir or inside.startswith(os.pardir + os.sep)):  # not above or beside it
            raise FinewebError(f"--local-dir {args.local_dir} is inside the --dataset folder {args.dataset}: its "
                               "shards and manifest would be read as input; put them in another folder")
    return args


def check_local_dir(local_dir, flag="--local-dir"):
    """Now, not at the first shard's write, after a download of ~28 GB and 100M tokens of work: can the shards go
    in local_dir? (write_shards creates it, once the arguments are checked.) flag: its name on the command line."""
    if not local_dir:
        raise FinewebError(f"{flag} is empty (an unset variable?): name the folder for the shards")
    existing = os.path.abspath(local_dir)
    while not os.path.exists(existing):
        if os.path.islink(existing):  # exists() is False for a link to nothing, and makedirs fails on it
            raise FinewebError(f"{flag} {local_dir}: {existing} is a link to {os.readlink(existing)}, which "
                               "does not exist")
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise FinewebError(f"{flag} {local_dir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FinewebError(f"{flag} {local_dir}: this user may not write in {existing}")


def parse_shard_size(text, flag="--shard-size"):
    """--shard-size as an int: 100000000, 100_000_000 and 1e8 alike; at most what fits in this machine's memory,
    where a shard is built as one uint16 array. flag: the option the error names (a benchmark's shard size)."""
    try:
        size = int(text)
    except ValueError:
        try:
            size = float(text)
        except ValueError:
            size = None
        size = int(size) if size is not None and size.is_integer() else None  # nan and inf are not integers
    limit = max_shard_size()
    if size is None or not 1 <= size <= limit:
        raise FinewebError(f"{flag} must be a whole number of tokens from 1 to {limit:,} (a shard is built "
                           f"in memory, 2 bytes a token), got {text}")
    return size


def max_shard_size():
    """Tokens of a uint16 array as large as this machine's memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): numpy's own limit on an array's length
        return np.iinfo(np.intp).max // 2


def source_config(args):
    """What determines the token stream, recorded in the manifest: a rerun must match it to resume."""
    if args.files:
        files, _ = resolve_files(args.files)
        # a pattern like 'data/**/*.json' around the shards' folder would match its manifest on a rerun
        local = os.path.abspath(args.local_dir) + os.sep
        if inside := next((f for f in files if f.startswith(local)), None):
            raise FinewebError(f"--files takes {inside}, inside --local-dir {args.local_dir}: the shards' folder "
                               "would be read as input; narrow the pattern, or put the shards in another folder")
        check_no_empty_gzip(files)
        return dict(dataset=None, remote_name=None, text_column=args.text_column, files=list(map(file_record, files)))
    if os.path.isdir(args.dataset):  # a local folder: its files too, for the same reason
        dataset = os.path.abspath(args.dataset)
        files = folder_files(dataset)
        check_no_empty_gzip([f for f in files if data_extension(f) in DATA_EXTENSIONS])
        return dict(dataset=dataset, remote_name=args.remote_name, text_column=args.text_column,
                    files=list(map(file_record, files)))
    return dict(dataset=args.dataset, remote_name=args.remote_name, text_column=args.text_column, files=None)


def timing(summary, streaming):
    """The run's time, split so that the tokens/s printed is the tokenizer's and not the network's."""
    s, new, open_seconds = summary["seconds"], summary["new_tokens"], summary["open_seconds"]
    if streaming:  # the download is interleaved with the tokenizing: one figure for both, and it says so
        return f"{s:.1f} s, {new / max(s, 1e-9):,.0f} tokens/s (streamed: the download included)"
    work = max(s - open_seconds, 1e-9)
    return (f"{s:.1f} s: {open_seconds:.1f} s opening the input (any download and Arrow conversion), then "
            f"{work:.1f} s tokenizing and writing at {new / work:,.0f} tokens/s")


def sigterm_as_interrupt():
    """From now on SIGTERM raises Terminated in the main thread; returns the function that undoes it."""
    def terminated(signum, frame):
        raise Terminated()
    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread, where no handler can be set
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def main(argv=None):
    """The command line; returns write_shards' summary. User errors: one `error:` line on stderr, exit 1."""
    args = parse_args(argv)
    restore_sigterm = sigterm_as_interrupt()
    try:
        check_args(args)
        config = source_config(args)
        source = (f"{len(config['files'])} local file{'s' * (len(config['files']) > 1)}" if args.files else
                  args.dataset + (f" ({args.remote_name})" if args.remote_name else ""))
        print(f"fineweb: {source} -> {args.local_dir}/{PREFIX}_*.npy, {args.shard_size:,} tokens a shard, "
              f"{args.num_proc} process{'es' * (args.num_proc != 1)}", flush=True)
        opened = {}

        def documents(start):  # opened only when shards are left to write
            t = time.time()
            ds, opened["n"] = load_documents(args.dataset, args.remote_name, args.files, args.text_column,
                                             args.streaming, args.cache_dir, args.num_proc, progress=not args.quiet)
            opened["seconds"] = time.time() - t  # a download happens here, unless streaming
            return iter_texts(ds, args.text_column, input_files(args.dataset, args.files), start)

        summary = write_shards(documents, args.local_dir, args.shard_size, args.num_proc, config=config,
                               total_documents=lambda: opened["n"], start_method=args.start_method,
                               progress=not args.quiet)
    except (FinewebError, TokenizerUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except OSError as e:  # a full disk, a folder we may not write to: the environment, not this code
        print(f"error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as e:
        print(f"error: {'terminated' if isinstance(e, Terminated) else 'interrupted'}; run the same command again "
              "to carry on from the last complete shard", file=sys.stderr)
        sys.exit(128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT))  # as the shell counts
    finally:
        restore_sigterm()
    s = summary
    s["open_seconds"] = opened.get("seconds", 0.0)
    shards = (f"{s['shards']} shard{'' if s['shards'] == 1 else 's'} ({min(s['shards'], 1)} val, "
              f"{max(s['shards'] - 1, 0)} train")
    if s["new_tokens"] == 0:
        print(f"fineweb: nothing to do, {args.local_dir} already holds all {shards}): "
              f"{s['documents']:,} documents, {s['tokens']:,} tokens")
    else:
        print(f"fineweb: {s['documents']:,} documents, {s['tokens']:,} tokens, {shards}"
              + (f", {s['reused_shards']} kept from an earlier run" if s["reused_shards"] else "")
              + f") in {timing(s, args.streaming)} -> {args.local_dir}")
    if s["shards"] == 1:
        print("note: everything fit in the val shard; use a smaller --shard-size to get train shards")
    return summary


if __name__ == "__main__":
    main()
