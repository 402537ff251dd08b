"""Moves (issue 10, section 1): every move of a file - to processed/, into
quarantine and hold - goes through one safe move (fsutil_move): never
replacing a name, across mounts by a copy that is durable before the source
goes, and idempotent under retry and SIGKILL.

The other file system is a real one: a tmpfs mounted for the test (the
tests run as root; without root they cannot mount and say so).
"""

import contextlib
import hashlib
import os
import pathlib
import random
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import (IS_ROOT, SLOW, files_below, helpers, make_items,
                      read_sops, report_figure, temp_files_below, wait_until,
                      write_items)

needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="mounting a tmpfs and switching users need root")


@contextlib.contextmanager
def tmpfs(path):
    """A tmpfs mounted on path (created) for the duration."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                    str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def sha(data):
    return hashlib.sha256(data).hexdigest()


def contents(root):
    """sha256 -> list of paths, for every file below root (ours excluded)."""
    out = {}
    for p in files_below(root):
        if p.name.startswith(".dicomsort"):
            continue
        out.setdefault(sha(p.read_bytes()), []).append(p)
    return out


def test_processed_never_overwrites_an_earlier_original(daemon, tmp_path):
    """A later source with the same relative name gets a numbered name in
    processed/: under a de-identifying profile the earlier original exists
    nowhere else."""
    processed = tmp_path / "processed"
    d = daemon(after_success="move", processed=processed)
    first, second, third = make_items(3)
    for n, it in enumerate((first, second, third), 1):
        it.name = "same.dcm"
        write_items(d.input / "exam", [it])
        d.wait_stored(n)
        d.wait_input_empty()
    d.stop()
    got = sorted(p.name for p in files_below(processed / "exam"))
    assert got == ["same.dcm", "same_1.dcm", "same_2.dcm"], got
    assert (processed / "exam" / "same.dcm").read_bytes() == first.data
    assert (processed / "exam" / "same_1.dcm").read_bytes() == second.data
    assert (processed / "exam" / "same_2.dcm").read_bytes() == third.data
    assert not temp_files_below(processed) and not temp_files_below(d.input)


@needs_root
def test_processed_and_quarantine_on_another_file_system(daemon, tmp_path):
    """rename(2) fails with EXDEV: the source is copied, and goes only
    once the copy is durable. One copy each, no temp file anywhere."""
    with tmpfs(tmp_path / "processed") as processed, \
            tmpfs(tmp_path / "quarantine"):
        d = daemon(after_success="move", processed=processed,
                   quarantine=tmp_path / "quarantine",
                   retry={"parse_attempts": 1, "backoff_ms": 100,
                          "backoff_max_ms": 500})
        items = make_items(5)
        write_items(d.input / "exam", items)
        (d.input / "exam" / "garbage.dcm").write_bytes(b"not DICOM" * 50)
        d.wait_stored(5)
        wait_until(lambda: d.events("quarantined"), 30, what="quarantine")
        d.wait_input_empty()
        d.stop()
        for it in items:
            assert (processed / "exam" / it.name).read_bytes() == it.data
        assert len(files_below(processed)) == 5
        q = files_below(d.quarantine)
        assert sorted(p.name for p in q) == ["garbage.dcm",
                                             "garbage.dcm.reason"], q
        assert not temp_files_below(processed)
        assert not temp_files_below(d.quarantine)
        assert "retry" not in [ln.split("event=")[1].split()[0]
                               for ln in d.log_lines() if "event=" in ln]


@contextlib.contextmanager
def shared_base():
    """A folder every user can reach (pytest's tmp_path is root's 0700)."""
    base = pathlib.Path(tempfile.mkdtemp(prefix="dicomsort-moves-",
                                         dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@needs_root
def test_quarantine_retry_makes_no_second_copy():
    """The daemon (as an unprivileged user) may read a bad file but not
    remove it: its folder is not writable. Each retry must leave the
    quarantine as it was - no x_1, x_2 ... copies - and once the folder is
    fixed the file is quarantined exactly once."""
    nobody = 65534
    with shared_base() as base, tmpfs(base / "quarantine") as quarantine:
        for sub in ("in", "out"):
            (base / sub).mkdir()
        locked = base / "in" / "locked"
        locked.mkdir()
        (locked / "x.dcm").write_bytes(b"not DICOM at all" * 40)
        os.chmod(locked / "x.dcm", 0o644)
        for p in (base / "in", base / "out", quarantine):
            os.chown(p, nobody, nobody)
        cfg = helpers.base_config(
            base, quarantine=quarantine,
            retry={"parse_attempts": 1, "backoff_ms": 100,
                   "backoff_max_ms": 300})
        wrapper = (lambda argv: ["setpriv", "--reuid=%d" % nobody,
                                 "--regid=%d" % nobody, "--clear-groups"]
                   + argv)
        listener = helpers.NotifyListener(base / "notify.sock")
        os.chmod(base / "notify.sock", 0o777)
        d = helpers.Daemon(base, cfg, wrapper=wrapper,
                           env={"NOTIFY_SOCKET": str(base / "notify.sock")})
        try:
            wait_until(lambda: len(d.events("retry")) >= 6, 60,
                       what=lambda: "six retries:\n" + d.log()[-3000:])
            assert files_below(quarantine) == [], files_below(quarantine)
            assert (locked / "x.dcm").exists()
            # The cause is named on the input side: the folder, its mode
            # and owner.
            retry = d.events("retry")[-1]
            assert "locked" in retry and "0755" in retry, retry
            # STATUS puts the problem on the input side, not the output.
            status = [f["STATUS"] for f in listener.fields()
                      if "STATUS" in f]
            assert any("input problem" in t for t in status), status[-3:]
            assert not any("output problem" in t for t in status), status
            os.chmod(locked, 0o777)
            wait_until(lambda: d.events("quarantined"), 30 * SLOW,
                       what=lambda: d.log()[-3000:])
            d.stop()
        finally:
            d.kill()
            listener.close()
        q = sorted(p.name for p in files_below(quarantine))
        assert q == ["x.dcm", "x.dcm.reason"], q
        assert not (locked / "x.dcm").exists()
        assert not temp_files_below(base / "in")


@needs_root
def test_moves_survive_sigkill(daemon, tmp_path):
    """SIGKILL at random moments while sources are copied into a processed
    folder on another file system (the slow path, with the most steps):
    every input is stored once, every original is in processed once, no
    claim or temp file is left, nothing lost."""
    n_files, kills = 300, 12
    rng = random.Random(int(os.environ.get("DICOMSORT_CRASH_SEED", "7")))
    with tmpfs(tmp_path / "processed") as processed:
        d = daemon(start=False, after_success="move", processed=processed,
                   settle_ms=100, workers=2,
                   cleanup={"remove_empty_dirs": False, "min_age_s": 60})
        items = make_items(n_files)
        write_items(d.input, items)
        d.start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.05, 0.4) * SLOW)
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait()
            d.start()
        d.wait_input_empty(300)
        d.stop()
        sops = read_sops(d.output)
        assert sorted(sops) == sorted(it.sop_uid for it in items)
        twice = {s: p for s, p in sops.items() if len(p) != 1}
        assert not twice, list(twice.items())[:3]
        kept = contents(processed)
        for it in items:
            assert len(kept.get(sha(it.data), [])) == 1, it.name
        assert len(files_below(processed)) == n_files
        for root in (d.input, d.output, processed):
            assert not temp_files_below(root), temp_files_below(root)[:5]
    report_figure("moves: %d kills while copying %d sources to another "
                  "file system; each stored once, each original kept once"
                  % (kills, n_files))


def test_start_puts_right_what_a_kill_left(daemon, tmp_path):
    """Leftovers of a SIGKILL, made by hand: a claimed source in the input
    (it gets its name back and is sorted), temp files in quarantine and
    hold (swept). Nothing else in those folders is touched."""
    hold = tmp_path / "hold"
    d = daemon(start=False, hold=hold, profile="seed",
               correlation_table=tmp_path / "table.csv",
               deid={"unknown_id": "hold"})
    (tmp_path / "table.csv").write_text("PAT001,NEW001\n")
    it = make_items(1)[0]
    (d.input / "exam").mkdir(parents=True)
    (d.input / "exam" / (".dicomsort-claim-1a2b.%s" % it.name)).write_bytes(
        it.data)
    for folder in (d.quarantine, hold):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / ".dicomsort-0123456789ab.tmp").write_bytes(b"x")
        (folder / "sub" / "kept.dcm").write_bytes(b"kept")
    d.start()
    d.wait_stored(1)
    d.wait_input_empty()
    d.stop()
    for folder in (d.quarantine, hold):
        assert [p.name for p in files_below(folder)] == ["kept.dcm"]
    assert len([p for p in files_below(d.output)
                if ".dicomsortd-state" not in p.parts]) == 1


def test_claims_and_temps_are_never_input(daemon):
    """With no ignore globs at all, names with our private prefix - a
    claim, a temp file - are still never taken as new input."""
    d = daemon(ignore=[], retry={"parse_attempts": 1, "backoff_ms": 100,
                                 "backoff_max_ms": 300})
    (d.input / ".dicomsort-claim-99.x.dcm").write_bytes(b"junk" * 10)
    (d.input / ".dicomsort-0123456789ab.tmp").write_bytes(b"junk" * 10)
    it = make_items(1)[0]
    write_items(d.input, [it])
    d.wait_stored(1)
    time.sleep(1.0)
    d.stop()
    assert not files_below(d.quarantine)
    assert not d.events("retry") and not d.events("quarantined")
    assert sorted(p.name for p in files_below(d.input)) == [
        ".dicomsort-0123456789ab.tmp", ".dicomsort-claim-99.x.dcm"]


def test_quarantine_writes_over_a_reason_a_kill_orphaned(daemon):
    """The sidecar is written just before its file takes the name; a kill
    in between leaves a reason without a file. The next attempt takes that
    name and writes over it: one copy, one reason."""
    d = daemon(retry={"parse_attempts": 1, "backoff_ms": 100,
                      "backoff_max_ms": 300})
    d.quarantine.mkdir(parents=True, exist_ok=True)
    (d.quarantine / "junk.dcm.reason").write_text("file: junk.dcm\nstale\n")
    (d.input / "junk.dcm").write_bytes(b"not DICOM" * 30)
    wait_until(lambda: d.events("quarantined"), 30, what="quarantine")
    d.stop()
    assert sorted(p.name for p in files_below(d.quarantine)) == [
        "junk.dcm", "junk.dcm.reason"]
    assert "stale" not in (d.quarantine / "junk.dcm.reason").read_text()
