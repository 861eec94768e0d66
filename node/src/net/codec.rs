//! Byte codec for [`RPC_PROTOCOL`](super::RPC_PROTOCOL): each request and each response is one
//! body preceded by its length as a big-endian `u32`. A length over the cap is refused before
//! any of the body is read or allocated; the buffer then grows with the bytes actually received,
//! so a peer announcing a large body and sending nothing costs us nothing.

use std::io;

use libp2p::{
    futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    request_response, StreamProtocol,
};

/// Initial buffer size for a body, whatever length the peer announces.
const INITIAL_CAPACITY: usize = 64 * 1024;

/// Length-prefixed opaque bodies, capped at `max` bytes on both read and write.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    max: usize,
}

impl Codec {
    /// A codec refusing bodies over `max` bytes (clamped to `u32::MAX`).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.min(u32::MAX as usize),
        }
    }
}

/// Reads one length-prefixed body of at most `max` bytes.
pub async fn read_body<T>(io: &mut T, max: usize, what: &str) -> io::Result<Vec<u8>>
where
    T: AsyncRead + Unpin + Send,
{
    let mut prefix = [0u8; 4];
    io.read_exact(&mut prefix).await?;
    let announced = u32::from_be_bytes(prefix);
    let len = match usize::try_from(announced) {
        Ok(len) if len <= max => len,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what} body of {announced} bytes exceeds the limit of {max} bytes"),
            ))
        }
    };
    let mut body = Vec::with_capacity(len.min(INITIAL_CAPACITY));
    (&mut *io)
        .take(u64::from(announced))
        .read_to_end(&mut body)
        .await?;
    if body.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{what} body truncated: got {} of {len} bytes", body.len()),
        ));
    }
    Ok(body)
}

/// Writes one length-prefixed body, refusing it if it is over `max` bytes.
pub async fn write_body<T>(io: &mut T, body: &[u8], max: usize, what: &str) -> io::Result<()>
where
    T: AsyncWrite + Unpin + Send,
{
    let len = match u32::try_from(body.len()) {
        Ok(len) if body.len() <= max => len,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{what} body of {} bytes exceeds the limit of {max} bytes",
                    body.len()
                ),
            ))
        }
    };
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(body).await?;
    io.flush().await
}

impl request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_body(io, self.max, "request").await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_body(io, self.max, "response").await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        body: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_body(io, &body, self.max, "request").await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        body: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_body(io, &body, self.max, "response").await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use libp2p::futures::io::Cursor;

    use super::*;

    #[tokio::test]
    async fn round_trip() {
        let mut buf = Cursor::new(Vec::new());
        write_body(&mut buf, b"hello", 16, "request").await.unwrap();
        assert_eq!(buf.get_ref()[..4], [0, 0, 0, 5]);
        buf.set_position(0);
        assert_eq!(read_body(&mut buf, 16, "request").await.unwrap(), b"hello");
    }

    #[tokio::test]
    async fn empty_body_round_trips() {
        let mut buf = Cursor::new(Vec::new());
        write_body(&mut buf, b"", 16, "request").await.unwrap();
        buf.set_position(0);
        assert!(read_body(&mut buf, 16, "request").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn oversized_length_is_refused_before_reading_the_body() {
        // Announces 4 GiB - 1 and sends nothing more: refused from the prefix alone.
        let mut buf = Cursor::new(vec![0xff, 0xff, 0xff, 0xff]);
        let err = read_body(&mut buf, 1024, "request").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("exceeds the limit of 1024 bytes"),
            "{err}"
        );
        assert_eq!(buf.position(), 4);
    }

    #[tokio::test]
    async fn truncated_body_is_an_error() {
        let mut buf = Cursor::new(vec![0, 0, 0, 10, 1, 2, 3]);
        let err = read_body(&mut buf, 1024, "response").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("got 3 of 10"), "{err}");
    }

    #[tokio::test]
    async fn truncated_prefix_is_an_error() {
        let mut buf = Cursor::new(vec![0, 0]);
        let err = read_body(&mut buf, 1024, "response").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn oversized_write_is_refused() {
        let mut buf = Cursor::new(Vec::new());
        let err = write_body(&mut buf, &[0; 17], 16, "request")
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(
            err.to_string().contains("17 bytes exceeds the limit of 16"),
            "{err}"
        );
        assert!(buf.get_ref().is_empty(), "nothing written");
    }
}
