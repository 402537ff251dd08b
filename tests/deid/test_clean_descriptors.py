"""Issue 11 class 3: Clean Descriptors cannot be bypassed by spelling.
Names match after Unicode normalisation (NFKD, diacritics dropped, full
case folding, full-width forms), an embedded NUL does not hide what
follows it, every identifier the object carries is matched, and every
date in its usual spellings."""

import re
import unicodedata

from advlib import base_ct, load, part10, scan_run
from conftest import output_files

NAME = "Müller^Jürgen"
PID = "MRN-4711-0815"
ADMISSION = "ADM998877"
PROCEDURE = "RPX55443"
EPISODE = "EPI-77331"
PLACER = "PLC-240611"
BIRTH = "19800131"
STUDY_DATE = "20210314"

DESCRIPTIONS = {
    "SeriesDescription": "CT ＭＵＬＬＥＲ ｊｕｅｒｇｅｎ",       # full-width
    "StudyDescription": "Thorax Mu\u0308ller J\u0075\u0308rgen",  # combining
    "ImageComments": "Scan\0Müller adm 998877 born 31.01.1980",   # NUL
    "ProtocolName": "MULLER JURGEN rpx-55443 2021-03-14",       # no accents
    "PerformedProcedureStepDescription": "epi77331 14.03.2021 03/14/2021",
    "RequestedProcedureDescription": "für MUELLER 01/31/1980 PLC 240611",
}
WORDS = ["muller", "jurgen", "mueller", "juergen", "mrn47110815", "adm998877", "rpx55443",
         "epi77331", "plc240611", "19800131", "31011980", "01311980",
         "20210314", "14032021", "03142021"]


def fold(text):
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    return re.sub(r"[\W_]+", "", text.casefold())


def planted(path):
    ds = base_ct(NAME, PID)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientBirthDate = BIRTH
    ds.StudyDate = STUDY_DATE
    ds.AdmissionID = ADMISSION
    ds.RequestedProcedureID = PROCEDURE
    ds.ServiceEpisodeID = EPISODE
    ds.PlacerOrderNumberImagingServiceRequest = PLACER
    for kw, text in DESCRIPTIONS.items():
        setattr(ds, kw, text)
    return part10(ds, [], path)


def test_planted_forms_match_the_needles():
    """Not vacuous: each description really carries a needle once folded."""
    for text in DESCRIPTIONS.values():
        assert any(w in fold(text) for w in WORDS), text


def test_clean_descriptors_normalises(run_dicomsort, secret, tmp_path):
    planted(tmp_path / "in" / "c.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret,
                           "--clean-descriptors")
    assert result.rc == 0, result
    outs = output_files(tmp_path / "out")
    assert len(outs) == 1
    ds = load(outs[0])
    kept = 0
    for kw in DESCRIPTIONS:
        value = str(ds.get(kw, ""))
        kept += bool(value.strip())
        found = [w for w in WORDS if w in fold(value)]
        assert not found, (kw, value, found)
    assert kept >= 3  # descriptions stay, only the identifying part goes
    problems = scan_run(["Müller", "Muller", "Jürgen", PID, ADMISSION,
                         PROCEDURE, EPISODE, "31.01.1980", "14.03.2021"],
                        result, tmp_path / "out")
    assert not problems, "\n".join(problems)
    data = outs[0].read_bytes()
    for form in ("ＭＵＬＬＥＲ", "Mu\u0308ller", "MÜLLER"):
        assert form.encode("utf-8") not in data, form
