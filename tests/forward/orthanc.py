"""A real Orthanc peer for the forwarding tests, started on loopback.

    from orthanc import Orthanc
    peer = Orthanc(tmp_path / "orthanc", aet="ORTHANC",
                   auth=("alice", "secret"))
    peer.start()                 # waits (bounded) until /system answers
    peer.stow_url                # http://127.0.0.1:PORT/dicom-web/studies
    peer.dicom_port, peer.aet    # for C-STORE
    peer.stop()                  # SIGTERM, bounded; storage is kept
    peer.start()                 # same ports, same storage
    peer.instances()             # {SOPInstanceUID: pixel-data sha256}
    peer.close()                 # SIGKILL for good (the fixture calls it)

    front = TlsFront(dir, peer.http_port)   # HTTPS in front of it
    front.start(); front.url("/dicom-web/studies"); front.ca_file

Orthanc's own HTTPS (SslEnabled) is not used: Debian 12's Orthanc 1.10.1
dies of SIGSEGV on the first HTTPS request (CivetWeb with OpenSSL 3). Sites
put a TLS proxy in front of Orthanc anyway; TlsFront is that proxy, a
real TLS server (Python's ssl, OpenSSL) relaying to Orthanc's HTTP port.

Orthanc 1.10.1 (Debian 12, package `orthanc`) with the DICOMweb plugin
(package `orthanc-dicomweb`). Everything lives in the directory given: the
generated orthanc.json, the SQLite index and storage, orthanc.log.

Loopback only. Orthanc 1.10 has no option for the address it listens on
(HttpPort and DicomPort are bare port numbers; CivetWeb and DCMTK bind the
wildcard address), and RemoteAccessAllowed=false only makes the HTTP server
refuse remote clients after accepting them. So Orthanc runs with
tests/tools/loopback_bind.c preloaded, which turns each wildcard bind() into
a loopback one, and start() checks through /proc that every listening
socket of the process is on 127.0.0.1 or ::1 before returning.

Every wait is bounded; failures raise OrthancError with the tail of the log.
"""

import base64
import hashlib
import io
import json
import os
import pathlib
import select
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request

ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
DICOMWEB_ROOT = "/dicom-web/"

# Orthanc starts in about a second on an idle machine; under ASan-built
# tests beside it on two loaded cores it has taken much longer.
START_TIMEOUT = 90
STOP_TIMEOUT = 30
HTTP_TIMEOUT = 30


class OrthancError(Exception):
    pass


def available():
    """None when Orthanc and its DICOMweb plugin are installed, else why
    not (for pytest.skip)."""
    if not os.access(ORTHANC_BIN, os.X_OK):
        return f"{ORTHANC_BIN} missing (Debian package orthanc; scripts/deps)"
    if not os.path.exists(DICOMWEB_PLUGIN):
        return (f"{DICOMWEB_PLUGIN} missing (Debian package "
                "orthanc-dicomweb; scripts/deps)")
    return None


def shim_path():
    """The loopback_bind.so built by CMake in the build folder, or None."""
    build = os.environ.get("DICOMSORT_BUILD_DIR")
    if not build:
        return None
    path = pathlib.Path(build) / "tests" / "loopback_bind.so"
    return str(path) if path.exists() else None


