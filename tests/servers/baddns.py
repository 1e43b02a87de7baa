#!/usr/bin/env python3
"""A misbehaving DNS server for the Portcullis test bench (UDP only).

Runs inside the bench's "inet" namespace on one address (198.51.100.54:53
by default). Before each query it reads the mode from --mode-file (missing
or empty: "normal"), so a test switches behaviour without a restart:

  normal          answer correctly
  spoof-extra     answer correctly, then two forged answers to the same
                  client port: same question with another txid claiming
                  203.0.113.62, and a duplicate (same txid) claiming .64
  unsolicited     answer correctly, then an answer for never.example.test
                  (a name the client never asked) -> 203.0.113.63, fresh txid
  wrong-port      if the first label is pNNNN, first send the right answer
                  (same txid and question) claiming 203.0.113.66 to client
                  port NNNN instead, then the correct answer to the real port
  wrong-question  the right txid, but the question (and answer) is
                  stolen.example.test -> 203.0.113.65; nothing else
  slow            answer correctly after 300 ms (one query at a time, so
                  queries from several clients wait in line)

Zone (a leading pNNNN label is ignored): spoof.example.test 203.0.113.61,
ok.example.test 203.0.113.67, big.example.test 192.0.2.1-200 (200 A
records, ~3.3 KB: sent whole only when the query's EDNS0 buffer allows,
else truncated with TC); AAAA queries get NODATA, other names NXDOMAIN.

Prints READY on stdout once bound; logs each query to stderr.
Standard library only.
"""

import argparse
import ipaddress
import socket
import struct
import sys
import threading
import time

ZONE = {
    "spoof.example.test": ["203.0.113.61"],
    "ok.example.test": ["203.0.113.67"],
    "never.example.test": ["203.0.113.63"],
    "stolen.example.test": ["203.0.113.65"],
    "big.example.test": [f"192.0.2.{i}" for i in range(1, 201)],
}
FORGED_OTHER_TXID = "203.0.113.62"
FORGED_DUPLICATE = "203.0.113.64"
FORGED_WRONG_PORT = "203.0.113.66"
A, AAAA, OPT = 1, 28, 41


def log(*args):
    print("baddns:", *args, file=sys.stderr, flush=True)


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def parse_query(msg):
    """(txid, flags, qname, qtype, edns_size or None)."""
    txid, flags, qd, _an, _ns, ar = struct.unpack("!6H", msg[:12])
    if qd != 1:
        raise ValueError("need exactly one question")
    i, labels = 12, []
    while msg[i]:
        n = msg[i]
        labels.append(msg[i + 1 : i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype, _qclass = struct.unpack("!HH", msg[i + 1 : i + 5])
    i += 5
    edns = None
    for _ in range(ar):  # an OPT record: root name, type 41, class = size
        if msg[i] == 0 and struct.unpack("!H", msg[i + 1 : i + 3])[0] == OPT:
            edns = struct.unpack("!H", msg[i + 3 : i + 5])[0]
        break
    return txid, flags, ".".join(labels).lower(), qtype, edns


def lookup(qname):
    labels = qname.split(".")
    if labels and labels[0][:1] == "p" and labels[0][1:].isdigit():
        labels = labels[1:]
    return ZONE.get(".".join(labels))


def response(txid, rd, qname, qtype, ips, edns, ttl, rcode=0):
    """A DNS response; ips=None means NXDOMAIN."""
    if ips is None:
        rcode, ips = 3, []
    if qtype != A:
        ips = []
    answers = b"".join(
        struct.pack("!HHHIH", 0xC00C, A, 1, ttl, 4) + ipaddress.IPv4Address(ip).packed for ip in ips
    )
    opt = struct.pack("!BHHIH", 0, OPT, 4096, 0, 0) if edns is not None else b""
    limit = max(512, edns or 0)
    question = encode_name(qname) + struct.pack("!HH", qtype, 1)
    flags = 0x8080 | (rd << 8) | rcode  # QR, RA, RD copied
    body = question + answers + opt
    if 12 + len(body) > limit:  # truncated: TC and no answers
        flags |= 0x0200
        answers, ips = b"", []
    head = struct.pack("!6H", txid, flags, 1, len(ips), 0, 1 if opt else 0)
    return head + question + answers + opt


def read_mode(path):
    try:
        with open(path) as f:
            return f.read().strip() or "normal"
    except FileNotFoundError:
        return "normal"


def serve(sock, mode_file, ttl):
    while True:
        msg, peer = sock.recvfrom(65535)
        try:
            txid, flags, qname, qtype, edns = parse_query(msg)
        except (ValueError, IndexError, struct.error) as err:
            log(f"bad query from {peer}: {err}")
            continue
        mode = read_mode(mode_file)
        rd = (flags >> 8) & 1
        log(f"query {qname} type {qtype} txid {txid} edns {edns} from {peer[0]}:{peer[1]} mode {mode}")
        ips = lookup(qname)

        def send(data, to=peer, what="answer"):
            sock.sendto(data, to)
            log(f"sent {what} ({len(data)} bytes) to {to[0]}:{to[1]}")

        if mode == "wrong-question":
            send(response(txid, rd, "stolen.example.test", A, ZONE["stolen.example.test"], edns, ttl), what="forged wrong-question")
            continue
        if mode == "wrong-port":
            first = qname.split(".")[0]
            if first[:1] == "p" and first[1:].isdigit():
                decoy = (peer[0], int(first[1:]))
                send(response(txid, rd, qname, qtype, [FORGED_WRONG_PORT], edns, ttl), decoy, "forged wrong-port")
                time.sleep(0.05)
        if mode == "slow":
            time.sleep(0.3)
        send(response(txid, rd, qname, qtype, ips, edns, ttl))
        if mode == "spoof-extra":
            time.sleep(0.05)
            send(response(txid ^ 0x5A5A, rd, qname, qtype, [FORGED_OTHER_TXID], edns, ttl), what="forged other-txid")
            send(response(txid, rd, qname, qtype, [FORGED_DUPLICATE], edns, ttl), what="forged duplicate")
        elif mode == "unsolicited":
            time.sleep(0.05)
            never = "never.example.test"
            send(response((txid + 1) & 0xFFFF, rd, never, A, ZONE[never], edns, ttl), what="forged unsolicited")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="198.51.100.54", help="comma-separated addresses")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--mode-file", required=True)
    parser.add_argument("--ttl", type=int, default=60)
    args = parser.parse_args()
    # One socket per address (comma-separated), each answering from the
    # address it was asked at, as resolvers must.
    socks = []
    for addr in args.addr.split(","):
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        # IP_FREEBIND (15): an IPv6 AnyIP address is local for routing but
        # on no interface, which bind() otherwise requires.
        sock.setsockopt(socket.SOL_IP, 15, 1)
        sock.bind((addr, args.port))
        socks.append(sock)
        log(f"listening udp {addr}:{args.port}")
    for sock in socks[1:]:
        threading.Thread(target=serve, args=(sock, args.mode_file, args.ttl), daemon=True).start()
    print("READY", flush=True)
    serve(socks[0], args.mode_file, args.ttl)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
