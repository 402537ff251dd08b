"""A Debian 12 container with systemd as PID 1, for the system suite.

Owns: the cached debootstrap root, the per-run copy of it, the mounts a
chroot install needs, booting it with systemd-nspawn, running commands inside
with nsenter, and taking everything down again (machine, mounts, files).

Layout of the cache folder (DICOMSORT_SYSTEM_CACHE, default
$DICOMSORT_BUILD_DIR/system-cache):

    lock                 flock: exclusive to build or delete a base,
                         shared while a run copies one
    base-<key>/          debootstrap root with the .deb's Depends installed;
                         <key> hashes the suite, the mirror and the package
                         lists, so a new dependency builds a new base
    runs/<id>/root       the copy one run boots; removed afterwards
    runs/<id>/owner      "pid starttime" of the run, to sweep crashed ones

Nothing here skips: a machine that cannot do this raises ContainerError, and
the suite reports it as a failure.
"""

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

SUITE = "bookworm"  # Debian 12, the product's platform
VARIANT = "minbase"
BASE_INCLUDE = ["systemd", "systemd-sysv", "dbus"]
SCHEMA = 1  # bump when the way a base is made changes
CONTAINER_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
    "DEBIAN_FRONTEND": "noninteractive",
}


class ContainerError(Exception):
    """This machine cannot build or boot the container; the text says why."""


