"""Helpers of the forwarding tests: the daemon with `forward` destinations,
its outbox, and DCMTK's storescp as a second real peer on loopback.

The daemon helpers (Daemon, base_config, wait_until) are the daemon suite's
own, loaded from tests/daemon/conftest.py so both suites drive the daemon
the same way. Every wait is bounded; every peer listens on 127.0.0.1 only.
"""

import importlib.util
import os
import pathlib
import re
import signal
import socket
import subprocess
import time

import orthanc as orthanc_mod

HERE = pathlib.Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location(
    "daemon_helpers", HERE.parent / "daemon" / "conftest.py")
daemon_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(daemon_helpers)

Daemon = daemon_helpers.Daemon
base_config = daemon_helpers.base_config
wait_until = daemon_helpers.wait_until
files_below = daemon_helpers.files_below
SLOW = daemon_helpers.SLOW

STATE = ".dicomsortd-state"


def forward_text(dests):
    """The `forward = ( {...}, ... );` list for dests (list of dicts)."""
    groups = []
    for d in dests:
        inner = " ".join("%s = %s;" % (k, daemon_helpers._conf_value(v))
                         for k, v in d.items())
        groups.append("{ %s }" % inner)
    return "forward = ( %s );\n" % ", ".join(groups)


def make_daemon(tmp_path, dests, env=None, start=True, **overrides):
    """A Daemon whose config has the destinations dests (not started if
    start is False). Short retries so tests do not wait on backoff."""
    cfg = base_config(tmp_path, **overrides)
    d = Daemon(tmp_path, cfg, env=env, start=False)
    d.conf_path.write_text(daemon_helpers.conf_text(cfg) +
                           forward_text(dests))
    if start:
        d.start()
    return d


def dimse_dest(name, port, called_ae, **kw):
    dest = {"name": name, "host": "127.0.0.1", "port": port,
            "called_ae": called_ae, "calling_ae": "DICOMSORTD",
            "connect_timeout_s": 5, "acse_timeout_s": 10,
            "dimse_timeout_s": 20, "retry_min_ms": 200,
            "retry_max_ms": 2000}
    dest.update(kw)
    return dest


def stow_dest(name, url, **kw):
    dest = {"name": name, "stow_url": url, "connect_timeout_s": 5,
            "timeout_s": 30, "retry_min_ms": 200, "retry_max_ms": 2000}
    dest.update(kw)
    return dest


def outbox(output, name):
    return pathlib.Path(output) / STATE / "outbox" / name


def outbox_entries(output, name):
    """Queued entries (not .ref, not rejected/) of destination name."""
    box = outbox(output, name)
    if not box.is_dir():
        return []
    return sorted(p for p in box.iterdir()
                  if p.is_file() and p.name.endswith(".dcm"))


def rejected_entries(output, name):
    box = outbox(output, name) / "rejected"
    if not box.is_dir():
        return []
    return sorted(p for p in box.iterdir() if p.name.endswith(".dcm"))


def stored_files(output):
    """Every output file (not the state folder)."""
    out = pathlib.Path(output)
    return sorted(p for p in files_below(out)
                  if STATE not in p.relative_to(out).parts)


def field(line, key):
    m = re.search(r'\b%s="((?:[^"\\]|\\.)*)"' % re.escape(key), line)
    return m.group(1) if m else None


def events(d, name, destination=None):
    """Audit lines of event name (for destination, if given)."""
    lines = d.events(name)
    if destination is not None:
        lines = [ln for ln in lines if field(ln, "destination") == destination]
    return lines


def uids_of(lines):
    return [field(ln, "sop_instance_uid") for ln in lines]


def free_port():
    return orthanc_mod.free_port()


class StoreSCP:
    """DCMTK's storescp on a free loopback port, writing every object it
    receives under a unique name (+uf), so a resend shows as a second
    file. config: (file text, profile) for -xf (accepted SOP classes)."""

    def __init__(self, workdir, aet="STORESCP", config=None, tls=None):
        """tls: storescp's TLS arguments, e.g. ["+tls", key, cert, "+cf",
        ca, "-rc"] (a client certificate signed by ca is required)."""
        self.dir = pathlib.Path(workdir)
        self.store = self.dir / "received"
        self.store.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.config = config
        self.tls = tls
        self.port = None
        self.proc = None
        self.log_path = self.dir / "storescp.log"

    def start(self):
        shim = orthanc_mod.shim_path()
        if shim is None:
            raise RuntimeError("loopback_bind.so not built")
        if self.port is None:
            self.port = free_port()
        argv = ["storescp", "--aetitle", self.aet, "-od", str(self.store),
                "+uf"]
        if self.config is not None:
            cfg = self.dir / "storescp.cfg"
            cfg.write_text(self.config[0])
            argv += ["-xf", str(cfg), self.config[1]]
        if self.tls is not None:
            argv += [str(a) for a in self.tls]
        argv.append(str(self.port))
        env = dict(os.environ)
        env["LD_PRELOAD"] = shim
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            env.pop(k, None)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log, env=env,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20 * SLOW
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("storescp exited: %s" %
                                   self.log_path.read_text())
            socks = orthanc_mod.listening_sockets(self.proc.pid)
            if any(p == self.port for _, _, p in socks):
                assert all(a in ("127.0.0.1", "::1")
                           for _, a, _ in socks), socks
                return
            time.sleep(0.1)
        raise RuntimeError("storescp did not listen on %d" % self.port)

    def stop(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=20)
        self.proc = None

    def received(self):
        """[(SOPInstanceUID, pixel sha256)] of every object received, one
        per reception (a resend appears twice)."""
        out = []
        for p in sorted(self.store.rglob("*")):
            if p.is_file():
                try:
                    out.append(orthanc_mod.file_identity(p))
                except Exception:  # noqa: BLE001 - a file being written
                    pass
        return out

    def received_uids(self):
        return {u for u, _ in self.received()}


def closed_port():
    """A loopback port nobody listens on (connection refused)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def make_pki(folder):
    """A test CA, a server certificate for 127.0.0.1 and a client
    certificate, with openssl(1); keys mode 0600. Returns a dict of paths."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    script = (
        "set -e\n"
        "req() { openssl req -newkey rsa:2048 -nodes -keyout $1.key "
        "-out $1.csr -subj /CN=$2; }\n"
        "sign() { printf '%s\\n' \"$2\" >$1.ext; openssl x509 -req "
        "-in $1.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 "
        "-out $1.pem -extfile $1.ext; }\n"
        "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key "
        "-out ca.pem -days 2 -subj /CN=test-ca\n"
        "req srv 127.0.0.1; sign srv subjectAltName=IP:127.0.0.1\n"
        "req cli dicomsortd; sign cli extendedKeyUsage=clientAuth\n"
        "chmod 600 *.key\n")
    r = subprocess.run(["sh", "-c", script], cwd=folder, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {k: folder / v for k, v in (
        ("ca", "ca.pem"), ("srv_key", "srv.key"), ("srv_pem", "srv.pem"),
        ("cli_key", "cli.key"), ("cli_pem", "cli.pem"))}
