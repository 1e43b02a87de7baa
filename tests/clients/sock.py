#!/usr/bin/env python3
"""One socket operation from the calling namespace, as a test client.

  sock.py tcp ADDR PORT        connect (literal address; "::ffff:a.b.c.d" and
                               other IPv6 forms use an AF_INET6 socket), send a
                               GET, read the reply
  sock.py udp ADDR PORT        unconnected sendto(), wait 1 s for the echo
  sock.py raw-icmp ADDR        SOCK_RAW/IPPROTO_ICMP echo request, wait 1 s
                               for the matching echo reply

Prints one JSON object: {"ok": bool, "errno": "EPERM"|null, "stage": ...,
"body": ...}. Exit status: 0 success, the errno number when a syscall failed
(13 = EACCES, 1 = EPERM), 124 when no reply came within the timeout.
"""

import errno
import json
import os
import socket
import struct
import sys
import time

TIMEOUT = 1.0


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def out(ok, code, **kw):
    kw["ok"] = ok
    print(json.dumps(kw), flush=True)
    sys.exit(code)


def fail(stage, err):
    out(False, err.errno or 99, stage=stage, errno=errno.errorcode.get(err.errno), error=str(err))


def tcp(addr, port):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.settimeout(3)
    t = time.monotonic()
    try:
        s.connect((addr, port))
    except socket.timeout:
        out(False, 124, stage="connect", errno=None, secs=time.monotonic() - t)
    except OSError as e:
        fail("connect", e)
    s.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    body = data.split(b"\r\n\r\n", 1)[-1].decode()
    out(True, 0, stage="done", body=body)


def udp(addr, port):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    s.settimeout(TIMEOUT)
    try:
        s.sendto(b"portcullis-udp", (addr, port))
    except OSError as e:
        fail("sendto", e)
    try:
        data, peer = s.recvfrom(4096)
    except socket.timeout:
        out(False, 124, stage="recv", errno=None)
    except OSError as e:
        fail("recv", e)
    out(True, 0, stage="done", body=data.decode(), peer=peer[0])


def checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def raw_icmp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    payload = b"portcullis-raw"
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, 1)
    pkt = struct.pack("!BBHHH", 8, 0, checksum(hdr + payload), ident, 1) + payload
    try:
        s.sendto(pkt, (addr, 0))
    except OSError as e:
        fail("sendto", e)
    deadline = time.monotonic() + TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            out(False, 124, stage="recv", errno=None)
        s.settimeout(left)
        try:
            data, peer = s.recvfrom(4096)
        except socket.timeout:
            out(False, 124, stage="recv", errno=None)
        ihl = (data[0] & 0x0F) * 4
        typ, _code, _sum, rid, _seq = struct.unpack("!BBHHH", data[ihl : ihl + 8])
        if typ == 0 and rid == ident and peer[0] == addr:
            out(True, 0, stage="done", peer=peer[0])


def main():
    mode = sys.argv[1]
    if mode == "tcp":
        tcp(sys.argv[2], int(sys.argv[3]))
    elif mode == "udp":
        udp(sys.argv[2], int(sys.argv[3]))
    elif mode == "raw-icmp":
        raw_icmp(sys.argv[2])
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
