"""Shared helpers for the dicomsortd tests: the real daemon, real inotify,
real signals, real sd_notify datagrams. Nothing is mocked.

Run with Debian's interpreter (python3-pytest, python3-pydicom):

    DICOMSORTD_BIN=build/dicomsortd DICOMSORT_BIN=build/dicomsort \
    DICOMSORT_BUILD_DIR=build DICOMSORT_SOURCE_DIR=. \
        /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/daemon

Every test writes its own configuration into tmp_path, starts the daemon
with -c, and stops it with SIGTERM; the `daemon` fixture kills whatever is
left at teardown, so no process outlives its test.

Inputs are generated here with pydicom (64x64 16-bit images); pydicom is
also the independent reader of the outputs.
"""

import hashlib
import io
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import calendar
import re

import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tools"))
from binaries import built_binary  # noqa: E402
from figures import Figures  # noqa: E402
from gendicom import file_meta, set_grey_pixels  # noqa: E402

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
UID_ROOT = "1.2.826.0.1.3680043.10.4242"

_RAMP = bytes((i * 7) & 0xFF for i in range(4096))

BUILD_DIR = os.environ.get("DICOMSORT_BUILD_DIR", "")


def _sanitized_build():
    """Whether DICOMSORT_BUILD_DIR is an ASan/UBSan build (slower)."""
    cache = pathlib.Path(BUILD_DIR) / "CMakeCache.txt" if BUILD_DIR else None
    try:
        return "DICOMSORT_SANITIZE:BOOL=ON" in cache.read_text()
    except (OSError, AttributeError):
        return False


SANITIZED = _sanitized_build()
# Generous bounds for waits: a sanitizer build runs about 3x slower, and
# ctest runs the suites side by side on a small machine.
SLOW = 3.0 if SANITIZED else 1.0

# ---- figures shown at the end of the run ----

FIGURES = Figures("daemon-figures.txt", "dicomsortd figures")
report_figure = FIGURES.report


def pytest_terminal_summary(terminalreporter):
    FIGURES.summary(terminalreporter)


# ---- DICOM inputs ----

