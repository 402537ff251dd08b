"""The audit trail in a real journald.

A private systemd-journald runs in its own mount namespace (a tmpfs over
/run, so the host's journal is untouched); dicomsortd logs to it with
--log-target journal, and journalctl reads the records back by field.
Needs root (unshare -m); skipped otherwise.
"""
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import textwrap

import pytest

from conftest import daemon_bin, dicom_bytes

JOURNALD = "/lib/systemd/systemd-journald"


def need_namespace():
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    for tool in ("unshare", "journalctl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not os.access(JOURNALD, os.X_OK):
        pytest.skip(f"{JOURNALD} is not installed")
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True,
                           check=False)
    if probe.returncode != 0:
        pytest.skip("unshare -m is not permitted here: "
                    + probe.stderr.decode(errors="replace").strip())


def write_ct(path, patient_id, name, birth_date):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dicom_bytes(patient_id=patient_id, patient_name=name,
                                 birth_date=birth_date, series_number=3,
                                 series_description="Thorax"))


def run_in_private_journal(tmp_path, config):
    """Run the daemon for a few seconds under a private journald and return
    every record it wrote, as dicts."""
    records = tmp_path / "records.json"
    script = tmp_path / "run.sh"
    script.write_text(textwrap.dedent(f"""\
        set -eu
        mount -t tmpfs tmpfs /run
        mkdir -p /run/systemd/journal /run/log/journal
        {JOURNALD} & jpid=$!
        for i in $(seq 50); do
            [ -S /run/systemd/journal/socket ] && break
            sleep 0.1
        done
        timeout -s TERM 6 {daemon_bin()} -c {config} --log-target journal \\
            2> {tmp_path}/daemon.stderr || true
        sleep 0.5
        journalctl -D /run/log/journal --no-pager -o json \\
            SYSLOG_IDENTIFIER=dicomsortd > {records}
        kill $jpid
        """))
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh",
                           str(script)], capture_output=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return [json.loads(line) for line in records.read_text().splitlines()
            if line.strip()]


def field(record, name):
    value = record.get(name, "")
    if isinstance(value, list):     # journald gives bytes as a list
        value = bytes(value).decode("utf-8", "replace")
    return value


def test_structured_records_without_identity(tmp_path):
    need_namespace()
    incoming = tmp_path / "Doe_Jane_SECRET123"     # a PACS-style folder name
    write_ct(incoming / "Doe^Jane.dcm", "SECRET123", "Doe^Jane", "19610203")
    write_ct(incoming / "stranger.dcm", "UNMAPPED77", "Roe^Richard", "19700101")
    (incoming / "garbage.dcm").write_bytes(b"not dicom at all " * 10)
    table = tmp_path / "ids.csv"
    table.write_text("SECRET123,P001\n")
    config = tmp_path / "d.conf"
    config.write_text(textwrap.dedent(f"""\
        input = "{tmp_path}/in"; output = "{tmp_path}/out";
        quarantine = "{tmp_path}/q"; settle_ms = 200;
        profile = "seed"; correlation_table = "{table}";
        retry = {{ parse_attempts = 1; }};
        deid = {{ unknown_id = "reject"; }};
        """))
    (tmp_path / "in").mkdir()
    incoming.rename(tmp_path / "in" / incoming.name)

    records = run_in_private_journal(tmp_path, config)
    events = [field(r, "DICOMSORTD_EVENT") for r in records]
    assert "start" in events and "stop" in events, records

    stored = [r for r in records if field(r, "DICOMSORTD_EVENT") == "stored"]
    assert len(stored) == 1, events
    assert field(stored[0], "DICOMSORTD_DEST").startswith("P001/20240102/3_Thorax/")
    assert field(stored[0], "DICOMSORTD_SOP_INSTANCE_UID")
    assert field(stored[0], "PRIORITY") == "6"
    # What an auditor asks (issue 10, section 5).
    assert field(stored[0], "DICOMSORTD_PROFILE") == "seed"
    assert field(stored[0], "DICOMSORTD_TABLE_SHA256") == hashlib.sha256(
        table.read_bytes()).hexdigest()[:16]
    assert len(field(stored[0], "DICOMSORTD_SOURCE_SHA256")) == 64
    assert field(stored[0], "DICOMSORTD_SOURCE_OWNER").startswith(
        "%d" % os.getuid())
    disposed = [r for r in records
                if field(r, "DICOMSORTD_EVENT") == "disposed"]
    assert len(disposed) == 1, events
    assert field(disposed[0], "DICOMSORTD_DISPOSAL") == "deleted"
    assert field(disposed[0], "DICOMSORTD_DEST") == \
        field(stored[0], "DICOMSORTD_DEST")

    quarantined = [r for r in records
                   if field(r, "DICOMSORTD_EVENT") == "quarantined"]
    assert len(quarantined) == 2, events
    reasons = " ".join(field(r, "DICOMSORTD_REASON") for r in quarantined)
    assert "not a DICOM file" in reasons
    assert "correlation table" in reasons or "PatientID" in reasons

    # No name, birth date or original ID in any field of any record.
    text = json.dumps(records)
    for secret in ("SECRET123", "UNMAPPED77", "Doe", "Jane", "Roe",
                   "Richard", "19610203", "19700101"):
        assert secret not in text, f"{secret} leaked into the journal"
    assert not list(pathlib.Path(tmp_path / "in").rglob("*.dcm"))
