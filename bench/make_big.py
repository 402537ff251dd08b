#!/usr/bin/python3
"""Write one CT image whose PixelData is SIZE_MB megabytes, streamed to disk.

Usage: make_big.py PATH SIZE_MB
The dataset is written with pydicom, then the PixelData element (explicit VR
little endian OW) is appended chunk by chunk, so this script stays small too.
"""
import os
import struct
import sys

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "tests", "tools"))
from gendicom import file_meta, set_grey_pixels  # noqa: E402

path, size_mb = sys.argv[1], int(sys.argv[2])
side = 1
while side * side * 2 < size_mb * 1024 * 1024:
    side += 256
meta = file_meta("1.2.840.10008.5.1.4.1.1.2", generate_uid(),
                 ExplicitVRLittleEndian, implementation=None)
ds = Dataset()
ds.file_meta = meta
ds.is_little_endian = True
ds.is_implicit_VR = False
ds.SOPClassUID = meta.MediaStorageSOPClassUID
ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
ds.PatientName = "Big^File"
ds.PatientID = "BIG001"
ds.PatientBirthDate = "19700101"
ds.StudyDate = "20240101"
ds.StudyInstanceUID = generate_uid()
ds.SeriesInstanceUID = generate_uid()
ds.SeriesNumber = "1"
ds.SeriesDescription = "big image"
ds.Modality = "CT"
set_grey_pixels(ds, side, side)
pydicom.dcmwrite(path, ds, write_like_original=False)
length = side * side * 2
chunk = bytes(range(256)) * 4096
with open(path, "ab") as f:
    f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length))
    left = length
    while left > 0:
        n = min(left, len(chunk))
        f.write(chunk[:n])
        left -= n
print(path, length)
