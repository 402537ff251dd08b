"""Leak test: planted identifiers never reach output bytes, output paths, stdout/stderr or the daemon's log."""

import os
import pathlib
import re
import shutil
import subprocess
import time

import pytest
from pydicom.dataset import Dataset

from advlib import drain_through_daemon
from binaries import built_binary
from conftest import (REPO, UID_ROOT, ct_image, code_item, make_secret, read,
                      output_files, seq, write)

PATIENTS = [
    {   # Latin-1, the classic
        "charset": "ISO_IR 100",
        "name": "Müller^Jürgen", "other_name": "Mueller^Juergen",
        "id": "MRN-4711-0815", "id_other_form": "mrn 4711/0815",
        "birth": "19800131",
        "address": "Lindenallee 42, Quarzstadt",
        "phone": "+49 30 98765432",
        "mother": "Hoffmannsthal^Walburga",
        "series_description": "CT of Jürgen Müller 1980-01-31",
        "image_comments": "Follow-up MÜLLER, JÜRGEN born 31.01.1980",
    },
    {   # UTF-8
        "charset": "ISO_IR 192",
        "name": "Ødegård^Zoë", "other_name": "Odegaard^Zoe",
        "id": "ZX-90210-Q", "id_other_form": "zx 90210 q",
        "birth": "19921224",
        "address": "Fjordveien 7, Bergenhavn",
        "phone": "+47 555 01234567",
        "mother": "Ødegård^Sigrunhild",
        "series_description": "Thorax Zoë Ødegård 1992-12-24",
        "image_comments": "Pt Ødegård Zoë, DOB 24.12.1992",
    },
    {   # ASCII, no character set
        "charset": None,
        "name": "Quimby^Thaddeus^Bartholomew", "other_name": "Quimbey^Thad",
        "id": "TQ77-5521-ZZ", "id_other_form": "tq77 5521 zz",
        "birth": "19550704",
        "address": "1313 Mockingbird Lane, Springfieldia",
        "phone": "555-867-53099",
        "mother": "Quimby^Henrietta",
        "series_description": "Abdomen thaddeus quimby 1955-07-04",
        "image_comments": "QUIMBY THADDEUS 04.07.1955",
    },
]
PHYSICIANS = ["Wexford^Hieronymus", "Blomqvist^Ingeborg",
              "Tarkington^Ulrich", "Vasquez-Oyelaran^Marisol"]
INSTITUTION = "Sankt Bartholomäus Klinikum Quarzstadt"
INSTITUTION_ADDRESS = "Rosenhügel 9, Quarzstadt"
DEPARTMENT = "Radiologie Westflügel"
STATION = "QUARZCT07"
PRIVATE_CREATOR = "WEXCORP PRIVATE 1.0"
# Words of the planted strings that are not distinctive on their own.
COMMON = {"lane", "sankt", "radiologie", "follow", "born", "dob", "thorax",
          "abdomen", "private", "for"}


def split_words(text):
    return [w for w in re.split(r"[\s^,.+/=\-]+", text) if w]


def needles():
    """Every planted string that must not survive, with the reason."""
    found = {}

    def add(text, why):
        found.setdefault(text, why)

    def add_words(text, why, minimum=3):
        for w in split_words(text):
            if w.lower() in COMMON:
                continue
            if w.isdigit() and len(w) < 8:
                continue  # short digit runs occur in any 2.25 UID
            if len(w) >= minimum:
                add(w, why)

    for p in PATIENTS:
        for key in ("name", "other_name", "mother"):
            add_words(p[key], f"patient {key} part")
        add(p["id"], "patient ID")
        squashed = re.sub(r"[^0-9A-Za-z]", "", p["id"])
        add(squashed, "patient ID without separators")
        add(p["id_other_form"], "patient ID, other separators")
        b = p["birth"]
        add(b, "birth date YYYYMMDD")
        add(f"{b[:4]}-{b[4:6]}-{b[6:]}", "birth date YYYY-MM-DD")
        add(f"{b[6:]}.{b[4:6]}.{b[:4]}", "birth date DD.MM.YYYY")
        add_words(p["address"], "address part")
        add(p["address"], "address")
        add(p["phone"], "telephone")
    for doc in PHYSICIANS:
        add_words(doc, "physician name part")
    for text, why in ((INSTITUTION, "institution"),
                      (INSTITUTION_ADDRESS, "institution address"),
                      (DEPARTMENT, "department")):
        add(text, why)
        add_words(text, why + " part", minimum=4)
    add(STATION, "station name")
    add("WEXCORP", "private creator")
    return found


