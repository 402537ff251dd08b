"""Shared helpers for the end-to-end de-identification tests of dicomsort.

Run with Debian's interpreter, which carries python3-pytest and
python3-pydicom 2.3.1 (a pyenv python3 earlier on PATH may not):

    DICOMSORT_BIN=/path/to/dicomsort [DICOMSORTD_BIN=/path/to/dicomsortd] \
        /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/deid

Without DICOMSORT_BIN every test skips and says why. pydicom is the
independent reader: files are written with it, run through the binary and
read back with it; nothing here links to the code under test.
"""

import csv
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.sequence import Sequence  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
if str(REPO / "tests" / "tools") not in sys.path:
    sys.path.insert(0, str(REPO / "tests" / "tools"))
from binaries import built_binary  # noqa: E402 (tests/tools, on the path above)

CSV_PATH = REPO / "data" / "ps3.15-table-e.1-1.csv"

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
UID_ROOT = "1.2.826.0.1.3680043.10.1234"  # inputs only; outputs are 2.25.*

OPTION_COLUMNS = [
    "retain_safe_private", "retain_uids", "retain_device_identity",
    "retain_institution_identity", "retain_patient_characteristics",
    "retain_long_full_dates", "retain_long_modified_dates",
    "clean_descriptors", "clean_structured_content", "clean_graphics",
]
# CID 7050 code of each option (PS3.16), the profile's own first.
PROFILE_CODE = "113100"
OPTION_CODES = {
    "retain_safe_private": "113111", "retain_uids": "113110",
    "retain_device_identity": "113109",
    "retain_institution_identity": "113112",
    "retain_patient_characteristics": "113108",
    "retain_long_full_dates": "113106",
    "retain_long_modified_dates": "113107",
    "clean_descriptors": "113105", "clean_structured_content": "113104",
    "clean_graphics": "113103",
}

PSEUDO_ID_RE = re.compile(r"^ANON[0-9A-F]{12}$")
NEW_UID_RE = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")

# Lines for the terminal summary (coverage figures, skipped rows, ...).
SUMMARY = []


def pytest_terminal_summary(terminalreporter):
    if SUMMARY:
        terminalreporter.section("de-identification coverage")
        for line in SUMMARY:
            terminalreporter.write_line(line)


def flag(option):
    """The command-line flag of a Table E.1-1 option column."""
    return "--" + option.replace("_", "-")


# ---- the binary ----

@pytest.fixture(scope="session")
def dicomsort_bin():
    return built_binary("dicomsort", broken=pytest.fail)


class Run:
    """One finished dicomsort run."""

    def __init__(self, proc, out_dir, cwd):
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr
        self.out_dir = out_dir
        self.cwd = cwd  # where a missing-IDs log would land

    @property
    def json(self):
        return json.loads(self.stdout.decode("utf-8"))

    def files(self):
        return output_files(self.out_dir)

    def __repr__(self):
        return (f"Run(rc={self.rc}, stdout={self.stdout[-2000:]!r}, "
                f"stderr={self.stderr[-2000:]!r})")


@pytest.fixture
def run_dicomsort(dicomsort_bin, tmp_path):
    """run_dicomsort(in_dir, out_dir, *flags) -> Run. Runs in a scratch CWD
    so a missing-IDs log never lands in the repository."""
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)

    def run(in_dir, out_dir, *args, timeout=120):
        args = [str(a) for a in args]
        # The tests pair inputs and outputs by name: keep source names
        # (basic would name files by their new SOPInstanceUID).
        if not any(a.startswith("--filename") for a in args):
            args += ["--filename", ""]
        cmd = [dicomsort_bin, "--dicomin", str(in_dir), "--dicomout",
               str(out_dir), *args]
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True,
                              timeout=timeout, check=False)
        return Run(proc, pathlib.Path(out_dir), cwd)

    return run


def make_secret(path, text="correct horse battery staple 0123456789"):
    """A secret file as deid_secret_load() wants it: mode 0600, >= 16 bytes."""
    path = pathlib.Path(path)
    path.write_text(text + "\n")
    os.chmod(path, 0o600)
    return path


@pytest.fixture
def secret(tmp_path):
    return make_secret(tmp_path / "secret")


# ---- files ----

