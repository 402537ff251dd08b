"""Issue 11 class 2: the 128-byte preamble can carry anything, even an
executable (CVE-2019-11687): basic outputs have a preamble of zeros."""

import pytest

from advlib import base_ct, part10, scan_run
from conftest import output_files

PAYLOAD = (b"MZ\x90\x00" + b"Preamblepatient Hofstaetter-Wunibald 19330303"
           + b"\0" * 40)[:128]


def with_preamble(path, study=1):
    ds = base_ct("Pre^Amble", "PRE-1", study=study)
    path = part10(ds, [], path)
    data = path.read_bytes()
    path.write_bytes(PAYLOAD.ljust(128, b"\0") + data[128:])
    return path


@pytest.mark.parametrize("fast", [True, False], ids=["small", "large"])
def test_basic_zeroes_preamble(fast, run_dicomsort, secret, tmp_path):
    """Small files (fast path) and large ones (DCMTK reads lazily) alike."""
    path = with_preamble(tmp_path / "in" / "p.dcm")
    if not fast:
        # Past DICOM_LOAD_IN_MEMORY the file is read lazily from its path:
        # a trailing padding element (FFFC,FFFC) of 2 MiB makes it large.
        size = 2 * 1024 * 1024
        path.write_bytes(path.read_bytes() + b"\xfc\xff\xfc\xffOB\0\0" +
                         size.to_bytes(4, "little") + b"\0" * size)
    assert path.read_bytes()[:2] == b"MZ"
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret)
    assert result.rc == 0, result
    outs = output_files(tmp_path / "out")
    assert len(outs) == 1
    data = outs[0].read_bytes()
    assert data[:128] == b"\0" * 128 and data[128:132] == b"DICM"
    problems = scan_run(["Hofstaetter", "Wunibald", "Preamblepatient"],
                        result, tmp_path / "out")
    assert not problems, "\n".join(problems)
