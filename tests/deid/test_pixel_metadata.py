"""Issue 11 class 4: metadata inside compressed pixel data. JPEG APP1-APP13,
APP15 and COM segments (EXIF owner, GPS, comments), JPEG 2000 COM markers
go; APP0 and APP14 stay; the coded image stays byte for byte, and an
independent decoder (DCMTK's dcmdjpeg/dcmdjpls) gives the same pixels
before and after. Modality OP is in the burned-in guard."""

import pathlib
import struct
import subprocess

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_pixel_data_frame

from advlib import new_dciodvfy_errors, scan_run
from conftest import output_files, which

EXIF = b"Exif\0\0Owner Hildebrandtowski GPS 47.3769N 8.5417E"
COMMENT = b"Patient Kasimirowa born 19520202"
PHOTOSHOP = b"Photoshop 3.0\0Caption Wendelgardis"
APP15 = b"Vendor note Adalbertstrasse"
NEEDLES = ["Hildebrandtowski", "Kasimirowa", "Wendelgardis",
           "Adalbertstrasse", "47.3769N"]


def segment(marker, payload):
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + \
        payload


def plant_jpeg(frame):
    """APP1 (EXIF), COM, APP13, APP15 right after SOI."""
    assert frame[:2] == b"\xff\xd8"
    return (frame[:2] + segment(0xE1, EXIF) + segment(0xFE, COMMENT) +
            segment(0xED, PHOTOSHOP) + segment(0xEF, APP15) + frame[2:])


def plant_j2k(frame):
    """A COM marker segment after SIZ (main header)."""
    assert frame[:4] == b"\xff\x4f\xff\x51"
    end = 4 + struct.unpack(">H", frame[4:6])[0]
    return frame[:end] + segment(0x64, b"\0\1" + COMMENT) + frame[end:]


def image_end(frame):
    """The codestream up to its end marker (FFD9: EOI and EOC alike),
    without the comments a J2K main header may carry already."""
    frame = frame[:frame.rfind(b"\xff\xd9") + 2]
    if frame[:2] != b"\xff\x4f":
        return frame
    i, out = 2, frame[:2]
    while frame[i:i + 2] != b"\xff\x90":  # up to the first SOT
        seg = 2 + struct.unpack(">H", frame[i + 2:i + 4])[0]
        if frame[i + 1] != 0x64:
            out += frame[i:i + seg]
        i += seg
    return out + frame[i:]


def frames(ds):
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return list(generate_pixel_data_frame(ds.PixelData, n))


SAMPLES = [("SC_rgb_jpeg_dcmtk.dcm", plant_jpeg, "dcmdjpeg"),
           ("SC_rgb_jpeg_app14_dcmd.dcm", plant_jpeg, "dcmdjpeg"),
           ("JPEG-lossy.dcm", plant_jpeg, "dcmdjpeg"),
           ("MR_small_jpeg_ls_lossless.dcm", plant_jpeg, "dcmdjpls"),
           ("MR_small_jp2klossless.dcm", plant_j2k, None)]


def decoded_pixels(tool, path, tmp_path):
    out = tmp_path / (path.name + ".raw.dcm")
    subprocess.run([which(tool), str(path), str(out)], check=True,
                   capture_output=True, timeout=60)
    return pydicom.dcmread(str(out)).PixelData


@pytest.mark.parametrize("name,plant,decoder", SAMPLES,
                         ids=[s[0] for s in SAMPLES])
def test_pixel_metadata_removed(name, plant, decoder, run_dicomsort, secret,
                                tmp_path):
    ds = pydicom.dcmread(get_testdata_file(name))
    original = frames(ds)
    ds.PixelData = encapsulate([plant(f) for f in original], has_bot=True)
    ds.BurnedInAnnotation = "NO"
    (tmp_path / "in").mkdir()
    src = tmp_path / "in" / "p.dcm"
    ds.save_as(str(src), write_like_original=False)
    assert all(n.encode() in src.read_bytes() for n in NEEDLES[1:2])
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret)
    assert result.rc == 0, result
    outs = output_files(tmp_path / "out")
    assert len(outs) == 1
    problems = scan_run(NEEDLES, result, tmp_path / "out")
    assert not problems, "\n".join(problems)
    out = pydicom.dcmread(str(outs[0]))
    assert out.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    got = frames(out)
    assert len(got) == len(original)
    for before, after in zip(original, got):
        assert image_end(after) == image_end(before)
        if b"\xff\xee" in image_end(before)[:200]:
            assert b"\xff\xee" in after[:200]  # APP14 kept
    assert not new_dciodvfy_errors(src, outs[0])
    if decoder:  # the source as it came, before anything was planted
        assert decoded_pixels(decoder, outs[0], tmp_path) == \
            decoded_pixels(decoder, pathlib.Path(get_testdata_file(name)),
                           tmp_path)


def test_op_is_in_the_burned_in_guard(run_dicomsort, secret, tmp_path):
    from advlib import base_ct, part10
    ds = base_ct("Op^Photo", "OP-1")
    ds.Modality = "OP"
    del ds.BurnedInAnnotation
    part10(ds, [], tmp_path / "in" / "op.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--json")
    assert result.rc == 1, result
    assert "burned-in" in result.stdout.decode()
