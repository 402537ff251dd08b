#!/usr/bin/python3
"""The senders of the soak (tests/robust/test_soak.py): one process per
kind of bad behaviour, each with a few threads, writing into a running
dicomsortd's drop folder until a deadline.

    soak_writers.py --input DIR --manifest FILE --kind KIND --prefix NN
                    --seconds S --threads T --seed N --settle-ms MS

Every input is a real Part 10 file made with tests/tools/gendicom.py
(real header, nested sequences, private tags, several character sets)
whose pixel data is random. Each version of each input carries one tag,
"SOAK<prefix><serial>v<version>", both in ImageComments and in the first
bytes of its pixel data, so an output that mixes the header of one version
with the pixels of another shows it. Versions of one input (in-place
rewrites) keep the SOPInstanceUID, the size and the modification time, and
change the PatientID (same length), the tag and the pixels: like a
corrected re-send through `rsync --inplace -t`.

The manifest gets one JSON line per input once its writer is done with it:
its id, kind, SOPInstanceUID, the SHA-256 of every version written, which
one is final, the names it had, and for a bad (non-DICOM) file bad=true.
The test reads the manifests after the writers stopped and checks the
daemon's outputs, quarantine and records against them.

Kinds (what a gateway's worst senders do):
  pause-header  pauses before the PixelData element (longer than settle_ms,
                often longer than a rescan interval), then writes the rest
  pause-pixels  pauses inside the pixel data
  inplace       writes a file, then rewrites it in place 1-3 times (same
                size, new content, mtime restored with futimens like
                rsync --inplace -t), at random moments: before, while or
                after the daemon takes it
  temp-rename   writes NAME.part (ignored), then renames it to NAME.dcm,
                sometimes into another folder, sometimes after a pause
  rename        writes NAME.dcm, then renames it at a random moment (it
                may be in flight) to another name or folder
  recycle       writes a batch into a folder, waits for it to drain,
                removes the folder and creates it again at once
  samename      many files named IMG0001.dcm in distinct folders, all of
                one series (name clashes in one output folder); some are
                re-sent identical (the duplicate rule)
  bad           non-DICOM files (random bytes, text, a DICM prefix on
                garbage) among a few good ones
"""

import argparse
import errno
import hashlib
import io
import json
import os
import pathlib
import random
import sys
import threading
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[0] / "tools"))

import gendicom  # noqa: E402
import pydicom  # noqa: E402

SYNTAX_HEADER = {"explicit_le": 12, "implicit_le": 8}
CHARSETS = ("latin1", "utf8", "cyrillic", "greek", "ascii", "japanese")
TAG_LEN = 17


def tag_of(prefix, serial, version):
    """The id of one version: fixed width (TAG_LEN), ASCII."""
    t = "SOAK%s%08dv%02d" % (prefix, serial, version)
    assert len(t) == TAG_LEN, t
    return t


