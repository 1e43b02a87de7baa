#!/usr/bin/env python3
"""One DNS query over UDP, watching the socket for more than the answer.

  dnsq.py SERVER NAME [--type A|AAAA] [--timeout S] [--wait S] [--decoy]
          [--unconnected] [--v6only]

Sends one query (random txid) from a socket connected to SERVER:53 (--port), waits
up to --timeout for the first datagram, then keeps listening for --wait
seconds and records every further datagram. --decoy also opens a second
socket connected to the same server that never sends, and prefixes the name
with "p<its port>." (baddns.py's wrong-port mode aims a forged answer at it).
--unconnected sends with sendto() from an unconnected socket instead, as
musl and dnspython do, and records where the answer came from ("from_ok":
it came from SERVER:53, the check those resolvers make). An IPv6 SERVER
uses an IPv6 socket.

Prints one JSON object: {"ok", "qname", "answer": {"id", "id_ok", "rcode",
"qname", "ips"} or null, "extra": [{"sock", "id", "rcode", "qname", "ips"}]}.
Exit status: 0 if an answer came, 124 if none within --timeout.
"""

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import time

TYPES = {"A": 1, "AAAA": 28}


def query(txid, name, qtype):
    q = struct.pack("!6H", txid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)


def skip_name(msg, i):
    while True:
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n


def parse(msg):
    txid, flags, qd, an = struct.unpack("!4H", msg[:8])
    i, labels = 12, []
    if qd:
        while msg[i]:
            labels.append(msg[i + 1 : i + 1 + msg[i]].decode("ascii", "replace"))
            i += 1 + msg[i]
        i += 5
    ips = []
    for _ in range(an):
        i = skip_name(msg, i)
        rtype, _cls, _ttl, rdlen = struct.unpack("!HHIH", msg[i : i + 10])
        rdata = msg[i + 10 : i + 10 + rdlen]
        if rtype in (1, 28):
            ips.append(str(ipaddress.ip_address(rdata)))
        i += 10 + rdlen
    return {"id": txid, "rcode": flags & 0xF, "tc": bool(flags & 0x200), "qname": ".".join(labels).lower(), "ips": ips}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("server")
    p.add_argument("name")
    p.add_argument("--type", default="A", choices=TYPES)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--wait", type=float, default=1.0)
    p.add_argument("--decoy", action="store_true")
    p.add_argument("--unconnected", action="store_true")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--v6only", action="store_true", help="IPV6_V6ONLY on the socket (as dig does)")
    a = p.parse_args()
    socks = {}
    family = socket.AF_INET6 if ":" in a.server else socket.AF_INET
    main_sock = socket.socket(family, socket.SOCK_DGRAM)
    if a.v6only:
        main_sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if not a.unconnected:
        main_sock.connect((a.server, a.port))
    socks[main_sock] = "main"
    name = a.name
    if a.decoy:
        decoy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        decoy.connect((a.server, a.port))
        socks[decoy] = "decoy"
        name = f"p{decoy.getsockname()[1]}.{name}"
    txid = struct.unpack("!H", os.urandom(2))[0]
    if a.unconnected:
        main_sock.sendto(query(txid, name, TYPES[a.type]), (a.server, a.port))
    else:
        main_sock.send(query(txid, name, TYPES[a.type]))
    answer, extra = None, []
    deadline = time.monotonic() + a.timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(list(socks), [], [], left)
        for s in ready:
            data, src = s.recvfrom(65535)
            got = parse(data)
            got["sock"] = socks[s]
            got["from"] = f"{src[0]}:{src[1]}"
            if answer is None and socks[s] == "main":
                got["id_ok"] = got["id"] == txid
                want = ipaddress.ip_address(a.server)
                got["from_ok"] = ipaddress.ip_address(src[0]) == want and src[1] == a.port
                answer = got
                deadline = time.monotonic() + a.wait
            else:
                extra.append(got)
    print(json.dumps({"ok": answer is not None, "qname": name, "answer": answer, "extra": extra}), flush=True)
    raise SystemExit(0 if answer is not None else 124)


if __name__ == "__main__":
    main()
