"""Helpers for the adversarial de-identification tests (issue 11): files
built the way real archives produce them (values passed through a system
that did not know them, UN encodings) and a leak scanner that looks for
each planted string in several encodings.

Files are assembled from raw element bytes where pydicom cannot write the
form (undefined-length UN), so the encodings under test are exactly the
ones named here.
"""

import io
import json
import os
import pathlib
import re
import shutil
import signal
import struct
import subprocess
import time

import pydicom
import pydicom.charset
from pydicom.dataset import Dataset
from pydicom.filewriter import write_dataset

from conftest import ct_image, new_meta, output_files


# ---- raw encoding ----

def implicit_bytes(ds):
    """ds as implicit VR little endian dataset bytes."""
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = True
    write_dataset(buf, ds)
    return buf.getvalue()


def explicit_bytes(ds):
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_dataset(buf, ds)
    return buf.getvalue()


def tag_bytes(tag):
    return struct.pack("<HH", tag >> 16, tag & 0xffff)


def un_element(tag, value):
    """(tag) UN with a defined length, value padded to even length."""
    if len(value) % 2:
        value += b"\0" if tag & 0xffff else b" "
    return tag_bytes(tag) + b"UN\0\0" + struct.pack("<I", len(value)) + value


def item(ds, undefined=False):
    body = implicit_bytes(ds)
    if undefined:
        return (tag_bytes(0xfffee000) + b"\xff\xff\xff\xff" + body +
                tag_bytes(0xfffee00d) + b"\0\0\0\0")
    return tag_bytes(0xfffee000) + struct.pack("<I", len(body)) + body


def un_sequence(tag, items, undefined=False, undefined_items=False):
    """A sequence written as UN: its items in implicit VR little endian
    (CP 246), the element of defined or undefined length."""
    body = b"".join(item(d, undefined_items) for d in items)
    if undefined:
        return (tag_bytes(tag) + b"UN\0\0" + b"\xff\xff\xff\xff" + body +
                tag_bytes(0xfffee0dd) + b"\0\0\0\0")
    return tag_bytes(tag) + b"UN\0\0" + struct.pack("<I", len(body)) + body


def part10(ds, raw_elements, path, implicit=False):
    """Write ds plus raw (tag, bytes) elements as a Part 10 file. The raw
    elements are merged in tag order with ds's own (explicit VR little
    endian unless implicit)."""
    new_meta(ds, "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1")
    meta = pydicom.filebase.DicomBytesIO()
    meta.is_little_endian = True
    meta.is_implicit_VR = False
    pydicom.filewriter.write_file_meta_info(meta, ds.file_meta,
                                            enforce_standard=True)
    pydicom.filewriter.correct_ambiguous_vr(ds, True)
    charset = ds.get("SpecificCharacterSet", "ISO_IR 6")
    encodings = pydicom.charset.convert_encodings(
        charset if isinstance(charset, (list, pydicom.multival.MultiValue))
        else [charset])
    chunks = []
    for elem in ds:
        buf = pydicom.filebase.DicomBytesIO()
        buf.is_little_endian = True
        buf.is_implicit_VR = implicit
        pydicom.filewriter.write_data_element(buf, elem, encodings)
        chunks.append((elem.tag, buf.getvalue()))
    chunks += list(raw_elements)
    chunks.sort(key=lambda c: c[0])
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + meta.getvalue() +
                     b"".join(c[1] for c in chunks))
    return path


# ---- leak scanning ----

def encodings(text):
    """The byte forms a planted string may take: as written, lower and
    upper case, UTF-8, Latin-1, UTF-16 (both orders) and hex digits."""
    out = set()
    for form in {text, text.lower(), text.upper()}:
        for enc in ("utf-8", "latin-1", "utf-16-le", "utf-16-be"):
            try:
                out.add(form.encode(enc))
            except UnicodeEncodeError:
                pass
        raw = form.encode("utf-8")
        out.add(raw.hex().encode())
        out.add(raw.hex().upper().encode())
        out.add("\\".join(f"{b:02x}" for b in raw).encode())
    return out


def find(needles, data, where):
    """[message] for every needle found in data (bytes) in any encoding."""
    low = data.lower()
    found = []
    for text in needles:
        if any(f in data or f.lower() in low for f in encodings(text)):
            found.append(f"{text!r} in {where}")
    return found


def scan_run(needles, result, out_dir):
    """Every planted string in output bytes, output paths, stdout, stderr
    and the batch's working directory (missing-IDs log)."""
    problems = []
    for path in output_files(out_dir):
        rel = str(path.relative_to(out_dir))
        problems += find(needles, rel.encode(), f"path {rel}")
        problems += find(needles, path.read_bytes(), f"file {rel}")
    problems += find(needles, result.stdout, "stdout")
    problems += find(needles, result.stderr, "stderr")
    for path in output_files(result.cwd):
        problems += find(needles, path.read_bytes(), f"cwd file {path.name}")
    return problems


def base_ct(name, pid, study=1):
    """A small valid CT without anything the tests plant."""
    ds = ct_image(patient_name=name, patient_id=pid, study=study)
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


def json_of(result):
    return json.loads(result.stdout.decode("utf-8"))


def load(path):
    return pydicom.dcmread(io.BytesIO(pathlib.Path(path).read_bytes()))


def dciodvfy_errors(path):
    """dciodvfy's error lines for path, values (not names) blanked."""
    tool = shutil.which("dciodvfy")
    if tool is None:
        return None
    proc = subprocess.run([tool, str(path)], capture_output=True, timeout=60)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return {re.sub(r"= <[^>]*>|\[[^\]]*\]", "=<>", line).strip()
            for line in text.splitlines() if line.startswith("Error")}


def new_dciodvfy_errors(src, out):
    """Errors dciodvfy finds in out but not in src (empty without it)."""
    before, after = dciodvfy_errors(src), dciodvfy_errors(out)
    return set() if before is None else after - before


def drain_through_daemon(dicomsortd_bin, conf, sources, drop, out, log_path,
                         count, drain_s):
    """Start dicomsortd on conf, deliver each source into drop the way a
    careful sender does (hidden temp name, then rename), wait up to
    drain_s for count outputs and an empty drop folder, stop it with
    SIGTERM and return its log (stderr, --debug) as bytes."""
    log = open(log_path, "wb")
    proc = subprocess.Popen([dicomsortd_bin, "-c", str(conf), "--log-target",
                             "stderr", "--debug"], stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        time.sleep(0.5)
        for src in sources:
            tmp = drop / ("." + src.name + ".part")
            shutil.copyfile(src, tmp)
            os.rename(tmp, drop / src.name)
        deadline = time.monotonic() + drain_s
        while time.monotonic() < deadline:
            if len(output_files(out)) >= count and not any(drop.iterdir()):
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    return log_path.read_bytes()
