//! DNS over TCP framing (RFC 1035 4.2.2, RFC 7766): each message is
//! preceded by its length as two bytes, network order.

use std::io::{self, Read, Write};

/// Reads one length-prefixed message; `None` at a clean end of stream
/// (nothing read). A stream that ends inside a frame is an error.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg)?;
    Ok(Some(msg))
}

/// Writes one length-prefixed message (in one write, so a frame is never
/// split across segments needlessly).
pub fn write_frame(w: &mut impl Write, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("DNS message over 65535 bytes"))?;
    let mut buf = Vec::with_capacity(msg.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    w.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_truncation_is_an_error() {
        let mut out = Vec::new();
        write_frame(&mut out, b"abc").unwrap();
        write_frame(&mut out, b"").unwrap();
        let mut r = &out[..];
        assert_eq!(read_frame(&mut r).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(read_frame(&mut r).unwrap(), Some(Vec::new()));
        assert_eq!(read_frame(&mut r).unwrap(), None);
        let mut cut = &out[..3];
        assert!(read_frame(&mut cut).is_err());
        let mut half = &out[..1];
        assert!(read_frame(&mut half).is_err());
        assert!(write_frame(&mut Vec::new(), &vec![0u8; 65536]).is_err());
    }
}
