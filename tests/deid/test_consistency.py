"""Consistency: keyed pseudonyms and date shifts are stable across files and runs, references follow, re-runs are duplicates."""

import pytest
from pydicom.dataset import Dataset

from conftest import (CT_IMAGE_STORAGE, NEW_UID_RE, PSEUDO_ID_RE, by_name,
                      ct_image, days_between, make_secret, output_files, read,
                      seq, write)

UID_KEYWORDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                "FrameOfReferenceUID"]
DATE_KEYWORDS = ["StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate",
                 "AcquisitionDateTime"]
FLAGS = ["--profile", "basic", "--retain-long-modified-dates", "--json"]


def reference(uid):
    item = Dataset()
    item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    item.ReferencedSOPInstanceUID = uid
    return item


def study_files():
    """Patient A: one study, two series of two images; a2_2 references a1_1
    (ReferencedImageSequence) and a1_2 (SourceImageSequence). Patient B:
    one image."""
    files = {}
    for series in (1, 2):
        for instance in (1, 2):
            ds = ct_image(patient_name="Alpha^Anna", patient_id="PA-1",
                          birth_date="19700101", study=1, series=series,
                          instance=instance)
            ds.SeriesDate = "20210314"
            ds.AcquisitionDateTime = "20210314101400.250000"
            files[f"a{series}_{instance}.dcm"] = ds
    ref = files["a2_2.dcm"]
    ref.ReferencedImageSequence = seq(reference(
        files["a1_1.dcm"].SOPInstanceUID))
    ref.SourceImageSequence = seq(reference(files["a1_2.dcm"].SOPInstanceUID))
    b = ct_image(patient_name="Beta^Bert", patient_id="PB-2",
                 birth_date="19800101", study=2)
    b.StudyDate = "20200101"
    files["b.dcm"] = b
    return files


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    in_dir = tmp_path_factory.mktemp("consistency") / "in"
    files = study_files()
    for name, ds in files.items():
        write(ds, in_dir / name)
    return in_dir, {name: read(in_dir / name) for name in files}


def outputs(out_dir):
    return {name: read(path) for name, path in by_name(out_dir).items()}


def test_two_runs_identical(study, run_dicomsort, secret, tmp_path):
    in_dir, inputs = study
    runs = []
    for k in (1, 2):
        result = run_dicomsort(in_dir, tmp_path / f"out{k}", "--secret",
                               secret, *FLAGS)
        assert result.rc == 0, result
        runs.append(outputs(tmp_path / f"out{k}"))
    first, second = runs
    assert sorted(first) == sorted(inputs)
    for name in inputs:
        for kw in UID_KEYWORDS + DATE_KEYWORDS + ["PatientID"]:
            assert first[name].get(kw) == second[name].get(kw), (name, kw)
        assert NEW_UID_RE.match(first[name].SOPInstanceUID)
    a, b = first["a2_2.dcm"], second["a2_2.dcm"]
    for kw in ("ReferencedImageSequence", "SourceImageSequence"):
        assert a[kw][0].ReferencedSOPInstanceUID == \
            b[kw][0].ReferencedSOPInstanceUID


def test_study_and_series_grouping(study, run_dicomsort, secret, tmp_path):
    in_dir, inputs = study
    result = run_dicomsort(in_dir, tmp_path / "out", "--secret", secret,
                           *FLAGS)
    assert result.rc == 0, result
    out = outputs(tmp_path / "out")
    a_names = [n for n in out if n.startswith("a")]
    assert len({out[n].StudyInstanceUID for n in a_names}) == 1
    assert len({out[n].FrameOfReferenceUID for n in a_names}) == 1
    assert len({out[n].PatientID for n in a_names}) == 1
    for series in ("a1", "a2"):
        names = [n for n in a_names if n.startswith(series)]
        assert len({out[n].SeriesInstanceUID for n in names}) == 1, names
    assert out["a1_1.dcm"].SeriesInstanceUID != out["a2_1.dcm"].SeriesInstanceUID
    assert len({out[n].SOPInstanceUID for n in out}) == len(out)
    assert out["b.dcm"].StudyInstanceUID != out["a1_1.dcm"].StudyInstanceUID
    assert out["b.dcm"].PatientID != out["a1_1.dcm"].PatientID
    for name in out:
        assert PSEUDO_ID_RE.match(out[name].PatientID), out[name].PatientID
        # The new StudyInstanceUID is the same pseudonym wherever it occurs.
        assert out[name].StudyInstanceUID != inputs[name].StudyInstanceUID
    # One study, one series -> one folder per series of the default layout.
    dirs = {p.parent for p in output_files(tmp_path / "out")
            if p.name.startswith("a")}
    assert len(dirs) == 2, dirs


