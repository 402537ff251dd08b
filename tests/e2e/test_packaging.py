"""Packaging: the systemd unit, the sysusers/tmpfiles snippets, the man pages,
the maintainer scripts and the .deb that `cpack -G DEB` builds.

Environment: DICOMSORT_BUILD_DIR is the configured and built CMake tree (ctest
sets it). The tests that need it skip, with the reason, when it is not set;
the ones that only read the repository run regardless. A tool that is not
installed (systemd-analyze, cpack, groff, ...) skips the tests that need it.

systemd-analyze reports unknown keys and bad values on stderr while still
exiting 0 (see /work/shared/notes/integration.md section 4), so every command
here must also leave stderr empty, except for the lines each test lists as
expected, with the reason.
"""

import gzip
import os
import pathlib
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import time

import pytest

from binaries import binary_path, built_binary

REPO = pathlib.Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "dicomsortd.service"
SYSUSERS = REPO / "systemd" / "dicomsortd.sysusers"
TMPFILES = REPO / "systemd" / "dicomsortd.tmpfiles"
MAN_PAGES = ["dicomsort.1", "dicomsortd.8", "dicomsortd.conf.5"]
SCRIPTS = ["postinst", "prerm", "postrm"]
FOLDERS = {  # tmpfiles.d: path -> mode
    "/srv/dicom": 0o755,
    "/srv/dicom/incoming": 0o2770,
    "/srv/dicom/sorted": 0o750,
    "/srv/dicom/quarantine": 0o750,
    "/srv/dicom/processed": 0o750,
    "/srv/dicom/hold": 0o750,
}
EXPOSURE_MAX = 2.0


def build_dir():
    path = os.environ.get("DICOMSORT_BUILD_DIR")
    if not path:
        pytest.skip("DICOMSORT_BUILD_DIR is not set: it must name the built "
                    "CMake tree (ctest sets it)")
    return pathlib.Path(path)


def need(tool):
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def run(args, **kw):
    return subprocess.run([str(a) for a in args], capture_output=True,
                          text=True, timeout=600, **kw)


def daemon_binary():
    """The built dicomsortd, or None when this tree has none (yet)."""
    path = binary_path("dicomsortd")
    return path if path and os.access(path, os.X_OK) else None


@pytest.fixture
def unit_copy(tmp_path):
    """The unit with executables that exist here: ExecStart runs the built
    dicomsortd (or /bin/true when there is none), ExecReload keeps /bin/kill
    when it exists (procps). Every other line is the shipped one."""
    text = UNIT.read_text()
    start = daemon_binary() or "/bin/true"
    text, n = re.subn(r"(?m)^ExecStart=/usr/sbin/dicomsortd ",
                      f"ExecStart={start} ", text)
    assert n == 1, "ExecStart=/usr/sbin/dicomsortd ... not found in the unit"
    assert re.search(r"(?m)^ExecReload=/bin/kill -HUP \$MAINPID$", text)
    if not os.access("/bin/kill", os.X_OK):
        text = text.replace("ExecReload=/bin/kill ", "ExecReload=/bin/true ")
    copy = tmp_path / "dicomsortd.service"
    copy.write_text(text)
    return copy


def man_tree(tmp_path):
    """A MANPATH holding our pages, so that the unit's Documentation= lines
    are checked against them rather than against installed ones."""
    root = tmp_path / "man"
    for page in MAN_PAGES:
        section = root / f"man{page[-1]}"
        section.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "doc" / page, section / page)
    return root


# ---- (a) systemd-analyze verify ---------------------------------------------

def test_unit_verifies_cleanly(unit_copy, tmp_path):
    analyze = need("systemd-analyze")
    env = dict(os.environ)
    args = [analyze, "verify"]
    if shutil.which("man"):
        env["MANPATH"] = str(man_tree(tmp_path))
    else:
        args.append("--man=no")  # no man(1): Documentation= is not checked
    r = run(args + [unit_copy], env=env, cwd=tmp_path)
    # No stderr filter: in this container (PID 1 not systemd, no journald)
    # a clean unit gives rc 0 and no output at all.
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr


