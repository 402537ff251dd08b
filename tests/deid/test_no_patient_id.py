"""Issue 11 class 8: objects without a PatientID are not merged into one
pseudonymous patient with one date shift. The key is what the object
carries: PatientName + PatientBirthDate, else the StudyInstanceUID; the
unknown-ID policy can still reject or hold them."""

from advlib import base_ct, json_of, load, part10
from conftest import days_between, output_files


def no_id(name, birth, study, path):
    ds = base_ct(name, "x", study=study)
    del ds.PatientID
    if name is None:
        del ds.PatientName
    ds.PatientBirthDate = birth
    return part10(ds, [], path)


def test_patients_without_id_stay_apart(run_dicomsort, secret, tmp_path):
    in_dir = tmp_path / "in"
    no_id("Anna^Ohneid", "19700101", 1, in_dir / "a1.dcm")
    no_id("Anna^Ohneid", "19700101", 2, in_dir / "a2.dcm")  # same patient
    no_id("Berta^Ohneid", "19800101", 3, in_dir / "b.dcm")
    no_id(None, "", 4, in_dir / "c.dcm")                   # nothing: per study
    no_id(None, "", 5, in_dir / "d.dcm")
    result = run_dicomsort(in_dir, tmp_path / "out", "--profile", "basic",
                           "--secret", secret,
                           "--retain-long-modified-dates")
    assert result.rc == 0, result
    out = {p.name: load(p) for p in output_files(tmp_path / "out")}
    ids = {n: str(d.PatientID) for n, d in out.items()}
    assert all(i.startswith("ANON") for i in ids.values()), ids
    assert ids["a1.dcm"] == ids["a2.dcm"]
    assert len({ids["a1.dcm"], ids["b.dcm"], ids["c.dcm"],
                ids["d.dcm"]}) == 4, ids
    shifts = {n: days_between("20210314", str(d.StudyDate))
              for n, d in out.items()}
    assert shifts["a1.dcm"] == shifts["a2.dcm"]
    assert len({p.relative_to(tmp_path / "out").parts[0]
                for p in output_files(tmp_path / "out")}) == 4


def test_no_id_under_reject_policy(run_dicomsort, secret, tmp_path):
    no_id("Anna^Ohneid", "19700101", 1, tmp_path / "in" / "a.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--unknown-id",
                           "reject", "--json")
    assert result.rc == 1, result
    assert json_of(result)["files"][0]["reason"] == "no PatientID"
