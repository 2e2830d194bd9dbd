//! nginx 1.22's HTTP/1.x parsers, ported state for state from
//! src/http/ngx_http_parse.c (`ngx_http_parse_request_line`,
//! `ngx_http_parse_header_line`, `ngx_http_parse_complex_uri`,
//! `ngx_http_parse_chunked`) and src/http/ngx_http_request.c
//! (`ngx_http_validate_host`), so that the decoy accepts and refuses
//! exactly what nginx does. Positions are indices into the caller's
//! buffer, as nginx keeps pointers into its own; when the caller moves a
//! partial line into a larger buffer it shifts them with `relocate`.
//!
//! Only what decides nginx's answer is kept: the URI is checked, not
//! stored, because every path gets the same "not found".

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// nginx's `usual` table: URI bytes that need no further look.
const USUAL: [u32; 8] =
    [0x0000_0000, 0x7fff_37d6, 0xffff_ffff, 0x7fff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff, 0xffff_ffff];

fn usual(ch: u8) -> bool {
    USUAL[usize::from(ch >> 5)] & (1 << (ch & 0x1f)) != 0
}

/// The methods nginx treats apart from the rest (all others get the same
/// answer as GET here).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Connect,
    Trace,
    Other,
}

/// What a parse step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole line (request line or header line).
    Line,
    /// The empty line that ends the header.
    HeaderDone,
    /// More bytes are needed.
    Again,
    /// `NGX_HTTP_PARSE_INVALID_*` other than the version: a 400.
    Invalid,
    /// A major version above 1: a 505.
    InvalidVersion,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum LineState {
    #[default]
    Start,
    Method,
    SpacesBeforeUri,
    Schema,
    SchemaSlash,
    SchemaSlashSlash,
    HostStart,
    Host,
    HostEnd,
    HostIpLiteral,
    Port,
    AfterSlashInUri,
    CheckUri,
    Uri,
    Http09,
    HttpH,
    HttpHt,
    HttpHtt,
    HttpHttp,
    FirstMajorDigit,
    MajorDigit,
    FirstMinorDigit,
    MinorDigit,
    SpacesAfterDigit,
    AlmostDone,
}

/// `ngx_http_parse_request_line` with the request fields it fills.
#[derive(Clone, Debug, Default)]
pub struct RequestLine {
    state: LineState,
    pub request_start: usize,
    pub method: Option<Method>,
    uri_start: usize,
    uri_end: usize,
    schema_end: Option<usize>,
    pub host_start: Option<usize>,
    pub host_end: Option<usize>,
    complex_uri: bool,
    quoted_uri: bool,
    empty_path_in_uri: bool,
    http_major: u32,
    http_minor: u32,
    /// major * 1000 + minor, once the line is whole.
    pub http_version: u32,
}

impl RequestLine {
    /// Whether the parser is between lines (nginx's `r->state == 0`).
    pub fn at_start(&self) -> bool {
        self.state == LineState::Start
    }

    /// Shifts every position by `by` (the partial line moved to the start
    /// of a new buffer).
    pub fn relocate(&mut self, by: usize) {
        for p in [&mut self.request_start, &mut self.uri_start, &mut self.uri_end] {
            *p = p.saturating_sub(by);
        }
        for v in [&mut self.schema_end, &mut self.host_start, &mut self.host_end].into_iter().flatten() {
            *v = v.saturating_sub(by);
        }
    }

