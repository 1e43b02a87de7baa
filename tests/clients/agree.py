#!/usr/bin/env python3
"""After a test step: ask the running agent's `explain` about everything the
datapath just decided, so the harness can check that they agree.

  agree.py STEP OUT SOCKET BLOCKED_LOG HOSTD_LOG OFFSETS POD_ADDRS

What the datapath decided, from the two sides that saw it:
- each new record of the blocked-connection log (BLOCKED_LOG): a denial (or,
  in audit mode, what would have been one);
- each new connection or datagram that reached a bench host from one of
  POD_ADDRS (comma-separated), in hostd's log (HOSTD_LOG): an allowance,
  seen at the target. An address is `IP` (the agent enforces one endpoint,
  as `exec`), `IP=NAMESPACE/POD` or `IP=@ENDPOINT`: whom to ask about.

For each, one question over the agent's socket (SOCKET, `explain <json>`),
and one JSON line appended to OUT: {"step", "from", "seen", "asked",
"answer"}. OFFSETS keeps how far each log was read (the next step goes on
from there). Waits until the blocked log is quiet (records are written by
the agent a moment after the kernel's verdict). Never fails the step: a
question that gets no answer is written with "answer": {"error": ...}.
"""

import json
import os
import re
import socket
import sys
import time

QUIET = 0.04
QUIET_MAX = 0.6
HOSTD_LINE = re.compile(r"^hostd: (tcp|udp) (\S+) -> (\S+) ")


def split_addr(s):
    """'1.2.3.4:80' or '[2001:db8::1]:80' -> (ip, port)."""
    host, _, port = s.rpartition(":")
    return host.strip("[]"), int(port)


def read_from(path, offset):
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset, []
    # Only whole lines: a line being written is read by the next step.
    end = data.rfind(b"\n") + 1
    lines = data[:end].decode("utf-8", "replace").splitlines()
    return offset + end, lines


def wait_quiet(path):
    last, since, start = -1, time.monotonic(), time.monotonic()
    while time.monotonic() - start < QUIET_MAX:
        try:
            size = os.stat(path).st_size
        except FileNotFoundError:
            size = 0
        now = time.monotonic()
        if size != last:
            last, since = size, now
        elif now - since >= QUIET:
            return
        time.sleep(0.01)


def ask(sock_path, question):
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(sock_path)
        s.sendall(b"explain " + json.dumps(question).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        return json.loads(data)
    except (OSError, ValueError) as e:
        return {"error": f"no answer: {e}"}


def question(host, port, protocol, who=None):
    q = {"namespace": None, "pod": None, "endpoint": None, "host": host, "port": port, "protocol": protocol}
    q.update(who or {})
    return q


def target(spec):
    """'' -> {}; 'ns/pod' -> namespace and pod; '@name' -> endpoint."""
    if not spec:
        return {}
    if spec.startswith("@"):
        return {"endpoint": spec[1:]}
    ns, _, pod = spec.partition("/")
    return {"namespace": ns, "pod": pod}


def from_blocked(rec):
    q = from_record(rec)
    if q is not None:
        # The record names its endpoint: ask about that one.
        q["endpoint"] = rec.get("endpoint")
    return q


def from_record(rec):
    if rec.get("kind") != "attempt":
        return None
    proto = rec["protocol"]
    if proto == "dns":
        if rec["reason"] == "denied-dns-name" and rec.get("host"):
            # A refused name: asked by name.
            return question(rec["host"], 443, "tcp")
        if rec["reason"] == "denied-range":
            # An address the gate stripped from an answer.
            return question(rec["dst"], 443, "tcp")
        return None
    if proto == "icmpv6":
        proto = "icmp"
    return question(rec["dst"], rec["dport"], proto)


def main():
    step, out, sock_path, blocked_log, hostd_log, offsets_path, pod_addrs = sys.argv[1:8]
    pods = {}
    for a in pod_addrs.split(","):
        if a:
            ip, _, spec = a.partition("=")
            pods[ip] = target(spec)
    try:
        with open(offsets_path) as f:
            offsets = json.load(f)
    except (FileNotFoundError, ValueError):
        offsets = {"blocked": 0, "hostd": 0}
    wait_quiet(blocked_log)
    found = []
    offsets["blocked"], lines = read_from(blocked_log, offsets["blocked"])
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        q = from_blocked(rec)
        if q is not None:
            found.append(("blocked", rec, q))
    offsets["hostd"], lines = read_from(hostd_log, offsets["hostd"])
    seen = set()
    for line in lines:
        m = HOSTD_LINE.match(line)
        if not m:
            continue
        proto, peer, local = m.groups()
        peer_ip, _ = split_addr(peer)
        if peer_ip not in pods:
            continue
        ip, port = split_addr(local)
        if (peer_ip, proto, ip, port) in seen:
            continue
        seen.add((peer_ip, proto, ip, port))
        found.append(("arrival", {"protocol": proto, "peer": peer, "local": local}, question(ip, port, proto, pods[peer_ip])))
    with open(out, "a") as f:
        for kind, what, q in found:
            f.write(json.dumps({"step": int(step), "from": kind, "seen": what, "asked": q, "answer": ask(sock_path, q)}) + "\n")
    # How many steps were checked: the harness compares it with the steps run.
    offsets["checked"] = offsets.get("checked", 0) + 1
    with open(offsets_path, "w") as f:
        json.dump(offsets, f)


if __name__ == "__main__":
    main()
