#!/usr/bin/env python3
"""A long-lived connection across a DNS TTL.

  hold.py NAME PORT SECS INTERVAL PROBE_AT...

Resolves NAME (getaddrinfo, IPv4), opens one TCP connection to PORT (an echo
service) and sends a line every INTERVAL seconds for SECS seconds, reading
its echo each time; at each PROBE_AT second (since the connect) it also
tries a *new* connection to the same address and closes it again.

Prints one JSON object: {"addr", "pings": [{"t", "ok", "error"}],
"probes": [{"t", "ok", "errno"}]}. Exit status 0 (the test judges).
"""

import errno
import json
import socket
import sys
import time


def main():
    name, port, secs, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    probe_at = sorted(float(x) for x in sys.argv[5:])
    addr = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    conn = socket.create_connection((addr, port), timeout=2)
    t0 = time.monotonic()
    pings, probes, n = [], [], 0
    while time.monotonic() - t0 < secs:
        t = time.monotonic() - t0
        while probe_at and probe_at[0] <= t:
            probe_at.pop(0)
            p = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            p.settimeout(2)
            try:
                p.connect((addr, port))
                probes.append({"t": round(t, 2), "ok": True, "errno": None})
            except OSError as e:
                probes.append({"t": round(t, 2), "ok": False, "errno": errno.errorcode.get(e.errno)})
            p.close()
        n += 1
        line = f"ping {n}\n".encode()
        try:
            conn.sendall(line)
            got = b""
            while len(got) < len(line):
                chunk = conn.recv(len(line) - len(got))
                if not chunk:
                    break
                got += chunk
            pings.append({"t": round(t, 2), "ok": got == line, "error": None})
        except OSError as e:
            pings.append({"t": round(t, 2), "ok": False, "error": str(e)})
        time.sleep(max(0.0, t0 + n * interval - time.monotonic()))
    print(json.dumps({"addr": addr, "pings": pings, "probes": probes}), flush=True)


if __name__ == "__main__":
    main()
