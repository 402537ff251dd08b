"""End-to-end tests of the batch command `dicomsort`: real files written with
pydicom (tests/tools/gendicom.py), the real binary, results read back with
pydicom as an independent reader.

The expected folder of each file is computed here by expected_dir(), a
small independent implementation of the sorting rules of the README (the
original tool's PatientID/StudyDate/SeriesNumber_SeriesDescription tree and
its sanitizing), not by asking the code under test.
"""

import json
import os
import pathlib
import re
import shutil
import stat

import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataelem import RawDataElement  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpeg", ".jpg", ".gif", ".bmp")
SUMMARY_RE = re.compile(r"^stored (\d+), duplicates (\d+), skipped (\d+), "
                        r"rejected (\d+), failed (\d+) in [0-9.]+ s "
                        r"\([0-9]+ files/s\)$", re.M)


# ---- the original's rules, independently ----

def sanitize_value(value, series_description=False):
    """One DICOM value as the README says it goes into a path component."""
    if value is None or value.strip(" ") == "":
        return "UNKNOWN"
    out = []
    for ch in value.strip(" "):
        if ch == " ":
            out.append("_")
        elif ch in '*<>:"/\\|?' or ord(ch) < 0x20 or ord(ch) == 0x7f:
            continue
        elif series_description and ch == ".":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def finish_component(comp):
    """Empty -> UNKNOWN, leading dots -> '_', at most 255 bytes of UTF-8
    cut on a character boundary."""
    if comp == "":
        return "UNKNOWN"
    dots = len(comp) - len(comp.lstrip("."))
    comp = "_" * dots + comp[dots:]
    raw = comp.encode("utf-8")
    if len(raw) > 255:
        comp = raw[:255].decode("utf-8", errors="ignore")
    return comp


def value_of(ds, keyword):
    """The value as text, as pydicom decodes it (honouring the character
    set); multiple values joined by '\\'; None when absent."""
    if keyword not in ds:
        return None
    v = ds[keyword].value
    if v is None:
        return ""
    if isinstance(v, (list, pydicom.multival.MultiValue)):
        return "\\".join(str(x) for x in v)
    return str(v)


def expected_dir(ds):
    """PatientID/StudyDate/SeriesNumber_SeriesDescription for dataset ds."""
    return "/".join([
        finish_component(sanitize_value(value_of(ds, "PatientID"))),
        finish_component(sanitize_value(value_of(ds, "StudyDate"))),
        finish_component(sanitize_value(value_of(ds, "SeriesNumber")) + "_" +
                         sanitize_value(value_of(ds, "SeriesDescription"),
                                        series_description=True)),
    ])


def test_rules_helper_examples():
    """The helper itself, on the README's own examples."""
    assert finish_component(sanitize_value("../../../../tmp/escape")) == \
        "________tmpescape"
    assert sanitize_value("Ax 5.0mm", True) == "Ax_5_0mm"
    assert sanitize_value("  ") == "UNKNOWN"
    assert finish_component("é" * 200).encode() == ("é" * 127).encode()


# ---- helpers ----

def files_under(root):
    """Relative paths of every non-directory entry below root, sorted."""
    root = pathlib.Path(root)
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if not p.is_dir() or p.is_symlink())


