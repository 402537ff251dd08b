"""Fixtures of the forwarding tests (issue 13): real peers on loopback.

Run from the build folder (ctest does this with the label `forward`):

    DICOMSORT_BIN=$PWD/dicomsort DICOMSORTD_BIN=$PWD/dicomsortd \
    DICOMSORT_BUILD_DIR=$PWD DICOMSORT_SOURCE_DIR=$PWD/.. \
        /usr/bin/python3 -m pytest -q -p no:cacheprovider ../tests/forward

Fixtures:
    orthanc          a running Orthanc (tests/forward/orthanc.py), no auth,
                     killed at teardown; orthanc.stop()/start() keep data.
    orthanc_auth     the same with HTTP basic auth; .auth = (user, password).
    make_orthanc     make_orthanc(**kw) -> a started Orthanc with the given
                     options (aet, auth, lua, extra, check_called_aet).
    dicom_files      dicom_files(n, out=None, **kw) -> [Path] of n small
                     real files written by tests/tools/gendicom.py.
Nothing here sends traffic anywhere but 127.0.0.1.
"""

import os
import pathlib
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
TOOLS = HERE.parents[0] / "tools"
for p in (HERE, TOOLS):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import orthanc as orthanc_mod  # noqa: E402

BUILD_DIR = os.environ.get("DICOMSORT_BUILD_DIR", "")


def _sanitized_build():
    cache = pathlib.Path(BUILD_DIR) / "CMakeCache.txt" if BUILD_DIR else None
    try:
        return "DICOMSORT_SANITIZE:BOOL=ON" in cache.read_text()
    except (OSError, AttributeError):
        return False


SANITIZED = _sanitized_build()
# Bounds for waits: a sanitizer build runs about 3x slower, and ctest runs
# the suites side by side on a small machine.
SLOW = 3.0 if SANITIZED else 1.0


@pytest.fixture
def make_orthanc(tmp_path):
    why = orthanc_mod.available()
    if why:
        pytest.skip(why)
    if orthanc_mod.shim_path() is None:
        pytest.skip("DICOMSORT_BUILD_DIR must name a build folder with "
                    "tests/loopback_bind.so (ctest sets it)")
    made = []

    def make(name="orthanc", **kw):
        peer = orthanc_mod.Orthanc(tmp_path / name, **kw)
        made.append(peer)
        peer.start()
        return peer

    yield make
    for peer in made:
        peer.close()


@pytest.fixture
def orthanc(make_orthanc):
    return make_orthanc()


@pytest.fixture
def orthanc_auth(make_orthanc):
    return make_orthanc(auth=("dicomsortd", "s3cret-Pass"))


@pytest.fixture
def dicom_files(tmp_path):
    """dicom_files(n, out=None, **make_dataset kw) -> [Path]: n distinct
    64x64 CT images of one study, written as Part 10 files."""
    import gendicom

    def make(n, out=None, syntax="explicit_le", seed=1, rows=64, cols=64,
             **kw):
        out = pathlib.Path(out or tmp_path / "files")
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(n):
            ds = gendicom.make_dataset(seed=seed, instance_number=i + 1,
                                       rows=rows, cols=cols, syntax=syntax,
                                       **kw)
            path = out / ("img%05d.dcm" % i)
            gendicom.write(ds, path, syntax=syntax)
            paths.append(path)
        return paths
    return make