def test_references_follow(study, run_dicomsort, secret, tmp_path):
    """A reference to another input's SOPInstanceUID points at that file's
    new SOPInstanceUID; the referenced class stays."""
    in_dir, _ = study
    result = run_dicomsort(in_dir, tmp_path / "out", "--secret", secret,
                           *FLAGS)
    assert result.rc == 0, result
    out = outputs(tmp_path / "out")
    ref = out["a2_2.dcm"]
    item = ref.ReferencedImageSequence[0]
    assert item.ReferencedSOPInstanceUID == out["a1_1.dcm"].SOPInstanceUID
    assert item.ReferencedSOPClassUID == CT_IMAGE_STORAGE
    item = ref.SourceImageSequence[0]
    assert item.ReferencedSOPInstanceUID == out["a1_2.dcm"].SOPInstanceUID
    # And the meta header follows the new SOPInstanceUID.
    for ds in out.values():
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_pseudonyms_are_the_documented_hmac(study, run_dicomsort, secret,
                                            tmp_path):
    """Computed here with Python's hmac, independently: a UID becomes
    2.25.<first 128 bits of HMAC-SHA-256(secret, "uid" NUL uid)> and a
    PatientID ANON<first 6 bytes of HMAC(secret, "patient-id" NUL id)>."""
    import hashlib
    import hmac
    in_dir, inputs = study
    key = secret.read_bytes().rstrip(b"\r\n")
    result = run_dicomsort(in_dir, tmp_path / "out", "--secret", secret,
                           *FLAGS)
    assert result.rc == 0, result
    out = outputs(tmp_path / "out")

    def mac(domain, text):
        return hmac.new(key, domain + b"\0" + text.encode(),
                        hashlib.sha256).digest()

    for name, src in inputs.items():
        for kw in UID_KEYWORDS:
            want = "2.25.%d" % int.from_bytes(mac(b"uid", src.get(kw))[:16],
                                              "big")
            assert out[name].get(kw) == want, (name, kw)
        assert out[name].PatientID == \
            "ANON" + mac(b"patient-id", src.PatientID)[:6].hex().upper()


def test_other_secret_other_pseudonyms(study, run_dicomsort, secret,
                                       tmp_path):
    in_dir, inputs = study
    other = make_secret(tmp_path / "other-secret", "another site secret 42!")
    r1 = run_dicomsort(in_dir, tmp_path / "out1", "--secret", secret, *FLAGS)
    r2 = run_dicomsort(in_dir, tmp_path / "out2", "--secret", other, *FLAGS)
    assert r1.rc == 0 and r2.rc == 0, (r1, r2)
    first, second = outputs(tmp_path / "out1"), outputs(tmp_path / "out2")
    for name in inputs:
        for kw in UID_KEYWORDS + ["PatientID"]:
            assert first[name].get(kw) != second[name].get(kw), (name, kw)


def date_shift(src, out):
    """Days each date moved back, per keyword ({} if dates are gone)."""
    shifts = {}
    for kw in DATE_KEYWORDS:
        if src.get(kw) and out.get(kw):
            shifts[kw] = days_between(src.get(kw), out.get(kw))
        elif src.get(kw):
            shifts[kw] = f"not shifted: {out.get(kw)!r}"
    return shifts


