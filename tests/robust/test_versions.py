"""One version of a source in, exactly one output out (issue 12, items 2-4).

A hostile sender changes a file while dicomsortd processes it: rewrites it
in place with the same size and sets its mtime back (rsync --inplace -t,
cp -p), or renames it. DICOMSORT_TEST_DELAY=parsed:MS / durable:MS holds a
worker still right after the source's snapshot was parsed, or after the
output is durable and before the source is checked and disposed of, so the
change lands in that window every time. pydicom, an independent reader,
then checks: each SOPInstanceUID stored exactly once, each output's pixels
those of the input that carried its SOPInstanceUID (no output mixes two
inputs), each file under its own patient's folder, and nothing lost.
"""

import hashlib
import os
import pathlib

import pydicom
import pytest

from conftest import (SLOW, UID_ROOT, files_below, helpers, wait_until)

STATE = ".dicomsortd-state"
WINDOW_MS = 2500


def outputs(root):
    return [p for p in files_below(root)
            if STATE not in p.parts and not p.name.startswith(".")]


def pixel_hash(data_or_path):
    ds = pydicom.dcmread(data_or_path if isinstance(data_or_path, str)
                         else pydicom.filebase.DicomBytesIO(data_or_path))
    return str(ds.SOPInstanceUID), hashlib.sha256(ds.PixelData).hexdigest()


def same_size_pair(tag, size=64):
    """Two inputs of exactly the same length, different patients,
    SOPInstanceUIDs and pixels: what a same-size rewrite swaps in."""
    pair = []
    for i, pid in enumerate(("PATA", "PATB")):
        sop = "%s.77.%d.%d.%d" % (UID_ROOT, 1 + os.getpid() % 10000,
                                    1 + abs(hash(tag)) % 10**8, i)
        pair.append(helpers.dicom_bytes(patient_id=pid, sop_uid=sop,
                                        pixel_seed=1000 + i, rows=size,
                                        cols=size))
    assert len(pair[0]) == len(pair[1])
    return pair


def delays_logged(d, where):
    return sum(1 for ln in d.log_lines() if "test delay:" in ln and where in ln)


