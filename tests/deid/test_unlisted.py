"""Issue 11 class 6: what Table E.1-1 does not list. Under basic,
deid.unlisted = "remove" (the default) empties every free-text attribute
no row names (removes UR and tags no dictionary knows), outside a short
allowlist; "keep" gives the table's literal behaviour."""

import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset

from advlib import base_ct, load, part10, scan_run
from conftest import output_files, which
import os
import re
import subprocess

PLANTED = {
    # keyword or tag: (VR, value)
    "DocumentTitle": ("ST", "Befund Gottfriedsen Walpurgis"),
    "SoftwareVersions": ("LO", "Site build Oberhollenzer"),
    "StrainDescription": ("UC", "Hausmaus Kunigundeweg"),
    "RetrieveURL": ("UR", "https://pacs.example/Heribertstrasse"),
    0x60000022: ("LO", "Overlay of Leopoldinenhof"),    # OverlayDescription
    0x60001500: ("LO", "Label Mechtildisburg"),         # OverlayLabel
    0x0018fff2: ("LO", "Unknown even tag Rosamundweiler"),  # no dictionary
}
NEEDLES = ["Gottfriedsen", "Walpurgis", "Oberhollenzer", "Kunigundeweg",
           "Heribertstrasse", "Leopoldinenhof", "Mechtildisburg",
           "Rosamundweiler"]


def unlisted_file(path):
    ds = base_ct("Unlisted^Ursula", "UL-1")
    for key, (vr, value) in PLANTED.items():
        if isinstance(key, int):
            ds.add_new(key, vr, value)
        else:
            ds.add_new(tag_for_keyword(key), vr, value)
    # Nested too: in an item of a sequence that stays.
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = "1.2.826.0.1.3680043.10.1234.77.1"
    ref.add_new(0x00420010, "ST", "Nested Gottfriedsen")
    ds.ReferencedImageSequence = [ref]
    code = Dataset()
    code.CodeValue = "T-D3000"
    code.CodingSchemeDesignator = "SRT"
    code.CodeMeaning = "Chest"
    ds.AnatomicRegionSequence = [code]
    return part10(ds, [], path)


def run(run_dicomsort, secret, tmp_path, *extra):
    unlisted_file(tmp_path / "in" / "u.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, *extra)
    assert result.rc == 0, result
    outs = output_files(tmp_path / "out")
    assert len(outs) == 1
    return result, outs[0]


def test_inputs_carry_the_needles(tmp_path):
    data = unlisted_file(tmp_path / "u.dcm").read_bytes()
    assert all(n.encode() in data for n in NEEDLES)


def test_unlisted_removed_by_default(run_dicomsort, secret, tmp_path):
    result, out = run(run_dicomsort, secret, tmp_path)
    problems = scan_run(NEEDLES, result, tmp_path / "out")
    assert not problems, "\n".join(problems)
    ds = load(out)
    # Text the IOD requires stays present (emptied), UR and unknown go.
    assert ds.get("SoftwareVersions", "") == ""
    assert "RetrieveURL" not in ds and 0x0018fff2 not in ds
    # The allowlist: codes and the vendor stay.
    assert ds.Manufacturer == "ACME Medical"
    assert ds.AnatomicRegionSequence[0].CodeValue == "T-D3000"
    assert ds.AnatomicRegionSequence[0].CodeMeaning == "Chest"
    assert ds.ConvolutionKernel == "B30f"


def test_unlisted_keep(run_dicomsort, secret, tmp_path):
    """--unlisted keep: the table's literal reading keeps them."""
    result, out = run(run_dicomsort, secret, tmp_path, "--unlisted", "keep")
    data = out.read_bytes()
    assert b"Gottfriedsen" in data and b"Kunigundeweg" in data
    # The overlay's description goes with its group (OverlayData is X).
    assert b"Leopoldinenhof" not in data
    ds = load(out)
    assert ds.DocumentTitle == PLANTED["DocumentTitle"][1]
    assert 0x0018fff2 in ds  # explicit VR LO: readable, so kept too


def test_unlisted_bad_value(run_dicomsort, secret, tmp_path):
    result = run_dicomsort(tmp_path, tmp_path / "out", "--profile", "basic",
                           "--secret", secret, "--unlisted", "maybe")
    assert result.rc == 2, result


def test_unlisted_no_new_dciodvfy_error(run_dicomsort, secret, tmp_path):
    which("dciodvfy")
    src = unlisted_file(tmp_path / "in" / "u.dcm")
    _, out = run(run_dicomsort, secret, tmp_path)
    before, _ = dciodvfy_errors(src)
    after, text = dciodvfy_errors(out)
    assert after <= before, text


def dciodvfy_errors(path):
    """dciodvfy's error lines, with values (not element names) blanked."""
    proc = subprocess.run([which("dciodvfy"), str(path)],
                          capture_output=True, timeout=60)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return {re.sub(r"= <[^>]*>|\[[^\]]*\]", "=<>", line).strip()
            for line in text.splitlines() if line.startswith("Error")}, text


@pytest.mark.parametrize("value,ok", [("remove", True), ("keep", True),
                                      ("maybe", False)])
def test_unlisted_config_key(value, ok, secret, tmp_path):
    """The daemon's deid.unlisted takes "remove" or "keep", nothing else."""
    daemon = os.environ.get("DICOMSORTD_BIN")
    if not daemon:
        pytest.skip("DICOMSORTD_BIN is not set")
    for d in ("drop", "out", "q"):
        (tmp_path / d).mkdir()
    conf = tmp_path / "d.conf"
    conf.write_text(
        f'input = "{tmp_path / "drop"}";\noutput = "{tmp_path / "out"}";\n'
        f'quarantine = "{tmp_path / "q"}";\nprofile = "basic";\n'
        f'deid = {{ secret = "{secret}"; unlisted = "{value}"; }};\n')
    proc = subprocess.run([daemon, "-c", str(conf), "--check-config"],
                          capture_output=True, timeout=30)
    assert (proc.returncode == 0) == ok, proc
    if not ok:
        assert b"unlisted" in proc.stderr, proc
