//! The plain-HTTP side of the decoy: one connection served as nginx 1.22
//! serves it with `server_tokens off` and `location / { return 404; }`
//! (or `error_page 404` to the page file), all other settings at nginx's
//! defaults. From src/http/ngx_http_request.c (reading the request line
//! and header, the header buffers, keep-alive, lingering close),
//! ngx_http_special_response.c (the error pages), ngx_http_header_filter_module.c
//! (the response header) and ngx_http_request_body.c (discarding a
//! request body).
//!
//! What a client can tell apart is kept: which requests get a 400, 414,
//! 494 (a 400 "Request Header Or Cookie Too Large"), 501, 505 or 405; the
//! header buffers' limits (one of 1 KiB, then at most four of 8 KiB, a
//! line at most 8 KiB); HTTP/0.9 answers without a header; keep-alive and
//! pipelining; the padding nginx adds to error pages for MSIE and Chrome;
//! when nginx closes, half-closes (lingering close) or keeps waiting, and
//! how long. One thing is not: nginx may read part of a request body
//! before it answers when the socket still had data ready; the decoy
//! always answers first. The bytes on the wire are the same either way.

use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::parse::{self, Chunk, Chunked, HeaderLine, Method, Parsed, RequestLine};
use super::{NotFound, Timeouts};

/// `client_header_buffer_size`.
const SMALL_BUFFER: usize = 1024;
/// `large_client_header_buffers 4 8k`.
const LARGE_BUFFER: usize = 8192;
const LARGE_BUFFERS: usize = 4;
/// `NGX_HTTP_DISCARD_BUFFER_SIZE`, nginx's read size for a discarded body.
const DISCARD_BUFFER: usize = 4096;
/// `NGX_HTTP_LINGERING_BUFFER_SIZE`.
const LINGERING_BUFFER: usize = 4096;
/// `keepalive_requests`: the 1000th request of a connection is its last.
const KEEPALIVE_REQUESTS: u32 = 1000;
/// `keepalive_time`: no keep-alive for connections older than this.
const KEEPALIVE_TIME: Duration = Duration::from_secs(3600);

/// What the decoy reads, writes and closes through: the accepted TCP
/// stream, or an in-memory one in tests.
pub trait Wire: AsyncRead + AsyncWrite + Unpin + Send {
    /// Whether bytes or the peer's FIN are waiting to be read now (nginx's
    /// `read->ready` when it decides on a lingering close).
    fn readable_now(&self) -> bool;
}

/// The site a plain-HTTP connection is served from.
#[derive(Clone, Debug)]
pub struct Site {
    /// A TLS port answering a plain request: nginx's 497, "The plain HTTP
    /// request was sent to HTTPS port", instead of the 404.
    pub tls_port: bool,
    pub not_found: NotFound,
    pub timeouts: Timeouts,
}

/// The answers nginx gives here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    NotFound,
    NotAllowed,
    UriTooLarge,
    /// 494, sent as a 400 with its own page.
    HeaderTooLarge,
    /// 497, sent as a 400 with its own page.
    PlainToTls,
    NotImplemented,
    VersionNotSupported,
}

impl Status {
    fn line(self) -> &'static str {
        match self {
            Status::BadRequest | Status::HeaderTooLarge | Status::PlainToTls => "400 Bad Request",
            Status::NotFound => "404 Not Found",
            Status::NotAllowed => "405 Not Allowed",
            Status::UriTooLarge => "414 Request-URI Too Large",
            Status::NotImplemented => "501 Not Implemented",
            Status::VersionNotSupported => "505 HTTP Version Not Supported",
        }
    }

    /// The built-in page's head (`ngx_http_error_*_page`).
    fn page(self) -> &'static str {
        match self {
            Status::BadRequest => {
                "<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n"
            }
            Status::NotFound => {
                "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n"
            }
            Status::NotAllowed => {
                "<html>\r\n<head><title>405 Not Allowed</title></head>\r\n<body>\r\n<center><h1>405 Not Allowed</h1></center>\r\n"
            }
            Status::UriTooLarge => {
                "<html>\r\n<head><title>414 Request-URI Too Large</title></head>\r\n<body>\r\n<center><h1>414 Request-URI Too Large</h1></center>\r\n"
            }
            Status::HeaderTooLarge => {
                "<html>\r\n<head><title>400 Request Header Or Cookie Too Large</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>Request Header Or Cookie Too Large</center>\r\n"
            }
            Status::PlainToTls => {
                "<html>\r\n<head><title>400 The plain HTTP request was sent to HTTPS port</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n<center>The plain HTTP request was sent to HTTPS port</center>\r\n"
            }
            Status::NotImplemented => {
                "<html>\r\n<head><title>501 Not Implemented</title></head>\r\n<body>\r\n<center><h1>501 Not Implemented</h1></center>\r\n"
            }
            Status::VersionNotSupported => {
                "<html>\r\n<head><title>505 HTTP Version Not Supported</title></head>\r\n<body>\r\n<center><h1>505 HTTP Version Not Supported</h1></center>\r\n"
            }
        }
    }
}

