"""dicomsortd as shipped, under real systemd (issue 10 section 7).

One scenario runs once per session (the `world` fixture) in a Debian 12
container booted with systemd as PID 1; the tests below each check one
promise against what it left behind. The .deb is the one `cpack -G DEB`
builds from DICOMSORT_BUILD_DIR, installed with apt-get so that its Depends
resolve; the unit file is the shipped one, untouched (only
/etc/dicomsortd/dicomsortd.conf and a correlation table are written).

The scenario:
  before the first start  tmpfs file systems are mounted on
                          /srv/dicom/processed and /srv/dicom/hold: those
                          folders are on other file systems
  phase 1 (delete)        profile none, after_success = "delete":
                          a member of group dicomsortd (umask 0007) and a
                          careless writer (umask 022, also in the group)
                          drop files; the careless writer's own folder is
                          not group-writable until the admin fixes it; a
                          name clash in sorted; a non-DICOM and a truncated
                          file; 4 SIGKILLs at random moments
  phase 2 (move, hold)    profile seed, after_success = "move" into the
                          tmpfs, unknown_id = "hold": a name clash in
                          processed; files of an unknown patient held, then
                          released by `systemctl reload` after the table
                          gains the ID; a truncated file; 4 more SIGKILLs
  end                     `systemctl stop`
  phase 3 (instances)     issue 15: /etc/dicomsortd/a.conf (profile seed,
                          a table), b.conf (profile none) and c.conf
                          (profile basic, a table, a site secret made as
                          the README says), each with its own folders
                          below /srv/dicom/inst-a|b|c; `systemctl
                          daemon-reload` runs the generator, the three
                          instances run at once and each sorts its own
                          drop folder; `systemctl reload dicomsortd@a`
                          reaches a only; all stop. c's outputs and its
                          journal are searched for every identifying
                          value dropped (a privacy audit under the unit).
                          Then a DICOM receiver running as the daemon's
                          own account drops files into b (profile none,
                          after_success = "delete"): each is renamed into
                          place by the unit (the output is the inode it
                          wrote), but one with a second link is copied.
  then                    the checks.

Every wait is a condition with a generous timeout. A wait that times out is
recorded, the scenario goes on, and test_queue_drained reports it: one run
shows every broken promise, not only the first.
"""

import hashlib
import json
import os
import pathlib
import random
import re
import shlex
import shutil
import subprocess
import time
import traceback

import pydicom
import pytest

import gendicom
from conftest import report_figure
from container import (ContainerError, Machine, chroot, chroot_mounts, log,
                       prepare_run_root, remove_tree, run)

KILLS_PER_PHASE = 4
SETTLE_MS = 1000
INCOMING = "/srv/dicom/incoming"
SORTED = "/srv/dicom/sorted"
QUARANTINE = "/srv/dicom/quarantine"
PROCESSED = "/srv/dicom/processed"
HOLD = "/srv/dicom/hold"
CONF = "/etc/dicomsortd/dicomsortd.conf"
TABLE = "/etc/dicomsortd/correlation.csv"
TMP_PREFIX = ".dicomsort-"
MEMBER = ("modality", 0o007)   # in group dicomsortd, the documented umask
CARELESS = ("careless", 0o022)  # in group dicomsortd, files 0644
MAPPED = {"SYSA01": "ANONA", "SYSB02": "ANONB"}
HELD_ID, HELD_NEW = "SYSH03", "ANONH"

BASE_CONF = """\
input = "%(in)s";
output = "%(out)s";
quarantine = "%(q)s";
layout = "{PatientID}/{StudyDate}/{SeriesNumber}_{SeriesDescription}/";
settle_ms = %(settle)d;
retry = {
  parse_attempts = 3;
  backoff_ms = 500;
  backoff_max_ms = 4000;
};
""" % {"in": INCOMING, "out": SORTED, "q": QUARANTINE, "settle": SETTLE_MS}

PHASE1_CONF = BASE_CONF + """\
profile = "none";
after_success = "delete";
"""

PHASE2_CONF = BASE_CONF + """\
profile = "seed";
correlation_table = "%s";
after_success = "move";
processed = "%s";
hold = "%s";
deid = {
  unknown_id = "hold";
};
""" % (TABLE, PROCESSED, HOLD)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def build_dir():
    path = os.environ.get("DICOMSORT_BUILD_DIR")
    if not path or not os.path.isfile(os.path.join(path, "CMakeCache.txt")):
        pytest.fail("DICOMSORT_BUILD_DIR must name the built CMake tree "
                    "(ctest sets it); got %r" % path)
    return pathlib.Path(path)


def build_deb(build, out):
    cpack = shutil.which("cpack")
    if cpack is None:
        raise ContainerError("cpack is not installed (cmake)")
    run([cpack, "-G", "DEB", "-B", out], cwd=build, timeout=900)
    debs = sorted(pathlib.Path(out).glob("dicomsortd_*.deb"))
    if len(debs) != 1:
        raise ContainerError("cpack made %s, not one dicomsortd_*.deb" % debs)
    return debs[0]


class Expect:
    """One DICOM file dropped: where its output must be and what it holds."""

    def __init__(self, sop, data, pixel_sha, pid_in, pid_out, phase, rel,
                 who):
        self.sop = sop
        self.sha = sha256(data)
        self.size = len(data)
        self.pixel_sha = pixel_sha
        self.pid_in = pid_in
        self.pid_out = pid_out
        self.phase = phase
        self.rel = rel
        self.who = who


# Phase 3: two instances of dicomsortd@.service (issue 15 item 1).
INSTANCES = {
    # name: (profile, PatientID dropped, PatientID stored)
    "a": ("seed", "INSTA1", "ANONIA"),
    "b": ("none", "INSTB2", "INSTB2"),
    "c": ("basic", "INSTC3", "ANONIC"),
}
INSTANCE_FILES = 6
GENERATED = "/run/systemd/generator/dicomsortd@%s.service.d/50-folders.conf"

# Phase 3, then: a receiver (a storescp, say) running as the daemon's own
# account writes into b's drop folder. Its files need no change, are
# small, have one link, are the daemon's and of the output's group, and
# lie on the output's file system: the unit renames them into place
# (rename_unchanged). The last one keeps a second link: copied instead.
RECEIVER = ("dicomsortd", 0o027)  # the unit's own UMask
RECEIVER_INSTANCE = "b"
RECEIVER_PID = "RECVB4"
RECEIVER_FILES = 6  # renamed; plus one with two links, copied


def inst_dir(name, sub=""):
    return "/srv/dicom/inst-%s%s" % (name, "/" + sub if sub else "")


def instance_conf(name):
    profile, pid_in, pid_out = INSTANCES[name]
    text = ('input = "%s";\noutput = "%s";\nquarantine = "%s";\n'
            'layout = "{PatientID}/{StudyDate}/{SeriesNumber}_'
            '{SeriesDescription}/";\nsettle_ms = %d;\nprofile = "%s";\n'
            % (inst_dir(name, "incoming"), inst_dir(name, "sorted"),
               inst_dir(name, "quarantine"), SETTLE_MS, profile))
    if profile in ("seed", "basic"):
        text += 'correlation_table = "/etc/dicomsortd/%s.csv";\n' % name
    if profile == "basic":
        text += 'deid = {\n  secret = "%s";\n};\n' % secret_path(name)
    if name == RECEIVER_INSTANCE:
        # The default, said: the receiver's files are renamed only so.
        text += 'after_success = "delete";\n'
    return text


