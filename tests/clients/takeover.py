#!/usr/bin/env python3
"""A workload that keeps resolving and connecting while the agent changes.

  takeover.py SECS ECHO_NAME ECHO_PORT HTTP_PORT FIRST LAST PACE_MS [SLOW_DNS]

Opens one long-lived TCP connection to ECHO_NAME:ECHO_PORT (an echo
service) and prints "started". Then, for SECS seconds, loops: getaddrinfo
of the next race-N.test (N from FIRST to LAST, then again from FIRST; in
the first round each an address never seen before, so each connect only
works if an agent learned that answer before the workload got it), connect to HTTP_PORT at once and read the hello, then
wait PACE_MS; and every 50 ms a line over the long-lived connection, read
back.

With SLOW_DNS (a resolver that answers after a delay), two threads also
keep asking it for ok.example.test over UDP, each sending its next query as
soon as the last answer came, so some query is always waiting for its
answer whenever the agents change hands ("slow_queries", "slow_failures").

Prints one JSON object: {"lookups", "lookup_failures" (errors, and lookups
over 1 s: the stub resolver only retries after a lost answer),
"connect_failures", "pings", "ping_failures", "slowest_lookup_ms",
"failures": [{"t", "what", "error"}]}.
Exit status 0 (the test judges).
"""

import json
import os
import socket
import struct
import sys
import threading
import time


def slow_loop(server, until, out, lock):
    while time.monotonic() < until:
        txid = struct.unpack("!H", os.urandom(2))[0]
        q = struct.pack("!6H", txid, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(p)]) + p.encode() for p in "ok.example.test".split(".")) + b"\0"
        q += struct.pack("!2H", 1, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(3)
        err = None
        try:
            s.connect((server, 53))
            s.send(q)
            a = s.recv(4096)
            if struct.unpack("!H", a[:2])[0] != txid or struct.unpack("!H", a[6:8])[0] == 0:
                err = "bad answer"
        except OSError as e:
            err = str(e)
        finally:
            s.close()
        with lock:
            out["slow_queries"] += 1
            if err:
                out["slow_failures"] += 1
                out["failures"].append({"t": None, "what": "slow query", "error": err})


def main():
    secs, echo_name, echo_port, http_port, first, last, pace = (
        float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]),
        float(sys.argv[7]) / 1000)
    addr = socket.getaddrinfo(echo_name, echo_port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    conn = socket.create_connection((addr, echo_port), timeout=3)
    print("started", flush=True)
    t0 = time.monotonic()
    out = {"lookups": 0, "lookup_failures": 0, "connect_failures": 0, "pings": 0, "ping_failures": 0,
           "slowest_lookup_ms": 0, "slow_queries": 0, "slow_failures": 0, "failures": []}
    lock = threading.Lock()
    slow = [threading.Thread(target=slow_loop, args=(sys.argv[8], t0 + secs, out, lock))
            for _ in range(2)] if len(sys.argv) > 8 else []
    for t in slow:
        t.start()
    n, next_ping, conn_ok = first, 0.0, True

    def fail(what, err):
        if len(out["failures"]) < 20:
            out["failures"].append({"t": round(time.monotonic() - t0, 3), "what": what, "error": str(err)})

    while time.monotonic() - t0 < secs:
        t = time.monotonic() - t0
        if conn_ok and t >= next_ping:
            next_ping = t + 0.05
            out["pings"] += 1
            try:
                conn.sendall(b"ping\n")
                got = b""
                while not got.endswith(b"\n"):
                    chunk = conn.recv(64)
                    if not chunk:
                        raise OSError("closed by peer")
                    got += chunk
            except OSError as e:
                out["ping_failures"] += 1
                conn_ok = False
                fail("established", e)
        name = f"race-{n}.test"
        n = n + 1 if n < last else first
        out["lookups"] += 1
        started = time.monotonic()
        try:
            sa = socket.getaddrinfo(name, http_port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
        except OSError as e:
            out["lookup_failures"] += 1
            fail(f"lookup {name}", e)
            continue
        took = time.monotonic() - started
        out["slowest_lookup_ms"] = max(out["slowest_lookup_ms"], round(took * 1000))
        if took > 1.0:
            # The stub resolver retried: an answer was lost on the way.
            out["lookup_failures"] += 1
            fail(f"lookup {name}", f"took {took:.2f} s (a retry)")
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(sa)
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while s.recv(4096):
                pass
        except OSError as e:
            out["connect_failures"] += 1
            fail(f"connect {name} {sa[0]}", e)
        finally:
            s.close()
        time.sleep(pace)
    for t in slow:
        t.join()
    out["secs"] = round(time.monotonic() - t0, 3)
    conn.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
