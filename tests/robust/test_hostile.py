"""Hostile inputs (issue 5, item 3): each has a defined, tested outcome -
stored safely inside the output root, or rejected (dicomsort) / quarantined
with a reason (dicomsortd) - never a crash, a hang or a write outside the
output root.

Outcomes checked for every case: the process did not crash (exit status 0
or 1 for dicomsort, still alive for the daemon), finished within a bound,
nothing appeared outside the output/quarantine roots, and nothing outside the
input folder changed.
"""

import json
import os
import pathlib
import signal
import socket
import stat
import threading
import time

import pytest

from conftest import (IS_ROOT, LONG, SLOW, deflated_dicom, dicom_bytes,
                      dicomsort_bin, element, files_below, nested_sequences,
                      new_uid, pad, raw_dicom, read_sops, report_figure,
                      run_measured, temp_files_below, wait_until)

# ---- the hostile files ----


def case_files():
    """name -> (bytes, expected) where expected is "stored", "rejected" or
    "either" (DCMTK may take or refuse it; both are safe outcomes)."""
    cases = {}
    cases["zero-bytes.dcm"] = (b"", "rejected")
    cases["text.dcm"] = (b"PatientID=../../etc/passwd\nhello\n" * 20,
                         "rejected")
    good, _ = raw_dicom(patient_id=b"TRUNC")
    cases["truncated.dcm"] = (good[:len(good) - 7], "either")
    cases["preamble-only.dcm"] = (b"\0" * 100, "rejected")
    # An element declaring 0xFFFFFFF0 bytes, in the middle and at the end.
    data, _ = raw_dicom(patient_id=b"LEN1", tail=element(
        0x0020, 0x4000, "UT", b"short", length=0xFFFFFFF0))
    cases["length-fffffff0-ut.dcm"] = (data, "rejected")
    data, _ = raw_dicom(patient_id=b"LEN2", tail=element(
        0x7FE0, 0x0010, "OB", b"\0" * 64, length=0xFFFFFFF0))
    cases["length-fffffff0-pixels.dcm"] = (data, "rejected")
    # 2 GiB declared, 1 KiB file.
    data, _ = raw_dicom(patient_id=b"LEN3", tail=element(
        0x7FE0, 0x0010, "OB", b"", length=0x80000000))
    data += b"\xab" * (1024 - len(data))
    cases["declared-2gib-in-1kib.dcm"] = (data, "rejected")
    data, _ = deflated_dicom(0x80000000)
    cases["deflated-declared-2gib.dcm"] = (data, "rejected")
    data, _ = deflated_dicom(0xFFFFFFF0)
    cases["deflated-declared-fffffff0.dcm"] = (data, "rejected")
    # 10,000 levels of nested sequences, undefined and defined lengths.
    data, _ = raw_dicom(patient_id=b"DEEP1", middle=nested_sequences(10000))
    cases["nested-10000-undefined.dcm"] = (data, "either")
    data, _ = raw_dicom(patient_id=b"DEEP2",
                        middle=nested_sequences(10000, defined_length=True))
    cases["nested-10000-defined.dcm"] = (data, "either")
    # Values with path separators, "..", control characters, 64 KiB.
    data, _ = raw_dicom(patient_id=b"../../../../tmp/escape",
                        series_description=b"..\\..\\x/y")
    cases["value-dotdot.dcm"] = (data, "stored")
    data, _ = raw_dicom(patient_id=b"/etc/cron.d/x",
                        series_description=b".")
    cases["value-absolute.dcm"] = (data, "stored")
    data, _ = raw_dicom(patient_id=b"ctl\x01\x02\x1b[31m\x7f\n\r\tX",
                        series_description=b"\x00\x00..")
    cases["value-control.dcm"] = (data, "stored")
    data, _ = raw_dicom(patient_id=b"P" * 65534,
                        series_description=("\u00e9" * 32767).encode())
    cases["value-64kib.dcm"] = (data, "stored")
    data, _ = raw_dicom(patient_id=b"..", series_description=b"...",
                        study_date=b"..")
    cases["value-only-dots.dcm"] = (data, "stored")
    data, _ = raw_dicom(patient_id=b"\xff\xfe\xc0\xaf invalid utf8")
    cases["value-invalid-utf8.dcm"] = (data, "stored")
    return cases


