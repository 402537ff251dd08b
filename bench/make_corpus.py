#!/usr/bin/python3
"""Write a benchmark corpus of DICOM files with pydicom, deterministically.

Usage:
  make_corpus.py --out DIR --files N [--patients P] [--rows R] [--cols C]
                 [--frames F] [--series-per-patient S]

N single- or multi-frame 16-bit CT images of R x C pixels (F frames each),
explicit VR little endian Part 10 files, spread over P patients with one
study each and S series per study. Each file carries what real CT headers
carry that matters to a sorter: the sorting attributes, a Latin-1
PatientName (SpecificCharacterSet ISO_IR 100) for some patients, a nested
sequence and a private block. File names are unique across the corpus
(DIR/pNN/<name>.dcm), so a flat `mv` baseline never clashes.

Pixel bytes differ per file (the instance number is stamped into them), so
no two files are identical. Also writes DIR.plan: one line per file,
"<relative source>\t<destination folder>" for the default layout, which the
harness uses for its plain-mv baseline.
"""
import argparse
import os
import random
import struct
import sys

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

CT = "1.2.840.10008.5.1.4.1.1.2"
ROOT = "1.2.826.0.1.3680043.10.7613.99"


def series_template(p, s, rows, cols, frames):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT
    meta.MediaStorageSOPInstanceUID = f"{ROOT}.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = f"{ROOT}.0"
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian = True
    ds.is_implicit_VR = False
    latin = p % 3 == 1
    ds.SpecificCharacterSet = "ISO_IR 100" if latin else ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CT
    ds.StudyDate = f"2024{1 + p % 12:02d}{1 + p % 28:02d}"
    ds.SeriesDate = ds.StudyDate
    ds.StudyTime = "101500"
    ds.AccessionNumber = f"ACC{p:05d}"
    ds.Modality = "CT"
    ds.Manufacturer = "BenchCorp"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Doe^John"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT THORAX"
    ds.SeriesDescription = ["Thorax 1.0 B30f", "Abdomen 5.0 B20f",
                            "Scout", "Lung 1.0 B70f"][s % 4]
    ds.PatientName = f"M\u00fcller^J\u00fcrgen{p}" if latin else f"Patient^P{p:03d}"
    ds.PatientID = f"PAT{p:04d}"
    ds.PatientBirthDate = f"19{40 + p % 50:02d}0101"
    ds.PatientSex = "MF"[p % 2]
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.StudyInstanceUID = f"{ROOT}.{p}.1"
    ds.SeriesInstanceUID = f"{ROOT}.{p}.1.{s + 1}"
    ds.StudyID = "1"
    ds.SeriesNumber = s + 1
    code = Dataset()
    code.CodeValue = "CTTHOR"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "CT Thorax"
    ds.ProcedureCodeSequence = Sequence([code])
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = f"{ROOT}.{p}.1.{s + 1}.0"
    ds.ReferencedImageSequence = Sequence([ref])
    ds.FrameOfReferenceUID = f"{ROOT}.{p}.1.9"
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    block = ds.private_block(0x0029, "BENCH PRIVATE", create=True)
    block.add_new(0x10, "LO", "private value")
    block.add_new(0x11, "OB", b"\x00" * 64)
    return ds


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--files", type=int, required=True)
    ap.add_argument("--patients", type=int, default=20)
    ap.add_argument("--series-per-patient", type=int, default=4)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--cols", type=int, default=512)
    ap.add_argument("--frames", type=int, default=1)
    a = ap.parse_args()

    npix = a.rows * a.cols * a.frames * 2
    rnd = random.Random(7613)
    noise = bytes(rnd.getrandbits(8) & 0x0F for _ in range(min(npix, 1 << 20)))
    plan = []
    nseries = a.patients * a.series_per_patient
    templates = {}
    os.makedirs(a.out, exist_ok=True)
    for i in range(a.files):
        k = i % nseries
        p, s = k // a.series_per_patient, k % a.series_per_patient
        if k not in templates:
            templates[k] = series_template(p, s, a.rows, a.cols, a.frames)
        ds = templates[k]
        inst = i // nseries + 1
        uid = f"{ROOT}.{p}.1.{s + 1}.{inst}"
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = inst
        ds.ImagePositionPatient = [0, 0, -inst]
        # Unique pixel bytes without building npix bytes in Python per file.
        stamp = struct.pack("<II", i, inst)
        if npix <= len(noise):
            pixels = stamp + noise[len(stamp):npix]
        else:
            reps = -(-npix // len(noise))
            pixels = (stamp + (noise * reps)[len(stamp):npix])
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
        folder = f"p{p:02d}"
        name = f"CT{p:02d}{s:02d}{i:07d}.dcm"
        os.makedirs(os.path.join(a.out, folder), exist_ok=True)
        ds.save_as(os.path.join(a.out, folder, name), write_like_original=False)
        desc = str(ds.SeriesDescription).replace(" ", "_").replace(".", "_")
        plan.append(f"{folder}/{name}\t{ds.PatientID}/{ds.StudyDate}/"
                    f"{ds.SeriesNumber}_{desc}")
    with open(a.out.rstrip("/") + ".plan", "w") as f:
        f.write("\n".join(plan) + "\n")
    print(f"{a.files} files in {a.out}")


if __name__ == "__main__":
    sys.exit(main())
