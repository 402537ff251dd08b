"""Issue 11 class 10: removing what the table removes must not create
dciodvfy errors. A verified SR needs its VerifyingObserverSequence with an
item, a container its ContentSequence: D keeps one item of dummy values
(nothing of the original), X/Z rows empty the sequence; every output is
compared with its input by dciodvfy."""

import re
import subprocess

import pytest
from pydicom.dataset import Dataset

from advlib import load, part10, scan_run
from conftest import UID_ROOT, code_item, output_files, which

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
NEEDLES = ["Hieronymussen", "Waltraudis", "Gundelfinger", "Rosenthalweg"]


def sr(path):
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = BASIC_TEXT_SR
    ds.SOPInstanceUID = f"{UID_ROOT}.88.1.1"
    ds.StudyDate, ds.StudyTime = "20210314", "101010"
    ds.ContentDate, ds.ContentTime = "20210314", "101500"
    ds.AccessionNumber = "ACC8801"
    ds.Modality = "SR"
    ds.Manufacturer = "ACME Medical"
    ds.ReferringPhysicianName = "Hieronymussen^Waltraudis"
    ds.PatientName = "Gundelfinger^Hans"
    ds.PatientID = "SR-8801"
    ds.PatientBirthDate = "19500505"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = f"{UID_ROOT}.88"
    ds.SeriesInstanceUID = f"{UID_ROOT}.88.1"
    ds.StudyID = "S88"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.ReferencedPerformedProcedureStepSequence = []
    ds.PerformedProcedureCodeSequence = []
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "VERIFIED"
    observer = Dataset()
    observer.VerifyingObserverName = "Hieronymussen^Waltraudis"
    observer.VerifyingObserverIdentificationCodeSequence = []
    observer.VerifyingOrganization = "Gundelfinger Klinik Rosenthalweg"
    observer.VerificationDateTime = "20210314120000"
    ds.VerifyingObserverSequence = [observer]
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [code_item("11528-7", "Radiology Report",
                                            "LN")]
    ds.ContinuityOfContent = "SEPARATE"
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.ConceptNameCodeSequence = [code_item("121071", "Finding", "DCM")]
    text.TextValue = "Gundelfinger Hans, Rosenthalweg 3: no finding"
    ds.ContentSequence = [text]
    return part10(ds, [], path)


def errors(path):
    proc = subprocess.run([which("dciodvfy"), str(path)],
                          capture_output=True, timeout=60)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return {re.sub(r"= <[^>]*>|\[[^\]]*\]", "=<>", line).strip()
            for line in text.splitlines() if line.startswith("Error")}, text


@pytest.mark.parametrize("extra", [[], ["--clean-structured-content"]],
                         ids=["basic", "clean-structured-content"])
def test_sr_stays_valid(extra, run_dicomsort, secret, tmp_path):
    src = sr(tmp_path / "in" / "sr.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, *extra)
    assert result.rc == 0, result
    out = output_files(tmp_path / "out")[0]
    ds = load(out)
    assert len(ds.VerifyingObserverSequence) == 1
    assert len(ds.ContentSequence) == 1
    problems = scan_run(NEEDLES, result, tmp_path / "out")
    assert not problems, "\n".join(problems)
    before, _ = errors(src)
    after, text = errors(out)
    assert after <= before, text
