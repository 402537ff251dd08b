"""Issue 11 class 7: dates under Modified Dates. A range A-B shifts both
ends; an invalid date (00000000, 20231340, UNKNOWN) never gives a
malformed value (it becomes the fixed dummy 19000101); DT offsets and
times stay as they are."""

import datetime
import re

import pytest

from advlib import base_ct, load, part10
from conftest import days_between, output_files, shift_date

DA_RE = re.compile(r"^\d{8}$")


def dated_file(path):
    ds = base_ct("Date^Dora", "DD-1")
    ds.StudyDate = "20210314"
    ds.AcquisitionDate = "00000000"              # invalid
    ds.ContentDate = "20231340"                  # invalid month/day
    ds.InstanceCreationDate = "UNKNOWN"          # not a date at all
    ds.add_new(0x00080021, "DA", "20210101-")    # open range (SeriesDate)
    ds.add_new(0x0008002A, "DT", "20210314101500.123456+0130")
    ds.add_new(0x00181202, "DT", "20210301-20210314")  # DateTimeOfLastCalibration
    ds.add_new(0x00181200, "DA", ["20210314", "20200229"])  # leap day
    return part10(ds, [], path)


@pytest.fixture
def shifted(run_dicomsort, secret, tmp_path):
    dated_file(tmp_path / "in" / "d.dcm")
    result = run_dicomsort(tmp_path / "in", tmp_path / "out", "--profile",
                           "basic", "--secret", secret,
                           "--retain-long-modified-dates",
                           "--retain-device-identity")
    assert result.rc == 0, result
    outs = output_files(tmp_path / "out")
    assert len(outs) == 1
    ds = load(outs[0])
    days = days_between("20210314", str(ds.StudyDate))
    assert 1 <= days <= 365
    return ds, days


def test_range_shifts_both_ends(shifted):
    ds, days = shifted
    assert str(ds.SeriesDate) == \
        f"{shift_date('20210101', days)}-"
    cal = str(ds[0x00181202].value)
    assert cal == f"{shift_date('20210301', days)}-{shift_date('20210314', days)}"


def test_invalid_dates_become_dummy(shifted):
    ds, _ = shifted
    for kw in ("AcquisitionDate", "ContentDate", "InstanceCreationDate"):
        assert str(ds.get(kw)) == "19000101", kw


def test_dt_keeps_time_and_offset(shifted):
    ds, days = shifted
    got = str(ds[0x0008002A].value)
    assert got == shift_date("20210314", days) + "101500.123456+0130"


def test_every_date_well_formed(shifted):
    ds, days = shifted
    cal = [str(v) for v in ds[0x00181200].value]
    assert cal[0] == shift_date("20210314", days)
    assert cal[1] == shift_date("20200229", days)
    for elem in ds.iterall():
        if elem.VR != "DA" or not elem.value:
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        for v in values:
            for end in str(v).split("-"):
                if end:
                    assert DA_RE.match(end), (elem.keyword, v)
                    datetime.datetime.strptime(end, "%Y%m%d")
