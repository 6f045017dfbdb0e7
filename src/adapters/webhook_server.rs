//! Reads one HTTP/1.1 request from a byte stream (stdin handed over by a systemd socket
//! with `Accept=yes`) and writes one `Connection: close` response.
//!
//! Parsing is `httparse`'s; this module only feeds it bytes under two deadlines (a short
//! one for the head, a longer one for the whole request, both counted from the start)
//! and decodes the body framing (Content-Length or chunked, RFC 9112: CRLF line endings
//! only, `chunked` the one transfer coding understood). A head over [`MAX_HEAD`] is
//! refused (431) at that byte; a body over [`MAX_BODY`] is refused (413) as soon as its
//! announced or accumulated size says so, without reading the rest; a request that
//! does not arrive in time gets 408 instead of holding the unit. It makes no decision
//! about what the request means.

use std::io::{Read, Write};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The largest body accepted: 1 MiB (SPEC §4 webhook-handle).
pub const MAX_BODY: usize = 1 << 20;

/// The largest request head (request line and headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;

/// The most headers one request may carry (Plane sends about ten).
const MAX_HEADERS: usize = 64;

/// How much one read takes from the stream.
const READ_CHUNK: usize = 16 * 1024;

/// A request refused before it could be handled: the status to answer and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {reason}")]
pub struct Rejection {
    /// The HTTP status.
    pub status: u16,
    /// Why, for the response body and the log.
    pub reason: String,
}

impl Rejection {
    /// Builds a rejection.
    pub fn new(status: u16, reason: impl Into<String>) -> Rejection {
        Rejection {
            status,
            reason: reason.into(),
        }
    }
}

/// The request line and headers, before the body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// `POST`, `GET`, ...
    pub method: String,
    /// The request target as sent.
    pub path: String,
    /// Headers in order, names as sent; values decoded lossily (they are only compared
    /// with ASCII).
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// Returns the first value of a header (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Returns every value of a header (name case-insensitive).
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A whole request: its head and the raw body bytes, exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Request line and headers.
    pub head: Head,
    /// The body after de-chunking; otherwise untouched.
    pub body: Vec<u8>,
}

/// How long a request may take, both counted from the moment reading starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// The request line and headers must be in by then: a client that trickles its
    /// head (slow-loris) is cut this early. Plane and a buffering proxy send the head at
    /// once, so a couple of seconds is plenty.
    pub head: Duration,
    /// The whole request, body included. Never shorter than `head` in effect.
    pub whole: Duration,
}

impl Deadlines {
    /// The same deadline for the head and the whole request.
    pub fn both(d: Duration) -> Deadlines {
        Deadlines { head: d, whole: d }
    }
}

/// Feeds bytes from a reader thread under a deadline (the head's, then the whole
/// request's).
struct Feeder {
    rx: Receiver<std::io::Result<Vec<u8>>>,
    deadline: Instant,
    buf: Vec<u8>,
    eof: bool,
}

impl Feeder {
    fn new<R: Read + Send + 'static>(mut input: R, head_deadline: Instant) -> Feeder {
        let (tx, rx) = sync_channel(4);
        // The reader blocks in `read`; when the deadline passes the command answers 408
        // and exits, which ends this thread with the process.
        std::thread::spawn(move || loop {
            let mut chunk = vec![0; READ_CHUNK];
            match input.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    chunk.truncate(n);
                    if tx.send(Ok(chunk)).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Err(e));
                    break;
                }
            }
        });
        Feeder {
            rx,
            deadline: head_deadline,
            buf: Vec::new(),
            eof: false,
        }
    }

    /// Appends the next bytes to `buf`; `Ok(false)` at end of input.
    fn fill(&mut self) -> Result<bool, Rejection> {
        if self.eof {
            return Ok(false);
        }
        let left = self.deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(Ok(chunk)) => {
                self.buf.extend_from_slice(&chunk);
                Ok(true)
            }
            Ok(Err(e)) => Err(Rejection::new(
                400,
                format!("reading the request failed: {e}"),
            )),
            Err(RecvTimeoutError::Disconnected) => {
                self.eof = true;
                Ok(false)
            }
            Err(RecvTimeoutError::Timeout) => Err(Rejection::new(
                408,
                "the request did not arrive completely before its read deadline",
            )),
        }
    }
}

