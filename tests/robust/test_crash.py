"""Crash tests (issue 5, item 1): SIGKILL at random moments loses nothing.

The daemon gets >= 2,000 files (written by a feeder thread while it runs)
and is SIGKILLed >= 30 times at random moments - some while it copies and
renames, some right after a SIGHUP (during the reload of the correlation
table) - and restarted each time. `dicomsort --move` is SIGKILLed and run
again the same way. At the end:

  * every input is in the output exactly once, matched by SOPInstanceUID
    and the SHA-256 of its pixel data, and reads completely with pydicom
    (no partial file);
  * no temp file (.dicomsort-*) sits under a final name, and none is left;
  * the input folder is empty, nothing was quarantined.

Bounded by default (2,000 files, 30 kills each); DICOMSORT_LONG_TESTS=1
runs 10,000 files and 150 kills.
"""

import hashlib
import os
import pathlib
import random
import signal
import subprocess
import threading
import time

import pydicom
import pytest

from conftest import (LONG, SLOW, dicomsort_bin, files_below, make_items,
                      report_figure, temp_files_below, wait_until)

FILES = 10000 if LONG else 2000
KILLS = 150 if LONG else 30


def pixel_hash(data_or_path):
    ds = pydicom.dcmread(data_or_path)
    return str(ds.SOPInstanceUID), hashlib.sha256(ds.PixelData).hexdigest()


def make_inputs(n):
    """n distinct small images (distinct SOP UID and pixels), split over
    three patients, with what each must become."""
    items = []
    for k, pid in enumerate(("PAT001", "PAT002", "PAT003")):
        count = n // 3 + (1 if k < n % 3 else 0)
        items += make_items(count, patient_id=pid, prefix="p%d_" % k,
                            series_number=k + 1)
    expected = {}
    for it in items:
        import io
        sop, h = pixel_hash(io.BytesIO(it.data))
        expected[sop] = h
    return items, expected


def verify_output(out, expected):
    """Every expected SOP exactly once, whole, same pixels; no temp file.
    Returns the number of files checked."""
    temps = temp_files_below(out)
    assert not temps, "temp files left: %s" % temps[:5]
    seen = {}
    for p in files_below(out):
        assert not p.is_symlink(), p
        # A partial file fails here (pydicom reads to the end of pixels).
        sop, h = pixel_hash(str(p))
        assert sop not in seen, "%s stored twice: %s and %s" % (
            sop, seen[sop][0], p)
        seen[sop] = (p, h)
    missing = set(expected) - set(seen)
    extra = set(seen) - set(expected)
    assert not missing, "%d inputs lost, e.g. %s" % (len(missing),
                                                     sorted(missing)[:3])
    assert not extra, "unexpected outputs: %s" % sorted(extra)[:3]
    bad = [s for s in expected if seen[s][1] != expected[s]]
    assert not bad, "pixel data differs for %s" % bad[:3]
    return len(seen)


class Feeder(threading.Thread):
    """Drops the items into the input folder in small bursts: most written
    in a staging folder and renamed in (how a careful sender delivers),
    every fifth written in place (open, write in two parts, close)."""

    def __init__(self, items, input_dir, staging):
        super().__init__(daemon=True)
        self.items = items
        self.input = pathlib.Path(input_dir)
        self.staging = pathlib.Path(staging)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.done = threading.Event()
        self.error = None

    def run(self):
        rng = random.Random(5)
        try:
            for i, it in enumerate(self.items):
                if i % 5 == 4:
                    with open(self.input / it.name, "wb") as f:
                        half = len(it.data) // 2
                        f.write(it.data[:half])
                        f.flush()
                        f.write(it.data[half:])
                else:
                    tmp = self.staging / it.name
                    tmp.write_bytes(it.data)
                    os.rename(tmp, self.input / it.name)
                if i % 50 == 49:
                    time.sleep(rng.uniform(0, 0.05))
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            self.done.set()