def test_unit_has_the_required_settings():
    settings = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    expect = {
        "Type": "notify",
        "ExecStart": "/usr/sbin/dicomsortd -c /etc/dicomsortd/dicomsortd.conf",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "Restart": "on-failure",
        "WatchdogSec": "30s",
        "TimeoutStopSec": "30s",
        "User": "dicomsortd",
        "Group": "dicomsortd",
        "UMask": "0027",
        "ProtectSystem": "strict",
        "CapabilityBoundingSet": "",
        "ProcSubset": "pid",
    }
    for key, value in expect.items():
        assert settings.get(key) == [value], key
    # One parent, one bind mount: moves between the folders stay renames
    # (issue 10 §3; each ReadWritePaths= entry is a mount of its own). The
    # metrics folder is optional ("-") and holds no data folder (issue 15).
    assert settings["ReadWritePaths"] == [
        "/srv/dicom", "-/var/lib/prometheus/node-exporter"]
    assert settings["RestartPreventExitStatus"] == ["2"]
    assert settings["LogRateLimitIntervalSec"] == ["0"]


# ---- (b) systemd-analyze security -------------------------------------------

def test_unit_exposure_is_low(unit_copy, tmp_path):
    analyze = need("systemd-analyze")
    threshold = int(EXPOSURE_MAX * 10)
    r = run([analyze, "security", "--offline=true",
             f"--threshold={threshold}", unit_copy], cwd=tmp_path)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    exposure = float(m.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert r.returncode == 0, f"exposure {exposure} > {EXPOSURE_MAX}"
    assert r.stderr == "", r.stderr
    assert exposure <= EXPOSURE_MAX


def test_unit_with_the_forward_drop_in(unit_copy, tmp_path):
    """Issue 13: the documented drop-in opens Internet sockets to the peers
    only, and keeps the exposure within EXPOSURE_MAX; without it the unit
    has no network at all."""
    analyze = need("systemd-analyze")
    dropin = REPO / "systemd" / "forward.conf.example"
    text = dropin.read_text()
    assert re.search(r"(?m)^PrivateNetwork=no$", text)
    assert re.search(r"(?m)^RestrictAddressFamilies=AF_INET AF_INET6$", text)
    assert re.search(r"(?m)^IPAddressAllow=\S", text)
    # The base unit denies everything; the drop-in must not undo that.
    assert not re.search(r"(?m)^IPAddressDeny=", text)
    unit = UNIT.read_text()
    assert re.search(r"(?m)^PrivateNetwork=yes$", unit)
    assert re.search(r"(?m)^RestrictAddressFamilies=AF_UNIX$", unit)
    assert re.search(r"(?m)^IPAddressDeny=any$", unit)
    d = tmp_path / "dicomsortd.service.d"
    d.mkdir()
    shutil.copy(dropin, d / "forward.conf")
    threshold = int(EXPOSURE_MAX * 10)
    r = run([analyze, "security", "--offline=true",
             f"--threshold={threshold}", unit_copy], cwd=tmp_path)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert m, r.stdout + r.stderr
    exposure = float(m.group(1))
    print(f"systemd-analyze security exposure with forwarding: {exposure}")
    # Proof that the drop-in was read: the network is now the host's.
    assert re.search(r"PrivateNetwork=\s+Service has access to the host's "
                     r"network", r.stdout), r.stdout
    assert r.returncode == 0, f"exposure {exposure} > {EXPOSURE_MAX}"
    assert exposure <= EXPOSURE_MAX


# ---- (c) the .deb -----------------------------------------------------------

def cpack_value(build, name):
    m = re.search(rf'^set\({name} "([^"]*)"\)', (build / "CPackConfig.cmake")
                  .read_text(), re.M)
    assert m, f"{name} not in CPackConfig.cmake"
    return m.group(1)


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    build = build_dir()
    cpack = need("cpack")
    need("dpkg-deb")
    assert (build / "CPackConfig.cmake").exists(), (
        "no CPackConfig.cmake: the top-level CMakeLists.txt must end with "
        "add_subdirectory(packaging)")
    out = tmp_path_factory.mktemp("deb")
    r = run([cpack, "-G", "DEB", "-B", out], cwd=build)
    assert r.returncode == 0, r.stdout + r.stderr
    arch = run(["dpkg", "--print-architecture"]).stdout.strip()
    version = cpack_value(build, "CPACK_PACKAGE_VERSION")
    path = out / f"dicomsortd_{version}_{arch}.deb"
    assert path.exists(), r.stdout + "\n" + "\n".join(
        p.name for p in out.iterdir())
    return path


def deb_files(deb):
    """{path: permission string} of the data part."""
    r = run(["dpkg-deb", "-c", deb])
    assert r.returncode == 0, r.stderr
    files = {}
    for line in r.stdout.splitlines():
        perms, path = line.split()[0], line.split()[-1]
        files[path.lstrip(".")] = perms
    return files


def deb_member(deb, path):
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)],
                         capture_output=True, check=True).stdout
    r = subprocess.run(["tar", "-xO", "." + path], input=tar,
                       capture_output=True, check=True)
    return r.stdout


