"""Issue 11 class 5: every UI value that is not a registry UID is remapped
with the same keyed function, rows or not (private ones kept as safe
too), so no original UID survives and no reference dangles; UR values do
not survive; group 0002 inside the dataset and group 0000 are removed."""

import struct

from pydicom.dataset import Dataset

from advlib import base_ct, load, part10, scan_run, tag_bytes
from conftest import UID_ROOT, output_files

SOURCE = UID_ROOT + ".7001.1"       # another object's SOPInstanceUID
CONCAT = UID_ROOT + ".7002.1"
PRIV = UID_ROOT + ".7003.1"
IN_ITEM_META = UID_ROOT + ".7004.1"
COMMAND = UID_ROOT + ".7005.1"
URL = "https://pacs.example/wado?study=Eberhardsklause"
CREATOR = "SAFECO 1.0"
NEEDLES = [SOURCE, CONCAT, PRIV, IN_ITEM_META, COMMAND, "Eberhardsklause",
           UID_ROOT + ".1.1.1"]


def explicit_element(tag, vr, value):
    return tag_bytes(tag) + vr.encode() + struct.pack("<H", len(value)) + value


def uid_files(in_dir):
    """Two objects: b refers to a (by SOPInstanceUID) from attributes
    without a row; a few more places hold UIDs no row names."""
    a = base_ct("Uid^Anna", "UID-1", study=1)
    part10(a, [], in_dir / "a.dcm")
    b = base_ct("Uid^Anna", "UID-1", study=1)
    b.SOPInstanceUID = UID_ROOT + ".1.1.2"
    b.MultiFrameSourceSOPInstanceUID = a.SOPInstanceUID
    b.SOPInstanceUIDOfConcatenationSource = CONCAT
    b.RetrieveURL = URL
    b.add_new(0x00290010, "LO", CREATOR)
    b.add_new(0x00291001, "UI", PRIV)
    src = Dataset()
    src.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    src.ReferencedSOPInstanceUID = a.SOPInstanceUID
    src.add_new(0x00020003, "UI", IN_ITEM_META)   # group 0002 in an item
    src.MultiFrameSourceSOPInstanceUID = SOURCE
    b.SourceImageSequence = [src]
    command = explicit_element(0x00001000, "UI", COMMAND.encode() + b"\0")
    part10(b, [(0x00001000, command)], in_dir / "b.dcm")


def test_inputs_carry_the_needles(tmp_path):
    uid_files(tmp_path)
    data = (tmp_path / "b.dcm").read_bytes()
    assert all(n.encode() in data for n in NEEDLES[:-1])


def test_every_uid_remapped(run_dicomsort, secret, tmp_path):
    uid_files(tmp_path / "in")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret,
                           "--retain-safe-private", "--safe-private",
                           f"{CREATOR}:0029,xx01")
    assert result.rc == 0, result
    problems = scan_run(NEEDLES, result, tmp_path / "out")
    assert not problems, "\n".join(problems)
    outs = {p.name: load(p) for p in output_files(tmp_path / "out")}
    a, b = outs["a.dcm"], outs["b.dcm"]
    # References still resolve: same keyed function everywhere.
    assert b.MultiFrameSourceSOPInstanceUID == a.SOPInstanceUID
    assert b.SourceImageSequence[0].ReferencedSOPInstanceUID == \
        a.SOPInstanceUID
    # Registry UIDs stay.
    assert b.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert b.SourceImageSequence[0].ReferencedSOPClassUID == \
        "1.2.840.10008.5.1.4.1.1.2"
    assert str(b[0x00291001].value).startswith("2.25.")
    assert 0x00020003 not in b.SourceImageSequence[0]
    assert 0x00001000 not in b
    assert "RetrieveURL" not in b


def test_url_removed_even_when_unlisted_kept(run_dicomsort, secret,
                                             tmp_path):
    uid_files(tmp_path / "in")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--unlisted", "keep")
    assert result.rc == 0, result
    problems = scan_run(NEEDLES, result, tmp_path / "out")
    assert not problems, "\n".join(problems)


def test_retain_uids_keeps_them(run_dicomsort, secret, tmp_path):
    uid_files(tmp_path / "in")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--retain-uids")
    assert result.rc == 0, result
    b = load(next(p for p in output_files(tmp_path / "out")
                  if p.name == "b.dcm"))
    assert b.SOPInstanceUIDOfConcatenationSource == CONCAT
