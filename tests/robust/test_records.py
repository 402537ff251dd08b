"""Audit records (issue 10, sections 2 and 5): what happened to the output
and what happened to the source are two facts, and the number of `stored`
records equals the number of stored files, SIGKILL or not.

A SIGKILL between an output's publication and its `stored` record must not
lose the record: a pending-record marker (in <output>/.dicomsortd-state/)
is written before publication and the record is sent at the next start.
DICOMSORT_TEST_DELAY=published:MS widens that window so the kill lands in
it for sure.
"""

import hashlib
import os
import pathlib
import random
import re
import signal
import time

import pytest

from conftest import (IS_ROOT, SLOW, STATE, field, files_below, helpers,
                      make_items, outputs, report_figure, temp_files_below,
                      wait_until, write_items)

def stored_dests(d):
    return [field(ln, "dest") for ln in d.events("stored")]


def check_exact(d):
    """One `stored` record per output file, naming it; none twice."""
    dests = stored_dests(d)
    files = sorted(str(p.relative_to(d.output)) for p in outputs(d.output))
    assert len(dests) == len(set(dests)), "a stored record twice: %s" % (
        [x for x in dests if dests.count(x) > 1][:3])
    assert sorted(dests) == files, (
        "records without files: %s; files without records: %s" % (
            sorted(set(dests) - set(files))[:3],
            sorted(set(files) - set(dests))[:3]))
    return len(files)


def test_kill_between_publish_and_record_loses_no_record(daemon):
    """Killed while a file is published but not yet logged: the restart
    sends its record (recovered="1"), once."""
    d = daemon(start=False, env={"DICOMSORT_TEST_DELAY": "published:1500"},
               workers=1)
    d.start()
    items = make_items(3)
    killed = 0
    for it in items:
        write_items(d.input, [it])
        # The file is there and its record is not: the window.
        wait_until(lambda: len(outputs(d.output)) > len(stored_dests(d)),
                   30, what="an output published")
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        killed += 1
        assert len(outputs(d.output)) == len(stored_dests(d)) + 1
        d.start()
        wait_until(lambda: len(stored_dests(d)) == len(outputs(d.output)),
                   30, what="the recovered record")
    d.wait_input_empty()
    d.stop()
    recovered = [ln for ln in d.events("stored")
                 if field(ln, "recovered") == "1"]
    assert len(recovered) >= killed, d.log()[-3000:]
    assert check_exact(d) == len(items)
    # A source redone after the kill is a duplicate of the stored file,
    # never a second `stored`.
    assert not (d.output / STATE).exists()


def test_stored_records_equal_outputs_under_random_sigkill(daemon):
    """Many files, SIGKILL at random (and, with a short delay after each
    publication, often inside the window), restart each time: at the end
    the stored records are exactly the output files."""
    n_files, kills = 400, 10
    rng = random.Random(int(os.environ.get("DICOMSORT_CRASH_SEED", "3")))
    d = daemon(start=False, env={"DICOMSORT_TEST_DELAY": "published:15"},
               settle_ms=100, workers=2,
               cleanup={"remove_empty_dirs": False, "min_age_s": 60})
    items = make_items(n_files)
    batch = n_files // kills
    d.start()
    in_window = 0
    for k in range(kills):
        # Each kill finds work in flight: a batch arrives just before.
        write_items(d.input, items[k * batch:(k + 1) * batch])
        time.sleep(rng.uniform(0.1, 0.6) * SLOW)
        if len(outputs(d.output)) > len(stored_dests(d)):
            in_window += 1
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.start()
    write_items(d.input, items[kills * batch:])
    d.wait_input_empty(300)
    d.stop()
    n = check_exact(d)
    assert n == n_files
    assert not temp_files_below(d.output)
    assert not (d.output / STATE).exists()
    recovered = sum(1 for ln in d.events("stored")
                    if field(ln, "recovered") == "1")
    report_figure("records: %d files, %d SIGKILLs (%d seen inside the "
                  "publish->record window), %d records recovered at start; "
                  "stored records == outputs == %d" % (
                      n_files, kills, in_window, recovered, n))


def test_record_fields_for_an_auditor(daemon, tmp_path):
    """stored carries the profile, the table digest, the source's SHA-256
    and owner; de-identified records name no path of the source."""
    table = tmp_path / "table.csv"
    table.write_text("PAT001,NEW001\n")
    d = daemon(profile="seed", correlation_table=table)
    it = make_items(1)[0]
    write_items(d.input / "Doe^John", [it])
    d.wait_stored(1)
    d.wait_input_empty()
    d.stop()
    line = d.events("stored")[0]
    assert field(line, "profile") == "seed"
    assert field(line, "table_sha256") == hashlib.sha256(
        table.read_bytes()).hexdigest()[:16]
    assert field(line, "source_sha256") == hashlib.sha256(
        it.data).hexdigest()
    assert field(line, "source_owner").startswith("%d" % os.getuid())
    assert "Doe" not in line
    disposed = d.events("disposed")
    assert len(disposed) == 1 and field(disposed[0], "disposal") == "deleted"


