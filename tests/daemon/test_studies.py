"""Study-complete events (issue 15 item 5): a manifest in `completed/` once
no file of a study arrived for study_idle_s, matching what was stored
(pydicom is the independent reader), across SIGTERM and SIGKILL restarts,
never before study_idle_s, and holding no PHI under profile basic.
"""
import datetime
import io
import json
import os
import signal

import pytest

from conftest import (SLOW, files_below, make_items, pydicom, wait_until,
                      write_items)

STATE = ".dicomsortd-state"


def completed_dir(d):
    return d.output / STATE / "completed"


def manifests(d):
    c = completed_dir(d)
    if not c.exists():
        return []
    return sorted(p for p in c.iterdir() if p.name.endswith(".json"))


def stored_files(d):
    return sorted(p for p in files_below(d.output)
                  if not p.relative_to(d.output).parts[0].startswith("."))


def wait_manifests(d, n, timeout=60):
    wait_until(lambda: len(manifests(d)) >= n, timeout,
               what=lambda: "%d manifests (have %d; log:\n%s)" % (
                   n, len(manifests(d)), "\n".join(d.log_lines()[-30:])))
    return [json.loads(p.read_text()) for p in manifests(d)]


def check_against_stored(d, docs):
    """Every manifest path is a stored file whose study and series are
    the manifest's; together they cover every stored file, once."""
    seen = []
    for doc in docs:
        assert doc["output"] == str(d.output)
        total = 0
        for s in doc["series"]:
            assert s["instances"] == len(s["paths"])
            total += s["instances"]
            for rel in s["paths"]:
                assert not rel.startswith("/") and ".." not in rel.split("/")
                ds = pydicom.dcmread(str(d.output / rel),
                                     stop_before_pixels=True)
                assert ds.StudyInstanceUID == doc["study_instance_uid"]
                assert ds.SeriesInstanceUID == s["series_instance_uid"]
                # As stored: "" where the profile removed it.
                assert str(ds.get("SeriesNumber", "")) == s["series_number"]
                assert ds.get("SeriesDescription", "") == \
                    s["series_description"]
                seen.append(rel)
        assert doc["instances"] == total
    stored = [str(p.relative_to(d.output)) for p in stored_files(d)]
    assert sorted(seen) == sorted(stored)
    assert len(seen) == len(set(seen))


def test_two_studies_manifests_match_stored(daemon):
    d = daemon(study_idle_s=2)
    a1 = make_items(3, patient_id="PAT001", prefix="a1_")
    a2 = make_items(2, patient_id="PAT001", series_number=2,
                    series_description="Coronal", prefix="a2_")
    b = make_items(2, patient_id="PAT002", prefix="b_")
    write_items(d.input, a1 + a2 + b)
    d.wait_stored(7)
    docs = wait_manifests(d, 2)
    assert d.stop()[0] == 0
    assert len(manifests(d)) == 2
    by_count = sorted(docs, key=lambda x: x["instances"])
    assert [x["instances"] for x in by_count] == [2, 5]
    assert sorted(s["instances"] for s in by_count[1]["series"]) == [2, 3]
    check_against_stored(d, docs)
    records = d.events("study-complete")
    assert len(records) == 2
    names = {p.name for p in manifests(d)}
    assert all(any(n in r for n in names) for r in records)
    assert not list(completed_dir(d).glob(".tmp-*"))
    assert not list((d.output / STATE / "studies").iterdir())