NEEDLES = needles()


def variants(text):
    """Byte strings to look for: UTF-8 and Latin-1, several cases."""
    out = set()
    for form in {text, text.lower(), text.upper(), text.title(),
                 text.casefold()}:
        for enc in ("utf-8", "latin-1"):
            try:
                out.add(form.encode(enc).lower())
            except UnicodeEncodeError:
                pass
    return out


NEEDLE_BYTES = {text: variants(text) for text in NEEDLES}


def leaks_in(data, where):
    """[(needle, why, where)] for every planted string in data (bytes)."""
    hay = data.lower()
    return [f"{text!r} ({NEEDLES[text]}) in {where}"
            for text, forms in NEEDLE_BYTES.items()
            if any(f in hay for f in forms)]


def planted_dataset(p, k, series=1, instance=1):
    ds = ct_image(patient_name=p["name"], patient_id=p["id"],
                  birth_date=p["birth"], study=10 + k, series=series,
                  instance=instance)
    if p["charset"]:
        ds.SpecificCharacterSet = p["charset"]
    else:
        del ds.SpecificCharacterSet
    ds.PatientAddress = p["address"]
    ds.PatientTelephoneNumbers = p["phone"]
    ds.OtherPatientNames = p["other_name"]
    ds.PatientMotherBirthName = p["mother"]
    ds.OtherPatientIDs = p["id"]
    ds.ReferringPhysicianName = PHYSICIANS[0]
    ds.PerformingPhysicianName = PHYSICIANS[1]
    ds.OperatorsName = PHYSICIANS[2]
    ds.NameOfPhysiciansReadingStudy = PHYSICIANS[3]
    ds.PhysiciansOfRecord = PHYSICIANS[0]
    ds.InstitutionName = INSTITUTION
    ds.InstitutionAddress = INSTITUTION_ADDRESS
    ds.InstitutionalDepartmentName = DEPARTMENT
    ds.StationName = STATION
    ds.SeriesDescription = p["series_description"]
    ds.StudyDescription = f"CT study {p['id_other_form']}"
    ds.ImageComments = p["image_comments"]
    ds.ProtocolName = f"Routine {split_words(p['name'])[0]}"
    ds.RequestedProcedureDescription = f"CT for {p['id']}"
    ds.PerformedProcedureStepDescription = "Exam " + re.sub(
        r"[^0-9A-Za-z]", "", p["id"])
    ds.AdditionalPatientHistory = f"{p['name']} born {p['birth']}"
    ds.PatientComments = f"{p['other_name']} ({p['id']})"
    # Nested: in a sequence that stays, in one that goes, in SR content.
    kept = code_item("P1", "protocol")
    kept.PatientName = p["name"]
    kept.PatientID = p["id"]
    kept.ReferringPhysicianName = PHYSICIANS[0]
    kept.InstitutionName = INSTITUTION
    kept.PatientBirthDate = p["birth"]
    ds.PerformedProtocolCodeSequence = seq(kept)
    other_id = Dataset()
    other_id.PatientID = p["id"]
    other_id.IssuerOfPatientID = INSTITUTION
    ds.OtherPatientIDsSequence = seq(other_id)
    person = Dataset()
    person.PersonName = PHYSICIANS[3]
    person.PersonAddress = INSTITUTION_ADDRESS
    person.InstitutionName = INSTITUTION
    ds.ReferringPhysicianIdentificationSequence = seq(person)
    text = Dataset()
    text.RelationshipType = "CONTAINS"
    text.ValueType = "TEXT"
    text.TextValue = f"{p['name']} {p['id']} {p['birth']}"
    ds.ContentSequence = seq(text)
    request = Dataset()
    request.RequestedProcedureDescription = f"for {p['name']}"
    request.ScheduledProcedureStepDescription = f"id {p['id']}"
    request.ReasonForTheRequestedProcedure = f"{p['other_name']}"
    ds.RequestAttributesSequence = seq(request)
    # Private data, top level and nested.
    for d in (ds, kept):
        d.add_new(0x00290010, "LO", PRIVATE_CREATOR)
        d.add_new(0x00291001, "LO", p["name"])
        d.add_new(0x00291002, "LO", p["id"])
        d.add_new(0x00291003, "DA", p["birth"])
        raw = p["address"].encode("utf-8")
        d.add_new(0x00291004, "UN", raw + b" " * (len(raw) % 2))
    return ds


