"""The systemd generator behind dicomsortd@.service (issue 15 item 1).

dicomsortd-generator reads every /etc/dicomsortd/NAME.conf with the daemon's
own loader and writes dicomsortd@NAME.service.d/50-folders.conf: the
instance's sandbox follows its configuration. Here it runs on a temporary
configuration folder (DICOMSORTD_GENERATOR_CONF_DIR, for tests only) and
writes into a temporary unit folder, as systemd would have it do; then
systemd-analyze reads the template with what it wrote. A bad configuration
must cost its own instance only, and never the boot: exit status 0.
"""

import os
import pathlib
import re
import shutil
import subprocess

import pytest

from binaries import built_binary

REPO = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = REPO / "systemd" / "dicomsortd@.service"
PLAIN = REPO / "systemd" / "dicomsortd.service"
DROPIN = "50-folders.conf"


def generator_bin():
    return built_binary("dicomsortd-generator")


def conf(folders, extra=""):
    lines = ['%s = "%s";' % kv for kv in folders.items()]
    return "\n".join(lines) + "\n" + extra


def generate(tmp_path, confs, argc=3):
    """Run the generator on confs {file name: text}; (rc, stderr, out)."""
    cdir = tmp_path / "etc-dicomsortd"
    cdir.mkdir()
    for name, text in confs.items():
        (cdir / name).write_text(text)
    out = tmp_path / "generator"
    out.mkdir()
    env = dict(os.environ, DICOMSORTD_GENERATOR_CONF_DIR=str(cdir))
    env.pop("SYSTEMD_SCOPE", None)  # log to stderr, not the kernel log
    dirs = [str(out), str(tmp_path / "early"), str(tmp_path / "late")]
    r = subprocess.run([generator_bin()] + dirs[:argc], env=env,
                       capture_output=True, text=True, timeout=60)
    return r.returncode, r.stderr, out


def dropins(out):
    return sorted(str(p.relative_to(out)) for p in out.rglob("*")
                  if p.is_file())


def settings(path):
    """{key: [value, ...]} of a unit file, comments left out."""
    got = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            got.setdefault(key, []).append(value)
    return got


def words(value):
    return re.findall(r'"((?:[^"\\]|\\.)*)"', value)


A = {"input": "/srv/dicom/a/incoming", "output": "/srv/dicom/a/sorted",
     "quarantine": "/srv/dicom/a/quarantine"}
B = {"input": "/data/b/in", "output": "/data/b/out",
     "quarantine": "/data/b/q", "processed": "/data/b/done",
     "hold": "/data/b/hold"}
B_EXTRA = ('after_success = "move";\nprofile = "seed";\n'
           'correlation_table = "/etc/dicomsortd/b.csv";\n'
           'deid = { unknown_id = "hold"; };\n')


def test_one_dropin_per_instance_with_its_folders(tmp_path):
    rc, err, out = generate(tmp_path, {"a.conf": conf(A),
                                       "b.conf": conf(B, B_EXTRA)})
    assert rc == 0 and err == "", err
    assert dropins(out) == ["dicomsortd@a.service.d/" + DROPIN,
                            "dicomsortd@b.service.d/" + DROPIN]
    a = settings(out / "dicomsortd@a.service.d" / DROPIN)
    # One entry, their common parent: one bind mount, moves are renames.
    assert [words(v) for v in a["ReadWritePaths"]] == [["-/srv/dicom/a"]]
    assert words(a["RequiresMountsFor"][0]) == list(A.values())
    b = settings(out / "dicomsortd@b.service.d" / DROPIN)
    assert [words(v) for v in b["ReadWritePaths"]] == [["-/data/b"]]
    # processed and hold are the instance's folders too.
    assert sorted(words(b["RequiresMountsFor"][0])) == sorted(B.values())
    text = (out / "dicomsortd@a.service.d" / DROPIN).read_text()
    assert "/etc-dicomsortd/a.conf" in text  # says where it came from
    assert "/data/b" not in text  # nothing of another instance


