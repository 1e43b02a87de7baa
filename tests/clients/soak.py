#!/usr/bin/env python3
"""A fast DNS client for the soak (`portcullis_tests::soak`).

  soak.py SERVER --prefix n --domain soak.example.test --start S --count C
          [--qtype AAAA] [--rate R] [--window W] [--timeout T] [--per-socket K]
          [--sockets M]

Asks for <prefix><S> .. <prefix><S+C-1>.<domain>, each once (no retry),
paced at R queries/s (0: as fast as the window allows), at most W in
flight, over M UDP sockets connected to SERVER:53 (as glibc's are, so the
agent's hooks redirect them to its gate). A socket is closed after K
queries and a new one opened, as stub resolvers open a socket per lookup.

A lookup fails if no answer comes within T seconds, or if the answer is
anything but NOERROR with at least one record: NXDOMAIN, SERVFAIL, REFUSED
or an empty answer for a name the server knows all count as failures.

Prints one JSON object: sent, ok, failed, and the failures by kind, the
seconds taken and latency percentiles (ms).
"""

import argparse
import json
import os
import select
import socket
import struct
import time

TYPES = {"A": 1, "AAAA": 28}


def query(txid, name, qtype):
    q = struct.pack("!6H", txid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", qtype, 1)


class Sock:
    def __init__(self, server):
        self.s = socket.socket(socket.AF_INET6 if ":" in server else socket.AF_INET, socket.SOCK_DGRAM)
        self.s.setblocking(False)
        self.s.connect((server, 53))
        self.used = 0
        self.waiting = {}  # txid -> (index, sent at)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("server")
    ap.add_argument("--prefix", default="n")
    ap.add_argument("--domain", default="soak.example.test")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--qtype", default="AAAA", choices=sorted(TYPES))
    ap.add_argument("--rate", type=float, default=0.0)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=3.0)
    ap.add_argument("--per-socket", type=int, default=200)
    ap.add_argument("--sockets", type=int, default=4)
    a = ap.parse_args()
    qtype = TYPES[a.qtype]

    poller = select.epoll()
    socks = {}

    def open_sock():
        s = Sock(a.server)
        socks[s.s.fileno()] = s
        poller.register(s.s.fileno(), select.EPOLLIN)
        return s

    live = [open_sock() for _ in range(a.sockets)]
    retiring = []
    counts = {"ok": 0, "nxdomain": 0, "servfail": 0, "refused": 0, "empty": 0, "rcode_other": 0, "timeout": 0}
    lat = []
    inflight = 0
    sent = 0
    nxt = 0
    start = time.monotonic()
    last_sweep = start
    while sent < a.count or inflight > 0:
        now = time.monotonic()
        # Send what the pace and the window allow.
        while sent < a.count and inflight < a.window and (a.rate <= 0 or now >= start + sent / a.rate):
            s = live[nxt % len(live)]
            nxt += 1
            txid = int.from_bytes(os.urandom(2), "big")
            while txid in s.waiting:
                txid = (txid + 1) & 0xFFFF
            name = f"{a.prefix}{a.start + sent}.{a.domain}"
            try:
                s.s.send(query(txid, name, qtype))
            except BlockingIOError:
                break
            s.waiting[txid] = (a.start + sent, now)
            s.used += 1
            sent += 1
            inflight += 1
            if s.used >= a.per_socket:
                live.remove(s)
                retiring.append(s)
                live.append(open_sock())
        if a.rate > 0 and sent < a.count and inflight < a.window:
            wait = max(0.0, start + sent / a.rate - time.monotonic())
        else:
            wait = 0.05
        for fd, _ in poller.poll(min(wait, 0.05)):
            s = socks.get(fd)
            while s is not None:
                try:
                    msg = s.s.recv(4096)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                if len(msg) < 12:
                    continue
                txid, flags, _qd, an = struct.unpack("!4H", msg[:8])
                got = s.waiting.pop(txid, None)
                if got is None:
                    continue
                inflight -= 1
                lat.append(time.monotonic() - got[1])
                rcode = flags & 0xF
                if rcode == 0 and an > 0:
                    counts["ok"] += 1
                elif rcode == 0:
                    counts["empty"] += 1
                else:
                    counts[{3: "nxdomain", 2: "servfail", 5: "refused"}.get(rcode, "rcode_other")] += 1
        now = time.monotonic()
        if now - last_sweep >= 0.1 or sent >= a.count:
            last_sweep = now
            for s in live + retiring:
                for txid, (_, at) in list(s.waiting.items()):
                    if now - at > a.timeout:
                        del s.waiting[txid]
                        inflight -= 1
                        counts["timeout"] += 1
            for s in [s for s in retiring if not s.waiting]:
                retiring.remove(s)
                poller.unregister(s.s.fileno())
                del socks[s.s.fileno()]
                s.s.close()
    secs = time.monotonic() - start
    lat.sort()

    def pct(p):
        return round(lat[min(len(lat) - 1, int(p * (len(lat) - 1) + 0.5))] * 1e3, 3) if lat else 0.0

    out = dict(counts, sent=sent, failed=sent - counts["ok"], secs=round(secs, 3))
    out.update(p50_ms=pct(0.5), p99_ms=pct(0.99), max_ms=pct(1.0))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