@pytest.fixture(scope="module")
def leak_input(tmp_path_factory):
    """Two files per patient (two series), neutral file names."""
    in_dir = tmp_path_factory.mktemp("leak") / "in"
    n = 0
    for k, p in enumerate(PATIENTS):
        for series in (1, 2):
            ds = planted_dataset(p, k, series=series, instance=1)
            write(ds, in_dir / f"f{n:03d}.dcm")
            n += 1
    return in_dir, n


def test_inputs_carry_the_needles(leak_input):
    """The check is not vacuous: every planted string is in the input."""
    in_dir, _ = leak_input
    data = b"".join(p.read_bytes() for p in sorted(in_dir.iterdir()))
    missing = [t for t in NEEDLES
               if not any(f in data.lower() for f in NEEDLE_BYTES[t])]
    assert not missing, f"not planted: {missing}"


def scan_output(out_dir):
    problems = []
    for path in output_files(out_dir):
        rel = path.relative_to(out_dir)
        problems += leaks_in(str(rel).encode("utf-8"), f"path {rel}")
        problems += leaks_in(path.read_bytes(), f"file {rel}")
    return problems


@pytest.mark.parametrize("clean", [False, True],
                         ids=["basic", "basic+clean-descriptors"])
@pytest.mark.parametrize("report", ["--json", "plain"])
def test_no_leak_batch(clean, report, leak_input, run_dicomsort, secret,
                       tmp_path):
    in_dir, count = leak_input
    args = ["--profile", "basic", "--secret", secret]
    if clean:
        args.append("--clean-descriptors")
    if report == "--json":
        args.append("--json")
    result = run_dicomsort(in_dir, tmp_path / "out", *args)
    assert result.rc == 0, result
    if report == "--json":
        assert result.json["stored"] == count, result
    assert len(output_files(tmp_path / "out")) == count
    problems = scan_output(tmp_path / "out")
    problems += leaks_in(result.stdout, "stdout")
    problems += leaks_in(result.stderr, "stderr")
    # Without a table nothing is "missing": no log of original IDs either.
    problems += scan_output(result.cwd)
    if problems:
        pytest.fail(f"{len(problems)} leak(s):\n" + "\n".join(problems),
                    pytrace=False)


def backend_claims(path):
    """backend_diff's verdict on one file: (claimed by the C backend,
    identical to DCMTK in bytes, visits, edits and deid_apply())."""
    tool = pathlib.Path(os.environ.get("DICOMSORT_BUILD_DIR", REPO / "build")) \
        / "tests" / "backend_diff"
    if not tool.exists():
        pytest.skip("backend_diff not built")
    r = subprocess.run([str(tool), str(path)], capture_output=True, text=True,
                       timeout=120)
    return " 1 claimed" in r.stdout, r.returncode == 0


@pytest.mark.parametrize("clean", [False, True],
                         ids=["basic", "basic+clean-descriptors"])