def test_no_common_parent_below_a_system_folder(tmp_path):
    """A parent of "/" or of a system folder would open other services'
    data: each folder then gets an entry of its own."""
    spread = {"input": "/in", "output": "/var/lib/x/out",
              "quarantine": "/var/lib/x/out/q"}
    top = {"input": "/srv/in", "output": "/srv/out",
           "quarantine": "/srv/q"}
    rc, err, out = generate(tmp_path, {"spread.conf": conf(spread),
                                       "top.conf": conf(top)})
    assert rc == 0 and err == "", err
    s = settings(out / "dicomsortd@spread.service.d" / DROPIN)
    # The quarantine below the output rides on the output's mount.
    assert words(s["ReadWritePaths"][0]) == ["-/in", "-/var/lib/x/out"]
    t = settings(out / "dicomsortd@top.service.d" / DROPIN)
    assert words(t["ReadWritePaths"][0]) == ["-/srv/in", "-/srv/out",
                                             "-/srv/q"]


def test_paths_are_normalised_and_quoted(tmp_path):
    odd = {"input": "/data/x y/./in", "output": "/data/x y/out//100%",
           "quarantine": "/data/x y/tmp/../q"}
    rc, err, out = generate(tmp_path, {"odd.conf": conf(odd)})
    assert rc == 0 and err == "", err
    s = settings(out / "dicomsortd@odd.service.d" / DROPIN)
    assert words(s["ReadWritePaths"][0]) == ["-/data/x y"]
    # "%" is a specifier in a unit file: doubled.
    assert "/data/x y/out//100%%" in words(s["RequiresMountsFor"][0])


def test_metrics_and_status_elsewhere_get_their_folder(tmp_path):
    extra = ('metrics_file = "/var/lib/metrics/a.prom";\n'
             'status_file = "/run/dicomsortd/a.status";\n')
    rc, err, out = generate(tmp_path, {"a.conf": conf(A, extra)})
    assert rc == 0 and err == "", err
    s = settings(out / "dicomsortd@a.service.d" / DROPIN)
    # The status file's folder is the template's RuntimeDirectory already.
    assert [words(v) for v in s["ReadWritePaths"]] == [
        ["-/srv/dicom/a"], ["-/var/lib/metrics"]]


def test_bad_configurations_get_nothing_and_the_rest_goes_on(tmp_path):
    confs = {
        "a.conf": conf(A),
        "syntax.conf": 'input = "/x"\noutput = ;\n',
        "missing.conf": conf({"input": "/srv/dicom/m/in"}),
        "typo.conf": conf(A, "setle_ms = 5;\n"),
        "bad name.conf": conf(A),
        # a folder that is a whole system folder: never opened
        "broad.conf": conf({"input": "/srv/x/in", "output": "/var/lib/",
                            "quarantine": "/srv/x/q"}),
        "dicomsortd.conf": conf(A),   # the plain unit's, no instance
        "notes.txt": "not a configuration",
    }
    rc, err, out = generate(tmp_path, confs)
    assert rc == 0, err
    assert dropins(out) == ["dicomsortd@a.service.d/" + DROPIN]
    for name in ("syntax", "missing", "typo"):
        assert re.search(r"dicomsortd@%s\.service gets no folders: \S*%s"
                         r"\.conf" % (name, name), err), err
    assert "bad name.conf: no unit for it" in err
    assert re.search(r"dicomsortd@broad\.service gets no folders: \S*"
                     r"broad\.conf: the folder /var/lib is a system folder",
                     err), err
    assert "dicomsortd@dicomsortd" not in err + "".join(dropins(out))
    assert len(err.splitlines()) == 5, err


