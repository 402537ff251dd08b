"""Issue 11 classes 12 and 13. A value that cannot be read (an accessor
error, not an absence) under seed or basic rejects the file with a reason
instead of passing it through unread; what lists original IDs
(missing_patient_ids.log) is created with mode 0600."""

import os
import stat

import pytest
from pydicom.dataset import Dataset

from advlib import base_ct, json_of, part10, scan_run
from conftest import output_files

HIDDEN = "Verborgenhausen^Ilsebill"


def sq_name_file(path, tag=0x00100010):
    """PatientName (or another attribute) written as a sequence: the name
    sits in its item, where no accessor for PatientName can read it."""
    ds = base_ct("Placeholder^P", "FC-1")
    if tag in ds:
        del ds[tag]
    inner = Dataset()
    inner.PatientName = HIDDEN
    ds.add_new(tag, "SQ", [inner])
    return part10(ds, [], path)


@pytest.mark.parametrize("profile", [["--anonymize"],
                                     ["--profile", "basic"]],
                         ids=["seed", "basic"])
def test_unreadable_value_rejects(profile, run_dicomsort, secret, tmp_path):
    sq_name_file(tmp_path / "in" / "sq.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", *profile,
                           "--secret", secret, "--json")
    assert result.rc == 1, result
    files = json_of(result)["files"]
    assert files[0]["status"] == "rejected", files
    assert "cannot be read" in files[0]["reason"], files
    problems = scan_run(["Verborgenhausen", "Ilsebill"], result,
                        tmp_path / "out")
    assert not problems, "\n".join(problems)


def test_missing_ids_log_is_private(run_dicomsort, secret, tmp_path):
    in_dir = tmp_path / "in"
    part10(base_ct("Log^Lotte", "LOG-4711-UNMAPPED"), [], in_dir / "a.dcm")
    table = tmp_path / "ids.txt"
    table.write_text("OTHER-1,NEW-1\n")
    old = os.umask(0o022)
    try:
        for existing in (False, True):
            log = tmp_path / "cwd" / "missing_patient_ids.log"
            if existing:
                log.write_text("stale\n")
                os.chmod(log, 0o644)
            result = run_dicomsort(in_dir, tmp_path / f"out{existing}",
                                   "--ID_correlation", table)
            assert result.rc == 0, result
            assert stat.S_IMODE(log.stat().st_mode) == 0o600
            assert log.read_text().split() == ["LOG-4711-UNMAPPED"]
    finally:
        os.umask(old)