/// Reads one request from `input`: its head within `deadlines.head`, all of it within
/// `deadlines.whole`.
///
/// `check_head` runs once the head is parsed and before any of the body is read: it
/// can refuse the request (wrong method, no signature) so that nothing more is read,
/// and it gets the chance to send `100 Continue`.
///
/// # Errors
/// A [`Rejection`] with the status to answer: 400 malformed, truncated or with a bare
/// LF, 408 too slow, 411 no length, 413 body too large, 431 head too large, 501 a
/// transfer coding other than `chunked`, or whatever `check_head` returns.
pub fn read_request<R: Read + Send + 'static>(
    input: R,
    deadlines: Deadlines,
    check_head: impl FnOnce(&Head) -> Result<(), Rejection>,
) -> Result<Request, Rejection> {
    let start = Instant::now();
    let mut feed = Feeder::new(input, start + deadlines.head.min(deadlines.whole));
    let (head, head_len) = read_head(&mut feed)?;
    feed.deadline = start + deadlines.whole.max(deadlines.head);
    check_head(&head)?;
    let framing = framing(&head)?;
    feed.buf.drain(..head_len);
    let body = match framing {
        Framing::Length(n) => read_sized(&mut feed, n)?,
        Framing::Chunked => read_chunked(&mut feed)?,
    };
    Ok(Request { head, body })
}

fn read_head(feed: &mut Feeder) -> Result<(Head, usize), Rejection> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        // Only the first MAX_HEAD bytes can hold the head: a head that has not ended by
        // then is refused there, whatever the size of the reads that brought it.
        let window = &feed.buf[..feed.buf.len().min(MAX_HEAD)];
        match req.parse(window) {
            Ok(httparse::Status::Complete(len)) => {
                if let Some(at) = bare_lf(&window[..len]) {
                    // httparse takes a bare LF as a line end; a proxy in front may not,
                    // and two parsers reading one request differently is how requests
                    // are smuggled (RFC 9112 2.2).
                    return Err(Rejection::new(
                        400,
                        format!("bare LF at byte {at} of the request head: lines end with CRLF"),
                    ));
                }
                let head = Head {
                    method: req.method.unwrap_or_default().to_string(),
                    path: req.path.unwrap_or_default().to_string(),
                    headers: req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_string(),
                                String::from_utf8_lossy(h.value).trim().to_string(),
                            )
                        })
                        .collect(),
                };
                return Ok((head, len));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Rejection::new(
                    431,
                    format!("more than {MAX_HEADERS} request headers"),
                ))
            }
            Err(e) => return Err(Rejection::new(400, format!("malformed request: {e}"))),
        }
        if feed.buf.len() >= MAX_HEAD {
            return Err(Rejection::new(
                431,
                format!("request head larger than {MAX_HEAD} bytes"),
            ));
        }
        if !feed.fill()? {
            let what = if feed.buf.is_empty() {
                "empty request"
            } else {
                "the request head ended early"
            };
            return Err(Rejection::new(400, what));
        }
    }
}

/// The offset of the first LF not preceded by CR.
fn bare_lf(bytes: &[u8]) -> Option<usize> {
    bytes
        .iter()
        .enumerate()
        .find(|&(i, &b)| b == b'\n' && (i == 0 || bytes[i - 1] != b'\r'))
        .map(|(i, _)| i)
}

enum Framing {
    Length(usize),
    Chunked,
}

fn framing(head: &Head) -> Result<Framing, Rejection> {
    let te = head.all("transfer-encoding");
    let cl = head.all("content-length");
    if !te.is_empty() {
        if !cl.is_empty() {
            // Both framings at once is how requests are smuggled: refuse (RFC 9112 6.3).
            return Err(Rejection::new(
                400,
                "both Transfer-Encoding and Content-Length",
            ));
        }
        let codings: Vec<&str> = te
            .iter()
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        let chunked = |c: &&str| c.eq_ignore_ascii_case("chunked");
        return match codings.as_slice() {
            [only] if chunked(only) => Ok(Framing::Chunked),
            // RFC 9112 7: chunked is applied at most once, and last.
            list if list.iter().filter(|c| chunked(c)).count() > 1 => Err(Rejection::new(
                400,
                "Transfer-Encoding chunked more than once",
            )),
            [] => Err(Rejection::new(400, "empty Transfer-Encoding")),
            // Any other coding (gzip, chunked: the body would still be gzip; or a final
            // coding that is not chunked): not implemented here (RFC 9112 6.1).
            list => Err(Rejection::new(
                501,
                format!(
                    "Transfer-Encoding {:?} not implemented (only chunked alone)",
                    list.join(", ")
                ),
            )),
        };
    }
    let Some(first) = cl.first() else {
        return Err(Rejection::new(411, "Content-Length is required"));
    };
    if cl.iter().any(|v| v != first) {
        return Err(Rejection::new(400, "conflicting Content-Length headers"));
    }
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::new(
            400,
            format!("Content-Length {first:?} is not a number"),
        ));
    }
    match first.parse::<u64>() {
        Ok(n) if n <= MAX_BODY as u64 => Ok(Framing::Length(
            usize::try_from(n).expect("at most MAX_BODY"),
        )),
        _ => Err(too_large()),
    }
}