def snapshot(root, exclude=None, folder_times=False):
    """{relative path: (type, size, mtime_ns, inode, bytes or link)} of every
    entry below root (not following symlinks), leaving out exclude. A
    folder's mtime is left out unless folder_times: a run that stores
    files beside it changes it."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if exclude is not None:
            dirnames[:] = [d for d in dirnames
                           if os.path.join(dirpath, d) != str(exclude)]
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    body = f.read()
            elif stat.S_ISLNK(st.st_mode):
                body = os.readlink(path)
            else:
                body = None
            if stat.S_ISDIR(st.st_mode):
                out[rel] = (stat.S_IFDIR, None,
                            st.st_mtime_ns if folder_times else None,
                            st.st_ino, None)
                continue
            out[rel] = (stat.S_IFMT(st.st_mode), st.st_size, st.st_mtime_ns,
                        st.st_ino, body)
    return out


def summary_counts(stdout):
    m = SUMMARY_RE.search(stdout)
    assert m, f"no summary line in stdout: {stdout!r}"
    keys = ("stored", "duplicates", "skipped", "rejected", "failed")
    return dict(zip(keys, map(int, m.groups())))


def run_json(run_dicomsort, *args, expect_rc=None):
    proc = run_dicomsort(*args, "--json")
    try:
        doc = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"--json printed no JSON (rc {proc.returncode}):\n"
                    f"stdout: {proc.stdout!r}\nstderr: {proc.stderr!r}")
    if expect_rc is not None:
        assert proc.returncode == expect_rc, proc.stderr
    return proc, doc


def by_source(doc, base):
    """{source path relative to base: file entry} of a --json summary."""
    return {os.path.relpath(f["source"], base): f for f in doc["files"]}


def leaves(ds, prefix=()):
    """{(tag path): (VR, raw value bytes)} of every non-sequence element at
    every nesting level, from the bytes as they were in the file (pydicom's
    RawDataElement), so 'equal' means byte-identical values."""
    out = {}
    for tag in list(ds.keys()):
        raw = ds._dict[tag]
        elem = ds[tag]
        key = prefix + (int(tag),)
        if elem.VR == "SQ":
            out[key] = ("SQ", len(elem.value))
            for i, item in enumerate(elem.value):
                out.update(leaves(item, key + (i,)))
        else:
            value = raw.value if isinstance(raw, RawDataElement) else elem.value
            out[key] = (elem.VR, value)
    return out


def assert_same_content(src, dst, ignore=()):
    """Both files: same transfer syntax, same elements at every level with
    byte-identical values (ignoring the top-level tags in ignore)."""
    a = pydicom.dcmread(str(src), force=True)
    b = pydicom.dcmread(str(dst))
    ts_a = a.file_meta.get("TransferSyntaxUID")
    if ts_a is not None:
        assert b.file_meta.TransferSyntaxUID == ts_a
    la = {k: v for k, v in leaves(a).items() if k[0] not in ignore}
    lb = {k: v for k, v in leaves(b).items() if k[0] not in ignore}
    missing = sorted(set(la) - set(lb))
    extra = sorted(set(lb) - set(la))
    assert not missing and not extra, \
        f"elements lost {missing} or added {extra}"
    for key in la:
        assert la[key] == lb[key], f"element {key} differs"
    return a, b


@pytest.fixture
def dirs(tmp_path):
    src = tmp_path / "in"
    out = tmp_path / "out"
    src.mkdir()
    return src, out


# ---- CLI surface ----

def test_help_and_version(run_dicomsort):
    proc = run_dicomsort("--help")
    assert proc.returncode == 0
    for flag in ("--dicomin", "--dicomout", "--anonymize", "--ID_correlation",
                 "--layout", "--filename", "--jobs", "--move", "--dry-run",
                 "--json", "--quiet", "--missing-ids-log"):
        assert flag in proc.stdout
    assert proc.stderr == ""
    proc = run_dicomsort("--version")
    assert proc.returncode == 0
    assert re.fullmatch(r"dicomsort \d+\.\d+\.\d+\n", proc.stdout)


@pytest.mark.parametrize("args,message", [
    ([], "--dicomin and --dicomout are required"),
    (["--dicomin", "in"], "--dicomin and --dicomout are required"),
    (["--dicomin", "in", "--dicomout", "out", "--frobnicate"],
     "unknown option '--frobnicate'"),
    (["--dicomin", "in", "--dicomout", "out", "--jobs", "0"],
     "--jobs wants a number from 1 to 1024, not '0'"),
    (["--dicomin", "in", "--dicomout", "out", "--jobs", "two"],
     "--jobs wants a number"),
    (["--dicomin", "in", "--dicomout", "out", "extra"],
     "unexpected argument 'extra'"),
    (["--dicomin", "in", "--dicomout"], "--dicomout needs a value"),
    (["--dicomin", "nowhere", "--dicomout", "out"],
     "--dicomin nowhere: not a folder"),
    (["--dicomin", "afile", "--dicomout", "out"],
     "--dicomin afile: not a folder"),
    (["--dicomin", "in", "--dicomout", "out", "--layout", "{PatientID"],
     "'{' without '}'"),
    (["--dicomin", "in", "--dicomout", "out", "--layout", "{NoSuchKeyword}"],
     "unknown DICOM keyword 'NoSuchKeyword'"),
    (["--dicomin", "in", "--dicomout", "out", "--filename", "{PatientID}/x"],
     "must not contain '/'"),
    (["--dicomin", "in", "--dicomout", "out", "--ID_correlation", "missing.txt"],
     "missing.txt"),
    (["--dicomin", "in", "--dicomout", "out", "--profile", "paranoid"],
     "--profile wants none, seed or basic"),
])
def test_usage_errors_exit_2(run_dicomsort, tmp_path, args, message):
    (tmp_path / "in").mkdir()
    (tmp_path / "afile").write_text("x")
    proc = run_dicomsort(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert proc.stderr.startswith("dicomsort: ")
    assert not (tmp_path / "out").exists() or \
        files_under(tmp_path / "out") == []


# ---- sorting ----

def test_sorts_patients_studies_series(run_dicomsort, gen, dirs):
    src, out = dirs
    paths = gen.generate(str(src), patients=6, studies=2, series=2, images=2,
                         rows=8, cols=8, seed=7)
    assert len(paths) == 48
    proc = run_dicomsort("--dicomin", src, "--dicomout", out)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert summary_counts(proc.stdout) == dict(
        stored=48, duplicates=0, skipped=0, rejected=0, failed=0)
    expected = {}
    for p in paths:
        ds = pydicom.dcmread(p)
        expected[expected_dir(ds) + "/" + os.path.basename(p)] = p
    assert files_under(out) == sorted(expected)
    # Six patients, two studies each (different dates), two series each.
    assert len({e.split("/")[0] for e in expected}) == 6
    assert len({tuple(e.split("/")[:2]) for e in expected}) == 12
    assert len({tuple(e.split("/")[:3]) for e in expected}) == 24
    for rel, p in expected.items():
        assert_same_content(p, out / rel)
    # No temp files left, every output readable by others like a copy.
    for rel in files_under(out):
        assert not os.path.basename(rel).startswith(".")
        assert stat.S_IMODE(os.stat(out / rel).st_mode) == 0o644


SYNTAX_FORMS = [(s, f) for s in ("explicit_le", "implicit_le", "explicit_be",
                                 "deflated", "jpeg_lossless")
                for f in ("part10", "no-preamble", "bare")
                if f != "bare" or s in ("explicit_le", "implicit_le")]


@pytest.fixture(scope="module")
def syntax_run(tmp_path_factory, dicomsort_bin, gen, sanitizer_check):
    """One run over one file per transfer syntax and file form."""
    import subprocess
    base = tmp_path_factory.mktemp("syntax")
    src, out = base / "in", base / "out"
    src.mkdir()
    for i, (syntax, form) in enumerate(SYNTAX_FORMS):
        ds = gen.make_dataset(patient_id="TS%02d" % i, syntax=syntax,
                              charset=["latin1", "japanese", "utf8"][i % 3],
                              rows=16, cols=12, seed=i)
        gen.write(ds, str(src / f"{syntax}-{form}.dcm"), form=form)
    proc = subprocess.run([dicomsort_bin, "--dicomin", str(src), "--dicomout",
                           str(out), "--json"], capture_output=True, text=True,
                          timeout=60, cwd=str(base))
    sanitizer_check(proc.stderr)
    return src, out, proc


@pytest.mark.parametrize("syntax,form", SYNTAX_FORMS)
def test_transfer_syntax_and_content_preserved(syntax_run, syntax, form):
    src, out, proc = syntax_run
    assert proc.returncode == 0, proc.stderr
    entry = by_source(json.loads(proc.stdout), src)[f"{syntax}-{form}.dcm"]
    assert entry["status"] == "stored", entry
    source = src / f"{syntax}-{form}.dcm"
    a, b = assert_same_content(source, out / entry["dest"])
    assert entry["dest"] == expected_dir(a) + f"/{syntax}-{form}.dcm"
    # The output is always a proper Part 10 file with a meta header.
    raw = (out / entry["dest"]).read_bytes()
    assert raw[128:132] == b"DICM"
    ts = b.file_meta.TransferSyntaxUID
    if form == "bare":
        # No meta header to keep: the syntax is the one the data was in.
        assert ts == {"explicit_le": "1.2.840.10008.1.2.1",
                      "implicit_le": "1.2.840.10008.1.2"}[syntax]
    assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID
    assert b.file_meta.MediaStorageSOPClassUID == b.SOPClassUID
    # Pixel data is byte-identical (leaves() compared it; say so plainly).
    assert b["PixelData"].value == a["PixelData"].value


# ---- de-identification as the original did it ----

def test_anonymize_seed(run_dicomsort, gen, dirs):
    src, out = dirs
    names = {}
    for i, cs in enumerate(gen.CHARSET_CYCLE):
        ds = gen.make_dataset(patient_id="SEED%d" % i, charset=cs, seed=i,
                              birth_date="19800131")
        gen.write(ds, str(src / f"{cs}.dcm"))
        names[cs] = ds
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--anonymize", expect_rc=0)
    assert doc["stored"] == len(names)
    files = by_source(doc, src)
    for cs in names:
        dst = out / files[f"{cs}.dcm"]["dest"]
        a, b = assert_same_content(src / f"{cs}.dcm", dst,
                                   ignore=(0x00100010, 0x00100030))
        assert str(b.PatientName) == "ANONYMIZED"
        assert "PatientBirthDate" in b and b.PatientBirthDate == ""
        assert b.PatientID == a.PatientID  # --anonymize keeps the ID
    # A missing PatientBirthDate is not added.
    ds = gen.make_dataset(patient_id="NOBIRTH", seed=99)
    del ds.PatientBirthDate
    gen.write(ds, str(src / "nobirth.dcm"))
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--anonymize", expect_rc=0)
    entry = by_source(doc, src)["nobirth.dcm"]
    assert "PatientBirthDate" not in pydicom.dcmread(str(out / entry["dest"]))


@pytest.mark.parametrize("charset", ["ascii", "latin1"])
@pytest.mark.parametrize("syntax,form", SYNTAX_FORMS)
def test_seed_changes_only_its_values(run_dicomsort, gen, dirs, tmp_path,
                                      syntax, form, charset):
    """--anonymize with a table, in every transfer syntax and file form:
    the three values change and nothing else, whether the file's own bytes
    were spliced (plain Part 10, values the layout reads in ASCII) or DCMTK
    re-encoded it (the rest; Latin-1 text in the layout is converted by
    DCMTK, which then writes the file)."""
    src, out = dirs
    ds = gen.make_dataset(patient_id="OLD7", syntax=syntax, seed=7,
                          charset=charset, birth_date="19800131")
    gen.write(ds, str(src / "in.dcm"), form=form)
    table = tmp_path / "ids.csv"
    table.write_text("OLD7,NEW0007\n")
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--anonymize", "--ID_correlation", table,
                         expect_rc=0)
    dst = out / by_source(doc, src)["in.dcm"]["dest"]
    a, b = assert_same_content(src / "in.dcm", dst,
                               ignore=(0x00100010, 0x00100020, 0x00100030))
    assert str(b.PatientName) == "ANONYMIZED"
    assert b.PatientID == "NEW0007"
    assert b.PatientBirthDate == ""
    assert b.file_meta.MediaStorageSOPInstanceUID == b.SOPInstanceUID
    raw, orig = dst.read_bytes(), (src / "in.dcm").read_bytes()
    if charset == "ascii" and form == "part10" and \
            syntax in ("explicit_le", "implicit_le", "jpeg_lossless"):
        # Spliced: the source's meta header, byte for byte, and the
        # same length but for the value lengths that changed.
        meta_end = 132 + 12 + int.from_bytes(orig[140:144], "little")
        assert raw[:meta_end] == orig[:meta_end]
        delta = sum(len(new) + len(new) % 2 - len(old) for new, old in (
            ("ANONYMIZED", orig_value(a, 0x00100010)),
            ("NEW0007", orig_value(a, 0x00100020)),
            ("", orig_value(a, 0x00100030))))
        assert len(raw) == len(orig) + delta


def orig_value(ds, tag):
    """The encoded (padded) bytes of a top-level value."""
    elem = ds[tag]
    value = elem.value
    raw = value.encode("latin-1") if isinstance(value, str) else \
        str(value).encode("latin-1")
    return raw + b" " * (len(raw) % 2)


TABLE = ("\ufeff# old,new  -- exported from the spreadsheet\r\n"
         "PATA,NEWA\r\n"
         "\r\n"
         "PATB NEWB\r\n"
         "   # indented comment\r\n"
         "PATC\tNEWC\r\n"
         "PATD , NEWD,,\r\n")


def test_id_correlation_table(run_dicomsort, gen, dirs, tmp_path):
    src, out = dirs
    for pid in ("PATA", "PATB", "PATC", "PATD", "PATX", "PATY"):
        for n in range(2):
            ds = gen.make_dataset(patient_id=pid, instance_number=n + 1,
                                  charset="latin1", seed=3)
            gen.write(ds, str(src / f"{pid}_{n}.dcm"))
    table = tmp_path / "ids.txt"
    table.write_bytes(TABLE.encode("utf-8"))
    proc = run_dicomsort("--dicomin", src, "--dicomout", out,
                         "--ID_correlation", table)
    assert proc.returncode == 0, proc.stderr
    assert "Missing PatientIDs logged in 'missing_patient_ids.log'." in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == \
        ["NEWA", "NEWB", "NEWC", "NEWD", "PATX", "PATY"]
    for f in out.rglob("*.dcm"):
        ds = pydicom.dcmread(str(f))
        # A table alone anonymizes too, as in the original tool.
        assert str(ds.PatientName) == "ANONYMIZED"
        assert ds.PatientBirthDate == ""
        assert ds.PatientID == f.relative_to(out).parts[0]
    # Unmapped IDs, each once, in the default log in the working directory.
    assert (tmp_path / "missing_patient_ids.log").read_text() == "PATX\nPATY\n"
    # --missing-ids-log elsewhere, and the JSON count.
    log = tmp_path / "elsewhere.log"
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout",
                         tmp_path / "out2", "--anonymize", "--ID_correlation",
                         table, "--missing-ids-log", log, expect_rc=0)
    assert doc["unmapped_ids"] == 2
    assert log.read_text() == "PATX\nPATY\n"


@pytest.mark.parametrize("text,line,message", [
    ("A,B\nC\n", 2, "expected two fields"),
    ("A,B\nC,D,E\n", 2, "expected two fields"),
    ("A,B\n,C\n", 2, "empty old ID"),
    ("A,B\r\nC,D\r\nA,E\r\n", 3, "already mapped"),
])
def test_bad_correlation_table_exit_2(run_dicomsort, dirs, tmp_path, text,
                                      line, message):
    src, out = dirs
    table = tmp_path / "bad.txt"
    table.write_text(text)
    proc = run_dicomsort("--dicomin", src, "--dicomout", out,
                         "--ID_correlation", table)
    assert proc.returncode == 2
    assert f"{table}:{line}:" in proc.stderr
    assert message in proc.stderr


@pytest.mark.parametrize("charset", ["latin1", "utf8", "japanese", "cyrillic",
                                     "greek"])
def test_names_read_as_utf8_in_layout(run_dicomsort, gen, dirs, charset):
    src, out = dirs
    ds = gen.make_dataset(patient_id="CS1", charset=charset, seed=5)
    gen.write(ds, str(src / "a.dcm"))
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--layout", "{PatientName}/{SeriesDescription}",
                         expect_rc=0)
    read = pydicom.dcmread(str(src / "a.dcm"))
    want = "/".join([
        finish_component(sanitize_value(str(read.PatientName))),
        finish_component(sanitize_value(read.SeriesDescription, True)),
        "a.dcm"])
    assert want.split("/")[0] == gen.CHARSETS[charset][1].replace(" ", "_")
    assert doc["files"][0]["dest"] == want
    assert files_under(out) == [want]


# ---- which inputs are taken ----

def test_preamble_extension_and_skipped_images(run_dicomsort, gen, dirs):
    src, out = dirs
    (src / "deep" / "er").mkdir(parents=True)
    made = {}
    for i, (name, form) in enumerate([
            ("with.dcm", "part10"), ("noext", "part10"),
            ("deep/er/IM000001", "no-preamble"), ("deep/bare", "bare"),
            ("UPPER.DCM", "part10")]):
        ds = gen.make_dataset(patient_id="EXT", instance_number=i + 1, seed=1)
        gen.write(ds, str(src / name), form=form)
        made[name] = ds
    # Valid DICOM, but named like an image: skipped like the original did.
    skipped = ["x.png", "y.JPG", "z.jpeg", "w.gif", "v.bmp", "deep/u.Png"]
    for name in skipped:
        gen.write(gen.make_dataset(patient_id="IMG"), str(src / name))
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         expect_rc=0)
    assert (doc["stored"], doc["skipped"], doc["rejected"]) == (5, 6, 0)
    files = by_source(doc, src)
    for name in skipped:
        assert files[name]["status"] == "skipped"
        assert files[name]["dest"] is None
    for name in made:
        assert files[name]["status"] == "stored"
        assert files[name]["dest"] == \
            expected_dir(made[name]) + "/" + os.path.basename(name)
    assert not (out / "IMG").exists()
    assert len(files_under(out)) == 5


def test_hostile_inputs(run_dicomsort, gen, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    gen.write(gen.make_dataset(patient_id="GOOD", rows=32, cols=32),
              str(src / "good.dcm"))
    whole = (src / "good.dcm").read_bytes()
    pixel_start = len(whole) - 32 * 32 * 2
    (src / "zero.dcm").write_bytes(b"")
    (src / "notes.txt").write_text("PatientID: ../../etc\nnot DICOM at all\n")
    (src / "random.bin").write_bytes(os.urandom(4096))
    (src / "cut_preamble.dcm").write_bytes(whole[:100])
    (src / "cut_meta.dcm").write_bytes(whole[:140])
    name_at = whole.index(b"GOOD")
    (src / "cut_header.dcm").write_bytes(whole[:name_at + 2])
    (src / "cut_pixels_start.dcm").write_bytes(whole[:pixel_start + 1])
    (src / "cut_pixels_mid.dcm").write_bytes(whole[:pixel_start + 1000])
    (src / "cut_pixels_end.dcm").write_bytes(whole[:-1])
    os.symlink("/etc/passwd", src / "passwd.dcm")
    os.symlink(src / "good.dcm", src / "link_to_good.dcm")
    os.mkfifo(src / "fifo.dcm")
    outside_before = snapshot(tmp_path, exclude=out)
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         expect_rc=1)
    files = by_source(doc, src)
    want = {
        "zero.dcm": "empty file",
        "notes.txt": "not a DICOM file",
        "random.bin": "not a DICOM file",
        "cut_preamble.dcm": "truncated",
        "cut_meta.dcm": "truncated",
        "cut_header.dcm": "truncated",
        "cut_pixels_start.dcm": "truncated",
        "cut_pixels_mid.dcm": "truncated",
        "cut_pixels_end.dcm": "truncated",
        "passwd.dcm": "symlinks are never followed",
        "link_to_good.dcm": "symlinks are never followed",
        "fifo.dcm": "not a regular file",
    }
    assert sorted(files) == sorted(list(want) + ["good.dcm"])
    for name, reason in want.items():
        assert files[name]["status"] == "rejected", files[name]
        assert reason in files[name]["reason"], files[name]
        assert files[name]["dest"] is None
        # The same reason on stderr, one line per file.
        assert f"dicomsort: {src / name}: {files[name]['reason']}\n" in \
            proc.stderr
    assert files["good.dcm"]["status"] == "stored"
    assert (doc["stored"], doc["rejected"], doc["failed"]) == (1, len(want), 0)
    assert files_under(out) == [files["good.dcm"]["dest"]]
    # Inputs untouched, nothing written anywhere but the output root.
    assert snapshot(tmp_path, exclude=out) == outside_before
    # Without --json the summary line says the same.
    proc = run_dicomsort("--dicomin", src, "--dicomout", tmp_path / "out2")
    assert proc.returncode == 1
    assert summary_counts(proc.stdout) == dict(
        stored=1, duplicates=0, skipped=0, rejected=len(want), failed=0)


TRAVERSAL_IDS = ["../../../../tmp/escape", "..", ".", "/etc/cron.d", "a/../../b",
                 "..\\..\\win", ".hidden", "~root", "x\x01y\x7fz", "   ",
                 "*?<>|:\""]


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
@pytest.mark.filterwarnings("ignore:The value length")
def test_path_traversal_values_stay_inside(run_dicomsort, gen, tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    made = {}
    for i, pid in enumerate(TRAVERSAL_IDS):
        ds = gen.make_dataset(patient_id=pid, study_date="../..",
                              series_description="../" * 3 + "etc",
                              instance_number=i + 1, charset="ascii", seed=2)
        gen.write(ds, str(src / f"t{i}.dcm"))
        made[f"t{i}.dcm"] = ds
    long_desc = "Series " + "x" * 293            # 300 characters
    long_utf8 = "Ä" * 200                        # 400 bytes of UTF-8
    for name, desc in (("long.dcm", long_desc), ("longutf8.dcm", long_utf8)):
        ds = gen.make_dataset(patient_id="LONG", series_description=desc,
                              charset="utf8", seed=4, sop_instance_uid=None,
                              instance_number=len(made) + 1)
        gen.write(ds, str(src / name))
        made[name] = ds
    before = snapshot(tmp_path, exclude=out)
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         expect_rc=0)
    files = by_source(doc, src)
    for name, ds in made.items():
        want = expected_dir(pydicom.dcmread(str(src / name))) + "/" + name
        assert files[name]["dest"] == want, name
        assert (out / want).is_file()
        for comp in want.split("/"):
            assert comp not in ("", ".", "..") and not comp.startswith(".")
            assert len(comp.encode()) <= 255
    assert files["t0.dcm"]["dest"].startswith("________tmpescape/____/")
    long_dir = files["long.dcm"]["dest"].split("/")[2]
    assert len(long_dir.encode()) == 255
    utf8_dir = files["longutf8.dcm"]["dest"].split("/")[2]
    assert utf8_dir == ("1_" + "Ä" * 200).encode()[:255].decode(errors="ignore")
    # Everything is below out; nothing appeared anywhere else.
    for p in out.rglob("*"):
        assert os.path.realpath(p).startswith(str(out) + os.sep)
    assert snapshot(tmp_path, exclude=out) == before
    assert not os.path.exists("/tmp/escape")


def test_symlink_planted_in_output_is_not_followed(run_dicomsort, gen, dirs,
                                                   tmp_path):
    src, out = dirs
    victim = tmp_path / "victim"
    victim.mkdir()
    out.mkdir()
    os.symlink(victim, out / "PLANT")
    gen.write(gen.make_dataset(patient_id="PLANT"), str(src / "a.dcm"))
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         expect_rc=1)
    assert doc["files"][0]["status"] == "rejected"
    assert "PLANT" in doc["files"][0]["reason"]
    assert list(victim.iterdir()) == []


# ---- clashes, duplicates, idempotence ----

def test_same_uid_different_content(run_dicomsort, gen, dirs):
    src, out = dirs
    (src / "a").mkdir()
    (src / "b").mkdir()
    uid = "1.2.826.0.1.3680043.10.7613.42"
    for sub, desc in (("a", "First"), ("b", "First")):
        ds = gen.make_dataset(patient_id="CLASH", sop_instance_uid=uid,
                              series_description=desc, seed=ord(sub))
        gen.write(ds, str(src / sub / "img.dcm"))
    assert (src / "a/img.dcm").read_bytes() != (src / "b/img.dcm").read_bytes()
    # Same source name: the second gets the original's numbered name.
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         expect_rc=0)
    assert doc["stored"] == 2
    dests = sorted(f["dest"] for f in doc["files"])
    folder = "CLASH/20240115/1_First/"
    assert dests == [folder + "img.dcm", folder + "img_1.dcm"]
    stored = {(out / d).read_bytes() for d in dests}
    assert len(stored) == 2
    # Named by SOPInstanceUID: one UID, two contents, both kept.
    out2 = out.parent / "out2"
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out2,
                         "--filename", "{SOPInstanceUID}.dcm", expect_rc=0)
    dests = sorted(f["dest"] for f in doc["files"])
    assert dests == [folder + uid + ".dcm", folder + uid + "_1.dcm"]
    for f in doc["files"]:
        assert_same_content(f["source"], out2 / f["dest"])


def test_identical_copies_are_one_file(run_dicomsort, gen, dirs):
    src, out = dirs
    (src / "copy1").mkdir()
    (src / "copy2").mkdir()
    gen.write(gen.make_dataset(patient_id="TWIN"), str(src / "copy1/x.dcm"))
    shutil.copy(src / "copy1/x.dcm", src / "copy2/x.dcm")
    shutil.copy(src / "copy1/x.dcm", src / "copy2/other-name.dcm")
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--filename", "{SOPInstanceUID}.dcm", expect_rc=0)
    assert sorted(f["status"] for f in doc["files"]) == \
        ["duplicate", "duplicate", "stored"]
    assert len({f["dest"] for f in doc["files"]}) == 1
    assert len(files_under(out)) == 1
    # Keeping the source names: same name is a duplicate, another name a copy.
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout",
                         out.parent / "out2", expect_rc=0)
    assert sorted(f["status"] for f in doc["files"]) == \
        ["duplicate", "stored", "stored"]
    assert len(files_under(out.parent / "out2")) == 2


def test_second_run_changes_nothing(run_dicomsort, gen, dirs, tmp_path):
    src, out = dirs
    gen.generate(str(src), patients=2, studies=1, series=2, images=2, rows=8,
                 cols=8, seed=11, syntax="mixed")
    proc = run_dicomsort("--dicomin", src, "--dicomout", out, "--anonymize")
    assert proc.returncode == 0, proc.stderr
    # Folder times too: the duplicate check compares an anonymous
    # (O_TMPFILE) copy, so not even a folder's mtime moves.
    first = snapshot(out, folder_times=True)
    inputs = snapshot(src)
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--anonymize", expect_rc=0)
    assert doc["stored"] == 0 and doc["duplicates"] == 8
    assert all(f["status"] == "duplicate" for f in doc["files"])
    assert snapshot(out, folder_times=True) == first
    assert snapshot(src) == inputs


def test_output_inside_input_is_not_walked(run_dicomsort, gen, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    gen.write(gen.make_dataset(patient_id="NEST"), str(src / "a.dcm"))
    for _ in range(2):
        proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout",
                             src / "sorted", expect_rc=0)
        assert len(doc["files"]) == 1
    assert len(files_under(src / "sorted")) == 1


# ---- --move, --dry-run, templates, --quiet ----

@pytest.mark.parametrize("mode", ["copy", "--move", "--anonymize"])
def test_outputs_follow_the_umask(run_dicomsort, gen, dirs, mode):
    """Written or renamed into place, an output gets 0666 less the umask
    (the unit's UMask=0027 keeps patient data from other users), never a
    fixed 0644 and never the source's own mode."""
    src, out = dirs
    gen.write(gen.make_dataset(patient_id="UM"), str(src / "a.dcm"))
    os.chmod(src / "a.dcm", 0o604)
    args = ["--dicomin", src, "--dicomout", out]
    if mode != "copy":
        args.append(mode)
    old = os.umask(0o027)
    try:
        proc = run_dicomsort(*args)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    (output,) = [p for p in out.rglob("*") if p.is_file()]
    assert stat.S_IMODE(output.stat().st_mode) == 0o640


def test_move_copies_a_hard_linked_source(run_dicomsort, gen, dirs, tmp_path):
    """Renamed into place, an inode with another link would stay reachable
    and writable from outside the output tree: such a source is copied, and
    the other link keeps its bytes and mode."""
    src, out = dirs
    outside = tmp_path / "elsewhere.dcm"
    gen.write(gen.make_dataset(patient_id="HL"), str(outside))
    os.chmod(outside, 0o600)
    os.link(outside, src / "linked.dcm")
    body = outside.read_bytes()
    proc = run_dicomsort("--dicomin", src, "--dicomout", out, "--move")
    assert proc.returncode == 0, proc.stderr
    assert not (src / "linked.dcm").exists()
    (output,) = [p for p in out.rglob("*") if p.is_file()]
    assert output.stat().st_ino != outside.stat().st_ino
    assert output.read_bytes() == body
    assert outside.read_bytes() == body
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert outside.stat().st_nlink == 1


def test_move_deletes_only_what_is_stored(run_dicomsort, gen, dirs):
    src, out = dirs
    (src / "sub").mkdir()
    gen.write(gen.make_dataset(patient_id="MV", instance_number=1),
              str(src / "one.dcm"))
    gen.write(gen.make_dataset(patient_id="MV", instance_number=2),
              str(src / "sub" / "two.dcm"))
    (src / "bad.dcm").write_bytes(b"DICM? no")
    (src / "pic.png").write_bytes(b"\x89PNG")
    originals = {n: (src / n).read_bytes() for n in ("one.dcm", "sub/two.dcm")}
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--move", expect_rc=1)
    files = by_source(doc, src)
    for name, body in originals.items():
        assert files[name]["status"] == "stored"
        assert not (src / name).exists()
        assert pydicom.dcmread(str(out / files[name]["dest"])).PatientID == "MV"
    # Rejected and skipped inputs stay where they were.
    assert (src / "bad.dcm").read_bytes() == b"DICM? no"
    assert (src / "pic.png").exists()
    # A duplicate's source goes too: an identical copy is already stored.
    gen.write(gen.make_dataset(patient_id="MV", instance_number=1),
              str(src / "one.dcm"))
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--move", expect_rc=1)
    assert by_source(doc, src)["one.dcm"]["status"] == "duplicate"
    assert not (src / "one.dcm").exists()


def test_dry_run_writes_nothing(run_dicomsort, gen, dirs, tmp_path):
    src, out = dirs
    gen.generate(str(src), patients=2, studies=1, series=1, images=2, rows=8,
                 cols=8, seed=3)
    table = tmp_path / "ids.txt"
    table.write_text("PAT0001,NEW1\n")
    before = snapshot(tmp_path)
    proc, dry = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                         "--ID_correlation", table, "--dry-run", "--move",
                         expect_rc=0)
    assert snapshot(tmp_path) == before      # no out/, no log, sources kept
    assert not out.exists()
    proc, real = run_json(run_dicomsort, "--dicomin", src, "--dicomout", out,
                          "--ID_correlation", table, expect_rc=0)
    assert sorted(f["dest"] for f in dry["files"]) == \
        sorted(f["dest"] for f in real["files"])
    assert {f["dest"].split("/")[0] for f in real["files"]} == \
        {"NEW1", "PAT0002"}


