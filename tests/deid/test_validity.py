"""Validity: de-identified outputs parse (pydicom, dcmdump) and dciodvfy finds no error the input did not have."""

import re
import subprocess

import pytest

from conftest import by_name, ct_image, read, which, write
from test_leak import PATIENTS, planted_dataset

OPTION_SETS = {
    "basic": [],
    "options": ["--retain-long-modified-dates", "--clean-descriptors",
                "--retain-device-identity", "--retain-patient-characteristics",
                "--retain-institution-identity", "--clean-structured-content",
                "--clean-graphics"],
    "retain": ["--retain-uids", "--retain-long-full-dates",
               "--retain-safe-private"],
}


@pytest.fixture(scope="module")
def validity_input(tmp_path_factory):
    in_dir = tmp_path_factory.mktemp("validity") / "in"
    write(ct_image(patient_name="Validus^Victor", patient_id="VV-1"),
          in_dir / "ct.dcm")
    utf8 = ct_image(patient_name="Ødegård^Zoë", patient_id="VV-2",
                    study=2)
    utf8.SpecificCharacterSet = "ISO_IR 192"
    write(utf8, in_dir / "ct-utf8.dcm")
    for k, p in enumerate(PATIENTS):
        write(planted_dataset(p, k), in_dir / f"planted{k}.dcm")
    return in_dir


def normalized(line):
    """An error message without its values, so input and output compare."""
    line = re.sub(r"<[^>]*>", "<>", line)
    line = re.sub(r"\[[^\]]*\]", "[]", line)
    line = re.sub(r"\d+", "N", line)
    return re.sub(r"\s+", " ", line).strip()


def dciodvfy_errors(path):
    proc = subprocess.run([which("dciodvfy"), str(path)], capture_output=True,
                          timeout=60)
    text = (proc.stdout + proc.stderr).decode("utf-8", "replace")
    return {normalized(line) for line in text.splitlines()
            if line.startswith("Error")}, text


def test_ct_input_is_clean(validity_input):
    """The realistic CT input passes dciodvfy without errors."""
    errors, text = dciodvfy_errors(validity_input / "ct.dcm")
    assert not errors, text


@pytest.mark.parametrize("options", list(OPTION_SETS))
def test_outputs_valid(options, validity_input, run_dicomsort, secret,
                       tmp_path):
    result = run_dicomsort(validity_input, tmp_path / "out", "--profile",
                           "basic", "--secret", secret, "--quiet",
                           *OPTION_SETS[options])
    assert result.rc == 0, result
    outputs = by_name(tmp_path / "out")
    assert sorted(outputs) == sorted(p.name for p in validity_input.iterdir())
    dcmdump = which("dcmdump")
    problems = []
    for name, path in sorted(outputs.items()):
        ds = read(path)
        ds.decode()  # every text value decodes with its character set
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert ds.PixelData == read(validity_input / name).PixelData
        dump = subprocess.run([dcmdump, "-q", str(path)], capture_output=True,
                              timeout=60)
        if dump.returncode != 0 or dump.stderr:
            problems.append(f"{name}: dcmdump rc={dump.returncode} "
                            f"{dump.stderr[-500:]!r}")
        before, _ = dciodvfy_errors(validity_input / name)
        after, text = dciodvfy_errors(path)
        new = sorted(after - before)
        if new:
            problems.append(f"{name}: dciodvfy errors the input did not "
                            f"have:\n  " + "\n  ".join(new))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