def special_names():
    """File names that are hostile themselves (all valid DICOM)."""
    names = {}
    for name in (b"new\nline.dcm", b"bad\xff\xfeutf8.dcm",
                 b"tab\tand\rcr.dcm", b"-rf", b" lead space.dcm"):
        data, _ = raw_dicom(patient_id=b"NAMES")
        names[name] = data
    return names


def make_special(input_dir, outside):
    """Symlinks, a hardlink, FIFO, socket and device nodes in input_dir;
    their targets in `outside`. Returns (what was made, open sockets)."""
    made = {}
    outside.mkdir(parents=True, exist_ok=True)
    target = outside / "target.dcm"
    target.write_bytes(dicom_bytes(patient_id="OUTSIDE"))
    (outside / "sub").mkdir(exist_ok=True)
    (outside / "sub" / "inner.dcm").write_bytes(
        dicom_bytes(patient_id="OUTSIDE2"))
    os.symlink(target, input_dir / "symlink-file.dcm")
    os.symlink(outside / "sub", input_dir / "symlink-dir")
    os.symlink("/etc/passwd", input_dir / "symlink-passwd.dcm")
    os.symlink("dangling-nowhere", input_dir / "symlink-dangling.dcm")
    made["symlinks"] = 4
    linked = outside / "hardlinked.dcm"
    linked.write_bytes(dicom_bytes(patient_id="HARDLINK"))
    os.link(linked, input_dir / "hardlink.dcm")
    os.mkfifo(input_dir / "fifo.dcm")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(input_dir / "socket.dcm"))
    made["devices"] = 0
    if IS_ROOT:
        try:
            # /dev/zero never ends, /dev/null is empty; a block device.
            os.mknod(input_dir / "chr-zero.dcm", stat.S_IFCHR | 0o600,
                     os.makedev(1, 5))
            os.mknod(input_dir / "chr-null.dcm", stat.S_IFCHR | 0o600,
                     os.makedev(1, 3))
            os.mknod(input_dir / "blk-loop.dcm", stat.S_IFBLK | 0o600,
                     os.makedev(7, 0))
            made["devices"] = 3
        except OSError:
            pass
    return made, [sock]


