"""What a start no longer does (issue 14): DCMTK's data dictionary is
parsed on first use, not at start - a run whose files all take the C path
never pays for it, a file that needs DCMTK still has it, whichever worker
comes first, with others parsing at the same instant - and a dictionary
that is not there still stops dicomsort, dicomsortd and --check-config at
start with a clear message, before any file is touched. libcurl is opened
only by a STOW-RS forward (tests/forward/test_stow.py), never linked."""

import os
import pathlib
import shutil
import subprocess

import pytest

from binaries import built_binary
from conftest import RUN_TIMEOUT, check_sanitizers

DICTIONARY_ERROR = "the DICOM data dictionary could not be loaded"


def tree(root):
    """{relative path: bytes} of every file below root."""
    root = pathlib.Path(root)
    return {str(p.relative_to(root)): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def make_inputs(gen, folder, explicit, implicit):
    """explicit files the C path reads (Explicit VR Little Endian) and
    implicit ones only DCMTK reads (Implicit VR: every VR, so every value
    of the layout, comes from the dictionary), interleaved by name so
    that the workers meet both kinds from the start."""
    folder.mkdir(parents=True)
    kinds = []
    while explicit or implicit:
        if explicit:
            kinds.append("explicit_le")
            explicit -= 1
        if implicit:
            kinds.append("implicit_le")
            implicit -= 1
    for i, kind in enumerate(kinds):
        ds = gen.make_dataset(patient_id=f"LAZY{i % 3}", seed=100 + i,
                              charset=("latin1" if i % 4 == 1 else "ascii"),
                              study_index=i % 2, instance_number=i + 1,
                              rows=8, cols=8, syntax=kind)
        gen.write(ds, folder / f"f{i:03d}.dcm", form="part10")


@pytest.fixture
def lazy_input(gen, tmp_path):
    folder = tmp_path / "in"
    make_inputs(gen, folder, explicit=16, implicit=16)
    return folder


def dictionary_opened(strace_log):
    """DCMTK's fopen() of the dictionary (the start-up check opens it with
    O_NONBLOCK|O_CLOEXEC, and only looks)."""
    return any('dicom.dic", O_RDONLY)' in line
               for line in strace_log.read_text().splitlines())


@pytest.mark.parametrize("jobs", [1, 4])
def test_mixed_run_reads_dcmtk_files_with_the_lazy_dictionary(
        run_dicomsort, lazy_input, tmp_path, jobs):
    """C-path and DCMTK files in one run, several workers: the tree is
    the one every file parsed by DCMTK from its load on gives (the
    test-only DICOMSORT_TEST_BACKEND=dcmtk), and the implicit-VR files are
    filed under their PatientID, read through the dictionary."""
    out = tmp_path / f"out{jobs}"
    ref = tmp_path / f"ref{jobs}"
    r = run_dicomsort("--dicomin", lazy_input, "--dicomout", out,
                      "--jobs", jobs, "--quiet")
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, DICOMSORT_TEST_BACKEND="dcmtk")
    r = run_dicomsort("--dicomin", lazy_input, "--dicomout", ref,
                      "--jobs", 1, "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    got, want = tree(out), tree(ref)
    assert len(got) == 32
    assert got == want
    assert {p.split("/")[0] for p in got} == {"LAZY0", "LAZY1", "LAZY2"}


def test_c_path_run_never_loads_the_dictionary(run_dicomsort, gen,
                                               tmp_path):
    """Explicit VR files only, sorted and --move'd: DCMTK's dictionary is
    never read (its files are only checked); implicit VR ones: it is."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    src = tmp_path / "in"
    make_inputs(gen, src, explicit=6, implicit=0)
    binary = built_binary("dicomsort")
    # LeakSanitizer cannot run under ptrace; the other tests check leaks.
    env = dict(os.environ, ASAN_OPTIONS=(os.environ.get("ASAN_OPTIONS", "") +
                                         ":detect_leaks=0").lstrip(":"))
    for extra in ([], ["--move"]):
        log = tmp_path / f"strace{len(extra)}.log"
        out = tmp_path / f"out{len(extra)}"
        p = subprocess.run([strace, "-f", "-e", "trace=openat", "-o",
                            str(log), binary, "--dicomin", str(src),
                            "--dicomout", str(out), "--quiet"] + extra,
                           capture_output=True, text=True, env=env,
                           timeout=RUN_TIMEOUT)
        assert p.returncode == 0, p.stderr
        assert len(tree(out)) == 6
        assert not dictionary_opened(log), extra
    src2 = tmp_path / "in2"
    make_inputs(gen, src2, explicit=0, implicit=2)
    log = tmp_path / "strace-implicit.log"
    p = subprocess.run([strace, "-f", "-e", "trace=openat", "-o", str(log),
                        binary, "--dicomin", str(src2), "--dicomout",
                        str(tmp_path / "out-implicit"), "--quiet"],
                       capture_output=True, text=True, env=env,
                       timeout=RUN_TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert dictionary_opened(log)


def bad_paths(tmp_path):
    good = "/usr/share/libdcmtk17/dicom.dic"
    folder = tmp_path / "a-folder"
    folder.mkdir()
    return {
        "missing": str(tmp_path / "no-such.dic"),
        "folder": str(folder),
        "one-of-two-missing": good + ":" + str(tmp_path / "gone.dic"),
    }


@pytest.mark.parametrize("case", ["missing", "folder", "one-of-two-missing"])
def test_missing_dictionary_stops_dicomsort_at_start(run_dicomsort, gen,
                                                     tmp_path, case):
    """A bad DCMDICTPATH: exit 2 with the message naming the file, before
    any file is read, moved or written."""
    src = tmp_path / "in"
    make_inputs(gen, src, explicit=1, implicit=1)
    before = tree(src)
    path = bad_paths(tmp_path)[case]
    env = dict(os.environ, DCMDICTPATH=path)
    out = tmp_path / "out"
    r = run_dicomsort("--dicomin", src, "--dicomout", out, "--move", env=env)
    assert r.returncode == 2, r
    assert DICTIONARY_ERROR in r.stderr
    assert path.split(":")[-1] in r.stderr
    assert tree(src) == before
    assert not out.exists() or tree(out) == {}


def test_missing_dictionary_stops_dicomsortd_at_start(tmp_path):
    """dicomsortd --check-config reports it; a start exits non-zero with
    the message, leaving the drop folder's file where it is."""
    binary = built_binary("dicomsortd")
    for name in ("in", "out", "quarantine"):
        (tmp_path / name).mkdir()
    dropped = tmp_path / "in" / "x.dcm"
    dropped.write_bytes(b"not even DICOM")
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(f'input = "{tmp_path / "in"}";\n'
                    f'output = "{tmp_path / "out"}";\n'
                    f'quarantine = "{tmp_path / "quarantine"}";\n'
                    'log_target = "stderr";\nsettle_ms = 100;\n')
    env = dict(os.environ, DCMDICTPATH=str(tmp_path / "no-such.dic"))
    env.pop("NOTIFY_SOCKET", None)
    for args in (["--check-config", "--user", str(os.geteuid())], []):
        p = subprocess.run([binary, "-c", str(conf)] + args, env=env,
                           capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
        check_sanitizers(p.stderr)
        assert p.returncode != 0, (args, p.stderr)
        assert DICTIONARY_ERROR in p.stderr, (args, p.stderr)
    assert dropped.read_bytes() == b"not even DICOM"
    assert list((tmp_path / "out").iterdir()) == []
    assert list((tmp_path / "quarantine").iterdir()) == []


@pytest.mark.parametrize("name", ["dicomsort", "dicomsortd"])
def test_libcurl_is_not_linked(name):
    """Neither binary needs libcurl to start: the dynamic loader maps
    none of it (nor what it pulls in) for a run that forwards nothing."""
    build = os.environ.get("DICOMSORT_BUILD_DIR")
    if not build:
        pytest.skip("DICOMSORT_BUILD_DIR is not set")
    binary = os.path.join(build, name)
    if not os.access(binary, os.X_OK):
        pytest.skip(f"{binary} is not built")
    p = subprocess.run(["ldd", binary], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert "libdcmdata" in p.stdout
    assert "libcurl" not in p.stdout
