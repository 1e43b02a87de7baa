#!/usr/bin/env python3
"""Egress probes for the veth datapath tests, run where no socket hook sees
the traffic: inside a gVisor sandbox (tests/tests/gvisor_veth.rs) or a
Kata-shaped guest (tests/tests/kata_veth.rs). Many cases in one process,
because each Python start costs about a second under gVisor's ptrace
platform. This only reports what the client saw; whether anything got out
is decided at the target (the tests' sniffer, hostd's and dnsmasq's logs).

  veth_probe.py CASE...    each CASE is NAME,KIND,ARG...:
    NAME,http,ADDR,PORT           HTTP GET to ADDR:PORT (IPv4, IPv6, or
                                  IPv4-mapped over an AF_INET6 socket)
    NAME,name,HOST,PORT,FAMILY[,FALLBACK]
                                  getaddrinfo(HOST) in FAMILY (4 or 6), then
                                  HTTP GET to the first address (to FALLBACK
                                  if the name does not resolve)
    NAME,udp,ADDR,PORT            one datagram, and its echo
    NAME,dns,SERVER,QNAME         one DNS query (A) over UDP to SERVER:53
    NAME,ping,ADDR                ICMP(v6) echo over a datagram socket
    NAME,race,FIRST,LAST,PORT     for N in FIRST..=LAST: resolve race-N.test,
                                  connect to the first address at once, GET

Prints one JSON object {NAME: result}. A failed case is {"ok": false,
"stage": ..., "error": ...}. The cases other than race run concurrently
(each blocked one waits out TIMEOUT, so one at a time would take long);
race cases run after them, one trial after the other.
"""

import json
import random
import socket
import struct
import sys
import time
from concurrent.futures import ThreadPoolExecutor

TIMEOUT = 2.0


class Failed(Exception):
    def __init__(self, stage, err, **extra):
        super().__init__(stage)
        self.result = {"ok": False, "stage": stage, "error": f"{type(err).__name__}: {err}", **extra}


def http_get(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        s.connect((addr, port))
    except OSError as e:
        raise Failed("connect", e, addr=addr)
    with s:
        try:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        except OSError as e:
            raise Failed("read", e, addr=addr)
    head, _, body = data.partition(b"\r\n\r\n")
    return {"ok": True, "addr": addr, "status": head.split(b"\r\n", 1)[0].decode(), "body": body.decode()}


def resolve(host, port, family):
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise Failed("resolve", e, gai=e.errno)
    return [i[4][0] for i in infos]


def by_name(host, port, family, fallback=None):
    fam = {"4": socket.AF_INET, "6": socket.AF_INET6}[family]
    try:
        addrs = resolve(host, int(port), fam)
        resolved = {"ok": True}
    except Failed as f:
        if fallback is None:
            raise
        # A client that cached the address from elsewhere goes there anyway.
        addrs, resolved = [fallback], f.result
    try:
        return {**http_get(addrs[0], int(port)), "addrs": sorted(set(addrs)), "resolve": resolved}
    except Failed as f:
        f.result["resolve"] = resolved
        raise


def udp_echo(addr, port):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.sendto(b"veth-probe-udp", (addr, int(port)))
            data, peer = s.recvfrom(4096)
        except OSError as e:
            raise Failed("echo", e)
    return {"ok": True, "body": data.decode(errors="replace"), "peer": peer[0]}


def dns_query(server, qname):
    qid = random.randrange(65536)
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in qname.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.sendto(q, (server, 53))
            data, peer = s.recvfrom(4096)
        except OSError as e:
            raise Failed("answer", e)
    return {"ok": True, "peer": peer[0], "rcode": data[3] & 0xF, "answers": struct.unpack("!H", data[6:8])[0]}


def checksum(b):
    b += b"\0" * (len(b) % 2)
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF


def ping(addr):
    v6 = ":" in addr
    family, proto, echo, reply = (
        (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129) if v6 else (socket.AF_INET, socket.IPPROTO_ICMP, 8, 0)
    )
    try:
        s = socket.socket(family, socket.SOCK_DGRAM, proto)
    except OSError as e:
        raise Failed("socket", e)
    with s:
        s.settimeout(TIMEOUT)
        hdr = struct.pack("!BBHHH", echo, 0, 0, 0x5650, 1) + b"veth-probe-ping"
        # The kernel fills in the ICMPv6 checksum (it covers a pseudo-header).
        pkt = hdr if v6 else hdr[:2] + struct.pack("!H", checksum(hdr)) + hdr[4:]
        try:
            s.sendto(pkt, (addr, 0))
            while True:
                data, peer = s.recvfrom(4096)
                if data[0] == reply:
                    return {"ok": True, "peer": peer[0]}
        except OSError as e:
            raise Failed("reply", e)


def race(first, last, port):
    """The DNS-learning race: every name resolves to an address nobody asked
    for before, so each connect only works if the answer was learned before
    the client read it."""
    started, trials = time.monotonic(), []
    for n in range(int(first), int(last) + 1):
        t = {"n": n, "ok": False}
        try:
            r = http_get(resolve(f"race-{n}.test", int(port), socket.AF_UNSPEC)[0], int(port))
            t.update(ok=True, addr=r["addr"], body=r["body"])
        except Failed as f:
            t.update(f.result, ok=False)
        trials.append(t)
    return {"ok": all(t["ok"] for t in trials), "secs": round(time.monotonic() - started, 2), "trials": trials}


KINDS = {"http": lambda a, p: http_get(a, int(p)), "name": by_name, "udp": udp_echo, "dns": dns_query, "ping": ping}


def run(case):
    name, kind, *args = case.split(",")
    try:
        return name, (race if kind == "race" else KINDS[kind])(*args)
    except Failed as f:
        return name, f.result
    except Exception as e:  # noqa: BLE001 - the error is the result
        return name, {"ok": False, "stage": "probe", "error": f"{type(e).__name__}: {e}"}


def main():
    cases = sys.argv[1:]
    quick = [c for c in cases if c.split(",")[1] != "race"]
    out = {}
    with ThreadPoolExecutor(max_workers=max(1, len(quick))) as pool:
        out.update(pool.map(run, quick))
    out.update(run(c) for c in cases if c not in quick)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
