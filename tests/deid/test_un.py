"""Issue 11 class 1: standard attributes written with VR UN (as a system
that did not know them writes them) are read with their dictionary VR, in
every profile and for the folder layout; sequences written as UN (defined
and undefined length) are read as sequences and de-identified inside."""

import shutil

import pytest
from pydicom.dataset import Dataset

from advlib import (base_ct, drain_through_daemon, find, json_of, load,
                    new_dciodvfy_errors, part10, scan_run, un_element,
                    un_sequence)
from conftest import UID_ROOT, make_secret, output_files
from test_leak import dicomsortd_bin  # noqa: F401 (a fixture)

NAME = "Zyxwvutlova^Qrstuvenka"
PID = "UNPAT778899"
BIRTH = "19471123"
ISSUER = "Vandermeerklinik"
INSTITUTION = "Oberkirchweiler Spital"
ACCESSION = "ACCX99128834"
NESTED_NAME = "Pflaumenbaum^Eustachius"
REF_UID = UID_ROOT + ".555.777.999"
STUDY_UID = UID_ROOT + ".4242.1"
NEEDLES = ["Zyxwvutlova", "Qrstuvenka", PID, BIRTH, "1947-11-23",
           "23.11.1947", ISSUER, "Oberkirchweiler", ACCESSION,
           "Pflaumenbaum", "Eustachius", REF_UID, STUDY_UID]


def raw(tag, text):
    return (tag, un_element(tag, text.encode("latin-1")))


def un_file(path, undefined=False, implicit_items=False, study=1):
    """A CT whose identifying attributes and sequences are all UN."""
    ds = base_ct("Placeholder^Name", "placeholder", study=study)
    for kw in ("PatientName", "PatientID", "PatientBirthDate",
               "InstitutionName", "AccessionNumber", "StudyInstanceUID",
               "StudyDate"):
        delattr(ds, kw)
    other = Dataset()
    other.PatientID = PID
    other.IssuerOfPatientID = ISSUER
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = REF_UID
    proto = Dataset()
    proto.CodeValue = "P1"
    proto.CodingSchemeDesignator = "99TEST"
    proto.CodeMeaning = "protocol"
    proto.PatientName = NESTED_NAME
    proto.InstitutionName = INSTITUTION
    elements = [
        raw(0x00100010, NAME), raw(0x00100020, PID), raw(0x00100030, BIRTH),
        raw(0x00080080, INSTITUTION), raw(0x00080050, ACCESSION),
        (0x0020000d, un_element(0x0020000d, STUDY_UID.encode() + b"\0")),
        raw(0x00080020, "20210314"),
        (0x00101002, un_sequence(0x00101002, [other], undefined,
                                 implicit_items)),
        (0x00081140, un_sequence(0x00081140, [ref], undefined,
                                 implicit_items)),
        (0x00400260, un_sequence(0x00400260, [proto], not undefined,
                                 implicit_items)),
    ]
    return part10(ds, elements, path)


FORMS = [(False, False), (True, False), (False, True), (True, True)]
FORM_IDS = ["defined", "undefined", "defined-undef-items",
            "undefined-undef-items"]


@pytest.fixture
def un_input(tmp_path):
    in_dir = tmp_path / "in"
    for k, (undef, items) in enumerate(FORMS):
        un_file(in_dir / f"u{k}.dcm", undef, items, study=k + 1)
    return in_dir


def test_inputs_are_un(un_input):
    """The planted values really are UN in the input (not vacuous)."""
    for path in sorted(un_input.iterdir()):
        data = path.read_bytes()
        assert b"\x10\x00\x20\x00UN" in data
        assert PID.encode() in data and REF_UID.encode() in data


def test_sort_mode_files_under_the_real_id(un_input, run_dicomsort,
                                           tmp_path):
    """Plain sort: the PatientID written as UN names the folder as text,
    not as hex bytes; the study date too."""
    result = run_dicomsort(un_input, tmp_path / "out")
    assert result.rc == 0, result
    tops = {p.relative_to(tmp_path / "out").parts[:2]
            for p in output_files(tmp_path / "out")}
    assert tops == {(PID, "20210314")}, tops


def test_pydicom_sample_rtdose_rle(run_dicomsort, tmp_path):
    """pydicom's rtdose_rle.dcm carries every attribute as UN: it is filed
    under id11111, not 6964313131313120."""
    from pydicom.data import get_testdata_file
    src = get_testdata_file("rtdose_rle.dcm")
    (tmp_path / "in").mkdir()
    shutil.copy(src, tmp_path / "in" / "rtdose_rle.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out")
    assert result.rc == 0, result
    outs = output_files(tmp_path / "out")
    assert len(outs) == 1
    assert outs[0].relative_to(tmp_path / "out").parts[0] == "id11111"


def test_seed_reads_un_names(un_input, run_dicomsort, tmp_path):
    """seed changes the UN-encoded PatientName and birth date too."""
    result = run_dicomsort(un_input, tmp_path / "out", "--anonymize")
    assert result.rc == 0, result
    for path in output_files(tmp_path / "out"):
        data = path.read_bytes()
        assert b"Zyxwvutlova" not in data and BIRTH.encode() not in data
        ds = load(path)
        assert str(ds.PatientName) == "ANONYMIZED"


