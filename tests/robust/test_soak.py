"""The soak (issue 12, "Tests"): a gateway's worst senders against one
running dicomsortd, then exactly-once delivery checked input by input.

Writers (tests/robust/soak_writers.py, one process per kind, a few threads
each) pause before and inside the pixel data, rewrite files in place (same
size, mtime restored, like rsync --inplace -t), write under a temp name and
rename, rename files that may be in flight, delete and recreate folders,
send many files of one name into one series and some identical ones twice,
and drop non-DICOM files among them. The daemon runs with periodic rescans
on, a short settle_ms and empty-folder cleanup after 1 s. A canary file
written every few seconds measures that intake never stops.

After the writers stop and the daemon drains (bounded waits), the checks:
- no output mixes two versions: the id in ImageComments equals the id in the
  first pixel bytes, and the output's bytes are exactly one version as it
  was written (dicomsortd copies a file that needs no change unchanged);
  its PatientID folder is the PatientID inside it;
- the final version of every good input is in the output exactly once;
  an earlier version (overwritten in place) at most once, and only whole;
  an identical re-send is a duplicate (README: an identical file already
  at the destination), so still once;
- nothing lost: every bad file is in quarantine once, with a `.reason`
  sidecar and a `quarantined` record, no good file is;
- the input folder is drained (no file, no claim left);
- the audit records match: one `stored` record per output file naming it,
  with its SOPInstanceUID and the SHA-256 of its bytes; one `quarantined`
  record per quarantined file.

test_soak_long runs with DICOMSORT_LONG_TESTS=1 for DICOMSORT_SOAK_SECONDS
(default 600). test_soak_smoke is the same harness for 60 s
(DICOMSORT_SOAK_SMOKE_SECONDS) in the normal run: about 100 s in all, with
no finding in any run since race12 (under a load average of 8-10, plain and
ASan). DICOMSORT_SOAK_SEED replays a writer schedule (timing still
varies). Figures go to the terminal summary and daemon-figures.txt.

A finding that matches the signature of an issue 12 item still open
(OPEN_ITEMS) makes the test an expected failure naming it; any other
finding fails it. test_soak_races.py reproduces each of those items
deterministically.
"""

import collections
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import time

import pytest

from conftest import (LONG, SLOW, files_below, helpers,
                      report_figure, wait_until)

import pydicom

HERE = pathlib.Path(__file__).resolve().parent
WRITERS = HERE / "soak_writers.py"
STATE = ".dicomsortd-state"
SETTLE_MS = 150
RESCAN_S = 2

# kind -> threads; the prefix (two digits) numbers the process.
KINDS = [("pause-header", 2), ("pause-pixels", 2), ("inplace", 3),
         ("temp-rename", 1), ("rename", 3), ("recycle", 2),
         ("samename", 2), ("bad", 1)]


def field(line, key):
    m = re.search(r' %s="((?:[^"\\]|\\.)*)"' % key, line)
    return m.group(1) if m else None


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


class Canary(threading.Thread):
    """Writes a small DICOM file every few seconds into its own folder and
    measures how long until it is gone from the input: intake that stops
    (a spinning loop, a dead watch) shows as a canary never taken."""

    def __init__(self, input_dir, seconds):
        super().__init__(daemon=True)
        self.folder = pathlib.Path(input_dir) / "canary"
        self.deadline = time.monotonic() + seconds
        self.latencies = []
        self.pending = {}
        self.items = []
        self.lock = threading.Lock()

    def run(self):
        n = 0
        while time.monotonic() < self.deadline:
            it = helpers.make_items(1, patient_id="SOAKCANARY",
                                    prefix="canary%d_" % n)[0]
            n += 1
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self.folder / it.name
            tmp = self.folder / ("." + it.name)
            tmp.write_bytes(it.data)
            os.rename(tmp, path)
            t0 = time.monotonic()
            with self.lock:
                self.items.append(it)
                self.pending[path] = t0
            self.poll(until=t0 + 3)

    def poll(self, until):
        while True:
            now = time.monotonic()
            with self.lock:
                for p, t0 in list(self.pending.items()):
                    if not p.exists():
                        self.latencies.append(now - t0)
                        del self.pending[p]
            if now >= until:
                return
            time.sleep(0.05)

    def oldest_pending(self):
        with self.lock:
            return max([time.monotonic() - t0
                        for t0 in self.pending.values()] or [0])


