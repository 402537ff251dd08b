"""dicomsortd --check-config checks what a start will meet (issue 10 §4).

Real files, real folders, a real throwaway system user (useradd, removed
afterwards): the folder checks run in a child switched to that user, as
they do for the unit's User=. Needs root for the user; skipped otherwise.
"""
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import uuid

import pytest

from conftest import base_config, conf_text, daemon_bin


def need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a throwaway user and switch to it")


@pytest.fixture
def svc_user():
    """A throwaway system user (and group of the same name)."""
    need_root()
    name = "dsck" + uuid.uuid4().hex[:8]
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                    "--shell", "/usr/sbin/nologin", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["groupdel", name], check=False,
                       stderr=subprocess.DEVNULL)


@pytest.fixture
def root():
    """A folder every user can traverse (pytest's tmp_path is 0700)."""
    d = pathlib.Path(tempfile.mkdtemp(prefix="dsck-"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def make_folders(root, owner=None, names=("in", "out", "quarantine")):
    for n in names:
        p = root / n
        p.mkdir(exist_ok=True)
        if owner:
            shutil.chown(p, owner, owner)


def write_conf(root, **overrides):
    conf = root / "dicomsortd.conf"
    conf.write_text(conf_text(base_config(root, **overrides)))
    return conf


def key_line(conf, key):
    """conf's line number of `key = ...`."""
    for i, line in enumerate(conf.read_text().splitlines(), 1):
        if re.match(r"\s*%s\s*=" % re.escape(key), line):
            return i
    raise AssertionError("%s not in %s" % (key, conf))


def check(conf, user=None):
    argv = [daemon_bin(), "--check-config", "-c", str(conf)]
    if user:
        argv += ["--user", user]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def findings(r, level):
    return [ln for ln in r.stderr.splitlines() if ": %s: " % level in ln]


def assert_names(conf, key, line):
    """A finding names the file, the key's line and the key."""
    assert line.startswith("%s:%d: %s: " % (conf, key_line(conf, key), key)), \
        line


def test_good_config_as_service_user(svc_user, root):
    make_folders(root, svc_user)
    conf = write_conf(root)
    r = check(conf, svc_user)
    assert r.returncode == 0, r.stderr
    assert "configuration is valid" in r.stdout
    assert findings(r, "error") == []
    for n in ("in", "out", "quarantine"):
        assert list((root / n).iterdir()) == []     # probes removed


def test_missing_input_is_an_error_and_not_created(svc_user, root):
    make_folders(root, svc_user, ("out", "quarantine"))
    conf = write_conf(root, input=root / "incomming")
    r = check(conf, svc_user)
    assert r.returncode == 2, r.stderr
    errs = [ln for ln in findings(r, "error") if "incomming" in ln]
    assert len(errs) == 1, r.stderr
    assert_names(conf, "input", errs[0])
    assert "does not exist" in errs[0]
    assert not (root / "incomming").exists()


def test_folder_that_is_a_file(svc_user, root):
    make_folders(root, svc_user, ("in", "out"))
    (root / "quarantine").write_text("not a folder\n")
    conf = write_conf(root)
    r = check(conf, svc_user)
    assert r.returncode == 2
    errs = [ln for ln in findings(r, "error") if "not a directory" in ln]
    assert len(errs) == 1, r.stderr
    assert_names(conf, "quarantine", errs[0])


def test_folder_not_writable_by_service_user(svc_user, root):
    make_folders(root, svc_user)
    os.chown(root / "out", 0, 0)          # root's, 0755: others read only
    (root / "out").chmod(0o755)
    conf = write_conf(root)
    r = check(conf, svc_user)
    assert r.returncode == 2
    errs = findings(r, "error")
    assert len(errs) == 1, r.stderr
    assert_names(conf, "output", errs[0])
    assert "not writable by user %s" % svc_user in errs[0]
    assert "mode 0755, owner root:root" in errs[0]


def test_unreadable_table_and_secret_for_service_user(svc_user, root):
    make_folders(root, svc_user)
    table = root / "ids.csv"
    table.write_text("PAT001,NEWA\n")
    secret = root / "secret"
    secret.write_bytes(os.urandom(32))
    for p in (table, secret):
        p.chmod(0o600)                    # root's: the user cannot read
    conf = write_conf(root, profile="basic", correlation_table=table,
                      deid={"secret": secret, "clean_descriptors": True,
                            "retain_long_full_dates": True})
    r = check(conf, svc_user)
    assert r.returncode == 2
    errs = findings(r, "error")
    assert len(errs) == 2, r.stderr
    assert_names(conf, "correlation_table", errs[0])
    assert "not readable by user %s" % svc_user in errs[0]
    assert errs[1].startswith("%s:" % conf) and "deid.secret" in errs[1]


def test_service_user_that_does_not_exist(root):
    need_root()
    make_folders(root)
    conf = write_conf(root)
    r = check(conf, "nosuchuser" + uuid.uuid4().hex[:6])
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "nosuchuser" in r.stderr


def test_rename_across_file_systems_says_moves_copy(svc_user, root):
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed")
    probe = subprocess.run(["unshare", "-m", "--propagation", "private",
                            "true"], capture_output=True, text=True)
    if probe.returncode != 0:       # a chroot whose / is not a mount point
        pytest.skip("unshare -m is not permitted here: "
                    + probe.stderr.strip())
    make_folders(root, svc_user, ("in", "out", "quarantine", "processed"))
    conf = write_conf(root, after_success="move",
                      processed=root / "processed")
    # processed on a file system of its own, in a private mount namespace
    script = ("mount -t tmpfs -o mode=0755 tmpfs %s && chown %s %s && "
              "exec %s --check-config -c %s --user %s"
              % (root / "processed", svc_user, root / "processed",
                 daemon_bin(), conf, svc_user))
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh",
                        "-c", script], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in findings(r, "note") if "will copy" in ln]
    assert len(notes) == 1, r.stderr
    assert_names(conf, "processed", notes[0])
    # on one file system, nothing to say
    r = check(conf, svc_user)
    assert r.returncode == 0 and "will copy" not in r.stderr, r.stderr