def test_no_leak_c_backend(clean, run_dicomsort, secret, tmp_path):
    """The planted files without their UN element (which the C backend of
    dicom.h declines) are the C backend's: it must claim every one, match
    DCMTK, and leak nothing - private tags, nested sequences, SR content,
    Latin-1 and UTF-8 included."""
    in_dir = tmp_path / "in"
    n = 0
    for k, p in enumerate(PATIENTS):
        ds = planted_dataset(p, k)
        for d in (ds, ds.PerformedProtocolCodeSequence[0]):
            del d[0x00291004]
            d.add_new(0x00291005, "LT", p["address"])
        write(ds, in_dir / f"f{n:03d}.dcm")
        n += 1
    for path in sorted(in_dir.iterdir()):
        claimed, identical = backend_claims(path)
        assert claimed and identical, (path.name, claimed, identical)
    args = ["--profile", "basic", "--secret", secret, "--json"]
    if clean:
        args.append("--clean-descriptors")
    result = run_dicomsort(in_dir, tmp_path / "out", *args)
    assert result.rc == 0, result
    assert result.json["stored"] == n, result
    problems = scan_output(tmp_path / "out")
    problems += leaks_in(result.stdout, "stdout")
    problems += leaks_in(result.stderr, "stderr")
    if problems:
        pytest.fail(f"{len(problems)} leak(s):\n" + "\n".join(problems),
                    pytrace=False)


def test_no_leak_in_rejections(leak_input, run_dicomsort, secret, tmp_path):
    """Rejected files (unknown ID, burned-in text): reasons stay clean."""
    in_dir, count = leak_input
    result = run_dicomsort(in_dir, tmp_path / "out", "--profile", "basic",
                           "--secret", secret, "--unknown-id", "reject",
                           "--json")
    assert result.rc == 1, result
    assert result.json["rejected"] == count
    problems = leaks_in(result.stdout, "stdout") + leaks_in(
        result.stderr, "stderr") + scan_output(tmp_path / "out") + \
        scan_output(result.cwd)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_no_leak_in_burned_in_rejections(run_dicomsort, secret, tmp_path):
    """The burned-in text guard rejects (BurnedInAnnotation YES; absent with
    Modality US; absent with a Secondary Capture class) without naming
    anything identifying, in plain and JSON reports."""
    for k, p in enumerate(PATIENTS):
        ds = planted_dataset(p, k)
        ds.BurnedInAnnotation = "YES"
        write(ds, tmp_path / "in" / f"yes{k}.dcm")
        ds = planted_dataset(p, k, series=3)
        del ds.BurnedInAnnotation
        ds.Modality = "US"
        write(ds, tmp_path / "in" / f"us{k}.dcm")
        ds = planted_dataset(p, k, series=4)
        del ds.BurnedInAnnotation
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
        write(ds, tmp_path / "in" / f"sc{k}.dcm")
    count = 3 * len(PATIENTS)
    problems = []
    for report in (["--json"], []):
        out = tmp_path / ("out-json" if report else "out-plain")
        result = run_dicomsort(tmp_path / "in", out, "--profile", "basic",
                               "--secret", secret, *report)
        assert result.rc == 1, result
        if report:
            assert result.json["rejected"] == count, result
            reasons = [f["reason"] for f in result.json["files"]]
            assert all("burned-in" in r for r in reasons), reasons
        problems += leaks_in(result.stdout, "stdout") + leaks_in(
            result.stderr, "stderr") + scan_output(out) + \
            scan_output(result.cwd)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_clean_descriptors_other_identifiers(run_dicomsort, secret,
                                            tmp_path):
    """Clean Descriptors also takes out the identifiers that basic removes
    elsewhere: address, telephone, physicians, institution."""
    p = PATIENTS[0]
    ds = planted_dataset(p, 0)
    ds.ImageComments = (f"Referred by Dr {PHYSICIANS[0]} of {INSTITUTION}; "
                        f"patient lives at {p['address']}, tel {p['phone']}")
    ds.StudyDescription = f"CT {DEPARTMENT}, {STATION}"
    write(ds, tmp_path / "in" / "one.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--clean-descriptors",
                           "--quiet")
    assert result.rc == 0, result
    problems = scan_output(tmp_path / "out")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_clean_descriptors_many_names(run_dicomsort, secret, tmp_path):
    """An object naming 60,000 people: Clean Descriptors would compare each
    new name with all before it and look for all of them at every position
    of every description (5.7 s for 20,000, growing with the square). Past 256
    tokens it empties the descriptions instead: bounded, and nothing of any
    name survives."""
    p = PATIENTS[0]
    ds = planted_dataset(p, 0)
    items = []
    for i in range(60000):
        item = Dataset()
        item.PersonName = "Name%05d^Given%05d" % (i, i)
        items.append(item)
    ds.ContentSequence = seq(*items)
    ds.StudyDescription = "CT for Name00042 and Name19999"
    ds.ImageComments = "seen by Given00007"
    write(ds, tmp_path / "in" / "many.dcm")
    start = time.monotonic()
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--clean-descriptors",
                           "--quiet")
    secs = time.monotonic() - start
    assert result.rc == 0, result
    assert secs < 20, secs
    problems = scan_output(tmp_path / "out")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    out = [read(f) for f in (tmp_path / "out").rglob("*.dcm")]
    assert len(out) == 1
    assert out[0].get("StudyDescription", "") == ""
    assert "Given" not in str(out[0].get("ImageComments", ""))


