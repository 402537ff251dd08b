"""dicomsortd's watcher under hostile timing (issue 12): folders removed
and made again, readers that never stop opening a file.

Periodic rescans are off in every test here (base_config), so a file is
found by inotify or not at all.
"""

import io
import os
import threading
import time

from conftest import (SLOW, files_below, make_items, pydicom, read_sops,
                      wait_until, write_items)


def folder_empty_or_gone(folder):
    """The daemon's cleanup may remove the folder while it is listed."""
    try:
        return not any(folder.iterdir())
    except FileNotFoundError:
        return True


def test_folder_removed_and_made_again_is_watched(daemon):
    """Issue 12 item 6: the daemon's own empty-folder cleanup removes sub/;
    sub/ made again must be watched again, or files written into it wait
    for a rescan that never comes."""
    d = daemon(cleanup={"remove_empty_dirs": True, "min_age_s": 0})
    sub = d.input / "sub"
    stored = 0
    for rnd in range(3):
        if rnd == 0:
            sub.mkdir()
        items = make_items(1, prefix="r%d_" % rnd)
        write_items(sub, items)
        stored += 1
        d.wait_stored(stored, timeout=30 * SLOW)
        # Round 0 and 1: the daemon's cleanup removes the emptied folder;
        # round 2: somebody else does.
        if rnd < 2:
            wait_until(lambda: not sub.exists(), 20 * SLOW,
                       what="the emptied folder to be removed")
        else:
            wait_until(lambda: folder_empty_or_gone(sub), 20 * SLOW,
                       what="the folder to empty")
            try:
                os.rmdir(sub)
            except FileNotFoundError:
                pass
        # Made again, kept non-empty (an ignored name) so that no cleanup
        # pass removes it while the test waits, and given time to be seen
        # before the file arrives: the file must come by an event in the
        # folder, not by the scan of a folder that appeared.
        sub.mkdir()
        (sub / ".keep").mkdir()
        time.sleep(1.0)
        later = make_items(1, prefix="late%d_" % rnd)
        write_items(sub, later)
        stored += 1
        d.wait_stored(stored, timeout=15 * SLOW)
        assert later[0].sop_uid in read_sops(d.output)
        os.rmdir(sub / ".keep")
    assert d.stop()[0] == 0


def test_frequent_reader_does_not_keep_a_file_back(daemon):
    """Issue 12 item 8: a virus scanner that opens and reads the file
    every settle_ms / 3 must not keep it from ever being taken."""
    settle_ms = 600
    d = daemon(settle_ms=settle_ms)
    items = make_items(2)
    stop = threading.Event()
    reads = [0]

    def reader():
        while not stop.is_set():
            for it in items:
                try:
                    with open(d.input / it.name, "rb") as f:
                        f.read(4096)
                    reads[0] += 1
                except FileNotFoundError:
                    pass
            stop.wait(settle_ms / 3000.0)

    write_items(d.input, items)
    t = threading.Thread(target=reader)
    t.start()
    try:
        d.wait_stored(2, timeout=20 * SLOW)
    finally:
        stop.set()
        t.join()
    assert reads[0] >= 2, "the reader never got to read"
    sops = read_sops(d.output)
    for it in items:
        assert len(sops.get(it.sop_uid, [])) == 1
    assert d.stop()[0] == 0


def test_paused_writer_not_taken_by_rescans(daemon):
    """Issue 12 item 1: a writer pauses just before the pixel data for ten
    times settle_ms while the daemon rescans every second; the file is not
    taken until it is closed, then stored whole, once."""
    d = daemon(settle_ms=300, rescan={"interval_s": 1})
    it = make_items(1)[0]
    cut = it.data.rfind(b"\xe0\x7f\x10\x00")   # (7FE0,0010) PixelData
    assert cut > 0
    path = d.input / it.name
    with open(path, "wb") as f:
        f.write(it.data[:cut])
        f.flush()
        os.utime(path, (time.time() - 3600, time.time() - 3600))
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            time.sleep(0.1)
            assert not d.events("stored"), d.log()
            assert not d.events("quarantined"), d.log()
            assert path.exists()
        f.write(it.data[cut:])
    d.wait_stored(1, timeout=20 * SLOW)
    d.wait_input_empty(timeout=20 * SLOW)
    sops = read_sops(d.output)
    assert len(sops[it.sop_uid]) == 1
    out = pydicom.dcmread(str(sops[it.sop_uid][0]))
    assert out.PixelData == pydicom.dcmread(io.BytesIO(it.data)).PixelData
    assert not files_below(d.quarantine)
    assert d.stop()[0] == 0
