#!/usr/bin/env python3
"""Writes the checked-in seed corpora under corpus/<target>/ (deterministic).

    python3 agent/fuzz/seeds.py

DNS answers are built by hand (no dependencies): IPv4 and IPv6 packets as
the kernel holds them (IP + UDP + DNS), bare DNS messages, CNAME chains, a
DNS-rebinding answer, NXDOMAIN, EDNS, and truncated packets. gate_record seeds
are DnsHeldPacket headers (agent-common/src/event.rs) followed by a packet;
the target zero-pads them to the full record size. policy_yaml seeds are the
README's, deploy/'s and a few edge cases.
"""

import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")

A, AAAA, CNAME, OPT = 1, 28, 5, 41
IN = 1


def name(n, ptrs=None, out_len=0):
    """Wire name; with `ptrs` (suffix -> offset) uses compression pointers."""
    out = b""
    labels = n.rstrip(".").split(".") if n.strip(".") else []
    for i in range(len(labels)):
        suffix = ".".join(labels[i:]).lower()
        if ptrs is not None and suffix in ptrs:
            return out + struct.pack("!H", 0xC000 | ptrs[suffix])
        if ptrs is not None and out_len + len(out) < 0x3FFF:
            ptrs[suffix] = out_len + len(out)
        lab = labels[i].encode()
        out += bytes([len(lab)]) + lab
    return out + b"\x00"


def rr(owner, rtype, rdata_fn, ttl, ptrs, cur):
    own = name(owner, ptrs, cur)
    head = own + struct.pack("!HHI", rtype, IN, ttl)
    rdata = rdata_fn(ptrs, cur + len(head) + 2)
    return head + struct.pack("!H", len(rdata)) + rdata


def a(owner, ip, ttl=300):
    return (owner, A, lambda p, c: bytes(int(x) for x in ip.split(".")), ttl)


def aaaa(owner, ip, ttl=300):
    import ipaddress

    return (owner, AAAA, lambda p, c: ipaddress.IPv6Address(ip).packed, ttl)


def cname(owner, target, ttl=300):
    return (owner, CNAME, lambda p, c: name(target, p, c), ttl)


def message(qname, qtype, answers, rcode=0, tid=0x1234, compress=True, opt=False, query=False):
    flags = 0x0100 if query else 0x8000 | 0x0100 | 0x0080 | rcode  # (QR,) RD(, RA)
    ptrs = {} if compress else None
    out = struct.pack("!HHHHHH", tid, flags, 1, len(answers), 0, 1 if opt else 0)
    out += name(qname, ptrs, len(out)) + struct.pack("!HH", qtype, IN)
    for owner, rtype, fn, ttl in answers:
        out += rr(owner, rtype, fn, ttl, ptrs, len(out))
    if opt:  # EDNS0: root owner, class = UDP size 1232, no options
        out += b"\x00" + struct.pack("!HHIH", OPT, 1232, 0, 0)
    return out


def csum(data):
    if len(data) % 2:
        data += b"\x00"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def udp(sport, dport, payload, pseudo):
    length = 8 + len(payload)
    c = csum(pseudo(length) + struct.pack("!HHHH", sport, dport, length, 0) + payload) or 0xFFFF
    return struct.pack("!HHHH", sport, dport, length, c) + payload


def v4(payload, src="10.96.0.10", dst="10.244.1.7", sport=53, dport=41234):
    s, d = (bytes(int(x) for x in ip.split(".")) for ip in (src, dst))
    u = udp(sport, dport, payload, lambda n: s + d + struct.pack("!BBH", 0, 17, n))
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), 0, 0x4000, 64, 17, 0, s, d)
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return hdr + u


def v6(payload, src="fd00::a", dst="fd00:1::7", hop_by_hop=False, sport=53, dport=41234):
    import ipaddress

    s, d = ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed
    u = udp(sport, dport, payload, lambda n: s + d + struct.pack("!I3xB", n, 17))
    ext, nh = b"", 17
    if hop_by_hop:  # next header UDP, length 0 (8 bytes), PadN option
        ext, nh = bytes([17, 0, 1, 4, 0, 0, 0, 0]), 0
    return struct.pack("!IHBB16s16s", 6 << 28, len(ext) + len(u), nh, 64, s, d) + ext + u


DNS_KIND_ANSWER, DNS_KIND_QUERY = 0, 1


def held(packet, endpoint=1, family=4, kind=DNS_KIND_ANSWER):
    # ts_ns, netns_cookie, socket_cookie, cgroup_id, endpoint, tgid, len, family, kind, _pad
    return struct.pack("<QQQQIIIIII", 1, 4096, 77, 44, endpoint, 1234, len(packet), family, kind, 0) + packet


def query_v4(qname, qtype=A):
    return v4(message(qname, qtype, [], query=True), src="10.244.1.7", dst="10.96.0.10", sport=41234, dport=53)


def query_v6(qname, qtype=AAAA):
    return v6(message(qname, qtype, [], query=True, opt=True), src="fd00:1::7", dst="fd00::a", sport=41234, dport=53)


