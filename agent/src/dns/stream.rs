//! DNS over TCP framing (RFC 1035 4.2.2, RFC 7766): each message is
//! preceded by its length as two bytes, network order. Blocking
//! (`read_frame`, `write_frame`) and async (`read_frame_async`,
//! `write_frame_async`: the TCP gate's nonblocking sockets), the same rules.

use std::io::{self, Read, Write};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

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
    w.write_all(&framed(msg)?)
}

fn framed(msg: &[u8]) -> io::Result<Vec<u8>> {
    let len = u16::try_from(msg.len()).map_err(|_| io::Error::other("DNS message over 65535 bytes"))?;
    let mut buf = Vec::with_capacity(msg.len() + 2);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(msg);
    Ok(buf)
}

/// `read_frame` on a nonblocking stream: the message is put together from
/// whatever pieces arrive, without holding the thread.
pub async fn read_frame_async(r: &mut (impl AsyncRead + Unpin)) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        match r.read(&mut len[got..]).await {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut msg).await?;
    Ok(Some(msg))
}

/// `write_frame` on a nonblocking stream.
pub async fn write_frame_async(w: &mut (impl AsyncWrite + Unpin), msg: &[u8]) -> io::Result<()> {
    w.write_all(&framed(msg)?).await
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

    #[test]
    fn async_frames_follow_the_same_rules() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut out = Vec::new();
            write_frame_async(&mut out, b"abc").await.unwrap();
            write_frame_async(&mut out, b"").await.unwrap();
            let mut sync = Vec::new();
            write_frame(&mut sync, b"abc").unwrap();
            write_frame(&mut sync, b"").unwrap();
            assert_eq!(out, sync);
            let mut r = &out[..];
            assert_eq!(read_frame_async(&mut r).await.unwrap(), Some(b"abc".to_vec()));
            assert_eq!(read_frame_async(&mut r).await.unwrap(), Some(Vec::new()));
            assert_eq!(read_frame_async(&mut r).await.unwrap(), None);
            assert!(read_frame_async(&mut &out[..3]).await.is_err());
            assert!(read_frame_async(&mut &out[..1]).await.is_err());
            assert!(write_frame_async(&mut Vec::new(), &vec![0u8; 65536]).await.is_err());
        });
    }
}
