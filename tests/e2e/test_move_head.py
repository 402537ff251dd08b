"""dicomsort --move reads only what its decision needs (issue 14,
bench/FASTPATH.md section 3).

A file renamed into place is never copied, so only its head is read (the
attributes before the pixel data); the rest of its element headers is
walked by offset, values skipped. That must judge every file exactly as
reading it whole does: a value longer than the file, a broken item of
encapsulated pixel data, bytes after the dataset's end are refused with
the same reason, and whatever the head cannot vouch for (other transfer
syntaxes, SOP UIDs or a layout value past the head) is decided by the
whole file. Each case here is sorted twice - copied (the whole file is
read), and moved - and the two verdicts must agree.

The images are 128x128 (about 33 KB): much larger than the head that is
read (DICOM_HEAD_BYTES, 4 KiB), so the pixel data lies past it, and the
large values before the layout's and the SOP UIDs put those past it too.
"""

import os
import shutil
import struct

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:The value length")

pydicom = pytest.importorskip("pydicom")

from test_batch import by_source, run_json  # noqa: E402

ROWS = COLS = 128
ITEM = b"\xfe\xff\x00\xe0"
SEQ_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"


def written(gen, ds, n):
    """The bytes pydicom writes for ds."""
    path = f"/dev/shm/move15-{os.getpid()}-{n}.dcm"
    try:
        gen.write(ds, path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        os.unlink(path)


def image(gen, n, syntax="explicit_le", **kw):
    """The bytes of one 128x128 image, written by pydicom."""
    ds = gen.make_dataset(patient_id="HEAD", rows=ROWS, cols=COLS,
                          instance_number=n, syntax=syntax, seed=15,
                          charset="ascii", **kw)
    return written(gen, ds, n)


def with_big_value(gen, n, tag, vr, value):
    """An image with one more top-level element, large (pushes what
    follows it past the head)."""
    ds = gen.make_dataset(patient_id="HEAD", rows=ROWS, cols=COLS,
                          instance_number=n, seed=15, charset="ascii")
    ds.add_new(tag, vr, value)
    return written(gen, ds, n)


def broken_fragments(whole):
    """Three ways to break encapsulated pixel data past the head: the
    last fragment longer than what is left, its item tag not an item's,
    the sequence delimiter missing."""
    last = whole.rindex(ITEM)
    assert whole.endswith(SEQ_END)
    too_long = (whole[:last + 4] + struct.pack("<I", len(whole)) +
                whole[last + 8:])
    not_item = whole[:last] + b"\xfe\xff\x0d\xe0" + whole[last + 4:]
    no_end = whole[:-8]
    return too_long, not_item, no_end


def corpus(gen):
    """{name: bytes}: good files of every kind and broken ones."""
    good = image(gen, 1)
    pixels = len(good) - ROWS * COLS * 2
    jpeg = image(gen, 2, syntax="jpeg_lossless")
    too_long, not_item, no_end = broken_fragments(jpeg)
    # A trailing element whose value runs past the end of the file.
    trailing_elem = good + b"\xfc\xff\xfc\xffOB\x00\x00" + \
        struct.pack("<I", 4096) + b"\x00" * 16
    files = {
        "good.dcm": good,
        "implicit.dcm": image(gen, 3, syntax="implicit_le"),
        "big_endian.dcm": image(gen, 4, syntax="explicit_be"),
        "deflated.dcm": image(gen, 5, syntax="deflated"),
        "jpeg.dcm": jpeg,
        # The SOP UIDs past the head: decided by the whole file.
        "late_sop.dcm": with_big_value(gen, 6, 0x00080008, "CS",
                                       ["DERIVED"] * 3000),
        # SeriesNumber (a layout value) past the head.
        "late_series.dcm": with_big_value(gen, 7, 0x00104000, "LT",
                                          "x" * 20000),
        "cut_pixels_head.dcm": good[:4096 + 2],
        "cut_pixels_mid.dcm": good[:pixels + 20000],
        "cut_pixels_end.dcm": good[:-1],
        "trailing_zeros.dcm": good + b"\x00" * 8,
        "trailing_text.dcm": good + b"garbage after the dataset",
        "trailing_elem.dcm": trailing_elem,
        "fragment_too_long.dcm": too_long,
        "fragment_not_item.dcm": not_item,
        "fragments_unended.dcm": no_end,
        "jpeg_cut.dcm": jpeg[:-100],
    }
    for name, body in files.items():
        assert len(body) > 4096, name
    return files


def sort_both_ways(run_dicomsort, gen, tmp_path):
    files = corpus(gen)
    copy_in, move_in = tmp_path / "copy_in", tmp_path / "move_in"
    for d in (copy_in, move_in):
        d.mkdir()
        for name, body in files.items():
            (d / name).write_bytes(body)
    _, copied = run_json(run_dicomsort, "--dicomin", copy_in, "--dicomout",
                         tmp_path / "copy_out")
    _, moved = run_json(run_dicomsort, "--dicomin", move_in, "--dicomout",
                        tmp_path / "move_out", "--move")
    return files, by_source(copied, copy_in), by_source(moved, move_in)


def test_move_judges_as_the_whole_file_does(run_dicomsort, gen, tmp_path):
    files, copied, moved = sort_both_ways(run_dicomsort, gen, tmp_path)
    assert sorted(moved) == sorted(files)
    for name in files:
        c, m = copied[name], moved[name]
        assert (m["status"], m["reason"], m["dest"]) == \
            (c["status"], c["reason"], c["dest"]), name
    stored = {n for n in files if moved[n]["status"] == "stored"}
    # Zero bytes after the dataset: DCMTK takes them for padding, as it
    # always did (the whole file decides: not the head's to vouch for).
    assert stored == {"good.dcm", "implicit.dcm", "big_endian.dcm",
                      "deflated.dcm", "jpeg.dcm", "late_sop.dcm",
                      "late_series.dcm", "trailing_zeros.dcm"}, moved
    for name in files:
        src = tmp_path / "move_in" / name
        if name in stored:
            # Renamed (or, for a re-encoded one, written): the source is
            # gone and the output holds what the copy holds.
            assert not src.exists(), name
            out = tmp_path / "move_out" / moved[name]["dest"]
            ref = tmp_path / "copy_out" / copied[name]["dest"]
            assert out.read_bytes() == ref.read_bytes(), name
        else:
            assert moved[name]["status"] == "rejected", moved[name]
            assert src.read_bytes() == files[name], name


@pytest.mark.parametrize("name,reason", [
    ("cut_pixels_head.dcm", "truncated"),
    ("cut_pixels_mid.dcm", "truncated"),
    ("cut_pixels_end.dcm", "truncated"),
    ("trailing_elem.dcm", "truncated"),
    ("fragment_too_long.dcm", "truncated"),
    ("jpeg_cut.dcm", ""),
])
def test_move_refuses_a_file_cut_short(run_dicomsort, gen, tmp_path, name,
                                       reason):
    """A value running past the end of the file is refused when moving,
    although its bytes past the head are never read."""
    files, copied, moved = sort_both_ways(run_dicomsort, gen, tmp_path)
    assert moved[name]["status"] == "rejected", moved[name]
    assert reason in moved[name]["reason"], moved[name]
    assert (tmp_path / "move_in" / name).read_bytes() == files[name]


def test_move_takes_values_past_the_head(run_dicomsort, gen,
                                         tmp_path):
    """The layout a moved file gets is the one its whole bytes give:
    a value past the head (late_series) is read when asked for, and
    the stored file is the very inode that was moved."""
    files = corpus(gen)
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    inodes = {}
    for name in ("good.dcm", "late_series.dcm", "implicit.dcm"):
        (src / name).write_bytes(files[name])
        inodes[name] = (src / name).stat().st_ino
    _, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                      "--move", expect_rc=0)
    got = by_source(doc, src)
    for name, ino in inodes.items():
        dest = out / got[name]["dest"]
        assert dest.stat().st_ino == ino, name
        ds = pydicom.dcmread(str(dest))
        assert got[name]["dest"].split("/")[2].startswith(
            f"{ds.SeriesNumber}_"), got[name]
    shutil.rmtree(out)