def secret_path(name):
    return "/etc/dicomsortd/%s.secret" % name


def readme_secret_command(path):
    """The README's command for the site secret, for path: the admin's
    way, run as root in the machine (the test of the README's words)."""
    readme = pathlib.Path(os.environ.get("DICOMSORT_SOURCE_DIR", pathlib.Path(
        __file__).resolve().parents[2])) / "README.md"
    m = re.search(r"`([^`]*head -c 32 /dev/urandom[^`]*)`", readme.read_text())
    assert m, "README.md gives no command for the site secret"
    return m.group(1).replace("/etc/dicomsortd/secret", path)


class World:
    """The scenario and everything it saw."""

    def __init__(self, build, cache, seed):
        self.build = build
        self.cache = cache
        self.seed = seed
        self.rng = random.Random(seed)
        self.run_dir = None
        self.root = None
        self.machine = None
        self.stage = None
        self.counter = 0
        self.expected = {}         # sop -> Expect (stored)
        self.quarantine_expected = []  # (label, sha)
        self.processed_expected = []   # sha of each source moved
        self.problems = []         # timed-out waits, in order
        self.aborted = None        # traceback when the scenario stopped
        self.kills = 0
        self.manual_starts = 0
        self.auto_restarts = 0
        self.kills_busy = 0  # kills while the drop folder held files
        self.facts = {}
        self.t0 = time.monotonic()

    # ---- paths, seen from the host (the container's root file system) ----

    def host(self, path):
        return self.root / path.lstrip("/")

    def files_below(self, path):
        """Relative names of everything but folders below path."""
        top = self.host(path)
        out = []
        for dirpath, dirnames, filenames in os.walk(top):
            for name in filenames:
                out.append(os.path.relpath(os.path.join(dirpath, name), top))
        return sorted(out)

    def files_below_in_machine(self, path):
        """files_below() for a folder on a file system mounted inside the
        container, which the host's view of the root does not show."""
        r = self.machine.sh("find %s -mindepth 1 ! -type d -printf '%%P\\n'"
                            % path)
        return sorted(line for line in r.stdout.splitlines() if line)

    def problem(self, text):
        log("PROBLEM: " + text)
        self.problems.append(text)

    # ---- setting up ----

    def setup(self):
        deb_dir = self.cache / ("deb-%d" % os.getpid())
        try:
            deb = build_deb(self.build, deb_dir)
            self.run_dir = prepare_run_root(self.cache, deb)
            self.root = self.run_dir / "root"
            shutil.copy(deb, self.host("/tmp"))
        finally:
            shutil.rmtree(deb_dir, ignore_errors=True)
        self.stage = self.run_dir / "stage"
        self.stage.mkdir()
        with chroot_mounts(self.root):
            t = time.monotonic()
            r = chroot(self.root, "cd /tmp && apt-get install -y -q "
                       "--no-install-recommends ./dicomsortd_*.deb && "
                       "rm -f /tmp/dicomsortd_*.deb")
            log("apt-get install ./%s: %.1f s" % (deb.name,
                                                 time.monotonic() - t))
            self.facts["apt_output"] = r.stdout[-2000:]
            for user, _ in (MEMBER, CARELESS):
                chroot(self.root, "useradd --no-create-home --shell /bin/sh "
                       "--user-group --groups dicomsortd %s" % user)
        self.host(TABLE).write_text(
            "".join("%s,%s\n" % kv for kv in MAPPED.items()))
        self.host(TABLE).chmod(0o644)
        self.machine = Machine(self.root, binds_ro=[(self.stage, "/stage")],
                               log_path=self.run_dir / "nspawn.log")
        t = time.monotonic()
        state = self.machine.boot()
        log("container booted (%s) in %.1f s" % (state, time.monotonic() - t))
        self.machine.sh(
            "mount -t tmpfs -o size=256m,mode=0750,uid=$(id -u dicomsortd),"
            "gid=$(id -g dicomsortd) dicomsort-processed %s" % PROCESSED)
        self.facts["processed_fstype"] = self.machine.sh(
            "stat -f -c %%T %s" % PROCESSED).stdout.strip()
        # hold on a file system of its own too: a release then copies and
        # links, which raises no inotify event the watch acts on.
        self.machine.sh(
            "mkdir -p %s && mount -t tmpfs -o size=64m,mode=0750,"
            "uid=$(id -u dicomsortd),gid=$(id -g dicomsortd) "
            "dicomsort-hold %s" % (HOLD, HOLD))
        self.facts["hold_fstype"] = self.machine.sh(
            "stat -f -c %%T %s" % HOLD).stdout.strip()

    def teardown(self):
        try:
            if self.machine is not None:
                self.machine.poweroff()
        finally:
            if self.run_dir is not None:
                remove_tree(self.run_dir)

    # ---- the unit ----

    def unit(self):
        r = self.machine.sh("systemctl show dicomsortd.service -p ActiveState "
                            "-p SubState -p MainPID -p StatusText -p NRestarts "
                            "-p Result -p ExecMainStatus -p ExecMainCode",
                            check=False, timeout=60)
        return dict(line.split("=", 1) for line in r.stdout.splitlines()
                    if "=" in line)

    def check_config(self):
        r = self.machine.sh("dicomsortd --check-config -c %s" % CONF,
                            check=False)
        if r.returncode != 0:
            raise ContainerError("dicomsortd --check-config rejects the "
                                 "suite's configuration:\n%s%s"
                                 % (r.stdout, r.stderr))

    def start(self, verb="start"):
        self.check_config()
        r = self.machine.sh("systemctl %s dicomsortd" % verb, check=False,
                            timeout=180)
        if r.returncode != 0:
            raise ContainerError("systemctl %s dicomsortd failed: %s\n%s"
                                 % (verb, r.stderr, self.journal_tail()))
        log("dicomsortd %sed: %s" % (verb, self.unit().get("StatusText")))

    def journal_tail(self, n=60):
        return self.machine.sh("journalctl -u dicomsortd --no-pager -n %d"
                               % n, check=False).stdout

    def journal(self, *matches):
        self.machine.sh("journalctl --sync", check=False)
        r = self.machine.sh("journalctl -u dicomsortd -o json --no-pager %s"
                            % " ".join(matches), timeout=120)
        return [json.loads(line) for line in r.stdout.splitlines()
                if line.startswith("{")]

    def kill_and_recover(self):
        old = self.unit().get("MainPID")
        busy = bool(self.files_below(INCOMING))
        self.machine.sh("systemctl kill -s KILL dicomsortd")
        self.kills += 1
        self.kills_busy += busy
        deadline = time.monotonic() + 120
        started = False
        while time.monotonic() < deadline:
            u = self.unit()
            pid = u.get("MainPID", "0")
            if u.get("ActiveState") == "active" and pid not in ("0", old):
                self.auto_restarts += 0 if started else 1
                return
            # Restart=on-failure brings it back after RestartSec; if systemd
            # gave up (failed, inactive), an admin would start it.
            if u.get("ActiveState") in ("failed", "inactive") and not started:
                log("after kill %d the unit is %s/%s: starting it"
                    % (self.kills, u.get("ActiveState"), u.get("SubState")))
                self.machine.sh("systemctl reset-failed dicomsortd",
                                check=False)
                self.start()
                self.manual_starts += 1
                started = True
            time.sleep(0.3)
        raise ContainerError("dicomsortd did not come back within 120 s of "
                             "kill %d: %s\n%s" % (self.kills, self.unit(),
                                                  self.journal_tail()))

    # ---- files ----

    def dicom(self, patient, phase, series, who, rel, pid_out=None,
              expect=True):
        """Stage one new DICOM file; returns (stage name, bytes)."""
        self.counter += 1
        ds = gendicom.make_dataset(
            patient_id=patient, patient_name="Doe^Sys%d" % self.counter,
            charset="ascii", study_index=phase, series_number=series,
            instance_number=self.counter, rows=32, cols=32, seed=7)
        name = "f%05d.dcm" % self.counter
        gendicom.write(ds, str(self.stage / name))
        data = (self.stage / name).read_bytes()
        if expect:
            e = Expect(str(ds.SOPInstanceUID), data,
                       sha256(bytes(ds.PixelData)), patient,
                       pid_out or patient, phase, rel, who)
            self.expected[e.sop] = e
            if phase == 2:
                self.processed_expected.append(e.sha)
        return name, data

    def raw(self, data, label):
        """Stage bytes that must end in quarantine."""
        self.counter += 1
        name = "r%05d.bin" % self.counter
        (self.stage / name).write_bytes(data)
        self.quarantine_expected.append((label, sha256(data)))
        return name

    def truncated(self, patient, phase):
        name, data = self.dicom(patient, phase, 9, "member", "", expect=False)
        return self.raw(data[:len(data) * 6 // 10], "truncated")

    def drop_script(self, files, umask, pace=0.0):
        """files: (stage name, relative destination). Half of them are
        written under a .part name and renamed, as transfer tools do."""
        lines = ["umask %04o" % umask, "cd %s" % INCOMING]
        for i, (name, rel) in enumerate(files):
            src, dst = shlex.quote("/stage/" + name), shlex.quote(rel)
            if "/" in rel:
                lines.append("mkdir -p %s" % shlex.quote(os.path.dirname(rel)))
            if i % 2:
                lines.append("cat %s > %s.part && mv %s.part %s"
                             % (src, dst, dst, dst))
            else:
                lines.append("cat %s > %s" % (src, dst))
            if pace:
                lines.append("sleep %.2f" % pace)
        return "\n".join(lines) + "\n"

    def drop(self, files, writer, pace=0.0, background=False):
        user, umask = writer
        script = self.drop_script(files, umask, pace)
        if background:
            return self.machine.popen(script, user=user,
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self.machine.sh(script, user=user, timeout=300)
        return None

    def batch(self, tag, phase, n):
        """n new files of mapped patients: the member writes into a fresh
        folder (never one the daemon may be cleaning up), the careless
        writer into the top of the drop folder."""
        member, careless = [], []
        for i in range(n):
            patient = sorted(MAPPED)[i % 2]
            pid_out = MAPPED[patient] if phase == 2 else patient
            if i % 3 == 2:
                rel = "%s_c%02d.dcm" % (tag, i)
                careless.append((self.dicom(patient, phase, 2, "careless",
                                            rel, pid_out)[0], rel))
            else:
                rel = "%s/IM%04d.dcm" % (tag, i)
                member.append((self.dicom(patient, phase, 1, "member", rel,
                                          pid_out)[0], rel))
        return member, careless

    # ---- waits ----

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred():
                return True
            time.sleep(0.3)
        self.problem("%s: not within %d s" % (what, timeout))
        return False

    def wait_drained(self, what, timeout=300, quiet_s=4.0, stall_s=120):
        """Until the drop folder holds no file, STATUS says nothing is
        queued and neither has changed for quiet_s. Gives up early when
        nothing moves at all for stall_s (a daemon retrying for ever)."""
        deadline = time.monotonic() + timeout
        last = progress = None
        since = moved = time.monotonic()
        u, left = {}, []
        while time.monotonic() < deadline:
            u, left = self.unit(), self.files_below(INCOMING)
            status = u.get("StatusText", "")
            key = (status, u.get("MainPID"), tuple(left))
            queued = re.search(r"queued (\d+)", status)
            busy = left or (queued and queued.group(1) != "0") or \
                u.get("ActiveState") != "active"
            if busy or key != last:
                last, since = key, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                log("%s: drained (%s)" % (what, status))
                return True
            # Progress: files leaving, or outcomes counted; not the retries.
            now_progress = (tuple(left), u.get("MainPID"),
                            status.split(", retries")[0])
            if now_progress != progress:
                progress, moved = now_progress, time.monotonic()
            elif time.monotonic() - moved >= stall_s:
                break
            time.sleep(0.5)
        self.problem("%s: not drained (gave up after %.0f s, %.0f s without "
                     "progress): %d files left in the drop folder %s, unit "
                     "%s/%s, STATUS %r" % (
                         what, timeout - max(0, deadline - time.monotonic()),
                         time.monotonic() - moved, len(left), left[:5],
                         u.get("ActiveState"), u.get("SubState"),
                         u.get("StatusText")))
        return False

    def sorted_names(self):
        return {os.path.basename(p) for p in self.files_below(SORTED)}

    # ---- the phases ----

    def kill_cycles(self, phase, first_tag):
        """KILLS_PER_PHASE times: writers drop a batch in the background,
        the daemon is SIGKILLed at a random moment of it (while files
        arrive, settle or are being filed), and comes back."""
        for k in range(KILLS_PER_PHASE):
            member, careless = self.batch("%s%d" % (first_tag, k), phase, 12)
            # Files keep arriving for about 2 s, and each is taken
            # settle_ms after its last write: a kill in the first 2.5 s
            # finds files arriving, settling or being filed.
            writers = [self.drop(member, MEMBER, pace=0.25, background=True),
                       self.drop(careless, CARELESS, pace=0.5,
                                 background=True)]
            # The moment of the kill is what is random here; nothing is
            # asserted on timing.
            time.sleep(self.rng.uniform(0.2, 2.5))
            self.kill_and_recover()
            for w in writers:
                out, err = w.communicate(timeout=300)
                if w.returncode != 0:
                    raise ContainerError("a writer failed: %s" % err)
            log("kill %d done (%s)" % (self.kills,
                                       self.unit().get("StatusText")))

    def phase1(self):
        self.host(CONF).write_text(PHASE1_CONF)
        self.start()
        # The member makes a shared folder first, the careless writer uses it.
        member, careless = self.batch("p1a", 1, 18)
        self.drop(member, MEMBER)
        self.drop(careless, CARELESS)
        shared = [(self.dicom("SYSA01", 1, 3, "careless", "p1shared/S%d.dcm" % i)
                   [0], "p1shared/S%d.dcm" % i) for i in range(4)]
        self.machine.sh("umask 0007; mkdir %s/p1shared" % INCOMING,
                        user=MEMBER[0])
        self.drop(shared, CARELESS)
        # Bad input.
        self.drop([(self.raw(b"not a DICOM file, a note from the scanner "
                             b"room\n" * 20, "not DICOM"), "notes.txt"),
                   (self.truncated("SYSA01", 1), "p1bad/trunc.dcm")], MEMBER)
        # A name clash in sorted: the same relative name twice, different
        # images of one series.
        for i in range(2):
            rel = "p1clash/IM0001.dcm"
            self.drop([(self.dicom("SYSB02", 1, 4, "member", rel)[0], rel)],
                      MEMBER)
            self.wait(lambda: not self.host(INCOMING + "/" + rel).exists(),
                      90, "phase 1 clash: source %d of %s taken" % (i + 1, rel))
        # The careless writer's own folder (mode 2755): the daemon can read
        # and store the files but not remove them until the admin makes the
        # folder group-writable.
        own = [(self.dicom("SYSB02", 1, 5, "careless", "p1own/OWN%d.dcm" % i)
                [0], "p1own/OWN%d.dcm" % i) for i in range(2)]
        self.drop(own, CARELESS)
        self.wait(lambda: {"OWN0.dcm", "OWN1.dcm"} <= self.sorted_names(),
                  90, "careless writer's own folder: both files stored")
        own_sops = [e.sop for e in self.expected.values()
                    if e.rel.startswith("p1own/")]
        # Records are written when the output is durable, whatever happens
        # to the source: give the loop a moment to log them.
        self.wait(lambda: self.stored_records_for(own_sops) >= 2, 30,
                  "careless writer's own folder: 'stored' records before the "
                  "sources can be removed")
        try:
            self.facts["own_folder_mode"] = oct(
                self.host(INCOMING + "/p1own").stat().st_mode & 0o7777)
        except OSError as e:
            self.facts["own_folder_mode"] = str(e)
        self.facts["own_left_before_fix"] = [
            r for r in self.files_below(INCOMING) if r.startswith("p1own/")]
        self.facts["own_stored_records_before_fix"] = \
            self.stored_records_for(own_sops)
        # The admin's fix (the folder may be gone if nothing was left).
        self.machine.sh("chmod g+w %s/p1own" % INCOMING, check=False)
        self.wait_drained("phase 1 before the kills")
        self.kill_cycles(1, "p1k")
        self.wait_drained("phase 1 after the kills")

    def stored_records_for(self, sops):
        recs = self.journal("DICOMSORTD_EVENT=stored")
        return sum(1 for r in recs
                   if r.get("DICOMSORTD_SOP_INSTANCE_UID") in sops)

    def phase2(self):
        self.host(CONF).write_text(PHASE2_CONF)
        self.start("restart")
        u = self.unit()
        self.facts["service_processed_fstype"] = self.machine.sh(
            "nsenter -t %s -m stat -f -c %%T %s"
            % (u.get("MainPID"), PROCESSED), check=False).stdout.strip()
        member, careless = self.batch("p2a", 2, 9)
        self.drop(member, MEMBER)
        self.drop(careless, CARELESS)
        self.drop([(self.truncated("SYSB02", 2), "p2bad/trunc.dcm")], MEMBER)
        # A name clash in processed.
        rel = "p2clash/IM0001.dcm"
        for i in range(2):
            self.drop([(self.dicom("SYSA01", 2, 4, "member", rel,
                                   MAPPED["SYSA01"])[0], rel)], MEMBER)
            if not self.wait(lambda: not self.host(INCOMING + "/" + rel)
                             .exists(), 90, "phase 2 clash: source %d of %s "
                             "moved to processed" % (i + 1, rel)):
                break  # a second drop would overwrite the first source
        # Hold, then reload.
        held = [(self.dicom(HELD_ID, 2, 6, "member", "p2hold/H%d.dcm" % i,
                            HELD_NEW)[0], "p2hold/H%d.dcm" % i)
                for i in range(4)]
        self.drop(held, MEMBER)
        self.wait(lambda: len(self.files_below_in_machine(HOLD)) >= 4 and not any(
            r.startswith("p2hold/") for r in self.files_below(INCOMING)),
            90, "four files of an unknown patient held")
        self.facts["held_before_reload"] = len(self.files_below_in_machine(HOLD))
        self.facts["held_outputs_before_reload"] = len(
            self.files_below(SORTED + "/" + HELD_NEW)) \
            if self.host(SORTED + "/" + HELD_NEW).exists() else 0
        with open(self.host(TABLE), "a") as f:
            f.write("%s,%s\n" % (HELD_ID, HELD_NEW))
        self.machine.sh("systemctl reload dicomsortd", timeout=120)
        self.wait(lambda: not self.files_below_in_machine(HOLD), 120,
                  "held files released after the reload")
        self.wait_drained("phase 2 after the reload")
        self.kill_cycles(2, "p2k")
        self.wait_drained("phase 2 after the kills")

    def stop(self):
        t = time.monotonic()
        r = self.machine.sh("systemctl stop dicomsortd", check=False,
                            timeout=120)
        u = self.unit()
        self.facts["stop"] = {"rc": r.returncode, "stderr": r.stderr,
                              "seconds": round(time.monotonic() - t, 1),
                              "ActiveState": u.get("ActiveState"),
                              "Result": u.get("Result"),
                              "ExecMainStatus": u.get("ExecMainStatus"),
                              "NRestarts": u.get("NRestarts")}
        log("systemctl stop: %s" % self.facts["stop"])

    # ---- phase 3: dicomsortd@a and dicomsortd@b ----

    def inst_unit(self, name):
        r = self.machine.sh("systemctl show dicomsortd@%s.service -p "
                            "ActiveState -p SubState -p MainPID -p Result "
                            "-p StatusText -p ReadWritePaths -p "
                            "RequiresMountsFor" % name, check=False,
                            timeout=60)
        return dict(line.split("=", 1) for line in r.stdout.splitlines()
                    if "=" in line)

    def inst_journal(self, name, *matches):
        self.machine.sh("journalctl --sync", check=False)
        r = self.machine.sh("journalctl -u dicomsortd@%s -o json --no-pager "
                            "%s" % (name, " ".join(matches)), timeout=120)
        return [json.loads(line) for line in r.stdout.splitlines()
                if line.startswith("{")]

    def instances(self):
        f = self.facts["instances"] = {"expected": {}, "sorted": {}}
        for name, (profile, pid_in, pid_out) in INSTANCES.items():
            self.machine.sh(
                "install -d -o dicomsortd -g dicomsortd -m 0750 %s %s %s && "
                "install -d -o dicomsortd -g dicomsortd -m 2770 %s" % (
                    inst_dir(name), inst_dir(name, "sorted"),
                    inst_dir(name, "quarantine"),
                    inst_dir(name, "incoming")))
            self.host("/etc/dicomsortd/%s.conf" % name).write_text(
                instance_conf(name))
            if profile in ("seed", "basic"):
                table = self.host("/etc/dicomsortd/%s.csv" % name)
                table.write_text("%s,%s\n" % (pid_in, pid_out))
                table.chmod(0o644)
            if profile == "basic":
                self.machine.sh(readme_secret_command(secret_path(name)))
        # The generator runs at daemon-reload; nothing else writes these.
        self.machine.sh("systemctl daemon-reload", timeout=120)
        for name in INSTANCES:
            r = self.machine.sh("cat %s" % (GENERATED % name), check=False)
            f["dropin_" + name] = r.stdout if r.returncode == 0 else None
            self.machine.sh("dicomsortd --check-config -c "
                            "/etc/dicomsortd/%s.conf" % name)
        units = " ".join("dicomsortd@%s" % n for n in INSTANCES)
        r = self.machine.sh("systemctl start %s" % units,
                            check=False, timeout=180)
        if r.returncode != 0:
            raise ContainerError("systemctl start %s: %s\n%s" % (
                                 units, r.stderr, self.machine.sh(
                                     "journalctl -u 'dicomsortd@*' -n 60 "
                                     "--no-pager", check=False).stdout))
        for name in INSTANCES:
            f["unit_" + name] = self.inst_unit(name)
        pids = {n: f["unit_" + n].get("MainPID") for n in INSTANCES}
        # a's sandbox: b's folders are read-only in it.
        r = self.machine.sh("nsenter -t %s -m touch %s/.probe"
                            % (pids["a"], inst_dir("b", "sorted")),
                            check=False)
        f["a_writes_b"] = (r.returncode, r.stderr.strip())
        # Both at once: each writer drops into its instance's folder.
        writers = []
        for name, (profile, pid_in, pid_out) in INSTANCES.items():
            files = []
            for i in range(INSTANCE_FILES):
                self.counter += 1
                ds = gendicom.make_dataset(
                    patient_id=pid_in, patient_name="Doe^Inst%d"
                    % self.counter, charset="ascii", study_index=3,
                    series_number=1, instance_number=i + 1, rows=16,
                    cols=16, seed=7)
                stage = "i%05d.dcm" % self.counter
                gendicom.write(ds, str(self.stage / stage))
                f["expected"][str(ds.SOPInstanceUID)] = name
                f.setdefault("dropped_" + name, []).append(
                    (str(ds.PatientName), str(ds.StudyInstanceUID),
                     str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)))
                files.append((stage, "s%d/IM%04d.dcm" % (self.counter, i)))
            script = self.drop_script(files, MEMBER[1]).replace(
                "cd %s" % INCOMING, "cd %s" % inst_dir(name, "incoming"))
            writers.append(self.machine.popen(
                script, user=MEMBER[0], stdout=subprocess.PIPE,
                stderr=subprocess.PIPE))
        for w in writers:
            _, err = w.communicate(timeout=300)
            if w.returncode != 0:
                raise ContainerError("an instance's writer failed: %s" % err)
        for name in INSTANCES:
            self.wait(lambda n=name: len(self.files_below(
                inst_dir(n, "sorted"))) >= INSTANCE_FILES and not
                self.files_below(inst_dir(n, "incoming")), 180,
                "dicomsortd@%s sorted its %d files" % (name, INSTANCE_FILES))
        for name in INSTANCES:
            got = f["sorted"][name] = []
            for rel in self.files_below(inst_dir(name, "sorted")):
                if rel.startswith(".") or "/." in rel:
                    continue  # the state folder
                ds = pydicom.dcmread(str(self.host(
                    inst_dir(name, "sorted") + "/" + rel)))
                got.append((rel, str(ds.SOPInstanceUID),
                            str(ds.PatientID), str(ds.PatientName)))
            f["incoming_left_" + name] = self.files_below(
                inst_dir(name, "incoming"))
            if INSTANCES[name][0] == "basic":
                self.audit_identity(name)
            f["quarantine_" + name] = self.files_below(
                inst_dir(name, "quarantine"))
        self.receiver()
        # Reload a, and only a.
        self.machine.sh("systemctl reload dicomsortd@a", timeout=120)
        self.wait(lambda: self.inst_journal("a", "DICOMSORTD_EVENT=reload"),
                  60, "dicomsortd@a recorded its reload")
        time.sleep(2)  # room for a wrong record at b to show (not asserted on)
        f["reload_a"] = [(r.get("_PID"), r.get("MESSAGE")) for r in
                         self.inst_journal("a", "DICOMSORTD_EVENT=reload")]
        f["reload_b"] = [(r.get("_PID"), r.get("MESSAGE")) for r in
                         self.inst_journal("b", "DICOMSORTD_EVENT=reload")]
        f["reloading_b"] = [r.get("MESSAGE") for r in self.inst_journal(
            "b") if "reload" in str(r.get("MESSAGE", "")).lower()]
        f["pids_before"] = pids
        f["pids_after"] = {n: self.inst_unit(n).get("MainPID")
                           for n in INSTANCES}
        f["status_files"] = self.machine.sh(
            "ls /run/dicomsortd", check=False).stdout.split()
        t = time.monotonic()
        r = self.machine.sh("systemctl stop %s" % units,
                            check=False, timeout=120)
        f["stop"] = {"rc": r.returncode, "stderr": r.stderr,
                     "seconds": round(time.monotonic() - t, 1)}
        for name in INSTANCES:
            u = self.inst_unit(name)
            f["stop_" + name] = (u.get("ActiveState"), u.get("Result"))
        f["status_files_after_stop"] = self.machine.sh(
            "ls /run/dicomsortd", check=False).stdout.split()
        log("instances: %s" % json.dumps(
            {k: v for k, v in f.items() if k.startswith(("stop", "reload",
                                                         "pids"))}))

    def receiver(self):
        """RECEIVER writes files into b's drop folder as a receiver under
        the daemon's account would: each written whole in a folder of b's
        that is not watched (its inode noted there), then renamed into
        the drop folder; the last is given a second name first, so it has
        two links when the daemon reads it (its first name stays where it
        was written). Records what became of each."""
        name = RECEIVER_INSTANCE
        r = self.facts["receiver"] = {"files": {}}
        staging = inst_dir(name, "rx-staging")
        incoming = inst_dir(name, "incoming") + "/rx"
        self.machine.sh("install -d -o dicomsortd -g dicomsortd -m 2770 %s"
                        % staging)
        write = ["umask %04o" % RECEIVER[1]]
        drop = ["mkdir -p %s" % incoming]
        for i in range(RECEIVER_FILES + 1):
            self.counter += 1
            ds = gendicom.make_dataset(
                patient_id=RECEIVER_PID, patient_name="Doe^Recv%d"
                % self.counter, charset="ascii", study_index=4,
                series_number=1, instance_number=i + 1, rows=16, cols=16,
                seed=7)
            stage = "x%05d.dcm" % self.counter
            gendicom.write(ds, str(self.stage / stage))
            fname = "IM%04d.dcm" % i
            linked = i == RECEIVER_FILES
            r["files"][str(ds.SOPInstanceUID)] = {
                "name": fname, "linked": linked,
                "sha": sha256((self.stage / stage).read_bytes())}
            write.append("cat /stage/%s > %s/%s" % (stage, staging, fname))
            src = "%s/%s" % (staging, fname)
            if linked:
                # A second name, moved in: the drop folder sees it arrive
                # (IN_MOVED_TO) with two links. (A plain ln into it raises
                # no event that says "finished"; the periodic rescan would
                # find it minutes later.)
                drop.append("ln %s %s.rx" % (src, src))
                src += ".rx"
            drop.append("mv %s %s/%s" % (src, incoming, fname))
        out = self.machine.sh("\n".join(write + [
            "stat -c '%%n %%i %%h %%U %%G' %s/*" % staging] + drop) + "\n",
            user=RECEIVER[0]).stdout
        seen = {}
        for line in out.splitlines():
            path, ino, links, user, group = line.split()
            seen[os.path.basename(path)] = (int(ino), int(links), user,
                                            group)
        for e in r["files"].values():
            e["ino"], e["links_written"], e["user"], e["group"] = \
                seen[e["name"]]
        sops = set(r["files"])
        out_dir = inst_dir(name, "sorted") + "/" + RECEIVER_PID

        def done():
            recs = [x for x in self.inst_journal(name) if
                    x.get("DICOMSORTD_SOP_INSTANCE_UID") in sops]
            return (not self.files_below(inst_dir(name, "incoming")) and
                    self.host(out_dir).is_dir() and
                    len(self.files_below(out_dir)) >= len(sops) and
                    sum(x.get("DICOMSORTD_EVENT") == "disposed"
                        for x in recs) >= len(sops))
        self.wait(done, 180, "dicomsortd@%s took the %d files of a receiver "
                  "running as %s" % (name, len(sops), RECEIVER[0]))
        # The container's view of what is there now.
        r["outputs"] = []
        listing = self.machine.sh(
            "find %s -type f -printf '%%i %%n %%u %%g %%P\\n' 2>/dev/null "
            "|| true" % out_dir).stdout
        for line in listing.splitlines():
            ino, links, user, group, rel = line.split(None, 4)
            path = self.host(out_dir + "/" + rel)
            data = path.read_bytes()
            try:
                sop = str(pydicom.dcmread(str(path)).SOPInstanceUID)
            except Exception as e:  # noqa: BLE001 - reported by a test
                sop = "unreadable: %s" % e
            r["outputs"].append({"rel": RECEIVER_PID + "/" + rel,
                                 "ino": int(ino), "links": int(links),
                                 "user": user, "group": group,
                                 "sha": sha256(data), "sop": sop})
        r["staging_left"] = self.machine.sh(
            "stat -c '%%n %%i %%h' %s/* 2>/dev/null || true"
            % staging).stdout.splitlines()
        r["incoming_left"] = self.files_below(inst_dir(name, "incoming"))
        r["private_names"] = self.machine.sh(
            "find %s -name '%s*'"
            % (inst_dir(name), TMP_PREFIX)).stdout.split()
        r["records"] = [
            {k: x.get("DICOMSORTD_" + k.upper(), "") for k in (
                "event", "sop_instance_uid", "dest", "disposal",
                "source_sha256", "source_owner")}
            for x in self.inst_journal(name)
            if x.get("DICOMSORTD_SOP_INSTANCE_UID") in sops]
        log("receiver as %s: %d outputs, records %s" % (
            RECEIVER[0], len(r["outputs"]),
            sorted((x["event"], x["disposal"]) for x in r["records"])))

    def audit_identity(self, name):
        """Every identifying value dropped at a de-identifying instance,
        searched for in its outputs (bytes and paths) and in everything
        its journal holds (every field of every record)."""
        f = self.facts["instances"]
        pid_in = INSTANCES[name][1]
        values = {pid_in}
        for pname, study, series, sop in f["dropped_" + name]:
            values |= {pname, study, series, sop}
            values |= {part for part in pname.split("^") if len(part) > 3}
        leaks = []
        for rel in self.files_below(inst_dir(name, "sorted")):
            data = self.host(inst_dir(name, "sorted") + "/" + rel).read_bytes()
            leaks += ["%s: %r in the bytes" % (rel, v) for v in values
                      if v.encode() in data]
            leaks += ["%r in the path %s" % (v, rel) for v in values
                      if v in rel]
        journal = json.dumps(self.inst_journal(name))
        leaks += ["%r in the journal of dicomsortd@%s" % (v, name)
                  for v in values if v in journal]
        f["leaks_" + name] = leaks
        f["journal_records_" + name] = journal.count("DICOMSORTD_EVENT")

    # ---- what is left ----

    def collect(self):
        f = self.facts
        f["incoming_left"] = self.files_below(INCOMING)
        f["hold_left"] = self.files_below_in_machine(HOLD)
        f["processed_underneath"] = self.files_below(PROCESSED)
        outputs = {}
        f["unreadable_outputs"] = []
        for rel in self.files_below(SORTED):
            if os.path.basename(rel).startswith(TMP_PREFIX):
                continue
            try:
                ds = pydicom.dcmread(str(self.host(SORTED + "/" + rel)))
                outputs.setdefault(str(ds.SOPInstanceUID), []).append(
                    (rel, str(ds.get("PatientID", "")),
                     str(ds.get("PatientName", "")),
                     str(ds.get("PatientBirthDate", "")),
                     sha256(bytes(ds.PixelData))))
            except Exception as e:  # noqa: BLE001 - reported by a test
                f["unreadable_outputs"].append("%s: %s" % (rel, e))
        f["outputs"] = outputs
        quarantined = {}
        for rel in self.files_below(QUARANTINE):
            path = self.host(QUARANTINE + "/" + rel)
            if rel.endswith(".reason") or \
                    os.path.basename(rel).startswith(TMP_PREFIX):
                continue
            reason = pathlib.Path(str(path) + ".reason")
            quarantined.setdefault(sha256(path.read_bytes()), []).append(
                (rel, reason.read_text(errors="replace")
                 if reason.exists() else None))
        f["quarantined"] = quarantined
        f["quarantine_files"] = self.files_below(QUARANTINE)
        r = self.machine.sh("find %s -type f -exec sha256sum {} +" % PROCESSED)
        f["processed"] = [line.split(None, 1) for line in
                          r.stdout.splitlines() if line.strip()]
        r = self.machine.sh("find /srv /tmp /var/tmp /var/lib -name '%s*' "
                            "2>/dev/null || true" % TMP_PREFIX)
        f["temp_files"] = r.stdout.split()
        records = self.journal()
        f["events"] = {}
        for rec in records:
            ev = rec.get("DICOMSORTD_EVENT")
            if isinstance(ev, str) and ev:
                f["events"][ev] = f["events"].get(ev, 0) + 1
        stored = self.journal("DICOMSORTD_EVENT=stored")
        f["stored_records"] = len(stored)
        f["stored_record_sops"] = [r.get("DICOMSORTD_SOP_INSTANCE_UID")
                                   for r in stored]
        f["stored_record_owners"] = [
            r.get("DICOMSORTD_SOURCE_OWNER", "") for r in stored]
        logs = self.build / "system-logs"
        logs.mkdir(exist_ok=True)
        (logs / "journal-dicomsortd.txt").write_text(self.machine.sh(
            "journalctl -u dicomsortd --no-pager -o short-precise",
            check=False).stdout)
        (logs / "journal-all.txt").write_text(self.machine.sh(
            "journalctl --no-pager -o short-precise", check=False).stdout)

    def figures(self):
        f = self.facts
        stored = len(self.expected)
        report_figure(
            "system: seed %d; %d files dropped (%d DICOM, %d bad); %d kills "
            "(%d with files in the drop folder; %d restarts by systemd, %d by hand); %d stored records for %d "
            "files stored (%d outputs); %d quarantined (%d expected); events "
            "%s; %d problems; %.0f s" % (
                self.seed, stored + len(self.quarantine_expected), stored,
                len(self.quarantine_expected), self.kills, self.kills_busy,
                self.auto_restarts, self.manual_starts,
                f.get("stored_records", -1), stored,
                sum(len(v) for v in f.get("outputs", {}).values()),
                sum(len(v) for v in f.get("quarantined", {}).values()),
                len(self.quarantine_expected),
                json.dumps(f.get("events", {}), sort_keys=True),
                len(self.problems), time.monotonic() - self.t0))
        r = f.get("receiver", {})
        kept = {o["ino"] for o in r.get("outputs", [])}
        report_figure(
            "system: receiver as %s into dicomsortd@%s: %d of %d files "
            "renamed into place (the output is the inode written), %d of 1 "
            "with two links copied" % (
                RECEIVER[0], RECEIVER_INSTANCE,
                sum(e["ino"] in kept for e in r.get("files", {}).values()
                    if not e["linked"]), RECEIVER_FILES,
                sum(e["ino"] not in kept and any(
                    o["sop"] == s for o in r.get("outputs", []))
                    for s, e in r.get("files", {}).items() if e["linked"])))


@pytest.fixture(scope="module")
def world():
    if os.geteuid() != 0:
        pytest.fail("the system suite must run as root (it boots a container "
                    "with systemd-nspawn)")
    build = build_dir()
    cache = pathlib.Path(os.environ.get("DICOMSORT_SYSTEM_CACHE") or
                         build / "system-cache")
    seed = int(os.environ.get("DICOMSORT_SYSTEM_SEED") or
               time.time_ns() % 1000000)
    log("seed %d (DICOMSORT_SYSTEM_SEED=%d replays it), cache %s"
        % (seed, seed, cache))
    w = World(build, cache, seed)
    try:
        try:
            w.setup()
        except ContainerError as e:
            pytest.fail("cannot run dicomsortd in a booted Debian 12 "
                        "container here: %s" % e)
        try:
            w.phase1()
            w.phase2()
            w.stop()
            w.instances()
        except Exception:  # noqa: BLE001 - every test reports it
            w.aborted = traceback.format_exc()
            log("scenario aborted:\n" + w.aborted)
        w.collect()
        w.figures()
    finally:
        w.teardown()
    yield w


def completed(w):
    assert w.aborted is None, "the scenario stopped early:\n" + w.aborted


# ---- the checks ----

def test_processed_is_another_file_system_the_service_sees(world):
    completed(world)
    assert world.facts["processed_fstype"] == "tmpfs"
    assert world.facts["hold_fstype"] == "tmpfs"
    assert world.facts["service_processed_fstype"] == "tmpfs", (
        "inside the unit's sandbox %s is %r, not the tmpfs mounted before "
        "the start" % (PROCESSED, world.facts["service_processed_fstype"]))
    assert world.facts["processed_underneath"] == [], (
        "files went to the folder under the tmpfs")


def test_queue_drained(world):
    completed(world)
    assert world.problems == [], "\n".join(world.problems)


def test_every_dicom_file_stored_exactly_once(world):
    completed(world)
    outputs = world.facts["outputs"]
    assert world.facts["unreadable_outputs"] == []
    wrong = []
    for sop, e in sorted(world.expected.items()):
        found = outputs.get(sop, [])
        if len(found) != 1:
            wrong.append("%s (%s, %s, phase %d): %d outputs %s"
                         % (sop, e.rel, e.who, e.phase, len(found),
                            [f[0] for f in found]))
            continue
        rel, pid, name, birth, pixel = found[0]
        if pixel != e.pixel_sha:
            wrong.append("%s: pixel data differs in %s" % (sop, rel))
        if pid != e.pid_out or not rel.startswith(e.pid_out + "/"):
            wrong.append("%s: PatientID %r in %s, expected %r"
                         % (sop, pid, rel, e.pid_out))
        if e.phase == 2 and (name != "ANONYMIZED" or birth != ""):
            wrong.append("%s: seed profile not applied (%r, %r)"
                         % (sop, name, birth))
    extra = sorted(set(outputs) - set(world.expected))
    assert not wrong and not extra, (
        "%d of %d files not stored exactly once:\n%s\nunexpected outputs: %s"
        % (len(wrong), len(world.expected), "\n".join(wrong[:40]), extra))


def test_stored_records_match_files_stored(world):
    completed(world)
    records = world.facts["stored_records"]
    sops = world.facts["stored_record_sops"]
    missing = sorted(set(world.expected) - set(sops))
    twice = sorted({s for s in sops if sops.count(s) > 1})
    assert records == len(world.expected), (
        "journalctl -u dicomsortd DICOMSORTD_EVENT=stored gives %d records "
        "for %d files stored; without a record: %d %s; recorded twice: %s; "
        "all events: %s" % (records, len(world.expected), len(missing),
                            missing[:10], twice, world.facts["events"]))


def test_records_name_the_sending_account(world):
    """Issue 10 section 5: the owner is the account that wrote the file,
    which a user namespace (PrivateUsers=) would turn into nobody. The only
    exception: a held file released across file systems is a copy the
    service made, so it is the service's own."""
    completed(world)
    owners = world.facts["stored_record_owners"]
    names = [o.partition("(")[2].rstrip(")") for o in owners]
    assert {MEMBER[0], CARELESS[0]} <= set(names), sorted(set(owners))
    assert set(names) <= {MEMBER[0], CARELESS[0], "dicomsortd"}, \
        sorted(set(owners))
    assert names.count("dicomsortd") <= 4, sorted(set(owners))


def test_bad_files_quarantined_once_with_a_reason(world):
    completed(world)
    quarantined = world.facts["quarantined"]
    wrong = []
    for label, sha in world.quarantine_expected:
        copies = quarantined.get(sha, [])
        if len(copies) != 1:
            wrong.append("%s: %d copies %s" % (label, len(copies),
                                              [c[0] for c in copies]))
        elif not copies[0][1] or "reason:" not in copies[0][1]:
            wrong.append("%s: %s has no reason sidecar (%r)"
                         % (label, copies[0][0], copies[0][1]))
    extra = {k: v for k, v in quarantined.items()
             if k not in {s for _, s in world.quarantine_expected}}
    assert not wrong and not extra, (
        "%s\nunexpected in quarantine: %s\nall: %s"
        % ("\n".join(wrong), extra, world.facts["quarantine_files"]))


def test_processed_keeps_every_moved_source_once(world):
    completed(world)
    have = [sha for sha, _ in world.facts["processed"]]
    missing = [s for s in world.processed_expected if have.count(s) != 1]
    extra = [p for sha, p in world.facts["processed"]
             if sha not in world.processed_expected]
    assert not missing and not extra, (
        "%d of %d sources not in processed exactly once; unexpected: %s; "
        "processed holds %s" % (len(missing), len(world.processed_expected),
                                extra, world.facts["processed"]))


def test_held_files_released_by_reload(world):
    completed(world)
    assert world.facts.get("held_before_reload") == 4
    assert world.facts.get("held_outputs_before_reload") == 0
    assert world.facts["hold_left"] == []
    released = [e for e in world.expected.values() if e.pid_in == HELD_ID]
    assert len(released) == 4
    assert all(len(world.facts["outputs"].get(e.sop, [])) == 1
               for e in released)


def test_stored_is_recorded_before_the_source_can_go(world):
    """The careless writer's own folder is not group-writable: the outputs
    are durable while the sources cannot be removed yet (issue 10 section
    2: what happened to the output and to the source are two facts)."""
    completed(world)
    assert world.facts["own_folder_mode"] == "0o2755"
    assert len(world.facts["own_left_before_fix"]) == 2
    assert world.facts["own_stored_records_before_fix"] == 2


def test_nothing_left_in_the_drop_folder(world):
    completed(world)
    assert world.facts["incoming_left"] == []


def test_no_temp_files_left(world):
    completed(world)
    assert world.facts["temp_files"] == []


def test_kills_and_clean_stop(world):
    completed(world)
    assert world.kills == 2 * KILLS_PER_PHASE
    stop = world.facts["stop"]
    assert stop["rc"] == 0, stop
    assert stop["ActiveState"] == "inactive", stop
    assert stop["Result"] == "success", stop


# ---- phase 3: dicomsortd@.service (issue 15 item 1) ----

def test_instances_get_their_sandbox_from_the_generator(world):
    completed(world)
    f = world.facts["instances"]
    for name in INSTANCES:
        dropin = f["dropin_" + name]
        assert dropin is not None, (
            "%s not there after systemctl daemon-reload" % (GENERATED % name))
        assert 'ReadWritePaths="-%s"' % inst_dir(name) in dropin, dropin
        other = inst_dir("b" if name == "a" else "a")
        assert other not in dropin, dropin
        # systemd read it: the unit's own view of its sandbox.
        u = f["unit_" + name]
        assert inst_dir(name) in u.get("ReadWritePaths", ""), u
        assert inst_dir(name, "incoming") in u.get("RequiresMountsFor",
                                                    ""), u
    code, err = f["a_writes_b"]
    assert code != 0 and "Read-only file system" in err, f["a_writes_b"]


def test_two_instances_sort_their_own_folders(world):
    completed(world)
    f = world.facts["instances"]
    for name in INSTANCES:
        assert f["unit_" + name].get("ActiveState") == "active", \
            f["unit_" + name]
        assert f["incoming_left_" + name] == []
        assert f["quarantine_" + name] == []
    for name, (profile, pid_in, pid_out) in INSTANCES.items():
        got = f["sorted"][name]
        want = sorted(s for s, n in f["expected"].items() if n == name)
        if profile == "basic":
            # New UIDs: one output per file dropped, none of the old ones.
            assert len({g[1] for g in got}) == len(want) == len(got), got
            assert not set(want) & {g[1] for g in got}, got
        else:
            assert sorted(g[1] for g in got) == want, got
        for rel, sop, pid, pname in got:
            assert pid == pid_out and rel.startswith(pid_out + "/"), got
            # The profile is the instance's own: seed at a, none at b,
            # basic at c (PatientName becomes the new PatientID).
            if profile == "seed":
                assert pname == "ANONYMIZED", got
            elif profile == "basic":
                assert pname == pid_out, got
            else:
                assert pname.startswith("Doe^Inst"), got


def test_basic_instance_leaks_no_identity_under_the_unit(world):
    """A privacy audit of dicomsortd@c (profile basic, the secret made
    with the README's command): no dropped name, ID or UID in its
    outputs' bytes, its paths or anything its journal holds."""
    completed(world)
    f = world.facts["instances"]
    for name, (profile, _, _) in INSTANCES.items():
        if profile != "basic":
            continue
        assert f["journal_records_" + name] > 0, "no records to audit"
        assert f["leaks_" + name] == [], f["leaks_" + name]


# ---- phase 3: a receiver under the daemon's own account (issue 14) ----

def receiver_outputs(world):
    """The receiver's files, each with the outputs holding its SOP."""
    r = world.facts["receiver"]
    return r, {sop: [o for o in r["outputs"] if o["sop"] == sop]
               for sop in r["files"]}


def test_receiver_files_renamed_into_place_by_the_unit(world):
    """rename_unchanged through the shipped unit's sandbox: every file the
    daemon's own account wrote (one link, its group, b's file system) is
    stored once, byte for byte, and the output is the very inode written
    (renamed, not copied); nothing is left in the drop folder, no claim
    or temp name anywhere below b's folder."""
    completed(world)
    r, found = receiver_outputs(world)
    renamed = {s: e for s, e in r["files"].items() if not e["linked"]}
    assert len(renamed) == RECEIVER_FILES
    wrong = []
    for sop, e in sorted(renamed.items()):
        # What the daemon read: the account's file, of the output's group,
        # with one link.
        assert (e["user"], e["group"], e["links_written"]) == (
            "dicomsortd", "dicomsortd", 1), e
        outs = found[sop]
        if len(outs) != 1:
            wrong.append("%s: %d outputs %s" % (e["name"], len(outs), outs))
            continue
        o = outs[0]
        if o["sha"] != e["sha"]:
            wrong.append("%s: other bytes in %s" % (e["name"], o["rel"]))
        if o["ino"] != e["ino"]:
            wrong.append("%s: copied, not renamed: %s is inode %d, the "
                         "source was %d" % (e["name"], o["rel"], o["ino"],
                                            e["ino"]))
        if not o["rel"].endswith("/" + e["name"]) or o["links"] != 1:
            wrong.append("%s: %s, %d links" % (e["name"], o["rel"],
                                               o["links"]))
    unreadable = [o for o in r["outputs"] if o["sop"] not in r["files"]]
    assert not wrong and not unreadable, "\n".join(wrong) + "\nnot ours " \
        "or unreadable: %s" % unreadable
    assert r["incoming_left"] == [], r["incoming_left"]
    assert r["private_names"] == [], r["private_names"]


def test_receiver_file_with_two_links_is_copied(world):
    """A file of the same account with a second link is never renamed
    (the inode would stay reachable from outside the output): it is
    stored by a copy, and the drop folder's link goes; the other stays."""
    completed(world)
    r, found = receiver_outputs(world)
    [(sop, e)] = [(s, e) for s, e in r["files"].items() if e["linked"]]
    outs = found[sop]
    assert len(outs) == 1, outs
    assert outs[0]["sha"] == e["sha"], outs
    assert outs[0]["ino"] != e["ino"] and outs[0]["links"] == 1, (outs, e)
    # Only the link outside the drop folder is left, unchanged.
    assert r["staging_left"] == ["%s/%s %d 1" % (
        inst_dir(RECEIVER_INSTANCE, "rx-staging"), e["name"], e["ino"])], \
        r["staging_left"]


def test_receiver_files_recorded(world):
    """Each of the receiver's files: one `stored` record naming its output
    with the SHA-256 of the bytes sent and the sending account, and one
    `disposed` record: "moved into the output" for a renamed source,
    "deleted" for the copied one. Nothing else (no retry, no duplicate)."""
    completed(world)
    r, found = receiver_outputs(world)
    wrong = []
    for sop, e in sorted(r["files"].items()):
        recs = [x for x in r["records"] if x["sop_instance_uid"] == sop]
        stored = [x for x in recs if x["event"] == "stored"]
        disposed = [x for x in recs if x["event"] == "disposed"]
        want = "deleted" if e["linked"] else "moved into the output"
        if len(stored) != 1 or len(disposed) != 1 or \
                len(recs) != 2:
            wrong.append("%s: records %s" % (e["name"], recs))
            continue
        s = stored[0]
        if [s["dest"]] != [o["rel"] for o in found[sop]] or \
                s["source_sha256"] != e["sha"] or \
                s["source_owner"].partition("(")[2] != "dicomsortd)":
            wrong.append("%s: stored record %s" % (e["name"], s))
        if disposed[0]["disposal"] != want:
            wrong.append("%s: disposal %r, expected %r"
                         % (e["name"], disposed[0]["disposal"], want))
    assert not wrong, "\n".join(wrong)


def test_reload_reaches_that_instance_only(world):
    completed(world)
    f = world.facts["instances"]
    before, after = f["pids_before"], f["pids_after"]
    assert before == after, (before, after)  # a reload, not a restart
    assert f["reload_a"], "no reload record from dicomsortd@a"
    assert {pid for pid, _ in f["reload_a"]} == {before["a"]}, f["reload_a"]
    assert f["reload_b"] == [], f["reload_b"]
    assert f["reloading_b"] == [], f["reloading_b"]


def test_instances_keep_their_own_status_and_stop_cleanly(world):
    completed(world)
    f = world.facts["instances"]
    for name in INSTANCES:
        assert "%s.status" % name in f["status_files"], f["status_files"]
        # RuntimeDirectoryPreserve=yes: a stop removes no one's status.
        assert "%s.status" % name in f["status_files_after_stop"], \
            f["status_files_after_stop"]
        assert f["stop_" + name] == ("inactive", "success"), f
    assert f["stop"]["rc"] == 0, f["stop"]
