"""STOW-RS transport (src/stow.c) against a real Orthanc with DICOMweb.

stow_send()/stow_probe() are driven through tests/tools/stow_tool.c: one
batch per run, one result line per item. What arrived is checked through
Orthanc's REST API by SOPInstanceUID and pixel-data hash (pydicom).
Every request goes to 127.0.0.1; every wait is bounded.
"""

import base64
import http.server
import json
import os
import pathlib
import socketserver
import subprocess
import threading

import pytest

import orthanc as orthanc_mod
from conftest import BUILD_DIR, SLOW

pydicom = pytest.importorskip("pydicom")

ERROR_TRANSIENT, ERROR_SETUP = 2, 3
FIGURES = []


def stow_tool():
    path = pathlib.Path(BUILD_DIR) / "tests" / "stow_tool"
    if not BUILD_DIR or not path.exists():
        pytest.skip("stow_tool not built (DICOMSORT_BUILD_DIR must name "
                    "the build folder; ctest sets it)")
    return str(path)


def manifest(paths, uid_of=None):
    lines = []
    for p in paths:
        ds = pydicom.dcmread(str(p), stop_before_pixels=True)
        uid = (uid_of or {}).get(p) or str(ds.SOPInstanceUID)
        lines.append("\t".join([str(p), str(ds.SOPClassUID), uid,
                                str(ds.file_meta.TransferSyntaxUID)]))
    return "\n".join(lines) + "\n"


class Run:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.stderr = proc.stderr
        self.items = [tuple(line.split("\t", 3))
                      for line in proc.stdout.splitlines()]
        self.error = None
        self.elapsed_ms = None
        self.maxrss_kb = None
        for line in proc.stderr.splitlines():
            if line.startswith("error\t"):
                _, kind, msg = line.split("\t", 2)
                self.error = (int(kind), msg)
            elif line.startswith("elapsed_ms\t"):
                self.elapsed_ms = float(line.split("\t")[1])
            elif line.startswith("maxrss_kb\t"):
                self.maxrss_kb = int(line.split("\t")[1])

    def results(self):
        return {uid: (res, int(status), reason)
                for res, status, uid, reason in self.items}


def run_stow(url, paths=(), *opts, uid_of=None, probe=False, timeout=120):
    args = [stow_tool()] + [str(o) for o in opts]
    if probe:
        args.append("--probe")
    args.append(url)
    proc = subprocess.run(args, input=manifest(paths, uid_of) if paths else "",
                          capture_output=True, text=True,
                          timeout=timeout * SLOW)
    # Anything but 0 or 1 is a crash or a sanitizer report.
    assert proc.returncode in (0, 1), proc.stderr
    assert "Sanitizer" not in proc.stderr and "runtime error" not in \
        proc.stderr, proc.stderr
    return Run(proc)


def private_file(path, text, mode=0o600):
    path = pathlib.Path(path)
    path.write_text(text)
    os.chmod(path, mode)
    return path


def assert_arrived(peer, paths):
    """Every file is at the peer, with the same pixel data."""
    want = dict(orthanc_mod.file_identity(p) for p in paths)
    got = peer.instances()
    assert {u: got.get(u) for u in want} == want


# ---- the happy path ----

def test_batch_arrives_with_same_pixels(orthanc, dicom_files):
    files = dicom_files(12)
    r = run_stow(orthanc.stow_url, files)
    assert r.rc == 0, r.stderr
    assert len(r.items) == 12
    assert {res for res, *_ in r.items} == {"DONE"}
    assert_arrived(orthanc, files)


def test_200_files_in_one_request(orthanc, dicom_files):
    files = dicom_files(200, rows=128, cols=128)
    size = sum(p.stat().st_size for p in files)
    r = run_stow(orthanc.stow_url, files, timeout=300)
    assert r.rc == 0, r.stderr
    assert [res for res, *_ in r.items] == ["DONE"] * 200
    assert_arrived(orthanc, files)
    FIGURES.append("STOW-RS, 200 files (%.1f MB) in one request to Orthanc: "
                   "%.0f ms" % (size / 1e6, r.elapsed_ms))


