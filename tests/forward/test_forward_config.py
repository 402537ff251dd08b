"""`forward` in dicomsortd.conf: validation with file:line, and
--check-config --probe against real peers on loopback (issue 13 item 1)."""

import os
import pathlib
import subprocess

import pytest

from fwdlib import (base_config, closed_port, daemon_helpers, dimse_dest,
                    forward_text, stow_dest)


def check(tmp_path, dests, probe=False, extra=""):
    cfg = base_config(tmp_path)
    (tmp_path / "in").mkdir(exist_ok=True)
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(daemon_helpers.conf_text(cfg) + extra +
                    (forward_text(dests) if dests is not None else ""))
    argv = [daemon_helpers.daemon_bin(), "-c", str(conf), "--check-config"]
    if probe:
        argv.append("--probe")
    env = dict(os.environ)
    env["DICOMSORTD_CHECK_UNIT"] = str(tmp_path / "no-such.service")
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                       env=env)
    return p.returncode, p.stdout + p.stderr, conf


def test_valid_destinations(tmp_path):
    rc, out, _ = check(tmp_path, [
        dimse_dest("pacs", 104, "PACS"),
        stow_dest("cloud", "https://example.invalid/dicomweb/studies",
                  associations=4, files_per_association=20)])
    assert rc == 0, out


@pytest.mark.parametrize("dest,words", [
    ({"host": "127.0.0.1", "port": 104, "called_ae": "A",
      "calling_ae": "B"}, "needs a 'name'"),
    ({"name": "../x", "host": "h", "port": 1, "called_ae": "A",
      "calling_ae": "B"}, "'name'"),
    ({"name": "p", "host": "h", "port": 0, "called_ae": "A",
      "calling_ae": "B"}, "'port' must be between 1 and 65535"),
    ({"name": "p", "host": "h", "port": 104, "called_ae": "A" * 17,
      "calling_ae": "B"}, "'called_ae' must be an AE title"),
    ({"name": "p", "host": "h", "port": 104, "called_ae": "A\\B",
      "calling_ae": "B"}, "'called_ae' must be an AE title"),
    ({"name": "p", "host": "h", "called_ae": "A", "calling_ae": "B"},
     "needs 'port'"),
    ({"name": "p", "host": "h", "port": 104, "called_ae": "A",
      "calling_ae": "B", "stow_url": "http://x/studies"}, "not both"),
    ({"name": "p", "stow_url": "ftp://x/studies"}, "http:// or https://"),
    ({"name": "p", "stow_url": "https://x/studies", "called_ae": "A"},
     "does not take this"),
    ({"name": "p", "stow_url": "https://x/s", "token_file": "t",
      "basic_auth_file": "b"}, "exclude each other"),
    ({"name": "p", "host": "h", "port": 104, "called_ae": "A",
      "calling_ae": "B", "tls": True}, "needs 'tls_ca_file'"),
    ({"name": "p", "host": "h", "port": 104, "called_ae": "A",
      "calling_ae": "B", "associations": 0}, "'associations' must be"),
    ({"name": "p", "host": "h", "port": 104, "called_ae": "A",
      "calling_ae": "B", "retry_min_ms": 5000, "retry_max_ms": 1000},
     "less than 'retry_min_ms'"),
    ({"name": "p", "host": "h", "port": 104, "called_ae": "A",
      "calling_ae": "B", "colour": "red"}, "unknown setting 'colour'"),
])
def test_invalid_destination_named_with_file_and_line(tmp_path, dest, words):
    rc, out, conf = check(tmp_path, [dest])
    assert rc == 2, out
    assert words in out, out
    assert "%s:" % conf in out, out
    # The forward list is the last line of the file: the error points there.
    line = len(conf.read_text().splitlines())
    assert "%s:%d:" % (conf, line) in out, out


def test_duplicate_names(tmp_path):
    rc, out, _ = check(tmp_path, [dimse_dest("p", 104, "A"),
                                  dimse_dest("p", 105, "B")])
    assert rc == 2 and "two destinations have this name" in out, out


def test_forward_must_be_a_list_of_groups(tmp_path):
    rc, out, _ = check(tmp_path, None, extra='forward = "pacs";\n')
    assert rc == 2 and "'forward' must be a list of groups" in out, out


def test_credential_file_readable_by_others_is_an_error(tmp_path):
    token = tmp_path / "token"
    token.write_text("abc\n")
    token.chmod(0o644)
    rc, out, _ = check(tmp_path, [stow_dest("cloud", "https://x/studies",
                                            token_file=str(token))])
    assert rc == 2 and "readable by others" in out, out
    token.chmod(0o600)
    rc, out, _ = check(tmp_path, [stow_dest("cloud", "https://x/studies",
                                            token_file=str(token))])
    assert rc == 0, out


def test_probe_answers_and_refusals(tmp_path, orthanc):
    rc, out, _ = check(tmp_path, [
        dimse_dest("pacs", orthanc.dicom_port, orthanc.aet),
        stow_dest("web", orthanc.stow_url)], probe=True)
    assert rc == 0, out
    assert "forward pacs: C-ECHO" in out and "forward web: HTTP OPTIONS" in out
    rc, out, _ = check(tmp_path, [
        dimse_dest("down", closed_port(), "NOBODY")], probe=True)
    assert rc == 2, out
    assert "forward down:" in out and "error" in out, out


def test_probe_without_check_config_is_a_usage_error(tmp_path):
    p = subprocess.run([daemon_helpers.daemon_bin(), "--probe"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--check-config" in p.stderr


def test_check_config_warns_when_the_unit_has_no_network(tmp_path):
    """Under the shipped unit (PrivateNetwork=yes) a destination cannot be
    reached: a warning names the drop-in; with the drop-in and the peer in
    IPAddressAllow= there is none, and a peer missing there is named."""
    import shutil
    repo = pathlib.Path(os.environ["DICOMSORT_SOURCE_DIR"])
    unit = tmp_path / "dicomsortd.service"
    shutil.copy(repo / "systemd" / "dicomsortd.service", unit)
    cfg = base_config(tmp_path)
    (tmp_path / "in").mkdir(exist_ok=True)
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(daemon_helpers.conf_text(cfg) + forward_text(
        [dimse_dest("pacs", 104, "PACS", host="192.0.2.10")]))
    env = dict(os.environ, DICOMSORTD_CHECK_UNIT=str(unit))

    def run():
        p = subprocess.run([daemon_helpers.daemon_bin(), "-c", str(conf),
                            "--check-config"], capture_output=True,
                           text=True, timeout=60, env=env)
        return p.stdout + p.stderr
    out = run()
    assert "has no network (PrivateNetwork=yes)" in out, out
    assert "forward.conf.example" in out
    dropins = tmp_path / "dicomsortd.service.d"
    dropins.mkdir()
    shutil.copy(repo / "systemd" / "forward.conf.example",
                dropins / "forward.conf")
    out = run()
    assert "has no network" not in out, out
    assert "destination pacs: 192.0.2.10 is not in the unit's " \
        "IPAddressAllow=" not in out, out
    text = (dropins / "forward.conf").read_text().replace(
        "192.0.2.10", "192.0.2.99")
    (dropins / "forward.conf").write_text(text)
    out = run()
    assert "destination pacs: 192.0.2.10 is not in the unit's " \
        "IPAddressAllow=" in out, out
