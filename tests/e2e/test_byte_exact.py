"""Byte-exact where nothing changes (issue 14, bench/FASTPATH.md section 5).

A file that needs no change is stored as the source's bytes, even when its
meta header disagrees with its dataset (MediaStorageSOPInstanceUID or
MediaStorageSOPClassUID not the dataset's SOP UIDs): re-encoding it would
make DCMTK pad an odd-length JPEG fragment, changing the pixel data of a
plain sort. The disagreement is reported (the file's "reason" in --json, a
warning on stderr), never fixed silently. A seed edit (--anonymize) splices
its three values and leaves every other byte, the disagreeing meta header
included, as it came.

A meta header whose TransferSyntaxUID does not name the dataset's encoding
is another matter: those bytes cannot be read reliably by anyone trusting
the header, so such a file is never copied as it came - it is re-encoded
with a header that says the truth, or refused.

The inputs are built byte by byte here (pydicom pads what it encapsulates,
and checks what it writes): an encapsulated JPEG Baseline image whose one
fragment has an odd length.
"""

import io
import json

import pytest

pydicom = pytest.importorskip("pydicom")
import pydicom.encaps  # noqa: E402
import pydicom.filewriter  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.filebase import DicomBytesIO  # noqa: E402

from gendicom import file_meta, meta_header, set_grey_pixels  # noqa: E402

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7"		# Secondary Capture
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
ROOT = "1.2.826.0.1.3680043.10.7613.14"
# An odd number of bytes: SOI, a comment, EOI, and one byte of junk a
# modality left behind (real sample files have such fragments).
FRAGMENT = (b"\xff\xd8\xff\xfe\x00\x07odd!\xff\xd9" + bytes(range(7)))
assert len(FRAGMENT) % 2 == 1


def encapsulated(fragment):
    """(7FE0,0010) OB, undefined length: an empty offset table, one item
    holding fragment as it is (odd length kept), the delimiter."""
    item = b"\xfe\xff\x00\xe0"
    return (b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff" +
            item + (0).to_bytes(4, "little") +
            item + len(fragment).to_bytes(4, "little") + fragment +
            b"\xfe\xff\xdd\xe0" + (0).to_bytes(4, "little"))


def build(name="Doe^Jane", patient_id="OLD7", birth="19800131",
          media_instance=ROOT + ".999", media_class=SOP_CLASS,
          meta_syntax=JPEG_BASELINE, implicit=False, fragment=FRAGMENT):
    """The bytes of a Part 10 file: meta header as given, then the
    dataset ending in the encapsulated pixel data (explicit VR little
    endian), or native pixel data when implicit (implicit VR)."""
    meta = file_meta(media_class, media_instance, meta_syntax, ROOT + ".1")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SOP_CLASS
    ds.SOPInstanceUID = ROOT + ".1.1"
    ds.StudyDate = "20260102"
    ds.Modality = "OT"
    ds.PatientName = name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth
    ds.StudyInstanceUID = ROOT + ".2"
    ds.SeriesInstanceUID = ROOT + ".3"
    ds.SeriesNumber = 4
    ds.SeriesDescription = "BYTES"
    ds.InstanceNumber = 1
    set_grey_pixels(ds, 8, 8, bits_allocated=8)

    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, implicit
    pydicom.filewriter.write_dataset(body, ds)
    if implicit:	# native pixels, no VR: tag, 4-byte length
        pixels = (b"\xe0\x7f\x10\x00" + (64).to_bytes(4, "little") +
                  bytes(range(64)))
    else:
        pixels = encapsulated(fragment)
    return meta_header(meta) + body.getvalue() + pixels


def run_json(run_dicomsort, *args):
    proc = run_dicomsort(*args, "--json")
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"no JSON (rc {proc.returncode}): {proc.stderr!r}")
    return proc, doc


def one_output(out):
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) == 1, files
    return files[0]


def test_build_is_what_it_claims():
    """The generator itself: pydicom reads the fragment back with its odd
    length and sees the disagreement."""
    raw = build()
    ds = pydicom.dcmread(io.BytesIO(raw))
    assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    fp = DicomBytesIO(ds.PixelData)
    fp.is_little_endian = True
    frags = list(pydicom.encaps.generate_pixel_data_fragment(fp))
    assert [len(f) for f in frags] == [0, len(FRAGMENT)]	# offset table, fragment


