"""A DICOM peer that misbehaves on purpose, speaking raw PS3.8 PDUs on a
loopback socket (no DICOM library: it must be able to break the protocol).

Modes (HostileSCP(mode)):
  hang_release  accepts the association, answers every C-STORE with
                success, then never answers the A-RELEASE-RQ (keeps the
                connection open and silent);
  garbage       accepts the association, then answers the first C-STORE
                with bytes that are no PDU at all;
  huge_pdu      answers the A-ASSOCIATE-RQ with a PDU header that claims
                almost 4 GiB and then stays silent.
Each connection is served on its own thread; stop() closes them all.
Every socket listens on 127.0.0.1 only and every wait is bounded.
"""

import socket
import struct
import threading

IMPLICIT_LE = b"1.2.840.10008.1.2"


def _recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def read_pdu(sock):
    head = _recv_exact(sock, 6)
    kind, length = head[0], struct.unpack(">I", head[2:6])[0]
    return kind, _recv_exact(sock, length)


def _pad(uid):
    return uid + b"\0" if len(uid) % 2 else uid


def _item(kind, body):
    return struct.pack(">BBH", kind, 0, len(body)) + body


def accept_pdu(rq):
    """An A-ASSOCIATE-AC for rq's body: every presentation context
    accepted with the first transfer syntax it proposes."""
    called, calling = rq[4:20], rq[20:36]
    items, off, ctxs = rq[68:], 0, []
    app = b""
    while off + 4 <= len(items):
        kind = items[off]
        length = struct.unpack(">H", items[off + 2:off + 4])[0]
        body = items[off + 4:off + 4 + length]
        off += 4 + length
        if kind == 0x10:
            app = body
        elif kind == 0x20:
            pc_id, sub, ts = body[0], body[4:], None
            s = 0
            while s + 4 <= len(sub):
                sk = sub[s]
                sl = struct.unpack(">H", sub[s + 2:s + 4])[0]
                if sk == 0x40 and ts is None:
                    ts = sub[s + 4:s + 4 + sl]
                s += 4 + sl
            ctxs.append((pc_id, ts or IMPLICIT_LE))
    out = struct.pack(">HH", 1, 0) + called + calling + b"\0" * 32
    out += _item(0x10, app)
    for pc_id, ts in ctxs:
        out += _item(0x21, bytes([pc_id, 0, 0, 0]) + _item(0x40, ts))
    user = _item(0x51, struct.pack(">I", 16384))
    user += _item(0x52, b"1.2.826.0.1.3680043.9.7433.1.1")
    out += _item(0x50, user)
    return struct.pack(">BBI", 0x02, 0, len(out)) + out


def _elements(data):
    """(group, element) -> value of an implicit VR LE command set."""
    out, off = {}, 0
    while off + 8 <= len(data):
        g, e, n = struct.unpack("<HHI", data[off:off + 8])
        out[(g, e)] = data[off + 8:off + 8 + n]
        off += 8 + n
    return out


def _el(tag, value):
    return struct.pack("<HHI", tag[0], tag[1], len(value)) + value


def store_rsp(pc_id, cmd):
    """A C-STORE-RSP (success) to the command set cmd."""
    c = _elements(cmd)
    body = (_el((0, 0x0002), _pad(c.get((0, 0x0002), b"").rstrip(b"\0")))
            + _el((0, 0x0100), struct.pack("<H", 0x8001))
            + _el((0, 0x0120), c.get((0, 0x0110), b"\0\0"))
            + _el((0, 0x0800), struct.pack("<H", 0x0101))
            + _el((0, 0x0900), struct.pack("<H", 0x0000))
            + _el((0, 0x1000), _pad(c.get((0, 0x1000), b"").rstrip(b"\0"))))
    cmd_set = _el((0, 0), struct.pack("<I", len(body))) + body
    pdv = struct.pack(">IBB", len(cmd_set) + 2, pc_id, 0x03) + cmd_set
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


class HostileSCP:
    def __init__(self, mode):
        self.mode = mode
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(16)
        self.lsock.settimeout(0.5)
        self.port = self.lsock.getsockname()[1]
        self.stored = []        # SOPInstanceUIDs answered with success
        self.releases = 0       # A-RELEASE-RQs left unanswered
        self.conns = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(120)
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._one, args=(conn,),
                             daemon=True).start()

    def _one(self, conn):
        try:
            kind, rq = read_pdu(conn)
            if kind != 0x01:
                return
            if self.mode == "huge_pdu":
                conn.sendall(struct.pack(">BBI", 0x02, 0, 0xFFFFFFF0) +
                             b"\0" * 64)
                self.stopping.wait(120)
                return
            conn.sendall(accept_pdu(rq))
            self._stores(conn)
        except (EOFError, OSError):
            pass

    def _stores(self, conn):
        cmd, pc_id = b"", 1
        while not self.stopping.is_set():
            kind, body = read_pdu(conn)
            if kind == 0x05:                    # A-RELEASE-RQ
                with self.lock:
                    self.releases += 1
                if self.mode == "hang_release":
                    self.stopping.wait(120)     # never answered
                    return
                conn.sendall(struct.pack(">BBI", 0x06, 0, 4) + b"\0" * 4)
                return
            if kind != 0x04:
                return
            off = 0
            while off + 6 <= len(body):
                n = struct.unpack(">I", body[off:off + 4])[0]
                pc_id, ctl = body[off + 4], body[off + 5]
                data = body[off + 6:off + 4 + n]
                off += 4 + n
                if ctl & 1:
                    cmd += data
                elif ctl & 2:                   # last fragment of a data set
                    if self.mode == "garbage":
                        conn.sendall(b"\xde\xad\xbe\xef" * 1024)
                        self.stopping.wait(120)
                        return
                    uid = _elements(cmd).get((0, 0x1000), b"")
                    with self.lock:
                        self.stored.append(uid.rstrip(b"\0").decode())
                    conn.sendall(store_rsp(pc_id, cmd))
                    cmd = b""

    def stop(self):
        self.stopping.set()
        self.lsock.close()
        with self.lock:
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                c.close()
        self.thread.join(timeout=10)
