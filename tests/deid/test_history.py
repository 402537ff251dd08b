"""Issue 11 class 11: a second de-identification appends to the record.
DeidentificationMethod keeps the earlier tool's values and gains this
one's; DeidentificationMethodCodeSequence keeps its items and gains the
codes it lacks."""

from pydicom.dataset import Dataset

from advlib import base_ct, load, part10
from conftest import code_item, output_files

EARLIER = "CTP DICOM-S142 Basic Profile"


def test_history_appends(run_dicomsort, secret, tmp_path):
    ds = base_ct("His^Tory", "HI-1")
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = EARLIER
    ds.DeidentificationMethodCodeSequence = [
        code_item("113100", "Basic Application Confidentiality Profile",
                  "DCM"),
        code_item("113101", "Clean Pixel Data Option", "DCM")]
    part10(ds, [], tmp_path / "in" / "h.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret,
                           "--clean-descriptors")
    assert result.rc == 0, result
    out = load(output_files(tmp_path / "out")[0])
    method = out.DeidentificationMethod
    values = list(method) if out["DeidentificationMethod"].VM > 1 else [method]
    assert values[0] == EARLIER, values
    assert any(v.startswith("DICOMSORTD") for v in values), values
    codes = [(i.CodeValue, i.CodingSchemeDesignator)
             for i in out.DeidentificationMethodCodeSequence]
    assert codes.count(("113100", "DCM")) == 1, codes
    assert ("113101", "DCM") in codes and ("113105", "DCM") in codes, codes


def test_first_record(run_dicomsort, secret, tmp_path):
    part10(base_ct("His^Tory", "HI-2"), [], tmp_path / "in" / "f.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret)
    assert result.rc == 0, result
    out = load(output_files(tmp_path / "out")[0])
    assert str(out.DeidentificationMethod).startswith("DICOMSORTD")
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == \
        ["113100"]
