"""Shared fixtures of the end-to-end tests of dicomsort.

Run with Debian's interpreter (python3-pytest, python3-pydicom):

    DICOMSORT_BIN=build/dicomsort /usr/bin/python3 -m pytest -q tests/e2e

ctest sets DICOMSORT_BIN, DICOMSORTD_BIN, DICOMSORT_BUILD_DIR and
DICOMSORT_SOURCE_DIR. Without a dicomsort binary the tests that need it skip
and say why. pydicom is the independent reader: inputs are written with it
(tests/tools/gendicom.py), run through the binary and read back with it.
"""

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
TOOLS = REPO / "tests" / "tools"
if str(TOOLS) not in sys.path:
    sys.path.insert(0, str(TOOLS))

from binaries import built_binary  # noqa: E402 (tests/tools, on the path above)

# Under ASan a run is a few times slower; no single run of these tests
# comes near this, so hitting it means a hang (a FIFO read, a deadlock).
RUN_TIMEOUT = 60


@pytest.fixture(scope="session")
def dicomsort_bin():
    """Absolute path of the dicomsort binary under test."""
    return built_binary("dicomsort")


@pytest.fixture
def run_dicomsort(dicomsort_bin, tmp_path):
    """run_dicomsort(*args, cwd=tmp_path, timeout=RUN_TIMEOUT) runs the
    binary with str(arg) for each arg and returns the CompletedProcess
    (text stdout/stderr). The working directory defaults to the test's
    tmp_path, so ./missing_patient_ids.log lands there."""
    def run(*args, cwd=None, timeout=RUN_TIMEOUT, env=None):
        proc = subprocess.run([dicomsort_bin] + [str(a) for a in args],
                              cwd=str(cwd or tmp_path), capture_output=True,
                              text=True, timeout=timeout, env=env)
        check_sanitizers(proc.stderr)
        return proc
    return run


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                   "runtime error:", "ThreadSanitizer")


def check_sanitizers(stderr):
    """ASan exits 1 like a rejected input would: look at what it said."""
    for mark in SANITIZER_MARKS:
        if mark in stderr:
            pytest.fail("sanitizer report from dicomsort:\n" + stderr)


@pytest.fixture(scope="session")
def sanitizer_check():
    """check_sanitizers(stderr), for tests that start the binary
    themselves."""
    return check_sanitizers


@pytest.fixture(scope="session")
def gen():
    """The tests/tools/gendicom.py module."""
    pytest.importorskip("pydicom")
    import gendicom
    return gendicom