/// The tail of every built-in page with `server_tokens off`.
const TAIL: &str = "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

/// `ngx_http_msie_padding`: added to error pages for MSIE and Chrome, so
/// that they show the page rather than their own.
const MSIE_PADDING: &str = "<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n\
<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n\
<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n\
<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n\
<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n\
<!-- a padding to disable MSIE and Chrome friendly error page -->\r\n";

/// The built-in "404 Not Found" page, as nginx sends it.
pub fn builtin_not_found() -> Vec<u8> {
    format!("{}{TAIL}", Status::NotFound.page()).into_bytes()
}

/// What of a request decides the answer's form.
#[derive(Clone, Copy, Debug, Default)]
pub struct Form {
    /// HTTP/0.9: the body alone.
    pub http09: bool,
    /// HEAD: the header alone.
    pub head: bool,
    pub keepalive: bool,
    /// The User-Agent names MSIE or Chrome (nginx's `msie`, `chrome`).
    pub padding: bool,
}

/// The bytes of an answer (`ngx_http_send_special_response` or, for the
/// page file, the static module's answer to `error_page 404`, behind
/// `ngx_http_header_filter`), dated `now`.
pub fn answer(status: Status, form: Form, not_found: &NotFound, now: SystemTime) -> Vec<u8> {
    let (body, etag): (Vec<u8>, Option<&str>) = match (status, not_found) {
        (Status::NotFound, NotFound::File { body, etag }) => (body.to_vec(), Some(etag)),
        _ => {
            let mut page = format!("{}{TAIL}", status.page());
            if form.padding && !form.http09 {
                page.push_str(MSIE_PADDING);
            }
            (page.into_bytes(), None)
        }
    };
    if form.http09 {
        return body;
    }
    let mut out = format!(
        "HTTP/1.1 {}\r\nServer: nginx\r\nDate: {}\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: {}\r\n",
        status.line(),
        httpdate::fmt_http_date(now),
        body.len(),
        if form.keepalive { "keep-alive" } else { "close" },
    );
    if let Some(etag) = etag {
        out.push_str(&format!("ETag: {etag}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !form.head {
        out.extend_from_slice(&body);
    }
    out
}

/// nginx's header buffer for the request being read: `c->buffer` (small)
/// or the large buffer it moved to, with the count of large buffers in use
/// (`hc->nbusy`).
struct HeaderBuf {
    data: Vec<u8>,
    cap: usize,
    pos: usize,
    large: bool,
    busy: usize,
}

impl HeaderBuf {
    fn small() -> Self {
        Self { data: Vec::with_capacity(SMALL_BUFFER), cap: SMALL_BUFFER, pos: 0, large: false, busy: 0 }
    }

    fn full(&self) -> bool {
        self.pos == self.cap
    }

    fn unparsed(&self) -> bool {
        self.pos < self.data.len()
    }

    /// `ngx_http_alloc_large_header_buffer`: a new large buffer holding
    /// the partial line from `old` on; false when nginx declines (the line
    /// is already a buffer long, or all large buffers are in use).
    fn grow(&mut self, old: Option<usize>) -> bool {
        if let Some(old) = old
            && self.pos - old >= LARGE_BUFFER
        {
            return false;
        }
        if self.busy >= LARGE_BUFFERS {
            return false;
        }
        let mut data = Vec::with_capacity(LARGE_BUFFER);
        if let Some(old) = old {
            data.extend_from_slice(&self.data[old..self.pos]);
        }
        self.pos = data.len();
        self.data = data;
        self.cap = LARGE_BUFFER;
        self.large = true;
        self.busy += 1;
        true
    }
}

/// The request's header fields that matter.
#[derive(Default)]
struct Fields {
    host: bool,
    content_length: Option<Vec<u8>>,
    transfer_encoding: Option<Vec<u8>>,
    close: bool,
    keep_alive: bool,
    user_agent: bool,
    msie: bool,
    msie6: bool,
    chrome: bool,
    /// Headers nginx allows once (`ngx_http_process_unique_header_line`).
    unique: u16,
}

/// How reading a request ended.
enum Read {
    /// An answer to send, and how.
    Answer(Status, Form, Body),
    /// The connection ends without a word: a timeout, the client's close,
    /// an error.
    Close,
}

/// The request body still to be skipped after the answer.
#[derive(Clone, Debug)]
enum Body {
    None,
    Length(u64),
    Chunked(Chunked),
}

/// Serves one connection until it ends. `started` is when it was accepted
/// (the first request's header timeout runs from then).
pub async fn serve<W: Wire>(wire: &mut W, site: &Site, started: Instant) {
    let mut conn = Conn { wire, site, buf: HeaderBuf::small(), requests: 0, started, lingering_until: None };
    let mut deadline = Some(started + site.timeouts.header);
    loop {
        conn.requests += 1;
        conn.lingering_until = None;
        let (mut status, mut form, mut body) = match conn.read_request(deadline).await {
            Read::Answer(status, form, body) => (status, form, body),
            Read::Close => return,
        };
        // nginx's `r->lingering_close`: kept for an oversized header (494).
        let mut lingering = status == Status::HeaderTooLarge;
        if conn.skip_buffered(&mut body).is_err() {
            // Chunked encoding nginx refuses, in what came with the header:
            // the built-in 404 goes out without keep-alive (and the
            // lingering close `ngx_http_handler` asked for); the page
            // file's static handler answers 400 instead.
            body = Body::None;
            form.keepalive = false;
            if status == Status::NotFound {
                match site.not_found {
                    NotFound::Builtin => lingering = true,
                    NotFound::File { .. } => status = Status::BadRequest,
                }
            }
        }
        let bytes = answer(status, form, &site.not_found, SystemTime::now());
        if !conn.send(&bytes).await {
            return;
        }
        if !matches!(body, Body::None) && !conn.discard(body).await {
            return;
        }
        if form.keepalive {
            if conn.buf.unparsed() {
                // A pipelined request: read on from where this one ended,
                // in the buffer it ended in.
                if conn.buf.large {
                    conn.buf.busy = 1;
                }
            } else if !conn.keepalive().await {
                return;
            }
            deadline = None;
            continue;
        }
        if lingering || conn.buf.unparsed() || conn.wire.readable_now() {
            conn.lingering_close().await;
        }
        return;
    }
}

struct Conn<'a, W> {
    wire: &'a mut W,
    site: &'a Site,
    buf: HeaderBuf,
    /// Requests on this connection, this one included (`c->requests`).
    requests: u32,
    started: Instant,
    /// When lingering must stop (`r->lingering_time`), once set.
    lingering_until: Option<Instant>,
}

impl<W: Wire> Conn<'_, W> {
    /// Reads into the header buffer (nginx's `ngx_http_read_request_header`):
    /// false when the connection is over (timeout, close, error).
    async fn fill(&mut self, deadline: &mut Option<Instant>) -> bool {
        let until = *deadline.get_or_insert_with(|| Instant::now() + self.site.timeouts.header);
        let start = self.buf.data.len();
        self.buf.data.resize(self.buf.cap, 0);
        let read = tokio::time::timeout_at(until, self.wire.read(&mut self.buf.data[start..])).await;
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            _ => 0,
        };
        self.buf.data.truncate(start + n);
        n > 0
    }

    /// Reads and judges one request.
    async fn read_request(&mut self, mut deadline: Option<Instant>) -> Read {
        let mut line = RequestLine::default();
        // The request line (`ngx_http_process_request_line`).
        loop {
            if !self.buf.unparsed() && !self.fill(&mut deadline).await {
                return Read::Close;
            }
            let data = &self.buf.data;
            match line.parse(data, &mut self.buf.pos) {
                Parsed::Line => break,
                Parsed::Again => {}
                Parsed::InvalidVersion => return self.early(Status::VersionNotSupported, &line),
                _ => return self.early(Status::BadRequest, &line),
            }
            if self.buf.full() {
                if line.at_start() {
                    // The client filled the buffer with CRLFs.
                    self.buf.data.clear();
                    self.buf.pos = 0;
                } else {
                    let old = line.request_start;
                    if !self.buf.grow(Some(old)) {
                        return self.early(Status::UriTooLarge, &line);
                    }
                    line.relocate(old);
                }
            }
        }
        let http09 = line.http_version == 9;
        if !line.uri_ok(&self.buf.data) || line.host(&self.buf.data).is_some_and(|h| !parse::host_ok(h)) {
            return self.early(Status::BadRequest, &line);
        }
        let mut fields = Fields::default();
        if !http09 {
            // The header (`ngx_http_process_request_headers`).
            let mut header = HeaderLine::default();
            loop {
                if !self.buf.unparsed() {
                    if self.buf.full() {
                        let old = (!header.at_start()).then_some(header.name_start);
                        if !self.buf.grow(old) {
                            return Read::Answer(Status::HeaderTooLarge, self.form(&line, &fields), Body::None);
                        }
                        header.relocate(old.unwrap_or(0));
                    }
                    if !self.fill(&mut deadline).await {
                        return Read::Close;
                    }
                }
                let data = &self.buf.data;
                match header.parse(data, &mut self.buf.pos) {
                    Parsed::Line => {
                        if header.invalid {
                            continue;
                        }
                        let (name, value) = header.field(&self.buf.data);
                        if !fields.take(name, value) {
                            return Read::Answer(Status::BadRequest, self.form(&line, &fields), Body::None);
                        }
                    }
                    Parsed::HeaderDone => break,
                    Parsed::Again => {}
                    _ => return Read::Answer(Status::BadRequest, self.form(&line, &fields), Body::None),
                }
            }
        }
        self.judge(&line, &fields)
    }

    /// An answer to a request whose line failed: the header was not read.
    fn early(&self, status: Status, line: &RequestLine) -> Read {
        Read::Answer(status, self.form(line, &Fields::default()), Body::None)
    }

    /// The form of an answer given before `ngx_http_handler` ran: never
    /// keep-alive.
    fn form(&self, line: &RequestLine, fields: &Fields) -> Form {
        Form {
            http09: line.http_version == 9,
            head: line.method == Some(Method::Head),
            keepalive: false,
            padding: fields.msie || fields.chrome,
        }
    }

    /// `ngx_http_process_request_header`, `ngx_http_process_request` and
    /// `ngx_http_handler`, then the location's `return 404`.
    fn judge(&self, line: &RequestLine, fields: &Fields) -> Read {
        let version = line.http_version;
        let form = self.form(line, fields);
        let refuse = |status| Read::Answer(status, form, Body::None);
        if !fields.host && version > 1000 {
            return refuse(Status::BadRequest);
        }
        let length = match &fields.content_length {
            Some(value) => match parse::content_length(value) {
                Some(n) => Some(n),
                None => return refuse(Status::BadRequest),
            },
            None => None,
        };
        let mut chunked = false;
        if let Some(te) = &fields.transfer_encoding {
            if version < 1001 {
                return Read::Answer(Status::BadRequest, form, body(length, false));
            }
            if !te.eq_ignore_ascii_case(b"chunked") {
                return Read::Answer(Status::NotImplemented, form, body(length, false));
            }
            if fields.content_length.is_some() {
                return Read::Answer(Status::BadRequest, form, body(length, false));
            }
            chunked = true;
        }
        let body = body(length, chunked);
        let method = line.method.unwrap_or(Method::Other);
        if matches!(method, Method::Connect | Method::Trace) {
            return Read::Answer(Status::NotAllowed, form, body);
        }
        if self.site.tls_port {
            return Read::Answer(Status::PlainToTls, form, body);
        }
        let mut keepalive = if fields.close {
            false
        } else if fields.keep_alive {
            true
        } else {
            version > 1000
        };
        if self.requests >= KEEPALIVE_REQUESTS
            || self.started.elapsed() > KEEPALIVE_TIME
            || (fields.msie6 && method == Method::Post)
        {
            keepalive = false;
        }
        Read::Answer(Status::NotFound, Form { keepalive, ..form }, body)
    }

    /// Writes an answer; a write that makes no progress for `send_timeout`
    /// ends the connection (false).
    async fn send(&mut self, bytes: &[u8]) -> bool {
        let mut rest = bytes;
        while !rest.is_empty() {
            match tokio::time::timeout(self.site.timeouts.send, self.wire.write(rest)).await {
                Ok(Ok(n)) if n > 0 => rest = &rest[n..],
                _ => return false,
            }
        }
        matches!(tokio::time::timeout(self.site.timeouts.send, self.wire.flush()).await, Ok(Ok(())))
    }

    /// Skips the rest of the request body from the socket, once the answer
    /// is out (`ngx_http_discarded_request_body_handler`): each read waiting
    /// at most `lingering_timeout` and all of them `lingering_time`. False
    /// when the connection is over; true with any bytes read past the body
    /// left in the header buffer as the next request's start.
    async fn discard(&mut self, mut body: Body) -> bool {
        let t = self.site.timeouts;
        let until = *self.lingering_until.get_or_insert_with(|| Instant::now() + t.lingering_time);
        let mut scratch = vec![0u8; DISCARD_BUFFER];
        loop {
            let want = match &body {
                Body::None => return true,
                Body::Length(0) => return true,
                Body::Length(n) => *n,
                Body::Chunked(c) => c.length.max(LARGE_BUFFER as u64),
            };
            let size = want.min(DISCARD_BUFFER as u64) as usize;
            let wait = until.saturating_duration_since(Instant::now()).min(t.lingering);
            if wait.is_zero() {
                return false;
            }
            let n = match tokio::time::timeout(wait, self.wire.read(&mut scratch[..size])).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return false,
                Ok(Ok(n)) => n,
            };
            let mut pos = 0;
            if skip(&mut body, &scratch[..n], &mut pos).is_err() {
                return false;
            }
            if matches!(body, Body::None | Body::Length(0)) && pos < n {
                // `ngx_http_copy_pipelined_header`.
                let rest = &scratch[pos..n];
                if rest.len() > self.buf.cap - self.buf.data.len() {
                    self.buf = HeaderBuf {
                        data: Vec::with_capacity(LARGE_BUFFER),
                        cap: LARGE_BUFFER,
                        pos: 0,
                        large: true,
                        busy: self.buf.busy + 1,
                    };
                }
                self.buf.data.extend_from_slice(rest);
                return true;
            }
        }
    }

    /// Skips the body bytes that came with the header.
    fn skip_buffered(&mut self, body: &mut Body) -> Result<(), ()> {
        let data = &self.buf.data;
        skip(body, data, &mut self.buf.pos)?;
        if matches!(body, Body::Length(0)) {
            *body = Body::None;
        }
        Ok(())
    }

    /// Waits `keepalive_timeout` for the next request, which then starts
    /// in a fresh small buffer (`ngx_http_set_keepalive`,
    /// `ngx_http_keepalive_handler`): false when the connection is over.
    async fn keepalive(&mut self) -> bool {
        self.buf = HeaderBuf::small();
        self.lingering_until = None;
        let mut data = vec![0u8; SMALL_BUFFER];
        match tokio::time::timeout(self.site.timeouts.keepalive, self.wire.read(&mut data)).await {
            Ok(Ok(n)) if n > 0 => {
                data.truncate(n);
                self.buf.data = data;
                true
            }
            _ => false,
        }
    }

    /// `ngx_http_set_lingering_close`: the answer's FIN goes out at once;
    /// then whatever the client still sends is read and dropped until it
    /// closes, or it is quiet for `lingering_timeout`, or `lingering_time`
    /// has passed.
    async fn lingering_close(&mut self) {
        let t = self.site.timeouts;
        let until = *self.lingering_until.get_or_insert_with(|| Instant::now() + t.lingering_time);
        if !matches!(tokio::time::timeout(t.send, self.wire.shutdown()).await, Ok(Ok(()))) {
            return;
        }
        let mut scratch = vec![0u8; LINGERING_BUFFER];
        loop {
            let wait = until.saturating_duration_since(Instant::now()).min(t.lingering);
            if wait.is_zero() {
                return;
            }
            match tokio::time::timeout(wait, self.wire.read(&mut scratch)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
        }
    }
}

