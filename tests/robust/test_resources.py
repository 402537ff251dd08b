"""Resource bounds (issue 5, item 6): a 100,000-file backlog at start is
queued with bounded memory (the queue holds paths, not data), descriptor use
stays bounded and returns to its baseline, and limits.max_file_size_mb
turns a too-large file away unread.

The backlog is tiny valid DICOM files (no pixel data) made from one
template. By default the daemon queues all 100,000 and processes a few
thousand of them before it is stopped (what is left stays in the input);
DICOMSORT_LONG_TESTS=1 lets it process every one.
"""

import os
import signal
import time

import pytest

from conftest import (LONG, SANITIZED, dicom_bytes, files_below, raw_dicom,
                      read_sops, report_figure, wait_until)  # noqa: F401

BACKLOG = 100000


def write_backlog(root, n, per_folder=1000):
    """n distinct tiny DICOM files (distinct SOPInstanceUID) below root."""
    marker = "9" * 20
    template, _ = raw_dicom(patient_id=b"BACKLOG",
                            sop_uid="1.2.826.0.1.3680043.10.4242.7." + marker)
    assert template.count(marker.encode()) == 2   # meta + dataset
    for i in range(n):
        folder = root / ("b%03d" % (i // per_folder))
        if i % per_folder == 0:
            folder.mkdir(parents=True, exist_ok=True)
        data = template.replace(marker.encode(), b"%020d" % i)
        with open(folder / ("f%06d.dcm" % i), "wb") as f:
            f.write(data)


def proc_status(pid):
    vals = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            vals[k] = v.strip()
    return vals


def fd_count(pid):
    return len(os.listdir("/proc/%d/fd" % pid))


def fd_targets(pid):
    out = {}
    for n in os.listdir("/proc/%d/fd" % pid):
        try:
            out[int(n)] = os.readlink("/proc/%d/fd/%s" % (pid, n))
        except OSError:
            pass
    return out


def test_backlog_of_100000_files(tmp_path, daemon):
    # Baseline: the same daemon with an empty input.
    d0 = daemon(start=True)
    time.sleep(0.5)
    base_rss = int(proc_status(d0.pid)["VmHWM"].split()[0])
    base_fds = fd_count(d0.pid)
    d0.stop()

    t0 = time.monotonic()
    write_backlog(tmp_path / "in", BACKLOG)
    gen_s = time.monotonic() - t0
    d = daemon(start=False, settle_ms=100, workers=2,
               cleanup={"remove_empty_dirs": False, "min_age_s": 60})
    t0 = time.monotonic()
    d.start()
    wait_until(lambda: "backlog: %d files" % BACKLOG in d.log(), 120,
               what="the backlog scan")
    scan_s = time.monotonic() - t0
    target = BACKLOG if LONG else 3000
    peak_fds = 0
    deadline = time.monotonic() + (3600 if LONG else 300) * (
        3 if SANITIZED else 1)
    while len(d.events("stored")) < target:
        peak_fds = max(peak_fds, fd_count(d.pid))
        assert d.alive(), d.log()[-2000:]
        assert time.monotonic() < deadline, "too slow: %d stored" % len(
            d.events("stored"))
        time.sleep(0.2)
    st = proc_status(d.pid)
    hwm = int(st["VmHWM"].split()[0])
    rss = int(st["VmRSS"].split()[0])
    stored = len(d.events("stored"))
    secs = time.monotonic() - t0
    rc, _ = d.stop(60)
    assert rc == 0
    stored = len(d.events("stored"))   # with those in flight at the stop
    left = sum(1 for _ in (tmp_path / "in").rglob("*.dcm"))
    assert left + stored == BACKLOG, (left, stored)
    assert not files_below(d.quarantine)
    report_figure(
        "backlog of %d files at start: generated in %.1fs, scanned in %.1fs; "
        "%d stored in %.1fs; daemon peak RSS %d kB (RSS %d kB; empty-input "
        "baseline %d kB, so %.0f bytes per queued file); fds peak %d "
        "(baseline %d)%s" % (
            BACKLOG, gen_s, scan_s, stored, secs, hwm, rss, base_rss,
            (hwm - base_rss) * 1024.0 / BACKLOG, peak_fds, base_fds,
            " [ASan build]" if SANITIZED else ""))
    # The queue holds paths: far below a kilobyte per file (ASan's
    # allocator adds its redzones and quarantine).
    per_file = (hwm - base_rss) * 1024.0 / BACKLOG
    assert per_file < (4096 if SANITIZED else 1024), per_file
    assert peak_fds <= base_fds + 32, (peak_fds, base_fds)


def test_descriptors_return_to_baseline(tmp_path, daemon):
    """After bursts of good, bad and special files the daemon holds the
    descriptors it held before, plus at most one output folder per worker
    (each keeps its last destination folder open): none leaks per file."""
    d = daemon(retry={"parse_attempts": 1, "backoff_ms": 100,
                      "backoff_max_ms": 500})
    time.sleep(0.3)
    before = fd_targets(d.pid)
    for burst in range(3):
        for i in range(100):
            (d.input / ("g%d_%d.dcm" % (burst, i))).write_bytes(
                dicom_bytes(patient_id="FD%d" % burst))
        for i in range(20):
            (d.input / ("bad%d_%d.dcm" % (burst, i))).write_bytes(b"x" * i)
        os.mkfifo(d.input / ("fifo%d" % burst))
        d.wait_input_empty(120)
    # Jobs finish (fsync, audit) a moment after their source left.
    wait_until(lambda: len(d.events("stored")) == 300 and
               len(d.events("quarantined")) == 63, 60,
               what="every file accounted for")
    def settled():
        now = fd_targets(d.pid)
        extra = {k: v for k, v in now.items() if before.get(k) != v}
        return (all(before[k] == now.get(k) for k in before) and
                len(extra) <= 2 and
                all(v.startswith(str(d.output) + "/") for v in
                    extra.values()))
    try:
        wait_until(settled, 10, what="descriptors back to the baseline")
    except BaseException:
        print("before:", before, "after:", fd_targets(d.pid))
        raise
    d.stop()


def test_max_file_size(tmp_path, daemon):
    d = daemon(limits={"max_file_size_mb": 1},
               retry={"parse_attempts": 1, "backoff_ms": 100,
                      "backoff_max_ms": 500})
    big = dicom_bytes(patient_id="BIG", rows=1024, cols=600)   # ~1.2 MB
    small = dicom_bytes(patient_id="SMALL")
    assert len(big) > 1024 * 1024
    (d.input / "big.dcm").write_bytes(big)
    (d.input / "small.dcm").write_bytes(small)
    d.wait_input_empty(60)
    assert (d.quarantine / "big.dcm").exists()
    reason = (d.quarantine / "big.dcm.reason").read_text()
    assert "larger than the limit" in reason, reason
    assert len(read_sops(d.output)) == 1
    d.stop()