fn too_large() -> Rejection {
    Rejection::new(413, format!("body larger than {MAX_BODY} bytes"))
}

fn read_sized(feed: &mut Feeder, n: usize) -> Result<Vec<u8>, Rejection> {
    while feed.buf.len() < n {
        if !feed.fill()? {
            return Err(Rejection::new(
                400,
                format!(
                    "body shorter than Content-Length ({} of {n} bytes)",
                    feed.buf.len()
                ),
            ));
        }
    }
    feed.buf.truncate(n);
    Ok(std::mem::take(&mut feed.buf))
}

fn read_chunked(feed: &mut Feeder) -> Result<Vec<u8>, Rejection> {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let (consumed, size) = loop {
            match httparse::parse_chunk_size(&feed.buf[pos..]) {
                Ok(httparse::Status::Complete(found)) => {
                    if bare_lf(&feed.buf[pos..pos + found.0]).is_some() {
                        return Err(Rejection::new(400, "bare LF in a chunk size line"));
                    }
                    break found;
                }
                Ok(httparse::Status::Partial) => {
                    if feed.buf.len() - pos > 1024 {
                        return Err(Rejection::new(400, "malformed chunk size line"));
                    }
                    need_more(feed, "the chunked body ended early")?;
                }
                Err(_) => return Err(Rejection::new(400, "malformed chunk size line")),
            }
        };
        pos += consumed;
        if size == 0 {
            // Trailers, if any, end with an empty line; a sender that closes right after
            // the last chunk has still sent the whole body.
            loop {
                let rest = &feed.buf[pos..];
                if let Some(at) = bare_lf(rest) {
                    return Err(Rejection::new(
                        400,
                        format!("bare LF at byte {at} of the chunked trailers"),
                    ));
                }
                if rest.starts_with(b"\r\n") || rest.windows(4).any(|w| w == b"\r\n\r\n") {
                    return Ok(body);
                }
                if rest.len() > MAX_HEAD {
                    return Err(Rejection::new(431, "chunked trailers too large"));
                }
                if !feed.fill()? {
                    return Ok(body);
                }
            }
        }
        let size = usize::try_from(size).map_err(|_| too_large())?;
        if body.len().saturating_add(size) > MAX_BODY {
            return Err(too_large());
        }
        while feed.buf.len() - pos < size + 2 {
            need_more(feed, "the chunked body ended early")?;
        }
        body.extend_from_slice(&feed.buf[pos..pos + size]);
        if &feed.buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(Rejection::new(400, "chunk data not followed by CRLF"));
        }
        pos += size + 2;
        // Keep the buffer small: drop what is decoded.
        feed.buf.drain(..pos);
        pos = 0;
    }
}

fn need_more(feed: &mut Feeder, what: &str) -> Result<(), Rejection> {
    if feed.fill()? {
        Ok(())
    } else {
        Err(Rejection::new(400, what))
    }
}

/// Returns the reason phrase of the statuses this receiver sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes one JSON response with `Connection: close` and flushes it.
///
/// # Errors
/// When the peer is gone.
pub fn write_response(
    out: &mut impl Write,
    status: u16,
    extra_headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(body).expect("JSON values serialise");
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    for (k, v) in extra_headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    out.write_all(head.as_bytes())?;
    out.write_all(&body)?;
    out.flush()
}

