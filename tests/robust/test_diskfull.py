"""Full disks and folders that go away (issue 5, item 2).

The output (or quarantine) is a small tmpfs mounted by the test, so it can
fill up, turn read-only and come back; that needs root - the tests skip
with the reason otherwise. In every case: no source is lost or disposed of
while its copy is not durable, the daemon says so in STATUS (sd_notify) and
in its log, and it resumes by itself once the problem is gone.
"""

import os
import shutil
import subprocess

import pytest

from conftest import (IS_ROOT, files_below, make_items, read_sops,
                      report_figure, temp_files_below, wait_until,
                      write_items)


@pytest.fixture
def tmpfs(tmp_path):
    """mount(path, size) -> mounts a tmpfs there; unmounted at teardown."""
    mounted = []

    def mount(path, size="1m"):
        if not IS_ROOT:
            pytest.skip("needs root to mount a small tmpfs (not root)")
        path.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o",
                            "size=%s,mode=0755" % size, "tmpfs", str(path)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip("cannot mount a tmpfs here: %s" % r.stderr.strip())
        mounted.append(path)
        return path

    yield mount
    for p in reversed(mounted):
        subprocess.run(["umount", "-l", str(p)], capture_output=True)


def remount(path, opts):
    subprocess.run(["mount", "-o", "remount," + opts, str(path)], check=True)


def status_lines(notify):
    return [f["STATUS"] for f in notify.fields() if "STATUS" in f]


def assert_all_once(out, items):
    sops = read_sops(out)
    for it in items:
        assert len(sops.get(it.sop_uid, [])) == 1, (it.sop_uid,
                                                     sops.get(it.sop_uid))
    assert not temp_files_below(out)


def test_output_fills_up_then_space_is_freed(tmp_path, daemon, tmpfs,
                                             notify_socket):
    out = tmpfs(tmp_path / "out", "1m")
    d = daemon(env={"NOTIFY_SOCKET": notify_socket.path},
               retry={"parse_attempts": 3, "backoff_ms": 200,
                      "backoff_max_ms": 1000})
    items = make_items(250)             # ~8.5 kB each: twice the space
    write_items(d.input, items)
    try:
        wait_until(lambda: any("output problem" in s
                               for s in status_lines(notify_socket)), 60,
                   what="STATUS to report the output problem")
    except BaseException:
        print("STATUS:", status_lines(notify_socket)[-5:])
        print("df:", subprocess.run(["df", str(out)], capture_output=True,
                                    text=True).stdout)
        print("\n".join(d.log_lines()[-10:]))
        raise
    wait_until(lambda: "No space left on device" in d.log(), 30,
               what="the log to name ENOSPC")
    # Nothing lost: each item is stored or still waiting in the input.
    # The daemon works on meanwhile, so the input is listed first: a
    # source is disposed of only once its output is durable, so whatever
    # has left the input by then is in the output read afterwards.
    waiting = {p.name for p in files_below(d.input)}
    stored = read_sops(out)
    for it in items:
        assert it.sop_uid in stored or it.name in waiting, it.name
    assert not files_below(d.quarantine), "a full disk quarantined input"
    assert not temp_files_below(out)
    full_status = [s for s in status_lines(notify_socket)
                   if "output problem" in s][-1]
    n_full = len(stored)
    # Free space: it resumes by itself.
    remount(out, "size=16m")
    d.wait_input_empty(120)
    wait_until(lambda: not any("output problem" in s for s in
                               status_lines(notify_socket)[-1:]), 30,
               what="STATUS to clear the output problem")
    assert_all_once(out, items)
    assert d.alive()
    d.stop()
    report_figure("disk full: %d of %d stored before the 1 MiB output "
                  "filled, rest kept in input, all %d stored after "
                  "remount; STATUS said: %s" % (n_full, len(items),
                                                len(items), full_status))


def test_output_read_only_then_writable(tmp_path, daemon, tmpfs,
                                        notify_socket):
    out = tmpfs(tmp_path / "out", "16m")
    remount(out, "ro")
    d = daemon(env={"NOTIFY_SOCKET": notify_socket.path})
    items = make_items(20)
    write_items(d.input, items)
    wait_until(lambda: any("output problem" in s
                           for s in status_lines(notify_socket)), 30,
               what="STATUS to report the output problem")
    assert "Read-only file system" in d.log()
    assert len(files_below(d.input)) == 20
    assert not files_below(d.quarantine)
    remount(out, "rw")
    d.wait_input_empty(60)
    assert_all_once(out, items)
    d.stop()


def test_output_folder_deleted_while_running(tmp_path, daemon):
    d = daemon()
    first = make_items(5)
    write_items(d.input, first)
    d.wait_input_empty()
    shutil.rmtree(d.output)
    second = make_items(5, prefix="second")
    write_items(d.input, second)
    # Either it re-creates the folder, or it keeps the sources until it
    # can: never are they deleted without a durable copy.
    d.wait_input_empty(60)
    assert d.output.is_dir()
    assert_all_once(d.output, second)
    assert d.alive()
    d.stop()


def test_input_folder_deleted_and_recreated(tmp_path, daemon):
    d = daemon(rescan={"interval_s": 0})
    shutil.rmtree(d.input)
    d.input.mkdir()
    items = make_items(5)
    write_items(d.input, items)
    d.wait_input_empty(60)
    assert_all_once(d.output, items)
    assert d.alive()
    d.stop()


def test_quarantine_not_writable(tmp_path, daemon, tmpfs, notify_socket):
    q = tmpfs(tmp_path / "quarantine", "4m")
    remount(q, "ro")
    d = daemon(env={"NOTIFY_SOCKET": notify_socket.path},
               retry={"parse_attempts": 1, "backoff_ms": 200,
                      "backoff_max_ms": 1000})
    (d.input / "junk.dcm").write_bytes(b"not dicom\n" * 10)
    good = make_items(3)
    write_items(d.input, good)
    d.wait_stored(3)
    wait_until(lambda: any("junk.dcm" in s or "quarantine" in s
                           for s in status_lines(notify_socket)), 30,
               what="STATUS to report the quarantine problem")
    assert (d.input / "junk.dcm").exists(), "lost a file it could not " \
        "quarantine"
    remount(q, "rw")
    wait_until(lambda: not (d.input / "junk.dcm").exists(), 60,
               what="the junk to be quarantined")
    assert (q / "junk.dcm").exists() and (q / "junk.dcm.reason").exists()
    assert d.alive()
    d.stop()
