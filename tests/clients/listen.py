#!/usr/bin/env python3
"""The target side of the security tests: records what arrives.

  listen.py LOG udp ADDR PORT   every datagram to ADDR:PORT
  listen.py LOG tcp ADDR PORT   every connection accepted on ADDR:PORT
  listen.py LOG sniff IFACE     every IP packet crossing IFACE (AF_PACKET,
                                both directions), as src/dst/protocol

One JSON line per arrival in LOG; prints READY once listening. Runs until
killed.
"""

import json
import socket
import struct
import sys


def main():
    log, mode = open(sys.argv[1], "a", buffering=1), sys.argv[2]

    def rec(**kw):
        log.write(json.dumps(kw) + "\n")

    if mode == "sniff":
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((sys.argv[3], 0))
        print("READY", flush=True)
        while True:
            frame = s.recv(65535)
            kind = struct.unpack("!H", frame[12:14])[0]
            ip = frame[14:]
            if kind == 0x0800 and len(ip) >= 20:
                ihl = (ip[0] & 15) * 4
                rec(v=4, src=socket.inet_ntoa(ip[12:16]), dst=socket.inet_ntoa(ip[16:20]), proto=ip[9], options=ihl > 20)
            elif kind == 0x86DD and len(ip) >= 40:
                rec(v=6, src=socket.inet_ntop(socket.AF_INET6, ip[8:24]),
                    dst=socket.inet_ntop(socket.AF_INET6, ip[24:40]), proto=ip[6])
        return
    addr, port = sys.argv[3], int(sys.argv[4])
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if mode == "udp":
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((addr, port))
        print("READY", flush=True)
        while True:
            data, peer = s.recvfrom(65535)
            rec(proto="udp", src=peer[0], data=data[:40].decode(errors="replace"))
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1024)
    print("READY", flush=True)
    while True:
        c, peer = s.accept()
        rec(proto="tcp", src=peer[0])
        c.close()


if __name__ == "__main__":
    main()
