"""Pseudonyms are HMAC-SHA-256 of the site secret, whatever the secret's
length, computed here independently with Python's hmac module.

dicomsort computes the keyed hash from precomputed SHA-256 pad states
(issue 14: a copy of a keyed EVP_MAC_CTX per UID cost 1.2 us); a pseudonym
must never change with how it is computed, or one patient's data would be
split over two pseudonyms between versions. Secrets up to the SHA-256
block size (64 bytes) are the key itself; longer ones are hashed first
(RFC 2104), so both sides of 64 are tested, and a secret file's trailing
newline is not part of the key.
"""

import hashlib
import hmac

import pytest

from conftest import ct_image, make_secret, output_files, read, write


def keyed(secret, domain, text):
    return hmac.new(secret, domain.encode() + b"\0" + text.encode(),
                    hashlib.sha256).digest()


def expected_uid(secret, uid):
    return "2.25." + str(int.from_bytes(keyed(secret, "uid", uid)[:16], "big"))


def expected_id(secret, patient_id):
    return "ANON" + keyed(secret, "patient-id", patient_id)[:6].hex().upper()


@pytest.mark.parametrize("length", [16, 63, 64, 65, 200, 4000])
def test_pseudonyms_are_hmac_of_the_secret(run_dicomsort, tmp_path, length):
    text = ("k3y-" * 1000)[:length]
    secret = make_secret(tmp_path / "secret", text)
    key = text.encode()
    ds = ct_image(patient_id="TP-0042")
    write(ds, tmp_path / "in" / "a.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret)
    assert result.rc == 0, result
    (out,) = output_files(tmp_path / "out")
    got = read(out)
    assert got.PatientID == expected_id(key, "TP-0042")
    assert got.SOPInstanceUID == expected_uid(key, ds.SOPInstanceUID)
    assert got.StudyInstanceUID == expected_uid(key, ds.StudyInstanceUID)
    assert got.SeriesInstanceUID == expected_uid(key, ds.SeriesInstanceUID)
    # The meta header says the same as the dataset.
    assert got.file_meta.MediaStorageSOPInstanceUID == got.SOPInstanceUID