def snapshot(root):
    """path -> (mode, size, mtime_ns) for everything below root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def assert_inside(root, paths):
    root = os.path.realpath(root)
    for p in paths:
        real = os.path.realpath(p)
        assert real == root or real.startswith(root + os.sep), p


def check_output_tree(out):
    """Every entry below out is a real folder or regular file, components
    at most 255 bytes, none hidden except our temp prefix (which must not
    be left either), no control characters in names built from values."""
    assert not temp_files_below(out), temp_files_below(out)
    for dirpath, dirnames, filenames in os.walk(out):
        if os.path.samefile(dirpath, out) and ".dicomsortd-state" in dirnames:
            # The daemon's own pending-record folder (issue 10), not a
            # name built from DICOM values.
            dirnames.remove(".dicomsortd-state")
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            assert stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode), p
            assert len(os.fsencode(n)) <= 255
            assert not n.startswith("."), p
        for n in dirnames:
            assert not any(ord(c) < 0x20 or ord(c) == 0x7f for c in n), n
    assert_inside(out, [p for p in files_below(out)])


# ---- dicomsort ----

@pytest.fixture
def hostile_tree(tmp_path):
    """The input tree of every hostile case, plus an `outside` folder."""
    inp = tmp_path / "in"
    inp.mkdir()
    expected = {}
    for name, (data, outcome) in case_files().items():
        (inp / name).write_bytes(data)
        expected[name] = outcome
    names = special_names()
    for name, data in names.items():
        with open(os.path.join(os.fsencode(inp), name), "wb") as f:
            f.write(data)
    made, socks = make_special(inp, tmp_path / "outside")
    yield inp, tmp_path / "outside", expected, names, made
    for s in socks:
        s.close()


@pytest.mark.parametrize("move", [False, True], ids=["copy", "move"])
def test_dicomsort_hostile_tree(tmp_path, hostile_tree, move):
    inp, outside, expected, names, made = hostile_tree
    out = tmp_path / "out"
    outside_before = snapshot(outside)
    top_before = set(os.listdir(tmp_path))
    argv = [dicomsort_bin(), "--dicomin", str(inp), "--dicomout", str(out),
            "--json", "--jobs", "2"]
    if move:
        argv.append("--move")
    rc, stdout, stderr, secs, rss = run_measured(argv, timeout=120,
                                                 cwd=str(tmp_path))
    assert rc in (0, 1), (rc, stderr[-3000:])
    report = json.loads(stdout)
    files = report["files"] if isinstance(report, dict) else report
    by_name = {}
    for f in files:
        by_name[os.path.basename(f["source"])] = f
    # Every plain hostile case has its defined outcome.
    for name, outcome in expected.items():
        f = by_name.get(name)
        assert f is not None, "no result for %s" % name
        stored = f.get("dest") is not None
        if outcome == "stored":
            assert stored, (name, f)
        elif outcome == "rejected":
            assert not stored and f.get("reason"), (name, f)
        if not stored:
            assert f.get("reason"), (name, f)
            # A rejected source is never deleted, even with --move.
            assert (inp / name).exists(), name
    # Symlinks: rejected, never followed; FIFO/socket/devices rejected.
    for name in ("symlink-file.dcm", "symlink-passwd.dcm", "fifo.dcm",
                 "socket.dcm"):
        assert by_name[name].get("dest") is None, by_name[name]
        assert os.path.lexists(inp / name)
    for name in ("chr-zero.dcm", "chr-null.dcm", "blk-loop.dcm")[
            :made["devices"]]:
        assert by_name[name].get("dest") is None, by_name[name]
    assert not any("inner.dcm" in f["source"] for f in files), \
        "a symlinked folder was followed"
    # The hardlink is a regular file: stored; its other name is untouched.
    assert by_name["hardlink.dcm"].get("dest"), by_name["hardlink.dcm"]
    assert snapshot(outside) == {
        k: v for k, v in outside_before.items()} or move, \
        "files outside the input changed"
    assert (outside / "hardlinked.dcm").exists()
    assert (outside / "target.dcm").read_bytes()[:4] != b""
    # Hostile names: stored under their own (byte-exact) names.
    stored_names = set()
    for p in files_below(out):
        stored_names.add(os.fsencode(p.name))
    for name in names:
        assert name in stored_names, name
    check_output_tree(out)
    # Nothing was created beside the output root.
    assert set(os.listdir(tmp_path)) - top_before <= {
        "out", "missing_patient_ids.log"}
    # Values never lead out: the escape attempt stays a folder name.
    assert not os.path.exists("/tmp/escape")
    assert any("tmpescape" in str(p) for p in files_below(out))
    # Long values are cut to 255-byte components.
    report_figure("hostile tree (dicomsort%s): %d entries, exit %d, %.1fs, "
                  "peak RSS %d kB" % (" --move" if move else "",
                                      len(files), rc, secs, rss))


def test_dicomsort_stderr_one_line_per_reject(tmp_path):
    """A rejected file whose name holds a newline must not forge a second
    line in dicomsort's report (stderr is read by scripts and people)."""
    inp = tmp_path / "in"
    inp.mkdir()
    evil = b"evil\ndicomsort: FORGED: stored.dcm"
    with open(os.path.join(os.fsencode(inp), evil), "wb") as f:
        f.write(b"not dicom at all\n")
    rc, _, stderr, _, _ = run_measured(
        [dicomsort_bin(), "--dicomin", str(inp), "--dicomout",
         str(tmp_path / "out")], cwd=str(tmp_path))
    assert rc == 1
    lines = [ln for ln in stderr.split(b"\n")
             if ln.startswith(b"dicomsort: ")]
    assert not any(ln.startswith(b"dicomsort: FORGED") for ln in lines), \
        stderr


