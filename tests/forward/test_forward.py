"""Forwarding end to end (issue 13): the daemon stores, queues in its
outbox and delivers to real peers started on loopback - Orthanc (DICOM and
DICOMweb STOW-RS) and DCMTK's storescp - through the real transports.
Every wait is bounded; no traffic leaves 127.0.0.1."""

import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

import orthanc as orthanc_mod
from hostile_scp import HostileSCP
from fwdlib import (SLOW, StoreSCP, closed_port, daemon_helpers, dimse_dest,
                    events, field, make_daemon, make_pki, outbox,
                    outbox_entries,
                    rejected_entries, stored_files, stow_dest, uids_of,
                    wait_until)


def drop(files, input_dir):
    """Copy files into the drop folder the way a modality does: under a
    temporary name, renamed when complete."""
    for p in files:
        tmp = input_dir / (".part-" + p.name)
        shutil.copyfile(p, tmp)
        tmp.rename(input_dir / p.name)


def identities(paths):
    return dict(orthanc_mod.file_identity(p) for p in paths)


def wait_outbox_empty(d, name, timeout=120):
    wait_until(lambda: not outbox_entries(d.output, name), timeout,
               what=lambda: "outbox %s to empty: %d left (log tail:\n%s)" % (
                   name, len(outbox_entries(d.output, name)),
                   "\n".join(d.log_lines()[-30:])))


@pytest.fixture
def notify_socket(tmp_path):
    listener = daemon_helpers.NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()


@pytest.fixture
def storescp(tmp_path):
    made = []

    def make(name="storescp", **kw):
        peer = StoreSCP(tmp_path / name, **kw)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.stop()


def test_dimse_every_stored_file_arrives_at_orthanc(tmp_path, orthanc,
                                                    dicom_files):
    files = dicom_files(24, out=tmp_path / "src")
    d = make_daemon(tmp_path, [dimse_dest("pacs", orthanc.dicom_port,
                                          orthanc.aet,
                                          files_per_association=10)])
    drop(files, d.input)
    d.wait_stored(24, timeout=60)
    wait_outbox_empty(d, "pacs")
    want = identities(stored_files(d.output))
    assert len(want) == 24
    assert orthanc.instances() == want
    fwd = events(d, "forwarded", "pacs")
    assert sorted(uids_of(fwd)) == sorted(want)
    assert all(field(ln, "peer_status") == "0x0000" for ln in fwd), fwd[:3]
    assert d.stop()[0] == 0
    assert not rejected_entries(d.output, "pacs")


def test_stow_every_stored_file_arrives_at_orthanc(tmp_path, orthanc,
                                                   dicom_files):
    files = dicom_files(20, out=tmp_path / "src")
    d = make_daemon(tmp_path, [stow_dest("web", orthanc.stow_url,
                                         files_per_association=8)])
    drop(files, d.input)
    d.wait_stored(20, timeout=60)
    wait_outbox_empty(d, "web")
    want = identities(stored_files(d.output))
    assert orthanc.instances() == want
    assert sorted(uids_of(events(d, "forwarded", "web"))) == sorted(want)
    assert d.stop()[0] == 0


def test_dimse_to_storescp_in_parallel(tmp_path, storescp, dicom_files):
    peer = storescp()
    peer.start()
    files = dicom_files(16, out=tmp_path / "src")
    d = make_daemon(tmp_path, [dimse_dest("scp", peer.port, peer.aet,
                                          files_per_association=4,
                                          associations=2)])
    drop(files, d.input)
    d.wait_stored(16, timeout=60)
    wait_outbox_empty(d, "scp")
    want = identities(stored_files(d.output))
    got = peer.received()
    assert dict(got) == want
    assert len(got) == len(want), "an instance arrived twice"
    assert d.stop()[0] == 0


def test_dimse_over_tls_to_storescp(tmp_path, storescp, dicom_files):
    pki = make_pki(tmp_path / "pki")
    peer = storescp(tls=["+tls", pki["srv_key"], pki["srv_pem"],
                         "+cf", pki["ca"], "-rc"])
    peer.start()
    files = dicom_files(6, out=tmp_path / "src")
    d = make_daemon(tmp_path, [dimse_dest(
        "tls", peer.port, peer.aet, tls=True, tls_ca_file=str(pki["ca"]),
        tls_cert_file=str(pki["cli_pem"]),
        tls_key_file=str(pki["cli_key"]))])
    drop(files, d.input)
    d.wait_stored(6, timeout=60)
    wait_outbox_empty(d, "tls")
    want = identities(stored_files(d.output))
    assert dict(peer.received()) == want
    assert d.stop()[0] == 0


