"""The PatientID policy (correlation table, unknown IDs: keep, pseudonymize,
reject, hold), the pseudonym and PatientName settings, and the burned-in
text guard and its --allow-burned-in override."""

import os
import signal
import subprocess
import time

import pytest

from conftest import (PSEUDO_ID_RE, SC_IMAGE_STORAGE, by_name, ct_image,
                      make_secret, output_files, read, write)
from test_leak import dicomsortd_bin  # noqa: F401  (fixture)

MAPPED, UNMAPPED = "PM-100", "PU-200"


@pytest.fixture
def policy_input(tmp_path):
    in_dir = tmp_path / "in"
    write(ct_image(patient_name="Mapped^Maria", patient_id=MAPPED, study=1),
          in_dir / "mapped.dcm")
    write(ct_image(patient_name="Unmapped^Ulf", patient_id=UNMAPPED, study=2),
          in_dir / "unmapped.dcm")
    table = tmp_path / "ids.txt"
    table.write_text(f"# old new\n{MAPPED},RESEARCH-7\n")
    return in_dir, table


def run_policy(run_dicomsort, policy_input, secret, tmp_path, *extra):
    in_dir, table = policy_input
    return run_dicomsort(in_dir, tmp_path / "out", "--profile", "basic",
                         "--secret", secret, "--ID_correlation", table,
                         "--json", *extra)


def status(result):
    return {os.path.basename(f["source"]): f for f in result.json["files"]}


def test_table_maps_and_default_pseudonymizes(run_dicomsort, policy_input,
                                              secret, tmp_path):
    result = run_policy(run_dicomsort, policy_input, secret, tmp_path)
    assert result.rc == 0, result
    out = {n: read(p) for n, p in by_name(tmp_path / "out").items()}
    assert out["mapped.dcm"].PatientID == "RESEARCH-7"
    assert out["mapped.dcm"].PatientName == "RESEARCH-7"
    assert PSEUDO_ID_RE.match(out["unmapped.dcm"].PatientID)
    assert out["unmapped.dcm"].PatientName == out["unmapped.dcm"].PatientID
    # As the original tool did: the table's misses are listed for its owner.
    assert result.json["unmapped_ids"] == 1
    log = result.cwd / "missing_patient_ids.log"
    assert log.read_text().split() == [UNMAPPED]


def test_unknown_id_keep(run_dicomsort, policy_input, secret, tmp_path):
    result = run_policy(run_dicomsort, policy_input, secret, tmp_path,
                        "--unknown-id", "keep")
    assert result.rc == 0, result
    out = {n: read(p) for n, p in by_name(tmp_path / "out").items()}
    assert out["unmapped.dcm"].PatientID == UNMAPPED
    assert out["mapped.dcm"].PatientID == "RESEARCH-7"


def test_unknown_id_reject(run_dicomsort, policy_input, secret, tmp_path):
    result = run_policy(run_dicomsort, policy_input, secret, tmp_path,
                        "--unknown-id", "reject")
    assert result.rc == 1, result
    files = status(result)
    assert files["unmapped.dcm"]["status"] == "rejected", files
    assert UNMAPPED not in files["unmapped.dcm"]["reason"]
    assert files["mapped.dcm"]["status"] == "stored", files
    assert [p.name for p in output_files(tmp_path / "out")] == ["mapped.dcm"]


def test_unknown_id_hold_needs_the_daemon(run_dicomsort, policy_input,
                                          secret, tmp_path):
    result = run_policy(run_dicomsort, policy_input, secret, tmp_path,
                        "--unknown-id", "hold")
    assert result.rc == 2, result
    assert output_files(tmp_path / "out") == []


def test_prefix_and_patient_name(run_dicomsort, policy_input, secret,
                                 tmp_path):
    result = run_policy(run_dicomsort, policy_input, secret, tmp_path,
                        "--pseudonym-prefix", "STUDY7-", "--patient-name",
                        "RESEARCH^SUBJECT")
    assert result.rc == 0, result
    out = {n: read(p) for n, p in by_name(tmp_path / "out").items()}
    assert out["unmapped.dcm"].PatientID.startswith("STUDY7-")
    assert len(out["unmapped.dcm"].PatientID) == len("STUDY7-") + 12
    for ds in out.values():
        assert ds.PatientName == "RESEARCH^SUBJECT"


