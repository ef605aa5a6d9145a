import os
import tempfile

import pytest
import torch

# Kernels compiled by tests go to a scratch cache, never the user's.
os.environ.setdefault("FUSEC_CACHE_DIR", tempfile.mkdtemp(prefix="fusec-test-cache-"))
# Tests want fusec's own errors raised, not hidden behind a fallback to torch.
os.environ.setdefault("FUSEC_STRICT", "1")
os.environ.setdefault("FUSEC_CPU", "interpret")  # CPU graphs run the generated kernels: codegen tested sans GPU


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    # Each test compiles its own functions; reset so Dynamo's per-code caches
    # and recompile limits never leak from one test into the next.
    torch._dynamo.reset()
    yield