def test_parallel_requests_from_threads(orthanc, dicom_files):
    """Four requests at once from four threads of one process, as the
    forwarder's parallel connections send: each keeps its own state."""
    files = dicom_files(40)
    r = run_stow(orthanc.stow_url, files, "--parallel", 4, timeout=300)
    assert r.rc == 0, r.stderr
    assert [res for res, *_ in r.items] == ["DONE"] * 40
    assert_arrived(orthanc, files)


def test_resend_is_idempotent(orthanc, dicom_files):
    files = dicom_files(3)
    assert run_stow(orthanc.stow_url, files).rc == 0
    r = run_stow(orthanc.stow_url, files)
    assert r.rc == 0 and {res for res, *_ in r.items} == {"DONE"}
    assert len(orthanc.instance_ids()) == 3


def test_body_is_streamed_not_loaded(orthanc, dicom_files):
    """12 files of 2 MB each: the client's peak memory grows by far less
    than the body it sent (against a one-file batch), so files are read as
    they go out."""
    files = dicom_files(12, rows=1024, cols=1024)
    body = sum(p.stat().st_size for p in files)
    base = run_stow(orthanc.stow_url, files[:1])
    assert base.rc == 0, base.stderr
    r = run_stow(orthanc.stow_url, files, timeout=300)
    assert r.rc == 0, r.stderr
    assert [res for res, *_ in r.items] == ["DONE"] * 12
    assert_arrived(orthanc, files)
    grew = (r.maxrss_kb - base.maxrss_kb) * 1024
    assert grew < body / 4, (base.maxrss_kb, r.maxrss_kb, body)


# ---- whole-request failures: -1, retry the batch ----

def test_wrong_password_is_retry_naming_credentials(orthanc_auth, dicom_files,
                                                    tmp_path):
    files = dicom_files(2)
    bad = private_file(tmp_path / "basic", "dicomsortd:wrong-password\n")
    r = run_stow(orthanc_auth.stow_url, files, "--basic", bad)
    assert r.rc == 1
    assert r.error[0] == ERROR_TRANSIENT
    assert "credentials" in r.error[1] and "401" in r.error[1]
    assert "wrong-password" not in r.stderr
    assert {(res, int(st)) for res, st, *_ in r.items} == {("RETRY", 401)}
    assert orthanc_auth.instance_ids() == []


def test_right_password_delivers(orthanc_auth, dicom_files, tmp_path):
    files = dicom_files(2)
    good = private_file(tmp_path / "basic", "%s:%s\n" % orthanc_auth.auth)
    r = run_stow(orthanc_auth.stow_url, files, "--basic", good)
    assert r.rc == 0, r.stderr
    assert_arrived(orthanc_auth, files)


def test_peer_stopped_is_retry_then_delivered(orthanc, dicom_files):
    files = dicom_files(4)
    orthanc.stop()
    r = run_stow(orthanc.stow_url, files, "--connect-timeout", 5)
    assert r.rc == 1
    assert r.error[0] == ERROR_TRANSIENT
    assert "127.0.0.1:%d" % orthanc.http_port in r.error[1]
    assert {res for res, *_ in r.items} == {"RETRY"}
    orthanc.start()
    r = run_stow(orthanc.stow_url, files)
    assert r.rc == 0, r.stderr
    assert_arrived(orthanc, files)


# ---- per-instance refusals: REJECTED ----

def test_study_mismatch_is_rejected_with_failure_reason(orthanc, dicom_files):
    """POST to /studies/{uid} with files of another study: Orthanc answers
    409 with each in FailedSOPSequence, FailureReason 0110H."""
    files = dicom_files(3)
    r = run_stow(orthanc.stow_url + "/1.2.3.999", files)
    assert r.rc == 0, r.stderr
    for res, status, _, reason in r.items:
        assert (res, int(status)) == ("REJECTED", 0x0110)
        assert "FailedSOPSequence" in reason
    assert orthanc.instance_ids() == []


