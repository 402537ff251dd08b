"""dicomsortd --check-config -c CONF --sample DIR (issue 15 item 6).

Every kind of outcome against real files and the real pipeline; nothing
written anywhere (folders byte- and mtime-identical, and strace sees no
write-open, rename, link, unlink or mkdir); the destinations predicted are
the ones the real daemon then stores under.
"""
import json
import os
import pathlib
import re
import shutil
import subprocess

import pytest

from conftest import (Daemon, base_config, conf_text, daemon_bin, dicom_bytes,
                      files_below)

WRITES = re.compile(r"\b(creat|rename|renameat2|link|linkat|unlink|unlinkat|"
                    r"mkdir|mkdirat)\(")
WRITE_OPEN = re.compile(r"\bopenat\(.*(O_WRONLY|O_RDWR|O_CREAT|O_TRUNC)")


def snapshot(root):
    """Everything below root: names, kinds, bytes, mtimes (folders too)."""
    root = pathlib.Path(root)
    out = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = pathlib.Path(dirpath) / n
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p), st.st_mtime_ns)
            elif p.is_dir():
                out[rel] = ("dir", st.st_mtime_ns)
            else:
                out[rel] = ("file", p.read_bytes(), st.st_mtime_ns)
    out["."] = ("dir", root.stat().st_mtime_ns)
    return out


def secret_file(tmp_path):
    p = tmp_path / "secret"
    p.write_bytes(os.urandom(32))
    p.chmod(0o600)
    return p


def make_samples(tmp_path):
    s = tmp_path / "samples"
    (s / "ct").mkdir(parents=True)
    (s / ".incoming").mkdir()
    (s / "ct" / "a.dcm").write_bytes(dicom_bytes(patient_name="Planted^Name"))
    (s / "ct" / "b.dcm").write_bytes(dicom_bytes(series_number=2,
                                                 series_description="Cor"))
    (s / "unknown.dcm").write_bytes(dicom_bytes(patient_id="NOTINTABLE"))
    (s / "notdicom.dcm").write_bytes(b"this is no DICOM file\n" * 10)
    (s / "upload.part").write_bytes(dicom_bytes())
    (s / ".incoming" / "c.dcm").write_bytes(dicom_bytes())
    os.symlink("ct/a.dcm", s / "link.dcm")
    return s


def config(tmp_path, **kw):
    for n in ("in", "out", "quarantine", "hold"):
        (tmp_path / n).mkdir(exist_ok=True)
    table = tmp_path / "ids.csv"
    table.write_text("PAT001,NEWA\n")
    cfg = base_config(tmp_path, correlation_table=table, hold=tmp_path / "hold",
                      ignore=[".*", "*.part"], **kw)
    cfg["deid"] = dict(cfg.get("deid", {}), unknown_id="hold")
    return cfg


def write_conf(tmp_path, **kw):
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(conf_text(config(tmp_path, **kw)))
    return conf


def dry_run(conf, samples, *extra, strace_log=None):
    argv = [daemon_bin(), "--check-config", "-c", str(conf), "--sample",
            str(samples)] + list(extra)
    env = dict(os.environ)
    if strace_log is not None:
        # LeakSanitizer cannot run under ptrace; the same run without
        # strace checks leaks (the callers run both).
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
        argv = ["strace", "-f", "-qq", "-o", str(strace_log), "-e",
                "trace=openat,creat,rename,renameat2,link,linkat,unlink,"
                "unlinkat,mkdir,mkdirat"] + argv
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr
    return r


def by_file(doc):
    return {f["file"]: f for f in doc["files"]}