/// Ends the connection on `socket` at once (FIN to the peer, reads end), whichever
/// descriptors still refer to it: under `Accept=yes` stdin and stdout are the same
/// socket, and closing one descriptor would not end it. Not a socket (a pipe, a file):
/// nothing to do.
pub fn close_connection(socket: impl std::os::fd::AsFd) {
    match rustix::net::shutdown(socket, rustix::net::Shutdown::ReadWrite) {
        Ok(()) | Err(rustix::io::Errno::NOTSOCK | rustix::io::Errno::NOTCONN) => {}
        Err(e) => log::debug!("webhook-handle: shutting the connection down: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(bytes: &[u8]) -> Result<Request, Rejection> {
        read_request(
            std::io::Cursor::new(bytes.to_vec()),
            Deadlines::both(Duration::from_secs(5)),
            |_| Ok(()),
        )
    }

    #[test]
    fn content_length_body() {
        let r = read(b"POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello").unwrap();
        assert_eq!(r.head.method, "POST");
        assert_eq!(r.head.path, "/hook");
        assert_eq!(r.head.header("host"), Some("x"));
        assert_eq!(r.body, b"hello");
    }

    #[test]
    fn body_bytes_are_untouched() {
        let body = b"{\"a\": \"caf\\u00e9\", \"b\": [1, 2]}\n";
        let mut req =
            format!("POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(body);
        assert_eq!(read(&req).unwrap().body, body);
    }

    #[test]
    fn chunked_body_is_decoded() {
        let r = read(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.body, b"hello!");
        let r = read(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n")
            .unwrap();
        assert_eq!(
            r.body, b"abc",
            "closing after the last chunk is a whole body"
        );
    }

    #[test]
    fn bad_framing_is_refused() {
        let cases: &[(&[u8], u16)] = &[
            (b"", 400),
            (b"POST / HTTP/1.1\r\nContent-Len", 400),
            (b"POST / HTTP/1.1\r\n\r\n", 411),
            (b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                400,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
                413,
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
                501,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                501,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\nContent-Length: 2\n\nab", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 2\n\r\nab", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\nab", 400),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\r\n0\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n100001\r\n",
                413,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
                413,
            ),
            (b"GARBAGE\x01 / HTTP/1.1\r\n\r\n", 400),
        ];
        for (bytes, status) in cases {
            let got = read(bytes).map(|r| r.body).unwrap_err();
            assert_eq!(
                got.status,
                *status,
                "{:?}: {got}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn chunks_adding_up_past_the_limit_are_refused() {
        let mut req = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        let chunk = vec![b'x'; 0x80000];
        for _ in 0..3 {
            req.extend_from_slice(b"80000\r\n");
            req.extend_from_slice(&chunk);
            req.extend_from_slice(b"\r\n");
        }
        assert_eq!(read(&req).unwrap_err().status, 413);
    }

    #[test]
    fn too_many_or_too_large_headers() {
        let mut req = b"POST / HTTP/1.1\r\n".to_vec();
        for i in 0..70 {
            req.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(read(&req).unwrap_err().status, 431);
        let mut req = b"POST / HTTP/1.1\r\nX: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        assert_eq!(read(&req).unwrap_err().status, 431);
    }

    /// A complete head of `size` bytes followed by a 2-byte body, all in one read.
    fn head_of(size: usize) -> Vec<u8> {
        let start = b"POST / HTTP/1.1\r\nContent-Length: 2\r\nX: ";
        let mut req = start.to_vec();
        req.extend(std::iter::repeat_n(b'a', size - start.len() - 4));
        req.extend_from_slice(b"\r\n\r\nab");
        assert_eq!(req.len(), size + 2);
        req
    }

    #[test]
    fn the_head_limit_is_exact_whatever_the_read_size() {
        // All of it arrives in one read (the old check ran only between reads, so a
        // head up to one read past the limit was taken).
        assert_eq!(read(&head_of(MAX_HEAD)).unwrap().body, b"ab");
        assert_eq!(read(&head_of(MAX_HEAD + 1)).unwrap_err().status, 431);
        assert_eq!(read(&head_of(MAX_HEAD + 6 * 1024)).unwrap_err().status, 431);
    }

    #[test]
    fn check_head_refuses_before_the_body() {
        let got = read_request(
            std::io::Cursor::new(b"GET / HTTP/1.1\r\n\r\n".to_vec()),
            Deadlines::both(Duration::from_secs(5)),
            |h| {
                if h.method == "POST" {
                    Ok(())
                } else {
                    Err(Rejection::new(405, "only POST"))
                }
            },
        );
        assert_eq!(got.unwrap_err().status, 405);
    }

    /// A reader that hands over some bytes and then blocks until dropped.
    struct Stalls(Option<Vec<u8>>, std::sync::mpsc::Receiver<()>);

    impl Read for Stalls {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if let Some(b) = self.0.take() {
                buf[..b.len()].copy_from_slice(&b);
                return Ok(b.len());
            }
            let _ = self.1.recv();
            Ok(0)
        }
    }

    #[test]
    fn a_stalled_request_times_out_with_408() {
        let (_keep, rx) = std::sync::mpsc::channel();
        let input = Stalls(
            Some(b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc".to_vec()),
            rx,
        );
        let got = read_request(input, Deadlines::both(Duration::from_millis(200)), |_| {
            Ok(())
        });
        assert_eq!(got.unwrap_err().status, 408);
    }

    #[test]
    fn a_trickled_head_is_cut_at_the_head_deadline_not_the_whole_one() {
        let (_keep, rx) = std::sync::mpsc::channel();
        let input = Stalls(Some(b"POST / HTTP/1.1\r\nX-Plane".to_vec()), rx);
        let deadlines = Deadlines {
            head: Duration::from_millis(200),
            whole: Duration::from_secs(600),
        };
        let started = Instant::now();
        let got = read_request(input, deadlines, |_| Ok(()));
        assert_eq!(got.unwrap_err().status, 408);
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "cut by the head deadline, not the whole-request one: {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn responses_close_the_connection() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            405,
            &[("Allow", "POST")],
            &serde_json::json!({"error": "x"}),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{text}"
        );
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Allow: POST\r\n"));
        assert!(text.ends_with("\r\n\r\n{\"error\":\"x\"}"));
    }
}
