"""Group commit in dicomsortd (issue 14): outputs are published without an
fsync each and made durable together by one syncfs; until then every
source stays where it is, and no `stored` record is sent.

DICOMSORT_TEST_DELAY=commit:MS holds each group commit before its syncfs
(and says so in the log), so a test can act while files are published and
not yet durable: a SIGKILL then must find every source still in the input,
every output complete, and the next start must send each output's `stored`
record once (recovered from its pending marker) and keep one output per
file; a SIGTERM then commits what waits before the daemon exits.
The tests whose point is a copy's kept source set rename_unchanged =
false; test_rename_in.py has a kill in the same window for sources
renamed into place.
"""

import re

from conftest import (SLOW, STATE, field, files_below, make_items, outputs,
                      wait_until, write_items)

def commits_held(d):
    return sum(1 for ln in d.log_lines()
               if "test delay:" in ln and "before a group commit" in ln)


def published_and_held(d, n):
    return len(outputs(d.output)) == n and commits_held(d) >= 1


def test_kill_while_outputs_wait_for_their_commit(daemon):
    """SIGKILL with every output published and none committed: nothing
    was disposed of, the outputs are complete, and after the restart each
    output has exactly one `stored` record, none is written twice, and
    every source goes (as a duplicate of its output)."""
    n = 12
    d = daemon(env={"DICOMSORT_TEST_DELAY": "commit:600000"},
               rename_unchanged=False)
    items = make_items(n)
    write_items(d.input, items)
    wait_until(lambda: published_and_held(d, n), 60 * SLOW,
               what=lambda: "%d outputs published, a commit held (log:\n%s)"
               % (n, d.log()[-3000:]))
    names = sorted(it.name for it in items)
    assert sorted(p.name for p in files_below(d.input)) == names
    assert d.events("stored") == [] and d.events("disposed") == []
    d.kill()
    assert sorted(p.name for p in files_below(d.input)) == names
    data = {it.name: it.data for it in items}
    outs = outputs(d.output)
    assert sorted(p.name for p in outs) == names
    for p in outs:
        assert p.read_bytes() == data[p.name], "%s is not complete" % p
    d.env.pop("DICOMSORT_TEST_DELAY")
    d.start()
    d.wait_input_empty(60 * SLOW)
    wait_until(lambda: len(d.events("disposed")) >= n, 30 * SLOW,
               what=lambda: d.log()[-3000:])
    assert d.stop()[0] == 0
    outs = outputs(d.output)
    assert sorted(p.name for p in outs) == names, "one output per file"
    stored = d.events("stored")
    assert sorted(field(ln, "dest") for ln in stored) == sorted(
        str(p.relative_to(d.output)) for p in outs)
    assert all(field(ln, "recovered") == "1" for ln in stored), stored
    assert len(d.events("duplicate")) == n
    assert len(d.events("disposed")) == n
    assert not (d.output / STATE).exists()


def test_stop_commits_what_waits_before_exiting(daemon):
    """SIGTERM while outputs wait for a held commit: the daemon commits
    them, sends their records, disposes of their sources, then exits 0,
    leaving no pending marker."""
    n = 6
    d = daemon(env={"DICOMSORT_TEST_DELAY": "commit:%d" % int(1500 * SLOW)},
               shutdown={"timeout_s": 120})
    items = make_items(n)
    write_items(d.input, items)
    wait_until(lambda: published_and_held(d, n), 60 * SLOW,
               what=lambda: d.log()[-3000:])
    assert d.stop(120)[0] == 0
    assert not files_below(d.input)
    stored = d.events("stored")
    assert len(stored) == n and not any(field(ln, "recovered")
                                        for ln in stored), stored
    assert len(d.events("disposed")) == n
    assert len(outputs(d.output)) == n
    assert "all files in flight finished" in d.log()
    assert not (d.output / STATE).exists()


def test_records_follow_the_commit(daemon):
    """Without a hold: every file of a burst is stored once, its record
    sent only after its output was committed (the log says the commit
    came first), and no marker is left."""
    n = 60
    d = daemon(env={"DICOMSORT_TEST_DELAY": "commit:50"}, settle_ms=200)
    write_items(d.input, make_items(n))
    d.wait_stored(n, 60 * SLOW)
    d.wait_input_empty(60 * SLOW)
    assert d.stop()[0] == 0
    lines = d.log_lines()
    first_hold = next(i for i, ln in enumerate(lines)
                      if "before a group commit" in ln)
    first_stored = next(i for i, ln in enumerate(lines)
                        if "event=stored " in ln + " ")
    assert first_hold < first_stored
    assert len(d.events("stored")) == n == len(outputs(d.output))
    assert len(d.events("disposed")) == n
    assert not (d.output / STATE).exists()


def test_failed_commit_keeps_every_source_and_recovers(daemon):
    """A group commit that fails (DICOMSORT_TEST_DELAY=commit-fails:1, as a
    syncfs reporting a write-back error would): none of its sources is
    disposed of then; each published output gets its one `stored`
    record, and the file is taken again after a backoff, found identical
    (a duplicate), committed, and only then its source goes."""
    n = 5
    d = daemon(env={"DICOMSORT_TEST_DELAY": "commit-fails:1"},
               rename_unchanged=False, retry={"parse_attempts": 3, "backoff_ms": 300,
                      "backoff_max_ms": 1000})
    items = make_items(n)
    write_items(d.input, items)
    wait_until(lambda: "test failure" in d.log(), 30 * SLOW,
               what=lambda: d.log()[-3000:])
    d.wait_input_empty(60 * SLOW)
    wait_until(lambda: len(d.events("disposed")) >= n, 30 * SLOW,
               what=lambda: d.log()[-3000:])
    assert d.stop()[0] == 0
    failed = [ln for ln in d.log_lines() if "group commit of" in ln]
    assert len(failed) == 1 and "test failure" in failed[0], failed
    m = re.search(r"group commit of (\d+) files failed", failed[0])
    k = int(m.group(1))
    assert 1 <= k <= n
    retries = d.events("retry")
    assert len(retries) == k and all("test failure" in ln
                                     for ln in retries), retries
    outs = outputs(d.output)
    assert sorted(p.name for p in outs) == sorted(it.name for it in items)
    stored = d.events("stored")
    assert sorted(field(ln, "dest") for ln in stored) == sorted(
        str(p.relative_to(d.output)) for p in outs)
    assert len(d.events("duplicate")) == k
    assert len(d.events("disposed")) == n
    assert not (d.output / STATE).exists()