@pytest.mark.skipif(not IS_ROOT, reason="switching users needs root")
@pytest.mark.parametrize("profile", ["none", "seed"])
def test_stuck_disposal_is_its_own_fact(profile):
    """The output is stored but the source's folder does not let the
    daemon remove it: one `stored` record at once, `dispose-failed` on the
    input side (folder, mode, owner, umask) with retries - never stored
    again, never a "duplicate" - STATUS says the input side is stuck, and
    once the folder is fixed one `disposed`."""
    import tempfile
    import shutil
    nobody = 65534
    base = pathlib.Path(tempfile.mkdtemp(prefix="dicomsort-rec-", dir="/tmp"))
    os.chmod(base, 0o755)
    listener = None
    d = None
    try:
        for sub in ("in", "out", "quarantine"):
            (base / sub).mkdir()
            os.chown(base / sub, nobody, nobody)
        # A PACS-style folder name: a patient's name.
        locked = base / "in" / "Doe_Jane"
        locked.mkdir()
        it = make_items(1, prefix="Doe_Jane_")[0]
        write_items(locked, [it])
        table = base / "table.csv"
        table.write_text("PAT001,NEW001\n")
        listener = helpers.NotifyListener(base / "notify.sock")
        os.chmod(base / "notify.sock", 0o777)
        cfg = helpers.base_config(
            base, retry={"parse_attempts": 3, "backoff_ms": 100,
                         "backoff_max_ms": 300})
        if profile != "none":
            cfg.update(profile=profile, correlation_table=table)
        wrapper = (lambda argv: ["setpriv", "--reuid=%d" % nobody,
                                 "--regid=%d" % nobody, "--clear-groups"]
                   + argv)
        d = helpers.Daemon(base, cfg, wrapper=wrapper,
                           env={"NOTIFY_SOCKET": str(base / "notify.sock")})
        wait_until(lambda: len(d.events("dispose-failed")) >= 4, 60,
                   what=lambda: d.log()[-3000:])
        assert len(d.events("stored")) == 1
        assert d.events("duplicate") == [] and d.events("retry") == []
        failed = d.events("dispose-failed")[-1]
        assert "input side" in failed and "umask" in failed, failed
        assert "0755" in failed and "root:root" in failed, failed
        if profile == "none":
            assert str(locked) in failed, failed
        else:
            # The folder may carry a name: the input root is named.
            assert "a folder below %s" % (base / "in") in failed, failed
            assert "Doe" not in d.log() and "Jane" not in d.log()
        assert field(failed, "dest") == field(d.events("stored")[0], "dest")
        assert any("input problem" in f.get("STATUS", "")
                   for f in listener.fields()), listener.texts()[-3:]
        os.chmod(locked, 0o777)
        wait_until(lambda: d.events("disposed"), 30 * SLOW,
                   what=lambda: d.log()[-3000:])
        d.stop()
        assert len(d.events("stored")) == 1 and not d.events("duplicate")
        assert len(outputs(base / "out")) == 1
        assert not files_below(locked)
    finally:
        if d is not None:
            d.kill()
        if listener is not None:
            listener.close()
        shutil.rmtree(base, ignore_errors=True)


def test_policy_rejection_is_quarantined_at_once(daemon, tmp_path):
    """Burned-in annotation under basic: no retry can change it, so it is
    quarantined on the first attempt; the sidecar tells the auditor the
    rule, size, SHA-256, owner and mtime of the source."""
    import io
    import pydicom
    secret = tmp_path / "secret"
    secret.write_text("correct horse battery staple 0123456789")
    os.chmod(secret, 0o600)
    d = daemon(profile="basic", deid={"secret": str(secret)},
               retry={"parse_attempts": 5, "backoff_ms": 200,
                      "backoff_max_ms": 1000})
    it = make_items(1)[0]
    ds = pydicom.dcmread(io.BytesIO(it.data))
    ds.BurnedInAnnotation = "YES"
    buf = io.BytesIO()
    ds.save_as(buf, write_like_original=False)
    data = buf.getvalue()
    (d.input / "scan.dcm").write_bytes(data)
    wait_until(lambda: d.events("quarantined"), 30,
               what=lambda: d.log()[-2000:])
    d.stop()
    assert d.events("retry") == [], d.events("retry")
    q = d.quarantine
    sidecars = [p for p in files_below(q) if p.name.endswith(".reason")]
    assert len(sidecars) == 1, files_below(q)
    text = sidecars[0].read_text()
    assert "rule: de-identification policy" in text, text
    assert "attempts: 1\n" in text, text
    assert "size: %d\n" % len(data) in text, text
    assert "sha256: %s\n" % hashlib.sha256(data).hexdigest() in text, text
    assert "owner: %d" % os.getuid() in text, text
    assert "mtime: " in text, text
    line = d.events("quarantined")[0]
    assert field(line, "source_sha256") == hashlib.sha256(data).hexdigest()