def test_dicomsort_input_is_fifo_or_device(tmp_path):
    """--dicomin naming a FIFO, a socket or /dev/zero: a usage error, no
    hang."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, "/dev/zero"):
        rc, _, stderr, _, _ = run_measured(
            [dicomsort_bin(), "--dicomin", str(path), "--dicomout",
             str(tmp_path / "out")], timeout=30, cwd=str(tmp_path))
        assert rc in (1, 2), (path, rc, stderr)


def test_basic_many_private_elements_is_linear(tmp_path):
    """120,000 private elements in one file, under the basic profile: every
    one is removed, in time linear in their number. (Looking each one's
    creator up in the item, and walking DCMTK's list by index, made this
    quadratic: 22 s for half as many.)"""
    inp = tmp_path / "in"
    inp.mkdir()
    blocks = range(0x10, 0x100)
    private = b"".join(
        b"".join(element(group, block, "LO", pad("HOSTILE %02X" % block))
                 for block in blocks) +
        b"".join(element(group, block << 8 | e, "SH", b"x ")
                 for block in blocks for e in range(250))
        for group in (0x0021, 0x0023))
    data, _ = raw_dicom(patient_id=b"MANY", tail=private)
    (inp / "many.dcm").write_bytes(data)
    secret = tmp_path / "secret"
    secret.write_text("hostile test secret, 32 bytes..\n")
    secret.chmod(0o600)
    rc, _, stderr, secs, _ = run_measured(
        [dicomsort_bin(), "--dicomin", str(inp), "--dicomout",
         str(tmp_path / "out"), "--profile", "basic", "--secret",
         str(secret)], timeout=120, cwd=str(tmp_path))
    assert rc == 0, stderr
    report_figure("basic over 120,000 private elements: %.2f s" % secs)
    assert secs < 15 * SLOW, secs
    out = files_below(tmp_path / "out")
    assert len(out) == 1
    assert b"HOSTILE" not in out[0].read_bytes()


def test_reversed_elements_rejected_quickly(tmp_path):
    """120,000 elements in descending tag order: DCMTK's reader places each
    by walking back from the end of the item (93 s for this 1.2 MB file).
    More than 64 elements out of order are refused before it reads them; a
    few, as some real files have, are still stored."""
    inp = tmp_path / "in"
    inp.mkdir()
    blocks = range(0x10, 0x100)
    private = [element(group, block << 8 | e, "SH", b"x ")
               for group in (0x0021, 0x0023) for block in blocks
               for e in range(250)]
    data, _ = raw_dicom(patient_id=b"REV", tail=b"".join(reversed(private)))
    (inp / "reversed.dcm").write_bytes(data)
    few = private[:10]
    data, _ = raw_dicom(patient_id=b"FEW", tail=b"".join(reversed(few)))
    (inp / "few-reversed.dcm").write_bytes(data)
    rc, _, stderr, secs, _ = run_measured(
        [dicomsort_bin(), "--dicomin", str(inp), "--dicomout",
         str(tmp_path / "out")], timeout=120, cwd=str(tmp_path))
    assert rc == 1, stderr
    assert b"reversed.dcm" in stderr and b"out of tag order" in stderr, stderr
    assert b"few-reversed.dcm" not in stderr, stderr
    assert len(files_below(tmp_path / "out")) == 1
    assert secs < 15 * SLOW, secs


# ---- correlation tables ----

def small_input(tmp_path, n=3, patient_id="PAT001"):
    inp = tmp_path / "in"
    inp.mkdir(exist_ok=True)
    for i in range(n):
        (inp / ("f%d.dcm" % i)).write_bytes(dicom_bytes(patient_id=patient_id))
    return inp


@pytest.mark.parametrize("content", [
    os.urandom(4096),
    bytes(range(256)) * 8,
    b"\0" * 1000,
    b"PAT001,NEW\0001\n",
    b"\xff\xfe" + "PAT001,NEW001\n".encode("utf-16-le"),
    b"A," + b"B" * 1000000 + b"\n",
], ids=["random", "all-bytes", "nuls", "nul-in-id", "utf16", "1MB-line"])
def test_table_garbage(tmp_path, content):
    """A binary table is refused before anything is written: exit 2 and a
    message naming the table - or, if every line happens to parse, used."""
    table = tmp_path / "table.csv"
    table.write_bytes(content)
    inp = small_input(tmp_path)
    out = tmp_path / "out"
    rc, _, stderr, _, _ = run_measured(
        [dicomsort_bin(), "--dicomin", str(inp), "--dicomout", str(out),
         "--ID_correlation", str(table)], timeout=60, cwd=str(tmp_path))
    assert rc in (0, 2), (rc, stderr)
    if rc == 2:
        assert str(table).encode() in stderr, stderr
        assert not files_below(out)


def test_table_empty(tmp_path):
    table = tmp_path / "table.csv"
    table.write_bytes(b"")
    inp = small_input(tmp_path)
    out = tmp_path / "out"
    rc, _, stderr, _, _ = run_measured(
        [dicomsort_bin(), "--dicomin", str(inp), "--dicomout", str(out),
         "--ID_correlation", str(table)], cwd=str(tmp_path))
    assert rc == 0, stderr
    assert len(read_sops(out)) == 3
    assert b"PAT001" in (tmp_path / "missing_patient_ids.log").read_bytes()


def write_big_table(path, rows):
    with open(path, "w") as f:
        for i in range(rows):
            f.write("PAT%07d,NEW%07d\n" % (i, i))


def test_table_one_million_rows(tmp_path):
    """1,000,000 rows: loaded and used; load time and memory reported.
    The baseline is the same run with a 10-row table."""
    rows = 1000000
    table = tmp_path / "big.csv"
    write_big_table(table, rows)
    small = tmp_path / "small.csv"
    write_big_table(small, 10)
    inp = small_input(tmp_path, 2, patient_id="PAT0999999")
    base = run_measured(
        [dicomsort_bin(), "--dicomin", str(inp), "--dicomout",
         str(tmp_path / "out0"), "--ID_correlation", str(small), "--jobs",
         "1"], cwd=str(tmp_path))
    rc, _, stderr, secs, rss = run_measured(
        [dicomsort_bin(), "--dicomin", str(inp), "--dicomout",
         str(tmp_path / "out"), "--ID_correlation", str(table), "--jobs",
         "1"], timeout=120, cwd=str(tmp_path))
    assert rc == 0, stderr
    assert (tmp_path / "out" / "NEW0999999").is_dir()
    size_mb = table.stat().st_size / 1e6
    report_figure("correlation table 1,000,000 rows (%.1f MB): run %.2fs "
                  "(10-row table: %.2fs), peak RSS %d kB (10-row: %d kB, "
                  "+%d kB)" % (size_mb, secs, base[3], rss, base[4],
                               rss - base[4]))
    # Bounded: well under 200 bytes per row beyond the baseline.
    assert rss - base[4] < rows * 200 // 1024, (rss, base[4])
    assert secs < 30 * SLOW


def test_table_changes_while_read(tmp_path):
    """A table rewritten again and again while dicomsort loads it: each run
    either uses a complete table or refuses it with exit 2 naming it."""
    table = tmp_path / "table.csv"
    write_big_table(table, 50000)
    inp = small_input(tmp_path, 1, patient_id="PAT0000007")
    stop = threading.Event()

    def churn():
        i = 0
        while not stop.is_set():
            i += 1
            with open(table, "r+") as f:
                if i % 3 == 0:
                    f.truncate(0)
                    f.write("PAT0000007,NEW0000007\n" + "garbage line x y\n"
                            * (i % 5))
                elif i % 3 == 1:
                    f.write("\0\0\0\xff" * 10)
                else:
                    f.seek(0)
                    f.write("PAT0000007,OTHER\n" * 100)
            time.sleep(0.001)

    t = threading.Thread(target=churn)
    t.start()
    outcomes = {}
    try:
        for i in range(12):
            out = tmp_path / ("out%d" % i)
            rc, _, stderr, _, _ = run_measured(
                [dicomsort_bin(), "--dicomin", str(inp), "--dicomout",
                 str(out), "--ID_correlation", str(table)], timeout=60,
                cwd=str(tmp_path))
            assert rc in (0, 2), (rc, stderr)
            if rc == 2:
                assert str(table).encode() in stderr
            outcomes[rc] = outcomes.get(rc, 0) + 1
    finally:
        stop.set()
        t.join()
    report_figure("table changing while read: %s" % outcomes)


# ---- the daemon ----

def test_daemon_hostile_inputs(tmp_path, daemon):
    """Every hostile file dropped into the watched folder is stored or
    quarantined with a .reason; the daemon stays up; nothing leaves the
    output and quarantine roots; the input empties."""
    # A hard link made with ln(1) is never written or closed in the
    # folder: by design the periodic rescan finds it (rescan.interval_s).
    d = daemon(retry={"parse_attempts": 1, "backoff_ms": 200,
                      "backoff_max_ms": 1000}, settle_ms=200,
               rescan={"interval_s": 1})
    outside = tmp_path / "outside"
    outside_before = None
    staging = tmp_path / "staging"
    staging.mkdir()
    cases = case_files()
    for name, (data, _) in cases.items():
        (staging / name).write_bytes(data)
        os.rename(staging / name, d.input / name)
    for name, data in special_names().items():
        p = os.path.join(os.fsencode(staging), name)
        with open(p, "wb") as f:
            f.write(data)
        os.rename(p, os.path.join(os.fsencode(d.input), name))
    made, socks = make_special(d.input, outside)
    outside_before = snapshot(outside)
    try:
        try:
            wait_until(lambda: not os.listdir(d.input), 60,
                       what="input folder to empty")
        except BaseException:
            print("left in input:", os.listdir(d.input))
            print(d.log()[-5000:])
            raise
        assert d.alive(), d.log()[-3000:]
    finally:
        for s in socks:
            s.close()
    quarantined = [p for p in files_below(d.quarantine)
                   if not p.name.endswith(".reason")]
    reasons = [p for p in files_below(d.quarantine)
               if p.name.endswith(".reason")]
    # Entries may be non-regular (FIFO, socket, device, symlink) there.
    qnames = set()
    for dirpath, dirnames, filenames in os.walk(d.quarantine):
        for n in filenames + dirnames:
            qnames.add(n)
    for name, (data, outcome) in cases.items():
        if outcome == "rejected":
            assert any(n.startswith(name) for n in qnames), (name, qnames)
    for name in ("symlink-file.dcm", "symlink-passwd.dcm", "fifo.dcm",
                 "socket.dcm"):
        assert any(n.startswith(name) for n in qnames), (name, qnames)
    assert len(reasons) >= len([n for n in qnames
                                if not n.endswith(".reason")]) - 1
    check_output_tree(d.output)
    assert snapshot(outside) == outside_before
    assert os.path.exists("/etc/passwd")
    assert d.alive()
    rc, _ = d.stop()
    assert rc == 0
    report_figure("daemon hostile inputs: %d files, %d special entries, "
                  "%d stored, %d quarantined" % (
                      len(cases) + len(special_names()),
                      made["symlinks"] + 3 + made["devices"],
                      len(d.events("stored")), len(quarantined)))


def test_daemon_reload_garbage_table(tmp_path, daemon):
    """SIGHUP with a table turned into garbage, emptied, or huge: the
    daemon stays up; garbage keeps the old table in force."""
    table = tmp_path / "table.csv"
    table.write_text("PAT001,NEW001\n")
    d = daemon(correlation_table=table)
    (d.input / "a.dcm").write_bytes(dicom_bytes(patient_id="PAT001"))
    d.wait_stored(1)
    assert (d.output / "NEW001").is_dir()
    table.write_bytes(os.urandom(5000))
    d.signal(signal.SIGHUP)
    wait_until(lambda: len(d.events("reload")) >= 1, 20, what="reload")
    (d.input / "b.dcm").write_bytes(dicom_bytes(patient_id="PAT001"))
    d.wait_stored(2)
    assert len(files_below(d.output / "NEW001")) == 2, \
        "a broken table replaced the good one"
    table.write_bytes(b"")
    d.signal(signal.SIGHUP)
    wait_until(lambda: len(d.events("reload")) >= 2, 20, what="reload")
    rows = 1000000 if LONG else 200000
    write_big_table(table, rows)
    t0 = time.monotonic()
    d.signal(signal.SIGHUP)
    wait_until(lambda: len(d.events("reload")) >= 3, 60, what="reload")
    secs = time.monotonic() - t0
    rss, hwm = d.memory_kb()
    (d.input / "c.dcm").write_bytes(dicom_bytes(patient_id="PAT0000042"))
    d.wait_stored(3)
    assert (d.output / "NEW0000042").is_dir()
    assert d.alive()
    report_figure("daemon reload of a %d-row table: %.2fs, RSS %d kB "
                  "(peak %d kB)" % (rows, secs, rss, hwm))
    d.stop()
