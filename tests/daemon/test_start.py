"""The start (issue 10 §3): configuration errors exit 2, so the unit's
RestartPreventExitStatus=2 stops instead of restarting for ever; signals
are blocked from the first line of main(); without a journal, records go
to stderr, each line with a time stamp.
"""
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

from conftest import SLOW, base_config, conf_text, daemon_bin

STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z dicomsortd: ")


def start(conf, timeout=60):
    env = {k: v for k, v in os.environ.items()
           if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC")}
    return subprocess.run([daemon_bin(), "-c", str(conf)], env=env,
                          capture_output=True, text=True,
                          timeout=timeout * SLOW)


def folders(tmp_path, *names):
    for n in names:
        (tmp_path / n).mkdir()


def secret_file(tmp_path):
    p = tmp_path / "secret"
    p.write_bytes(os.urandom(32))
    p.chmod(0o600)
    return p


def bad_configs(tmp_path):
    """kind -> (settings, text expected on stderr)."""
    table = tmp_path / "ids.csv"
    table.write_text("PAT001,NEWA\nPAT002\n")
    return {
        "missing input": (base_config(tmp_path, input=tmp_path / "nope"),
                          "nope"),
        "input is a file": (base_config(tmp_path, input=tmp_path / "afile"),
                            "afile"),
        "missing table": (base_config(tmp_path, profile="seed",
                                      correlation_table=tmp_path / "no.csv"),
                          "no.csv"),
        "broken table": (base_config(tmp_path, profile="seed",
                                     correlation_table=table),
                         "%s:2" % table),
        "missing secret": (base_config(tmp_path, profile="basic",
                                       deid={"secret": tmp_path / "nokey"}),
                           "nokey"),
        "unknown keyword": (base_config(tmp_path, layout="{NoSuchKeyword}/"),
                            "NoSuchKeyword"),
        "unknown key": (dict(base_config(tmp_path), settle_msec=5),
                        "settle_msec"),
    }


KINDS = ["missing input", "input is a file", "missing table", "broken table",
         "missing secret", "unknown keyword", "unknown key"]


@pytest.mark.parametrize("kind", KINDS)
def test_configuration_error_exits_2_with_a_clear_message(tmp_path, kind):
    folders(tmp_path, "out", "quarantine")
    if kind != "missing input":
        (tmp_path / "in").mkdir()
    (tmp_path / "afile").write_text("x\n")
    settings, expect = bad_configs(tmp_path)[kind]
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(conf_text(settings))
    r = start(conf)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert expect in r.stderr, r.stderr
    assert "event=start" not in r.stderr
    assert not (tmp_path / "nope").exists()     # input never created
    for line in r.stderr.splitlines():
        assert line.startswith("dicomsortd: ") or STAMP.match(line), line


def test_unknown_id_hold_without_table_is_a_configuration_error(tmp_path):
    """Issue 12 item 13: unknown_id = "hold" with no correlation table
    would hold every file forever. A start exits 2 and --check-config
    fails, both naming the key with the file and line it is on."""
    folders(tmp_path, "in", "out", "quarantine", "hold")
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(conf_text(base_config(tmp_path, hold=tmp_path / "hold",
                                          deid={"unknown_id": "hold"})))
    line = next(i for i, ln in enumerate(conf.read_text().splitlines(), 1)
                if re.match(r"\s*unknown_id\s*=", ln))
    where = "%s:%d: " % (conf, line)
    r = start(conf)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert where in r.stderr and "unknown_id" in r.stderr, r.stderr
    assert "correlation_table" in r.stderr, r.stderr
    assert "event=start" not in r.stderr
    assert list((tmp_path / "hold").iterdir()) == []
    c = subprocess.run([daemon_bin(), "--check-config", "-c", str(conf)],
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert c.returncode == 2, (c.returncode, c.stderr)
    assert where in c.stderr and "correlation_table" in c.stderr, c.stderr
    # with a table the same file is valid
    (tmp_path / "ids.csv").write_text("PAT001,NEWA\n")
    conf.write_text(conf_text(base_config(
        tmp_path, hold=tmp_path / "hold", profile="seed",
        correlation_table=tmp_path / "ids.csv", deid={"unknown_id": "hold"})))
    c = subprocess.run([daemon_bin(), "--check-config", "-c", str(conf)],
                       capture_output=True, text=True, timeout=60 * SLOW)
    assert "correlation_table" not in c.stderr, c.stderr


def test_unit_stops_on_exit_status_2():
    unit = os.path.join(os.environ.get("DICOMSORT_SOURCE_DIR", "."),
                        "systemd", "dicomsortd.service")
    text = open(unit).read()
    assert re.search(r"^RestartPreventExitStatus=2$", text, re.M)
    assert re.search(r"^Restart=on-failure$", text, re.M)
    assert re.search(r"^LogRateLimitIntervalSec=0$", text, re.M)


def sig_blocked(pid, sig):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("SigBlk:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except FileNotFoundError:
        pass
    return False


def test_sighup_in_the_first_milliseconds_does_not_kill(tmp_path):
    folders(tmp_path, "in", "out", "quarantine")
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(conf_text(base_config(tmp_path)))
    log = open(tmp_path / "daemon.log", "wb")
    proc = subprocess.Popen([daemon_bin(), "-c", str(conf)], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        # The window before main() (the dynamic loader) cannot be closed
        # from inside; from main()'s first line on, HUP must be harmless.
        t0 = time.monotonic()
        while not sig_blocked(proc.pid, signal.SIGHUP):
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
            assert time.monotonic() - t0 < 10 * SLOW
        sent = 0
        started = None
        deadline = time.monotonic() + 30 * SLOW
        while time.monotonic() < deadline:
            proc.send_signal(signal.SIGHUP)
            sent += 1
            if started is None and "event=start" in \
                    (tmp_path / "daemon.log").read_text(errors="replace"):
                started = sent
            if started is not None and sent > started + 50:
                break
            time.sleep(0.0005)
        assert proc.poll() is None, (tmp_path / "daemon.log").read_text()
        assert started is not None and started >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30 * SLOW) == 0
        text = (tmp_path / "daemon.log").read_text(errors="replace")
        assert "event=stop" in text
        assert "reload" in text.split("event=start", 1)[1]   # HUPs taken later
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def need_namespace():
    if os.geteuid() != 0:
        pytest.skip("needs root for a private mount namespace")
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    # In a chroot whose / is not a mount point this fails ("cannot change
    # root filesystem propagation"); a machine or container boots with /
    # mounted.
    probe = subprocess.run(["unshare", "-m", "--propagation", "private",
                            "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("unshare -m is not permitted here: "
                    + probe.stderr.strip())


@pytest.mark.parametrize("socket_state", ["absent", "dead"])
def test_no_journal_means_stderr_with_time_stamps(tmp_path, socket_state):
    """--log-target journal with no journald behind the socket: every
    record still arrives, on stderr."""
    need_namespace()
    folders(tmp_path, "in", "out", "quarantine")
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(conf_text(base_config(tmp_path, log_target="journal")))
    make_dead = ""
    if socket_state == "dead":
        # a socket file nobody listens on: connect() is refused
        make_dead = ("python3 -c 'import socket; s = socket.socket("
                     "socket.AF_UNIX, socket.SOCK_DGRAM); "
                     "s.bind(\"/run/systemd/journal/socket\")'")
    script = textwrap.dedent(f"""\
        set -eu
        mount -t tmpfs tmpfs /run/systemd
        mkdir -p /run/systemd/journal
        {make_dead}
        {daemon_bin()} -c {conf} --log-target journal \\
            2> {tmp_path}/stderr & pid=$!
        for i in $(seq 600); do
            grep -q event=start {tmp_path}/stderr && break
            sleep 0.1
        done
        kill -TERM $pid
        wait $pid
        """)
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh",
                        "-c", script], capture_output=True, text=True,
                       timeout=120 * SLOW)
    err_file = tmp_path / "stderr"
    err = err_file.read_text() if err_file.exists() else ""
    assert r.returncode == 0, r.stderr + err
    lines = err.splitlines()
    assert any("event=start" in ln for ln in lines), err
    assert any("event=stop" in ln for ln in lines), err
    if socket_state == "absent":
        assert "the journal is not reachable" in err
    for ln in lines:
        if ln.startswith("==") or not ln.strip():
            continue      # sanitizer output
        assert STAMP.match(ln), ln


@pytest.mark.parametrize("what", ["table", "secret"])
def test_unreadable_table_or_secret_exits_2(what):
    """As the unit runs it: not root, so a root-only file is unreadable."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the daemon as nobody")
    import pathlib
    import tempfile
    root = pathlib.Path(tempfile.mkdtemp(prefix="dsstart-"))
    try:
        root.chmod(0o755)
        for n in ("in", "out", "quarantine"):
            (root / n).mkdir()
            (root / n).chmod(0o777)
        path = root / ("ids.csv" if what == "table" else "secret")
        if what == "table":
            path.write_text("PAT001,NEWA\n")
            extra = {"profile": "seed", "correlation_table": path}
        else:
            path.write_bytes(os.urandom(32))
            extra = {"profile": "basic", "deid": {"secret": path}}
        path.chmod(0o600)                   # root's: nobody cannot read it
        conf = root / "dicomsortd.conf"
        conf.write_text(conf_text(base_config(root, **extra)))
        conf.chmod(0o644)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534",
                            "--clear-groups", daemon_bin(), "-c", str(conf)],
                           capture_output=True, text=True, timeout=60 * SLOW)
        assert r.returncode == 2, (r.returncode, r.stderr)
        assert path.name in r.stderr, r.stderr
        assert "Permission denied" in r.stderr, r.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
