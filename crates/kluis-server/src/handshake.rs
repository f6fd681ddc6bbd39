//! A cap on what a client may send before its TLS handshake is done.
//!
//! rustls joins a fragmented handshake message of up to 64 KiB before it looks at it, so a
//! client that sends most of an oversized `ClientHello` and stops made the server hold
//! about 64 KiB for it until the handshake timeout (4096 such connections: 300 MiB). A real
//! client's handshake messages are a few KiB; [`HandshakeCap`] fails the connection once
//! more than [`MAX_HANDSHAKE_BYTES`] have been read before the handshake completes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes a client may send before its handshake completes (a `ClientHello` with a
/// post-quantum key share is about 2 KiB; rustls reads at most 4 KiB past the end of it).
pub(crate) const MAX_HANDSHAKE_BYTES: usize = 16 * 1024;

/// An IO stream whose reads fail once more than a given number of bytes have been read,
/// until [`HandshakeCap::lift`] is called.
#[derive(Debug)]
pub(crate) struct HandshakeCap<T> {
    inner: T,
    /// Bytes that may still be read; `None` once lifted.
    left: Option<usize>,
}

impl<T> HandshakeCap<T> {
    /// Wrap `inner`, allowing `cap` bytes to be read until [`HandshakeCap::lift`].
    pub(crate) fn new(inner: T, cap: usize) -> Self {
        HandshakeCap {
            inner,
            left: Some(cap),
        }
    }

    /// The handshake is done: no cap from now on.
    pub(crate) fn lift(&mut self) {
        self.left = None;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for HandshakeCap<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        if let Some(left) = this.left.as_mut() {
            let n = buf.filled().len() - before;
            if n > *left {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the TLS handshake is larger than any real client's",
                )));
            }
            *left -= n;
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for HandshakeCap<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Read once from `r` into a 64-byte buffer: the bytes read, or the error.
    fn read_once<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<usize> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(std::future::poll_fn(|cx| {
            let mut space = [0u8; 64];
            let mut buf = ReadBuf::new(&mut space);
            ready!(Pin::new(&mut *r).poll_read(cx, &mut buf))?;
            Poll::Ready(Ok(buf.filled().len()))
        }))
    }

    #[test]
    fn reads_fail_past_the_cap_until_lifted() {
        let data = [7u8; 100];
        let mut capped = HandshakeCap::new(&data[..8], 10);
        assert_eq!(read_once(&mut capped).unwrap(), 8);
        let mut capped = HandshakeCap::new(&data[..16], 10);
        assert!(
            read_once(&mut capped).is_err(),
            "16 bytes passed a cap of 10"
        );
        let mut capped = HandshakeCap::new(&data[..], 10);
        capped.lift();
        assert_eq!(read_once(&mut capped).unwrap(), 64);
    }
}