def parse_sidecar(text):
    """key -> [values]; every line is "key: value" with no control byte
    in the value (escaped as \\n, \\r, \\t, \\\\, \\xHH)."""
    keys = {}
    assert text.endswith("\n"), repr(text)
    for line in text[:-1].split("\n"):
        m = re.match(r"^([a-z0-9_]+): (.*)$", line)
        assert m, "unparseable sidecar line %r in %r" % (line, text)
        assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in m.group(2))
        keys.setdefault(m.group(1), []).append(m.group(2))
    return keys


def unescape(value):
    out, i = bytearray(), 0
    raw = value.encode()
    while i < len(raw):
        if raw[i:i + 1] == b"\\":
            nxt = raw[i + 1:i + 2]
            if nxt == b"x":
                out.append(int(raw[i + 2:i + 4], 16))
                i += 4
                continue
            out += {b"n": b"\n", b"r": b"\r", b"t": b"\t",
                    b"\\": b"\\"}[nxt]
            i += 2
            continue
        out.append(raw[i])
        i += 1
    return bytes(out)


HOSTILE_NAMES = [
    b"L" * 251 + b".dcm",                       # 255 bytes
    b"L" * 250 + b"X.dcm",                      # same start, 255 bytes
    b"M" * 249,                                 # 249 bytes, no extension
    "\u00e9".encode() * 125 + b"xx.dcm",        # UTF-8, 256 -> cut safely
    b"new\nline.dcm",
    b"carriage\rreturn.dcm",
    b"tab\there.dcm",
    b"esc\x1b[31mred\x7f.dcm",
    b"back\\slash.dcm",
    b"forged\nreason: all fine\nrule: none.dcm",
]


def test_hostile_names_get_a_sidecar_and_a_record(daemon, tmp_path):
    """Issue 12 item 10: whatever its name (255 bytes, newlines, control
    bytes, a forged "reason:" line), every quarantined file gets a
    parseable sidecar with exactly one reason line, naming the original
    source, and one `quarantined` record; long names stay apart."""
    d = daemon(retry={"parse_attempts": 1, "backoff_ms": 100,
                      "backoff_max_ms": 200}, settle_ms=200)
    names = [n[:255] for n in HOSTILE_NAMES if len(n) <= 255] + [
        n[:255].decode(errors="ignore").encode() for n in HOSTILE_NAMES
        if len(n) > 255]
    names = list(dict.fromkeys(names))
    staging = tmp_path / "staging"
    staging.mkdir()
    for i, name in enumerate(names):
        src = os.path.join(os.fsencode(staging), b"f%d" % i)
        with open(src, "wb") as f:
            f.write(b"not a DICOM object %d\n" % i * 20)
        os.rename(src, os.path.join(os.fsencode(d.input), name))
    wait_until(lambda: len(d.events("quarantined")) >= len(names)
               and not os.listdir(d.input), 60 * SLOW,
               what=lambda: d.log()[-3000:])
    d.stop()
    assert len(d.events("quarantined")) == len(names), d.log()[-3000:]
    qdir = os.fsencode(d.quarantine)
    entries = [e for e in os.listdir(qdir) if not e.startswith(b".")]
    files = [e for e in entries if not e.endswith(b".reason")]
    sidecars = [e for e in entries if e.endswith(b".reason")]
    assert len(files) == len(names), entries
    assert sorted(sidecars) == sorted(f + b".reason" for f in files)
    sources = []
    for f in files:
        with open(os.path.join(qdir, f + b".reason"), "rb") as fh:
            text = fh.read().decode()
        keys = parse_sidecar(text)
        assert len(keys["reason"]) == 1 and len(keys["rule"]) == 1, text
        assert len(keys["source"]) == 1 and len(keys["file"]) == 1, text
        assert unescape(keys["file"][0]) == f, text
        sources.append(unescape(keys["source"][0]))
        with open(os.path.join(qdir, f), "rb") as fh:
            assert fh.read().startswith(b"not a DICOM object")
    assert sorted(sources) == sorted(names)
