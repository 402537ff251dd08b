"""Issue 11 class 9: old overlays. An overlay in the pixel data's unused
high bits (OverlayBitPosition not 0) is refused with a reason, like
burned-in text; when the rules remove OverlayData, the whole 60xx group
goes (rows, origin, description, label)."""

from advlib import base_ct, json_of, load, part10, scan_run
from conftest import output_files


def overlay(ds, group=0x6000, bit_position=0, data=True):
    ds.add_new((group << 16) | 0x0010, "US", 16)       # OverlayRows
    ds.add_new((group << 16) | 0x0011, "US", 16)       # OverlayColumns
    ds.add_new((group << 16) | 0x0022, "LO", "Overlay Radegundis")
    ds.add_new((group << 16) | 0x0040, "CS", "G")      # OverlayType
    ds.add_new((group << 16) | 0x0050, "SS", [1, 1])   # OverlayOrigin
    ds.add_new((group << 16) | 0x0100, "US", 16 if bit_position else 1)
    ds.add_new((group << 16) | 0x0102, "US", bit_position)
    ds.add_new((group << 16) | 0x1500, "LO", "Label Theudelinde")
    if data:
        ds.add_new((group << 16) | 0x3000, "OW", b"\xff\x00" * 16)


def test_overlay_group_goes_whole(run_dicomsort, secret, tmp_path):
    ds = base_ct("Ov^Erlay", "OV-1")
    overlay(ds)
    overlay(ds, group=0x6002)
    part10(ds, [], tmp_path / "in" / "o.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret)
    assert result.rc == 0, result
    out = load(output_files(tmp_path / "out")[0])
    left = [e.tag for e in out if 0x6000 <= e.tag.group <= 0x601E]
    assert not left, left
    problems = scan_run(["Radegundis", "Theudelinde"], result,
                        tmp_path / "out")
    assert not problems, "\n".join(problems)


def test_overlay_in_high_bits_refused(run_dicomsort, secret, tmp_path):
    ds = base_ct("Ov^Erlay", "OV-2")
    overlay(ds, bit_position=12, data=False)
    part10(ds, [], tmp_path / "in" / "hb.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--json")
    assert result.rc == 1, result
    reason = json_of(result)["files"][0]["reason"]
    assert "OverlayBitPosition" in reason, reason
    assert not output_files(tmp_path / "out")
