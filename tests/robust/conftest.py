"""Shared helpers of the robustness tests (issue 5): hostile inputs, crash,
disk-full and resource-bound tests of dicomsort and dicomsortd.

Run with Debian's interpreter:

    DICOMSORT_BIN=build/dicomsort DICOMSORTD_BIN=build/dicomsortd \\
        /usr/bin/python3 -m pytest -q tests/robust

ctest sets DICOMSORT_BIN, DICOMSORTD_BIN, DICOMSORT_BUILD_DIR and
DICOMSORT_SOURCE_DIR. The daemon fixtures and DICOM generators are those of
tests/daemon/conftest.py (loaded here under another module name); this file
adds hand-built hostile DICOM bytes and process measurement.
Long variants run only with DICOMSORT_LONG_TESTS=1.
"""

import importlib.util
import io
import os
import pathlib
import re
import resource
import struct
import subprocess
import sys
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(REPO / "tests" / "tools"))

_spec = importlib.util.spec_from_file_location(
    "dicomsort_daemon_helpers", REPO / "tests" / "daemon" / "conftest.py")
helpers = importlib.util.module_from_spec(_spec)
sys.modules["dicomsort_daemon_helpers"] = helpers
_spec.loader.exec_module(helpers)

# Fixtures and helpers re-exported from tests/daemon/conftest.py.
daemon = helpers.daemon
notify_socket = helpers.notify_socket
pytest_terminal_summary = helpers.pytest_terminal_summary
report_figure = helpers.report_figure
dicom_bytes = helpers.dicom_bytes
make_items = helpers.make_items
write_items = helpers.write_items
files_below = helpers.files_below
temp_files_below = helpers.temp_files_below
read_sops = helpers.read_sops
wait_until = helpers.wait_until
SLOW = helpers.SLOW
SANITIZED = helpers.SANITIZED
UID_ROOT = helpers.UID_ROOT

import pydicom  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filewriter import write_dataset  # noqa: E402

from binaries import built_binary  # noqa: E402
from gendicom import file_meta, meta_header  # noqa: E402

LONG = os.environ.get("DICOMSORT_LONG_TESTS") == "1"
IS_ROOT = os.geteuid() == 0
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED = "1.2.840.10008.1.2.1.99"


def dicomsort_bin():
    return built_binary("dicomsort")


def run_measured(argv, timeout=120, **kw):
    """Run argv to its end; returns (returncode, stdout, stderr, seconds,
    peak RSS in kB) of that child alone (from wait4). A run longer than
    timeout (scaled for sanitizer builds) is a hang: killed, test failed."""
    import tempfile
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdout=out, stderr=err, **kw)
        deadline = t0 + timeout * SLOW
        while True:
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid == p.pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                err.seek(0)
                pytest.fail("%s hung (killed after %.0fs); stderr:\n%s"
                            % (argv[0], timeout * SLOW,
                               err.read().decode(errors="replace")[-3000:]))
            time.sleep(0.01)
        seconds = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return (p.returncode, out.read(), err.read(), seconds,
                usage.ru_maxrss)


# ---- the daemon's audit lines and outputs ----

# The daemon's own folder in the output root (pending-record markers).
STATE = ".dicomsortd-state"


def field(line, key):
    """The value of key="..." in an audit line, its escapes left as they
    are; None if the line has no such field."""
    m = re.search(r' %s="((?:[^"\\]|\\.)*)"' % key, line)
    return m.group(1) if m else None


def outputs(root):
    """The files stored below an output root, the daemon's state folder
    left out."""
    return [p for p in files_below(root) if STATE not in p.parts]


# ---- hand-built DICOM bytes (explicit VR little endian) ----

_LONG_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "SQ", "UT", "UN", "UC", "UR",
             "SV", "UV"}