def test_same_patient_same_shift(study, run_dicomsort, secret, tmp_path):
    """Dates of one patient move by one amount, in this run and the next,
    for another study too; the time of day stays."""
    in_dir, inputs = study
    r1 = run_dicomsort(in_dir, tmp_path / "out1", "--secret", secret, *FLAGS)
    assert r1.rc == 0, r1
    out = outputs(tmp_path / "out1")
    shifts = {n: date_shift(inputs[n], out[n]) for n in inputs}
    a_values = {v for n in shifts if n.startswith("a")
                for v in shifts[n].values()}
    assert len(a_values) == 1 and isinstance(next(iter(a_values)), int), \
        shifts
    days = a_values.pop()
    assert 1 <= days <= 365
    assert out["a1_1.dcm"].AcquisitionDateTime[8:] == "101400.250000"
    assert out["a1_1.dcm"].StudyTime == inputs["a1_1.dcm"].StudyTime

    # A later study of patient A, alone, in another run.
    later = ct_image(patient_name="Alpha^Anna", patient_id="PA-1",
                     birth_date="19700101", study=3)
    later.StudyDate = "20230707"
    write(later, tmp_path / "in2" / "later.dcm")
    r2 = run_dicomsort(tmp_path / "in2", tmp_path / "out2", "--secret",
                       secret, *FLAGS)
    assert r2.rc == 0, r2
    (path,) = output_files(tmp_path / "out2")
    assert days_between("20230707", read(path).StudyDate) == days
    assert read(path).PatientID == out["a1_1.dcm"].PatientID


def test_rerun_is_all_duplicates(study, run_dicomsort, secret, tmp_path):
    in_dir, inputs = study
    r1 = run_dicomsort(in_dir, tmp_path / "out", "--secret", secret, *FLAGS)
    assert r1.rc == 0, r1
    before = {p: p.read_bytes() for p in output_files(tmp_path / "out")}
    r2 = run_dicomsort(in_dir, tmp_path / "out", "--secret", secret, *FLAGS)
    assert r2.rc == 0, r2
    assert r2.json["stored"] == 0, r2
    assert r2.json["duplicates"] == len(inputs), r2
    after = {p: p.read_bytes() for p in output_files(tmp_path / "out")}
    assert after == before


def test_run_split_in_two_identical(study, run_dicomsort, secret, tmp_path):
    """The same files sorted in one run, or in two runs over two halves
    (other worker counts, into one output tree), get identical UIDs,
    references, PatientIDs and date shifts."""
    import shutil
    in_dir, inputs = study
    whole = run_dicomsort(in_dir, tmp_path / "whole", "--secret", secret,
                          *FLAGS)
    assert whole.rc == 0, whole
    halves = {"h1": ["a1_1.dcm", "a2_2.dcm", "b.dcm"],
              "h2": ["a1_2.dcm", "a2_1.dcm"]}
    assert sorted(sum(halves.values(), [])) == sorted(inputs)
    for k, (half, names) in enumerate(sorted(halves.items())):
        for name in names:
            (tmp_path / half).mkdir(exist_ok=True)
            shutil.copyfile(in_dir / name, tmp_path / half / name)
        result = run_dicomsort(tmp_path / half, tmp_path / "split",
                               "--secret", secret, "--jobs", str(k + 1),
                               *FLAGS)
        assert result.rc == 0, result
    one, two = outputs(tmp_path / "whole"), outputs(tmp_path / "split")
    assert sorted(one) == sorted(two) == sorted(inputs)
    for name in inputs:
        for kw in UID_KEYWORDS + DATE_KEYWORDS + ["PatientID", "PatientName"]:
            assert one[name].get(kw) == two[name].get(kw), (name, kw)
        assert date_shift(inputs[name], one[name]) == \
            date_shift(inputs[name], two[name])
    for kw in ("ReferencedImageSequence", "SourceImageSequence"):
        assert one["a2_2.dcm"][kw][0].ReferencedSOPInstanceUID == \
            two["a2_2.dcm"][kw][0].ReferencedSOPInstanceUID
    # Same paths too: the tree does not depend on how the input was cut.
    rel = sorted(str(p.relative_to(tmp_path / "whole"))
                 for p in output_files(tmp_path / "whole"))
    assert rel == sorted(str(p.relative_to(tmp_path / "split"))
                         for p in output_files(tmp_path / "split"))
