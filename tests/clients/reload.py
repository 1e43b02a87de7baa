#!/usr/bin/env python3
"""A workload that stays in its cgroup across an agent's config reload and
acts on command: one command per line on stdin, one JSON line per answer.

  resolve NAME        -> {"ok": true, "ips": [...]} (getaddrinfo, IPv4)
  connect IP PORT     -> {"ok": true} or {"ok": false, "errno": "EPERM"}
                         (a new TCP connection, closed at once)
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