def free_port():
    """A TCP port free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_sockets(pid):
    """[(family, address, port)] of the TCP sockets process pid listens on,
    read from /proc (no ss/netstat needed)."""
    inodes = set()
    fd_dir = pathlib.Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for name, family in (("tcp", 4), ("tcp6", 6)):
        try:
            lines = pathlib.Path(f"/proc/{pid}/net/{name}").read_text()
        except OSError:
            continue
        for line in lines.splitlines()[1:]:
            f = line.split()
            if f[3] != "0A" or f[9] not in inodes:  # 0A: LISTEN
                continue
            addr_hex, port_hex = f[1].split(":")
            raw = bytes.fromhex(addr_hex)
            if family == 4:
                addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addr = socket.inet_ntop(socket.AF_INET6, words)
            found.append((family, addr, int(port_hex, 16)))
    return found


class Orthanc:
    """One Orthanc process over one storage directory (see module doc).

    aet: its DICOM AE title. auth: (user, password) turns HTTP basic
    authentication on. check_called_aet: refuse associations whose called
    AE is not aet. lua: text of a Lua script (e.g. a ReceivedInstanceFilter
    that refuses some instances; note that Orthanc 1.10 still answers such
    an instance with C-STORE success and lists it in STOW-RS's
    ReferencedSOPSequence).
    extra: more orthanc.json keys."""

    def __init__(self, workdir, aet="ORTHANC", auth=None,
                 check_called_aet=True, lua=None, extra=None):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.aet = aet
        self.auth = auth
        self.check_called_aet = check_called_aet
        self.lua = lua
        self.extra = dict(extra or {})
        self.http_port = None
        self.dicom_port = None
        self.proc = None
        self.log_path = self.dir / "orthanc.log"
        self.starts = 0

    # ---- addresses ----

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self):
        return self.base_url + DICOMWEB_ROOT.rstrip("/")

    @property
    def stow_url(self):
        return self.dicomweb_url + "/studies"

    # ---- configuration ----

    def config(self):
        storage = str(self.dir / "storage")
        cfg = {
            "Name": "dicomsortd-test",
            "StorageDirectory": storage,
            "IndexDirectory": storage,
            "TemporaryDirectory": str(self.dir / "tmp"),
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "HttpDescribeErrors": True,
            "HttpCompressionEnabled": False,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": self.check_called_aet,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomScpTimeout": 30,
            "DicomThreadsCount": 4,
            "AuthenticationEnabled": self.auth is not None,
            "RegisteredUsers": ({self.auth[0]: self.auth[1]}
                                if self.auth else {}),
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": DICOMWEB_ROOT,
                         "EnableWado": False, "Host": "127.0.0.1",
                         "Ssl": False},
            "HttpsVerifyPeers": True,
            "StableAge": 1,
            "ConcurrentJobs": 1,
            "LuaScripts": [],
            "Verbose": False,
        }
        if self.lua is not None:
            lua = self.dir / "filter.lua"
            lua.write_text(self.lua)
            cfg["LuaScripts"] = [str(lua)]
        cfg.update(self.extra)
        return cfg

    # ---- life cycle ----

    def start(self):
        """Start Orthanc and wait until its REST API and both ports answer.
        The first start picks free loopback ports; later starts reuse them
        (a restarted peer is the same peer). Raises OrthancError."""
        if self.proc is not None:
            raise OrthancError("Orthanc is already running")
        why = available()
        if why:
            raise OrthancError(why)
        shim = shim_path()
        if shim is None:
            raise OrthancError("loopback_bind.so not built (set "
                               "DICOMSORT_BUILD_DIR to the build folder)")
        attempts = 3 if self.starts == 0 else 1
        for attempt in range(attempts):
            if self.starts == 0:
                self.http_port, self.dicom_port = free_port(), free_port()
                while self.dicom_port == self.http_port:
                    self.dicom_port = free_port()
            try:
                self._spawn(shim)
                self._wait_ready()
                break
            except OrthancError:
                self._kill()
                if attempt == attempts - 1:
                    raise
        self.starts += 1
        self._check_loopback_only()

    def _spawn(self, shim):
        (self.dir / "tmp").mkdir(exist_ok=True)
        cfg_path = self.dir / "orthanc.json"
        cfg_path.write_text(json.dumps(self.config(), indent=1))
        env = dict(os.environ)
        env["LD_PRELOAD"] = shim
        # ASan options of the test run mean nothing to Orthanc.
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            env.pop(k, None)
        log = open(self.log_path, "ab")
        try:
            log.write(b"\n==== start %d ====\n" % (self.starts + 1))
            log.flush()
            self.proc = subprocess.Popen(
                [ORTHANC_BIN, str(cfg_path)], cwd=str(self.dir), env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True)
        finally:
            log.close()

    def _wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OrthancError("Orthanc exited with %s while starting:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                self.rest("GET", "/system", timeout=5)
                if self._dicom_listening():
                    return
            except (OSError, urllib.error.URLError, OrthancError):
                pass
            time.sleep(0.2)
        raise OrthancError("Orthanc not ready within %ds:\n%s"
                           % (START_TIMEOUT, self.log_tail()))

    def _dicom_listening(self):
        try:
            with socket.create_connection(("127.0.0.1", self.dicom_port),
                                          timeout=2):
                return True
        except OSError:
            return False

    def _check_loopback_only(self):
        socks = listening_sockets(self.proc.pid)
        ports = {p for _, _, p in socks}
        bad = [s for s in socks if s[1] not in ("127.0.0.1", "::1")]
        if bad or not {self.http_port, self.dicom_port} <= ports:
            self.close()
            raise OrthancError("Orthanc listens beyond loopback or not on "
                               f"its ports: {socks}")

    def stop(self):
        """SIGTERM and wait (bounded); SIGKILL if it hangs. The storage
        stays, so start() brings back the same peer with the same data."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._kill()
        self.proc = None
        # The ports must really be closed before a test counts on it.
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._dicom_listening() and time.monotonic() < deadline:
            time.sleep(0.1)

    def _kill(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
        self.proc = None

    def close(self):
        """The end of this peer (a test's teardown): its storage goes with
        the test's folder, so nothing needs a clean shutdown. SIGKILL, not
        stop()'s SIGTERM, which Orthanc takes about 3 s to honour - once
        per test, a third of the forward suite's time."""
        self._kill()

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines=40):
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- REST ----

    def rest(self, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT,
             auth=True):
        """Raw bytes of a REST answer; OrthancError on an HTTP error."""
        req = urllib.request.Request(self.base_url + path, data=body,
                                     method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if self.auth and auth:
            tok = base64.b64encode(("%s:%s" % self.auth).encode()).decode()
            req.add_header("Authorization", "Basic " + tok)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as e:
            raise OrthancError("%s %s: HTTP %d %s" % (method, path, e.code,
                                                       e.read()[:500]))

    def json(self, path):
        return json.loads(self.rest("GET", path))

    def instance_ids(self):
        """Orthanc's own ids of every stored instance."""
        return self.json("/instances")

    def sop_instance_uid(self, orthanc_id):
        tags = self.json(f"/instances/{orthanc_id}/tags?simplify")
        return tags["SOPInstanceUID"]

    def instance_file(self, orthanc_id):
        """The stored DICOM file, as bytes."""
        return self.rest("GET", f"/instances/{orthanc_id}/file")

    def pixel_hash(self, orthanc_id):
        """sha256 hex of the stored file's PixelData (read with pydicom)."""
        return pixel_hash_of(self.instance_file(orthanc_id))

    def instances(self):
        """{SOPInstanceUID: sha256 of PixelData} of everything stored."""
        out = {}
        for oid in self.instance_ids():
            out[self.sop_instance_uid(oid)] = self.pixel_hash(oid)
        return out

    def sop_instance_uids(self):
        """The set of SOPInstanceUIDs stored (cheaper than instances())."""
        return {self.sop_instance_uid(oid) for oid in self.instance_ids()}

    def statistics(self):
        return self.json("/statistics")

    def delete_all(self):
        for oid in self.instance_ids():
            self.rest("DELETE", f"/instances/{oid}")

    def wait_for(self, uids, timeout=120):
        """Wait (bounded) until every SOPInstanceUID in uids is stored;
        returns the set still missing (empty on success)."""
        want = set(uids)
        deadline = time.monotonic() + timeout
        while True:
            missing = want - self.sop_instance_uids()
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.5)