    /// Parses from `*pos` in `buf`; advances `*pos` as nginx advances
    /// `b->pos` (past the line when whole; to the end when more is needed;
    /// left where it was on an error).
    pub fn parse(&mut self, buf: &[u8], pos: &mut usize) -> Parsed {
        use LineState as S;
        let mut state = self.state;
        let mut p = *pos;
        while p < buf.len() {
            let ch = buf[p];
            match state {
                S::Start => {
                    self.request_start = p;
                    if ch == CR || ch == LF {
                        p += 1;
                        continue;
                    }
                    if !ch.is_ascii_uppercase() && ch != b'_' && ch != b'-' {
                        return Parsed::Invalid;
                    }
                    state = S::Method;
                }
                S::Method => {
                    if ch == b' ' {
                        self.method = Some(match &buf[self.request_start..p] {
                            b"GET" => Method::Get,
                            b"HEAD" => Method::Head,
                            b"POST" => Method::Post,
                            b"CONNECT" => Method::Connect,
                            b"TRACE" => Method::Trace,
                            _ => Method::Other,
                        });
                        state = S::SpacesBeforeUri;
                    } else if !ch.is_ascii_uppercase() && ch != b'_' && ch != b'-' {
                        return Parsed::Invalid;
                    }
                }
                S::SpacesBeforeUri => {
                    if ch == b'/' {
                        self.uri_start = p;
                        state = S::AfterSlashInUri;
                    } else if (ch | 0x20).is_ascii_lowercase() {
                        state = S::Schema;
                    } else if ch != b' ' {
                        return Parsed::Invalid;
                    }
                }
                S::Schema => {
                    if (ch | 0x20).is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, b'+' | b'-' | b'.') {
                    } else if ch == b':' {
                        self.schema_end = Some(p);
                        state = S::SchemaSlash;
                    } else {
                        return Parsed::Invalid;
                    }
                }
                S::SchemaSlash => {
                    if ch != b'/' {
                        return Parsed::Invalid;
                    }
                    state = S::SchemaSlashSlash;
                }
                S::SchemaSlashSlash => {
                    if ch != b'/' {
                        return Parsed::Invalid;
                    }
                    state = S::HostStart;
                }
                S::HostStart | S::Host | S::HostEnd => {
                    if state == S::HostStart {
                        self.host_start = Some(p);
                        if ch == b'[' {
                            state = S::HostIpLiteral;
                            p += 1;
                            continue;
                        }
                        state = S::Host;
                    }
                    if state == S::Host
                        && ((ch | 0x20).is_ascii_lowercase() || ch.is_ascii_digit() || ch == b'.' || ch == b'-')
                    {
                        p += 1;
                        continue;
                    }
                    // sw_host falls through to sw_host_end.
                    self.host_end = Some(p);
                    match ch {
                        b':' => state = S::Port,
                        b'/' => {
                            self.uri_start = p;
                            state = S::AfterSlashInUri;
                        }
                        b'?' => {
                            self.uri_start = p;
                            self.empty_path_in_uri = true;
                            state = S::Uri;
                        }
                        b' ' => {
                            // The single "/" after the schema's colon.
                            let colon = self.schema_end.unwrap_or(p);
                            self.uri_start = colon + 1;
                            self.uri_end = colon + 2;
                            state = S::Http09;
                        }
                        _ => return Parsed::Invalid,
                    }
                }
                S::HostIpLiteral => {
                    if ch.is_ascii_digit() || (ch | 0x20).is_ascii_lowercase() {
                    } else {
                        match ch {
                            b']' => state = S::HostEnd,
                            b':' | b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*'
                            | b'+' | b',' | b';' | b'=' => {}
                            _ => return Parsed::Invalid,
                        }
                    }
                }
                S::Port => {
                    if ch.is_ascii_digit() {
                    } else {
                        match ch {
                            b'/' => {
                                self.uri_start = p;
                                state = S::AfterSlashInUri;
                            }
                            b'?' => {
                                self.uri_start = p;
                                self.empty_path_in_uri = true;
                                state = S::Uri;
                            }
                            b' ' => {
                                let colon = self.schema_end.unwrap_or(p);
                                self.uri_start = colon + 1;
                                self.uri_end = colon + 2;
                                state = S::Http09;
                            }
                            _ => return Parsed::Invalid,
                        }
                    }
                }
                S::AfterSlashInUri => {
                    if usual(ch) {
                        state = S::CheckUri;
                    } else {
                        match ch {
                            b' ' => {
                                self.uri_end = p;
                                state = S::Http09;
                            }
                            CR => {
                                self.uri_end = p;
                                self.http_minor = 9;
                                state = S::AlmostDone;
                            }
                            LF => {
                                self.uri_end = p;
                                self.http_minor = 9;
                                return self.done(p, pos);
                            }
                            b'.' | b'/' | b'#' => {
                                self.complex_uri = true;
                                state = S::Uri;
                            }
                            b'%' => {
                                self.quoted_uri = true;
                                state = S::Uri;
                            }
                            b'?' => {
                                state = S::Uri;
                            }
                            b'+' => {}
                            _ => {
                                if ch < 0x20 || ch == 0x7f {
                                    return Parsed::Invalid;
                                }
                                state = S::CheckUri;
                            }
                        }
                    }
                }
                S::CheckUri => {
                    if !usual(ch) {
                        match ch {
                            b'/' => state = S::AfterSlashInUri,
                            b'.' | b'+' => {}
                            b' ' => {
                                self.uri_end = p;
                                state = S::Http09;
                            }
                            CR => {
                                self.uri_end = p;
                                self.http_minor = 9;
                                state = S::AlmostDone;
                            }
                            LF => {
                                self.uri_end = p;
                                self.http_minor = 9;
                                return self.done(p, pos);
                            }
                            b'%' => {
                                self.quoted_uri = true;
                                state = S::Uri;
                            }
                            b'?' => {
                                state = S::Uri;
                            }
                            b'#' => {
                                self.complex_uri = true;
                                state = S::Uri;
                            }
                            _ => {
                                if ch < 0x20 || ch == 0x7f {
                                    return Parsed::Invalid;
                                }
                            }
                        }
                    }
                }
                S::Uri => {
                    if !usual(ch) {
                        match ch {
                            b' ' => {
                                self.uri_end = p;
                                state = S::Http09;
                            }
                            CR => {
                                self.uri_end = p;
                                self.http_minor = 9;
                                state = S::AlmostDone;
                            }
                            LF => {
                                self.uri_end = p;
                                self.http_minor = 9;
                                return self.done(p, pos);
                            }
                            b'#' => self.complex_uri = true,
                            _ => {
                                if ch < 0x20 || ch == 0x7f {
                                    return Parsed::Invalid;
                                }
                            }
                        }
                    }
                }
                S::Http09 => match ch {
                    b' ' => {}
                    CR => {
                        self.http_minor = 9;
                        state = S::AlmostDone;
                    }
                    LF => {
                        self.http_minor = 9;
                        return self.done(p, pos);
                    }
                    b'H' => state = S::HttpH,
                    _ => return Parsed::Invalid,
                },
                S::HttpH | S::HttpHt | S::HttpHtt | S::HttpHttp => {
                    let (want, next) = match state {
                        S::HttpH => (b'T', S::HttpHt),
                        S::HttpHt => (b'T', S::HttpHtt),
                        S::HttpHtt => (b'P', S::HttpHttp),
                        _ => (b'/', S::FirstMajorDigit),
                    };
                    if ch != want {
                        return Parsed::Invalid;
                    }
                    state = next;
                }
                S::FirstMajorDigit => {
                    if !(b'1'..=b'9').contains(&ch) {
                        return Parsed::Invalid;
                    }
                    self.http_major = u32::from(ch - b'0');
                    if self.http_major > 1 {
                        return Parsed::InvalidVersion;
                    }
                    state = S::MajorDigit;
                }
                S::MajorDigit => {
                    if ch == b'.' {
                        state = S::FirstMinorDigit;
                    } else if !ch.is_ascii_digit() {
                        return Parsed::Invalid;
                    } else {
                        self.http_major = self.http_major * 10 + u32::from(ch - b'0');
                        if self.http_major > 1 {
                            return Parsed::InvalidVersion;
                        }
                    }
                }
                S::FirstMinorDigit => {
                    if !ch.is_ascii_digit() {
                        return Parsed::Invalid;
                    }
                    self.http_minor = u32::from(ch - b'0');
                    state = S::MinorDigit;
                }
                S::MinorDigit => match ch {
                    CR => state = S::AlmostDone,
                    LF => return self.done(p, pos),
                    b' ' => state = S::SpacesAfterDigit,
                    _ => {
                        if !ch.is_ascii_digit() || self.http_minor > 99 {
                            return Parsed::Invalid;
                        }
                        self.http_minor = self.http_minor * 10 + u32::from(ch - b'0');
                    }
                },
                S::SpacesAfterDigit => match ch {
                    b' ' => {}
                    CR => state = S::AlmostDone,
                    LF => return self.done(p, pos),
                    _ => return Parsed::Invalid,
                },
                S::AlmostDone => {
                    if ch != LF {
                        return Parsed::Invalid;
                    }
                    return self.done(p, pos);
                }
            }
            p += 1;
        }
        *pos = p;
        self.state = state;
        Parsed::Again
    }

    fn done(&mut self, p: usize, pos: &mut usize) -> Parsed {
        *pos = p + 1;
        self.http_version = self.http_major * 1000 + self.http_minor;
        self.state = LineState::Start;
        if self.http_version == 9 && self.method != Some(Method::Get) {
            return Parsed::Invalid;
        }
        Parsed::Line
    }

    /// `ngx_http_process_request_uri`'s check: a URI with dot segments,
    /// percent-escapes or an empty path is normalised by
    /// `ngx_http_parse_complex_uri` (merge_slashes on), which refuses what
    /// cannot be decoded or climbs above the root: false means a 400.
    pub fn uri_ok(&self, buf: &[u8]) -> bool {
        if !(self.complex_uri || self.quoted_uri || self.empty_path_in_uri) {
            return true;
        }
        // The URI and the byte after it (nginx reads up to and including
        // uri_end: "after the URI there is always at least one character").
        match buf.get(self.uri_start..=self.uri_end) {
            Some(uri) => complex_uri_ok(uri, self.empty_path_in_uri),
            None => false,
        }
    }

    /// The host of an absolute URI, if the line had one.
    pub fn host<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        buf.get(self.host_start?..self.host_end?)
    }
}