def test_daemon_survives_sigkill(tmp_path, daemon):
    items, expected = make_inputs(FILES)
    table = tmp_path / "table.csv"
    table.write_text("PAT001,NEW001\nPAT002,NEW002\n")
    d = daemon(start=False, correlation_table=table, settle_ms=150,
               workers=2,
               retry={"parse_attempts": 3, "backoff_ms": 100,
                      "backoff_max_ms": 500},
               cleanup={"remove_empty_dirs": False, "min_age_s": 60})
    feeder = Feeder(items, d.input, tmp_path / "staging")
    rng = random.Random(int(os.environ.get("DICOMSORT_CRASH_SEED", "1")))
    kills = reload_kills = busy_kills = 0
    d.start()
    feeder.start()
    while kills < KILLS:
        time.sleep(rng.uniform(0.05, 0.5) * SLOW)
        if kills % 4 == 3:
            # Rewrite the table and kill in the middle of the reload.
            table.write_text("PAT001,NEW001\nPAT002,NEW002\n# %d\n" % kills)
            d.signal(signal.SIGHUP)
            time.sleep(rng.uniform(0, 0.01))
            reload_kills += 1
        stored_before = len(d.events("stored"))
        if files_below(d.input):
            busy_kills += 1
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        kills += 1
        assert d.proc.returncode == -signal.SIGKILL, d.log()[-2000:]
        del stored_before
        d.start()
    feeder.join(120)
    assert feeder.error is None, feeder.error
    # The last run finishes the job.
    try:
        wait_until(lambda: not files_below(d.input), 300,
                   what="input folder to empty")
    finally:
        d.stop()
    checked = verify_output(d.output, expected)
    assert not files_below(d.quarantine), files_below(d.quarantine)[:5]
    assert (d.output / "NEW001").is_dir() and (d.output / "PAT003").is_dir()
    report_figure("crash test (daemon): %d kills survived (%d during a "
                  "reload, %d with files waiting), %d files checked by "
                  "SOPInstanceUID + pixel SHA-256" % (
                      kills, reload_kills, busy_kills, checked))


def count_files(root):
    n = 0
    for d in os.scandir(root):
        if d.is_dir(follow_symlinks=False):
            n += sum(1 for _ in os.scandir(d.path))
    return n


def place_nested(pending, inp, count, folders, also=None):
    """Write the next count of pending (index, item) pairs into nested
    input folders, like a PACS export: inp/export<index % folders>/.
    also(index, item, path), if given, runs after each write."""
    for _ in range(min(count, len(pending))):
        i, it = pending.pop(0)
        sub = inp / ("export%d" % (i % folders))
        sub.mkdir(exist_ok=True)
        (sub / it.name).write_bytes(it.data)
        if also is not None:
            also(i, it, sub)


def run_and_kill(argv, cwd, left, rng, anywhere, anywhere_s, ahead,
                 poll_s):
    """Start one run of argv and SIGKILL it: anywhere (start-up and the
    claim recovery included) after a random pause up to anywhere_s, else
    mid-run, once left() - the inputs still waiting - is 1..ahead below
    its count before the start, however slow the machine (ASan, load)
    makes the start-up. Returns whether the kill landed (the run may
    finish first); a run that finished must have succeeded."""
    target = left() - rng.randint(1, ahead) if not anywhere else None
    p = subprocess.Popen(argv, cwd=str(cwd), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
    if anywhere:
        time.sleep(rng.uniform(0, anywhere_s))
    else:
        while p.poll() is None and left() > target:
            time.sleep(poll_s)
    killed = p.poll() is None
    if killed:
        p.kill()
    p.wait(60)
    assert p.returncode in (0, 1, -signal.SIGKILL), p.stderr.read()
    p.stderr.close()
    return killed


def final_run(argv, cwd, inp, out, expected):
    """The last run, not killed: it succeeds, leaves the input empty (no
    claim or other debris) and the output complete. Returns the number
    of files checked."""
    r = subprocess.run(argv, cwd=str(cwd), capture_output=True,
                       timeout=300 * SLOW)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-3000:]
    assert not files_below(inp), files_below(inp)[:5]
    return verify_output(out, expected)


def test_dicomsort_move_survives_sigkill(tmp_path):
    move_survives_sigkill(tmp_path, ["--jobs", "2"], "")


def test_dicomsort_move_in_stages_survives_sigkill(tmp_path):
    """The default --move of renamed files: one thread reads, another
    claims and places (bench/PROFILE.md section 15); killed with files
    read and leased but not yet claimed, or claimed and not yet placed."""
    move_survives_sigkill(tmp_path, [], ", two stages")