def start_writers(tmp_path, input_dir, seconds, seed):
    procs = []
    for i, (kind, threads) in enumerate(KINDS):
        manifest = tmp_path / ("manifest-%02d.jsonl" % (i + 10))
        argv = [sys.executable, str(WRITERS), "--input", str(input_dir),
                "--manifest", str(manifest), "--kind", kind,
                "--prefix", "%02d" % (i + 10), "--seconds", str(seconds),
                "--threads", str(threads), "--seed", str(seed),
                "--settle-ms", str(SETTLE_MS)]
        err = open(tmp_path / ("writer-%02d.err" % (i + 10)), "wb")
        procs.append((kind, manifest, err, subprocess.Popen(
            argv, stderr=err, stdout=subprocess.DEVNULL)))
    return procs


def read_manifests(procs):
    inputs, stats, errors = [], collections.Counter(), []
    for kind, manifest, err, p in procs:
        for line in manifest.read_text().splitlines():
            rec = json.loads(line)
            if "stats" in rec:
                stats.update(rec["stats"])
                errors += rec["errors"]
            else:
                inputs.append(rec)
    return inputs, stats, errors


def describe_output(path):
    """(tag in ImageComments, tag in the pixels, PatientID, SOP UID)."""
    try:
        ds = pydicom.dcmread(str(path))
        comment = str(ds.get("ImageComments", "")).strip()
        pixels = bytes(ds.PixelData[:17]).decode("ascii", "replace")
        return comment, pixels, str(ds.PatientID), str(ds.SOPInstanceUID)
    except Exception as e:           # a torn file is a finding, not a crash
        return "unreadable: %r" % e, "", "", ""


def run_soak(daemon, tmp_path, seconds):
    d = daemon(settle_ms=SETTLE_MS, workers=2,
               rescan={"interval_s": RESCAN_S},
               cleanup={"remove_empty_dirs": True, "min_age_s": 1},
               retry={"parse_attempts": 3, "backoff_ms": 200,
                      "backoff_max_ms": 2000},
               shutdown={"timeout_s": 20})
    seed = int(os.environ.get("DICOMSORT_SOAK_SEED", "0")) or int(
        time.time()) % 100000
    t0 = time.monotonic()
    procs = start_writers(tmp_path, d.input, seconds, seed)
    try:
        canary = Canary(d.input, seconds)
        canary.start()
        max_canary_wait = 0.0
        while any(p.poll() is None for _, _, _, p in procs):
            max_canary_wait = max(max_canary_wait, canary.oldest_pending())
            assert d.alive(), "dicomsortd died:\n" + "\n".join(
                d.log_lines()[-40:])
            # Intake never stops: no canary waits longer than this.
            assert max_canary_wait < 90 * SLOW, (
                "intake stopped: a canary waited %.0fs; log tail:\n%s"
                % (max_canary_wait, "\n".join(d.log_lines()[-40:])))
            if time.monotonic() - t0 > seconds + 120 * SLOW:
                pytest.fail("writers did not stop")
            time.sleep(0.5)
    finally:
        # A failed test leaves no writer behind.
        for _, _, _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    canary.join(30)
    write_s = time.monotonic() - t0
    inputs, stats, errors = read_manifests(procs)
    assert not errors, "a writer failed: %s\n%s" % (errors, "".join(
        e.name and pathlib.Path(e.name).read_text() for _, _, e, _ in procs))
    for _, _, _, p in procs:
        assert p.returncode == 0
    # Drain: every file claimed and disposed of (bounded).
    wait_until(lambda: not [p for p in files_below(d.input)],
               180, interval=0.5,
               what=lambda: "input to drain; left: %s\nlog tail:\n%s" % (
                   [str(p.relative_to(d.input))
                    for p in files_below(d.input)][:20],
                   "\n".join(d.log_lines()[-30:])))
    canary.poll(until=0)
    drain_s = time.monotonic() - t0 - write_s
    rc, stop_s = d.stop()
    assert rc == 0, d.log()[-3000:]
    for c in canary.items:
        inputs.append({"id": c.name, "kind": "canary", "sop": c.sop_uid,
                       "versions": [{"tag": None, "sha256": hashlib.sha256(
                           c.data).hexdigest(), "patient": "SOAKCANARY"}],
                       "final": hashlib.sha256(c.data).hexdigest(),
                       "names": ["canary/" + c.name], "notes": [],
                       "bad": False})
    findings = check(d, inputs)
    files = len(inputs)
    versions = sum(len(i["versions"]) for i in inputs)
    report_figure(
        "soak %.0fs (seed %d): %d inputs (%d versions; %d bad) from %d "
        "writer processes, %d rewrites (%d in place), %d renames (%d "
        "taken before the rename), %d folder recycles, %d pauses, %d "
        "identical re-sends; %.1f inputs/s; drained %.1fs after writers "
        "stopped; canary latency max %.2fs (n=%d); stopped in %.1fs"
        % (write_s, seed, files, versions, stats["bad"], len(procs),
           stats["rewrites"], stats["rewrites_in_place"], stats["renames"],
           stats["renames_lost"], stats["recycles"], stats["pauses"],
           stats["resends"], files / write_s, drain_s,
           max(canary.latencies or [0]), len(canary.latencies), stop_s))
    events = collections.Counter(
        m.group(1) for m in (re.search(r" event=(\S+)", ln)
                             for ln in d.log_lines()) if m)
    report_figure(
        "soak records: %d stored, %d duplicate, %d quarantined, %d "
        "dispose-failed, %d retry; %.1f versions/s written"
        % (events["stored"], events["duplicate"], events["quarantined"],
           events["dispose-failed"], events["retry"], versions / write_s))
    summary = collections.Counter(f[0] for f in findings)
    report_figure("soak findings: %s" % (dict(summary) or "none"))
    return findings