@pytest.mark.parametrize("key", ["quarantine", "processed", "hold", "input"])
def test_originals_not_inside_output(svc_user, root, key):
    make_folders(root, svc_user, ("in", "out", "quarantine", "processed",
                                  "hold"))
    nested = root / "out" / "sub"
    nested.mkdir()
    shutil.chown(nested, svc_user, svc_user)
    extra = {"after_success": "move", "processed": root / "processed",
             "deid": {"unknown_id": "hold"}, "hold": root / "hold",
             "profile": "seed", "correlation_table": root / "ids.csv"}
    (root / "ids.csv").write_text("A,B\n")
    extra[key if key != "input" else "input"] = nested
    conf = write_conf(root, **extra)
    r = check(conf, svc_user)
    assert r.returncode == 2, r.stderr
    errs = [ln for ln in findings(r, "error") if "is inside output" in ln]
    assert len(errs) == 1, r.stderr
    assert_names(conf, key, errs[0])


@pytest.mark.parametrize("where,level,text", [
    ("in/manifests", "error", "is inside input"),
    ("out/manifests", "warning", "manifests would sit among the sorted"),
    ("out/.dicomsortd-state/done", None, None),
    ("quarantine", "error", "same folder as quarantine"),
    ("manifests", None, None),
])
def test_completed_spool_placement(svc_user, root, where, level, text):
    """The study manifests' spool: inside input the daemon would take its
    own manifests as DICOM; inside output only under its state folder."""
    make_folders(root, svc_user, ("in", "out", "quarantine", "manifests"))
    target = root / where
    target.mkdir(parents=True, exist_ok=True)
    shutil.chown(target, svc_user, svc_user)
    conf = write_conf(root, study_idle_s=60, completed=target)
    r = check(conf, svc_user)
    lines = [ln for ln in r.stderr.splitlines() if "completed" in ln]
    if level is None:
        assert r.returncode == 0, r.stderr
        assert not [ln for ln in lines if "error" in ln or "warning" in ln], \
            r.stderr
        return
    found = [ln for ln in findings(r, level) if text in ln]
    assert len(found) == 1, r.stderr
    assert_names(conf, "completed", found[0])
    assert r.returncode == (2 if level == "error" else 0), r.stderr