def pixel_hash_of(data):
    """sha256 hex of the PixelData of a DICOM file given as bytes or path."""
    import pydicom
    if isinstance(data, (bytes, bytearray)):
        ds = pydicom.dcmread(io.BytesIO(data))
    else:
        ds = pydicom.dcmread(str(data))
    return hashlib.sha256(ds.PixelData).hexdigest()


def file_identity(path):
    """(SOPInstanceUID, pixel sha256) of a file on disk."""
    import pydicom
    ds = pydicom.dcmread(str(path))
    return str(ds.SOPInstanceUID), hashlib.sha256(ds.PixelData).hexdigest()


class TlsFront:
    """An HTTPS front for a loopback HTTP port: a self-signed certificate
    for IP 127.0.0.1 (ca_file), each TLS connection relayed to
    127.0.0.1:target_port. Idle connections close after IDLE seconds."""

    IDLE = 120

    def __init__(self, workdir, target_port):
        self.dir = pathlib.Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.target_port = target_port
        self.port = None
        self.ca_file = str(self.dir / "cert.pem")
        self._key = str(self.dir / "key.pem")
        self._listener = None
        self._threads = []
        self._stopping = threading.Event()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", self._key, "-out", self.ca_file, "-days", "2",
             "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60)
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(self.ca_file, self._key)

    def url(self, path="/"):
        return f"https://127.0.0.1:{self.port}{path}"

    def start(self):
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.5)
        self.port = self._listener.getsockname()[1]
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)

    def _accept(self):
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(conn,),
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn):
        conn.settimeout(30)
        try:
            tls = self._ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            conn.close()	# e.g. the client did not trust us
            return
        try:
            plain = socket.create_connection(("127.0.0.1",
                                              self.target_port), timeout=30)
        except OSError:
            tls.close()
            return
        try:
            self._pump(tls, plain)
        except (ssl.SSLError, OSError):
            pass
        finally:
            tls.close()
            plain.close()

    def _pump(self, tls, plain):
        tls.settimeout(None)
        plain.settimeout(None)
        while not self._stopping.is_set():
            if tls.pending():
                ready = [tls]
            else:
                ready, _, _ = select.select([tls, plain], [], [], self.IDLE)
            if not ready:
                return
            for s in ready:
                other = plain if s is tls else tls
                data = s.recv(65536)
                if not data:
                    return
                other.sendall(data)

    def close(self):
        self._stopping.set()
        if self._listener is not None:
            self._listener.close()
        for t in self._threads:
            t.join(timeout=5)