def move_survives_sigkill(tmp_path, jobs, label):
    # Twice the files: a run renames unchanged files thousands a second,
    # and each kill lands a few dozen files after its target.
    items, expected = make_inputs(2 * FILES)
    inp = tmp_path / "in"
    out = tmp_path / "out"
    inp.mkdir()
    pending = list(enumerate(items))
    argv = [dicomsort_bin(), "--dicomin", str(inp), "--dicomout", str(out),
            "--move", "--quiet"] + jobs
    rng = random.Random(2)
    # Each run is killed once a few more inputs are gone (or at once, for
    # a kill during the walk of the input tree). --move of an unchanged
    # file is a rename, so a run is quick: inputs arrive in waves to keep
    # every run busy until its kill.
    place_nested(pending, inp, FILES // 2, 7)
    kills = runs = 0
    while kills < KILLS:
        if count_files(inp) < 100:
            if not pending:
                break
            place_nested(pending, inp, 200, 7)
        runs += 1
        # A run renames thousands of files a second: look often, or the
        # inputs run out before the kills are done.
        if run_and_kill(argv, tmp_path, lambda: count_files(inp), rng,
                        anywhere=runs % 10 == 0, anywhere_s=0.02, ahead=20,
                        poll_s=0.0002):
            kills += 1
    place_nested(pending, inp, len(pending), 7)
    # Kills never lose a source: what was not moved is still there.
    left_before_final = len(files_below(inp))
    checked = final_run(argv, tmp_path, inp, out, expected)
    runs += 1
    report_figure("crash test (dicomsort --move%s): %d kills in %d runs, "
                  "%d files left for the final run, %d files checked" % (
                      label, kills, runs, left_before_final, checked))
    assert kills >= KILLS, "the runs ended before %d kills" % KILLS


def content_hash(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def check_kill_left_nothing_lost(inp, out, placed):
    """After a kill: every input placed so far is in the input (under its
    name, or a claim name the next run gives back) or complete in the
    output; the output holds each content once and nothing partial."""
    stored = {}
    for p in files_below(out):
        h = content_hash(p)
        assert h in placed, "partial or foreign file in the output: %s" % p
        assert h not in stored, "stored twice: %s and %s" % (stored[h], p)
        stored[h] = p
    waiting = {content_hash(p) for p in files_below(inp)}
    lost = set(placed) - waiting - set(stored)
    assert not lost, "%d inputs lost after a kill, e.g. %s" % (
        len(lost), [placed[h] for h in sorted(lost)[:3]])


def test_dicomsort_move_mixed_survives_sigkill(tmp_path):
    # Issue 14: --move renames under a group commit (no fsync per file,
    # one syncfs at the end), copies a source it cannot rename (here: a
    # second hard link outside the input) and deletes it once the copy
    # is durable, and drops a source whose identical copy is there
    # already (the same file in two input folders). All three meet here,
    # SIGKILLed at random moments; the state is checked after every kill.
    n = FILES // 2
    kills_wanted = KILLS // 2
    items, expected = make_inputs(n)
    inp, out, keep = tmp_path / "in", tmp_path / "out", tmp_path / "keep"
    for d in (inp, out, keep):
        d.mkdir()
    placed = {}
    linked = []
    pending = list(enumerate(items))

    def note(i, it, sub):
        placed[hashlib.sha256(it.data).hexdigest()] = it.name
        if i % 3 == 0:
            # nlink 2: not renamed (it would stay reachable from
            # outside the output) but copied, then unlinked here.
            link = keep / ("%d-%s" % (i, it.name))
            os.link(sub / it.name, link)
            linked.append((link, it.data))
        if i % 10 == 1:
            dup = inp / "again"
            dup.mkdir(exist_ok=True)
            (dup / it.name).write_bytes(it.data)

    def place(count):
        place_nested(pending, inp, count, 5, also=note)

    argv = [dicomsort_bin(), "--dicomin", str(inp), "--dicomout", str(out),
            "--move", "--quiet", "--jobs", "2"]
    rng = random.Random(14)
    place(n // 4)
    kills = runs = midrun = 0
    while kills < kills_wanted:
        if not files_below(inp):
            if not pending:
                break
            place(n // 8)
        before = len(files_below(inp))
        runs += 1
        if run_and_kill(argv, tmp_path, lambda: len(files_below(inp)), rng,
                        anywhere=runs % 4 == 0, anywhere_s=0.05, ahead=30,
                        poll_s=0.001):
            kills += 1
        if 0 < len(files_below(inp)) < before:
            midrun += 1
        check_kill_left_nothing_lost(inp, out, placed)
    place(len(pending))
    checked = final_run(argv, tmp_path, inp, out, expected)
    runs += 1
    # The other links of the copied sources are untouched.
    for link, data in linked:
        assert link.read_bytes() == data, link
        assert link.stat().st_nlink == 1, link
    report_figure("crash test (dicomsort --move, renames + copies + "
                  "duplicates): %d kills in %d runs (%d mid-run), state "
                  "checked after each, %d files checked" % (
                      kills, runs, midrun, checked))
    assert kills >= kills_wanted, "the runs ended before %d kills" % (
        kills_wanted)