/// `ngx_http_parse_complex_uri` with merge_slashes on, reduced to its
/// verdict. `uri` holds the URI and the byte after it (nginx's
/// `uri_end`), which nginx loads but never looks at.
fn complex_uri_ok(uri: &[u8], empty_path: bool) -> bool {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum S {
        Usual,
        Slash,
        Dot,
        DotDot,
        Quoted,
        QuotedSecond,
    }
    // The decoded URI so far: "/.." climbs back over what it holds.
    let mut out: Vec<u8> = Vec::with_capacity(uri.len() + 1);
    if empty_path {
        out.push(b'/');
    }
    // nginx's `u -= 4` and backwards scan to the previous "/": false when
    // it runs past the start (above the root).
    let climb = |out: &mut Vec<u8>| -> bool {
        let mut u = out.len().checked_sub(4);
        while let Some(i) = u {
            if out[i] == b'/' {
                out.truncate(i + 1);
                return true;
            }
            u = i.checked_sub(1);
        }
        false
    };
    let Some(end) = uri.len().checked_sub(1) else { return false };
    let (mut state, mut quoted_state, mut decoded) = (S::Usual, S::Usual, 0u8);
    // nginx: `ch = *p++;` then `while (p <= r->uri_end)`.
    let mut ch = uri[0];
    let mut p = 1;
    while p <= end {
        // Whether this step consumed `ch` (nginx's `ch = *p++`); an
        // escape decodes into `ch` and is looked at again in the state it
        // interrupted.
        let mut next = true;
        match state {
            S::Usual | S::Slash | S::Dot | S::DotDot if usual(ch) => {
                state = S::Usual;
                out.push(ch);
            }
            S::Usual | S::Slash | S::Dot | S::DotDot if ch == b'%' => {
                quoted_state = state;
                state = S::Quoted;
            }
            S::Usual => match ch {
                b'/' => {
                    state = S::Slash;
                    out.push(ch);
                }
                b'?' | b'#' => return true,
                _ => out.push(ch),
            },
            S::Slash => match ch {
                b'/' => {}
                b'.' => {
                    state = S::Dot;
                    out.push(ch);
                }
                b'?' | b'#' => return true,
                _ => {
                    state = S::Usual;
                    out.push(ch);
                }
            },
            S::Dot => match ch {
                b'/' => {
                    state = S::Slash;
                    out.pop();
                }
                b'.' => {
                    state = S::DotDot;
                    out.push(ch);
                }
                b'?' | b'#' => return true,
                _ => {
                    state = S::Usual;
                    out.push(ch);
                }
            },
            S::DotDot => match ch {
                b'/' | b'?' | b'#' => {
                    if !climb(&mut out) {
                        return false;
                    }
                    if ch != b'/' {
                        return true;
                    }
                    state = S::Slash;
                }
                _ => {
                    state = S::Usual;
                    out.push(ch);
                }
            },
            S::Quoted => {
                decoded = match ch {
                    b'0'..=b'9' => ch - b'0',
                    _ if (b'a'..=b'f').contains(&(ch | 0x20)) => (ch | 0x20) - b'a' + 10,
                    _ => return false,
                };
                state = S::QuotedSecond;
            }
            S::QuotedSecond => {
                let digit = ch.is_ascii_digit();
                let low = match ch {
                    b'0'..=b'9' => ch - b'0',
                    _ if (b'a'..=b'f').contains(&(ch | 0x20)) => (ch | 0x20) - b'a' + 10,
                    _ => return false,
                };
                let c = (decoded << 4) | low;
                if (digit && (c == b'%' || c == b'#')) || (!digit && c == b'?') {
                    // Kept as a literal byte of the path.
                    state = S::Usual;
                    out.push(c);
                } else if c == 0 {
                    return false;
                } else {
                    state = quoted_state;
                    ch = c;
                    next = false;
                }
            }
        }
        if next {
            ch = uri[p];
            p += 1;
        }
    }
    match state {
        S::Quoted | S::QuotedSecond => false,
        S::DotDot => climb(&mut out),
        _ => true,
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum HeaderState {
    #[default]
    Start,
    Name,
    SpaceBeforeValue,
    Value,
    SpaceAfterValue,
    AlmostDone,
    HeaderAlmostDone,
}

/// `ngx_http_parse_header_line` (underscores_in_headers off).
#[derive(Clone, Debug, Default)]
pub struct HeaderLine {
    state: HeaderState,
    pub name_start: usize,
    name_end: usize,
    value_start: usize,
    value_end: usize,
    /// A name with bytes nginx does not allow (ignore_invalid_headers on:
    /// the line is skipped).
    pub invalid: bool,
}

impl HeaderLine {
    /// Whether the parser is between lines (nginx's `r->state == 0`).
    pub fn at_start(&self) -> bool {
        self.state == HeaderState::Start
    }

    /// Shifts every position by `by`.
    pub fn relocate(&mut self, by: usize) {
        for p in [&mut self.name_start, &mut self.name_end, &mut self.value_start, &mut self.value_end] {
            *p = p.saturating_sub(by);
        }
    }

    /// The header's name and value once a line is whole.
    pub fn field<'b>(&self, buf: &'b [u8]) -> (&'b [u8], &'b [u8]) {
        let name = buf.get(self.name_start..self.name_end).unwrap_or_default();
        let value = buf.get(self.value_start..self.value_end).unwrap_or_default();
        (name, value)
    }

    /// Parses from `*pos` in `buf`, advancing it as nginx does.
    pub fn parse(&mut self, buf: &[u8], pos: &mut usize) -> Parsed {
        use HeaderState as S;
        let mut state = self.state;
        let mut p = *pos;
        // nginx's lowcase table: a name byte nginx hashes as is.
        let name_byte = |ch: u8| ch.is_ascii_alphanumeric() || ch == b'-';
        while p < buf.len() {
            let ch = buf[p];
            match state {
                S::Start => {
                    self.name_start = p;
                    self.invalid = false;
                    match ch {
                        CR => {
                            self.value_end = p;
                            state = S::HeaderAlmostDone;
                        }
                        LF => {
                            *pos = p + 1;
                            self.state = S::Start;
                            return Parsed::HeaderDone;
                        }
                        _ => {
                            state = S::Name;
                            if !name_byte(ch) {
                                if ch != b'_' && (ch <= 0x20 || ch == 0x7f || ch == b':') {
                                    return Parsed::Invalid;
                                }
                                self.invalid = true;
                            }
                        }
                    }
                }
                S::Name => {
                    if name_byte(ch) {
                    } else if ch == b'_' {
                        self.invalid = true;
                    } else if ch == b':' {
                        self.name_end = p;
                        state = S::SpaceBeforeValue;
                    } else if ch == CR {
                        self.name_end = p;
                        self.value_start = p;
                        self.value_end = p;
                        state = S::AlmostDone;
                    } else if ch == LF {
                        self.name_end = p;
                        self.value_start = p;
                        self.value_end = p;
                        return self.line(p, pos);
                    } else if ch <= 0x20 || ch == 0x7f {
                        return Parsed::Invalid;
                    } else {
                        self.invalid = true;
                    }
                }
                S::SpaceBeforeValue => match ch {
                    b' ' => {}
                    CR => {
                        self.value_start = p;
                        self.value_end = p;
                        state = S::AlmostDone;
                    }
                    LF => {
                        self.value_start = p;
                        self.value_end = p;
                        return self.line(p, pos);
                    }
                    0 => return Parsed::Invalid,
                    _ => {
                        self.value_start = p;
                        state = S::Value;
                    }
                },
                S::Value => match ch {
                    b' ' => {
                        self.value_end = p;
                        state = S::SpaceAfterValue;
                    }
                    CR => {
                        self.value_end = p;
                        state = S::AlmostDone;
                    }
                    LF => {
                        self.value_end = p;
                        return self.line(p, pos);
                    }
                    0 => return Parsed::Invalid,
                    _ => {}
                },
                S::SpaceAfterValue => match ch {
                    b' ' => {}
                    CR => state = S::AlmostDone,
                    LF => return self.line(p, pos),
                    0 => return Parsed::Invalid,
                    _ => state = S::Value,
                },
                S::AlmostDone => match ch {
                    LF => return self.line(p, pos),
                    CR => {}
                    _ => return Parsed::Invalid,
                },
                S::HeaderAlmostDone => {
                    if ch != LF {
                        return Parsed::Invalid;
                    }
                    *pos = p + 1;
                    self.state = S::Start;
                    return Parsed::HeaderDone;
                }
            }
            p += 1;
        }
        *pos = p;
        self.state = state;
        Parsed::Again
    }

    fn line(&mut self, p: usize, pos: &mut usize) -> Parsed {
        *pos = p + 1;
        self.state = HeaderState::Start;
        Parsed::Line
    }
}

/// `ngx_http_validate_host`: false for a host nginx refuses (a 400).
pub fn host_ok(host: &[u8]) -> bool {
    #[derive(PartialEq)]
    enum S {
        Usual,
        Literal,
        Rest,
    }
    let mut state = S::Usual;
    let (mut dot_pos, mut host_len) = (host.len(), host.len());
    for (i, &ch) in host.iter().enumerate() {
        match ch {
            b'.' => {
                if i > 0 && dot_pos == i - 1 {
                    return false;
                }
                dot_pos = i;
            }
            b':' => {
                if state == S::Usual {
                    host_len = i;
                    state = S::Rest;
                }
            }
            b'[' => {
                if i == 0 {
                    state = S::Literal;
                }
            }
            b']' => {
                if state == S::Literal {
                    host_len = i + 1;
                    state = S::Rest;
                }
            }
            b'/' => return false,
            _ => {
                if ch <= 0x20 || ch == 0x7f {
                    return false;
                }
            }
        }
    }
    if host_len > 0 && dot_pos == host_len - 1 {
        host_len -= 1;
    }
    host_len != 0
}

/// What a chunked-body step found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Chunk {
    /// `size` bytes of chunk data start at the returned position.
    Data,
    /// The last chunk and its trailer are through.
    Done,
    /// More bytes are needed.
    Again,
    /// Not chunked encoding: nginx answers 400 (or closes, once the
    /// response is out).
    Invalid,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Start,
    Size,
    Extension,
    ExtensionAlmostDone,
    Data,
    AfterData,
    AfterDataAlmostDone,
    LastExtension,
    LastExtensionAlmostDone,
    Trailer,
    TrailerAlmostDone,
    TrailerHeader,
    TrailerHeaderAlmostDone,
}