@pytest.mark.parametrize("clean", [False, True], ids=["basic", "clean"])
def test_basic_no_leak_from_un(clean, un_input, run_dicomsort, secret,
                               tmp_path):
    """basic: nothing planted as UN (top level, inside UN sequences of
    defined and undefined length) survives in any encoding (text, hex,
    UTF-16) in files, paths, stdout or stderr."""
    args = ["--profile", "basic", "--secret", secret, "--json"]
    if clean:
        args.append("--clean-descriptors")
    result = run_dicomsort(un_input, tmp_path / "out", *args)
    assert result.rc == 0, result
    assert json_of(result)["stored"] == len(FORMS)
    problems = scan_run(NEEDLES, result, tmp_path / "out")
    assert not problems, "\n".join(problems)
    for out in output_files(tmp_path / "out"):
        src = un_input / out.name
        assert not new_dciodvfy_errors(src, out), out.name


def test_basic_pseudonyms_from_text_not_hex(un_input, run_dicomsort, secret,
                                            tmp_path):
    """The pseudonymous ID, the date shift and the replacement UIDs are
    those of the same values written with their proper VR: one patient,
    one pseudonym, references still resolve."""
    plain = base_ct(NAME, PID, study=9)
    plain.PatientBirthDate = BIRTH
    plain.StudyInstanceUID = STUDY_UID
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ref.ReferencedSOPInstanceUID = REF_UID
    plain.ReferencedImageSequence = [ref]
    part10(plain, [], un_input / "plain.dcm")
    result = run_dicomsort(un_input, tmp_path / "out", "--profile", "basic",
                           "--secret", secret)
    assert result.rc == 0, result
    outs = [load(p) for p in output_files(tmp_path / "out")]
    assert len(outs) == len(FORMS) + 1
    assert len({str(d.PatientID) for d in outs}) == 1
    assert len({str(d.StudyDate) for d in outs}) == 1
    assert len({str(d.StudyInstanceUID) for d in outs}) == 1
    refs = {str(d.ReferencedImageSequence[0].ReferencedSOPInstanceUID)
            for d in outs}
    assert len(refs) == 1 and not refs.pop().startswith(UID_ROOT)
    for d in outs:
        assert d["PatientID"].VR == "LO"
        assert d.StudyDate != "20210314"
    # One patient, one folder.
    assert len({p.relative_to(tmp_path / "out").parts[0]
                for p in output_files(tmp_path / "out")}) == 1


def test_unknown_un_is_removed(run_dicomsort, secret, tmp_path):
    """A UN element the dictionary does not know cannot be interpreted:
    under basic it is treated as identifying and removed."""
    ds = base_ct("Known^Person", "KP-1")
    secret_text = "Kreuzwortraetsel Ignatius"
    # (0018,fff0): an even tag no dictionary names.
    part10(ds, [raw(0x0018fff0, secret_text)], tmp_path / "in" / "x.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret)
    assert result.rc == 0, result
    problems = scan_run(["Kreuzwortraetsel", "Ignatius"], result,
                        tmp_path / "out")
    assert not problems, "\n".join(problems)


def test_daemon_no_leak_from_un(dicomsortd_bin, un_input, tmp_path):
    """dicomsortd under basic: the UN-encoded files leave nothing in the
    outputs, the quarantine or the daemon's log (its journal records,
    written to stderr here)."""
    drop, out, quarantine = (tmp_path / n for n in ("drop", "out", "q"))
    for d in (drop, out, quarantine):
        d.mkdir()
    secret = make_secret(tmp_path / "secret")
    conf = tmp_path / "dicomsortd.conf"
    conf.write_text(
        f'input = "{drop}";\noutput = "{out}";\nquarantine = "{quarantine}";\n'
        f'profile = "basic";\nsettle_ms = 200;\nlog_target = "stderr";\n'
        f'deid = {{ secret = "{secret}"; clean_descriptors = true; }};\n')
    count = len(FORMS)
    data = drain_through_daemon(dicomsortd_bin, conf,
                                sorted(un_input.iterdir()), drop, out,
                                tmp_path / "daemon.log", count, 90)
    assert len(output_files(out)) == count, data[-3000:]
    problems = find(NEEDLES, data, "daemon log")
    for path in output_files(out) + output_files(quarantine):
        problems += find(NEEDLES, str(path).encode(), f"path {path}")
        problems += find(NEEDLES, path.read_bytes(), f"file {path.name}")
    assert not problems, "\n".join(problems)


def test_implicit_vr_unknown_tag_removed(run_dicomsort, secret, tmp_path):
    """In an implicit-VR file DCMTK reads a tag no dictionary knows as UN:
    it is removed under basic; known tags read with their VR."""
    ds = base_ct(NAME, PID)
    ds.add_new(0x0018fff0, "LO", "Implicitus Geheimrat")
    part10(ds, [], tmp_path / "in" / "i.dcm", implicit=True)
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret)
    assert result.rc == 0, result
    problems = scan_run(["Implicitus", "Geheimrat"] + NEEDLES[:3], result,
                        tmp_path / "out")
    assert not problems, "\n".join(problems)