def test_peer_down_then_back_delivers_everything_once(tmp_path, storescp,
                                                       dicom_files):
    peer = storescp()
    peer.port = closed_port()		# reserved, nobody listens yet
    files = dicom_files(12, out=tmp_path / "src")
    d = make_daemon(tmp_path, [dimse_dest("scp", peer.port, peer.aet,
                                          files_per_association=5)])
    drop(files, d.input)
    d.wait_stored(12, timeout=60)
    # Down: the outbox holds every file and the audit says why.
    wait_until(lambda: events(d, "forward-retry", "scp"), 30,
               what="a forward-retry record")
    assert len(outbox_entries(d.output, "scp")) == 12
    assert not events(d, "forwarded")
    mark = len(d.log_lines())
    peer.start()
    wait_outbox_empty(d, "scp")
    want = identities(stored_files(d.output))
    got = peer.received()
    assert dict(got) == want
    # Nothing twice, except what the audit shows as resent once the peer
    # was there (a retry after the peer had the file).
    after = d.log_lines()[mark:]
    for uid in want:
        times = sum(1 for u, _ in got if u == uid)
        resent = sum(1 for ln in after if "event=forward-retry" in ln and
                     field(ln, "sop_instance_uid") == uid)
        assert times <= 1 + resent, (uid, times, resent)
    assert d.stop()[0] == 0


def test_peer_stopped_mid_stream_and_restarted(tmp_path, orthanc,
                                               dicom_files):
    """Orthanc goes away after the first files and comes back (same ports,
    same storage): the rest queue up and all arrive, over DICOM and
    DICOMweb alike."""
    files = dicom_files(16, out=tmp_path / "src")
    d = make_daemon(tmp_path, [
        dimse_dest("pacs", orthanc.dicom_port, orthanc.aet,
                   files_per_association=4),
        stow_dest("web", orthanc.stow_url, files_per_association=4)])
    drop(files[:8], d.input)
    d.wait_stored(8, timeout=60)
    wait_outbox_empty(d, "pacs")
    wait_outbox_empty(d, "web")
    orthanc.stop()
    drop(files[8:], d.input)
    d.wait_stored(16, timeout=60)
    wait_until(lambda: events(d, "forward-retry", "pacs") and
               events(d, "forward-retry", "web"), 30,
               what="retry records of both destinations")
    assert len(outbox_entries(d.output, "pacs")) == 8
    orthanc.start()
    wait_outbox_empty(d, "pacs")
    wait_outbox_empty(d, "web")
    want = identities(stored_files(d.output))
    assert orthanc.instances() == want
    # Each destination confirmed each instance exactly once.
    for name in ("pacs", "web"):
        assert sorted(uids_of(events(d, "forwarded", name))) == sorted(want)
    assert d.stop()[0] == 0


def test_kill_between_storing_and_queueing_is_queued_at_start(
        tmp_path, orthanc, dicom_files):
    """A SIGKILL after the output is published but before its outbox entry
    is made (DICOMSORT_TEST_DELAY=published holds that window): the pending
    record's recovery queues it at the next start, and it arrives."""
    files = dicom_files(1, out=tmp_path / "src")
    d = make_daemon(tmp_path, [dimse_dest("pacs", orthanc.dicom_port,
                                          orthanc.aet)],
                    env={"DICOMSORT_TEST_DELAY": "published:60000"})
    drop(files, d.input)
    wait_until(lambda: len(stored_files(d.output)) == 1, 60,
               what="the published output")
    d.kill()
    assert outbox_entries(d.output, "pacs") == []
    d.env.pop("DICOMSORT_TEST_DELAY")
    d.start()
    wait_outbox_empty(d, "pacs")
    d.wait_input_empty(timeout=60)
    want = identities(stored_files(d.output))
    assert len(want) == 1
    assert orthanc.wait_for(want, timeout=60) == set()
    assert orthanc.instances() == want
    assert d.stop()[0] == 0


