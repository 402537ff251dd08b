"""A burst of files: every one stored exactly once, and what it costs.

Prints (and records in $DICOMSORT_BUILD_DIR/daemon-figures.txt) the
arrival-to-stored latency and the daemon's memory; the timings are not
asserted tightly, they depend on the machine.
"""

import os
import statistics
import time

from conftest import (SANITIZED, expected_dir, files_below, make_items,
                      read_sops, report_figure, temp_files_below)

# 2,000 files, under ASan+UBSan too (about 15 s there). DICOMSORT_BURST_N
# may scale it down on a slow machine, never below 500.
N = max(500, int(os.environ.get("DICOMSORT_BURST_N") or 2000))
SETTLE_MS = 500


def percentile(values, p):
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def test_burst_all_stored_once_with_latency_and_rss(daemon):
    items = make_items(N, prefix="burst", series_number=5)
    d = daemon(settle_ms=SETTLE_MS, workers=2)
    rss0, hwm0 = d.memory_kb()
    arrival = {}
    t_start = time.time()
    for i, it in enumerate(items):
        sub = d.input / ("batch%d" % (i // 500))
        if i % 500 == 0:
            sub.mkdir()
        p = sub / it.name
        with open(p, "wb") as f:
            f.write(it.data)
        arrival[it.name] = time.time()     # finished writing
    t_written = time.time()
    d.wait_stored(N, timeout=120)
    t_done = time.time()
    d.wait_input_empty(timeout=30)
    rss1, hwm1 = d.memory_kb()

    # Exactly once: N distinct names, no numbered second copies, each
    # SOP Instance UID in one file.
    out_dir = expected_dir(d.output, items[0])
    outs = files_below(d.output)
    assert not temp_files_below(d.output)
    assert len(outs) == N, len(outs)
    assert {p.name for p in outs} == {it.name for it in items}
    assert all(p.parent == out_dir for p in outs)
    sops = read_sops(d.output)
    assert len(sops) == N and all(len(v) == 1 for v in sops.values())
    assert set(sops) == {it.sop_uid for it in items}
    assert not files_below(d.input)
    assert not files_below(d.quarantine)
    assert len(d.events("stored")) == N
    assert not d.events("retry") and not d.events("duplicate")

    # Stored: its record, sent once the output is durable (a source
    # renamed into place keeps its own mtime).
    when = {os.path.basename(k): v for k, v in d.stored_times().items()}
    lat = [when[name] - arrival[name] for name in arrival]
    # Stored means after arrival plus the quiet time, never before.
    assert min(lat) >= SETTLE_MS / 1000.0 - 0.05, min(lat)
    rc, took = d.stop()
    assert rc == 0

    report_figure(
        "burst: %d files (%s build), settle_ms=%d, 2 workers: written in "
        "%.2fs, all stored %.2fs after the first write (%.0f files/s)"
        % (N, "sanitizer" if SANITIZED else "normal", SETTLE_MS,
           t_written - t_start, t_done - t_start,
           N / max(t_done - t_start, 1e-6)))
    report_figure(
        "burst latency arrival->stored: median %.0f ms, p95 %.0f ms, "
        "max %.0f ms (includes settle_ms=%d)"
        % (statistics.median(lat) * 1000, percentile(lat, 95) * 1000,
           max(lat) * 1000, SETTLE_MS))
    report_figure(
        "burst daemon memory: VmRSS %d kB before -> %d kB after; VmHWM "
        "%d kB before -> %d kB after" % (rss0, rss1, hwm0, hwm1))
