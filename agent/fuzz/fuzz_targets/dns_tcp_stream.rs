//! A DNS-over-TCP byte stream, as a workload writes it to the agent's TCP
//! gate or a resolver writes it back (`proxy/tcp.rs`): frames are split
//! with `dns::stream::read_frame`, and each frame goes through what the gate
//! does with a query (question, refusal) and with an answer (question,
//! learnable addresses). Nothing may panic; framing must round-trip.
#![no_main]

use hickory_proto::op::ResponseCode;
use libfuzzer_sys::fuzz_target;
use portcullis::dns::{
    learnable, parse_message, parse_query, question, refusal,
    stream::{read_frame, write_frame},
    transaction_id,
};
use portcullis::dnsgate::MAX_CNAME_CHAIN;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    let mut frames = Vec::new();
    // Like the gate: stop at the end of stream or the first broken frame.
    while frames.len() < 64 {
        match read_frame(&mut r) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) | Err(_) => break,
        }
    }
    let mut rewritten = Vec::new();
    for f in &frames {
        write_frame(&mut rewritten, f).expect("a frame read fits a frame");
    }
    assert!(data.starts_with(&rewritten), "framing must round-trip");
    for f in &frames {
        let Ok(msg) = parse_message(f) else { continue };
        let _ = transaction_id(&msg);
        if parse_query(&msg).is_ok() {
            let r = refusal(&msg, ResponseCode::NXDomain);
            let bytes = r.to_vec().expect("a refusal encodes");
            let back = parse_message(&bytes).expect("a refusal re-parses");
            assert_eq!(transaction_id(&back), transaction_id(&msg));
        }
        let q = question(&msg);
        if let Ok(Some(l)) = learnable(&msg, MAX_CNAME_CHAIN) {
            assert_eq!(Some((l.qname.clone(), l.qtype)), q, "learned only for the question asked");
        }
    }
});