/// The body to skip for a Content-Length or chunked encoding.
fn body(length: Option<u64>, chunked: bool) -> Body {
    match (length, chunked) {
        (_, true) => Body::Chunked(Chunked::default()),
        (Some(n), false) if n > 0 => Body::Length(n),
        _ => Body::None,
    }
}

/// `ngx_http_discard_request_body_filter` over `data` from `*pos`; an
/// error is chunked encoding nginx refuses.
fn skip(body: &mut Body, data: &[u8], pos: &mut usize) -> Result<(), ()> {
    match body {
        Body::None => Ok(()),
        Body::Length(n) => {
            let take = (data.len() - *pos).min(usize::try_from(*n).unwrap_or(usize::MAX));
            *pos += take;
            *n -= take as u64;
            Ok(())
        }
        Body::Chunked(c) => loop {
            match c.parse(data, pos) {
                Chunk::Data => {
                    let take = (data.len() - *pos).min(usize::try_from(c.size).unwrap_or(usize::MAX));
                    *pos += take;
                    c.size -= take as u64;
                }
                Chunk::Done => {
                    *body = Body::None;
                    return Ok(());
                }
                Chunk::Again => return Ok(()),
                Chunk::Invalid => return Err(()),
            }
        },
    }
}

impl Fields {
    /// One header line (`ngx_http_headers_in`'s handlers): false for one
    /// nginx answers with a 400.
    fn take(&mut self, name: &[u8], value: &[u8]) -> bool {
        let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
        const UNIQUE: [&str; 10] = [
            "If-Modified-Since",
            "If-Unmodified-Since",
            "If-Match",
            "If-None-Match",
            "Content-Length",
            "Content-Range",
            "If-Range",
            "Transfer-Encoding",
            "Expect",
            "Authorization",
        ];
        if let Some(i) = UNIQUE.iter().position(|n| is(n)) {
            if self.unique & (1 << i) != 0 {
                return false;
            }
            self.unique |= 1 << i;
        }
        if is("Host") {
            if self.host || !parse::host_ok(value) {
                return false;
            }
            self.host = true;
        } else if is("Connection") {
            if contains_ignore_case(value, b"close") {
                self.close = true;
                self.keep_alive = false;
            } else if contains_ignore_case(value, b"keep-alive") {
                self.keep_alive = true;
                self.close = false;
            }
        } else if is("User-Agent") {
            if !self.user_agent {
                self.user_agent = true;
                self.browser(value);
            }
        } else if is("Content-Length") {
            self.content_length = Some(value.to_vec());
        } else if is("Transfer-Encoding") {
            self.transfer_encoding = Some(value.to_vec());
        }
        true
    }