def test_pseudonym_is_keyed(run_dicomsort, policy_input, tmp_path):
    """Another secret, another pseudonym for the same unknown ID."""
    ids = []
    for k, text in enumerate(("first secret 0123456789", "second secret 987654")):
        secret = make_secret(tmp_path / f"s{k}", text)
        in_dir, table = policy_input
        result = run_dicomsort(in_dir, tmp_path / f"out{k}", "--profile",
                               "basic", "--secret", secret, "--quiet")
        assert result.rc == 0, result
        ids.append(read(by_name(tmp_path / f"out{k}")["unmapped.dcm"])
                   .PatientID)
    assert ids[0] != ids[1] and all(PSEUDO_ID_RE.match(i) for i in ids)


# ---- the burned-in text guard ----

def burned_in_inputs(in_dir):
    cases = {}
    ds = ct_image(study=1)
    ds.BurnedInAnnotation = "YES"
    cases["yes.dcm"] = (ds, "rejected")
    ds = ct_image(study=2)
    del ds.BurnedInAnnotation
    ds.Modality = "US"
    cases["us.dcm"] = (ds, "rejected")
    ds = ct_image(study=3)
    del ds.BurnedInAnnotation
    ds.SOPClassUID = SC_IMAGE_STORAGE
    ds.Modality = "CT"
    cases["sc.dcm"] = (ds, "rejected")
    ds = ct_image(study=4)
    ds.Modality = "US"
    ds.BurnedInAnnotation = "NO"  # says so: trusted
    cases["us-no.dcm"] = (ds, "stored")
    ds = ct_image(study=5)
    del ds.BurnedInAnnotation  # a CT that does not say
    cases["ct-absent.dcm"] = (ds, "stored")
    for name, (ds, _) in cases.items():
        write(ds, in_dir / name)
    return {name: want for name, (_, want) in cases.items()}


def test_burned_in_guard(run_dicomsort, secret, tmp_path):
    want = burned_in_inputs(tmp_path / "in")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--json")
    assert result.rc == 1, result
    files = status(result)
    assert {n: f["status"] for n, f in files.items()} == want, files
    for name, f in files.items():
        if want[name] == "rejected":
            assert "burned-in" in f["reason"], f
    assert sorted(p.name for p in output_files(tmp_path / "out")) == \
        sorted(n for n, w in want.items() if w == "stored")


def test_allow_burned_in(run_dicomsort, secret, tmp_path):
    want = burned_in_inputs(tmp_path / "in")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--json",
                           "--allow-burned-in")
    assert result.rc == 0, result
    assert len(output_files(tmp_path / "out")) == len(want)


# ---- hold, in the daemon ----

def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def published(folder):
    """Finished files only: a temp file (.name.tmp) may be on its way."""
    return [p for p in output_files(folder) if not p.name.startswith(".")]


def test_daemon_hold_then_release(dicomsortd_bin, tmp_path):  # noqa: F811
    """unknown_id = "hold": a file whose ID the table lacks waits in the
    hold folder; once the table has it, SIGHUP releases and stores it."""
    dirs = {n: tmp_path / n for n in ("drop", "out", "q", "hold")}
    for d in dirs.values():
        d.mkdir()
    secret = make_secret(tmp_path / "secret")
    table = tmp_path / "ids.txt"
    table.write_text(f"{MAPPED} RESEARCH-7\n")
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(
        f'input = "{dirs["drop"]}";\noutput = "{dirs["out"]}";\n'
        f'quarantine = "{dirs["q"]}";\nhold = "{dirs["hold"]}";\n'
        f'correlation_table = "{table}";\nprofile = "basic";\n'
        f'settle_ms = 200;\nlog_target = "stderr";\n'
        f'deid = {{ secret = "{secret}"; unknown_id = "hold"; }};\n')
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([dicomsortd_bin, "-c", str(conf)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        for name, pid in (("mapped.dcm", MAPPED), ("held.dcm", UNMAPPED)):
            tmp = dirs["drop"] / f".{name}.part"
            write(ct_image(patient_id=pid, study=len(name)), tmp)
            os.rename(tmp, dirs["drop"] / name)
        assert wait_for(lambda: len(published(dirs["out"])) == 1 and
                        published(dirs["hold"])), \
            (tmp_path / "daemon.log").read_bytes()[-3000:]
        assert read(published(dirs["out"])[0]).PatientID == "RESEARCH-7"
        assert published(dirs["q"]) == []
        table.write_text(f"{MAPPED} RESEARCH-7\n{UNMAPPED} RESEARCH-8\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: len(published(dirs["out"])) == 2), \
            (tmp_path / "daemon.log").read_bytes()[-3000:]
        ids = sorted(read(p).PatientID for p in published(dirs["out"]))
        assert ids == ["RESEARCH-7", "RESEARCH-8"]
        assert wait_for(lambda: not [p for p in published(dirs["hold"])
                                     if p.suffix == ".dcm"])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