def dicom_bytes(patient_id="PAT001", patient_name="Doe^John",
                study_date="20240102", series_number=1,
                sop_uid=None, series_description="Axial",
                pixel_seed=0, rows=64, cols=64, birth_date="19700101"):
    """One small CT image (16-bit) as Part 10 bytes."""
    if sop_uid is None:
        sop_uid = pydicom.uid.generate_uid(prefix=UID_ROOT + ".")
    ds = Dataset()
    ds.file_meta = file_meta(CT_IMAGE_STORAGE, sop_uid,
                             ExplicitVRLittleEndian, UID_ROOT + ".1")
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.Modality = "CT"
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.StudyInstanceUID = "%s.2.%d.%s" % (
        UID_ROOT, int(hashlib.sha1(patient_id.encode()).hexdigest()[:12], 16),
        study_date)
    ds.SeriesInstanceUID = ds.StudyInstanceUID + "." + str(series_number)
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    set_grey_pixels(ds, rows, cols)
    # Distinct, deterministic pixels per seed: a fixed ramp whose first
    # eight bytes carry the seed.
    n = rows * cols * 2
    ramp = (_RAMP * (n // len(_RAMP) + 1))[:n]
    ds.PixelData = struct.pack("<Q", pixel_seed & (2**64 - 1)) + ramp[8:]
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, write_like_original=False)
    return buf.getvalue()


class Item:
    """One generated input: where it goes and what it is."""

    def __init__(self, name, data, patient_id, patient_name, study_date,
                 series_number, sop_uid):
        self.name = name
        self.data = data
        self.patient_id = patient_id
        self.patient_name = patient_name
        self.study_date = study_date
        self.series_number = series_number
        self.sop_uid = sop_uid


_seq = [0]


def make_items(n, patient_id="PAT001", patient_name="Doe^John",
               study_date="20240102", series_number=1, prefix="img",
               series_description="Axial"):
    """n distinct inputs (distinct SOPInstanceUID and pixels) in memory."""
    items = []
    for i in range(n):
        _seq[0] += 1
        sop = "%s.3.%d.%d.%d" % (UID_ROOT, os.getpid(), _seq[0],
                                 int(time.time() * 1000) % 10**9)
        data = dicom_bytes(patient_id, patient_name, study_date,
                           series_number, sop, series_description,
                           pixel_seed=_seq[0])
        items.append(Item("%s%05d.dcm" % (prefix, i), data, patient_id,
                          patient_name, study_date, series_number, sop))
    return items


def write_items(folder, items, names=None):
    """Write items into folder (created); returns their paths."""
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for it in items:
        p = folder / it.name
        with open(p, "wb") as f:
            f.write(it.data)
        paths.append(p)
    return paths


def write_dicoms(folder, n, **kw):
    """Write n distinct files into folder; returns the Items."""
    items = make_items(n, **kw)
    write_items(folder, items)
    return items


# ---- output inspection ----

def files_below(root):
    """Every regular file below root (recursively), as Paths."""
    root = pathlib.Path(root)
    if not root.exists():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def temp_files_below(root):
    return [p for p in files_below(root) if p.name.startswith(".dicomsort-")]


def read_sops(root):
    """SOPInstanceUID -> list of output paths, for every file below root."""
    out = {}
    for p in files_below(root):
        # dot names are temp files; the daemon's own state (pending
        # record logs, outbox, study state) lives in a dot folder
        if any(part.startswith(".") for part in
               p.relative_to(pathlib.Path(root)).parts):
            continue
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        out.setdefault(str(ds.SOPInstanceUID), []).append(p)
    return out


def expected_dir(out, it, patient_id=None, desc="Axial"):
    pid = patient_id if patient_id is not None else it.patient_id
    return pathlib.Path(out) / pid / it.study_date / (
        "%d_%s" % (it.series_number, desc))


def record_time(line):
    """Epoch seconds of a log line's leading stamp (2026-12-03T14:56:12.440Z)."""
    stamp = line.split(" ", 1)[0]
    whole, frac = stamp.rstrip("Z").split(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + \
        int(frac) / 1000.0


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Poll pred() until true; the timeout is scaled for slow builds.
    Returns pred()'s last value (fails the test on timeout). what may be
    a callable, evaluated at the timeout (a log tail is only useful then)."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail("timed out after %.1fs waiting for %s"
                        % (timeout * SLOW, what() if callable(what) else what))
        time.sleep(interval)


# ---- configuration ----

def _conf_value(v, indent="  "):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (str, pathlib.Path)):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return '"%s"' % s
    if isinstance(v, (list, tuple)):
        return "[ " + ", ".join(_conf_value(x) for x in v) + " ]"
    if isinstance(v, dict):
        inner = "".join("%s%s = %s;\n" % (indent, k, _conf_value(x))
                        for k, x in v.items())
        return "{\n" + inner + "}"
    raise TypeError(v)


def conf_text(settings):
    return "".join("%s = %s;\n" % (k, _conf_value(v))
                   for k, v in settings.items() if v is not None)


# ---- sd_notify listener ----