@pytest.mark.parametrize("disagreement", ["instance", "class", "both"])
def test_sort_keeps_bytes_of_disagreeing_meta(run_dicomsort, tmp_path,
                                              disagreement):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    kw = {"instance": {"media_instance": ROOT + ".999"},
          "class": {"media_instance": ROOT + ".1.1",
                    "media_class": "1.2.840.10008.5.1.4.1.1.2"},
          "both": {"media_instance": ROOT + ".999",
                   "media_class": "1.2.840.10008.5.1.4.1.1.2"}}[disagreement]
    raw = build(**kw)
    (src / "odd.dcm").write_bytes(raw)
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out)
    assert proc.returncode == 0, proc.stderr
    entry = doc["files"][0]
    assert entry["status"] == "stored"
    dst = out / entry["dest"]
    assert dst.read_bytes() == raw
    # The layout read the dataset, not the meta header.
    assert entry["dest"].startswith("OLD7/20260102/4_BYTES/")
    # Reported, without any value of the file.
    reason = entry["reason"]
    assert reason and "meta header" in reason
    if disagreement in ("instance", "both"):
        assert "MediaStorageSOPInstanceUID" in reason
    if disagreement in ("class", "both"):
        assert "MediaStorageSOPClassUID" in reason
    assert ROOT not in reason and "OLD7" not in reason
    # The text report warns unless --quiet.
    out2 = tmp_path / "out2"
    proc = run_dicomsort("--dicomin", src, "--dicomout", out2)
    assert proc.returncode == 0, proc.stderr
    assert "warning: meta header" in proc.stderr
    assert one_output(out2).read_bytes() == raw
    proc = run_dicomsort("--dicomin", src, "--dicomout", tmp_path / "out3",
                         "--quiet")
    assert "warning" not in proc.stderr


def test_matching_meta_has_no_warning(run_dicomsort, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    raw = build(media_instance=ROOT + ".1.1")
    (src / "ok.dcm").write_bytes(raw)
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out)
    assert proc.returncode == 0, proc.stderr
    assert doc["files"][0]["reason"] is None
    assert (out / doc["files"][0]["dest"]).read_bytes() == raw


@pytest.mark.parametrize("implicit", [False, True])
def test_seed_changes_three_values_and_nothing_else(run_dicomsort, tmp_path,
                                                    implicit):
    """--anonymize (seed) with a table: PatientName, PatientID and
    PatientBirthDate change; every other byte - the disagreeing meta
    header and the odd fragment included - is the source's."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    syntax = IMPLICIT_LE if implicit else JPEG_BASELINE
    raw = build(meta_syntax=syntax, implicit=implicit)
    (src / "odd.dcm").write_bytes(raw)
    table = tmp_path / "ids.csv"
    table.write_text("OLD7,NEW0007\n")
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--anonymize", "--ID_correlation", table)
    assert proc.returncode == 0, proc.stderr
    entry = doc["files"][0]
    assert entry["status"] == "stored", entry
    got = (out / entry["dest"]).read_bytes()
    expected = build(name="ANONYMIZED", patient_id="NEW0007", birth="",
                     meta_syntax=syntax, implicit=implicit)
    assert got == expected
    assert "MediaStorageSOPInstanceUID" in (entry["reason"] or "")


def test_lying_transfer_syntax_is_never_copied_as_it_came(run_dicomsort,
                                                          tmp_path):
    """The meta header says explicit VR, the dataset is implicit: the
    bytes cannot be trusted by a reader of the header. Stored only with a
    header naming the dataset's real encoding, or refused."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    raw = build(meta_syntax=EXPLICIT_LE, implicit=True,
                media_instance=ROOT + ".1.1")
    (src / "lie.dcm").write_bytes(raw)
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out)
    entry = doc["files"][0]
    if entry["status"] == "stored":
        got = (out / entry["dest"]).read_bytes()
        assert got != raw
        ds = pydicom.dcmread(io.BytesIO(got))
        assert ds.file_meta.TransferSyntaxUID == IMPLICIT_LE
        assert ds.SOPInstanceUID == ROOT + ".1.1"
    else:
        assert entry["status"] == "rejected", entry
        assert entry["reason"]
        assert not out.exists() or not any(
            p.is_file() for p in out.rglob("*") if ".dicomsort" not in str(p))
