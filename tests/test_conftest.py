"""The suite's own guard: a test during which fusec fell back to torch fails unless it says it expects that."""

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

INNER = '''
import logging
import pytest

def fall_back():
    logging.getLogger("fusec").warning("fusec: inference_0 runs through torch: internal error")

def test_silent():
    fall_back()

@pytest.mark.fallback_expected
def test_expected():
    fall_back()

def test_other_warning():
    logging.getLogger("fusec").warning("fusec: something else")
'''


@pytest.mark.fallback_expected  # the inner tests log on the same logger, in this process
def test_a_fallback_fails_the_test_unless_marked(pytester):
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makeini("[pytest]\nmarkers =\n    fallback_expected: expects a fallback\n")
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    # the guard runs after the test body: test_silent passes its call, then errors at teardown
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(["*ERROR*test_silent*ran through torch*"])
    result.stdout.fnmatch_lines(["fusec: inference_0 runs through torch: internal error"])
