#!/usr/bin/env python3
"""A workload that stays in its cgroup across an agent's config reload and
acts on command: one command per line on stdin, one JSON line per answer.

  resolve NAME        -> {"ok": true, "ips": [...]} (getaddrinfo, IPv4)
  connect IP PORT     -> {"ok": true} or {"ok": false, "errno": "EPERM"}
                         (a new TCP connection, closed at once)
  get IP PORT         -> {"ok": true, "body": "..."} an HTTP/1.0 GET (hostd's
                         body names the address and port that answered)
  udp IP PORT         -> {"ok": true} a datagram sent from an unconnected
                         socket (sendto) came back
  hold IP PORT        -> {"ok": true} opens the long-lived connection (an
                         echo service)
  ping                -> {"ok": true} a line over it comes back
  quit

Prints {"ready": true} first.
"""

import errno
import json
import socket
import sys

held = None


def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fail(e):
    name = errno.errorcode.get(e.errno, str(e)) if isinstance(e, OSError) and e.errno else str(e)
    return {"ok": False, "errno": name}


def connect(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect((ip, int(port)))
    return s


def get(ip, port):
    with connect(ip, port) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").split("\r\n\r\n", 1)[-1]


def udp(ip, port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(b"ping\n", (ip, int(port)))
        return s.recvfrom(64)[0] == b"ping\n"


answer({"ready": True})
for line in sys.stdin:
    cmd = line.split()
    if not cmd:
        continue
    try:
        if cmd[0] == "resolve":
            infos = socket.getaddrinfo(cmd[1], 443, socket.AF_INET, socket.SOCK_STREAM)
            answer({"ok": True, "ips": sorted({i[4][0] for i in infos})})
        elif cmd[0] == "connect":
            connect(cmd[1], cmd[2]).close()
            answer({"ok": True})
        elif cmd[0] == "get":
            answer({"ok": True, "body": get(cmd[1], cmd[2])})
        elif cmd[0] == "udp":
            answer({"ok": udp(cmd[1], cmd[2])})
        elif cmd[0] == "hold":
            held = connect(cmd[1], cmd[2])
            answer({"ok": True})
        elif cmd[0] == "ping":
            held.sendall(b"ping\n")
            answer({"ok": held.recv(64) == b"ping\n"})
        elif cmd[0] == "quit":
            break
        else:
            answer({"ok": False, "errno": "unknown command"})
    except (OSError, socket.gaierror) as e:
        answer(fail(e))
