//! JSON bodies for the refusals hyper writes itself (400, 414, 431 on an unparsable or
//! oversized request head), by rewriting them on their way out of the connection.
//!
//! hyper answers a request head it cannot parse, or one larger than its read buffer, with an
//! empty-bodied response and then closes the connection; it has no hook to change that answer.
//! [`JsonRefusals`] sits between hyper and the socket (or the TLS stream) and follows the
//! framing of the responses hyper writes (trusted output: a head, then `content-length` bytes).
//! A head with status 400, 414 or 431 and `content-length: 0` is one of hyper's own refusals
//! (every refusal of the API carries a JSON body), and is replaced by the same status with a
//! JSON `{code, message}` body and `connection: close`. Whenever the framing is not plain
//! (chunked bodies, answers to `HEAD`, upgrades, a head split over writes) the wrapper stops
//! looking and passes everything through unchanged for the rest of the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest response head looked at; longer ones pass through unchanged.
const MAX_HEAD: usize = 16 * 1024;

/// Where in the response stream the next written byte falls.
#[derive(Clone, Copy, Debug)]
enum Out {
    /// At the start of a response head.
    Head,
    /// Inside a body with this many bytes left.
    Body(u64),
    /// Framing not followed any more: everything passes through.
    Pass,
}

/// An IO stream whose outgoing hyper refusals get JSON bodies (see the module docs).
#[derive(Debug)]
pub(crate) struct JsonRefusals<T> {
    inner: T,
    out: Out,
    /// Bytes accepted from hyper and not yet written to `inner`.
    pending: Vec<u8>,
    written: usize,
    /// Set when the connection carried a request whose answer is framed differently (`HEAD`).
    plain_framing_lost: Arc<AtomicBool>,
    max_header_bytes: usize,
}

impl<T> JsonRefusals<T> {
    /// Wrap `inner`; `max_header_bytes` is quoted in the 431 message.
    pub(crate) fn new(inner: T, max_header_bytes: usize) -> Self {
        JsonRefusals {
            inner,
            out: Out::Head,
            pending: Vec::new(),
            written: 0,
            plain_framing_lost: Arc::new(AtomicBool::new(false)),
            max_header_bytes,
        }
    }

    /// A flag the service sets when a request's answer will not be framed by its
    /// `content-length` (a `HEAD` request): the wrapper then passes everything through.
    pub(crate) fn framing_flag(&self) -> Arc<AtomicBool> {
        self.plain_framing_lost.clone()
    }
}

impl<T: AsyncWrite + Unpin> JsonRefusals<T> {
    /// Write out what is pending; `Ready(Ok)` once nothing is.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.pending.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if self.pending.capacity() > MAX_HEAD {
            // A large answer went out: do not keep its room for the connection's lifetime.
            self.pending = Vec::new();
        }
        self.pending.clear();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Take the response head at the start of `buf` (ending at `end`, after its blank line):
    /// queue it, or its JSON replacement, and set where the stream goes next.
    fn take_head(&mut self, head: &[u8]) {
        let parsed = parse_head(head);
        let lost = self.plain_framing_lost.load(Ordering::Relaxed);
        match parsed {
            Some(h) if !lost && h.content_length == Some(0) && h.is_refusal() => {
                self.pending = json_refusal(head, h.status, self.max_header_bytes);
                // hyper closes the connection after its refusal.
                self.out = Out::Pass;
            }
            Some(h) if !lost => {
                self.pending = head.to_vec();
                self.out = match (h.status, h.content_length) {
                    (101, _) => Out::Pass,
                    (100..=199 | 204 | 304, _) => Out::Head,
                    (_, Some(0)) => Out::Head,
                    (_, Some(n)) if !h.chunked => Out::Body(n),
                    _ => Out::Pass,
                };
            }
            _ => {
                self.pending = head.to_vec();
                self.out = Out::Pass;
            }
        }
        self.written = 0;
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for JsonRefusals<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for JsonRefusals<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match this.out {
            Out::Pass => Pin::new(&mut this.inner).poll_write(cx, buf),
            Out::Body(left) => {
                let k = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                let n = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..k]))?;
                let left = left - n as u64;
                this.out = if left == 0 {
                    Out::Head
                } else {
                    Out::Body(left)
                };
                Poll::Ready(Ok(n))
            }
            Out::Head => {
                let window = &buf[..buf.len().min(MAX_HEAD)];
                let Some(end) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
                    // Not a whole head in one write (hyper writes heads whole): stop following.
                    this.out = Out::Pass;
                    return Pin::new(&mut this.inner).poll_write(cx, buf);
                };
                let mut end = end + 4;
                this.take_head(&buf[..end]);
                // The body bytes hyper gave along go out in the same write as the head, as
                // they would without this wrapper (one segment; no answer cut after its head).
                if let Out::Body(left) = this.out {
                    let k = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(buf.len() - end);
                    this.pending.extend_from_slice(&buf[end..end + k]);
                    end += k;
                    let left = left - k as u64;
                    this.out = if left == 0 {
                        Out::Head
                    } else {
                        Out::Body(left)
                    };
                }
                // Start writing now; whatever is left goes out on the next write or flush.
                if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(Ok(end))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// What the wrapper needs from a response head.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    content_length: Option<u64>,
    chunked: bool,
}