def test_no_manifest_before_study_idle_s(daemon):
    idle = 8
    d = daemon(study_idle_s=idle)
    items = make_items(4)
    for i, it in enumerate(items):
        write_items(d.input, [it])
        d.wait_stored(i + 1)
        assert manifests(d) == [], "a manifest while files still arrive"
    docs = wait_manifests(d, 1, timeout=idle + 60)
    assert d.stop()[0] == 0
    doc = docs[0]
    assert doc["instances"] == 4

    def t(s):
        return datetime.datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ")
    quiet = (t(doc["completed"]) - t(doc["last_arrival"])).total_seconds()
    assert quiet >= idle, doc
    check_against_stored(d, docs)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_restart_mid_study_one_manifest_with_all(daemon, how):
    d = daemon(study_idle_s=3)
    first = make_items(3, prefix="first")
    write_items(d.input, first)
    d.wait_stored(3)
    assert manifests(d) == []
    if how == "SIGTERM":
        assert d.stop()[0] == 0
    else:
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
    later = make_items(2, prefix="later")
    write_items(d.input, later)
    d.start()
    d.wait_stored(5)
    docs = wait_manifests(d, 1)
    # Stays one: nothing else is owed.
    assert d.stop()[0] == 0
    assert len(manifests(d)) == 1
    assert docs[0]["instances"] == 5
    check_against_stored(d, docs)


def test_kill_between_publication_and_record_still_in_manifest(daemon):
    """SIGKILL while a file is published but before its study note and
    its record: the restart notes it from the stored file (the marker)."""
    d = daemon(start=False, study_idle_s=3, workers=1,
               env={"DICOMSORT_TEST_DELAY": "published:%d" %
                    int(3000 * SLOW)})
    d.start()
    items = make_items(2)
    write_items(d.input, items[:1])
    wait_until(lambda: len(stored_files(d)) == 1, 30,
               what="an output published")
    assert d.events("stored") == []
    d.proc.send_signal(signal.SIGKILL)
    d.proc.wait()
    d.env.pop("DICOMSORT_TEST_DELAY")
    write_items(d.input, items[1:])
    d.start()
    d.wait_stored(2)
    d.wait_input_empty()
    docs = wait_manifests(d, 1)
    assert d.stop()[0] == 0
    assert len(manifests(d)) == 1
    assert docs[0]["instances"] == 2
    assert any('recovered="1"' in ln for ln in d.events("stored")), d.log()
    check_against_stored(d, docs)


def test_basic_profile_manifest_holds_no_phi(daemon, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    d = daemon(study_idle_s=2, profile="basic", deid={"secret": secret})
    items = make_items(3, patient_id="PHI7731XQ",
                       patient_name="Plantedname^Secret",
                       series_description="Axial")
    original_study = pydicom.dcmread(
        io.BytesIO(items[0].data)).StudyInstanceUID
    write_items(d.input, items)
    d.wait_stored(3)
    docs = wait_manifests(d, 1)
    assert d.stop()[0] == 0
    text = manifests(d)[0].read_text()
    for phi in ("PHI7731XQ", "Plantedname", "Secret", original_study,
                items[0].sop_uid, "20240102"):
        assert phi not in text, phi
    assert all("PHI7731XQ" not in p.name for p in manifests(d))
    check_against_stored(d, docs)
    rec = " ".join(d.events("study-complete"))
    assert "PHI7731XQ" not in rec and original_study not in rec


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_hostile_study_uid_names_no_path(daemon, tmp_path):
    """A StudyInstanceUID made to be a path (and to break lines) names
    neither the state file nor the manifest; the manifest is valid JSON
    with the value as stored."""
    d = daemon(study_idle_s=2)
    it = make_items(1)[0]
    ds = pydicom.dcmread(io.BytesIO(it.data))
    ds.StudyInstanceUID = "../../../evil\t1\n2"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, write_like_original=False)
    (d.input / "hostile.dcm").write_bytes(buf.getvalue())
    d.wait_stored(1)
    docs = wait_manifests(d, 1)
    assert d.stop()[0] == 0
    name = manifests(d)[0].name
    assert "/" not in name and "evil" not in name and name.startswith("h")
    stored = stored_files(d)
    assert len(stored) == 1
    ds = pydicom.dcmread(str(stored[0]), stop_before_pixels=True)
    assert docs[0]["study_instance_uid"] == ds.StudyInstanceUID
    assert "evil" in docs[0]["study_instance_uid"]
    assert list(tmp_path.rglob("*evil*")) == []
