#!/usr/bin/env python3
"""Bench host daemon: every "internet" host of the Portcullis test bench.

Runs inside the bench's own "inet" network namespace (never the root one).
Listens dual-stack on the wildcard address, so with the bench's AnyIP local
routes a single process answers for every test address (API hosts, deny
targets, the 1,000 race addresses).

  TCP (ports from --tcp, default 80,443,8080,8443): reads one request (up to
      the blank line, or whatever arrives within a short timeout, so raw TCP
      or TLS probes also get an answer), then replies
      ``HTTP/1.0 200 OK`` with body ``hello from <local-addr>:<port>\n``.
      The body names the address the client actually reached, which is how
      tests prove *where* a connection landed.
  TCP echo (ports from --tcp-echo, default none): echoes everything back
      until the client closes (a long-lived connection).
  UDP (port from --udp, default 9999): echoes each datagram back, sent *from*
      the address it was received on (IP_PKTINFO/IPV6_PKTINFO), otherwise a
      connected client socket would drop a reply coming from the inet
      link address.

Prints ``READY`` on stdout once every socket is bound; logs go to stderr.
Standard library only (asyncio).
"""

import argparse
import asyncio
import ipaddress
import resource
import socket
import struct
import sys

IP_PKTINFO = 8  # Linux value; socket.IP_PKTINFO is missing on older Pythons.
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
REQUEST_TIMEOUT = 2.0
MAX_REQUEST = 64 * 1024


def log(*args):
    print("hostd:", *args, file=sys.stderr, flush=True)


def unmap(host):
    """'::ffff:203.0.113.10' -> '203.0.113.10' (dual-stack sockets report v4 as mapped)."""
    addr = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr


def fmt(addr, port):
    if isinstance(addr, ipaddress.IPv6Address):
        return f"[{addr}]:{port}"
    return f"{addr}:{port}"


def dual_stack_socket(kind, port):
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.setblocking(False)
    return sock


async def handle_tcp(reader, writer):
    local = writer.get_extra_info("sockname")
    peer = writer.get_extra_info("peername")
    local_s = fmt(unmap(local[0]), local[1])
    peer_s = fmt(unmap(peer[0]), peer[1])
    data = b""
    try:
        while b"\r\n\r\n" not in data and b"\n\n" not in data and len(data) < MAX_REQUEST:
            chunk = await asyncio.wait_for(reader.read(4096), REQUEST_TIMEOUT)
            if not chunk:
                break
            data += chunk
    except (asyncio.TimeoutError, ConnectionError):
        pass
    first = data.split(b"\r\n", 1)[0][:200].decode("latin-1", "replace")
    log(f"tcp {peer_s} -> {local_s} {first!r}")
    body = f"hello from {local_s}\n".encode()
    head = (
        "HTTP/1.0 200 OK\r\n"
        "Content-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Bench-Local: {local_s}\r\n"
        f"X-Bench-Peer: {peer_s}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    try:
        writer.write(head + body)
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    except ConnectionError:
        pass


async def handle_tcp_echo(reader, writer):
    peer = writer.get_extra_info("peername")
    log(f"tcp-echo from {fmt(unmap(peer[0]), peer[1])}")
    try:
        while True:
            chunk = await reader.read(4096)
            if not chunk:
                break
            writer.write(chunk)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
    except ConnectionError:
        pass


UDP_SEEN = set()
UDP_SEEN_MAX = 4096


def log_udp(sock, peer, dst):
    """Logs the first datagram of each (peer, local address) pair: what
    arrived here (the tests' target-side record), without a line per
    datagram of a flood."""
    if len(UDP_SEEN) >= UDP_SEEN_MAX or dst is None:
        return
    port = sock.getsockname()[1]
    key = (peer[0], peer[1], dst, port)
    if key in UDP_SEEN:
        return
    UDP_SEEN.add(key)
    log(f"udp {fmt(unmap(peer[0]), peer[1])} -> {fmt(unmap(dst), port)} ")


def on_udp_readable(sock):
    """Echo one datagram back, sourced from the address it was sent to."""
    while True:
        try:
            data, ancdata, _flags, peer = sock.recvmsg(65535, 256)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:  # e.g. ICMP errors queued on the socket
            log(f"udp recv error: {err}")
            return
        cmsgs = []
        local = None
        for level, ctype, cdata in ancdata:
            if level == socket.IPPROTO_IP and ctype == IP_PKTINFO:
                # struct in_pktinfo { int ifindex; in_addr spec_dst; in_addr addr; }
                _ifindex, _spec, dst = struct.unpack("=I4s4s", cdata[:12])
                cmsgs = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, dst, bytes(4)))]
                local = str(ipaddress.IPv4Address(dst))
            elif level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO:
                # struct in6_pktinfo { in6_addr addr; int ifindex; }
                dst, _ifindex = struct.unpack("=16sI", cdata[:20])
                cmsgs = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, struct.pack("=16sI", dst, 0))]
                local = str(ipaddress.IPv6Address(dst))
        log_udp(sock, peer, local)
        try:
            sock.sendmsg([data], cmsgs, 0, peer)
        except OSError as err:
            log(f"udp send error to {peer}: {err}")


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tcp", default="80,443,8080,8443", help="comma-separated TCP ports")
    parser.add_argument("--udp", default="9999", help="comma-separated UDP echo ports")
    parser.add_argument("--tcp-echo", default="", help="comma-separated TCP echo ports")
    args = parser.parse_args()
    # Race tests hold ~1,000 connections at once; lift the soft fd limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    servers = []
    for port in [int(p) for p in args.tcp.split(",") if p]:
        sock = dual_stack_socket(socket.SOCK_STREAM, port)
        servers.append(await asyncio.start_server(handle_tcp, sock=sock, backlog=4096))

    for port in [int(p) for p in args.tcp_echo.split(",") if p]:
        sock = dual_stack_socket(socket.SOCK_STREAM, port)
        servers.append(await asyncio.start_server(handle_tcp_echo, sock=sock, backlog=128))

    loop = asyncio.get_running_loop()
    for port in [int(p) for p in args.udp.split(",") if p]:
        sock = dual_stack_socket(socket.SOCK_DGRAM, port)
        # v4 datagrams on a dual-stack socket report IP_PKTINFO, v6 ones IPV6_PKTINFO.
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        loop.add_reader(sock.fileno(), on_udp_readable, sock)
        servers.append(sock)  # keep a reference so it is not collected

    print("READY", flush=True)
    log(f"listening tcp={args.tcp} udp={args.udp} tcp-echo={args.tcp_echo}")
    await asyncio.Event().wait()  # run until killed


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