def write(target, files):
    d = os.path.join(CORPUS, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for fname, data in files.items():
        with open(os.path.join(d, fname), "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)


def main():
    openai = message("api.openai.com", A, [a("api.openai.com", "203.0.113.10"), a("api.openai.com", "203.0.113.11", 60)])
    openai6 = message("api.openai.com", AAAA, [aaaa("api.openai.com", "2001:db8::10")], opt=True)
    chain = message(
        "www.example.com",
        A,
        [
            cname("www.example.com", "cdn.example.net"),
            cname("cdn.example.net", "edge.cdn.example.net", 30),
            a("edge.cdn.example.net", "192.0.2.7"),
            a("bank.example", "192.0.2.99"),  # off-chain: never learned
        ],
    )
    chain6 = message(
        "Files.GitHubUserContent.com",
        AAAA,
        [
            cname("files.githubusercontent.com", "gh.map.fastly.net"),
            aaaa("gh.map.fastly.net", "2001:db8:f::1"),
            aaaa("gh.map.fastly.net", "::ffff:169.254.169.254"),
        ],
        compress=False,
    )
    rebind = message("evil.slack.com", A, [a("evil.slack.com", "169.254.169.254"), a("evil.slack.com", "198.51.100.9")])
    nxdomain = message("nope.example", A, [], rcode=3)
    loop = message("a.example", A, [cname("a.example", "b.example"), cname("b.example", "a.example")])
    fork = message("a.example", A, [cname("a.example", "b.example"), cname("a.example", "c.example")])

    p_chain = v4(chain)
    write(
        "dns_answer",
        {
            "v4_a.bin": v4(openai),
            "v4_cname_chain.bin": p_chain,
            "v4_rebind.bin": v4(rebind),
            "v4_nxdomain.bin": v4(nxdomain),
            "v6_aaaa_edns.bin": v6(openai6),
            "v6_cname_uncompressed.bin": v6(chain6),
            "v6_hop_by_hop.bin": v6(openai, hop_by_hop=True),
            # DNS cut mid-record, IP/UDP lengths made consistent with the cut.
            "v4_dns_truncated.bin": v4(chain[: len(chain) - 9]),
            # The capture itself cut short: IP total length says more.
            "v4_packet_truncated.bin": p_chain[:60],
            "dns_cname_chain.bin": chain,
            "dns_cname_loop.bin": loop,
            "dns_cname_fork.bin": fork,
            "v4_query.bin": query_v4("api.openai.com"),
            "dns_query_tunnel.bin": message("c2VjcmV0LXBhc3N3b3JkLWZvci10aGUtcHJvZA.x.example", A, [], query=True),
        },
    )
    write(
        "gate_record",
        {
            "v4_a.bin": held(v4(openai)),
            "v4_rebind.bin": held(v4(rebind), endpoint=2),
            "v6_cname.bin": held(v6(chain6), family=6),
            "v4_cname_allowed.bin": held(v4(chain)),
            "v4_nxdomain_not_allowed.bin": held(v4(nxdomain)),  # refusal path
            "v4_len_too_long.bin": held(p_chain)[:40] + struct.pack("<I", 0xFFFF) + held(p_chain)[44:],
            "q_v4_allowed.bin": held(query_v4("api.openai.com"), kind=DNS_KIND_QUERY),
            "q_v6_not_allowed.bin": held(query_v6("9f86d081884c7d659a2feaa0c55ad015.evil.example"), family=6, kind=DNS_KIND_QUERY),
        },
    )
    write(
        "policy_yaml",
        {
            "readme.yaml": """egress:
  - toFQDNs:
      - matchName: api.openai.com
      - matchPattern: "*.slack.com"
      - matchPattern: "**.githubusercontent.com"
    ports: [{port: 443, protocol: TCP}]
  - toCIDRs: ["192.0.2.0/24"]
    ports: [{port: 8080}]
  - toCIDRs: ["10.96.0.1/32"]
    ports: [{port: 443}]
dns:
  servers: ["198.51.100.53"]
""",
            "agent_policy.yaml": open(os.path.join(HERE, "..", "..", "deploy", "examples", "agent-policy.yaml")).read(),
            "configmap_policy.yaml": """egress:
  - toFQDNs: [{matchName: api.openai.com}, {matchPattern: "*.slack.com"}]
    ports: [{port: 443}]
  - toCIDRs: ["10.96.0.1/32"]
    ports: [{port: 443}]
dns:
  servers: ["10.96.0.10"]
""",
            "v6_and_any.yaml": """egress:
  - toCIDRs: ["2001:db8::/32", "0.0.0.0/0", "::ffff:10.0.0.0/104", "10.0.0.0/8"]
    ports: [{port: 53, protocol: udp}, {port: 9000, protocol: SCTP}, {port: 1, protocol: ANY}]
  - toFQDNs: [{matchPattern: "*"}]
dns:
  servers: ["198.51.100.53:5353", "[2001:db8::53]:53", "2001:db8::54"]
  allowNames: ["*.internal.example", "corp.example."]
""",
            "deny_all.yaml": "egress: []\ndns:\n  servers: []\n",
            "bad_fields.yaml": "egress:\n  - toFQDNs: [{matchName: \"a*.x\"}]\n    ports: [{port: 70000, protocol: icmp}]\n    extra: 1\n",
            "pattern_line.txt": "**.githubusercontent.com\n*.slack.com\nAPI.OpenAI.com.\n",
        },
    )


if __name__ == "__main__":
    main()