    /// `ngx_http_process_user_agent`'s browser flags.
    fn browser(&mut self, ua: &[u8]) {
        if let Some(at) = find(ua, b"MSIE ")
            && at + 7 < ua.len()
        {
            self.msie = true;
            if ua[at + 6] == b'.' {
                match ua[at + 5] {
                    b'4' | b'5' => self.msie6 = true,
                    b'6' => self.msie6 = ua.get(at + 8..).is_none_or(|rest| find(rest, b"SV1").is_none()),
                    _ => {}
                }
            }
        }
        if find(ua, b"Opera").is_some() {
            self.msie = false;
            self.msie6 = false;
            return;
        }
        if !self.msie && find(ua, b"Gecko/").is_none() && find(ua, b"Chrome/").is_some() {
            self.chrome = true;
        }
    }
}

/// `ngx_strstrn` (case-sensitive).
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `ngx_strcasestrn`.
fn contains_ignore_case(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_not_found_is_nginx_s_page() {
        let page = builtin_not_found();
        assert_eq!(page.len(), 146);
        assert!(page.starts_with(b"<html>\r\n<head><title>404 Not Found</title></head>"));
    }

    #[test]
    fn an_answer_carries_nginx_s_header_in_nginx_s_order() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let got = answer(Status::NotFound, Form { keepalive: true, ..Form::default() }, &NotFound::Builtin, at);
        let text = String::from_utf8(got).expect("ASCII");
        assert_eq!(
            text,
            format!(
                "HTTP/1.1 404 Not Found\r\nServer: nginx\r\nDate: Wed, 18 Nov 2026 11:06:40 GMT\r\n\
                 Content-Type: text/html\r\nContent-Length: 146\r\nConnection: keep-alive\r\n\r\n{}",
                String::from_utf8_lossy(&builtin_not_found())
            )
        );
        let head = answer(Status::PlainToTls, Form { head: true, ..Form::default() }, &NotFound::Builtin, at);
        let text = String::from_utf8(head).expect("ASCII");
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(text.ends_with("Content-Length: 248\r\nConnection: close\r\n\r\n"), "{text}");
        let old =
            answer(Status::NotFound, Form { http09: true, padding: true, ..Form::default() }, &NotFound::Builtin, at);
        assert_eq!(old, builtin_not_found(), "HTTP/0.9: the page alone, never padded");
        let padded = answer(Status::BadRequest, Form { padding: true, ..Form::default() }, &NotFound::Builtin, at);
        assert!(String::from_utf8_lossy(&padded).contains("Content-Length: 552\r\n"));
    }

    #[test]
    fn the_page_file_answers_as_nginx_s_static_error_page() {
        let at = SystemTime::UNIX_EPOCH;
        let file = NotFound::File { body: std::sync::Arc::new(b"<p>gone</p>\n".to_vec()), etag: "\"5f-c\"".into() };
        let got = answer(Status::NotFound, Form::default(), &file, at);
        let text = String::from_utf8(got).expect("ASCII");
        assert!(
            text.ends_with("Content-Length: 12\r\nConnection: close\r\nETag: \"5f-c\"\r\n\r\n<p>gone</p>\n"),
            "{text}"
        );
        let other = answer(Status::BadRequest, Form::default(), &file, at);
        assert!(!String::from_utf8_lossy(&other).contains("ETag"), "only the 404 is the page file");
    }

    /// One end of an in-memory stream, as the decoy's wire.
    struct Mem(tokio::io::DuplexStream);

    impl AsyncRead for Mem {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Mem {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
        }
    }

    impl Wire for Mem {
        fn readable_now(&self) -> bool {
            false
        }
    }

    /// Serves `input` (then silence) and returns what the decoy wrote and
    /// when it ended, on tokio's paused clock.
    async fn served(input: &[u8]) -> (String, Duration) {
        let (ours, mut theirs) = tokio::io::duplex(1 << 16);
        let site = Site { tls_port: false, not_found: NotFound::Builtin, timeouts: Timeouts::NGINX };
        let start = Instant::now();
        let server = tokio::spawn(async move {
            serve(&mut Mem(ours), &site, start).await;
            start.elapsed()
        });
        theirs.write_all(input).await.expect("writing the request");
        let took = server.await.expect("the decoy's task");
        let mut out = Vec::new();
        theirs.read_to_end(&mut out).await.expect("reading the answer");
        (String::from_utf8_lossy(&out).into_owned(), took)
    }

    #[tokio::test(start_paused = true)]
    async fn nginx_s_timeouts_end_quiet_connections() {
        let t = Timeouts::NGINX;
        assert_eq!(served(b"").await, (String::new(), t.header), "nothing sent");
        assert_eq!(served(b"GET / HT").await, (String::new(), t.header), "half a request line");
        let (answer, took) = served(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(answer.starts_with("HTTP/1.1 404 Not Found\r\n"), "{answer}");
        assert_eq!(took, t.keepalive, "an idle keep-alive connection");
        let (answer, took) = served(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert_eq!(answer.matches("HTTP/1.1 404 Not Found").count(), 2, "pipelined: {answer}");
        assert_eq!(took, t.keepalive);
        let (answer, took) = served(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc").await;
        assert!(answer.contains("Connection: keep-alive"), "{answer}");
        assert_eq!(took, t.lingering, "a body that stops coming");
        let (answer, took) = served(b"GET / HTTP/1.0\r\n\r\n").await;
        assert!(answer.contains("Connection: close"), "{answer}");
        assert_eq!(took, Duration::ZERO, "HTTP/1.0 closes at once");
    }

    #[test]
    fn browsers_as_nginx_tells_them() {
        let flags = |ua: &str| {
            let mut f = Fields::default();
            f.browser(ua.as_bytes());
            (f.msie, f.msie6, f.chrome)
        };
        assert_eq!(flags("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)"), (true, true, false));
        assert_eq!(flags("Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1)"), (true, false, false));
        assert_eq!(flags("Mozilla/5.0 (compatible; MSIE 10.0; Windows NT 6.1)"), (true, false, false));
        assert_eq!(
            flags("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36"),
            (false, false, true)
        );
        assert_eq!(
            flags("Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0"),
            (false, false, false)
        );
        assert_eq!(flags("curl/7.88.1"), (false, false, false));
    }
}