def test_deb_contains_everything(deb):
    files = deb_files(deb)
    expect = [
        "/usr/bin/dicomsort",
        "/lib/systemd/system/dicomsortd.service",
        "/usr/lib/sysusers.d/dicomsortd.conf",
        "/usr/lib/tmpfiles.d/dicomsortd.conf",
        "/etc/dicomsortd/dicomsortd.conf",
        "/usr/share/man/man1/dicomsort.1.gz",
        "/usr/share/man/man5/dicomsortd.conf.5.gz",
        "/usr/share/man/man8/dicomsortd.8.gz",
        "/usr/share/doc/dicomsortd/README.md",
        "/usr/share/doc/dicomsortd/examples/forward.conf.example",
        # issue 15: one instance per /etc/dicomsortd/NAME.conf
        "/lib/systemd/system/dicomsortd@.service",
        "/lib/systemd/system-generators/dicomsortd-generator",
    ]
    if daemon_binary():
        expect.append("/usr/sbin/dicomsortd")
    for path in expect:
        assert path in files, f"{path} missing from {deb.name}"
    for path in ("/usr/bin/dicomsort", "/usr/sbin/dicomsortd",
                 "/lib/systemd/system-generators/dicomsortd-generator"):
        if path in files:
            assert files[path] == "-rwxr-xr-x", path
    assert not [p for p in files if p.startswith("/usr/local")]


def test_deb_ships_the_repository_files(deb):
    assert deb_member(deb, "/lib/systemd/system/dicomsortd.service") == \
        UNIT.read_bytes()
    assert deb_member(deb, "/lib/systemd/system/dicomsortd@.service") == \
        (REPO / "systemd" / "dicomsortd@.service").read_bytes()
    assert deb_member(deb, "/usr/lib/sysusers.d/dicomsortd.conf") == \
        SYSUSERS.read_bytes()
    assert deb_member(deb, "/usr/lib/tmpfiles.d/dicomsortd.conf") == \
        TMPFILES.read_bytes()
    conf = REPO / "etc" / "dicomsortd.conf"
    assert conf.exists(), f"{conf} is missing"
    assert deb_member(deb, "/etc/dicomsortd/dicomsortd.conf") == \
        conf.read_bytes()
    for page in MAN_PAGES:
        gz = deb_member(deb, f"/usr/share/man/man{page[-1]}/{page}.gz")
        assert gzip.decompress(gz) == (REPO / "doc" / page).read_bytes()


def test_deb_control(deb):
    r = run(["dpkg-deb", "-I", deb])
    assert r.returncode == 0, r.stderr
    info = r.stdout
    for script in SCRIPTS:
        assert re.search(rf"^\s+\d+ bytes,\s+\d+ lines\s+\*\s+{script}\s",
                         info, re.M), f"{script} missing or not executable"
    conffiles = run(["dpkg-deb", "-I", deb, "conffiles"]).stdout
    assert conffiles.split() == ["/etc/dicomsortd/dicomsortd.conf"]

    def field(name):
        return run(["dpkg-deb", "-f", deb, name]).stdout.strip()

    assert field("Package") == "dicomsortd"
    depends = [d.split()[0] for d in field("Depends").split(", ")]
    # dcmnet and dcmtls are in libdcmtk17; STOW-RS uses json-c and opens
    # libcurl on first use (dlopen: named in Depends, not found by
    # dpkg-shlibdeps).
    need_libs = ["libdcmtk17", "procps", "libcurl4", "libjson-c5"]
    if daemon_binary():
        need_libs += ["libconfig9", "libinotifytools0", "libsystemd0"]
    for lib in need_libs:
        assert lib in depends, f"{lib} not in Depends: {field('Depends')}"


