"""dicomsortd's watcher under hostile timing (issue 12): readers that
never stop opening a file.

Periodic rescans are off in every test here (base_config), so a file is
found by inotify or not at all.
"""

import threading

from conftest import SLOW, make_items, read_sops, write_items


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