def new_meta(ds, transfer_syntax=ExplicitVRLittleEndian):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    ds.is_little_endian = True
    ds.is_implicit_VR = False


def write(ds, path):
    """Write ds as a Part 10 file (explicit VR little endian)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new_meta(ds)
    ds.save_as(str(path), write_like_original=False)
    return path


def output_files(out_dir):
    """Every regular file below out_dir, sorted (temp files would show)."""
    out_dir = pathlib.Path(out_dir)
    if not out_dir.exists():
        return []
    return sorted(p for p in out_dir.rglob("*") if p.is_file())


def read(path):
    return pydicom.dcmread(str(path))


def by_name(out_dir):
    """{base name: path} of the outputs (dicomsort keeps source names)."""
    result = {}
    for p in output_files(out_dir):
        assert p.name not in result, f"two outputs named {p.name}"
        result[p.name] = p
    return result


def shift_date(yyyymmdd, days):
    d = datetime.datetime.strptime(yyyymmdd, "%Y%m%d").date()
    return (d - datetime.timedelta(days=days)).strftime("%Y%m%d")


def days_between(original, shifted):
    a = datetime.datetime.strptime(original[:8], "%Y%m%d").date()
    b = datetime.datetime.strptime(shifted[:8], "%Y%m%d").date()
    return (a - b).days


def ct_image(patient_name="Testperson^Alpha", patient_id="TP-0001",
             birth_date="19600101", study=1, series=1, instance=1,
             uid_prefix=UID_ROOT, rows=16, columns=16):
    """A CT Image IOD instance with every Type 1 and Type 2 attribute of
    its mandatory modules present and plausible (PS3.3 A.3), small pixels."""
    ds = Dataset()
    base = f"{uid_prefix}.{study}"
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = f"{base}.{series}.{instance}"
    ds.InstanceCreationDate = "20210314"
    ds.InstanceCreationTime = "101500"
    # General Study
    ds.StudyDate = "20210314"
    ds.StudyTime = "101010"
    ds.AccessionNumber = f"ACC{study:04d}"
    ds.Modality = "CT"
    ds.Manufacturer = "ACME Medical"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = "CTSTATION1"
    ds.StudyDescription = "CT Thorax"
    ds.SeriesDescription = "Thorax 1.0 B30f"
    ds.ManufacturerModelName = "Scanner 3000"
    # General Series / Study / Patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "O"
    ds.PatientAge = "061Y"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.SoftwareVersions = "VA1"
    ds.ReconstructionDiameter = "350"
    ds.DistanceSourceToDetector = "1040"
    ds.DistanceSourceToPatient = "570"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "200"
    ds.Exposure = "100"
    ds.FilterType = "FLAT"
    ds.GeneratorPower = "24"
    ds.FocalSpots = "1.2"
    ds.ConvolutionKernel = "B30f"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = base
    ds.SeriesInstanceUID = f"{base}.{series}"
    ds.StudyID = f"S{study}"
    ds.SeriesNumber = str(series)
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = str(instance)
    ds.PatientOrientation = ""
    ds.ContentDate = "20210314"
    ds.ContentTime = "101501"
    ds.AcquisitionDate = "20210314"
    ds.AcquisitionTime = "101400"
    # Frame of Reference / Image Plane
    ds.FrameOfReferenceUID = f"{base}.99"
    ds.PositionReferenceIndicator = ""
    ds.ImagePositionPatient = ["-175", "-175", str(-100 - instance)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = str(-100 - instance)
    ds.PixelSpacing = ["0.7", "0.7"]
    # Image Pixel / CT Image
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.PixelData = bytes((i * 7) % 256 for i in range(rows * columns * 2))
    return ds


def code_item(value, meaning, scheme="99TEST"):
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def seq(*items):
    return Sequence(list(items))


def all_values(ds):
    """Yield (tag path, DataElement) for every element at every level."""
    def walk(d, prefix):
        for elem in d:
            path = prefix + (elem.tag,)
            yield path, elem
            if elem.VR == "SQ":
                for k, item in enumerate(elem.value):
                    yield from walk(item, path + (k,))
    yield from walk(ds, ())


def which(tool):
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install "
                    f"{'dicom3tools' if tool == 'dciodvfy' else 'dcmtk'})")
    return path


def read_csv_rows():
    with open(CSV_PATH, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