def check(d, inputs):
    """Every finding as (kind, text, the input's manifest record or None);
    empty when all is well."""
    findings = []
    by_sha = {}                  # sha -> (input, version index)
    for rec in inputs:
        for n, v in enumerate(rec["versions"]):
            by_sha[v["sha256"]] = (rec, n)
    by_tag = {v["tag"]: (rec, n) for rec in inputs
              for n, v in enumerate(rec["versions"]) if v["tag"]}

    # -- outputs --
    outputs = [p for p in files_below(d.output) if STATE not in p.parts]
    out_sha = collections.defaultdict(list)
    out_rec = {}
    for p in outputs:
        rel = str(p.relative_to(d.output))
        s = sha256(p)
        out_sha[s].append(rel)
        comment, pixels, pid, sop = describe_output(p)
        rec = (by_sha.get(s) or by_tag.get(comment) or (None,))[0]
        out_rec[rel] = rec
        if rec is not None and rec["bad"]:
            findings.append(("bad-stored", "bad input %s stored as %s"
                             % (rec["id"], rel), rec))
            continue
        canary = p.parts[len(d.output.parts)] == "SOAKCANARY"
        if not canary and comment != pixels:
            findings.append(("mixed", "%s: header says %s, pixels say %s"
                             % (rel, comment, pixels), rec))
        if s not in by_sha:
            src = by_tag.get(comment)
            findings.append(("not-a-version", "%s (%s, %d bytes) is no "
                             "version as written (header %s, pixels %s, "
                             "input %s)" % (
                                 rel, s[:12], p.stat().st_size, comment,
                                 pixels, src[0]["names"] if src else "?"),
                             rec))
        if rel.split("/")[0] != pid:
            findings.append(("wrong-folder", "%s holds PatientID %s"
                             % (rel, pid), rec))
        if rec is not None and rec["sop"] != sop:
            findings.append(("wrong-sop", rel, rec))

    # -- exactly once --
    for rec in inputs:
        if rec["bad"]:
            continue
        final = rec["final"]
        n = len(out_sha.get(final, []))
        if n != 1:
            findings.append(("final-%s" % ("lost" if n == 0 else "twice"),
                             "%s %s (%s; %s): final version %d times in the "
                             "output %s" % (rec["kind"], rec["id"],
                                            rec["names"], rec["notes"], n,
                                            out_sha.get(final, [])), rec))
        for v in rec["versions"][:-1]:
            k = len(out_sha.get(v["sha256"], []))
            if k > 1:
                findings.append(("earlier-twice", "%s %s: version %s %d "
                                 "times: %s" % (rec["kind"], rec["id"],
                                                v["tag"], k,
                                                out_sha[v["sha256"]]), rec))

    # -- quarantine --
    qfiles = [p for p in files_below(d.quarantine)
              if not p.name.endswith(".reason")]
    q_sha = collections.defaultdict(list)
    for p in qfiles:
        rel = str(p.relative_to(d.quarantine))
        s = sha256(p)
        q_sha[s].append(rel)
        if not p.with_name(p.name + ".reason").is_file():
            findings.append(("no-sidecar", rel, None))
        if s not in by_sha:
            comment = describe_output(p)[0]
            findings.append(("quarantined-partial", "%s (%d bytes, %s)" % (
                rel, p.stat().st_size, comment), None))
        elif not by_sha[s][0]["bad"]:
            rec = by_sha[s][0]
            findings.append(("good-quarantined", "%s %s as %s: %s" % (
                rec["kind"], rec["id"], rel, open(
                    str(p) + ".reason", errors="replace").read()[:300]
                if os.path.exists(str(p) + ".reason") else ""), rec))
    for rec in inputs:
        if rec["bad"] and len(q_sha.get(rec["final"], [])) != 1:
            findings.append(("bad-not-quarantined-once", "%s: %s" % (
                rec["names"], q_sha.get(rec["final"])), rec))

    # -- input drained (checked by the drain wait; claims included) --
    left = files_below(d.input)
    if left:
        findings.append(("input-not-drained", str(left[:5]), None))

    # -- records --
    stored = d.events("stored")
    dests = [field(ln, "dest") for ln in stored]
    files = sorted(str(p.relative_to(d.output)) for p in outputs)
    for x in sorted(set(dests)):
        if dests.count(x) > 1:
            findings.append(("record-twice", x, out_rec.get(x)))
    for x in sorted(set(dests) - set(files)):
        findings.append(("record-without-file", x, None))
    for x in sorted(set(files) - set(dests)):
        findings.append(("file-without-record", x, out_rec.get(x)))
    for ln in stored:
        dest = field(ln, "dest")
        p = d.output / dest
        if not p.is_file():
            continue
        if field(ln, "sop_instance_uid") != describe_output(p)[3]:
            findings.append(("record-sop", ln, out_rec.get(dest)))
        if field(ln, "source_sha256") != sha256(p):
            findings.append(("record-sha", "%s: record %s, file %s" % (
                dest, field(ln, "source_sha256"), sha256(p)),
                out_rec.get(dest)))
    qdests = sorted(field(ln, "dest") for ln in d.events("quarantined"))
    qrel = sorted(str(p.relative_to(d.quarantine)) for p in qfiles)
    if qdests != qrel:
        findings.append(("quarantine-records", "records without files %s, "
                         "files without records %s" % (
                             sorted(set(qdests) - set(qrel))[:5],
                             sorted(set(qrel) - set(qdests))[:5]), None))
    return findings


