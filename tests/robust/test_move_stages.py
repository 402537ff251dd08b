"""dicomsort --move in two stages (issue 14, bench/PROFILE.md section 15):
one thread opens, leases, reads and parses each file, another makes its
renames (the claim in its folder, then the place in the output). A staged
file waits between the two, open and leased, longer than a file of one
worker did: a sender acting in that window must get what the claim and
the lease promise (fsutil.h) - nothing but the file read reaches the
output tree, and whatever the sender put there stays in the input, whole,
for the next run.

DICOMSORT_TEST_DELAY=staged:MS (test only) has the renaming thread wait
MS before each staged file: the window is held open while the test acts,
once it sees the reader holding the file (its descriptor in /proc).
"""

import json
import os
import subprocess
import threading

import pytest

from conftest import (SLOW, dicom_bytes, dicomsort_bin, files_below,
                      read_sops, wait_until)

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2,
                                reason="one core: --move runs one stage")

WINDOW_MS = int(4000 * SLOW)


def start_move(src, out, **env):
    e = dict(os.environ, DICOMSORT_TEST_DELAY="staged:%d" % WINDOW_MS, **env)
    return subprocess.Popen([dicomsort_bin(), "--dicomin", str(src),
                             "--dicomout", str(out), "--move", "--json"],
                            env=e, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def holds(pid, path):
    """Whether process pid has path open."""
    fds = "/proc/%d/fd" % pid
    try:
        names = os.listdir(fds)
    except FileNotFoundError:
        return False
    for fd in names:
        try:
            if os.readlink(os.path.join(fds, fd)) == str(path):
                return True
        except OSError:
            pass
    return False


def claims(folder):
    return [n for n in os.listdir(folder) if n.startswith(".dicomsort-")]


def finish(proc):
    out, err = proc.communicate(timeout=120 * SLOW)
    return proc.returncode, json.loads(out), err.decode(errors="replace")


def inputs(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    read = {}
    for i, name in enumerate(("a.dcm", "b.dcm")):
        read[name] = dicom_bytes(patient_id="READ", sop_uid="1.2.3.19.%d" % i,
                                 pixel_seed=i)
        (src / name).write_bytes(read[name])
    return src, read


def test_name_swapped_while_staged_never_reaches_the_output(tmp_path):
    """A sender renames another file over a staged source's name before
    its claim: the claim takes the newcomer, sees it is not the inode
    read, and gives it its name back; the run reports the file changed,
    the output gets neither, and the next run sorts the newcomer."""
    src, read = inputs(tmp_path)
    out = tmp_path / "out"
    newcomer = dicom_bytes(patient_id="SWAPPED", sop_uid="1.2.3.19.99",
                           pixel_seed=99)
    sender = tmp_path / "sender.tmp"	# same file system, not in the input
    sender.write_bytes(newcomer)
    proc = start_move(src, out)
    try:
        wait_until(lambda: holds(proc.pid, src / "a.dcm"), 30,
                   interval=0.01, what="the reader to open a.dcm")
        # Still staged: nothing claimed, both names where they were.
        assert claims(src) == [] and (src / "a.dcm").exists()
        os.rename(sender, src / "a.dcm")
        rc, doc, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    by_name = {os.path.basename(f["source"]): f for f in doc["files"]}
    assert rc == 1, err
    assert by_name["a.dcm"]["status"] == "failed", by_name
    assert "changed" in by_name["a.dcm"]["reason"], by_name
    assert by_name["b.dcm"]["status"] == "stored", by_name
    # The newcomer is back under the name, whole; no claim is left.
    assert (src / "a.dcm").read_bytes() == newcomer
    assert claims(src) == []
    assert not (src / "b.dcm").exists()
    stored = files_below(out)
    assert [p.read_bytes() for p in stored] == [read["b.dcm"]]
    assert "SWAPPED" not in {p.parts[len(out.parts)] for p in stored}
    # The next run sorts what the sender left.
    again = subprocess.run([dicomsort_bin(), "--dicomin", str(src),
                            "--dicomout", str(out), "--move", "--quiet"],
                           capture_output=True, timeout=120 * SLOW)
    assert again.returncode == 0, again.stderr
    assert files_below(src) == []
    assert sorted(read_sops(out)) == ["1.2.3.19.1", "1.2.3.19.99"]


def test_writer_opening_a_staged_file_keeps_it_out_of_the_output(tmp_path):
    """A writer opens a staged source for writing before its claim: its
    open breaks the lease and waits; the renamer finds the lease broken
    right before the place, leaves the file where it is under its name,
    and lets go - the writer's bytes are never in the output tree."""
    src, read = inputs(tmp_path)
    out = tmp_path / "out"
    proc = start_move(src, out)
    wrote = {}

    def writer():
        with open(src / "a.dcm", "r+b") as f:	# waits for the lease
            wrote["opened"] = True
            f.seek(0, os.SEEK_END)
            f.write(b"\0" * 16)

    t = threading.Thread(target=writer)
    try:
        wait_until(lambda: holds(proc.pid, src / "a.dcm"), 30,
                   interval=0.01, what="the reader to open a.dcm")
        assert claims(src) == []
        t.start()
        rc, doc, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        t.join(timeout=120 * SLOW)
    assert wrote.get("opened"), "the writer never got the file"
    by_name = {os.path.basename(f["source"]): f for f in doc["files"]}
    assert rc == 1, err
    assert by_name["a.dcm"]["status"] == "failed", by_name
    assert by_name["b.dcm"]["status"] == "stored", by_name
    assert (src / "a.dcm").read_bytes() == read["a.dcm"] + b"\0" * 16
    assert claims(src) == []
    assert [p.read_bytes() for p in files_below(out)] == [read["b.dcm"]]