class Input:
    """One logical input: its versions and where it lived."""

    def __init__(self, kind, prefix, serial, rng, patient=None,
                 series=None, charset=None):
        self.kind = kind
        self.prefix = prefix
        self.serial = serial
        self.id = "%s%08d" % (prefix, serial)
        self.rng = rng
        self.syntax = rng.choice(list(SYNTAX_HEADER))
        self.charset = charset or rng.choice(CHARSETS)
        self.rows = rng.choice((32, 64, 96, 128))
        self.cols = rng.choice((32, 64, 96, 128))
        self.patient = patient
        self.series = series if series is not None else rng.randrange(1, 4)
        self.sop = "%s.77.%s.%d" % (gendicom.UID_ROOT, prefix, serial)
        self.versions = []       # (tag, sha256, patient id)
        self.names = []
        self.notes = []
        self.pixel_offset = None

    def version(self, patient=None):
        """The bytes of a new version (same size as the first); patient
        (7 characters) overrides the PatientID."""
        v = len(self.versions) + 1
        tag = tag_of(self.prefix, self.serial, v)
        pid = patient or self.patient or "SOAKP%02d" % self.rng.randrange(100)
        assert len(pid) in (7, 8), pid
        ds = gendicom.make_dataset(
            patient_id="SOAKBASE", charset=self.charset,
            series_number=self.series, seed=int(self.prefix),
            sop_instance_uid=self.sop, syntax=self.syntax, rows=8, cols=8)
        ds.PatientID = pid
        ds.ImageComments = tag
        ds.Rows = self.rows
        ds.Columns = self.cols
        npix = self.rows * self.cols * 2
        ds.PixelData = tag.encode() + self.rng.randbytes(npix - len(tag))
        buf = io.BytesIO()
        ds.preamble = b"\0" * 128
        pydicom.dcmwrite(buf, ds, write_like_original=False)
        data = buf.getvalue()
        assert data.endswith(ds.PixelData)
        off = len(data) - npix
        if self.versions:
            assert len(data) == self.first_size, "a version changed size"
            assert off == self.pixel_offset
        else:
            self.first_size = len(data)
            self.pixel_offset = off
        self.versions.append((tag, hashlib.sha256(data).hexdigest(), pid))
        return data

    def record(self, bad=False):
        return {"id": self.id, "kind": self.kind, "sop": self.sop,
                "versions": [{"tag": t, "sha256": s, "patient": p}
                             for t, s, p in self.versions],
                "final": self.versions[-1][1] if self.versions else None,
                "names": self.names, "notes": self.notes, "bad": bad}