def test_unreadable_instance_rejected_others_stored(orthanc, dicom_files,
                                                   tmp_path):
    """A data set without SOPInstanceUID: Orthanc stores the rest, answers
    400 and lists only what it stored. The one it dropped is REJECTED with
    the HTTP status; the others are DONE."""
    import gendicom
    files = dicom_files(3)
    ds = gendicom.make_dataset(seed=77)
    del ds.SOPInstanceUID
    bad = tmp_path / "no-sop-uid.dcm"
    gendicom.write(ds, bad)
    fake = "1.2.826.0.1.3680043.10.7613.424242"
    r = run_stow(orthanc.stow_url, files + [bad], uid_of={bad: fake})
    assert r.rc == 0, r.stderr
    res = r.results()
    assert res[fake][:2] == ("REJECTED", 400)
    for p in files:
        uid, _ = orthanc_mod.file_identity(p)
        assert res[uid][0] == "DONE"
    assert_arrived(orthanc, files)


def test_missing_file_rejected_locally(orthanc, dicom_files, tmp_path):
    files = dicom_files(2)
    gone = tmp_path / "gone.dcm"
    gone.write_bytes(files[0].read_bytes())
    m = manifest(files + [gone]).replace(
        orthanc_mod.file_identity(files[0])[0] + "\t", "1.2.3.4.5\t", 1)
    gone.unlink()
    proc = subprocess.run([stow_tool(), orthanc.stow_url], input=m,
                          capture_output=True, text=True, timeout=120 * SLOW)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert lines[2][0] == "REJECTED" and "regular file" in lines[2][3]
    assert lines[1][0] == "DONE"


# ---- credentials files ----

@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_token_file_readable_by_others_is_config_error(orthanc, dicom_files,
                                                       tmp_path, mode):
    files = dicom_files(1)
    tok = private_file(tmp_path / "token", "sekrit-token-value\n", mode)
    r = run_stow(orthanc.stow_url, files, "--token", tok)
    assert r.rc == 1
    assert r.error[0] == ERROR_SETUP
    assert "chmod 600" in r.error[1]
    assert "sekrit" not in r.stderr
    assert orthanc.instance_ids() == []


def test_token_file_symlink_is_config_error(orthanc, dicom_files, tmp_path):
    files = dicom_files(1)
    real = private_file(tmp_path / "token.real", "tok\n")
    link = tmp_path / "token"
    link.symlink_to(real)
    r = run_stow(orthanc.stow_url, files, "--token", link)
    assert r.rc == 1 and r.error[0] == ERROR_SETUP


def test_token_file_0600_is_sent(orthanc, dicom_files, tmp_path):
    """Orthanc without authentication ignores a bearer token: the batch
    goes through, proving a good token file passes the checks."""
    files = dicom_files(1)
    tok = private_file(tmp_path / "token", "sekrit-token-value\n")
    r = run_stow(orthanc.stow_url, files, "--token", tok)
    assert r.rc == 0, r.stderr


# ---- TLS ----

@pytest.fixture
def tls_front(orthanc, tmp_path):
    front = orthanc_mod.TlsFront(tmp_path / "tls", orthanc.http_port)
    front.start()
    yield front
    front.close()


def test_tls_verified_by_default(orthanc, tls_front, dicom_files):
    """HTTPS (a TLS front for Orthanc) with a self-signed certificate:
    refused as a setup error until its CA is given, then delivered;
    --insecure also gets through."""
    peer = orthanc
    url = tls_front.url("/dicom-web/studies")
    files = dicom_files(2)
    r = run_stow(url, files)
    assert r.rc == 1 and r.error[0] == ERROR_SETUP, r.stderr
    assert {res for res, *_ in r.items} == {"RETRY"}
    assert peer.instance_ids() == []
    assert "certificate" in r.error[1], r.error
    r = run_stow(url, files, "--ca", tls_front.ca_file)
    assert r.rc == 0, r.stderr
    assert_arrived(peer, files)
    r = run_stow(url, files, "--insecure")
    assert r.rc == 0, r.stderr
    assert run_stow(url, (), "--ca", tls_front.ca_file, probe=True).rc == 0
    assert run_stow(url, (), probe=True).rc == 1


# ---- the probe ----