# Issue 12 items the soak still finds, each by its exact signature. A
# finding is put down to an item only when it matches that item's race;
# anything else fails the test. Remove an item here when its fix lands
# (DICOMSORT_SOAK_STRICT=1 ignores this list, to check a fix).
# None open: items 1 and 4 closed by race12 (the read lease held over the
# snapshot read; a lost disposal found by inode before its retry ran).
OPEN_ITEMS = {}


REWRITTEN = ("inplace",)


def open_item(finding):
    """The open item of issue 12 whose race explains finding, or None."""
    kind, _, rec = finding
    if rec is None:
        return None
    in_place = any(n.endswith("in place") for n in rec["notes"])
    if rec["kind"] in REWRITTEN and in_place:
        if kind == "final-lost":
            return "item 2"
        if kind == "not-a-version":
            return "item 1"     # torn: bytes of no whole version
        if kind in ("mixed", "wrong-folder", "record-sha", "final-twice",
                    "earlier-twice"):
            return "item 3"
    if (rec["kind"] == "rename" and "renamed" in rec["notes"] and
            kind == "final-twice"):
        return "item 4"
    return None


def assert_clean(findings):
    """Fail on any finding no open item explains; xfail (naming the items)
    when every finding is one of theirs. The races are timing-dependent,
    so a run may also pass: that is the non-strict xfail."""
    if not findings:
        return
    strict = os.environ.get("DICOMSORT_SOAK_STRICT") == "1"
    items = [None if strict else open_item(f) for f in findings]
    items = [i if i in OPEN_ITEMS else None for i in items]
    lines = ["%s%s: %s" % ("[%s] " % i if i else "", f[0], f[1])
             for f, i in zip(findings, items)]
    text = "%d findings:\n%s" % (len(findings), "\n".join(lines[:80]))
    if None in items:
        pytest.fail(text)
    report_figure("soak: only open issue 12 items found: %s" % (
        ", ".join(sorted(set(items)))))
    pytest.xfail("issue 12 %s still open (%s); %s" % (
        ", ".join(sorted(set(items))),
        "; ".join(OPEN_ITEMS[i] for i in sorted(set(items))), text))


@pytest.mark.skipif(not LONG, reason="long soak: DICOMSORT_LONG_TESTS=1")
def test_soak_long(daemon, tmp_path):
    seconds = float(os.environ.get("DICOMSORT_SOAK_SECONDS", "600"))
    assert_clean(run_soak(daemon, tmp_path, seconds))


def test_soak_smoke(daemon, tmp_path):
    """The same harness for 60 s."""
    seconds = float(os.environ.get("DICOMSORT_SOAK_SMOKE_SECONDS", "60"))
    assert_clean(run_soak(daemon, tmp_path, seconds))