# ---- the daemon ----

def daemon_has_deid_config():
    text = (REPO / "include" / "dicomsort" / "config.h").read_text()
    return re.search(r"\bdeid\s*(\{|=|group)", text) is not None


@pytest.fixture
def dicomsortd_bin():
    path = built_binary("dicomsortd", broken=pytest.fail)
    if not daemon_has_deid_config():
        pytest.skip("include/dicomsort/config.h has no 'deid' group yet: "
                    "the daemon cannot be configured for basic")
    return path


def test_no_leak_daemon(dicomsortd_bin, leak_input, tmp_path):
    """dicomsortd with profile basic + clean_descriptors: outputs, log."""
    in_dir, count = leak_input
    drop, out, quarantine = (tmp_path / n for n in ("drop", "out", "q"))
    for d in (drop, out, quarantine):
        d.mkdir()
    secret = make_secret(tmp_path / "secret")
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(
        f'input = "{drop}";\noutput = "{out}";\nquarantine = "{quarantine}";\n'
        f'profile = "basic";\nsettle_ms = 200;\nlog_target = "stderr";\n'
        f'deid = {{ secret = "{secret}"; clean_descriptors = true; }};\n')
    check = subprocess.run([dicomsortd_bin, "-c", str(conf),
                            "--check-config"], capture_output=True,
                           timeout=30)
    assert check.returncode == 0, check
    data = drain_through_daemon(dicomsortd_bin, conf, sorted(in_dir.iterdir()),
                                drop, out, tmp_path / "daemon.log", count, 60)
    assert len(output_files(out)) == count, data[-3000:]
    problems = scan_output(out) + scan_output(quarantine) + leaks_in(
        data, "daemon log")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_source_names_do_not_reach_output_paths(dicomsort_bin, leak_input,
                                                secret, tmp_path):
    """PACS exports often name files after the patient. Under basic the
    default name is the replaced SOPInstanceUID, so no planted string
    reaches an output path (run without the suite's --filename '')."""
    src, count = leak_input
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    for k, path in enumerate(sorted(src.iterdir())):
        p = PATIENTS[k % len(PATIENTS)]
        folder = in_dir / p["name"].replace("^", " ")
        folder.mkdir(exist_ok=True)
        shutil.copy(path, folder / f"{p['name']}_{p['id']}_{p['birth']}_{k}.dcm")
    proc = subprocess.run([dicomsort_bin, "--dicomin", str(in_dir),
                           "--dicomout", str(tmp_path / "out"), "--profile",
                           "basic", "--secret", str(secret), "--quiet"],
                          cwd=tmp_path, capture_output=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    outputs = output_files(tmp_path / "out")
    assert len(outputs) == count
    problems = []
    for path in outputs:
        rel = path.relative_to(tmp_path / "out")
        assert re.fullmatch(r"2\.25\.\d+\.dcm", path.name), rel
        problems += leaks_in(str(rel).encode("utf-8"), f"path {rel}")
    assert not problems, "\n".join(problems)
