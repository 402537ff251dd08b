"""Sources renamed into place (issue 14): with after_success = "delete", a
file that needs no change (profile none), on the output's file system, of
our owner and our output's group, with one link, becomes the output itself
by a rename - no copy, no deletion of the source. Its `stored` record still
waits for the group commit, and its `disposed` record says the source was
moved into the output.

What must hold: the output is the very inode the sender wrote (same
bytes); across mounts the move is a copy, durable before the source goes;
a sender still holding the file open for writing never has it renamed;
a SIGKILL with a source claimed gives it its name back at the next start,
and it is stored once; a file with another link is copied, never renamed.
DICOMSORT_TEST_DELAY=claimed:MS holds a worker with the source claimed,
before its rename; parsed:MS after the source was read and parsed.
"""

import contextlib
import hashlib
import os
import pathlib
import signal
import subprocess

import pytest

from conftest import (IS_ROOT, SLOW, STATE, field, files_below, make_items,
                      outputs, temp_files_below, wait_until, write_items)

needs_root = pytest.mark.skipif(not IS_ROOT, reason="mounting needs root")


def sha(data):
    return hashlib.sha256(data).hexdigest()


def claims_below(root):
    return [p for p in files_below(root)
            if p.name.startswith(".dicomsort-")]


def check_records(d, items, disposal):
    """One `stored` and one `disposed` record per item, each naming its
    output, with the source's SHA-256; the outputs hold the bytes sent."""
    data = {it.name: it.data for it in items}
    outs = outputs(d.output)
    assert sorted(p.name for p in outs) == sorted(data), outs
    for p in outs:
        assert p.read_bytes() == data[p.name], "%s: other bytes" % p
    stored = d.events("stored")
    assert sorted(field(ln, "dest") for ln in stored) == sorted(
        str(p.relative_to(d.output)) for p in outs)
    for ln in stored:
        name = os.path.basename(field(ln, "dest"))
        assert field(ln, "source_sha256") == sha(data[name]), ln
    disposed = d.events("disposed")
    assert len(disposed) == len(items), disposed
    assert all(field(ln, "disposal") == disposal for ln in disposed), \
        disposed
    assert not d.events("duplicate") and not d.events("retry")
    assert not (d.output / STATE).exists()


def drained(d, items, disposal, wait_s, input_empties=True):
    """Wait for every item's output and records (and, by default, for the
    input to empty), stop the daemon cleanly and check_records()."""
    n = len(items)
    d.wait_stored(n, wait_s * SLOW)
    if input_empties:
        d.wait_input_empty(wait_s * SLOW)
    wait_until(lambda: len(d.events("disposed")) >= n, 30 * SLOW,
               what=lambda: d.log()[-3000:])
    assert d.stop()[0] == 0
    check_records(d, items, disposal)
    assert not temp_files_below(d.output) and not claims_below(d.input)


def test_unchanged_burst_is_renamed_into_place(daemon):
    """A burst of files that need no change: each output is the inode the
    sender wrote (renamed, not copied), with its bytes; the input empties;
    each file has its stored record (source SHA-256 of those bytes) and a
    disposed record saying its source was moved into the output."""
    n = 300
    d = daemon(settle_ms=300)
    items = make_items(n, prefix="burst")
    inodes = {}
    for i, p in enumerate(write_items(d.input / ("b%d" % 0), items[:150]) +
                          write_items(d.input / ("b%d" % 1), items[150:])):
        inodes[p.name] = os.stat(p).st_ino
    drained(d, items, "moved into the output", 120)
    for p in outputs(d.output):
        assert os.stat(p).st_ino == inodes[p.name], "%s was copied" % p


@needs_root
@pytest.mark.parametrize("how", ["tmpfs", "bind"])
def test_input_on_another_mount_is_copied_then_deleted(daemon, tmp_path,
                                                       how):
    """The input on another file system (a tmpfs), or on the output's
    file system through another mount (a bind mount: rename(2) says
    EXDEV): every file is copied, stored and its source deleted, as
    before."""
    inp = tmp_path / "in"
    inp.mkdir()
    if how == "tmpfs":
        mount = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(inp)]
    else:
        real = tmp_path / "real-in"
        real.mkdir()
        mount = ["mount", "--bind", str(real), str(inp)]
    subprocess.run(mount, check=True)
    try:
        n = 20
        d = daemon(input=inp)
        items = make_items(n, prefix=how)
        inodes = {p.name: os.stat(p).st_ino
                  for p in write_items(inp / "sub", items)}
        drained(d, items, "deleted", 60)
        if how == "bind":
            # Same file system, so no inode number can say "copied"
            # for sure; the bytes and records above do.
            assert not files_below(tmp_path / "real-in" / "sub")
        else:
            out_dev = os.stat(d.output).st_dev
            assert all(os.stat(p).st_dev == out_dev
                       for p in outputs(d.output))
        del inodes
    finally:
        subprocess.run(["umount", "-l", str(inp)], check=False)