def test_kill_after_the_peer_confirmed_resends_and_says_so(
        tmp_path, storescp, dicom_files):
    """A SIGKILL after the peer confirmed a file but before its entry went:
    the next start sends it again, and the audit shows both sends - the
    only way an instance reaches the peer twice."""
    peer = storescp()
    peer.start()
    files = dicom_files(1, out=tmp_path / "src")
    d = make_daemon(tmp_path, [dimse_dest("scp", peer.port, peer.aet)],
                    env={"DICOMSORT_TEST_DELAY": "forwarded:60000"})
    drop(files, d.input)
    wait_until(lambda: events(d, "forwarded", "scp"), 60,
               what="the first forwarded record")
    d.kill()
    assert len(outbox_entries(d.output, "scp")) == 1
    d.env.pop("DICOMSORT_TEST_DELAY")
    d.start()
    wait_outbox_empty(d, "scp")
    (uid, _), = identities(stored_files(d.output)).items()
    got = [u for u, _ in peer.received()]
    assert got == [uid, uid]
    assert uids_of(events(d, "forwarded", "scp")) == [uid, uid]
    assert d.stop()[0] == 0


def test_sigkill_while_forwarding_loses_nothing(tmp_path, orthanc,
                                                dicom_files):
    """20 SIGKILLs at random moments while files are stored and sent;
    afterwards every instance is at the peer and the outbox is empty."""
    rng = random.Random(13)
    files = dicom_files(60, out=tmp_path / "src")
    d = make_daemon(tmp_path, [dimse_dest("pacs", orthanc.dicom_port,
                                          orthanc.aet,
                                          files_per_association=3)],
                    start=False)
    batches = [files[i::20] for i in range(20)]
    for kill in range(20):
        drop(batches[kill], d.input)
        d.start()
        time.sleep(rng.uniform(0.05, 0.8) * SLOW)
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(timeout=30)
        d.log_file.close()
    d.start()
    d.wait_input_empty(timeout=120)
    wait_outbox_empty(d, "pacs", timeout=180)
    want = identities(stored_files(d.output))
    assert len(want) == 60, "%d outputs" % len(want)
    assert orthanc.wait_for(want, timeout=60) == set()
    assert orthanc.instances() == want
    assert d.stop()[0] == 0
    # A clean stop leaves no stray state: no temp files, no orphan refs.
    box = outbox(d.output, "pacs")
    assert [p.name for p in box.iterdir() if p.name != "rejected"] == []


CT_ONLY = ("""
[[TransferSyntaxes]]
[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = OppositeEndianExplicit
TransferSyntax3 = LittleEndianImplicit

[[PresentationContexts]]
[CTOnly]
PresentationContext1 = CTImageStorage\\Uncompressed

[[Profiles]]
[CTOnlyProfile]
PresentationContexts = CTOnly
""", "CTOnlyProfile")


def test_peer_refusing_a_sop_class_sends_it_to_rejected(tmp_path, storescp,
                                                       dicom_files):
    peer = storescp(config=CT_ONLY)
    peer.start()
    ct = dicom_files(4, out=tmp_path / "ct", modality="CT", seed=1)
    mr = dicom_files(3, out=tmp_path / "mr", modality="MR", seed=2)
    for i, p in enumerate(mr):
        p.rename(p.with_name("mr%d.dcm" % i))
    mr = sorted((tmp_path / "mr").iterdir())
    d = make_daemon(tmp_path, [dimse_dest("scp", peer.port, peer.aet)])
    drop(ct + mr, d.input)
    d.wait_stored(7, timeout=60)
    wait_outbox_empty(d, "scp")
    rejected = rejected_entries(d.output, "scp")
    assert len(rejected) == 3
    mr_uids = set(identities(mr))
    assert set(identities(rejected)) == mr_uids
    for p in rejected:
        reason = p.with_name(p.name + ".reason").read_text()
        assert "reason: peer status " in reason and "output: " in reason
    rec = events(d, "forward-rejected", "scp")
    assert set(uids_of(rec)) == mr_uids
    assert peer.received_uids() == set(identities(ct))
    assert d.stop()[0] == 0