def element(group, elem, vr, value, length=None):
    """One explicit-VR-LE element; length overrides the declared length
    (the value bytes are written as given)."""
    if isinstance(value, str):
        value = value.encode("latin-1")
    n = len(value) if length is None else length
    head = struct.pack("<HH", group, elem) + vr.encode()
    if vr in _LONG_VRS:
        head += b"\0\0" + struct.pack("<I", n)
    else:
        head += struct.pack("<H", n)
    return head + value


def pad(s):
    if isinstance(s, str):
        s = s.encode("latin-1")
    return s + (b" " if len(s) % 2 else b"")


def padu(s):
    if isinstance(s, str):
        s = s.encode()
    return s + (b"\0" if len(s) % 2 else b"")


def meta_bytes(sop_uid, syntax=EXPLICIT_LE):
    return meta_header(file_meta(CT, sop_uid, syntax, UID_ROOT + ".1"))


_uid_seq = [0]


def new_uid():
    _uid_seq[0] += 1
    return "%s.9.%d.%d.%d" % (UID_ROOT, os.getpid(), _uid_seq[0],
                              int(time.time() * 1000) % 10**9)


def raw_dicom(patient_id=b"HOSTILE", sop_uid=None, series_description=b"Ax",
              middle=b"", tail=b"", study_date=b"20240102", raw_values=None):
    """A small Part 10 file built by hand. Elements in tag order:
    SpecificCharacterSet, SOPClassUID, SOPInstanceUID, StudyDate, Modality,
    `middle` (tags between 0008,0060 and 0008,103E), SeriesDescription,
    PatientName, PatientID, SeriesNumber, then `tail` (tags after
    0020,0011). raw_values may replace a value's bytes by keyword."""
    sop_uid = sop_uid or new_uid()
    v = {"PatientID": pad(patient_id),
         "SeriesDescription": pad(series_description),
         "StudyDate": pad(study_date)}
    v.update(raw_values or {})
    body = (element(0x0008, 0x0005, "CS", pad("ISO_IR 192")) +
            element(0x0008, 0x0016, "UI", padu(CT)) +
            element(0x0008, 0x0018, "UI", padu(sop_uid)) +
            element(0x0008, 0x0020, "DA", v["StudyDate"]) +
            element(0x0008, 0x0060, "CS", pad("CT")) +
            middle +
            element(0x0008, 0x103E, "LO", v["SeriesDescription"]) +
            element(0x0010, 0x0010, "PN", pad("Doe^Jane")) +
            element(0x0010, 0x0020, "LO", v["PatientID"]) +
            element(0x0020, 0x0011, "IS", pad("1")) +
            tail)
    return meta_bytes(sop_uid) + body, sop_uid


def nested_sequences(depth, defined_length=False):
    """ReferencedSeriesSequence (0008,1115) nested depth levels deep, each
    item holding only the next sequence."""
    if defined_length:
        inner = b""
        for _ in range(depth):
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
            inner = element(0x0008, 0x1115, "SQ", item)
        return inner
    open_ = (struct.pack("<HH", 0x0008, 0x1115) + b"SQ\0\0" +
             struct.pack("<I", 0xFFFFFFFF) +
             struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
    close = (struct.pack("<HHI", 0xFFFE, 0xE00D, 0) +
             struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    return open_ * depth + close * depth


def deflated_dicom(pixel_length, sop_uid=None):
    """A deflated-syntax file whose PixelData declares pixel_length bytes
    but whose stream ends right after a few of them."""
    import zlib
    sop_uid = sop_uid or new_uid()
    body, _ = raw_dicom(sop_uid=sop_uid)
    body = body[len(meta_bytes(sop_uid)):]
    body += element(0x7FE0, 0x0010, "OB", b"\x01\x02\x03\x04",
                    length=pixel_length)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = comp.compress(body) + comp.flush()
    return meta_bytes(sop_uid, DEFLATED) + data, sop_uid


def conf_text(settings):
    return helpers.conf_text(settings)


def base_config(tmp_path, **overrides):
    return helpers.base_config(tmp_path, **overrides)