def test_no_configuration_folder_is_no_error(tmp_path):
    out = tmp_path / "generator"
    out.mkdir()
    env = dict(os.environ, DICOMSORTD_GENERATOR_CONF_DIR=str(
        tmp_path / "absent"))
    env.pop("SYSTEMD_SCOPE", None)
    r = subprocess.run([generator_bin(), str(out), str(out), str(out)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr, dropins(out)) == (0, "", [])


def test_template_reads_the_instance_conf_and_grants_no_folder():
    s = settings(TEMPLATE)
    assert s["ExecStart"] == ["/usr/sbin/dicomsortd -c /etc/dicomsortd/%i.conf"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # Only the optional metrics folder: the folders come from the drop-in.
    assert s["ReadWritePaths"] == ["-/var/lib/prometheus/node-exporter"]
    # Instances share /run/dicomsortd: a stop must not remove it.
    assert s["RuntimeDirectory"] == ["dicomsortd"]
    assert s["RuntimeDirectoryPreserve"] == ["yes"]
    # Every other setting is the plain unit's.
    plain = settings(PLAIN)
    for key in set(plain) | set(s):
        if key in ("ExecStart", "ReadWritePaths", "Description"):
            continue
        assert s.get(key) == plain.get(key), key


def unit_tree(tmp_path, out):
    """A unit folder holding the template (ExecStart: a binary that exists
    here) and the generator's drop-ins, as systemd would see them."""
    units = tmp_path / "units"
    units.mkdir()
    start = os.environ.get("DICOMSORTD_BIN") or "/bin/true"
    text = TEMPLATE.read_text().replace("ExecStart=/usr/sbin/dicomsortd ",
                                        "ExecStart=%s " % start)
    if not os.access("/bin/kill", os.X_OK):
        text = text.replace("ExecReload=/bin/kill ", "ExecReload=/bin/true ")
    (units / TEMPLATE.name).write_text(text)
    for d in out.iterdir():
        shutil.copytree(d, units / d.name)
    return units


def test_template_with_the_dropins_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    odd = {"input": "/data/x y/in", "output": "/data/x y/out 50%",
           "quarantine": "/q"}
    rc, err, out = generate(tmp_path, {"a.conf": conf(A),
                                       "odd.conf": conf(odd)})
    assert rc == 0 and err == "", err
    units = unit_tree(tmp_path, out)
    env = dict(os.environ, SYSTEMD_UNIT_PATH="%s:" % units)
    r = subprocess.run([analyze, "verify", "--man=no",
                        "dicomsortd@a.service", "dicomsortd@odd.service"],
                       env=env, cwd=units, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    # Exposure: the instance no worse than the plain unit.
    exposure = {}
    for unit in ("dicomsortd@a.service", str(PLAIN)):
        r = subprocess.run([analyze, "security", "--offline=true", unit],
                           env=env, cwd=units, capture_output=True,
                           text=True, timeout=120)
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)",
                      r.stdout)
        assert m, r.stdout + r.stderr
        exposure[unit] = float(m.group(1))
    print("exposure: %s" % exposure)
    assert exposure["dicomsortd@a.service"] <= exposure[str(PLAIN)]


def test_unwritable_unit_folder_is_logged_never_fatal(tmp_path):
    """systemd's generator folder is a fresh tmpfs; should writing fail
    anyway, the boot goes on: a log line per instance, exit status 0."""
    cdir = tmp_path / "etc-dicomsortd"
    cdir.mkdir()
    (cdir / "a.conf").write_text(conf(A))
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    env = dict(os.environ, DICOMSORTD_GENERATOR_CONF_DIR=str(cdir))
    env.pop("SYSTEMD_SCOPE", None)
    r = subprocess.run([generator_bin(), str(not_a_dir), str(not_a_dir),
                        str(not_a_dir)], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"^dicomsortd-generator: dicomsortd@a\.service gets no "
                     r"folders: \S+: Not a directory$", r.stderr), r.stderr


def test_completed_spool_elsewhere_is_in_the_sandbox(tmp_path):
    """study_idle_s manifests go to `completed`; outside the instance's
    other folders it must be writable too, or no manifest is ever
    written under the template."""
    rc, err, out = generate(tmp_path, {"a.conf": conf(A, (
        'study_idle_s = 60;\ncompleted = "/srv/spool/a-completed";\n'))})
    assert rc == 0 and err == "", err
    a = settings(out / "dicomsortd@a.service.d" / DROPIN)
    paths = [w for v in a["ReadWritePaths"] for w in words(v)]
    assert any("/srv/spool/a-completed".startswith(p.lstrip("-"))
               for p in paths), paths
    assert "/srv/spool/a-completed" in words(a["RequiresMountsFor"][0])