def test_one_destination_down_does_not_hold_up_another(tmp_path, orthanc,
                                                       dicom_files):
    files = dicom_files(15, out=tmp_path / "src")
    d = make_daemon(tmp_path, [
        dimse_dest("down", closed_port(), "NOBODY", associations=2),
        dimse_dest("up", orthanc.dicom_port, orthanc.aet)])
    drop(files, d.input)
    d.wait_stored(15, timeout=60)
    wait_outbox_empty(d, "up", timeout=60)
    want = identities(stored_files(d.output))
    assert orthanc.instances() == want
    assert len(outbox_entries(d.output, "down")) == 15
    assert events(d, "forward-retry", "down")
    assert d.stop()[0] == 0
    # The next start resumes the queue it left.
    d.start()
    wait_until(lambda: "15 files still queued" in d.log(), 30,
               what="the resumed queue")
    assert d.stop()[0] == 0


def test_status_shows_each_queue_and_its_age(tmp_path, dicom_files,
                                             notify_socket):
    files = dicom_files(5, out=tmp_path / "src")
    d = make_daemon(tmp_path, [dimse_dest("down", closed_port(), "NOBODY")],
                    env={"NOTIFY_SOCKET": str(notify_socket.path)})
    drop(files, d.input)
    d.wait_stored(5, timeout=60)
    wait_until(lambda: any("forward down 5 queued (oldest" in t
                           for t in notify_socket.texts()), 30,
               what=lambda: "STATUS with the queue: %s"
               % notify_socket.texts()[-3:])
    assert d.stop()[0] == 0


