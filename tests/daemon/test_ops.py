"""Operating the daemon (issue 15 items 2-4): the Prometheus metrics file,
read by real parsers (promtool from Debian's prometheus package, and
python3-prometheus-client's text parser); `dicomsortd status`; the
quarantine tools (list, requeue - also under SIGKILL) and the purge of
old quarantine entries.
"""

import json
import os
import pathlib
import random
import shutil
import signal
import stat
import subprocess
import threading
import time

import pytest

from conftest import (SLOW, daemon_bin, files_below, make_items, wait_until,
                      write_items)

prom_parser = pytest.importorskip("prometheus_client.parser")

CLAIM = ".dicomsort-claim-"


def cli(*args, timeout=60):
    r = subprocess.run([daemon_bin(), *map(str, args)],
                       capture_output=True, timeout=timeout * SLOW)
    r.out = r.stdout.decode("utf-8", "replace")
    r.err = r.stderr.decode("utf-8", "replace")
    return r


def samples(text):
    """sample name -> value, via prometheus_client's parser (raises on a
    malformed exposition)."""
    out = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name
            if "le" in s.labels:
                key += "{le=%s}" % s.labels["le"]
            assert s.labels.get("config") == "dicomsortd", s
            out[key] = s.value
    return out


def promtool_check(path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package prometheus) not installed")
    with open(path, "rb") as f:
        r = subprocess.run([promtool, "check", "metrics"], stdin=f,
                           capture_output=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def junk(folder, names, data=b"this is not DICOM\n"):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(data)


def quarantined_files(q):
    return [p for p in files_below(q) if not p.name.endswith(".reason")]


def fill_quarantine(daemon, n, **overrides):
    """A daemon that quarantines n junk files at once, then stops."""
    d = daemon(retry={"parse_attempts": 1, "backoff_ms": 200,
                      "backoff_max_ms": 2000}, **overrides)
    names = ["bad%04d.dcm" % i for i in range(n)]
    junk(d.input, names)
    wait_until(lambda: len(d.events("quarantined")) >= n, 60,
               what="%d files quarantined" % n)
    assert d.stop()[0] == 0
    return d, names


# ---- metrics ----

def test_metrics_file_counts_what_happened_and_parses(daemon, tmp_path):
    metrics = tmp_path / "textfile" / "dicomsortd.prom"
    metrics.parent.mkdir()
    d = daemon(metrics_file=metrics, metrics_interval_s=1,
               retry={"parse_attempts": 1, "backoff_ms": 200,
                      "backoff_max_ms": 2000})
    # The file is replaced, never written in place: a reader polling it
    # meanwhile always parses a whole exposition.
    reads, bad, stop = [0], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                text = metrics.read_text()
            except FileNotFoundError:
                continue
            try:
                s = samples(text)
                assert "dicomsortd_metrics_timestamp_seconds" in s
                reads[0] += 1
            except Exception as e:      # noqa: BLE001 - reported below
                bad.append("%r in %r" % (e, text[-200:]))
            time.sleep(0.01)

    t = threading.Thread(target=reader)
    t.start()
    try:
        items = make_items(4)
        write_items(d.input, items)
        junk(d.input, ["junk.dcm"])
        d.wait_stored(4)
        wait_until(lambda: d.events("quarantined"), 30, what="quarantine")

        def counted():
            try:
                s = samples(metrics.read_text())
            except FileNotFoundError:
                return None
            return s if (s["dicomsortd_files_stored_total"] == 4 and
                         s["dicomsortd_files_quarantined_total"] == 1) else None
        s = wait_until(counted, 30, what="metrics with 4 stored")
        time.sleep(1.5)     # a few more replacements under the reader
    finally:
        stop.set()
        t.join()
    assert not bad, bad[:3]
    assert reads[0] > 0
    promtool_check(metrics)
    assert s["dicomsortd_stored_bytes_total"] == sum(len(i.data) for i in items)
    assert s["dicomsortd_files_duplicate_total"] == 0
    assert s["dicomsortd_files_held_total"] == 0
    assert s["dicomsortd_arrival_to_stored_seconds_count"] == 4
    assert s["dicomsortd_arrival_to_stored_seconds_bucket{le=+Inf}"] == 4
    # settle_ms is 300: no file can be stored sooner after it arrived.
    assert s["dicomsortd_arrival_to_stored_seconds_bucket{le=0.5}"] <= 4
    assert s["dicomsortd_arrival_to_stored_seconds_sum"] >= 4 * 0.3
    assert abs(s["dicomsortd_last_success_timestamp_seconds"] - time.time()) < 120
    assert s["dicomsortd_queue_files"] == 0
    assert s["dicomsortd_queue_oldest_age_seconds"] == 0
    # node exporter runs as another user: the file must be world-readable,
    # so it holds no file name and no error text.
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o644
    text = metrics.read_text()
    assert "junk" not in text and "DICOM" not in text
    assert d.stop()[0] == 0
    # Nothing half made is left next to it (the collector reads *.prom).
    assert sorted(p.name for p in metrics.parent.iterdir()) == ["dicomsortd.prom"]


def test_metrics_queue_shows_a_file_still_arriving(daemon, tmp_path):
    metrics = tmp_path / "dicomsortd.prom"
    d = daemon(metrics_file=metrics, metrics_interval_s=1)
    f = open(d.input / "slow.dcm", "wb")     # open for writing: not taken
    try:
        f.write(b"DICM")
        f.flush()

        def queued():
            try:
                s = samples(metrics.read_text())
            except FileNotFoundError:
                return None
            return s if (s["dicomsortd_queue_files"] == 1 and
                         s["dicomsortd_queue_oldest_age_seconds"] >= 2) else None
        wait_until(queued, 30, what="a queued file 2 s old in the metrics")
    finally:
        f.close()
    promtool_check(metrics)
    assert d.stop()[0] == 0


def test_missing_metrics_folder_is_a_warning_not_a_failure(daemon, tmp_path):
    folder = tmp_path / "node-exporter"
    metrics = folder / "dicomsortd.prom"
    d = daemon(metrics_file=metrics, metrics_interval_s=1)
    items = make_items(2)
    write_items(d.input, items)
    d.wait_stored(2)
    wait_until(lambda: "metrics: cannot write" in d.log(), 30,
               what="the metrics warning")
    time.sleep(2.5)         # more failed writes: still one warning
    warns = [ln for ln in d.log_lines() if "metrics: cannot write" in ln]
    assert len(warns) == 1 and "warning:" in warns[0], warns
    folder.mkdir()          # node exporter installed later
    wait_until(metrics.exists, 30, what="the metrics file")
    assert "writing %s again" % metrics in d.log()
    assert samples(metrics.read_text())["dicomsortd_files_stored_total"] == 2
    assert d.stop()[0] == 0


def test_metrics_off_and_default_path(daemon, tmp_path):
    """metrics_file = "" writes none; the state file for status stays."""
    d = daemon(metrics_file="", metrics_interval_s=1)
    write_items(d.input, make_items(1))
    d.wait_stored(1)
    r = cli("status", "-c", d.conf_path, "--json")
    st = json.loads(r.out)
    assert st["metrics_file"] is None
    assert "metrics:" not in d.log()
    # Nothing of ours beside the outputs (the status file is elsewhere).
    assert [p.name for p in files_below(d.output)] == [
        p.name for p in files_below(d.output) if p.suffix == ".dcm"]
    assert d.stop()[0] == 0


# ---- status ----

def test_status_for_a_human_and_as_json(daemon, tmp_path):
    metrics = tmp_path / "dicomsortd.prom"
    d = daemon(metrics_file=metrics, metrics_interval_s=1,
               status_file=tmp_path / "run" / "dicomsortd.status",
               retry={"parse_attempts": 1, "backoff_ms": 200,
                      "backoff_max_ms": 2000})
    (tmp_path / "run").mkdir()
    write_items(d.input, make_items(3))
    junk(d.input, ["a.dcm", "b.dcm"])
    (d.input / "e.dcm").write_bytes(b"")
    d.wait_stored(3)
    wait_until(lambda: len(d.events("quarantined")) >= 3, 30, what="3 quarantined")

    def fresh():
        r = cli("status", "-c", d.conf_path, "--json")
        st = json.loads(r.out)
        return (r, st) if st["counters"]["quarantined"] == 3 else None
    r, st = wait_until(fresh, 30, what="status with 3 quarantined")
    assert r.returncode == 0, r.err
    assert st["state"] == "running" and st["pid"] == d.pid
    assert st["systemd_unit"] == "dicomsortd@dicomsortd.service" or \
        st["systemd_unit"] == "dicomsortd.service"
    assert st["counters"]["stored"] == 3
    assert st["queue"] == {"files": 0, "oldest_age_s": 0}
    assert st["last_success"] > 0
    assert st["metrics_age_s"] is not None and st["metrics_age_s"] < 60
    texts = [e["text"] for e in st["errors"]]
    assert any("not a DICOM file" in t for t in texts), texts
    assert any("empty file" in t for t in texts), texts
    q = st["quarantine"]
    assert q["files"] == 3
    by = {x["reason"]: x for x in q["by_reason"]}
    assert by["not a DICOM file"]["files"] == 2
    assert by["empty file"]["files"] == 1
    assert q["by_reason"][0]["reason"] == "not a DICOM file"   # most first
    assert 0 <= by["empty file"]["oldest_age_s"] < 600

    h = cli("status", "-c", d.conf_path)
    assert h.returncode == 0
    lines = h.out.splitlines()
    assert lines[1].startswith("Service:     running (pid %d" % d.pid), h.out
    assert any(ln.startswith("Queue:       0 files") for ln in lines), h.out
    assert any("stored 3" in ln for ln in lines), h.out
    assert any("not a DICOM file" in ln and ln.lstrip().startswith("2")
               for ln in lines), h.out
    assert "Quarantine:  %s: 3 files" % d.quarantine in h.out
    assert len(lines) < 40      # one screen

    assert d.stop()[0] == 0
    r = cli("status", "-c", d.conf_path, "--json")
    assert r.returncode == 3
    assert json.loads(r.out)["state"] == "stopped"
    assert cli("status", "-c", d.conf_path).out.splitlines()[1].startswith(
        "Service:     stopped")


def test_status_before_any_start_and_bad_config(tmp_path):
    conf = tmp_path / "site.conf"
    conf.write_text('input = "%s"; output = "%s"; quarantine = "%s";\n' % (
        tmp_path / "in", tmp_path / "out", tmp_path / "q"))
    r = cli("status", "-c", conf, "--json")
    assert r.returncode == 3
    st = json.loads(r.out)
    assert st["state"] == "stopped"
    assert st["systemd_unit"] == "dicomsortd@site.service"
    # The default metrics file is per configuration, in node exporter's
    # textfile collector folder.
    assert st["metrics_file"] == \
        "/var/lib/prometheus/node-exporter/dicomsortd-site.prom"
    # The status file is in the unit's RuntimeDirectory=.
    assert st["status_file"] == "/run/dicomsortd/site.status"
    h = cli("status", "-c", conf)
    assert h.returncode == 3
    assert "Status file: none yet" in h.out, h.out
    assert st["quarantine"]["files"] == 0
    conf.write_text('input = "x"; output = "y"; quarantine = { max_age_days = 3; };\n')
    r = cli("status", "-c", conf)
    assert r.returncode == 2 and "'quarantine.folder' is required" in r.err
    r = cli("quarantine", "frobnicate", "-c", conf)
    assert r.returncode == 2
    r = cli("quarantine", "requeue", "-c", conf)
    assert r.returncode == 2 and "requeue what?" in r.err


# ---- quarantine list ----

def test_quarantine_list_shows_reason_age_size_sender(daemon, tmp_path):
    odd = "line\nbreak\tand é.dcm"
    d = daemon(retry={"parse_attempts": 1, "backoff_ms": 200,
                      "backoff_max_ms": 2000})
    names = ["bad0.dcm", "bad1.dcm"]
    junk(d.input, names)
    junk(d.input, [odd], data=b"x" * 1234)
    wait_until(lambda: len(d.events("quarantined")) >= 3, 30,
               what="3 files quarantined")
    assert d.stop()[0] == 0

    r = cli("quarantine", "list", "-c", d.conf_path, "--json")
    assert r.returncode == 0, r.err
    doc = json.loads(r.out)
    assert doc["quarantine"] == str(d.quarantine)
    files = {f["file"]: f for f in doc["files"]}
    assert set(files) == set(names) | {odd}
    f = files[odd]
    assert f["reason"] == "not a DICOM file"
    assert f["source"] == odd           # the sidecar's escaping undone
    assert f["size"] == 1234
    assert f["sender"] == "%d(%s)" % (os.getuid(), __import__("pwd").getpwuid(
        os.getuid()).pw_name)
    assert 0 <= f["age_s"] < 600 and f["attempts"] == 1
    assert len(f["sha256"]) == 64 and f["has_reason_file"] is True

    h = cli("quarantine", "list", "-c", d.conf_path)
    lines = h.out.splitlines()
    assert lines[0].split() == ["AGE", "SIZE", "SENDER", "REASON", "FILE"]
    assert len(lines) == 4
    # A name cannot break the table: control characters show as '?'.
    assert any(ln.endswith("line?break?and é.dcm") for ln in lines), h.out
    assert all("not a DICOM file" in ln for ln in lines[1:])


# ---- quarantine requeue ----

def test_requeue_moves_back_with_an_audit_record_each(daemon, tmp_path):
    d = daemon(retry={"parse_attempts": 1, "backoff_ms": 200,
                      "backoff_max_ms": 2000})
    (d.input / "sub").mkdir()
    junk(d.input / "sub", ["a.dcm", "b.dcm"])
    (d.input / "e.dcm").write_bytes(b"")
    wait_until(lambda: len(d.events("quarantined")) >= 3, 30, what="3 quarantined")
    assert d.stop()[0] == 0
    log = tmp_path / "requeue.log"

    # By reason: only the empty file.
    r = cli("quarantine", "requeue", "-c", d.conf_path, "--reason", "EMPTY")
    assert r.returncode == 0, r.err
    assert "requeued e.dcm -> e.dcm" in r.out
    assert (d.input / "e.dcm").exists()
    assert not (d.quarantine / "e.dcm").exists()
    assert not (d.quarantine / "e.dcm.reason").exists()
    recs = [ln for ln in r.err.splitlines() if "event=requeued" in ln]
    assert len(recs) == 1 and 'source="e.dcm"' in recs[0]
    assert "was quarantined: empty file" in recs[0]
    log.write_text(r.err)

    # By path, the sidecar standing for its file, and a folder.
    r = cli("quarantine", "requeue", "-c", d.conf_path,
            d.quarantine / "sub" / "a.dcm.reason")
    assert r.returncode == 0, r.err
    assert (d.input / "sub" / "a.dcm").exists()
    assert (d.quarantine / "sub" / "b.dcm").exists()
    r = cli("quarantine", "requeue", "-c", d.conf_path, "sub")
    assert r.returncode == 0, r.err
    assert (d.input / "sub" / "b.dcm").exists()
    assert quarantined_files(d.quarantine) == []
    assert [p for p in files_below(d.quarantine)] == []
    # A path outside the quarantine is refused, touching nothing.
    r = cli("quarantine", "requeue", "-c", d.conf_path, d.input / "e.dcm")
    assert r.returncode == 1 and "not inside the quarantine" in r.err
    r = cli("quarantine", "requeue", "-c", d.conf_path, "../in/e.dcm")
    assert r.returncode == 1
    assert (d.input / "e.dcm").exists()

    # The daemon takes them like new arrivals (and, still junk, they go
    # back to quarantine with their reasons).
    d.start()
    wait_until(lambda: len(d.events("quarantined")) >= 6, 30,
               what="requeued files taken again")
    assert d.stop()[0] == 0
    assert len(quarantined_files(d.quarantine)) == 3


def test_requeue_clash_is_numbered_never_overwrites(daemon, tmp_path):
    d, names = fill_quarantine(daemon, 1)
    (d.input / names[0]).write_bytes(b"a new delivery, same name")
    r = cli("quarantine", "requeue", "-c", d.conf_path, "--all")
    assert r.returncode == 0, r.err
    assert (d.input / names[0]).read_bytes() == b"a new delivery, same name"
    stem = names[0][:-4]
    assert (d.input / (stem + "_1.dcm")).read_bytes() == b"this is not DICOM\n"


def test_requeue_loses_nothing_under_sigkill(daemon, tmp_path):
    """SIGKILL at random moments of a requeue of many files: after each
    kill every file is in the quarantine (maybe under its claim name) or
    back in the input, never both, never neither; the next requeue
    finishes the job."""
    n = 300
    d, names = fill_quarantine(daemon, n)
    want = set(names)
    rng = random.Random(15)

    def where():
        q, claims = set(), 0
        for p in quarantined_files(d.quarantine):
            name = p.name
            if name.startswith(CLAIM):
                claims += 1
                name = name.split(".", 2)[2]   # .dicomsort-claim-INO.NAME
            assert name not in q, name
            q.add(name)
        i = {p.name for p in files_below(d.input)}
        assert not (q & i), sorted(q & i)[:5]
        assert q | i == want, (sorted(want - (q | i))[:5],
                               sorted((q | i) - want)[:5])
        return q, i, claims

    mid_run = 0
    for attempt in range(200):
        q, _, _ = where()
        if not q:
            break
        p = subprocess.Popen([daemon_bin(), "quarantine", "requeue", "-c",
                              str(d.conf_path), "--all",
                              "--log-target", "stderr"],
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        if rng.random() < 0.25:
            # Anywhere, start-up and claim recovery included.
            time.sleep(rng.uniform(0.0, 0.06) * SLOW)
        else:
            # A moment inside the run, however slow the machine is to
            # start it (ASan, load): once it has moved its first file.
            deadline = time.monotonic() + 30 * SLOW
            while (p.poll() is None and time.monotonic() < deadline and
                   len(list(quarantined_files(d.quarantine))) >= len(q)):
                time.sleep(0.001)
            time.sleep(rng.uniform(0.0, 0.02))
        p.send_signal(signal.SIGKILL)
        p.wait()
        after, _, claims = where()
        if 0 < len(after) < len(q) or claims:
            mid_run += 1
    r = cli("quarantine", "requeue", "-c", d.conf_path, "--all")
    assert r.returncode == 0, r.err
    q, i, claims = where()
    assert not q and i == want and claims == 0
    assert not [p for p in files_below(d.quarantine)
                if not p.name.endswith(".reason")]
    assert mid_run >= 3, "only %d kills landed mid-requeue" % mid_run
    print("requeue SIGKILL: %d kills, %d mid-requeue" % (attempt, mid_run))


def test_requeue_waits_for_the_lock(daemon, tmp_path):
    """One requeue or purge at a time: they recover each other's claims."""
    import fcntl
    d, names = fill_quarantine(daemon, 1)
    fd = os.open(d.quarantine, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        p = subprocess.Popen([daemon_bin(), "quarantine", "requeue", "-c",
                              str(d.conf_path), "--all"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        assert p.poll() is None
        assert (d.quarantine / names[0]).exists()
    finally:
        os.close(fd)
    out, err = p.communicate(timeout=30 * SLOW)
    assert p.returncode == 0, err
    assert (d.input / names[0]).exists()


# ---- retention ----

def test_purge_after_max_age_days_with_an_audit_record(daemon, tmp_path):
    d, names = fill_quarantine(daemon, 3)
    old = d.quarantine / (names[0] + ".reason")
    text = old.read_text().splitlines()
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                         time.gmtime(time.time() - 40 * 86400))
    old.write_text("\n".join("time: " + when if ln.startswith("time: ")
                             else ln for ln in text) + "\n")
    # Without a limit nothing goes.
    d.start()
    time.sleep(1)
    assert d.stop()[0] == 0
    assert not d.events("purged")
    assert len(quarantined_files(d.quarantine)) == 3

    d.cfg["quarantine"] = {"folder": d.quarantine, "max_age_days": 30}
    from conftest import conf_text
    d.conf_path.write_text(conf_text(d.cfg))
    d.start()
    wait_until(lambda: d.events("purged"), 30, what="a purged record")
    recs = d.events("purged")
    assert len(recs) == 1 and 'source="%s"' % names[0] in recs[0], recs
    assert "max_age_days" in recs[0]
    assert not (d.quarantine / names[0]).exists()
    assert not old.exists()
    assert sorted(p.name for p in quarantined_files(d.quarantine)) == names[1:]
    st = json.loads(cli("status", "-c", d.conf_path, "--json").out)
    assert st["quarantine"]["max_age_days"] == 30
    assert d.stop()[0] == 0


def test_check_config_looks_at_the_metrics_folder(tmp_path):
    """A missing folder for a chosen metrics_file is a warning naming the
    key's line; for the default (node exporter not installed) a note."""
    (tmp_path / "in").mkdir()
    conf = tmp_path / "dicomsortd.conf"
    folders = 'input = "in"; output = "out"; quarantine = "q";\n'
    conf.write_text(folders + 'metrics_file = "nowhere/x.prom";\n')
    r = cli("--check-config", "-c", conf)
    assert r.returncode == 0, r.err
    warns = [ln for ln in r.err.splitlines() if "metrics_file: warning:" in ln]
    assert len(warns) == 1 and warns[0].startswith("%s:2: " % conf), r.err
    assert "%s does not exist" % (tmp_path / "nowhere") in warns[0]
    conf.write_text(folders)
    r = cli("--check-config", "-c", conf)
    assert "metrics_file: warning" not in r.err
    if not os.path.isdir("/var/lib/prometheus/node-exporter"):
        assert "metrics_file (default): note: " \
            "/var/lib/prometheus/node-exporter does not exist" in r.err, r.err