def test_completed_not_checked_without_study_events(svc_user, root):
    make_folders(root, svc_user, ("in", "out", "quarantine"))
    (root / "in" / "manifests").mkdir()
    conf = write_conf(root, completed=root / "in" / "manifests")
    r = check(conf, svc_user)
    assert r.returncode == 0, r.stderr


def test_output_inside_input(svc_user, root):
    make_folders(root, svc_user, ("in", "quarantine"))
    (root / "in" / "sorted").mkdir()
    conf = write_conf(root, output=root / "in" / "sorted")
    r = check(conf, svc_user)
    # config.c refuses it already, as the start does
    assert r.returncode == 2
    assert "%s: output" % conf in r.stderr and "inside input" in r.stderr


@pytest.mark.parametrize("keyword,hint,private", [
    ("PatientId", "PatientID", True),       # a Siemens private namesake
    ("studydate", "StudyDate", False),
    ("SeriesNumbr", None, False),
])
def test_template_keywords_standard_only(root, keyword, hint, private):
    make_folders(root)
    conf = write_conf(root, layout="{%s}/{SeriesNumber}/" % keyword)
    r = check(conf)
    assert r.returncode == 2
    errs = [ln for ln in findings(r, "error") if "{%s}" % keyword in ln]
    assert len(errs) == 1, r.stderr
    assert_names(conf, "layout", errs[0])
    assert ("private dictionary entry" in errs[0]) == private
    if hint:
        assert "did you mean {%s}?" % hint in errs[0]
    else:
        assert "did you mean" not in errs[0]


def test_filename_template_checked_too(root):
    make_folders(root)
    conf = write_conf(root, filename="{sopinstanceuid}.dcm")
    r = check(conf)
    assert r.returncode == 2
    errs = findings(r, "error")
    assert_names(conf, "filename", errs[0])
    assert "did you mean {SOPInstanceUID}?" in errs[0]


def test_two_old_ids_one_new_id_is_a_warning_naming_both_lines(root):
    make_folders(root)
    table = root / "ids.csv"
    table.write_text("# old new\nSECRETOLD1,NEWA\nOTHER,NEWB\n"
                     "SECRETOLD2 NEWA\nOTHER,NEWB\n")
    conf = write_conf(root, profile="seed", correlation_table=table)
    r = check(conf, "root")
    warns = findings(r, "warning")
    assert len(warns) == 1, r.stderr
    assert_names(conf, "correlation_table", warns[0])
    assert "%s:2 and %s:4" % (table, table) in warns[0]
    assert "NEWA" in warns[0]
    assert "SECRETOLD" not in r.stderr + r.stdout     # old IDs are PHI
    assert not findings(r, "error") or os.geteuid() == 0


def test_basic_profile_with_layout_it_empties_warns(root):
    make_folders(root)
    secret = root / "secret"
    secret.write_bytes(os.urandom(32))
    secret.chmod(0o600)
    conf = write_conf(root, profile="basic", deid={"secret": secret})
    r = check(conf, "root")
    warns = findings(r, "warning")
    assert len(warns) == 2, r.stderr
    for w, kw in zip(warns, ("StudyDate", "SeriesDescription")):
        assert w.startswith("%s: layout (default): " % conf), w
        assert "{%s}" % kw in w
    assert "deid.clean_descriptors" in warns[1]
    # with the options that keep them: silent
    conf = write_conf(root, profile="basic", layout="{PatientID}/{StudyDate}/"
                      "{SeriesNumber}_{SeriesDescription}/",
                      deid={"secret": secret, "clean_descriptors": True,
                            "retain_long_full_dates": True})
    r = check(conf, "root")
    assert findings(r, "warning") == [], r.stderr


