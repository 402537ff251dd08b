#!/usr/bin/python3
"""Generate realistic, deterministic DICOM test files with pydicom.

As a command (scripts/demo, bench/throughput):

    gendicom.py --out DIR --patients N --studies N --series N --images N \
                --rows R --cols C [--seed S] [--transfer-syntax NAME|mixed]
                [--form part10|no-preamble|bare] [--no-extension]

writes DIR/<PatientID>/<study>_<series>_<image>.dcm: CT and MR images with
16-bit pixel data, patients named in several character sets (Latin-1, UTF-8,
Japanese ISO 2022, Cyrillic, Greek), StudyDate, SeriesNumber,
SeriesDescription, nested sequences and private tags.

As a library (tests put tests/tools on sys.path):

    import gendicom
    ds = gendicom.make_dataset(patient_id="PAT1", charset="japanese", seed=3)
    gendicom.write(ds, path, syntax="explicit_be", form="part10")

The same arguments always give the same bytes.
"""

import argparse
import hashlib
import io
import os
import random
import sys
import zlib  # noqa: F401  (pydicom deflates with it)

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.sequence import Sequence

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
UID_ROOT = "1.2.826.0.1.3680043.10.7613"

# name -> (TransferSyntaxUID, implicit VR, little endian, encapsulated)
SYNTAXES = {
    "explicit_le": ("1.2.840.10008.1.2.1", False, True, False),
    "implicit_le": ("1.2.840.10008.1.2", True, True, False),
    "explicit_be": ("1.2.840.10008.1.2.2", False, False, False),
    "deflated": ("1.2.840.10008.1.2.1.99", False, True, False),
    # JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14
    # SV1): encapsulated, 16 bits allowed. The fragments are fake (JPEG
    # markers around noise): nothing here decodes pixels.
    "jpeg_lossless": ("1.2.840.10008.1.2.4.70", False, True, True),
}

# Three ways a file can begin.
FORMS = ("part10", "no-preamble", "bare")

# charset key -> (SpecificCharacterSet, PatientName, a SeriesDescription
# word in that character set). The Japanese name is the one of PS3.5 H.3.1.
CHARSETS = {
    "ascii": (None, "Doe^John", "Routine"),
    "latin1": ("ISO_IR 100", "Müller^Jürgen^^Dr.", "Schädel"),
    "utf8": ("ISO_IR 192", "Øre^Zoë=李^雷", "Kopf 頭部"),
    "japanese": ("\\ISO 2022 IR 87", "Yamada^Tarou=山田^太郎=やまだ^たろう",
                 "Head"),
    "cyrillic": ("ISO_IR 144", "Иванов^Иван^Петрович", "Голова"),
    "greek": ("ISO_IR 126", "Παπαδόπουλος^Γιώργος", "Κεφαλή"),
}
CHARSET_CYCLE = ("latin1", "utf8", "japanese", "cyrillic", "greek", "ascii")

PRIVATE_CREATOR = "GENDICOM TEST 1.0"
PRIVATE_GROUP = 0x0009

SERIES_KINDS = {
    "CT": ["Ax 5.0mm", "Cor MPR 3.0", "Sag Bone 1.25mm", "Scout", "Lung 1.0 HR"],
    "MR": ["T1 SE tra", "T2 TSE cor", "FLAIR 3D", "DWI b1000", "T1 KM. sag"],
}


def file_meta(sop_class, sop_instance, syntax_uid,
              implementation=UID_ROOT + ".1"):
    """The file meta information of one object: its SOP class and
    instance, its transfer syntax, and our implementation UID (None: the
    writer's own)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = syntax_uid
    if implementation is not None:
        meta.ImplementationClassUID = implementation
    return meta


def meta_header(meta):
    """The bytes a Part 10 file begins with: a zeroed preamble, DICM and
    meta as written (explicit VR little endian, with its group length),
    the meta's values taken as given, even when the dataset disagrees."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\0" * 128 + b"DICM" + buf.getvalue()