/// `ngx_http_parse_chunked`, as `ngx_http_discard_request_body_filter`
/// drives it.
#[derive(Clone, Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// Data bytes left in the current chunk.
    pub size: u64,
    /// What nginx would want to read next (`ctx->length`).
    pub length: u64,
}

impl Chunked {
    /// nginx's `NGX_MAX_OFF_T_VALUE`.
    const MAX: u64 = i64::MAX as u64;

    /// Parses from `*pos` in `buf`.
    pub fn parse(&mut self, buf: &[u8], pos: &mut usize) -> Chunk {
        use ChunkState as S;
        let mut state = self.state;
        if state == S::Data && self.size == 0 {
            state = S::AfterData;
        }
        let mut rc = Chunk::Again;
        let mut p = *pos;
        'bytes: while p < buf.len() {
            let ch = buf[p];
            let hex = |c: u8| match c {
                b'0'..=b'9' => Some(u64::from(c - b'0')),
                _ if (b'a'..=b'f').contains(&(c | 0x20)) => Some(u64::from((c | 0x20) - b'a' + 10)),
                _ => None,
            };
            match state {
                S::Start => match hex(ch) {
                    Some(v) => {
                        state = S::Size;
                        self.size = v;
                    }
                    None => return Chunk::Invalid,
                },
                S::Size => {
                    if self.size > Self::MAX / 16 {
                        return Chunk::Invalid;
                    }
                    if let Some(v) = hex(ch) {
                        self.size = self.size * 16 + v;
                    } else if self.size == 0 {
                        match ch {
                            CR => state = S::LastExtensionAlmostDone,
                            LF => state = S::Trailer,
                            b';' | b' ' | b'\t' => state = S::LastExtension,
                            _ => return Chunk::Invalid,
                        }
                    } else {
                        match ch {
                            CR => state = S::ExtensionAlmostDone,
                            LF => state = S::Data,
                            b';' | b' ' | b'\t' => state = S::Extension,
                            _ => return Chunk::Invalid,
                        }
                    }
                }
                S::Extension => match ch {
                    CR => state = S::ExtensionAlmostDone,
                    LF => state = S::Data,
                    _ => {}
                },
                S::ExtensionAlmostDone => {
                    if ch != LF {
                        return Chunk::Invalid;
                    }
                    state = S::Data;
                }
                S::Data => {
                    rc = Chunk::Data;
                    break 'bytes;
                }
                S::AfterData => match ch {
                    CR => state = S::AfterDataAlmostDone,
                    LF => state = S::Start,
                    _ => return Chunk::Invalid,
                },
                S::AfterDataAlmostDone => {
                    if ch != LF {
                        return Chunk::Invalid;
                    }
                    state = S::Start;
                }
                S::LastExtension => match ch {
                    CR => state = S::LastExtensionAlmostDone,
                    LF => state = S::Trailer,
                    _ => {}
                },
                S::LastExtensionAlmostDone => {
                    if ch != LF {
                        return Chunk::Invalid;
                    }
                    state = S::Trailer;
                }
                S::Trailer => match ch {
                    CR => state = S::TrailerAlmostDone,
                    LF => {
                        self.state = S::Start;
                        *pos = p + 1;
                        return Chunk::Done;
                    }
                    _ => state = S::TrailerHeader,
                },
                S::TrailerAlmostDone => {
                    if ch != LF {
                        return Chunk::Invalid;
                    }
                    self.state = S::Start;
                    *pos = p + 1;
                    return Chunk::Done;
                }
                S::TrailerHeader => match ch {
                    CR => state = S::TrailerHeaderAlmostDone,
                    LF => state = S::Trailer,
                    _ => {}
                },
                S::TrailerHeaderAlmostDone => {
                    if ch != LF {
                        return Chunk::Invalid;
                    }
                    state = S::Trailer;
                }
            }
            p += 1;
        }
        // nginx's `data:` label.
        self.state = state;
        *pos = p;
        if self.size > Self::MAX - 5 {
            return Chunk::Invalid;
        }
        self.length = match state {
            S::Start => 3,
            S::Size => 1 + if self.size > 0 { self.size + 4 } else { 1 },
            S::Extension | S::ExtensionAlmostDone => 1 + self.size + 4,
            S::Data => self.size + 4,
            S::AfterData | S::AfterDataAlmostDone => 4,
            S::LastExtension | S::LastExtensionAlmostDone | S::TrailerHeader | S::TrailerHeaderAlmostDone => 2,
            S::Trailer | S::TrailerAlmostDone => 1,
        };
        rc
    }
}