# ---- (d) sysusers.d and tmpfiles.d ------------------------------------------

def test_sysusers_and_tmpfiles_apply_to_a_root(tmp_path):
    sysusers = need("systemd-sysusers")
    tmpfiles = need("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)

    r = run([sysusers, f"--root={root}", SYSUSERS])
    assert r.returncode == 0, r.stderr
    # sysusers reports what it creates on stderr; anything else is a problem.
    for line in r.stderr.splitlines():
        assert re.fullmatch(r"Creating (group|user) 'dicomsortd'.*", line), line
    passwd = (root / "etc/passwd").read_text()
    m = re.search(r"^dicomsortd:x:(\d+):(\d+):DICOM sorting daemon:"
                  r"/var/lib/dicomsortd:(\S+)$", passwd, re.M)
    assert m, passwd
    uid, gid = int(m.group(1)), int(m.group(2))
    assert uid < 1000 and m.group(3).endswith("nologin")
    assert re.search(rf"^dicomsortd:x:{gid}:", (root / "etc/group").read_text(),
                     re.M)

    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles needs root to set the owners")
    r = run([tmpfiles, f"--root={root}", "--create", TMPFILES])
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    for path, mode in FOLDERS.items():
        st = os.lstat(root / path.lstrip("/"))
        assert stat.S_ISDIR(st.st_mode), path
        assert stat.S_IMODE(st.st_mode) == mode, \
            f"{path}: {oct(stat.S_IMODE(st.st_mode))}"
        owner = (0, 0) if path == "/srv/dicom" else (uid, gid)
        assert (st.st_uid, st.st_gid) == owner, path


def test_sysusers_dry_run_on_this_system():
    sysusers = need("systemd-sysusers")
    r = run([sysusers, "--dry-run", SYSUSERS])
    assert r.returncode == 0, r.stderr
    # Lines systemd 252 prints for a dry run: what it would create and write.
    for line in r.stderr.splitlines():
        assert re.fullmatch(r"Creating (group|user) 'dicomsortd'.*|"
                            r"Would write /etc/\w+…", line), line


# ---- (e) man pages ----------------------------------------------------------

@pytest.mark.parametrize("page", MAN_PAGES)
def test_man_page_renders_without_warnings(page):
    groff = need("groff")
    source = REPO / "doc" / page
    r = run([groff, "-man", "-ww", "-z", source])
    assert r.returncode == 0 and r.stderr == "", r.stderr
    if shutil.which("man"):
        env = dict(os.environ, MANWIDTH="80", LC_ALL="C.UTF-8")
        r = run(["man", "--warnings", "-l", source], env=env)
        assert r.returncode == 0 and r.stderr == "", r.stderr
    name = page.rsplit(".", 1)[0]
    assert re.search(rf"^\.SH NAME\n{re.escape(name)} \\- ",
                     source.read_text(), re.M)


@pytest.mark.parametrize("program,page", [("dicomsort", "dicomsort.1"),
                                          ("dicomsortd", "dicomsortd.8")])
def test_man_page_documents_every_option(program, page):
    binary = built_binary(program)
    r = run([binary, "--help"])
    assert r.returncode == 0, r.stderr
    text = (REPO / "doc" / page).read_text()
    for option in sorted(set(re.findall(r"--[A-Za-z][\w-]*", r.stdout))):
        roff = option.replace("-", r"\-")
        assert roff in text, f"{option} from {program} --help not in {page}"


# ---- maintainer scripts -----------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS)
def test_maintainer_script_syntax(script):
    path = REPO / "packaging" / script
    assert os.access(path, os.X_OK), f"{script} is not executable"
    r = run(["sh", "-n", path])
    assert r.returncode == 0, r.stderr
    if shutil.which("shellcheck"):
        r = run(["shellcheck", "-s", "sh", path])
        assert r.returncode == 0, r.stdout


def test_postinst_never_starts_or_enables(tmp_path):
    """postinst with every command it may call replaced by a recorder."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    for tool in ("systemd-sysusers", "systemd-tmpfiles", "systemctl",
                 "useradd", "groupadd", "getent", "deb-systemd-helper"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        stub.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:/usr/bin:/bin")
    for args in (["configure", ""], ["configure", "0.0.9"]):
        r = run(["sh", REPO / "packaging" / "postinst"] + args, env=env)
        assert r.returncode == 0, r.stderr
    calls = log.read_text().splitlines()
    assert "systemd-sysusers dicomsortd.conf" in calls
    assert "systemd-tmpfiles --create dicomsortd.conf" in calls
    for call in calls:
        # try-restart only restarts a daemon that is running already.
        assert not re.match(r"systemctl .*(?<![\w-])(start|enable|restart)\b",
                            call), call


# ---- the sandbox, without systemd: what the daemon does must fit it ---------
#
# There is no systemd as PID 1 here, so the unit's sandbox cannot be applied.
# Instead the daemon runs under strace through start, one stored file, a
# reload and a stop, and what it did is checked against the unit: every
# system call passes SystemCallFilter=, every socket is of a family in
# RestrictAddressFamilies=, /proc is used only for the process itself
# (ProcSubset=pid), /dev only for what PrivateDevices= keeps, nothing below
# ProtectHome='s folders is touched, and files are created, renamed or
# removed only inside the configured folders (ProtectSystem=strict).

PRIVATE_DEVICES = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                   "/dev/urandom", "/dev/tty", "/dev/log", "/dev/ptmx",
                   "/dev/shm", "/dev/pts", "/dev/mqueue", "/dev/hugepages"}
DATA_CALLS = {"read", "pread64", "readv", "write", "pwrite64", "writev",
              "sendto", "sendmsg", "recvfrom", "recvmsg"}  # strings are data
WRITE_CALLS = {"mkdir", "mkdirat", "rename", "renameat", "renameat2",
               "unlink", "unlinkat", "rmdir", "link", "linkat", "symlink",
               "symlinkat", "truncate", "creat"}


def unit_settings(key):
    values = []
    for line in UNIT.read_text().splitlines():
        if line.startswith(key + "="):
            values.append(line.split("=", 1)[1])
    return values


def syscall_groups():
    out = run(["systemd-analyze", "syscall-filter"]).stdout
    groups, current = {}, None
    for line in out.splitlines():
        if re.match(r"^@[\w-]+", line):
            current = line.split()[0]
            groups[current] = []
        elif current and line.strip() and not line.strip().startswith("#"):
            groups[current].append(line.split()[0])
    return groups


def allowed_syscalls():
    """The set SystemCallFilter= leaves: the allow lines minus the ~ lines."""
    groups = syscall_groups()

    def expand(names):
        out = set()
        for name in names:
            out |= expand(groups[name]) if name.startswith("@") else {name}
        return out

    allow, deny = set(), set()
    for value in unit_settings("SystemCallFilter"):
        if value.startswith("~"):
            deny |= expand(value[1:].split())
        else:
            allow |= expand(value.split())
    assert allow, "the unit has no SystemCallFilter allow list"
    return allow - deny


def dicom_file(path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Sandbox^Test"
    ds.PatientID = "SANDBOX1"
    ds.StudyDate = "20240101"
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = "sandbox"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = 2, 2
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(4)
    ds.is_little_endian, ds.is_implicit_VR = True, False
    tmp = path.with_name("." + path.name)  # an ignored name, then a rename
    ds.save_as(str(tmp), write_like_original=False)
    os.rename(tmp, path)


def wait_for(predicate, what, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def trace_daemon(tmp_path, daemon):
    """Run the daemon under strace through its life; return the trace."""
    folders = {k: tmp_path / k for k in ("incoming", "sorted", "quarantine")}
    for folder in folders.values():
        folder.mkdir()
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text("".join(f'{k} = "{v}";\n' for k, v in
                            [("input", folders["incoming"]),
                             ("output", folders["sorted"]),
                             ("quarantine", folders["quarantine"])]))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    notify.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    notify.settimeout(30)
    env = dict(os.environ, NOTIFY_SOCKET=str(tmp_path / "notify"),
               WATCHDOG_USEC="2000000")
    trace = tmp_path / "trace"
    proc = subprocess.Popen(["strace", "-f", "-qq", "-y", "-s", "256", "-o",
                             str(trace), daemon, "-c", str(conf),
                             "--log-target", "stderr"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)

    def until_ready():
        """The daemon's pid (not strace's) once it sends READY=1."""
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        try:
            while True:
                data, cmsgs, _, _ = notify.recvmsg(4096, size)
                if b"READY=1" in data:
                    break
        except socket.timeout:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("no READY=1 from the daemon; stderr:\n" +
                        proc.communicate()[1])
        for level, kind, creds in cmsgs:
            if (level, kind) == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS):
                return struct.unpack("3i", creds)[0]
        pytest.fail("READY=1 came without the sender's credentials")

    try:
        pid = until_ready()
        dicom_file(folders["incoming"] / "a.dcm")
        # Stored or quarantined: either way the output path ran.
        wait_for(lambda: proc.poll() is not None or
                 any(p.is_file() for k in ("sorted", "quarantine")
                     for p in folders[k].rglob("*")),
                 "the file to be stored or quarantined")
        assert proc.poll() is None, "the daemon exited early:\n" + \
            proc.communicate()[1]
        os.kill(pid, signal.SIGHUP)
        until_ready()
        os.kill(pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # strace and the daemon
            proc.communicate()
        notify.close()
    assert proc.returncode == 0, stderr
    return trace.read_text(), folders


def traced_calls(text):
    """(name, argument text) of each system call in an strace -f log."""
    calls = []
    for line in text.splitlines():
        m = re.match(r"^\d+\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()(.*)$", line)
        if m:
            calls.append((m.group(1) or m.group(2), m.group(3)))
    return calls


def written_paths(name, args, cwd):
    """Paths a file-changing call touches, resolved with strace -y."""
    if name in ("open", "openat", "openat2"):
        if not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", args):
            return []
    elif name not in WRITE_CALLS:
        return []
    paths = []
    found = re.findall(r'(?:(?:AT_FDCWD|\d+<([^>]*)>), )?"([^"]*)"', args)
    if name in ("link", "linkat"):
        # link() writes only its new name; the old one (for an O_TMPFILE
        # file, /proc/self/fd/N) is just looked up.
        found = found[1:]
    for fd_path, plain in found:
        if plain.startswith("/"):
            paths.append(plain)
        elif fd_path:
            paths.append(os.path.join(fd_path, plain))
        else:
            paths.append(os.path.join(cwd, plain))
    return paths


def test_daemon_fits_the_sandbox(tmp_path):
    need("strace")
    need("systemd-analyze")
    pytest.importorskip("pydicom")
    daemon = daemon_binary()
    if daemon is None:
        pytest.skip("dicomsortd is not built")
    if "libasan" in run(["ldd", daemon]).stdout:
        pytest.skip("sanitizer build: its runtime needs more than the "
                    "sandbox allows; the normal build is checked")
    text, folders = trace_daemon(tmp_path, daemon)
    calls = traced_calls(text)
    assert calls, "strace recorded nothing"

    allowed = allowed_syscalls()
    used = {name for name, _ in calls}
    assert used - allowed == set(), "calls SystemCallFilter= would refuse"

    families = set(" ".join(unit_settings("RestrictAddressFamilies")).split())
    for name, args in calls:
        # A call strace split in two is checked on its first half.
        if name in ("socket", "socketpair") and not args.startswith(")"):
            family = args.split(",")[0]
            assert family in families, f"{name}({args}"

    writable = [str(p) for p in folders.values()]
    # What the unit itself makes writable beside the data folders: the
    # metrics folder (ReadWritePaths=-...) and its RuntimeDirectory=, where
    # the daemon's defaults put the metrics and status files (issue 15).
    writable += [v.lstrip("-+") for v in unit_settings("ReadWritePaths")
                 if v.lstrip("-+") != "/srv/dicom"]
    writable += ["/run/" + v for v in unit_settings("RuntimeDirectory")]
    for name, args in calls:
        if name in DATA_CALLS:
            continue
        for path in re.findall(r'"(/(?:proc|dev|home|root|run/user)\b[^"]*)"',
                               args):
            if path.startswith("/proc"):
                assert re.match(r"/proc/(self|thread-self|\d+)(/|$)", path), \
                    f"ProcSubset=pid hides {path}"
            elif path.startswith("/dev"):
                assert path in PRIVATE_DEVICES or \
                    path.startswith(("/dev/pts/", "/dev/shm/")), \
                    f"PrivateDevices= hides {path}"
            else:
                pytest.fail(f"ProtectHome= hides {path}")
        for path in written_paths(name, args, str(tmp_path)):
            path = os.path.normpath(path)
            assert path in PRIVATE_DEVICES or any(
                path == w or path.startswith(w + "/") for w in writable), \
                f"ProtectSystem=strict: {name} on {path}"


# ---- installing the .deb, in a throw-away copy of this system ---------------

INSTALL_CHECK = r"""
set -e
dpkg -i /root/dicomsortd.deb >/dev/null
systemctl enable dicomsortd.service 2>/dev/null
test -L /etc/systemd/system/multi-user.target.wants/dicomsortd.service
getent passwd dicomsortd | cut -d: -f1,6,7
stat -c '%n %a %U:%G' /srv/dicom /srv/dicom/*
dpkg-query -W -f='${Conffiles}\n' dicomsortd
echo '# local change' >> /etc/dicomsortd/dicomsortd.conf
dpkg -i /root/dicomsortd.deb >/dev/null
tail -n 1 /etc/dicomsortd/dicomsortd.conf
dpkg -r dicomsortd >/dev/null
test -e /usr/sbin/dicomsortd -o -e /usr/bin/dicomsort && echo binaries left
test -e /etc/dicomsortd/dicomsortd.conf && echo conffile kept
dpkg -P dicomsortd >/dev/null
test -e /etc/dicomsortd/dicomsortd.conf && echo conffile left after purge
ls /etc/systemd/system/*/dicomsortd.service 2>/dev/null && echo enabled after purge
getent passwd dicomsortd >/dev/null && echo user kept
test -d /srv/dicom/sorted && echo data kept
"""


def test_deb_installs_upgrades_and_purges(deb, tmp_path):
    """dpkg -i / -r / -P in a private mount namespace over an overlay of /,
    so this system is left as it was."""
    if os.geteuid() != 0:
        pytest.skip("installing a package needs root")
    need("unshare")
    ov = tmp_path / "ov"
    for d in ("upper", "work", "merged"):
        (ov / d).mkdir(parents=True)
    shutil.copy(deb, tmp_path / "dicomsortd.deb")
    (tmp_path / "check.sh").write_text(INSTALL_CHECK)
    inner = f"""
