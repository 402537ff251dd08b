"""How basic's re-encoded output reaches the disk (issue 14).

DCMTK's encoding goes to the output descriptor through one bounded buffer
(256 KiB), the preamble zeroed on its way out; values larger than the
buffer are written straight from DCMTK's memory. The pixel data must come
out whole, whatever its size against the buffer and whether the file was
read into memory (<= 1 MiB) or lazily from its path; a full output is a
failure to retry (the source stays), not a rejection of the object.
"""

import os
import struct
import subprocess

import pytest

from pydicom.uid import (DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian,
                         ExplicitVRLittleEndian, ImplicitVRLittleEndian)

from conftest import ct_image, new_meta, output_files, read, write

PAYLOAD = b"MZ" + b"Preamble-Hofstaetter".ljust(126, b"\0")


def ramp_image(side):
    """A side x side CT image whose 12-bit pixels are a ramp."""
    ds = ct_image(rows=side, columns=side)
    ds.PixelData = b"".join(struct.pack("<H", (i * 7) & 0xFFF)
                            for i in range(side * side))
    return ds


def basic_output(run_dicomsort, secret, tmp_path):
    """Run basic over tmp_path/in into tmp_path/out: it succeeds with one
    output that starts with a zeroed preamble and DICM. Returns the
    output's bytes and the output read by pydicom."""
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret)
    assert result.rc == 0, result
    (out,) = output_files(tmp_path / "out")
    data = out.read_bytes()
    assert data[:128] == b"\0" * 128 and data[128:132] == b"DICM"
    return data, read(out)


def image(path, side):
    ds = ramp_image(side)
    path = write(ds, path)
    data = path.read_bytes()
    path.write_bytes(PAYLOAD + data[128:])
    return ds.PixelData


@pytest.mark.parametrize("side", [64, 256, 384, 800],
                         ids=["9k", "128k", "288k-over-buffer", "1.2M-lazy"])
def test_pixel_data_written_whole(run_dicomsort, secret, tmp_path, side):
    pixels = image(tmp_path / "in" / "a.dcm", side)
    data, got = basic_output(run_dicomsort, secret, tmp_path)
    assert got.PixelData == pixels
    assert got.Rows == side and got.Columns == side
    assert b"Hofstaetter" not in data and b"Testperson" not in data


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian,
                                    ImplicitVRLittleEndian,
                                    ExplicitVRBigEndian,
                                    DeflatedExplicitVRLittleEndian],
                         ids=["explicit", "implicit", "big-endian", "deflated"])
@pytest.mark.parametrize("side", [64, 384], ids=["9k", "288k-over-buffer"])
def test_every_transfer_syntax_written_whole(run_dicomsort, secret, tmp_path,
                                             syntax, side):
    """Each encoding DCMTK writes back, deflated included (a deflate
    filter sits between DCMTK and the buffer: its bytes must all come out,
    the meta header's too)."""
    ds = ramp_image(side)
    path = tmp_path / "in" / "a.dcm"
    path.parent.mkdir(parents=True)
    new_meta(ds, syntax)
    ds.is_little_endian = syntax != ExplicitVRBigEndian
    ds.is_implicit_VR = syntax == ImplicitVRLittleEndian
    ds.save_as(str(path), write_like_original=False)
    pixels = read(path).PixelData
    _, got = basic_output(run_dicomsort, secret, tmp_path)
    assert got.file_meta.TransferSyntaxUID == syntax
    assert got.PixelData == pixels
    assert got.PatientID.startswith("ANON")
    assert got.file_meta.MediaStorageSOPInstanceUID == got.SOPInstanceUID


@pytest.fixture
def small_tmpfs(tmp_path):
    path = tmp_path / "full"
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (not root)")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755",
                        "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.strip())
    yield path
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_full_output_fails_and_keeps_the_source(run_dicomsort, secret,
                                                tmp_path, small_tmpfs):
    image(tmp_path / "in" / "a.dcm", 256)     # 128 KiB into 64 KiB
    result = run_dicomsort(tmp_path / "in", small_tmpfs, "--profile",
                           "basic", "--secret", secret, "--json")
    assert result.rc != 0, result
    (entry,) = result.json["files"]
    assert entry["status"] == "failed", entry   # to retry, not rejected
    assert "No space left on device" in entry["reason"], entry
    assert (tmp_path / "in" / "a.dcm").read_bytes()[:2] == b"MZ"
    assert not output_files(small_tmpfs)
    assert b"Testperson" not in result.stderr + result.stdout
