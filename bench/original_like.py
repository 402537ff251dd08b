#!/usr/bin/python3
"""The original tool's logic on pydicom, as the benchmark baseline.

Written for the benchmark from the original tool's README (not a copy of its
code): one loop over every file below --dicomin (the original shows a tqdm
progress bar over that list; drawing it costs nothing measurable and tqdm is
not a Debian 12 package, so it is left out), skipping image files; read each
file with pydicom; with --anonymize remove PatientName and PatientBirthDate
(PatientName -> "ANONYMIZED", birth date emptied); with --ID_correlation
replace PatientID from the old/new table (comma, space or tab) and log the
IDs it lacks to missing_patient_ids.log; build
PatientID/StudyDate/SeriesNumber_SeriesDescription with each component
sanitized as pathvalidate.sanitize_filename does (not installed on Debian 12:
the same character class by regex); os.makedirs; save_as under the source's
name, or name_1, name_2, ... when the name is taken.

--jobs N runs the same per-file function in a process pool (not what the
original does; for a stronger baseline only).
"""
import argparse
import os
import re
import sys

import pydicom

SKIP = (".png", ".jpeg", ".jpg", ".gif", ".bmp")
INVALID = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')


def component(ds, keyword):
    value = str(getattr(ds, keyword, "") or "").strip() or "UNKNOWN"
    value = value.replace(" ", "_")
    if keyword == "SeriesDescription":
        value = value.replace(".", "_")
    return INVALID.sub("", value) or "UNKNOWN"


def free_name(folder, name):
    path = os.path.join(folder, name)
    stem, ext = os.path.splitext(name)
    n = 1
    while os.path.exists(path):
        path = os.path.join(folder, f"{stem}_{n}{ext}")
        n += 1
    return path


def one(src, out, anonymize, table):
    """Returns the unmapped PatientID, or None."""
    try:
        ds = pydicom.dcmread(src)
    except Exception as e:  # the original reported and went on
        print(f"Error reading {src}: {e}", file=sys.stderr)
        return None
    missing = None
    if anonymize:
        if "PatientName" in ds:
            ds.PatientName = "ANONYMIZED"
        if "PatientBirthDate" in ds:
            ds.PatientBirthDate = ""
        if table is not None:
            pid = str(getattr(ds, "PatientID", ""))
            if pid in table:
                ds.PatientID = table[pid]
            else:
                missing = pid
    folder = os.path.join(out, component(ds, "PatientID"), component(ds, "StudyDate"),
                          component(ds, "SeriesNumber") + "_" +
                          component(ds, "SeriesDescription"))
    os.makedirs(folder, exist_ok=True)
    ds.save_as(free_name(folder, os.path.basename(src)))
    return missing


def load_table(path):
    table = {}
    with open(path) as f:
        for line in f:
            parts = re.split(r"[,\s]+", line.strip())
            if len(parts) >= 2:
                table[parts[0]] = parts[1]
    return table


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dicomin", required=True)
    p.add_argument("--dicomout", required=True)
    p.add_argument("--anonymize", action="store_true")
    p.add_argument("--ID_correlation")
    p.add_argument("--jobs", type=int, default=1)
    a = p.parse_args()
    table = load_table(a.ID_correlation) if a.ID_correlation else None
    anonymize = a.anonymize or table is not None
    files = [os.path.join(r, f) for r, _, fs in os.walk(a.dicomin) for f in fs
             if not f.lower().endswith(SKIP)]
    if a.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=a.jobs) as ex:
            missing = list(ex.map(one, files, [a.dicomout] * len(files),
                                  [anonymize] * len(files), [table] * len(files),
                                  chunksize=16))
    else:
        missing = [one(f, a.dicomout, anonymize, table) for f in files]
    missing = sorted({m for m in missing if m is not None})
    if missing:
        with open("missing_patient_ids.log", "w") as f:
            f.write("".join(m + "\n" for m in missing))


if __name__ == "__main__":
    main()