def test_probe(orthanc_auth, tmp_path):
    """Orthanc's DICOMweb plugin answers OPTIONS with 404; the probe then
    GETs the URL (QIDO-RS, limit=1)."""
    good = private_file(tmp_path / "good", "%s:%s\n" % orthanc_auth.auth)
    bad = private_file(tmp_path / "bad", "dicomsortd:nope\n")
    assert run_stow(orthanc_auth.stow_url, (), "--basic", good,
                    probe=True).rc == 0
    r = run_stow(orthanc_auth.stow_url, (), "--basic", bad, probe=True)
    assert r.rc == 1 and "credentials" in r.error[1]
    orthanc_auth.stop()
    r = run_stow(orthanc_auth.stow_url, (), "--basic", good, probe=True)
    assert r.rc == 1 and r.error[0] == ERROR_TRANSIENT


# ---- a hostile or odd peer (a plain HTTP server on loopback) ----

class _Peer(http.server.BaseHTTPRequestHandler):
    answer = (200, "application/dicom+json", b"{}")
    extra = {}
    seen = None		# [(method, headers, body)], set per fixture

    def do_POST(self):  # noqa: N802
        left = int(self.headers.get("Content-Length", "0"))
        body = b""
        while left > 0:
            chunk = self.rfile.read(min(left, 65536))
            if not chunk:
                break
            body += chunk
            left -= len(chunk)
        self.seen.append(("POST", dict(self.headers), body))
        code, ctype, body = self.answer
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in self.extra.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def odd_peer():
    handler = type("Handler", (_Peer,), {"seen": []})
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield handler, "http://127.0.0.1:%d/studies" % srv.server_address[1]
    srv.shutdown()
    srv.server_close()
    t.join(timeout=10)


@pytest.mark.parametrize("code,ctype,body,rc,result", [
    (200, "application/dicom+json", b"{}", 0, "RETRY"),
    (200, "text/html", b"<html>not json", 0, "RETRY"),
    (200, "application/dicom+json", b"[" * 100000, 0, "RETRY"),
    (503, "text/plain", b"busy", 1, "RETRY"),
    (429, "text/plain", b"slow down", 1, "RETRY"),
    (302, "text/plain", b"", 1, "RETRY"),
    (413, "text/plain", b"", 1, "RETRY"),
    (404, "text/plain", b"", 1, "RETRY"),     # a wrong stow_url
    (415, "text/plain", b"", 1, "RETRY"),     # not a STOW-RS endpoint
    (400, "text/plain", b"bad", 0, "REJECTED"),
    (409, "application/dicom+json", b"{}", 0, "REJECTED"),
])
def test_odd_answers(odd_peer, dicom_files, code, ctype, body, rc, result):
    handler, url = odd_peer
    handler.answer = (code, ctype, body)
    if code == 302:
        handler.extra = {"Location": "http://127.0.0.1:9/elsewhere"}
    files = dicom_files(2)
    r = run_stow(url, files)
    assert r.rc == rc, r.stderr
    assert {res for res, *_ in r.items} == {result}
    assert {int(st) for _, st, *_ in r.items} <= {code, 0}


def _referenced(uids):
    """A DICOM JSON STOW-RS answer listing uids in ReferencedSOPSequence."""
    return json.dumps({"00081199": {"vr": "SQ", "Value": [
        {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]},
         "00081155": {"vr": "UI", "Value": [u]}} for u in uids]}}).encode()


def test_answer_with_thousands_of_entries(odd_peer, dicom_files):
    """A peer that lists thousands of instances we never sent: ours are
    found among them, the others are ignored."""
    handler, url = odd_peer
    files = dicom_files(2)
    ours = [str(pydicom.dcmread(str(p), stop_before_pixels=True)
                .SOPInstanceUID) for p in files]
    others = ["1.2.3.%d" % i for i in range(2000)]
    handler.answer = (200, "application/dicom+json",
                      _referenced(others[:1000] + ours + others[1000:]))
    r = run_stow(url, files)
    assert r.rc == 0, r.stderr
    assert {uid: res for res, _, uid, _ in r.items} == {
        u: "DONE" for u in ours}


