#!/usr/bin/env python3
"""Stands in for a Kata VM's VMM (QEMU or Cloud Hypervisor with virtio-net)
in tests/src/kata.rs: moves Ethernet frames between the pod's tap device
and the "guest" (a network namespace) and back, as the VMM's virtio-net
backend does between the tap fd and the guest's NIC.

  kata_relay.py TAP IFACE

TAP is a tap device in this (the pod's) namespace, opened as a VMM opens
it: /dev/net/tun with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR. IFACE is this
namespace's end of the veth pair whose other end is the guest's eth0 (the
guest's virtio-net NIC); its frames are read and written with an AF_PACKET
socket with PACKET_VNET_HDR. Both ends carry the virtio-net header, so a
guest's offloaded frames (TSO/GSO segments, checksums left to the device)
cross as they would between virtio-net and vhost-net, and arrive whole.

Prints READY once both are open; relays until killed.
"""

import fcntl
import os
import select
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
SOL_PACKET, PACKET_VNET_HDR, PACKET_IGNORE_OUTGOING = 263, 15, 23
ETH_P_ALL = 0x0003
# A GSO frame is up to 64 KiB plus headers; the virtio-net header is 10 bytes.
BUF = 1 << 18


def main():
    tap_name, iface = sys.argv[1], sys.argv[2]
    tap = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH", tap_name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    guest = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    guest.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    # Not the frames this relay writes to the guest itself.
    guest.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    guest.bind((iface, ETH_P_ALL))
    print("READY", flush=True)
    while True:
        ready, _, _ = select.select([tap, guest], [], [])
        try:
            if tap in ready:
                # What the pod's eth0 received, redirected to the tap by mirred.
                guest.send(os.read(tap, BUF))
            if guest in ready:
                # What the guest sent: into the tap, whose ingress mirred
                # redirects to eth0's egress, towards the node.
                os.write(tap, guest.recv(BUF))
        except OSError as e:
            # A frame lost, as on a real link; the relay goes on.
            print(f"kata_relay: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