def test_sender_holding_the_file_open_is_not_renamed(daemon):
    """A sender opens the file for writing again after it was read
    (DICOMSORT_TEST_DELAY=parsed holds that window) and keeps it open: the
    rename's lease is refused, so the file is never renamed while open.
    As for any copy, the version read is stored (copied from memory), the
    source stays untouched while open (its audit record: changed), and
    once closed it is taken again: one output, the bytes sent.
    The break of the lease held at that moment is signalled with SIGIO
    (the daemon sets no F_SETSIG per file): ignored, it must not end it."""
    d = daemon(settle_ms=300, workers=1,
               env={"DICOMSORT_TEST_DELAY": "parsed:%d" % int(800 * SLOW)})
    status = pathlib.Path("/proc/%d/status" % d.proc.pid).read_text()
    (ign,) = [ln.split()[1] for ln in status.splitlines()
              if ln.startswith("SigIgn:")]
    assert int(ign, 16) >> (signal.SIGIO - 1) & 1, "SIGIO not ignored"
    it = make_items(1)[0]
    path = write_items(d.input, [it])[0]
    ino = os.stat(path).st_ino
    wait_until(lambda: "after parsing" in d.log(), 30 * SLOW,
               what=lambda: d.log()[-3000:])
    with open(path, "ab"):
        # Open for writing across the rename's claim and the retries.
        wait_until(lambda: d.events("changed"), 30 * SLOW,
                   what=lambda: d.log()[-3000:])
        wait_until(lambda: d.events("retry"), 30 * SLOW,
                   what=lambda: d.log()[-3000:])
        assert path.read_bytes() == it.data
        assert os.stat(path).st_ino == ino
        assert all(os.stat(p).st_ino != ino for p in outputs(d.output)), \
            "renamed while open for writing"
        assert not claims_below(d.input)
    d.wait_input_empty(30 * SLOW)
    wait_until(lambda: d.events("disposed"), 30 * SLOW,
               what=lambda: d.log()[-3000:])
    assert d.stop()[0] == 0
    assert all("open for writing" in ln or "opened for writing" in ln
               for ln in d.events("retry")), d.events("retry")
    (out,) = outputs(d.output)
    assert out.read_bytes() == it.data
    assert len(d.events("stored")) == 1
    assert [field(ln, "disposal") for ln in d.events("disposed")] == [
        "deleted"]
    assert not (d.output / STATE).exists()


def test_kill_while_renamed_outputs_wait_for_their_commit(daemon):
    """SIGKILL with sources renamed into place and their commit held
    (DICOMSORT_TEST_DELAY=commit): each source is its output, whole, and
    no record was sent; the next start sends each output's `stored`
    record once (recovered from its pending marker) and nothing is stored
    twice."""
    n = 8
    d = daemon(env={"DICOMSORT_TEST_DELAY": "commit:600000"})
    items = make_items(n)
    write_items(d.input, items)
    wait_until(lambda: len(outputs(d.output)) == n and
               "before a group commit" in d.log(), 60 * SLOW,
               what=lambda: d.log()[-3000:])
    assert not files_below(d.input)
    assert d.events("stored") == [] and d.events("disposed") == []
    d.kill()
    data = {it.name: it.data for it in items}
    for p in outputs(d.output):
        assert p.read_bytes() == data[p.name], "%s is not complete" % p
    d.env.pop("DICOMSORT_TEST_DELAY")
    d.start()
    wait_until(lambda: len(d.events("stored")) >= n, 30 * SLOW,
               what=lambda: d.log()[-3000:])
    assert d.stop()[0] == 0
    outs = outputs(d.output)
    assert sorted(p.name for p in outs) == sorted(data)
    stored = d.events("stored")
    assert sorted(field(ln, "dest") for ln in stored) == sorted(
        str(p.relative_to(d.output)) for p in outs)
    assert all(field(ln, "recovered") == "1" for ln in stored), stored
    assert not d.events("duplicate")
    assert not (d.output / STATE).exists()