def set_grey_pixels(ds, rows, cols, bits_allocated=16, bits_stored=None):
    """The Image Pixel module of a single-sample grey image (unsigned,
    MONOCHROME2); bits_stored defaults to bits_allocated. The pixel data
    itself is the caller's."""
    stored = bits_allocated if bits_stored is None else bits_stored
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = stored
    ds.HighBit = stored - 1
    ds.PixelRepresentation = 0


def uid(*parts):
    """A deterministic UID below UID_ROOT made of the given parts."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return "%s.%d" % (UID_ROOT, int.from_bytes(digest[:12], "big"))


def pixel_bytes(rows, cols, rng, little_endian=True, bits_stored=12):
    """rows*cols 16-bit pixels (values below 2**bits_stored) as bytes in the
    given byte order: a smooth body-like disc plus noise, fast enough for
    512x512 images."""
    n = rows * cols
    mask = (1 << (bits_stored - 8)) - 1
    hi = rng.randbytes(n).translate(bytes(i & mask for i in range(256)))
    lo = bytearray(rng.randbytes(n))
    # a bright disc in the middle, so the images are not pure noise
    cy, cx, r2 = rows / 2, cols / 2, (min(rows, cols) / 3) ** 2
    hi = bytearray(hi)
    for y in range(rows):
        dy2 = (y - cy) ** 2
        if dy2 > r2:
            continue
        half = int((r2 - dy2) ** 0.5)
        start, end = y * cols + max(0, int(cx) - half), y * cols + min(cols, int(cx) + half)
        hi[start:end] = bytes([mask]) * (end - start)
    buf = bytearray(2 * n)
    if little_endian:
        buf[0::2], buf[1::2] = lo, hi
    else:
        buf[0::2], buf[1::2] = hi, lo
    return bytes(buf)


def fake_fragments(raw, rng, count=2):
    """Fake JPEG fragments: SOI, noise derived from raw, EOI, even lengths."""
    body = zlib.compress(raw, 1)
    size = max(2, len(body) // count)
    frags = []
    for i in range(count):
        chunk = body[i * size:(i + 1) * size] if i < count - 1 else body[i * size:]
        frag = (b"\xff\xd8" if i == 0 else b"") + chunk + (
            b"\xff\xd9" if i == count - 1 else b"")
        if len(frag) % 2:
            frag += b"\x00"
        frags.append(frag)
    return frags


def code_item(value, scheme, meaning):
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def make_dataset(patient_id="PAT0001", patient_name=None, charset="latin1",
                 birth_date="19700101", study_date="20240115",
                 study_index=0, series_number=1, series_description=None,
                 instance_number=1, modality="CT", rows=16, cols=16,
                 seed=0, sop_instance_uid=None, syntax="explicit_le",
                 private=True, sequences=True):
    """One image as a pydicom Dataset with file_meta set for syntax.
    patient_name defaults to the charset's sample name; series_description
    to a modality-typical one. Every UID derives from the arguments."""
    rng = random.Random(repr((seed, patient_id, study_index, series_number,
                              instance_number)))
    ts_uid, implicit, little, encapsulated = SYNTAXES[syntax]
    specific, sample_name, word = CHARSETS[charset]
    if patient_name is None:
        patient_name = sample_name
    if series_description is None:
        kinds = SERIES_KINDS[modality]
        series_description = "%s %s" % (kinds[(series_number - 1) % len(kinds)],
                                         word)
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    study_uid = uid(seed, patient_id, "study", study_index)
    series_uid = uid(seed, patient_id, "series", study_index, series_number)
    if sop_instance_uid is None:
        sop_instance_uid = uid(seed, patient_id, "image", study_index,
                               series_number, instance_number)

    ds = Dataset()
    if specific is not None:
        ds.SpecificCharacterSet = specific
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance_uid
    ds.StudyDate = study_date
    ds.SeriesDate = study_date
    ds.ContentDate = study_date
    ds.StudyTime = "%02d%02d%02d" % (8 + study_index % 10, rng.randrange(60),
                                     rng.randrange(60))
    ds.AccessionNumber = "ACC%05d" % rng.randrange(100000)
    ds.Modality = modality
    ds.Manufacturer = "GENDICOM"
    ds.InstitutionName = "Test Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = "STATION%d" % (series_number % 3)
    ds.StudyDescription = "Study %d %s" % (study_index + 1, word)
    ds.SeriesDescription = series_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth_date
    ds.PatientSex = "MFO"[rng.randrange(3)]
    ds.PatientAge = "%03dY" % rng.randrange(1, 99)
    ds.PatientWeight = "%d.%d" % (rng.randrange(40, 120), rng.randrange(10))
    if modality == "CT":
        ds.KVP = "120"
        ds.SliceThickness = "1.25"
    else:
        ds.MagneticFieldStrength = "3"
        ds.EchoTime = "%d" % rng.randrange(5, 120)
        ds.RepetitionTime = "%d" % rng.randrange(400, 5000)
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(study_index + 1)
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = uid(seed, patient_id, "for", study_index)
    ds.ImagePositionPatient = ["0", "0", "%d" % (instance_number * 5)]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    set_grey_pixels(ds, rows, cols, bits_stored=12)
    ds.PixelSpacing = ["0.5", "0.5"]
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    if modality == "CT":
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"

    if sequences:
        # Nested: RequestAttributesSequence > item > ScheduledProtocolCodeSequence
        request = Dataset()
        request.RequestedProcedureID = "RP%04d" % rng.randrange(10000)
        request.ScheduledProcedureStepID = "SPS1"
        request.ScheduledProtocolCodeSequence = Sequence([
            code_item("P1-%d" % series_number, "99GEN", "Protocol %s" % word)])
        ds.RequestAttributesSequence = Sequence([request])
        ds.ProcedureCodeSequence = Sequence([
            code_item("CTHEAD" if modality == "CT" else "MRHEAD", "99GEN",
                      "%s head" % modality)])
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = uid(seed, patient_id, "ref",
                                           study_index, series_number)
        ds.ReferencedImageSequence = Sequence([ref])
        ds.AnatomicRegionSequence = Sequence([
            code_item("T-D1100", "SRT", "Head")])

    if private:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "LO", "private text %d" % instance_number)
        block.add_new(0x02, "US", rng.randrange(65536))
        block.add_new(0x03, "OB", bytes(rng.randrange(256) for _ in range(6)))
        inner = Dataset()
        inner_block = inner.private_block(PRIVATE_GROUP, PRIVATE_CREATOR,
                                          create=True)
        inner_block.add_new(0x01, "LO", "nested private")
        inner.ReferencedSOPInstanceUID = sop_instance_uid
        block.add_new(0x04, "SQ", Sequence([inner]))

    raw = pixel_bytes(rows, cols, rng, little_endian=little)
    if encapsulated:
        ds.PixelData = pydicom.encaps.encapsulate(fake_fragments(raw, rng),
                                                  has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.LossyImageCompression = "00"
    else:
        ds.PixelData = raw
        ds["PixelData"].VR = "OW"

    meta = file_meta(sop_class, sop_instance_uid, ts_uid)
    meta.ImplementationVersionName = "GENDICOM_1"
    ds.file_meta = meta
    ds.is_implicit_VR = implicit
    ds.is_little_endian = little
    return ds


def write(ds, path, syntax=None, form="part10"):
    """Write ds to path. syntax (a SYNTAXES key) overrides the one ds was
    made for (pixel bytes are then left as they are). form: "part10"
    (preamble, DICM, meta header), "no-preamble" (meta header without the
    128-byte preamble and DICM) or "bare" (the dataset alone, as old
    modalities wrote it; deflated and encapsulated syntaxes need a meta
    header, so they are refused)."""
    if form not in FORMS:
        raise ValueError("form must be one of %s" % (FORMS,))
    if syntax is not None:
        ts_uid, implicit, little, _ = SYNTAXES[syntax]
        ds.file_meta.TransferSyntaxUID = ts_uid
        ds.is_implicit_VR = implicit
        ds.is_little_endian = little
    if form == "part10":
        ds.preamble = b"\x00" * 128
        pydicom.dcmwrite(path, ds, write_like_original=False)
        return
    ts_uid = str(ds.file_meta.TransferSyntaxUID)
    ds.preamble = None
    if form == "bare":
        if ts_uid not in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1"):
            raise ValueError("a bare dataset must be implicit or explicit "
                             "VR little endian")
        meta = ds.file_meta
        ds.file_meta = FileMetaDataset()
        try:
            pydicom.dcmwrite(path, ds, write_like_original=True)
        finally:
            ds.file_meta = meta
        return
    # no-preamble: a complete meta header (with its group length), but no
    # preamble and no DICM prefix.
    buf = io.BytesIO()
    ds.preamble = b"\x00" * 128
    pydicom.dcmwrite(buf, ds, write_like_original=False)
    with open(path, "wb") as f:
        f.write(buf.getvalue()[132:])


def generate(out, patients=3, studies=2, series=2, images=5, rows=64, cols=64,
             seed=0, syntax="explicit_le", form="part10", extension=True):
    """The CLI's tree. syntax "mixed" cycles through SYNTAXES per series.
    Returns the list of paths written."""
    paths = []
    rng = random.Random(seed)
    syntax_names = list(SYNTAXES)
    for p in range(patients):
        patient_id = "PAT%04d" % (p + 1)
        charset = CHARSET_CYCLE[p % len(CHARSET_CYCLE)]
        birth = "19%02d%02d%02d" % (rng.randrange(30, 99), rng.randrange(1, 13),
                                    rng.randrange(1, 29))
        folder = os.path.join(out, patient_id)
        os.makedirs(folder, exist_ok=True)
        for st in range(studies):
            date = "20%02d%02d%02d" % (rng.randrange(10, 25), rng.randrange(1, 13),
                                       rng.randrange(1, 29))
            modality = "CT" if (p + st) % 2 == 0 else "MR"
            for se in range(series):
                name = syntax
                if syntax == "mixed":
                    name = syntax_names[(p * studies * series + st * series + se)
                                        % len(syntax_names)]
                for im in range(images):
                    ds = make_dataset(patient_id=patient_id, charset=charset,
                                      birth_date=birth, study_date=date,
                                      study_index=st, series_number=se + 1,
                                      instance_number=im + 1, modality=modality,
                                      rows=rows, cols=cols, seed=seed,
                                      syntax=name)
                    fname = "IM_%d_%d_%04d%s" % (st + 1, se + 1, im + 1,
                                                 ".dcm" if extension else "")
                    path = os.path.join(folder, fname)
                    this_form = form
                    if form == "bare" and name not in ("explicit_le", "implicit_le"):
                        this_form = "part10"
                    write(ds, path, form=this_form)
                    paths.append(path)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--patients", type=int, default=3)
    ap.add_argument("--studies", type=int, default=2)
    ap.add_argument("--series", type=int, default=2)
    ap.add_argument("--images", type=int, default=5)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--transfer-syntax", default="explicit_le",
                    choices=list(SYNTAXES) + ["mixed"])
    ap.add_argument("--form", default="part10", choices=FORMS)
    ap.add_argument("--no-extension", action="store_true")
    a = ap.parse_args(argv)
    for name in ("patients", "studies", "series", "images", "rows", "cols"):
        if getattr(a, name) < (0 if name != "rows" and name != "cols" else 1):
            ap.error("--%s must not be negative" % name)
    paths = generate(a.out, a.patients, a.studies, a.series, a.images, a.rows,
                     a.cols, a.seed, a.transfer_syntax, a.form,
                     not a.no_extension)
    print("wrote %d files into %s" % (len(paths), a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