def test_metrics_and_status_show_each_destination(tmp_path, orthanc,
                                                  dicom_files):
    """issue 15 item 2: per destination, queue length and oldest entry in
    the metrics file (read by promtool and prometheus_client's parser)
    and in `dicomsortd status` (human and --json)."""
    prom_parser = pytest.importorskip("prometheus_client.parser")
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) not installed")
    files = dicom_files(6, out=tmp_path / "src")
    metrics = tmp_path / "dicomsortd.prom"
    (tmp_path / "run").mkdir()
    d = make_daemon(tmp_path, [
        dimse_dest("down", closed_port(), "NOBODY"),
        dimse_dest("up", orthanc.dicom_port, orthanc.aet)],
        metrics_file=metrics, metrics_interval_s=1,
        status_file=tmp_path / "run" / "dicomsortd.status")
    drop(files, d.input)
    d.wait_stored(6, timeout=60)
    wait_outbox_empty(d, "up", timeout=60)

    def per_destination():
        if not metrics.exists():
            return None
        got = {}
        for fam in prom_parser.text_string_to_metric_families(
                metrics.read_text()):
            for smp in fam.samples:
                if smp.name.startswith("dicomsortd_destination_"):
                    got[(smp.name, smp.labels["destination"])] = smp.value
        ok = (got.get(("dicomsortd_destination_queue_files", "down")) == 6
              and got.get(("dicomsortd_destination_queue_files", "up")) == 0
              and got.get(("dicomsortd_destination_oldest_age_seconds",
                           "down"), 0) > 0)
        return got if ok else None
    got = wait_until(per_destination, 60, what=lambda: "per-destination "
                     "metrics: %s" % (metrics.read_text()
                                      if metrics.exists() else "none"))
    assert got[("dicomsortd_destination_oldest_age_seconds", "up")] == 0
    with open(metrics, "rb") as f:
        r = subprocess.run([promtool, "check", "metrics"], stdin=f,
                           capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr

    status = [daemon_helpers.daemon_bin(), "status", "-c", str(d.conf_path)]

    def status_json():
        r = subprocess.run(status + ["--json"], capture_output=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)
        by = {x["name"]: x for x in st["destinations"]}
        return by if by.get("down", {}).get("queue_files") == 6 and \
            by["down"]["oldest_age_s"] > 0 else None
    by = wait_until(status_json, 30, what="status --json per destination")
    assert by["up"] == {"name": "up", "queue_files": 0, "oldest_age_s": 0}
    h = subprocess.run(status, capture_output=True, timeout=60, text=True)
    assert h.returncode == 0, h.stderr
    lines = h.stdout.splitlines()
    assert any(ln.startswith("Forwarding:  down: 6 files queued, oldest ")
               for ln in lines), h.stdout
    assert any(ln.strip() == "up: 0 files queued" for ln in lines), h.stdout
    assert d.stop()[0] == 0


def test_without_destinations_there_is_no_outbox(tmp_path, dicom_files):
    files = dicom_files(2, out=tmp_path / "src")
    d = daemon_helpers.Daemon(tmp_path, daemon_helpers.base_config(tmp_path))
    drop(files, d.input)
    d.wait_stored(2, timeout=60)
    assert d.stop()[0] == 0
    assert not (d.output / ".dicomsortd-state" / "outbox").exists()


def run_batch(tmp_path, dests, name, src, out, *extra):
    import json
    import os
    import subprocess
    cfg = daemon_helpers.base_config(tmp_path)
    (tmp_path / "in").mkdir(exist_ok=True)
    conf = tmp_path / "batch.conf"
    from fwdlib import forward_text
    conf.write_text(daemon_helpers.conf_text(cfg) + forward_text(dests))
    argv = [os.environ["DICOMSORT_BIN"], "--dicomin", str(src), "--dicomout",
            str(out), "--json", "--forward", name, "-c", str(conf)] + \
        list(extra)
    p = subprocess.run(argv, capture_output=True, text=True,
                       timeout=300 * SLOW)
    return p.returncode, json.loads(p.stdout) if p.stdout else None, p.stderr


def test_batch_forward_waits_for_the_queue_and_resumes(tmp_path, orthanc,
                                                       dicom_files):
    src = tmp_path / "src"
    dicom_files(10, out=src)
    out = tmp_path / "sorted"
    down = [dimse_dest("pacs", closed_port(), orthanc.aet)]
    rc, js, err = run_batch(tmp_path, down, "pacs", src, out,
                            "--forward-timeout", "2")
    assert rc == 1, err
    assert js["stored"] == 10
    assert js["forward"][0]["queued"] == 10, js["forward"]
    assert "not yet delivered" in err
    assert len(outbox_entries(out, "pacs")) == 10
    # The next run, peer up: the identical outputs are duplicates, the
    # queue left by the first run is sent, nothing is left.
    up = [dimse_dest("pacs", orthanc.dicom_port, orthanc.aet)]
    rc, js, err = run_batch(tmp_path, up, "pacs", src, out)
    assert rc == 0, err
    assert js["duplicates"] == 10
    assert js["forward"][0]["queued"] == 0
    assert not outbox_entries(out, "pacs")
    assert orthanc.instances() == identities(stored_files(out))


def test_batch_forward_flags_go_together(tmp_path):
    import os
    import subprocess
    p = subprocess.run([os.environ["DICOMSORT_BIN"], "--dicomin", str(tmp_path),
                        "--dicomout", str(tmp_path / "o"), "--forward", "x"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "go together" in p.stderr


def test_deidentified_forwarding_leaks_no_identity(tmp_path, orthanc,
                                                  dicom_files):
    """profile basic: outbox names, .ref files, rejected sidecars and the
    forwarding records hold nothing of the patient's ID or name."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123456789abcdef")
    secret.chmod(0o600)
    files = dicom_files(6, out=tmp_path / "src", patient_id="SECRETPID77",
                        patient_name="Geheim^Hannelore")
    d = make_daemon(tmp_path, [
        dimse_dest("pacs", orthanc.dicom_port, orthanc.aet),
        dimse_dest("down", closed_port(), "NOBODY")],
        profile="basic", deid={"secret": secret})
    drop(files, d.input)
    d.wait_stored(6, timeout=60)
    wait_outbox_empty(d, "pacs")
    wait_until(lambda: events(d, "forward-retry", "down"), 30,
               what="a retry record")
    state = d.output / ".dicomsortd-state"
    texts = [d.log()]
    for p in state.rglob("*"):
        texts.append(str(p.relative_to(d.output)))
        if p.is_file() and not p.name.endswith(".dcm"):
            texts.append(p.read_text(errors="replace"))
    blob = "\n".join(texts)
    for secret_word in ("SECRETPID77", "Geheim", "Hannelore"):
        assert secret_word not in blob
    assert len(outbox_entries(d.output, "down")) == 6
    assert set(orthanc.sop_instance_uids()) == set(
        identities(stored_files(d.output)))
    assert d.stop()[0] == 0


# ---- a hostile DICOM peer (raw PDUs on loopback: hostile_scp.py) ----

@pytest.fixture
def hostile():
    made = []

    def make(mode):
        peer = HostileSCP(mode)
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.stop()


def hostile_dest(peer, **kw):
    return dimse_dest("hostile", peer.port, "ANY", connect_timeout_s=3,
                      acse_timeout_s=3, dimse_timeout_s=5, **kw)


def test_peer_that_never_answers_the_release(tmp_path, hostile, dicom_files):
    """Every C-STORE confirmed, then silence after A-RELEASE-RQ: the files
    count as delivered, the sender gives the association up within the
    ACSE timeout and goes on with the next batch; the daemon stops."""
    peer = hostile("hang_release")
    files = dicom_files(6, out=tmp_path / "src")
    d = make_daemon(tmp_path, [hostile_dest(peer, files_per_association=2)])
    drop(files, d.input)
    d.wait_stored(6, timeout=60)
    wait_outbox_empty(d, "hostile", timeout=120)
    assert sorted(uids_of(events(d, "forwarded", "hostile"))) == \
        sorted(peer.stored)
    assert len(peer.stored) == 6 and peer.releases >= 3
    assert d.stop()[0] == 0


@pytest.mark.parametrize("mode", ["garbage", "huge_pdu"])
def test_peer_that_answers_garbage(tmp_path, hostile, dicom_files, mode):
    """Bytes that are no PDU after a C-STORE, or an A-ASSOCIATE-AC that
    claims ~4 GiB: a retry (nothing is delivered, nothing rejected), the
    entries stay, the daemon neither crashes nor grows, and stops."""
    peer = hostile(mode)
    files = dicom_files(2, out=tmp_path / "src")
    d = make_daemon(tmp_path, [hostile_dest(peer)])
    drop(files, d.input)
    d.wait_stored(2, timeout=60)
    wait_until(lambda: len(events(d, "forward-retry", "hostile")) >= 4, 90,
               what=lambda: "retries against the %s peer (log tail:\n%s)" % (
                   mode, "\n".join(d.log_lines()[-20:])))
    assert not events(d, "forwarded", "hostile")
    assert not events(d, "forward-rejected", "hostile")
    assert len(outbox_entries(d.output, "hostile")) == 2
    assert not rejected_entries(d.output, "hostile")
    rss = [ln for ln in open("/proc/%d/status" % d.pid)
           if ln.startswith("VmRSS:")]
    assert int(rss[0].split()[1]) < 300 * 1024, rss
    for line in events(d, "forward-retry", "hostile"):
        assert "\\xde" not in line and "\xde" not in line, line
        assert {"garbage": "C-STORE failed",
                "huge_pdu": "association failed"}[mode] in field(
                    line, "reason"), line
    assert d.stop()[0] == 0


def test_rejected_entries_are_purged_with_the_quarantine(tmp_path,
                                                        dicom_files):
    """rejected/ holds PHI as the quarantine does: what a peer refused
    more than quarantine.max_age_days ago goes, with a `purged` record
    naming the destination; what it refused lately stays."""
    files = dicom_files(1, out=tmp_path / "src")
    d = make_daemon(tmp_path, [dimse_dest("down", closed_port(), "NOBODY")],
                    start=False,
                    quarantine={"folder": tmp_path / "quarantine",
                                "max_age_days": 2})
    rej = outbox(d.output, "down") / "rejected"
    rej.mkdir(parents=True)
    old = time.time() - 3 * 86400
    for name, when in (("1a-1.0.dcm", old), ("2b-2.0.dcm", None)):
        shutil.copyfile(files[0], rej / name)
        (rej / (name + ".reason")).write_text("reason: peer status 0xA900\n")
        (rej / (name + ".ref")).write_text("P/20240101/1_CT/%s\n" % name)
        if when:
            os.utime(rej / (name + ".reason"), (when, when))
    d.start()
    wait_until(lambda: events(d, "purged", "down"), 30,
               what=lambda: "a purged record (log tail:\n%s)"
               % "\n".join(d.log_lines()[-20:]))
    line = events(d, "purged", "down")[0]
    assert field(line, "dest") == "P/20240101/1_CT/1a-1.0.dcm", line
    assert "rejected/1a-1.0.dcm" in field(line, "reason"), line
    # The record is written before the three files go (a crash between
    # them leaves a purge to repeat, never one without its record).
    kept = ["2b-2.0.dcm", "2b-2.0.dcm.reason", "2b-2.0.dcm.ref"]
    wait_until(lambda: sorted(p.name for p in rej.iterdir()) == kept, 30,
               what=lambda: "only %s in rejected/, not %s" % (
                   kept, sorted(p.name for p in rej.iterdir())))
    assert len(events(d, "purged", "down")) == 1
    assert d.stop()[0] == 0