class NotifyListener:
    """An AF_UNIX datagram socket standing in for systemd's NOTIFY_SOCKET;
    a thread collects every datagram with its arrival time."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages = []          # (monotonic time, text)
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while self.running:
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                break
            with self.lock:
                self.messages.append((time.monotonic(),
                                      data.decode("utf-8", "replace")))

    def texts(self):
        with self.lock:
            return [m for _, m in self.messages]

    def fields(self):
        """Each datagram as a dict of its KEY=VALUE lines."""
        out = []
        for t in self.texts():
            d = {}
            for line in t.split("\n"):
                if "=" in line:
                    k, v = line.split("=", 1)
                    d[k] = v
            out.append(d)
        return out

    def close(self):
        self.running = False
        self.thread.join(2)
        self.sock.close()


# ---- the daemon ----

def daemon_bin():
    return built_binary("dicomsortd")


def base_config(tmp_path, **overrides):
    """A test configuration: folders in tmp_path, stderr logging, short
    settle time, no periodic rescan; keyword arguments override keys."""
    cfg = {
        "input": tmp_path / "in",
        "output": tmp_path / "out",
        "quarantine": tmp_path / "quarantine",
        "settle_ms": 300,
        "workers": 2,
        "log_target": "stderr",
        "retry": {"parse_attempts": 3, "backoff_ms": 200,
                  "backoff_max_ms": 2000},
        "rescan": {"interval_s": 0},
        "shutdown": {"timeout_s": 10},
    }
    cfg.update(overrides)
    return cfg


class Daemon:
    """One dicomsortd process with its config file and log file."""

    def __init__(self, tmp_path, cfg, env=None, wrapper=None, start=True):
        self.tmp_path = pathlib.Path(tmp_path)
        self.cfg = cfg
        self.input = pathlib.Path(cfg["input"])
        self.output = pathlib.Path(cfg["output"])
        q = cfg["quarantine"]   # a folder, or { folder; max_age_days }
        self.quarantine = pathlib.Path(q["folder"] if isinstance(q, dict)
                                       else q)
        self.input.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.tmp_path / "dicomsortd.conf"
        self.conf_path.write_text(conf_text(cfg))
        self.log_path = self.tmp_path / "daemon.log"
        self.env = dict(os.environ)
        self.env.pop("NOTIFY_SOCKET", None)
        self.env.pop("WATCHDOG_USEC", None)
        self.env.pop("WATCHDOG_PID", None)
        self.env.pop("JOURNAL_STREAM", None)
        if env:
            self.env.update(env)
        self.wrapper = wrapper
        self.proc = None
        self.returncode = None
        if start:
            self.start()

    def start_nowait(self):
        """Start the process without waiting for its start record, which
        follows the walk of the backlog. Returns the log's length before
        this run."""
        argv = [daemon_bin(), "-c", str(self.conf_path)]
        if self.wrapper:
            argv = self.wrapper(argv)
        self.log_file = open(self.log_path, "ab")
        self.started_at = time.monotonic()
        skip = len(self.log())
        self.proc = subprocess.Popen(argv, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, env=self.env)
        self.returncode = None
        return skip

    def start(self):
        # A restart appends to the log: only this run's start counts
        # (a signal sent before it would hit a daemon still starting).
        skip = self.start_nowait()
        wait_until(lambda: "event=start" in self.log()[skip:] or
                   self.proc.poll() is not None, 30, what="daemon start")
        if self.proc.poll() is not None:
            pytest.fail("dicomsortd exited with %s at start:\n%s"
                        % (self.proc.returncode, self.log()))

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self):
        return self.log().splitlines()

    def events(self, name):
        """Audit lines of one event."""
        tag = "event=%s" % name
        return [ln for ln in self.log_lines()
                if tag + " " in ln + " "]

    def stored_times(self):
        """{dest: when its `stored` record was written} (epoch seconds,
        from the log line's UTC millisecond stamp): when the output was
        durable. An output's own mtime is no such time: a source renamed
        into place keeps the sender's."""
        out = {}
        for ln in self.events("stored"):
            m = re.search(r'dest="([^"]*)"', ln)
            if m:
                out[m.group(1)] = record_time(ln)
        return out

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        """SIGTERM and wait; returns (exit status, seconds taken)."""
        t0 = time.monotonic()
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.proc.wait(timeout * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("dicomsortd did not stop within %.0fs after SIGTERM"
                        % (timeout * SLOW))
        self.log_file.close()
        took = time.monotonic() - t0
        # Under the sanitizers a report goes to stderr, our log.
        for bad in ("runtime error:", "AddressSanitizer", "LeakSanitizer"):
            assert bad not in self.log(), self.log()
        return self.returncode, took

    def kill(self):
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and not self.log_file.closed:
            self.log_file.close()

    def memory_kb(self):
        """(VmRSS, VmHWM) in kB from /proc."""
        vals = {}
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    vals[k] = int(v.split()[0])
        return vals.get("VmRSS"), vals.get("VmHWM")

    def wait_stored(self, n, timeout=30):
        """Until n `stored` audit records were logged."""
        return wait_until(lambda: len(self.events("stored")) >= n, timeout,
                          what=lambda: "%d stored events, input still holds "
                          "%s (log:\n%s)" % (
                              n, [str(p.relative_to(self.input))
                                  for p in files_below(self.input)][:20],
                              "\n".join(self.log_lines()[-40:])))

    def wait_input_empty(self, timeout=30):
        return wait_until(lambda: not files_below(self.input), timeout,
                          what="input folder to empty")


@pytest.fixture
def daemon(tmp_path):
    """Factory: daemon(**config_overrides) -> Daemon (already started).
    Keyword-only extras: env=, wrapper=, start=. Every process started is
    killed at teardown if the test left it running."""
    started = []

    def make(env=None, wrapper=None, start=True, **overrides):
        d = Daemon(tmp_path, base_config(tmp_path, **overrides), env=env,
                   wrapper=wrapper, start=start)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc is not None:
            d.kill()


@pytest.fixture
def notify_socket(tmp_path):
    listener = NotifyListener(tmp_path / "notify.sock")
    yield listener
    listener.close()
