"""The Orthanc fixture itself: a real peer on loopback only, restartable
with its data, reachable through REST and DICOMweb."""

import urllib.request

import orthanc as orthanc_mod


def _stow(peer, paths, auth=None):
    """POST paths to peer's STOW-RS URL with urllib (independent of the
    C client under test); returns the HTTP status."""
    boundary = "dicomsortd-test-boundary"
    body = b""
    for p in paths:
        body += (b"--" + boundary.encode() +
                 b"\r\nContent-Type: application/dicom\r\n\r\n" +
                 p.read_bytes() + b"\r\n")
    body += b"--" + boundary.encode() + b"--\r\n"
    ctype = ('multipart/related; type="application/dicom"; boundary=%s'
             % boundary)
    return peer.rest("POST", "/dicom-web/studies", body=body,
                     headers={"Content-Type": ctype,
                              "Accept": "application/dicom+json"})


def test_starts_on_loopback_only(orthanc):
    socks = orthanc_mod.listening_sockets(orthanc.proc.pid)
    assert socks, "Orthanc listens on nothing"
    assert all(a in ("127.0.0.1", "::1") for _, a, _ in socks), socks
    ports = {p for _, _, p in socks}
    assert {orthanc.http_port, orthanc.dicom_port} <= ports
    assert orthanc.instance_ids() == []


def test_stow_arrives_and_survives_restart(orthanc, dicom_files):
    files = dicom_files(3)
    _stow(orthanc, files)
    want = dict(orthanc_mod.file_identity(p) for p in files)
    assert orthanc.instances() == want
    orthanc.stop()
    assert not orthanc.running
    orthanc.start()
    assert orthanc.instances() == want


def test_auth_refuses_without_credentials(orthanc_auth):
    req = urllib.request.Request(orthanc_auth.base_url + "/system")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("Orthanc answered without credentials")
    except urllib.error.HTTPError as e:
        assert e.code == 401
    assert "Version" in orthanc_auth.json("/system")