def test_failed_commit_of_renamed_sources(daemon):
    """A group commit that fails (DICOMSORT_TEST_DELAY=commit-fails:1):
    a source renamed into place has no second copy to keep or take
    again; each gets its one `stored` record and its `disposed` record,
    nothing is retried or stored twice."""
    n = 5
    d = daemon(env={"DICOMSORT_TEST_DELAY": "commit-fails:1"})
    items = make_items(n)
    write_items(d.input, items)
    wait_until(lambda: "test failure" in d.log(), 30 * SLOW,
               what=lambda: d.log()[-3000:])
    drained(d, items, "moved into the output", 30, input_empties=False)


def test_kill_with_the_source_claimed_gives_it_back(daemon):
    """SIGKILL while sources are claimed (renamed to their private name in
    their folder) and not yet renamed into the output: the next start
    gives them their names back, and each file is stored exactly once,
    with one record."""
    n = 4
    d = daemon(workers=2,
               env={"DICOMSORT_TEST_DELAY": "claimed:600000"})
    items = make_items(n)
    write_items(d.input, items)
    wait_until(lambda: claims_below(d.input) and
               "with the source claimed" in d.log(), 30 * SLOW,
               what=lambda: d.log()[-3000:])
    d.kill()
    assert claims_below(d.input)
    assert not outputs(d.output)
    d.env.pop("DICOMSORT_TEST_DELAY")
    d.start()
    assert "got their names back" in d.log()
    drained(d, items, "moved into the output", 60)
    assert not any(field(ln, "recovered") for ln in d.events("stored"))


@pytest.mark.parametrize("why", ["hard link", "rename_unchanged = false"])
def test_copied_not_renamed(daemon, tmp_path, why):
    """A source with a second link (renamed, the output would stay
    reachable and writable through it) is copied and its input name
    deleted, the other link untouched; so is every file when
    rename_unchanged = false."""
    n = 3
    if why == "hard link":
        d = daemon()
    else:
        d = daemon(rename_unchanged=False)
    items = make_items(n, prefix="linked")
    keep = tmp_path / "elsewhere"
    keep.mkdir()
    staged = write_items(tmp_path / "staging", items)
    inodes = {}
    for p in staged:
        if why == "hard link":
            os.link(p, keep / p.name)
        inodes[p.name] = os.stat(p).st_ino
        os.rename(p, d.input / p.name)
    drained(d, items, "deleted", 30)
    for p in outputs(d.output):
        assert os.stat(p).st_ino != inodes[p.name], "%s was renamed" % p
        assert os.stat(p).st_nlink == 1
    if why == "hard link":
        for it in items:
            assert (keep / it.name).read_bytes() == it.data
            assert os.stat(keep / it.name).st_nlink == 1


@pytest.mark.parametrize("change,rename_unchanged", [
    ("series renamed", True), ("patient renamed", True),
    ("series removed", True), ("series renamed", False)])
def test_output_folder_changed_between_two_files(daemon, change,
                                                 rename_unchanged):
    """One worker stores two files of one series; between them the
    series folder (or the patient's above it) is renamed away or removed,
    as an admin tidying the output would. The second file lands at its
    own path, made again - never in the renamed folder by a descriptor
    kept from the first file (PROFILE §17: the folder is looked up
    afresh per file)."""
    d = daemon(workers=1, rename_unchanged=rename_unchanged)
    first = make_items(1, prefix="first")
    write_items(d.input, first)
    d.wait_stored(1)
    d.wait_input_empty()
    rel = field(d.events("stored")[0], "dest")
    series = d.output / os.path.dirname(rel)
    assert (d.output / rel).is_file()
    if change == "series renamed":
        moved = series.with_name(series.name + ".old")
        series.rename(moved)
    elif change == "patient renamed":
        patient = d.output / pathlib.Path(rel).parts[0]
        moved = patient.with_name(patient.name + ".old")
        patient.rename(moved)
    else:
        moved = None
        (d.output / rel).unlink()
        series.rmdir()
    second = make_items(1, prefix="second")
    write_items(d.input, second)
    d.wait_stored(2)
    d.wait_input_empty()
    rel2 = field(d.events("stored")[1], "dest")
    assert os.path.dirname(rel2) == os.path.dirname(rel), rel2
    assert (d.output / rel2).read_bytes() == second[0].data
    if moved is not None:
        assert [p.name for p in files_below(moved)] == [first[0].name]
    assert not d.events("quarantined")
    assert d.stop()[0] == 0