def test_outcomes_under_seed_and_nothing_written(tmp_path):
    if shutil.which("strace") is None:
        pytest.fail("strace is in scripts/deps and must be installed")
    samples = make_samples(tmp_path)
    conf = write_conf(tmp_path, profile="seed")
    out = tmp_path / "out"
    (out / "earlier").mkdir()
    (out / "earlier" / "x.dcm").write_bytes(dicom_bytes())
    watched = [samples, out, tmp_path / "in", tmp_path / "quarantine",
               tmp_path / "hold"]
    before = [snapshot(p) for p in watched]

    text = dry_run(conf, samples).stdout
    trace = tmp_path / "strace.txt"
    doc = json.loads(dry_run(conf, samples, "--json",
                             strace_log=trace).stdout)

    assert [snapshot(p) for p in watched] == before
    assert not (out / ".dicomsortd-state").exists()
    lines = trace.read_text().splitlines()
    assert any("openat(" in ln for ln in lines), "strace saw nothing"
    bad = [ln for ln in lines if WRITES.search(ln) or WRITE_OPEN.search(ln)]
    assert bad == []

    files = by_file(doc)
    assert doc["output"] == str(out)
    a, b = files["ct/a.dcm"], files["ct/b.dcm"]
    assert a["outcome"] == "stored" and b["outcome"] == "stored"
    assert a["destination"].startswith("NEWA/20240102/1_Axial/")
    assert b["destination"].startswith("NEWA/20240102/2_Cor/")
    changes = {c["keyword"]: (c["old"], c["new"]) for c in a["changes"]}
    assert changes == {"PatientName": ("Planted^Name", "ANONYMIZED"),
                       "PatientID": ("PAT001", "NEWA"),
                       "PatientBirthDate": ("19700101", "")}
    assert files["unknown.dcm"]["outcome"] == "held"
    assert "deid.unknown_id" in files["unknown.dcm"]["reason"]
    assert files["notdicom.dcm"]["outcome"] == "quarantined"
    assert "not a DICOM file" in files["notdicom.dcm"]["reason"]
    assert files["upload.part"]["outcome"] == "ignored"
    assert files[".incoming/c.dcm"]["outcome"] == "ignored"
    assert files["link.dcm"]["outcome"] == "skipped"
    assert doc["counts"] == {"stored": 2, "quarantined": 1, "held": 1,
                             "ignored": 2, "skipped": 1, "error": 0}

    # The same verdicts for a human.
    assert re.search(r"^ct/a\.dcm: stored as NEWA/20240102/1_Axial/\S+\.dcm$",
                     text, re.M)
    assert '    PatientName (0010,0010): "Planted^Name" -> "ANONYMIZED"' \
        in text
    assert re.search(r"^unknown\.dcm: held: ", text, re.M)
    assert re.search(r"^notdicom\.dcm: quarantined: input rejected: ",
                     text, re.M)
    assert re.search(r"^upload\.part: ignored", text, re.M)
    assert "nothing was written" in text


def test_basic_profile_predicts_what_the_daemon_stores(tmp_path):
    samples = make_samples(tmp_path)
    secret = secret_file(tmp_path)
    cfg = config(tmp_path, profile="basic", deid={"secret": secret})
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(conf_text(cfg))
    out = tmp_path / "out"
    before = snapshot(samples), snapshot(out)
    doc = json.loads(dry_run(conf, samples, "--json").stdout)
    assert (snapshot(samples), snapshot(out)) == before
    files = by_file(doc)
    a = files["ct/a.dcm"]
    assert a["outcome"] == "stored"
    assert "Planted" not in a["destination"]
    assert "PAT001" not in a["destination"]
    changes = {c["keyword"]: (c["old"], c["new"]) for c in a["changes"]}
    assert changes["PatientName"][0] == "Planted^Name"
    assert "Planted" not in (changes["PatientName"][1] or "")
    assert changes["PatientID"] == ("PAT001", "NEWA")
    old_uid, new_uid = changes["SOPInstanceUID"]
    assert old_uid != new_uid and a["destination"].endswith(new_uid + ".dcm")
    assert files["unknown.dcm"]["outcome"] == "held"

    # The real daemon on the same files stores them where predicted.
    predicted = sorted(f["destination"] for f in doc["files"]
                       if f["outcome"] == "stored")
    for n in ("ct/a.dcm", "ct/b.dcm"):
        shutil.copy(samples / n, tmp_path / "in" / pathlib.Path(n).name)
    d = Daemon(tmp_path, cfg)
    try:
        d.wait_stored(2)
    finally:
        assert d.stop()[0] == 0
    stored = sorted(str(p.relative_to(out)) for p in files_below(out)
                    if not p.relative_to(out).parts[0].startswith("."))
    assert stored == predicted