class Writer:
    def __init__(self, args, index):
        self.args = args
        self.input = pathlib.Path(args.input)
        self.prefix = args.prefix
        self.rng = random.Random("%s-%d-%d" % (args.prefix, args.seed, index))
        self.index = index
        self.settle = args.settle_ms / 1000.0
        self.deadline = time.monotonic() + args.seconds
        self.stats = {"files": 0, "versions": 0, "rewrites": 0,
                      "rewrites_in_place": 0, "renames": 0,
                      "renames_lost": 0, "recycles": 0, "bad": 0,
                      "pauses": 0, "resends": 0}
        self.records = []

    # -- plumbing --

    def serial(self):
        with Writer.lock:
            Writer.next_serial += 1
            return Writer.next_serial

    def folder(self, *parts):
        return self.input.joinpath("w%s" % self.prefix, *parts)

    def open_new(self, path, flags=os.O_WRONLY | os.O_CREAT | os.O_EXCL):
        """Create path; its folder is made again if the daemon's cleanup
        (or a recycler) removed it meanwhile, as a robust sender does."""
        for _ in range(50):
            try:
                return os.open(path, flags, 0o644)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(path), exist_ok=True)
        raise OSError(errno.ENOENT, "folder keeps vanishing", str(path))

    def write_all(self, fd, data, chunk=None):
        view = memoryview(data)
        chunk = chunk or len(data)
        while view:
            n = os.write(fd, view[:chunk])
            view = view[n:]

    def rename(self, src, dst):
        """rename(2), making dst's folder if the daemon removed it."""
        for _ in range(50):
            try:
                os.rename(src, dst)
                return True
            except FileNotFoundError:
                if not os.path.exists(src):
                    return False
                os.makedirs(os.path.dirname(dst), exist_ok=True)
        return False

    def nap(self, lo, hi):
        time.sleep(self.rng.uniform(lo, hi))

    def done(self, it, bad=False):
        self.stats["files"] += 1
        self.stats["versions"] += len(it.versions)
        self.records.append(it.record(bad))

    # -- kinds --

    def pause_writer(self, inside_pixels):
        it = Input(self.args.kind, self.prefix, self.serial(), self.rng)
        data = it.version()
        hdr = SYNTAX_HEADER[it.syntax]
        if inside_pixels:
            cut = it.pixel_offset + self.rng.randrange(
                TAG_LEN, len(data) - it.pixel_offset - 2)
        else:
            cut = it.pixel_offset - hdr
        path = self.folder("p%d" % self.index, "%s.dcm" % it.id)
        it.names.append(str(path.relative_to(self.input)))
        fd = self.open_new(str(path))
        try:
            self.write_all(fd, data[:cut], chunk=4096)
            self.stats["pauses"] += 1
            # Longer than settle_ms, often longer than a rescan interval.
            self.nap(self.settle * 2, max(self.settle * 4, 3.5))
            self.write_all(fd, data[cut:], chunk=8192)
        finally:
            os.close(fd)
        self.done(it)

    def inplace(self):
        it = Input("inplace", self.prefix, self.serial(), self.rng)
        path = self.folder("r%d" % self.index, "%s.dcm" % it.id)
        it.names.append(str(path.relative_to(self.input)))
        data = it.version()
        fd = self.open_new(str(path))
        self.write_all(fd, data)
        os.close(fd)
        st = os.stat(path)
        for _ in range(self.rng.randrange(1, 4)):
            # Before, while or after the daemon takes it.
            self.nap(0, self.settle * 3)
            data = it.version()
            self.stats["rewrites"] += 1
            try:
                fd = os.open(path, os.O_WRONLY)
                self.stats["rewrites_in_place"] += 1
                it.notes.append("v%d in place" % len(it.versions))
            except FileNotFoundError:
                # Taken meanwhile: rsync creates it again.
                fd = self.open_new(str(path))
                it.notes.append("v%d anew" % len(it.versions))
            try:
                half = self.rng.randrange(it.pixel_offset, len(data))
                self.write_all(fd, data[:half], chunk=16384)
                if self.rng.random() < 0.3:
                    self.nap(0, self.settle)
                self.write_all(fd, data[half:], chunk=16384)
                # rsync -t: the old modification time, so size and mtime
                # both say "unchanged".
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
        self.done(it)

    def temp_rename(self):
        it = Input("temp-rename", self.prefix, self.serial(), self.rng)
        data = it.version()
        tmp = self.folder("t%d" % self.index, "%s.part" % it.id)
        fd = self.open_new(str(tmp))
        self.write_all(fd, data, chunk=8192)
        os.close(fd)
        if self.rng.random() < 0.3:
            self.nap(0, self.settle * 3)
        sub = "t%d" % self.index if self.rng.random() < 0.7 else "t%dx" % (
            self.index)
        dst = self.folder(sub, "%s.dcm" % it.id)
        if not self.rename(str(tmp), str(dst)):
            raise RuntimeError("an ignored .part vanished: %s" % tmp)
        self.stats["renames"] += 1
        it.names.append(str(dst.relative_to(self.input)))
        self.done(it)

    def rename_inflight(self):
        it = Input("rename", self.prefix, self.serial(), self.rng)
        data = it.version()
        src = self.folder("n%d" % self.index, "%s.dcm" % it.id)
        fd = self.open_new(str(src))
        self.write_all(fd, data, chunk=8192)
        os.close(fd)
        it.names.append(str(src.relative_to(self.input)))
        self.nap(0, self.settle * 4)
        other = self.rng.choice(("n%d" % self.index, "n%dy" % self.index))
        dst = self.folder(other, "%s-mv.dcm" % it.id)
        if self.rename(str(src), str(dst)):
            self.stats["renames"] += 1
            it.names.append(str(dst.relative_to(self.input)))
            it.notes.append("renamed")
        else:
            self.stats["renames_lost"] += 1
            it.notes.append("taken before the rename")
        self.done(it)

    def recycle(self):
        sub = self.folder("c%d" % self.index)
        batch = []
        for _ in range(self.rng.randrange(2, 6)):
            it = Input("recycle", self.prefix, self.serial(), self.rng)
            data = it.version()
            path = sub / ("%s.dcm" % it.id)
            fd = self.open_new(str(path))
            self.write_all(fd, data, chunk=8192)
            os.close(fd)
            it.names.append(str(path.relative_to(self.input)))
            batch.append(it)
        # Wait for the batch to drain (bounded), then remove the folder and
        # make it again at once: the next batch goes into the new one.
        end = time.monotonic() + 30
        while time.monotonic() < end:
            try:
                if not any(e.is_file() for e in os.scandir(sub)):
                    break
            except FileNotFoundError:
                break
            time.sleep(0.05)
        try:
            os.rmdir(sub)
            self.stats["recycles"] += 1
        except OSError:
            pass                # not empty, or the daemon's cleanup was first
        os.makedirs(sub, exist_ok=True)
        for it in batch:
            self.done(it)

    def samename(self):
        it = Input("samename", self.prefix, self.serial(), self.rng,
                   patient="SOAKSAME", series=7)
        data = it.version()
        path = self.folder("s%d" % self.index, "%06d" % it.serial,
                           "IMG0001.dcm")
        fd = self.open_new(str(path))
        self.write_all(fd, data, chunk=8192)
        os.close(fd)
        it.names.append(str(path.relative_to(self.input)))
        if self.rng.random() < 0.2:
            # Re-sent identical once taken: a duplicate, stored once.
            end = time.monotonic() + 20
            while os.path.exists(path) and time.monotonic() < end:
                time.sleep(0.05)
            if not os.path.exists(path):
                fd = self.open_new(str(path))
                self.write_all(fd, data, chunk=8192)
                os.close(fd)
                self.stats["resends"] += 1
                it.notes.append("re-sent identical")
        self.done(it)

    def bad(self):
        if self.rng.random() < 0.5:
            it = Input("good-among-bad", self.prefix, self.serial(), self.rng)
            data = it.version()
            path = self.folder("b%d" % self.index, "%s.dcm" % it.id)
            fd = self.open_new(str(path))
            self.write_all(fd, data)
            os.close(fd)
            it.names.append(str(path.relative_to(self.input)))
            self.done(it)
            return
        it = Input("bad", self.prefix, self.serial(), self.rng)
        what = self.rng.randrange(3)
        if what == 0:
            data = self.rng.randbytes(self.rng.randrange(200, 30000))
        elif what == 1:
            data = ("not DICOM %s\n" % it.id).encode() * self.rng.randrange(
                1, 300)
        else:
            data = b"\0" * 128 + b"DICM" + self.rng.randbytes(
                self.rng.randrange(10, 5000))
        data = it.id.encode() + data     # distinct bytes, whatever the rng
        it.versions.append(("", hashlib.sha256(data).hexdigest(), ""))
        path = self.folder("b%d" % self.index, "%s.dcm" % it.id)
        fd = self.open_new(str(path))
        self.write_all(fd, data)
        os.close(fd)
        it.names.append(str(path.relative_to(self.input)))
        self.stats["bad"] += 1
        self.done(it, bad=True)

    def run(self):
        kind = self.args.kind
        act = {"pause-header": lambda: self.pause_writer(False),
               "pause-pixels": lambda: self.pause_writer(True),
               "inplace": self.inplace, "temp-rename": self.temp_rename,
               "rename": self.rename_inflight, "recycle": self.recycle,
               "samename": self.samename, "bad": self.bad}[kind]
        try:
            while time.monotonic() < self.deadline:
                act()
                self.nap(0, self.args.gap)
        except BaseException as e:     # reported by the test, never hidden
            self.error = "%s: %r" % (kind, e)
            raise


Writer.lock = threading.Lock()
Writer.next_serial = 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--manifest", required=True)
    ap.add_argument("--kind", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--settle-ms", type=int, default=150)
    ap.add_argument("--gap", type=float, default=0.3,
                    help="longest pause between two inputs of one thread")
    args = ap.parse_args()
    assert len(args.prefix) == 2 and args.prefix.isdigit()
    writers = [Writer(args, i) for i in range(args.threads)]
    for w in writers:
        w.error = None
    threads = [threading.Thread(target=w.run) for w in writers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = {}
    with open(args.manifest, "w") as f:
        for w in writers:
            for r in w.records:
                f.write(json.dumps(r) + "\n")
            for k, v in w.stats.items():
                stats[k] = stats.get(k, 0) + v
        f.write(json.dumps({"stats": stats, "kind": args.kind,
                            "errors": [w.error for w in writers
                                       if w.error]}) + "\n")
    return 1 if any(w.error for w in writers) else 0


if __name__ == "__main__":
    sys.exit(main())
