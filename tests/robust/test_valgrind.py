"""valgrind memcheck of the daemon over a burst (issue 5, item 5).

Slow (valgrind runs the daemon ~30x slower), so it runs only with
DICOMSORT_VALGRIND=1 (scripts/test sets it for the plain build) or
DICOMSORT_LONG_TESTS=1, and never on a sanitizer build (ASan and valgrind
do not mix). The burst mixes good files (both through DCMTK and under the
basic profile), garbage, a truncated file and a SIGHUP reload; the run must
end with no invalid access and no definitely or indirectly lost block.
"""

import os
import re
import shutil
import signal

import pytest

from conftest import (LONG, SANITIZED, dicom_bytes, make_items,
                      report_figure, wait_until, write_items)

ENABLED = os.environ.get("DICOMSORT_VALGRIND") == "1" or LONG


@pytest.mark.skipif(not ENABLED, reason="set DICOMSORT_VALGRIND=1 (slow)")
@pytest.mark.skipif(SANITIZED, reason="valgrind does not run ASan builds")
def test_daemon_under_valgrind(tmp_path, daemon):
    vg = shutil.which("valgrind")
    if vg is None:
        pytest.skip("valgrind is not installed (scripts/deps installs it)")
    log = tmp_path / "valgrind.log"
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(32))
    os.chmod(secret, 0o600)
    table = tmp_path / "table.csv"
    table.write_text("PAT001,NEW001\n")

    def wrapper(argv):
        return [vg, "--tool=memcheck", "--leak-check=full",
                "--show-leak-kinds=definite,indirect",
                "--errors-for-leak-kinds=definite,indirect",
                "--track-fds=no", "--error-exitcode=99",
                "--log-file=%s" % log] + argv

    d = daemon(wrapper=wrapper, profile="basic", correlation_table=table,
               deid={"secret": str(secret)}, workers=2,
               retry={"parse_attempts": 1, "backoff_ms": 100,
                      "backoff_max_ms": 500},
               shutdown={"timeout_s": 60})
    items = make_items(40) + make_items(10, patient_id="PAT009", prefix="other")
    write_items(d.input, items)
    (d.input / "garbage.dcm").write_bytes(b"junk" * 100)
    (d.input / "truncated.dcm").write_bytes(dicom_bytes()[:700])
    d.signal(signal.SIGHUP)
    wait_until(lambda: len(d.events("stored")) >= 50, 300,
               what="50 files stored under valgrind")
    d.wait_input_empty(120)
    rc, secs = d.stop(120)
    text = log.read_text()
    summary = re.search(r"ERROR SUMMARY: (\d+) errors", text)
    definitely = re.search(r"definitely lost: ([\d,]+) bytes", text)
    indirectly = re.search(r"indirectly lost: ([\d,]+) bytes", text)
    report_figure("valgrind memcheck, daemon over a burst of 52 files "
                  "(basic profile, SIGHUP, garbage): exit %d, %s, "
                  "definitely lost %s, indirectly lost %s" % (
                      rc, summary.group(0) if summary else "no summary",
                      definitely.group(1) if definitely else "0",
                      indirectly.group(1) if indirectly else "0"))
    assert rc == 0, text[-5000:]
    assert summary and summary.group(1) == "0", text[-5000:]