def test_out_of_resources_in_failed_sequence_is_retried(odd_peer,
                                                        dicom_files):
    """FailedSOPSequence with FailureReason A700H (out of resources) is the
    peer's state, not the data set's: retried, as a C-STORE's A7xx is;
    A900H (data set does not match the SOP class) is rejected."""
    handler, url = odd_peer
    files = dicom_files(2)
    ours = [str(pydicom.dcmread(str(p), stop_before_pixels=True)
                .SOPInstanceUID) for p in files]
    handler.answer = (200, "application/dicom+json", json.dumps(
        {"00081198": {"vr": "SQ", "Value": [
            {"00081155": {"vr": "UI", "Value": [u]},
             "00081197": {"vr": "US", "Value": [reason]}}
            for u, reason in zip(ours, (0xA700, 0xA900))]}}).encode())
    r = run_stow(url, files)
    assert r.rc == 0, r.stderr
    got = r.results()
    assert got[ours[0]][:2] == ("RETRY", 0xA700), got
    assert got[ours[1]][:2] == ("REJECTED", 0xA900), got


def test_huge_answer_is_not_held(odd_peer, dicom_files):
    """A peer that answers tens of megabytes for two files (here a valid
    answer naming them, padded with 400,000 others) could make every
    sender thread hold the text and json-c's objects for it, many times
    its size: the answer is capped by the batch's size (256 KiB + 16 KiB
    a file) and the batch retried."""
    handler, url = odd_peer
    files = dicom_files(2)
    ours = [str(pydicom.dcmread(str(p), stop_before_pixels=True)
                .SOPInstanceUID) for p in files]
    body = _referenced(ours + ["1.2.3.%d" % i for i in range(400000)])
    assert len(body) > 40 << 20
    handler.answer = (200, "application/dicom+json", body)
    r = run_stow(url, files)
    assert r.rc == 1, r.stderr
    assert {res for res, *_ in r.items} == {"RETRY"}
    assert r.error[0] == ERROR_TRANSIENT
    assert "answer larger than 294912 bytes for 2 files" in r.error[1]
    # Neither the 40 MiB nor its parse: far below them (ASan included).
    assert r.maxrss_kb is None or r.maxrss_kb < 200 * 1024, r.maxrss_kb


def test_request_as_stow_rs_wants_it(odd_peer, dicom_files, tmp_path):
    """The request itself: a multipart/related body with a Content-Length
    (not chunked) whose parts are the files, byte for byte, and the bearer
    token or basic credentials as configured."""
    handler, url = odd_peer
    files = dicom_files(3)
    tok = private_file(tmp_path / "token", "abc.DEF-123_456\n")
    run_stow(url, files, "--token", tok)
    _, headers, body = handler.seen[-1]
    assert headers["Authorization"] == "Bearer abc.DEF-123_456"
    assert "Transfer-Encoding" not in headers
    assert int(headers["Content-Length"]) == len(body)
    assert headers["Accept"] == "application/dicom+json"
    ctype = headers["Content-Type"]
    assert ctype.startswith('multipart/related; type="application/dicom"; '
                            'boundary=')
    boundary = ctype.split("boundary=")[1].encode()
    parts = body.split(b"--" + boundary)
    assert parts[0] == b"" and parts[-1] == b"--\r\n"
    for part, path in zip(parts[1:-1], files):
        head, data = part.split(b"\r\n\r\n", 1)
        assert head == b"\r\nContent-Type: application/dicom"
        assert data == path.read_bytes() + b"\r\n"
    assert len(parts) == len(files) + 2

    basic = private_file(tmp_path / "basic", "user:pa:ss\n")
    run_stow(url, files, "--basic", basic)
    _, headers, _ = handler.seen[-1]
    assert headers["Authorization"] == "Basic " + base64.b64encode(
        b"user:pa:ss").decode()

    r = run_stow(url, files, "--basic", basic, "--token", tok)
    assert r.rc == 1 and r.error[0] == ERROR_SETUP
    assert len(handler.seen) == 2


def test_figures():
    """Shows the figures measured above (pytest -rs prints skip texts)."""
    if not FIGURES:
        pytest.skip("no figures measured")
    pytest.skip("; ".join(FIGURES))