/// `ngx_atoof`: a Content-Length nginx accepts.
pub fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &c in value {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        if n > i64::MAX as u64 {
            return None;
        }
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &[u8]) -> (Parsed, RequestLine) {
        let mut r = RequestLine::default();
        let mut pos = 0;
        let got = r.parse(text, &mut pos);
        (got, r)
    }

    #[test]
    fn request_lines_as_nginx_reads_them() {
        for (text, want) in [
            (&b"GET / HTTP/1.1\r\n"[..], Parsed::Line),
            (b"GET /a/b?c=d#e HTTP/1.0\n", Parsed::Line),
            (b"\r\n\r\nGET / HTTP/1.1\r\n", Parsed::Line),
            (b"GET http://example.com:8080/x HTTP/1.1\r\n", Parsed::Line),
            (b"GET http://[::1]/ HTTP/1.1\r\n", Parsed::Line),
            (b"GET /\r\n", Parsed::Line),
            (b"FOO_-BAR / HTTP/1.1\r\n", Parsed::Line),
            (b"GET / HTTP/1.1  \r\n", Parsed::Line),
            (b"get / HTTP/1.1\r\n", Parsed::Invalid),
            (b"POST /\r\n", Parsed::Invalid),
            (b"GET / HTTP/2.0\r\n", Parsed::InvalidVersion),
            (b"GET / HTTP/10.0\r\n", Parsed::InvalidVersion),
            (b"GET / HTTP/0.9\r\n", Parsed::Invalid),
            (b"GET / HTTP/1.1000\r\n", Parsed::Invalid),
            (b"GET / FTP/1.1\r\n", Parsed::Invalid),
            (b"GET /\x01 HTTP/1.1\r\n", Parsed::Invalid),
            (b"GET * HTTP/1.1\r\n", Parsed::Invalid),
            (b"GET / HTTP/1.1\rX", Parsed::Invalid),
            (b"\x16\x03\x01", Parsed::Invalid),
            (b"GET / HTTP/1.", Parsed::Again),
        ] {
            assert_eq!(line(text).0, want, "{:?}", String::from_utf8_lossy(text));
        }
        assert_eq!(line(b"GET / HTTP/1.1\r\n").1.http_version, 1001);
        assert_eq!(line(b"GET /\r\n").1.http_version, 9);
        assert_eq!(line(b"HEAD / HTTP/1.0\r\n").1.method, Some(Method::Head));
    }

    #[test]
    fn a_line_parses_the_same_in_any_pieces() {
        let text = b"GET http://h:1/a/../b?x HTTP/1.1\r\n";
        for cut in 0..text.len() {
            let mut r = RequestLine::default();
            let mut pos = 0;
            assert_eq!(r.parse(&text[..cut], &mut pos), Parsed::Again, "cut at {cut}");
            assert_eq!(r.parse(text, &mut pos), Parsed::Line, "cut at {cut}");
            assert_eq!(pos, text.len());
            assert!(r.uri_ok(text));
        }
    }

    #[test]
    fn complex_uris_as_nginx_normalises_them() {
        for (uri, ok) in [
            ("/a/../b", true),
            ("/..", false),
            ("/../x", false),
            ("/a/..", true),
            ("/a/../..", false),
            ("/a/./b//c", true),
            ("/%41", true),
            ("/%zz", false),
            ("/%4", false),
            ("/%00", false),
            ("/%2e%2e/x", false),
            ("/a/%2e%2e/x", true),
            ("/x?/../../..", true),
            ("/x#/../../..", true),
            ("/a/..?y", true),
        ] {
            let text = format!("GET {uri} HTTP/1.1\r\n");
            let (got, r) = line(text.as_bytes());
            assert_eq!(got, Parsed::Line, "{uri}");
            assert_eq!(r.uri_ok(text.as_bytes()), ok, "{uri}");
        }
        let text = b"GET http://h?x HTTP/1.1\r\n";
        let (_, r) = line(text);
        assert!(r.uri_ok(text), "an empty path becomes /");
    }

    fn headers(text: &[u8]) -> Vec<Parsed> {
        let mut h = HeaderLine::default();
        let mut pos = 0;
        let mut out = Vec::new();
        loop {
            let got = h.parse(text, &mut pos);
            out.push(got);
            if got != Parsed::Line {
                return out;
            }
        }
    }

    #[test]
    fn header_lines_as_nginx_reads_them() {
        use Parsed::*;
        assert_eq!(headers(b"Host: x\r\nA:  b c  \r\n\r\n"), [Line, Line, HeaderDone]);
        assert_eq!(headers(b"Host: x\n\n"), [Line, HeaderDone]);
        assert_eq!(headers(b"Bad Header\r\n"), [Invalid]);
        assert_eq!(headers(b": x\r\n"), [Invalid]);
        assert_eq!(headers(b"A: x\0\r\n"), [Invalid]);
        assert_eq!(headers(b"A: x\r\rX"), [Invalid]);
        assert_eq!(headers(b"\rX"), [Invalid]);
        let mut h = HeaderLine::default();
        let (mut pos, text) = (0, &b"X.Y_Z: 1\r\n"[..]);
        assert_eq!(h.parse(text, &mut pos), Line);
        assert!(h.invalid, "dots and underscores make the line one nginx skips");
        let (mut pos, text) = (0, &b"Content-Length:  12  \r\n"[..]);
        assert_eq!(h.parse(text, &mut pos), Line);
        assert_eq!(h.field(text), (&b"Content-Length"[..], &b"12"[..]));
    }

    #[test]
    fn hosts_as_nginx_validates_them() {
        for (host, ok) in [
            ("example.com", true),
            ("example.com.", true),
            ("Example.COM:8080", true),
            ("[::1]:443", true),
            ("a..b", false),
            ("a/b", false),
            ("a b", false),
            ("", false),
            (".", false),
            (":80", false),
        ] {
            assert_eq!(host_ok(host.as_bytes()), ok, "{host:?}");
        }
    }

    fn chunked(body: &[u8]) -> Chunk {
        let mut c = Chunked::default();
        let mut pos = 0;
        loop {
            match c.parse(body, &mut pos) {
                Chunk::Data => {
                    let skip = (body.len() - pos).min(c.size as usize);
                    pos += skip;
                    c.size -= skip as u64;
                }
                other => return other,
            }
        }
    }

    #[test]
    fn chunked_bodies_as_nginx_reads_them() {
        assert_eq!(chunked(b"5\r\nhello\r\n0\r\n\r\n"), Chunk::Done);
        assert_eq!(chunked(b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n"), Chunk::Done);
        assert_eq!(chunked(b"5\r\nhello\r\n0\r\n"), Chunk::Again);
        assert_eq!(chunked(b"5\r\nhelloX"), Chunk::Invalid);
        assert_eq!(chunked(b"zz\r\n"), Chunk::Invalid);
        assert_eq!(chunked(b"ffffffffffffffffff\r\n"), Chunk::Invalid);
    }

    #[test]
    fn content_lengths_as_nginx_reads_them() {
        assert_eq!(content_length(b"0"), Some(0));
        assert_eq!(content_length(b"9223372036854775807"), Some(i64::MAX as u64));
        assert_eq!(content_length(b"9223372036854775808"), None);
        assert_eq!(content_length(b""), None);
        assert_eq!(content_length(b"-1"), None);
        assert_eq!(content_length(b"1 2"), None);
    }
}