def test_layout_and_filename_templates(run_dicomsort, gen, dirs):
    src, out = dirs
    ds = gen.make_dataset(patient_id="TPL", modality="MR", seed=8,
                          series_description="T1 KM. sag")
    gen.write(ds, str(src / "in.dcm"))
    proc, doc = run_json(
        run_dicomsort, "--dicomin", src, "--dicomout", out,
        "--layout", "{Modality}/{{lit}}-{PatientID}//{SeriesInstanceUID}/",
        "--filename", "{InstanceNumber}_{SOPInstanceUID}.dcm", expect_rc=0)
    want = "MR/{lit}-TPL/%s/1_%s.dcm" % (ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert doc["files"][0]["dest"] == want
    assert (out / want).is_file()
    # A keyword the file lacks, and SeriesDescription's '.' rule.
    proc, doc = run_json(
        run_dicomsort, "--dicomin", src, "--dicomout", out.parent / "o2",
        "--layout", "{AcquisitionDate}/{SeriesDescription}", expect_rc=0)
    assert doc["files"][0]["dest"] == "UNKNOWN/T1_KM__sag/in.dcm"


def test_quiet_and_json_output(run_dicomsort, gen, dirs):
    src, out = dirs
    gen.write(gen.make_dataset(patient_id="Q"), str(src / "q.dcm"))
    (src / "junk").write_text("junk")
    proc = run_dicomsort("--dicomin", src, "--dicomout", out, "--quiet")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == f"dicomsort: {src / 'junk'}: not a DICOM file\n"
    proc, doc = run_json(run_dicomsort, "--dicomin", src, "--dicomout",
                         out.parent / "o2", expect_rc=1)
    assert set(doc) >= {"stored", "duplicates", "skipped", "rejected",
                        "failed", "elapsed_s", "files_per_s", "unmapped_ids",
                        "files"}
    assert proc.stdout.count("\n") == 1      # one JSON object, one line
    for f in doc["files"]:
        assert set(f) == {"source", "status", "dest", "reason"}
    assert (doc["stored"], doc["rejected"]) == (1, 1)


def test_jobs_one_and_many_give_the_same_tree(run_dicomsort, gen, dirs):
    src, out = dirs
    gen.generate(str(src), patients=3, studies=1, series=2, images=3, rows=8,
                 cols=8, seed=21, syntax="mixed")
    for jobs, dest in (("1", out), ("8", out.parent / "o8")):
        proc = run_dicomsort("--dicomin", src, "--dicomout", dest, "--jobs",
                             jobs)
        assert proc.returncode == 0, proc.stderr
    a, b = snapshot(out), snapshot(out.parent / "o8")
    assert sorted(a) == sorted(b)
    for rel in a:
        assert a[rel][4] == b[rel][4], rel
