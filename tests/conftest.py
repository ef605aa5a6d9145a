import logging
import os
import tempfile

import pytest
import torch

# Kernels compiled by tests go to a scratch cache, never the user's.
os.environ.setdefault("FUSEC_CACHE_DIR", tempfile.mkdtemp(prefix="fusec-test-cache-"))
# Tests want fusec's own errors raised, not hidden behind a fallback to torch: always,
# whatever the shell running them has set.
os.environ["FUSEC_STRICT"] = "1"
# CPU graphs run the generated kernels (Triton's interpreter): codegen is tested without a GPU.
os.environ["FUSEC_CPU"] = "interpret"

from fusec import native
from fusec.options import Options

# Launchers read their inputs with the C++ head (fusec/native.py), built into the scratch cache now,
# not part-way through the run: every test runs through the head its users get. Tests of the
# Python head ask for it (`native=False`).
native.wait(Options.from_user().cache_dir)


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


class _ThroughTorch(logging.Handler):
    """Keeps every warning of the fusec logger that says something runs through torch."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "through torch" in message:
            self.messages.append(message)


@pytest.fixture(autouse=True)
def _no_silent_fallback(request):
    """A test passes only if fusec ran it: one during which something ran through torch
    fails, unless it is marked `fallback_expected` (it tests the fallback itself)."""
    logger = logging.getLogger("fusec")
    handler = _ThroughTorch()
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    if handler.messages and request.node.get_closest_marker("fallback_expected") is None:
        pytest.fail("ran through torch (mark the test fallback_expected if it means to):\n"
                    + "\n".join(handler.messages), pytrace=False)