def rewrite_in_place(path, data):
    """Same size, same inode, mtime set back: only ctime tells."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.stat(path)
    assert (now.st_ino, now.st_size, now.st_mtime_ns) == (
        st.st_ino, st.st_size, st.st_mtime_ns)


def check_exactly_once(d, inputs, patient_of=None):
    """inputs: the bytes that were delivered. Every SOPInstanceUID stored
    once, with its own pixels (and under its own patient's folder)."""
    expected = {}
    for data in inputs:
        sop, pix = pixel_hash(data)
        expected[sop] = pix
    seen = {}
    for p in outputs(d.output):
        sop, pix = pixel_hash(str(p))
        assert sop in expected, "an output of no input: %s" % p
        assert pix == expected[sop], (
            "%s mixes two inputs: the header of %s with other pixels" % (p, sop))
        if patient_of is not None:
            rel = p.relative_to(d.output)
            assert rel.parts[0] == patient_of[sop], (
                "%s filed under another patient's folder" % rel)
        seen.setdefault(sop, []).append(p)
    assert sorted(seen) == sorted(expected), (
        "lost: %s" % sorted(set(expected) - set(seen)), d.log()[-4000:])
    twice = {s: v for s, v in seen.items() if len(v) > 1}
    assert not twice, "stored twice: %s" % twice
    stored = d.events("stored")
    assert len(stored) == len(outputs(d.output)), "\n".join(stored)


@pytest.mark.parametrize("size,after", [(64, "delete"), (768, "delete"),
                                        (64, "move")],
                         ids=["in-memory", "large", "moved-to-processed"])
def test_rewrite_after_durable_is_kept_and_processed_again(daemon, tmp_path,
                                                           size, after):
    """Item 2: a same-size rewrite with mtime set back, after the output
    is durable and before the source goes: the source is not deleted (or
    moved to processed: it is another version now), it is processed
    again, and both versions are stored once each."""
    extra = {}
    if after == "move":
        extra = {"after_success": "move", "processed": tmp_path / "processed"}
    # The window after a copy is durable: a source renamed into place
    # (the default for one that needs no change) has none.
    d = daemon(env={"DICOMSORT_TEST_DELAY": "durable:%d" % WINDOW_MS},
               workers=1, rename_unchanged=False, **extra)
    a, b = same_size_pair("durable%d" % size, size)
    src = d.input / "img.dcm"
    src.write_bytes(a)
    wait_until(lambda: delays_logged(d, "durable") >= 1, 30 * SLOW,
               what="the worker in its window")
    rewrite_in_place(src, b)
    wait_until(lambda: len(outputs(d.output)) >= 2 and not files_below(d.input),
               60 * SLOW, what=lambda: "both versions stored (log:\n%s)"
               % d.log()[-3000:])
    assert d.events("changed"), d.log()[-3000:]
    check_exactly_once(d, [a, b])
    if after == "move":
        # The sender overwrote A: what is left of the source, B, is
        # moved once, after B itself was stored.
        kept = [p.read_bytes() for p in files_below(tmp_path / "processed")]
        assert kept == [b]
    assert d.stop()[0] == 0


@pytest.mark.parametrize("profile", ["none", "seed"])
def test_same_size_rewrite_while_processing_never_mixes(daemon, tmp_path,
                                                        profile):
    """Item 3: a large file (its pixel data read lazily) rewritten in
    place, same size, mtime set back, right after it was parsed: no
    output carries one version's header with the other's pixels or
    under the other's patient; each version is stored once."""
    extra = {}
    patient_of = None
    if profile == "seed":
        table = tmp_path / "ids.csv"
        table.write_text("PATA,NEWA\nPATB,NEWB\n")
        extra = dict(profile="seed", correlation_table=table)
    d = daemon(env={"DICOMSORT_TEST_DELAY": "parsed:%d" % WINDOW_MS},
               workers=1, **extra)
    a, b = same_size_pair("mix" + profile, 1024)
    assert len(a) > 1024 * 1024    # beyond the in-memory parse
    patient_of = {pixel_hash(a)[0]: "NEWA" if extra else "PATA",
                  pixel_hash(b)[0]: "NEWB" if extra else "PATB"}
    src = d.input / "big.dcm"
    src.write_bytes(a)
    wait_until(lambda: delays_logged(d, "after parsing") >= 1, 30 * SLOW,
               what="the worker in its window")
    rewrite_in_place(src, b)
    wait_until(lambda: len(outputs(d.output)) >= 2 and not files_below(d.input),
               90 * SLOW, what=lambda: "both versions stored (log:\n%s)"
               % d.log()[-3000:])
    check_exactly_once(d, [a, b], patient_of)
    assert d.stop()[0] == 0


@pytest.mark.parametrize("window", ["parsed", "commit", "durable"])
def test_rename_while_processing_gives_one_output(daemon, window):
    """Item 4: the sender renames the file while it is processed (also
    while its output waits for the group commit): one output, one
    `stored` record, the source disposed of under its new name, never a
    second copy."""
    # "commit" and "durable" are a copy's windows (its source still
    # there while its output waits); "parsed" takes the renamed path.
    d = daemon(env={"DICOMSORT_TEST_DELAY": "%s:%d" % (window, WINDOW_MS)},
               workers=1, rename_unchanged=window == "parsed")
    a, _ = same_size_pair("rename" + window)
    src = d.input / "first.dcm"
    src.write_bytes(a)
    where = {"parsed": "after parsing", "commit": "before a group commit",
             "durable": "durable"}[window]
    wait_until(lambda: delays_logged(d, where) >= 1, 30 * SLOW,
               what="the worker in its window")
    (d.input / "sub").mkdir()
    os.rename(src, d.input / "sub" / "renamed.dcm")
    wait_until(lambda: not files_below(d.input), 60 * SLOW,
               what=lambda: "the renamed source disposed of (log:\n%s)"
               % d.log()[-3000:])
    # Long enough for a second copy to have appeared, were one coming.
    wait_until(lambda: d.events("disposed"), 30 * SLOW, what="disposed")
    assert d.stop()[0] == 0
    check_exactly_once(d, [a])
    assert len(d.events("disposed")) == 1, d.log()[-3000:]


def test_rename_seen_after_the_job_ended_gives_one_output(daemon):
    """Item 4, the usual timing: the job ends (its source gone from the
    old name) well before the renamed file has settled under its new
    one. The stored file's disposal waits for the inode, by inode, and
    the new name is disposed of, never stored a second time."""
    d = daemon(env={"DICOMSORT_TEST_DELAY": "parsed:400"}, workers=1,
               settle_ms=2000)
    a, _ = same_size_pair("late-rename")
    src = d.input / "upload.incoming"
    src.write_bytes(a)
    wait_until(lambda: delays_logged(d, "after parsing") >= 1, 30 * SLOW,
               what="the worker in its window")
    os.rename(src, d.input / "upload.dcm")
    wait_until(lambda: d.events("stored"), 30 * SLOW, what="stored")
    wait_until(lambda: not files_below(d.input), 60 * SLOW,
               what=lambda: "the renamed source disposed of (log:\n%s)"
               % d.log()[-3000:])
    wait_until(lambda: d.events("disposed"), 30 * SLOW, what="disposed")
    assert d.stop()[0] == 0
    check_exactly_once(d, [a])
    assert len(d.events("disposed")) == 1, d.log()[-3000:]
