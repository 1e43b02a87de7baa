#!/usr/bin/env python3
"""DNS-learning race client: for n in FIRST..=LAST, getaddrinfo("race-n.test",
PORT) and connect() to the first address *immediately*, then read the hello.

Every name resolves to an address nobody asked for before, so each connect()
only succeeds if the agent learned the answer before the workload saw it.
Prints one JSON object: {"results": [{"n", "addr", "ok", "error", "body"}]}.
"""

import json
import socket
import sys


def one(n, port):
    name = f"race-{n}.test"
    try:
        infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)
    except OSError as e:
        return {"n": n, "addr": None, "ok": False, "error": f"getaddrinfo: {e}"}
    fam, kind, proto, _canon, sa = infos[0]
    s = socket.socket(fam, kind, proto)
    s.settimeout(2)
    try:
        s.connect(sa)
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        body = data.split(b"\r\n\r\n", 1)[-1].decode()
        return {"n": n, "addr": sa[0], "ok": True, "error": None, "body": body}
    except OSError as e:
        return {"n": n, "addr": sa[0], "ok": False, "error": f"connect: {e}"}
    finally:
        s.close()


def main():
    first, last, port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    results = [one(n, port) for n in range(first, last + 1)]
    print(json.dumps({"results": results}), flush=True)


if __name__ == "__main__":
    main()