def write_unit(root, rw_lines, dropin=None, user=None):
    """A unit file like the shipped one, for DICOMSORTD_CHECK_UNIT."""
    src = pathlib.Path(os.environ.get("DICOMSORT_SOURCE_DIR", ".")) / \
        "systemd" / "dicomsortd.service"
    text = "".join(ln + "\n" for ln in src.read_text().splitlines()
                   if not ln.startswith(("ReadWritePaths=", "User=")))
    text = text.replace("[Service]\n", "[Service]\n" + "".join(
        "ReadWritePaths=%s\n" % v for v in rw_lines) +
        ("User=%s\n" % user if user else ""), 1)
    unit = root / "dicomsortd.service"
    unit.write_text(text)
    if dropin is not None:
        (root / "dicomsortd.service.d").mkdir()
        (root / "dicomsortd.service.d" / "50-site.conf").write_text(
            "[Service]\n" + dropin)
    return unit


def check_with_unit(conf, unit, user=None):
    env = dict(os.environ, DICOMSORTD_CHECK_UNIT=str(unit))
    argv = [daemon_bin(), "--check-config", "-c", str(conf)]
    if user:
        argv += ["--user", user]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env=env)


def test_folders_outside_the_units_read_write_paths(svc_user, root):
    make_folders(root, svc_user, ("in", "out", "quarantine", "processed"))
    conf = write_conf(root, after_success="move",
                      processed=root / "processed")
    # one parent covering all: nothing to say; the unit's User= is used
    unit = write_unit(root, [str(root)], user=svc_user)
    r = check_with_unit(conf, unit)
    assert r.returncode == 0, r.stderr
    assert "ReadWritePaths" not in r.stderr, r.stderr
    assert findings(r, "error") == [], r.stderr
    # the old layout: one entry per folder, processed forgotten
    unit.unlink()
    unit = write_unit(root, ["%s %s" % (root / "in", root / "out"),
                             "-%s" % (root / "quarantine")], user=svc_user)
    r = check_with_unit(conf, unit)
    assert r.returncode == 0, r.stderr
    warns = [ln for ln in findings(r, "warning") if "ReadWritePaths" in ln]
    assert len(warns) == 1, r.stderr
    assert_names(conf, "processed", warns[0])
    notes = [ln for ln in findings(r, "note") if "separate" in ln]
    assert len(notes) == 1, r.stderr            # input -> quarantine
    assert_names(conf, "quarantine", notes[0])
    assert "will copy" in notes[0]


def test_drop_in_resets_and_adds_read_write_paths(svc_user, root):
    make_folders(root, svc_user)
    conf = write_conf(root)
    unit = write_unit(root, ["/srv/dicom"],
                      dropin="ReadWritePaths=\nReadWritePaths=%s\n" % root)
    r = check_with_unit(conf, unit, svc_user)
    assert r.returncode == 0, r.stderr
    assert "ReadWritePaths" not in r.stderr, r.stderr
    # without the drop-in, /srv/dicom covers none of them
    shutil.rmtree(root / "dicomsortd.service.d")
    r = check_with_unit(conf, unit, svc_user)
    warns = [ln for ln in findings(r, "warning") if "ReadWritePaths" in ln]
    assert len(warns) == 3, r.stderr


def test_service_user_read_from_the_unit(root):
    need_root()
    make_folders(root)
    conf = write_conf(root)
    name = "nosuch" + uuid.uuid4().hex[:6]
    unit = write_unit(root, [str(root)], user=name)
    r = check_with_unit(conf, unit)
    assert r.returncode == 2
    assert "the service user %s does not exist" % name in r.stderr


def test_no_unit_and_no_default_user_checks_as_root_with_a_warning(root):
    """A build tree on a machine without the package: the default name was
    only a guess, so it is a warning, and the folders are checked as root."""
    need_root()
    import pwd
    try:
        pwd.getpwnam("dicomsortd")
        pytest.skip("a user dicomsortd exists here")
    except KeyError:
        pass
    make_folders(root)
    conf = write_conf(root, input=root / "missing")
    r = check_with_unit(conf, root / "no-such.service")
    warns = [ln for ln in findings(r, "warning") if "checked as root" in ln]
    assert len(warns) == 1, r.stderr
    errs = findings(r, "error")                 # the checks still ran
    assert len(errs) == 1 and "missing does not exist" in errs[0], r.stderr
    assert r.returncode == 2
    (root / "missing").mkdir()
    r = check_with_unit(conf, root / "no-such.service")
    assert r.returncode == 0, r.stderr