set -e
mount -t overlay overlay -o lowerdir=/,upperdir={ov}/upper,workdir={ov}/work \
    {ov}/merged || exit 77
mount --bind /proc {ov}/merged/proc
mount --bind /dev {ov}/merged/dev
cp {tmp_path}/dicomsortd.deb {tmp_path}/check.sh {ov}/merged/root/
exec chroot {ov}/merged sh /root/check.sh
"""
    r = run(["unshare", "-m", "sh", "-c", inner])
    if r.returncode == 77 or "unshare failed" in r.stderr:
        pytest.skip(f"no private overlay of / here: {r.stderr.strip()}")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "dicomsortd:/var/lib/dicomsortd:/usr/sbin/nologin"
    for path, mode in FOLDERS.items():
        owner = "root:root" if path == "/srv/dicom" else \
            "dicomsortd:dicomsortd"
        assert f"{path} {mode:o} {owner}" in lines, lines
    assert re.search(r"^ /etc/dicomsortd/dicomsortd.conf [0-9a-f]{32}$",
                     r.stdout, re.M), r.stdout
    tail = lines[lines.index("# local change"):]
    assert tail == ["# local change", "conffile kept", "user kept",
                    "data kept"], tail


# ---- (g) what a hospital's package review looks at (issue 10 §6) ----------

def test_lintian_is_clean(deb):
    """0 errors and 0 warnings; an override would need a reason in a
    lintian-overrides file shipped in the package (there is none)."""
    lintian = shutil.which("lintian")
    assert lintian, "lintian is not installed (scripts/deps installs it)"
    r = run([lintian, "--tag-display-limit", "0", "--fail-on",
             "error,warning", deb])
    print(r.stdout)
    tags = [ln for ln in r.stdout.splitlines() if re.match(r"^[EW]: ", ln)]
    assert tags == [], "\n".join(tags)
    assert r.returncode == 0, r.stdout + r.stderr


def test_deb_licence_changelog_and_maintainer(deb):
    files = deb_files(deb)
    for path in ("/usr/share/doc/dicomsortd/copyright",
                 "/usr/share/doc/dicomsortd/changelog.gz"):
        assert path in files, path
    copyright = deb_member(deb, "/usr/share/doc/dicomsortd/copyright").decode()
    assert copyright.startswith("Format: https://www.debian.org/doc/"
                                "packaging-manuals/copyright-format/1.0/\n")
    assert "License: BSD-3-Clause" in copyright
    assert (REPO / "LICENSE").read_text().startswith("BSD 3-Clause License")
    changelog = gzip.decompress(deb_member(
        deb, "/usr/share/doc/dicomsortd/changelog.gz")).decode()
    assert changelog.startswith("dicomsortd (")

    def field(name):
        return run(["dpkg-deb", "-f", deb, name]).stdout.strip()

    assert re.match(r"^[^<>]+ <[^@\s]+@[^@\s]+>$", field("Maintainer"))
    assert "root@localhost" not in field("Maintainer")
    assert field("Homepage").startswith("https://")
    depends = [d.split()[0] for d in field("Depends").split(", ")]
    for dep in ("systemd-sysusers", "systemd-tmpfiles"):
        assert dep in depends, field("Depends")


def test_deb_binaries_stripped_and_hardened(deb, tmp_path):
    need("readelf")
    cache = build_dir() / "CMakeCache.txt"
    if "DICOMSORT_SANITIZE:BOOL=ON" in cache.read_text():
        pytest.skip("sanitizer build: built without Debian's hardening flags "
                    "on purpose (CMakeLists.txt); the normal build is checked")
    tar = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path)],
                         capture_output=True)
    assert tar.returncode == 0, tar.stderr
    for rel in ("usr/bin/dicomsort", "usr/sbin/dicomsortd",
                "lib/systemd/system-generators/dicomsortd-generator"):
        path = tmp_path / rel
        if not path.exists():
            continue
        sections = run(["readelf", "-S", path]).stdout
        assert ".symtab" not in sections and ".debug_info" not in sections, \
            f"{rel} is not stripped"
        dyn = run(["readelf", "-d", path]).stdout
        assert "BIND_NOW" in dyn and "PIE" in dyn, f"{rel}: {dyn}"
        assert "GNU_RELRO" in run(["readelf", "-l", path]).stdout
        syms = run(["readelf", "--dyn-syms", "-W", path]).stdout
        assert "__stack_chk_fail" in syms, f"{rel}: no stack protector"
        assert re.search(r"__\w+_chk\b", syms.replace("__stack_chk_fail", "")), \
            f"{rel}: not built with _FORTIFY_SOURCE"


def test_plain_cmake_line_builds_optimised_and_hardened(tmp_path):
    """The README's `cmake -S . -B build`, without a build type."""
    cmake = need("cmake")
    need("dpkg-buildflags")
    r = run([cmake, "-S", REPO, "-B", tmp_path / "b", "-DDICOMSORT_TESTS=OFF"])
    assert r.returncode == 0, r.stdout + r.stderr
    cache = (tmp_path / "b" / "CMakeCache.txt").read_text()
    assert "CMAKE_BUILD_TYPE:STRING=RelWithDebInfo" in cache
    import json
    cmds = json.loads((tmp_path / "b" / "compile_commands.json").read_text())
    cmd = next(c["command"] for c in cmds
               if c["file"].endswith("src/daemon.c"))
    for flag in ("-O2", "-D_FORTIFY_SOURCE=2", "-fstack-protector-strong",
                 "-Werror=format-security"):
        assert flag in cmd.split(), (flag, cmd)