def log(msg):
    print("[system] %s %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def run(args, timeout=600, check=True, **kw):
    """Run a host command; on failure raise with its output."""
    args = [str(a) for a in args]
    try:
        r = subprocess.run(args, capture_output=True, text=True,
                           timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        raise ContainerError("%s timed out after %ss\n%s%s" % (
            " ".join(args), timeout, e.stdout or "", e.stderr or ""))
    if check and r.returncode != 0:
        raise ContainerError("%s failed (rc=%d)\nstdout: %s\nstderr: %s" % (
            " ".join(args), r.returncode, r.stdout[-4000:], r.stderr[-4000:]))
    return r


def need_tool(name, package):
    path = shutil.which(name)
    if path is None:
        raise ContainerError("%s is not installed (Debian package %s; "
                             "scripts/deps installs it)" % (name, package))
    return path


# ---- apt's own mirror ----------------------------------------------------

def _deb822_stanzas(text):
    stanza = {}
    key = None
    for line in text.splitlines() + [""]:
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] in " \t" and key:
            stanza[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            stanza[key] = value.strip()


def apt_mirror(etc="/etc/apt"):
    """The first URI apt uses for the plain Debian 12 suite: from the deb822
    file debian.sources, else from sources.list."""
    etc = pathlib.Path(etc)
    found = []
    for path in [etc / "sources.list.d" / "debian.sources"] + \
            sorted((etc / "sources.list.d").glob("*.sources")):
        try:
            text = path.read_text()
        except OSError:
            continue
        for st in _deb822_stanzas(text):
            if "deb" in st.get("types", "").split() and \
                    SUITE in st.get("suites", "").split() and \
                    st.get("enabled", "yes").lower() != "no":
                found += st.get("uris", "").split()
    for path in [etc / "sources.list"] + \
            sorted((etc / "sources.list.d").glob("*.list")):
        try:
            lines = path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            line = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
            if len(line) >= 3 and line[0] == "deb" and line[2] == SUITE:
                found.append(line[1])
    found = [u for u in found if u.startswith(("http://", "https://",
                                               "file:/"))]
    if not found:
        raise ContainerError("no '%s' mirror in %s/sources.list.d/"
                             "debian.sources or %s/sources.list"
                             % (SUITE, etc, etc))
    return found[0]


# ---- mounts --------------------------------------------------------------

def _unescape(path):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mounts_below(path):
    """Mount points at or below path in this mount namespace, deepest
    first."""
    path = os.path.realpath(path)
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == path or point.startswith(path.rstrip("/") + "/"):
                found.append(point)
    return sorted(set(found), key=len, reverse=True)


def unmount_below(path):
    """Unmount everything below path; lazily when a plain unmount fails.
    Raises when something stays mounted (then nothing may be deleted)."""
    for _ in range(3):
        points = mounts_below(path)
        if not points:
            return
        for p in points:
            if subprocess.run(["umount", p], capture_output=True).returncode:
                subprocess.run(["umount", "-l", p], capture_output=True)
    left = mounts_below(path)
    if left:
        raise ContainerError("cannot unmount %s" % left)


def remove_tree(path):
    """rm -rf that never follows a mount out of path: it refuses while
    anything below is mounted (a bind of /dev would take the host's device
    nodes with it)."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    unmount_below(path)
    run(["rm", "-rf", "--one-file-system", path], timeout=600)


@contextlib.contextmanager
def chroot_mounts(root):
    """/proc and /dev inside root for a chroot (apt, dpkg, useradd)."""
    root = pathlib.Path(root)
    done = []
    try:
        for args, target in ((["-t", "proc", "proc"], "proc"),
                             (["--bind", "/dev"], "dev")):
            point = root / target
            point.mkdir(exist_ok=True)
            run(["mount"] + args + [point])
            done.append(point)
        yield root
    finally:
        for point in reversed(done):
            if subprocess.run(["umount", point],
                              capture_output=True).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True)
        unmount_below(root)


def chroot(root, script, timeout=900, check=True):
    env = dict(CONTAINER_ENV)
    return run(["chroot", root, "/bin/sh", "-ec", script], timeout=timeout,
               check=check, env=env)


# ---- the cached base root ------------------------------------------------

def deb_depends(deb):
    return run(["dpkg-deb", "-f", deb, "Depends"]).stdout.strip()


def depends_names(depends):
    """Package names of a Depends field, alternatives included, no
    versions: what the base must hold so the install needs no download."""
    names = set()
    for alt in re.split(r"[,|]", depends):
        alt = re.sub(r"\(.*?\)|\[.*?\]|<.*?>", "", alt).strip()
        if alt:
            names.add(alt.split(":")[0])
    return sorted(names)


def base_key(mirror, depends):
    desc = json.dumps({"schema": SCHEMA, "suite": SUITE, "variant": VARIANT,
                       "mirror": mirror, "include": BASE_INCLUDE,
                       "depends": depends_names(depends)}, sort_keys=True)
    return hashlib.sha256(desc.encode()).hexdigest()[:16], desc


@contextlib.contextmanager
def locked(cache, mode):
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "lock", "a+") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build_base(cache, key, desc, mirror, depends):
    final = cache / ("base-" + key)
    tmp = cache / ("base-" + key + ".tmp")
    remove_tree(tmp)
    need_tool("debootstrap", "debootstrap")
    log("building the Debian 12 root %s from %s (once; takes minutes)"
        % (final, mirror))
    t0 = time.monotonic()
    r = run(["debootstrap", "--variant=" + VARIANT,
             "--include=" + ",".join(BASE_INCLUDE), SUITE, tmp, mirror],
            timeout=2400, check=False)
    if r.returncode != 0:
        log_tail = ""
        try:
            log_tail = (tmp / "debootstrap" / "debootstrap.log").read_text()
        except OSError:
            pass
        remove_tree(tmp)
        raise ContainerError("debootstrap %s from %s failed (rc=%d): %s\n%s"
                             % (SUITE, mirror, r.returncode,
                                r.stderr[-3000:], log_tail[-3000:]))
    shutil.copy("/etc/resolv.conf", tmp / "etc" / "resolv.conf")
    # Installs in a chroot must not try to start services.
    policy = tmp / "usr" / "sbin" / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    with chroot_mounts(tmp):
        chroot(tmp, "apt-get update -q", timeout=900)
        # satisfy takes the Depends field as it is: alternatives, versions
        # and virtual packages resolve as they will for the .deb.
        chroot(tmp, "apt-get satisfy -y -q --no-install-recommends '%s'"
               % depends.replace("'", ""), timeout=1800)
        chroot(tmp, "apt-get clean")
    policy.unlink()
    (tmp / "etc" / "dicomsortd-system-base.json").write_text(desc + "\n")
    os.rename(tmp, final)
    log("root built in %.0f s" % (time.monotonic() - t0))
    for old in cache.glob("base-*"):
        if old != final:
            log("removing the stale root %s" % old)
            remove_tree(old)
    return final


def _proc_start(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _kill_recorded(path):
    """SIGKILL the process recorded in path as "pid starttime" if it still
    runs; True when it did."""
    try:
        pid, start = path.read_text().split()
        pid = int(pid)
    except (OSError, ValueError):
        return False
    if _proc_start(pid) != start:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if _proc_start(pid) != start:
            break
        time.sleep(0.1)
    return True


# Runs beside the test with PR_SET_PDEATHSIG: when the test process dies
# without its teardown (ctest's timeout kills it), the guard gets SIGTERM
# and kills the container's systemd (which outlives a killed nspawn) and
# nspawn. sweep_runs removes the files at the next run.
GUARD = r"""
import os, signal, sys
def bye(*_):
    for name in ("init", "nspawn"):
        try:
            pid, start = open(os.path.join(sys.argv[1], name)).read().split()
            with open("/proc/%s/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[19] == start:
                    os.kill(int(pid), signal.SIGKILL)
        except Exception:
            pass
    os._exit(0)
signal.signal(signal.SIGTERM, bye)
os.write(1, b"ready\n")
while True:
    signal.pause()
"""


def _pdeathsig(sig):
    def setup():
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig))
    return setup


def sweep_runs(cache):
    """Remove the run copies of runs that died without cleaning up, after
    killing a container one of them may have left booted."""
    for run_dir in (cache / "runs").glob("*"):
        try:
            pid, start = (run_dir / "owner").read_text().split()
            if _proc_start(int(pid)) == start:
                continue
        except (OSError, ValueError):
            if time.time() - run_dir.stat().st_mtime < 3600:
                continue  # being created right now, perhaps
        for name in ("init", "nspawn"):
            if _kill_recorded(run_dir / name):
                log("killed the container's %s left by %s" % (name, run_dir))
        log("removing the leftover run %s" % run_dir)
        try:
            remove_tree(run_dir)
        except ContainerError as e:
            log("cannot remove %s: %s" % (run_dir, e))


def prepare_run_root(cache, deb):
    """A fresh copy of the base for deb's Depends, built first if needed.
    Returns the run folder (root is run/root)."""
    mirror = apt_mirror()
    depends = deb_depends(deb)
    key, desc = base_key(mirror, depends)
    base = cache / ("base-" + key)
    with locked(cache, fcntl.LOCK_EX):
        sweep_runs(cache)
        if not base.is_dir():
            _build_base(cache, key, desc, mirror, depends)
    run_dir = cache / "runs" / ("run-%d-%d" % (os.getpid(), time.time_ns()))
    run_dir.mkdir(parents=True)
    (run_dir / "owner").write_text("%d %s\n" % (os.getpid(),
                                               _proc_start(os.getpid())))
    with locked(cache, fcntl.LOCK_SH):
        t0 = time.monotonic()
        run(["cp", "-a", "--reflink=auto", base, run_dir / "root"],
            timeout=900)
        log("copied the cached root in %.1f s" % (time.monotonic() - t0))
    return run_dir


# ---- the booted machine --------------------------------------------------

def _children(pid):
    kids = []
    try:
        for task in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task)) as f:
                kids += [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid) as f:
            return f.read().strip()
    except OSError:
        return None


class Machine:
    """systemd-nspawn --boot of root; commands enter it with nsenter."""

    def __init__(self, root, binds_ro=(), log_path=None):
        self.root = pathlib.Path(root)
        self.binds_ro = list(binds_ro)
        self.log_path = pathlib.Path(log_path or
                                     str(self.root) + ".nspawn.log")
        self.proc = None
        self.guard = None
        self.pid = None  # the container's systemd, as seen from here

    def boot(self, timeout=180):
        nspawn = need_tool("systemd-nspawn", "systemd-container")
        need_tool("nsenter", "util-linux")
        args = [nspawn, "-q", "-D", self.root, "--boot", "--register=no",
                "--keep-unit", "--console=passive",
                "--machine=dsys%d" % os.getpid()]
        args += ["--bind-ro=%s:%s" % b for b in self.binds_ro]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([str(a) for a in args],
                                     stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log,
                                     start_new_session=True)
        self.record("nspawn", self.proc.pid)
        deadline = time.monotonic() + timeout
        while self.pid is None:
            if self.proc.poll() is not None:
                raise ContainerError(
                    "the kernel cannot boot a container here: systemd-nspawn "
                    "exited with %s before systemd started:\n%s"
                    % (self.proc.returncode, self.log_text()))
            for kid in self._descendants(self.proc.pid):
                if _comm(kid) == "systemd":
                    self.pid = kid
                    self.record("init", kid)
                    break
            if time.monotonic() > deadline:
                raise ContainerError("no systemd in the container after %ds:"
                                     "\n%s" % (timeout, self.log_text()))
            time.sleep(0.1)
        state = ""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ContainerError("the container stopped while booting "
                                     "(rc=%s):\n%s" % (self.proc.returncode,
                                                       self.log_text()))
            r = self.sh("systemctl is-system-running", check=False,
                        timeout=30)
            state = r.stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.5)
        else:
            raise ContainerError("the container did not finish booting in "
                                 "%ds (state %r):\n%s" % (timeout, state,
                                                          self.log_text()))
        if state == "degraded":
            failed = self.sh("systemctl --failed --no-legend", check=False)
            log("container booted degraded; failed units: %s"
                % failed.stdout.strip())
        return state

    def record(self, name, pid):
        """Note pid for the guard and for sweep_runs: the container must
        not outlive the test, whatever kills the test."""
        (self.log_path.parent / name).write_text(
            "%d %s\n" % (pid, _proc_start(pid)))
        if self.guard is None:
            self.guard = subprocess.Popen(
                [sys.executable, "-c", GUARD, str(self.log_path.parent)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                preexec_fn=_pdeathsig(signal.SIGTERM),
                start_new_session=True)
            self.guard.stdout.readline()  # its handler is in place

    def _descendants(self, pid, depth=3):
        out = []
        for kid in _children(pid):
            out.append(kid)
            if depth > 1:
                out += self._descendants(kid, depth - 1)
        return out

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def enter_args(self, user=None):
        args = ["nsenter", "-t", str(self.pid), "-a"]
        if user:
            args += ["setpriv", "--reuid=" + user, "--regid=" + user,
                     "--init-groups", "--reset-env"]
        return args

    def sh(self, script, user=None, check=True, timeout=120, **kw):
        """Run script with /bin/sh -e inside the container."""
        if self.pid is None:
            raise ContainerError("the container is not running")
        return run(self.enter_args(user) + ["/bin/sh", "-ec", script],
                   timeout=timeout, check=check, env=dict(CONTAINER_ENV),
                   **kw)

    def popen(self, script, user=None, **kw):
        return subprocess.Popen(self.enter_args(user) +
                                ["/bin/sh", "-ec", script],
                                env=dict(CONTAINER_ENV), text=True, **kw)

    def poweroff(self, timeout=90):
        """Power off; SIGKILL the container's init and nspawn if that does
        not finish in time. Never leaves the machine running."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.pid is not None:
            subprocess.run(["nsenter", "-t", str(self.pid), "-a",
                            "systemctl", "poweroff", "--no-block"],
                           capture_output=True, timeout=60,
                           env=dict(CONTAINER_ENV))
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log("the container did not power off in %ds; killing it"
                % timeout)
            for pid in filter(None, [self.pid]):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=60)
        self._log.close()
        self.pid = None
        if self.guard is not None:
            self.guard.kill()
            self.guard.wait()
            self.guard.stdout.close()
            self.guard = None
