"""
Extra memory per rank of reading GPT-2 batches from one large shard: DataLoaderLite against the
lecture's loader, which turns the whole shard into an int64 tensor.

    python benchmarks/loader_memory_bench.py                        # 100M-token shard (200 MB), B=64, T=1024
    python benchmarks/loader_memory_bench.py --tokens 20_000_000    # a smaller shard: DataLoaderLite stays flat

It writes one shard of random uint16 tokens to a temp folder (deleted after), then, in a fresh Python
process per loader, reads every batch of it once. What is measured, from /proc/self/status (Linux):
peak RSS increase = VmHWM at the end minus VmRSS before the loader was made, with the high-water mark
reset (/proc/self/clear_refs) after the imports, so torch's own import peak does not hide it; RSS
counts anonymous memory (the process's own arrays) and file-backed pages (memory-mapped shard pages),
and both parts are also reported at the end. Three loaders:
    lecture:         np.load the shard, .astype(int32), torch.tensor(dtype=long); batches are views
    mmap slices:     one long-lived np.load(mmap_mode="r"), each B*T+1 slice converted to int64
    DataLoaderLite:  this repo's loader (a positioned read of each B*T+1 slice)
One JSON line of results is appended to benchmarks/results.jsonl.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADERS = ("lecture", "mmap slices", "DataLoaderLite")


def proc_status_kb():
    with open("/proc/self/status") as f:
        fields = (line.split(":", 1) for line in f)
        return {key: int(value.split()[0]) for key, value in fields if value.strip().endswith("kB")}


# -----------------------------------------------------------------------------
# one loader, in its own process

def measure(loader, path, B, T):
    import torch  # imported before the baseline: its memory is every loader's, not the loader's
    sys.path.insert(0, ROOT)
    from dataloaderlite import DataLoaderLite

    before = proc_status_kb()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS
    n_batches = (np.lib.format.open_memmap(path, mode="r").shape[0] - 1) // (B * T)
    checksum = 0  # touch every batch, as training would
    if loader == "lecture":
        tokens = np.load(path)
        tokens = tokens.astype(np.int32)
        tokens = torch.tensor(tokens, dtype=torch.long)
        for i in range(n_batches):
            buf = tokens[i * B * T: (i + 1) * B * T + 1]
            x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
            checksum += int(x[0, 0]) + int(y[-1, -1])
    elif loader == "mmap slices":
        tokens = np.load(path, mmap_mode="r")
        for i in range(n_batches):
            buf = torch.from_numpy(tokens[i * B * T: (i + 1) * B * T + 1].astype(np.int64))
            x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
            checksum += int(x[0, 0]) + int(y[-1, -1])
    else:
        dl = DataLoaderLite(B, T, 0, 1, "train", data_root=os.path.dirname(path), verbose=False)
        for _ in range(n_batches):
            x, y = dl.next_batch()
            checksum += int(x[0, 0]) + int(y[-1, -1])
    after = proc_status_kb()
    mb = lambda kb: round(kb * 1024 / 1e6, 1)  # /proc's "kB" are KiB; MB here is 10^6 bytes, as the shard's line
    print(json.dumps(dict(peak_rss_increase_mb=mb(after["VmHWM"] - before["VmRSS"]),
                          anon_increase_at_end_mb=mb(after["RssAnon"] - before["RssAnon"]),
                          file_backed_increase_at_end_mb=mb(after["RssFile"] - before["RssFile"]),
                          batches=n_batches, checksum=checksum)))


# -----------------------------------------------------------------------------

def write_shard(path, n_tokens, seed=0):
    rng = np.random.default_rng(seed)
    shard = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint16, shape=(n_tokens,))
    for start in range(0, n_tokens, 10_000_000):  # in chunks, so the writer stays small too
        stop = min(start + 10_000_000, n_tokens)
        shard[start:stop] = rng.integers(0, 50257, stop - start, dtype=np.uint16)
    shard.flush()
    del shard


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default=str(10**8),
                        help="tokens in the shard: 100000000, 100_000_000 or 1e8 (default: %(default)s, the size "
                             "of fineweb.py's shards)")
    parser.add_argument("-B", type=int, default=64, help="sequences per batch (default: %(default)s, the lecture's)")
    parser.add_argument("-T", type=int, default=1024, help="tokens per sequence (default: %(default)s)")
    parser.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results.jsonl"),
                        help="the JSON-lines file to append to (default: %(default)s)")
    parser.add_argument("--machine", default=f"{os.cpu_count()}-core {platform.machine()} CPU, "
                        f"{round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GB",
                        help="the machine's description for the results file (default: %(default)s)")
    parser.add_argument("--measure", nargs=2, metavar=("LOADER", "SHARD"), help=argparse.SUPPRESS)  # the child
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure[0], args.measure[1], args.B, args.T)

    sys.path.insert(0, ROOT)
    import fineweb  # here, not at the top: the measuring children need none of it
    try:
        args.tokens = fineweb.parse_shard_size(args.tokens, "--tokens")  # the shard size as fineweb.py reads it
    except fineweb.FinewebError as e:
        sys.exit(f"error: {e}")
    if min(args.B, args.T) < 1 or args.tokens < args.B * args.T + 1:
        parser.error(f"need B, T >= 1 and --tokens >= B*T+1 = {args.B * args.T + 1:,} (one batch), "
                     f"got B={args.B}, T={args.T}, --tokens {args.tokens:,}")
    from bench import check_results_file  # here, not at the top: the measuring children need none of bench's imports
    check_results_file(args.results)  # a folder, say, fails now and not after the measuring
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "edufineweb_train_000000.npy")
        write_shard(path, args.tokens)
        print(f"shard: {args.tokens:,} tokens ({os.path.getsize(path) / 1e6:.0f} MB), B={args.B}, T={args.T}")
        for loader in LOADERS:
            out = subprocess.run([sys.executable, __file__, "--measure", loader, path, "-B", str(args.B),
                                  "-T", str(args.T)], check=True, capture_output=True, text=True).stdout
            results[loader] = json.loads(out.strip().splitlines()[-1])
    checksums = {r.pop("checksum") for r in results.values()}
    assert len(checksums) == 1, "the loaders read different tokens"

    print(f"{'loader':<16} {'peak RSS +MB':>12} {'anon +MB':>9} {'file-backed +MB':>16}  (at end)")
    for loader, r in results.items():
        print(f"{loader:<16} {r['peak_rss_increase_mb']:>12.1f} {r['anon_increase_at_end_mb']:>9.1f} "
              f"{r['file_backed_increase_at_end_mb']:>16.1f}")
    record = dict(benchmark="loader_memory", machine=args.machine, date=datetime.date.today().isoformat(),
                  shard_tokens=args.tokens, B=args.B, T=args.T, batches=results["lecture"]["batches"],
                  unit="MB = 10^6 bytes",
                  measured="per fresh process: VmHWM after reading every batch minus VmRSS before making the "
                           "loader (high-water mark reset after imports); anon/file-backed RSS at the end",
                  results=results)
    with open(args.results, "a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {args.results}")


if __name__ == "__main__":
    main()
