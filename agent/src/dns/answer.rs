//! What a DNS answer teaches: the addresses of the question name.
//!
//! A trusted resolver relays records chosen by whoever runs the queried zone,
//! so an answer to `allowed.example` may also carry `A bank.example`. Only
//! records owned by the question name, or by a name the answer itself aliases
//! it to through CNAMEs, are learned; everything else is ignored. Whether the
//! question name is allowed at all is policy, decided by the caller.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, Record};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

use super::DnsError;

/// Addresses learned from one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Learned {
    /// The question name, lowercase, without the trailing dot.
    pub qname: String,
    /// The question type (`RecordType` as its wire value).
    pub qtype: u16,
    /// A and AAAA records owned by `qname` or a name on `cname_chain`, in
    /// answer order, not deduplicated. Empty for a NOERROR/NODATA answer.
    pub addrs: Vec<LearnedAddr>,
    /// The CNAME targets followed from `qname`, in order, `qname` excluded
    /// (`a CNAME b, b CNAME c` gives `["b", "c"]`). Same form as `qname`.
    pub cname_chain: Vec<String>,
}

/// One learned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnedAddr {
    pub ip: IpAddr,
    /// The record's TTL in seconds, unclamped; the caller applies limits.
    pub ttl: u32,
    /// Owner name of the record (`qname` or a `cname_chain` entry).
    pub owner: String,
}

/// Decodes one DNS message; trailing bytes after the last record are an error.
pub fn parse_message(payload: &[u8]) -> Result<Message, DnsError> {
    let mut decoder = BinDecoder::new(payload);
    let msg = Message::read(&mut decoder)?;
    if !decoder.is_empty() {
        return Err(DnsError::DnsTrailingBytes { extra: decoder.len() });
    }
    Ok(msg)
}

/// The single question (name in [`name_to_string`] form, type), or `None`
/// when the message has zero or several questions. The class is not checked.
pub fn question(msg: &Message) -> Option<(String, u16)> {
    match msg.queries.as_slice() {
        [q] => Some((name_to_string(q.name()), u16::from(q.query_type()))),
        _ => None,
    }
}

/// The transaction id, to pair an answer with its query.
pub fn transaction_id(msg: &Message) -> u16 {
    msg.metadata.id
}

/// Extracts what may be learned from `msg`.
///
/// `Ok(None)`: nothing can be learned, because the message is not a
/// standard-query response (QR=1, OPCODE=QUERY), does not have exactly one
/// question of class IN, or its RCODE is not NOERROR (NXDOMAIN, SERVFAIL,
/// ...). The caller decides what to do with such a packet.
///
/// `Ok(Some(_))`: a NOERROR answer; `addrs` may be empty (NODATA).
///
/// `Err`: the CNAME chain starting at the question name loops, exceeds
/// `max_cname_chain` hops (0 allows no CNAME at all) or forks; nothing is
/// learned from such an answer.
///
/// Only the answer section is read. Authority and additional sections are
/// ignored: they are not answers to the question.
pub fn learnable(msg: &Message, max_cname_chain: usize) -> Result<Option<Learned>, DnsError> {
    let meta = &msg.metadata;
    if meta.message_type != MessageType::Response || meta.op_code != OpCode::Query {
        return Ok(None);
    }
    let [query] = msg.queries.as_slice() else {
        return Ok(None);
    };
    if query.query_class() != DNSClass::IN || meta.response_code != ResponseCode::NoError {
        return Ok(None);
    }

    let qname = query.name();
    let chain = follow_cnames(qname, &msg.answers, max_cname_chain)?;

    let addrs = msg
        .answers
        .iter()
        .filter(|r| r.dns_class == DNSClass::IN)
        .filter_map(|r| {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => return None,
            };
            let on_chain = r.name.eq_ignore_root(qname) || chain.iter().any(|n| r.name.eq_ignore_root(n));
            on_chain.then(|| LearnedAddr { ip, ttl: r.ttl, owner: name_to_string(&r.name) })
        })
        .collect();

    Ok(Some(Learned {
        qname: name_to_string(qname),
        qtype: u16::from(query.query_type()),
        addrs,
        cname_chain: chain.iter().map(|n| name_to_string(n)).collect(),
    }))
}

/// Follows `qname`'s CNAME records within `answers` and returns the targets
/// in order. Only IN-class CNAMEs count, like the addresses they lead to.
fn follow_cnames<'m>(qname: &'m Name, answers: &'m [Record], max: usize) -> Result<Vec<&'m Name>, DnsError> {
    let mut chain: Vec<&Name> = Vec::new();
    let mut current = qname;
    // Terminates: every iteration either returns or appends a name not yet
    // on the chain, and the chain is bounded by `max`.
    loop {
        let Some(target) = cname_target(current, answers)? else {
            return Ok(chain);
        };
        if target.eq_ignore_root(qname) || chain.iter().any(|n| target.eq_ignore_root(n)) {
            return Err(DnsError::CnameLoop { name: name_to_string(target) });
        }
        if chain.len() >= max {
            return Err(DnsError::CnameChainTooLong { max });
        }
        chain.push(target);
        current = target;
    }
}

/// The CNAME target of `owner` in `answers`, if any. Repeats of the same
/// target are tolerated (harmless duplicates); different targets are not.
fn cname_target<'m>(owner: &Name, answers: &'m [Record]) -> Result<Option<&'m Name>, DnsError> {
    let mut found: Option<&Name> = None;
    for record in answers {
        let RData::CNAME(cname) = &record.data else {
            continue;
        };
        if record.dns_class != DNSClass::IN || !record.name.eq_ignore_root(owner) {
            continue;
        }
        match found {
            Some(prev) if !prev.eq_ignore_root(&cname.0) => {
                return Err(DnsError::CnameConflict { name: name_to_string(owner) });
            }
            _ => found = Some(&cname.0),
        }
    }
    Ok(found)
}

/// Lowercase presentation form without the trailing dot: `WWW.Example.COM.`
/// becomes `www.example.com`, the root becomes the empty string.
///
/// Bytes that are not plain hostname characters are escaped by hickory
/// (`\.` for a dot inside a label, `\NNN` otherwise), so a crafted label such
/// as `evil.com` inside one label can never read as two labels.
pub fn name_to_string(name: &Name) -> String {
    let s = name.to_lowercase().to_ascii();
    // Only an FQDN carries the final separator dot; for a relative name a
    // last `.` would be an escaped byte of the label itself.
    if name.is_fqdn() || name.is_root() {
        match s.strip_suffix('.') {
            Some(stripped) => stripped.to_string(),
            None => s,
        }
    } else {
        s
    }
}