impl Head {
    /// The statuses hyper answers on its own.
    fn is_refusal(&self) -> bool {
        matches!(self.status, 400 | 414 | 431)
    }
}

/// Parse a response head (status line and headers, ending with a blank line).
fn parse_head(head: &[u8]) -> Option<Head> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let rest = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?;
    let status: u16 = rest.get(..3)?.parse().ok()?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return None;
            }
            content_length = Some(value.parse().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
    }
    Some(Head {
        status,
        content_length,
        chunked,
    })
}

/// The JSON answer that replaces hyper's empty-bodied refusal `head` (its status line and
/// its other headers, such as `date`, are kept).
fn json_refusal(head: &[u8], status: u16, max_header_bytes: usize) -> Vec<u8> {
    let (code, message) = match status {
        431 => (
            "headers_too_large",
            format!(
                "the request line and headers exceed {max_header_bytes} bytes: send fewer or shorter headers"
            ),
        ),
        414 => (
            "uri_too_long",
            "the request target is too long: use a shorter path and query".to_owned(),
        ),
        _ => (
            "malformed",
            "the request line or headers are not valid HTTP/1.1: fix the client, or whatever sits between it and the server"
                .to_owned(),
        ),
    };
    let body = serde_json::json!({ "code": code, "message": message }).to_string();
    let text = String::from_utf8_lossy(head);
    let mut out = String::with_capacity(head.len() + body.len() + 96);
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or("");
        if out.is_empty()
            || !(name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("connection")
                || name.eq_ignore_ascii_case("content-type"))
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("content-type: application/json\r\nconnection: close\r\n");
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    out.push_str(&body);
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_heads() {
        let h = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\ndate: x\r\n\r\n").unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: Some(12),
                chunked: false
            }
        );
        let h = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").unwrap();
        assert!(h.chunked && h.content_length.is_none());
        assert!(parse_head(b"garbage\r\n\r\n").is_none());
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n")
                .is_none()
        );
    }

    /// Write `chunks` through the wrapper one `poll_write` at a time (each may be taken in
    /// part); returns what reached the inner stream.
    fn through(chunks: &[&[u8]], head_request: bool) -> Vec<u8> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut w = JsonRefusals::new(Vec::new(), 8192);
            if head_request {
                w.framing_flag().store(true, Ordering::Relaxed);
            }
            for chunk in chunks {
                let mut rest = *chunk;
                while !rest.is_empty() {
                    let n = std::future::poll_fn(|cx| Pin::new(&mut w).poll_write(cx, rest))
                        .await
                        .unwrap();
                    rest = &rest[n..];
                }
            }
            std::future::poll_fn(|cx| Pin::new(&mut w).poll_flush(cx))
                .await
                .unwrap();
            w.inner
        })
    }

    #[test]
    fn only_hypers_own_refusals_at_a_response_boundary_are_rewritten() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 31\r\n\r\n";
        // A body that looks like a refusal must pass untouched.
        let body = b"HTTP/1.1 400 Bad\r\ncontent-len\r\n";
        assert_eq!(body.len(), 31);
        let refusal = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let app_400 = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\n\r\n{}";

        let mut whole = ok.to_vec();
        whole.extend_from_slice(body);
        whole.extend_from_slice(refusal);
        // A head split over writes (hyper writes heads whole) stops the following: all passes.
        for split in [1, 7, whole.len() - 3] {
            assert_eq!(through(&[&whole[..split], &whole[split..]], false), whole);
        }
        for split in [ok.len(), ok.len() + 5, ok.len() + body.len(), whole.len()] {
            let out = through(&[&whole[..split], &whole[split..]], false);
            let (first, second) = out.split_at(ok.len() + body.len());
            assert_eq!(&first[..ok.len()], ok);
            assert_eq!(&first[ok.len()..], body);
            let second = String::from_utf8(second.to_vec()).unwrap();
            assert!(
                second.starts_with("HTTP/1.1 400 Bad Request\r\n"),
                "{second}"
            );
            assert!(second.contains("\"code\":\"malformed\""), "{second}");
        }
        // The app's own 400 (with a body) is left alone.
        assert_eq!(through(&[app_400], false), app_400);
        // After a HEAD request nothing is rewritten.
        assert_eq!(through(&[refusal], true), refusal);
        // A chunked answer stops the following.
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        let mut both = chunked.to_vec();
        both.extend_from_slice(refusal);
        assert_eq!(through(&[chunked, refusal], false), both);
    }

    #[test]
    fn refusal_keeps_status_and_date_and_gets_a_json_body() {
        let head = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: Mon, 07 Dec 2026 01:00:00 GMT\r\n\r\n";
        let out = String::from_utf8(json_refusal(head, 431, 16384)).unwrap();
        let (h, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(h.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(h.contains("date: Mon, 07 Dec 2026"));
        assert!(!h.contains("content-length: 0"));
        assert!(h.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["code"], "headers_too_large");
        assert!(v["message"].as_str().unwrap().contains("16384"));
    }

    /// An inner stream that takes at most a few bytes per write and is not ready every
    /// other time (a slow socket, or a TLS stream with little room).
    struct Stingy {
        out: Vec<u8>,
        calls: usize,
    }

    impl AsyncWrite for Stingy {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.calls += 1;
            if this.calls % 2 == 0 {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(1 + this.calls % 7);
            this.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Responses as hyper writes them (whole heads, bodies after), handed over in writes of
    /// every size and taken a few bytes at a time: what arrives is the same responses, with
    /// only hyper's own refusal given its JSON body.
    #[test]
    fn partial_and_pending_writes_keep_every_response_intact() {
        let ok = |body: &str| {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let mut stream = String::new();
        stream.push_str(&ok(
            "{\"share\":\"HTTP/1.1 400 Bad Request\\r\\ncontent-length: 0\"}",
        ));
        stream.push_str("HTTP/1.1 100 Continue\r\n\r\n");
        stream.push_str(&ok(&"x".repeat(40_000)));
        stream.push_str("HTTP/1.1 204 No Content\r\n\r\n");
        stream.push_str(&ok("{}"));
        let refusal = "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        stream.push_str(refusal);
        let stream = stream.into_bytes();
        let expected = {
            let mut e = stream[..stream.len() - refusal.len()].to_vec();
            e.extend_from_slice(&json_refusal(refusal.as_bytes(), 431, 8192));
            e
        };
        // Where each head starts and ends.
        let mut heads = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let end = at
                + stream[at..]
                    .windows(4)
                    .position(|x| x == b"\r\n\r\n")
                    .unwrap()
                + 4;
            let len = parse_head(&stream[at..end])
                .unwrap()
                .content_length
                .unwrap_or(0);
            heads.push((at, end));
            at = end + usize::try_from(len).unwrap();
        }
        assert_eq!(heads.len(), 6);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for size in [1, 2, 3, 5, 64, 1000, 16 * 1024, usize::MAX] {
            let got = rt.block_on(async {
                let mut w = JsonRefusals::new(
                    Stingy {
                        out: Vec::new(),
                        calls: 0,
                    },
                    8192,
                );
                // hyper hands over from where the last write ended; a head always whole.
                let mut pos = 0;
                while pos < stream.len() {
                    let mut end = pos.saturating_add(size).min(stream.len());
                    if let Some(&h) = heads
                        .iter()
                        .find(|&&(start, _)| start == pos)
                        .map(|(_, e)| e)
                    {
                        end = end.max(h);
                    }
                    let n = std::future::poll_fn(|cx| {
                        Pin::new(&mut w).poll_write(cx, &stream[pos..end])
                    })
                    .await
                    .unwrap();
                    assert!(n > 0 && pos + n <= end);
                    pos += n;
                }
                std::future::poll_fn(|cx| Pin::new(&mut w).poll_shutdown(cx))
                    .await
                    .unwrap();
                w.inner.out
            });
            assert!(
                got == expected,
                "writes of {size} bytes: the stream changed"
            );
        }
        // Once written, a large answer's room is not kept (an idle kept-alive connection
        // would hold a copy of its last answer).
        let big = ok(&"y".repeat(200_000)).into_bytes();
        let mut w = JsonRefusals::new(Vec::new(), 8192);
        let n = rt.block_on(std::future::poll_fn(|cx| {
            Pin::new(&mut w).poll_write(cx, &big)
        }));
        assert_eq!(n.unwrap(), big.len());
        rt.block_on(std::future::poll_fn(|cx| Pin::new(&mut w).poll_flush(cx)))
            .unwrap();
        assert!(w.inner == big);
        assert!(w.pending.capacity() <= MAX_HEAD, "{}", w.pending.capacity());
    }
}
