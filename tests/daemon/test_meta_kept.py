"""dicomsortd stores a file whose meta header disagrees with its dataset as
the source's bytes, and its `stored` audit record says so (issue 14,
byte-exact where nothing changes; tests/e2e/test_byte_exact.py has the
batch side)."""

import os

from conftest import dicom_bytes, files_below

import pydicom.uid


def disagreeing_bytes():
    """A Part 10 file whose MediaStorageSOPInstanceUID is not the
    dataset's SOPInstanceUID (same length, last digit changed)."""
    uid = pydicom.uid.generate_uid(prefix="1.2.826.0.1.3680043.10.7613.14.")
    raw = dicom_bytes(sop_uid=uid, patient_id="META1")
    at = raw.index(uid.encode())
    assert at < 300, "first copy of the UID is the meta header's"
    other = uid[:-1] + ("1" if uid[-1] != "1" else "2")
    return raw[:at] + other.encode() + raw[at + len(uid):], uid


def test_disagreeing_meta_is_stored_as_it_came_with_a_reason(daemon,
                                                             tmp_path):
    d = daemon()
    raw, uid = disagreeing_bytes()
    staging = tmp_path / "staging.dcm"
    staging.write_bytes(raw)
    os.rename(staging, d.input / "meta.dcm")
    d.wait_stored(1, timeout=30)
    d.wait_input_empty()
    out = [p for p in files_below(d.output) if not p.name.startswith(".")]
    assert len(out) == 1, out
    assert out[0].read_bytes() == raw
    stored = d.events("stored")
    assert len(stored) == 1, stored
    assert "MediaStorageSOPInstanceUID" in stored[0], stored[0]
    assert "reason=" in stored[0], stored[0]
    # The reason names elements, never their values.
    reason = stored[0].split("reason=", 1)[1]
    assert uid not in reason.split(" profile=")[0]
    assert d.stop()[0] == 0
