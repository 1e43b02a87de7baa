#!/usr/bin/env python3
"""Network probes from inside a gVisor sandbox, all in one run (each Python
start costs a second under the ptrace platform). Used by
tests/tests/gvisor_sandbox.rs.

  gvisor_probe.py NAME V6ADDR METADATA UDP_PORT

  uname       the kernel release the process sees (gVisor's Sentry: 4.4.0)
  cap_eff     CapEff from /proc/self/status, hex
  resolve     getaddrinfo(NAME, AF_INET): through /etc/resolv.conf (UDP)
  http_name   HTTP GET to NAME's resolved address, port 80
  http_v6     HTTP GET to [V6ADDR]:8080
  metadata    HTTP GET to METADATA:80
  udp_echo    a datagram to NAME:UDP_PORT, and its echo
  icmp_dgram  ICMP echo to NAME over an ICMP datagram ("ping") socket
  icmp_raw    ICMP echo to NAME over a SOCK_RAW socket (needs CAP_NET_RAW)

Prints one JSON object, one key per probe; each failed network probe is
{"ok": false, "error": "..."}. Always exits 0.
"""

import json
import os
import socket
import struct
import sys

TIMEOUT = 3.0


def attempt(fn):
    try:
        return {"ok": True, **fn()}
    except Exception as e:  # noqa: BLE001 - the error is the result
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def http_get(addr):
    with socket.create_connection(addr, timeout=TIMEOUT) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return {"status": head.split(b"\r\n", 1)[0].decode(), "body": body.decode()}


def udp_echo(addr):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        s.sendto(b"gvisor-udp", addr)
        data, peer = s.recvfrom(4096)
    return {"body": data.decode(), "peer": peer[0]}


def checksum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def icmp_echo(kind, host):
    with socket.socket(socket.AF_INET, kind, socket.IPPROTO_ICMP) as s:
        s.settimeout(TIMEOUT)
        hdr = struct.pack("!BBHHH", 8, 0, 0, 0x4750, 1) + b"gvisor-ping"
        s.sendto(hdr[:2] + struct.pack("!H", checksum(hdr)) + hdr[4:], (host, 0))
        while True:
            data, peer = s.recvfrom(4096)
            # A raw socket sees the IP header, a datagram socket does not.
            icmp = data[(data[0] & 0x0F) * 4 :] if kind == socket.SOCK_RAW else data
            if icmp[0] == 0:
                return {"peer": peer[0]}


def main():
    name, v6, metadata, udp_port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    caps = [line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff:")]
    resolved = attempt(lambda: {"addrs": sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)})})
    api = resolved["addrs"][0] if resolved["ok"] else name
    out = {
        "uname": os.uname().release,
        "cap_eff": caps[0] if caps else None,
        "resolve": resolved,
        "http_name": attempt(lambda: http_get((api, 80))),
        "http_v6": attempt(lambda: http_get((v6, 8080))),
        "metadata": attempt(lambda: http_get((metadata, 80))),
        "udp_echo": attempt(lambda: udp_echo((api, udp_port))),
        "icmp_dgram": attempt(lambda: icmp_echo(socket.SOCK_DGRAM, api)),
        "icmp_raw": attempt(lambda: icmp_echo(socket.SOCK_RAW, api)),
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
