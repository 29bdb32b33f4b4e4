//! The milter wire format, pure and synchronous: every packet is a 32-bit
//! big-endian length, a one-byte command code and the data (the length
//! counts the code and the data). Strings are NUL-terminated.
//!
//! Both directions are encoded and decoded here: the MTA side needs
//! [`Command::encode`] and [`Response::decode`]; the reverse directions
//! are what a milter does, used by the tests (a fake milter, and
//! round-trip properties).

use thiserror::Error;

/// Commands from the MTA to the milter (`SMFIC_*`).
pub mod code {
    pub const ABORT: u8 = b'A';
    pub const BODY: u8 = b'B';
    pub const CONNECT: u8 = b'C';
    pub const MACRO: u8 = b'D';
    pub const BODYEOB: u8 = b'E';
    pub const HELO: u8 = b'H';
    pub const HEADER: u8 = b'L';
    pub const MAIL: u8 = b'M';
    pub const EOH: u8 = b'N';
    pub const OPTNEG: u8 = b'O';
    pub const QUIT: u8 = b'Q';
    pub const RCPT: u8 = b'R';
    pub const DATA: u8 = b'T';
    pub const UNKNOWN: u8 = b'U';
    pub const QUIT_NC: u8 = b'K';
}

/// Replies and requests from the milter to the MTA (`SMFIR_*`).
pub mod reply {
    pub const ADDRCPT: u8 = b'+';
    pub const DELRCPT: u8 = b'-';
    pub const ACCEPT: u8 = b'a';
    pub const REPLBODY: u8 = b'b';
    pub const CONTINUE: u8 = b'c';
    pub const DISCARD: u8 = b'd';
    pub const CONN_FAIL: u8 = b'f';
    pub const CHGHEADER: u8 = b'm';
    pub const PROGRESS: u8 = b'p';
    pub const REJECT: u8 = b'r';
    pub const TEMPFAIL: u8 = b't';
    pub const SHUTDOWN: u8 = b'4';
    pub const ADDHEADER: u8 = b'h';
    pub const INSHEADER: u8 = b'i';
    pub const REPLYCODE: u8 = b'y';
    pub const QUARANTINE: u8 = b'q';
    pub const SKIP: u8 = b's';
    pub const CHGFROM: u8 = b'e';
    pub const ADDRCPT_PAR: u8 = b'2';
    pub const OPTNEG: u8 = b'O';
}

/// What the milter may ask to change (`SMFIF_*`), offered by the MTA in
/// the option negotiation.
pub mod action {
    pub const ADDHDRS: u32 = 1 << 0;
    pub const CHGBODY: u32 = 1 << 1;
    pub const ADDRCPT: u32 = 1 << 2;
    pub const DELRCPT: u32 = 1 << 3;
    pub const CHGHDRS: u32 = 1 << 4;
    pub const QUARANTINE: u32 = 1 << 5;
    pub const CHGFROM: u32 = 1 << 6;
    pub const ADDRCPT_PAR: u32 = 1 << 7;
    pub const SETSYMLIST: u32 = 1 << 8;
    /// Everything Empath can do.
    pub const ALL: u32 = ADDHDRS
        | CHGBODY
        | ADDRCPT
        | DELRCPT
        | CHGHDRS
        | QUARANTINE
        | CHGFROM
        | ADDRCPT_PAR
        | SETSYMLIST;
}

/// Protocol flags (`SMFIP_*`): events the milter does not want, events
/// it will not answer, and protocol features.
pub mod flag {
    pub const NOCONNECT: u32 = 1 << 0;
    pub const NOHELO: u32 = 1 << 1;
    pub const NOMAIL: u32 = 1 << 2;
    pub const NORCPT: u32 = 1 << 3;
    pub const NOBODY: u32 = 1 << 4;
    pub const NOHDRS: u32 = 1 << 5;
    pub const NOEOH: u32 = 1 << 6;
    pub const NR_HDR: u32 = 1 << 7;
    pub const NOUNKNOWN: u32 = 1 << 8;
    pub const NODATA: u32 = 1 << 9;
    pub const SKIP: u32 = 1 << 10;
    pub const RCPT_REJ: u32 = 1 << 11;
    pub const NR_CONN: u32 = 1 << 12;
    pub const NR_HELO: u32 = 1 << 13;
    pub const NR_MAIL: u32 = 1 << 14;
    pub const NR_RCPT: u32 = 1 << 15;
    pub const NR_DATA: u32 = 1 << 16;
    pub const NR_UNKN: u32 = 1 << 17;
    pub const NR_EOH: u32 = 1 << 18;
    pub const NR_BODY: u32 = 1 << 19;
    pub const HDR_LEADSPC: u32 = 1 << 20;

    /// Events a milter can ask not to be sent.
    pub const NOSEND_MASK: u32 =
        NOCONNECT | NOHELO | NOMAIL | NORCPT | NOBODY | NOHDRS | NOEOH | NOUNKNOWN | NODATA;
    /// Events of protocol version 2.
    pub const V2: u32 = NOCONNECT | NOHELO | NOMAIL | NORCPT | NOBODY | NOHDRS | NOEOH;
    pub const V3: u32 = V2 | NOUNKNOWN;
    pub const V4: u32 = V3 | NODATA;
    /// What Empath offers: everything of version 6 except sending the
    /// recipients smtpd rejected (`RCPT_REJ`), which it does not do.
    pub const OFFERED: u32 = V4
        | SKIP
        | NR_HDR
        | NR_CONN
        | NR_HELO
        | NR_MAIL
        | NR_RCPT
        | NR_DATA
        | NR_UNKN
        | NR_EOH
        | NR_BODY
        | HDR_LEADSPC;

    /// The events a milter of protocol `version` knows.
    pub fn events_of_version(version: u32) -> u32 {
        match version {
            0..=2 => V2,
            3 => V3,
            _ => V4,
        }
    }
}

/// The protocol version Empath speaks.
pub const VERSION: u32 = 6;

/// Body content goes in chunks of at most this many bytes.
pub const MAX_BODY_CHUNK: usize = 65_535;

/// The longest packet accepted from a milter. Body replacements come in
/// chunks, so nothing legitimate comes near it.
pub const MAX_PACKET: usize = 16 * 1024 * 1024;

/// The macro classes of the negotiation's macro lists (`SMFIM_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MacroStage {
    Connect = 0,
    Helo = 1,
    Mail = 2,
    Rcpt = 3,
    Data = 4,
    EndOfMessage = 5,
    EndOfHeaders = 6,
}

impl MacroStage {
    pub const ALL: [Self; 7] = [
        Self::Connect,
        Self::Helo,
        Self::Mail,
        Self::Rcpt,
        Self::Data,
        Self::EndOfMessage,
        Self::EndOfHeaders,
    ];

    pub fn from_number(number: u32) -> Option<Self> {
        Self::ALL.into_iter().find(|stage| *stage as u32 == number)
    }
}

/// The address family of a connection (`SMFIA_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Unknown,
    Unix,
    Inet,
    Inet6,
}

impl Family {
    fn code(self) -> u8 {
        match self {
            Self::Unknown => b'U',
            Self::Unix => b'L',
            Self::Inet => b'4',
            Self::Inet6 => b'6',
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            b'U' => Self::Unknown,
            b'L' => Self::Unix,
            b'4' => Self::Inet,
            b'6' => Self::Inet6,
            _ => return None,
        })
    }
}

/// The option negotiation, in either direction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiation {
    pub version: u32,
    /// `action::*` bits.
    pub actions: u32,
    /// `flag::*` bits.
    pub protocol: u32,
    /// From the milter only: the macros it wants at each stage, replacing
    /// the defaults (`SMFIF_SETSYMLIST`).
    pub macros: Vec<(MacroStage, String)>,
}

/// A packet from the MTA to the milter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Negotiate(Negotiation),
    /// Macro values for the event with code `event` that follows.
    Macros {
        event: u8,
        pairs: Vec<(String, String)>,
    },
    Connect {
        hostname: String,
        family: Family,
        port: u16,
        address: String,
    },
    Helo(String),
    /// The address in angle brackets, then the ESMTP parameters.
    Mail(Vec<String>),
    Rcpt(Vec<String>),
    Data,
    /// A header field: name and value, folded lines joined by `\n`.
    Header {
        name: String,
        value: Vec<u8>,
    },
    EndOfHeaders,
    Body(Vec<u8>),
    EndOfBody,
    Abort,
    Quit,
}

/// A packet from the milter to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Negotiate(Negotiation),
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    Progress,
    Skip,
    Shutdown,
    ConnectionFailure,
    /// A full SMTP reply, e.g. `550 5.7.1 Spam`, perhaps multi-line.
    ReplyCode(Vec<u8>),
    Quarantine(String),
    AddHeader {
        name: String,
        value: Vec<u8>,
    },
    /// Insert before the `index`-th header field (0: at the top).
    InsertHeader {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    /// Change the `index`-th field of that name (from 1); an empty value
    /// deletes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: Vec<u8>,
    },
    AddRecipient(String),
    AddRecipientWithParameters {
        address: String,
        parameters: String,
    },
    DeleteRecipient(String),
    ChangeSender {
        address: String,
        parameters: String,
    },
    ReplaceBody(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error("packet length {0} is out of range")]
    BadLength(usize),
    #[error("packet {code:?} is too short")]
    Truncated { code: char },
    #[error("packet {code:?} has {extra} bytes too many")]
    TrailingData { code: char, extra: usize },
    #[error("unknown packet code {0:?}")]
    UnknownCode(char),
    #[error("unknown address family {0:?}")]
    UnknownFamily(char),
    #[error("{0}")]
    Invalid(String),
}

/// A packet as it lies in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawPacket<'a> {
    pub code: u8,
    pub data: &'a [u8],
    /// Bytes it takes in the buffer, with the length prefix.
    pub size: usize,
}

/// Splits the first packet off `buffer`; `None` if it is not complete
/// yet.
pub fn split_packet(buffer: &[u8]) -> Result<Option<RawPacket<'_>>, ProtocolError> {
    let Some(length) = buffer.get(..4) else {
        return Ok(None);
    };
    let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]) as usize;
    if length == 0 || length > MAX_PACKET {
        return Err(ProtocolError::BadLength(length));
    }
    let Some(packet) = buffer.get(4..4 + length) else {
        return Ok(None);
    };
    Ok(Some(RawPacket {
        code: packet[0],
        data: &packet[1..],
        size: 4 + length,
    }))
}

/// A packet with its length prefix.
pub fn packet(code: u8, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + data.len());
    let length = u32::try_from(data.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.push(code);
    out.extend_from_slice(data);
    out
}

/// A NUL-terminated string; NUL bytes inside cannot be sent and are
/// dropped.
fn put_string(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(text.iter().copied().filter(|b| *b != 0));
    out.push(0);
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

/// Reads the fields of a packet's data.
struct Fields<'a> {
    code: u8,
    data: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(code: u8, data: &'a [u8]) -> Self {
        Self { code, data }
    }

    fn truncated(&self) -> ProtocolError {
        ProtocolError::Truncated {
            code: char::from(self.code),
        }
    }

    fn u32(&mut self) -> Result<u32, ProtocolError> {
        let Some(bytes) = self.data.get(..4) else {
            return Err(self.truncated());
        };
        self.data = &self.data[4..];
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn u16(&mut self) -> Result<u16, ProtocolError> {
        let Some(bytes) = self.data.get(..2) else {
            return Err(self.truncated());
        };
        self.data = &self.data[2..];
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    fn byte(&mut self) -> Result<u8, ProtocolError> {
        let Some((&first, rest)) = self.data.split_first() else {
            return Err(self.truncated());
        };
        self.data = rest;
        Ok(first)
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtocolError> {
        let Some(end) = self.data.iter().position(|b| *b == 0) else {
            return Err(self.truncated());
        };
        let (text, rest) = self.data.split_at(end);
        self.data = &rest[1..];
        Ok(text)
    }

    fn string(&mut self) -> Result<String, ProtocolError> {
        Ok(String::from_utf8_lossy(self.bytes()?).into_owned())
    }

    fn has_more(&self) -> bool {
        !self.data.is_empty()
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    fn strings(&mut self) -> Result<Vec<String>, ProtocolError> {
        let mut out = Vec::new();
        while self.has_more() {
            out.push(self.string()?);
        }
        Ok(out)
    }

    fn done<T>(self, value: T) -> Result<T, ProtocolError> {
        if self.data.is_empty() {
            Ok(value)
        } else {
            Err(ProtocolError::TrailingData {
                code: char::from(self.code),
                extra: self.data.len(),
            })
        }
    }
}

impl Negotiation {
    fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.version);
        put_u32(out, self.actions);
        put_u32(out, self.protocol);
        for (stage, names) in &self.macros {
            put_u32(out, *stage as u32);
            put_string(out, names.as_bytes());
        }
    }

    fn decode(fields: &mut Fields<'_>) -> Result<Self, ProtocolError> {
        let version = fields.u32()?;
        let actions = fields.u32()?;
        let protocol = fields.u32()?;
        let mut macros = Vec::new();
        while fields.has_more() {
            let number = fields.u32()?;
            let names = fields.string()?;
            // An unknown class is ignored, as Postfix does.
            if let Some(stage) = MacroStage::from_number(number) {
                macros.push((stage, names));
            }
        }
        Ok(Self {
            version,
            actions,
            protocol,
            macros,
        })
    }
}

impl Command {
    pub fn code(&self) -> u8 {
        match self {
            Self::Negotiate(_) => code::OPTNEG,
            Self::Macros { .. } => code::MACRO,
            Self::Connect { .. } => code::CONNECT,
            Self::Helo(_) => code::HELO,
            Self::Mail(_) => code::MAIL,
            Self::Rcpt(_) => code::RCPT,
            Self::Data => code::DATA,
            Self::Header { .. } => code::HEADER,
            Self::EndOfHeaders => code::EOH,
            Self::Body(_) => code::BODY,
            Self::EndOfBody => code::BODYEOB,
            Self::Abort => code::ABORT,
            Self::Quit => code::QUIT,
        }
    }

    /// The packet, with its length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut data = Vec::new();
        match self {
            Self::Negotiate(negotiation) => negotiation.encode(&mut data),
            Self::Macros { event, pairs } => {
                data.push(*event);
                for (name, value) in pairs {
                    put_string(&mut data, name.as_bytes());
                    put_string(&mut data, value.as_bytes());
                }
            }
            Self::Connect {
                hostname,
                family,
                port,
                address,
            } => {
                put_string(&mut data, hostname.as_bytes());
                data.push(family.code());
                if *family != Family::Unknown {
                    data.extend_from_slice(&port.to_be_bytes());
                    put_string(&mut data, address.as_bytes());
                }
            }
            Self::Helo(name) => put_string(&mut data, name.as_bytes()),
            Self::Mail(args) | Self::Rcpt(args) => {
                for arg in args {
                    put_string(&mut data, arg.as_bytes());
                }
            }
            Self::Header { name, value } => {
                put_string(&mut data, name.as_bytes());
                put_string(&mut data, value);
            }
            Self::Body(chunk) => data.extend_from_slice(chunk),
            Self::Data | Self::EndOfHeaders | Self::EndOfBody | Self::Abort | Self::Quit => {}
        }
        packet(self.code(), &data)
    }

    /// A command from its code and data (what a milter reads).
    pub fn decode(code: u8, data: &[u8]) -> Result<Self, ProtocolError> {
        let mut fields = Fields::new(code, data);
        let command = match code {
            code::OPTNEG => Self::Negotiate(Negotiation::decode(&mut fields)?),
            code::MACRO => {
                let event = fields.byte()?;
                let mut pairs = Vec::new();
                while fields.has_more() {
                    let name = fields.string()?;
                    let value = fields.string()?;
                    pairs.push((name, value));
                }
                Self::Macros { event, pairs }
            }
            code::CONNECT => {
                let hostname = fields.string()?;
                let family_code = fields.byte()?;
                let family = Family::from_code(family_code)
                    .ok_or(ProtocolError::UnknownFamily(char::from(family_code)))?;
                let (port, address) = if family == Family::Unknown {
                    (0, String::new())
                } else {
                    (fields.u16()?, fields.string()?)
                };
                Self::Connect {
                    hostname,
                    family,
                    port,
                    address,
                }
            }
            code::HELO => Self::Helo(fields.string()?),
            code::MAIL => Self::Mail(fields.strings()?),
            code::RCPT => Self::Rcpt(fields.strings()?),
            code::DATA => Self::Data,
            code::HEADER => {
                let name = fields.string()?;
                let value = fields.bytes()?.to_vec();
                Self::Header { name, value }
            }
            code::EOH => Self::EndOfHeaders,
            code::BODY => Self::Body(fields.rest().to_vec()),
            code::BODYEOB => Self::EndOfBody,
            code::ABORT => Self::Abort,
            code::QUIT => Self::Quit,
            other => return Err(ProtocolError::UnknownCode(char::from(other))),
        };
        fields.done(command)
    }
}

impl Response {
    pub fn code(&self) -> u8 {
        match self {
            Self::Negotiate(_) => reply::OPTNEG,
            Self::Continue => reply::CONTINUE,
            Self::Accept => reply::ACCEPT,
            Self::Reject => reply::REJECT,
            Self::Tempfail => reply::TEMPFAIL,
            Self::Discard => reply::DISCARD,
            Self::Progress => reply::PROGRESS,
            Self::Skip => reply::SKIP,
            Self::Shutdown => reply::SHUTDOWN,
            Self::ConnectionFailure => reply::CONN_FAIL,
            Self::ReplyCode(_) => reply::REPLYCODE,
            Self::Quarantine(_) => reply::QUARANTINE,
            Self::AddHeader { .. } => reply::ADDHEADER,
            Self::InsertHeader { .. } => reply::INSHEADER,
            Self::ChangeHeader { .. } => reply::CHGHEADER,
            Self::AddRecipient(_) => reply::ADDRCPT,
            Self::AddRecipientWithParameters { .. } => reply::ADDRCPT_PAR,
            Self::DeleteRecipient(_) => reply::DELRCPT,
            Self::ChangeSender { .. } => reply::CHGFROM,
            Self::ReplaceBody(_) => reply::REPLBODY,
        }
    }

    /// A response from its code and data (what the MTA reads).
    pub fn decode(code: u8, data: &[u8]) -> Result<Self, ProtocolError> {
        let mut fields = Fields::new(code, data);
        let response = match code {
            reply::OPTNEG => Self::Negotiate(Negotiation::decode(&mut fields)?),
            reply::CONTINUE => Self::Continue,
            reply::ACCEPT => Self::Accept,
            reply::REJECT => Self::Reject,
            reply::TEMPFAIL => Self::Tempfail,
            reply::DISCARD => Self::Discard,
            reply::PROGRESS => Self::Progress,
            reply::SKIP => Self::Skip,
            reply::SHUTDOWN => Self::Shutdown,
            reply::CONN_FAIL => Self::ConnectionFailure,
            reply::REPLYCODE => {
                let text = fields.rest();
                // The terminating NUL is optional on the wire.
                let text = text.strip_suffix(b"\0").unwrap_or(text);
                Self::ReplyCode(text.to_vec())
            }
            reply::QUARANTINE => {
                let reason = fields.rest();
                let reason = reason.strip_suffix(b"\0").unwrap_or(reason);
                Self::Quarantine(String::from_utf8_lossy(reason).into_owned())
            }
            reply::ADDHEADER => {
                let name = fields.string()?;
                let value = fields.bytes()?.to_vec();
                Self::AddHeader { name, value }
            }
            reply::INSHEADER | reply::CHGHEADER => {
                let index = fields.u32()?;
                let name = fields.string()?;
                let value = fields.bytes()?.to_vec();
                if code == reply::INSHEADER {
                    Self::InsertHeader { index, name, value }
                } else {
                    Self::ChangeHeader { index, name, value }
                }
            }
            reply::ADDRCPT => Self::AddRecipient(fields.string()?),
            reply::DELRCPT => Self::DeleteRecipient(fields.string()?),
            reply::ADDRCPT_PAR | reply::CHGFROM => {
                let address = fields.string()?;
                let parameters = if fields.has_more() {
                    fields.string()?
                } else {
                    String::new()
                };
                if code == reply::CHGFROM {
                    Self::ChangeSender {
                        address,
                        parameters,
                    }
                } else {
                    Self::AddRecipientWithParameters {
                        address,
                        parameters,
                    }
                }
            }
            reply::REPLBODY => Self::ReplaceBody(fields.rest().to_vec()),
            other => return Err(ProtocolError::UnknownCode(char::from(other))),
        };
        fields.done(response)
    }

    /// The packet, with its length prefix (what a milter sends).
    pub fn encode(&self) -> Vec<u8> {
        let mut data = Vec::new();
        match self {
            Self::Negotiate(negotiation) => negotiation.encode(&mut data),
            Self::ReplyCode(text) => put_string(&mut data, text),
            Self::Quarantine(reason) => put_string(&mut data, reason.as_bytes()),
            Self::AddHeader { name, value } => {
                put_string(&mut data, name.as_bytes());
                put_string(&mut data, value);
            }
            Self::InsertHeader { index, name, value }
            | Self::ChangeHeader { index, name, value } => {
                put_u32(&mut data, *index);
                put_string(&mut data, name.as_bytes());
                put_string(&mut data, value);
            }
            Self::AddRecipient(address) | Self::DeleteRecipient(address) => {
                put_string(&mut data, address.as_bytes());
            }
            Self::AddRecipientWithParameters {
                address,
                parameters,
            }
            | Self::ChangeSender {
                address,
                parameters,
            } => {
                put_string(&mut data, address.as_bytes());
                if !parameters.is_empty() {
                    put_string(&mut data, parameters.as_bytes());
                }
            }
            Self::ReplaceBody(chunk) => data.extend_from_slice(chunk),
            Self::Continue
            | Self::Accept
            | Self::Reject
            | Self::Tempfail
            | Self::Discard
            | Self::Progress
            | Self::Skip
            | Self::Shutdown
            | Self::ConnectionFailure => {}
        }
        packet(self.code(), &data)
    }
}

/// Checks a milter's `SMFIR_REPLYCODE` text the way Postfix does: one or
/// more lines, each `4xx` or `5xx` with `-` before the last line and a
/// space on it, CRLF between lines and none at the end, no NUL, and an
/// enhanced status code (if any) of the same class. Sendmail treats the
/// text as a format string, so `%%` stands for `%`; a lone `%` is
/// dropped. Returns the lines, ready for [`empath_common::smtp::Reply`].
pub fn reply_lines(text: &[u8]) -> Result<Vec<String>, ProtocolError> {
    let bad = || {
        ProtocolError::Invalid(format!(
            "malformed reply {:?}",
            String::from_utf8_lossy(text)
        ))
    };
    if text.is_empty() || text.contains(&0) {
        return Err(bad());
    }
    let text = std::str::from_utf8(text).map_err(|_| bad())?;
    let lines: Vec<&str> = text.split("\r\n").collect();
    let mut out = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        let last = index + 1 == lines.len();
        let bytes = line.as_bytes();
        let valid = bytes.len() >= 4
            && matches!(bytes[0], b'4' | b'5')
            && bytes[1].is_ascii_digit()
            && bytes[2].is_ascii_digit()
            && bytes[3] == if last { b' ' } else { b'-' }
            && !(bytes.len() > 4 && bytes[4].is_ascii_digit() && bytes[4] != bytes[0])
            && bytes[..3] == lines[0].as_bytes()[..3]
            && !line.contains(['\r', '\n']);
        if !valid {
            return Err(bad());
        }
        out.push(unescape_percent(line));
    }
    Ok(out)
}

/// Postfix's reading of Sendmail's format strings: `%` stands for the
/// character after it, so `%%` is `%` and a lone `%` disappears.
fn unescape_percent(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '%' => out.extend(chars.next()),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_length_prefixed_and_split_when_complete() {
        let bytes = Command::Helo("client.example".into()).encode();
        assert_eq!(&bytes[..5], &[0, 0, 0, 16, b'H']);
        assert_eq!(split_packet(&bytes[..10]), Ok(None));
        let raw = split_packet(&bytes).unwrap().unwrap();
        assert_eq!(
            (raw.code, raw.data, raw.size),
            (b'H', &b"client.example\0"[..], 20)
        );
        assert_eq!(
            split_packet(&[0, 0, 0, 0, b'c']),
            Err(ProtocolError::BadLength(0))
        );
        assert_eq!(
            split_packet(&[0xff, 0xff, 0xff, 0xff]),
            Err(ProtocolError::BadLength(u32::MAX as usize))
        );
    }

    #[test]
    fn connect_carries_family_port_and_address() {
        let connect = Command::Connect {
            hostname: "[192.0.2.1]".into(),
            family: Family::Inet,
            port: 4321,
            address: "192.0.2.1".into(),
        };
        let bytes = connect.encode();
        assert_eq!(&bytes[5..], b"[192.0.2.1]\x004\x10\xe1192.0.2.1\0");
        let raw = split_packet(&bytes).unwrap().unwrap();
        assert_eq!(Command::decode(raw.code, raw.data).unwrap(), connect);
    }

    #[test]
    fn negotiation_reply_may_carry_macro_lists() {
        let mut data = Vec::new();
        for value in [6u32, 0x1ff, flag::NOHELO | flag::NR_HDR] {
            data.extend_from_slice(&value.to_be_bytes());
        }
        data.extend_from_slice(&2u32.to_be_bytes());
        data.extend_from_slice(b"{auth_authen} i\0");
        data.extend_from_slice(&99u32.to_be_bytes());
        data.extend_from_slice(b"ignored\0");
        let Response::Negotiate(negotiation) = Response::decode(b'O', &data).unwrap() else {
            panic!("not a negotiation");
        };
        assert_eq!(negotiation.version, 6);
        assert_eq!(
            negotiation.macros,
            vec![(MacroStage::Mail, "{auth_authen} i".to_owned())]
        );
    }

    #[test]
    fn modification_requests_decode() {
        assert_eq!(
            Response::decode(b'm', b"\0\0\0\x02X-Spam\0\0").unwrap(),
            Response::ChangeHeader {
                index: 2,
                name: "X-Spam".into(),
                value: Vec::new()
            }
        );
        assert_eq!(
            Response::decode(b'e', b"<new@example.org>\0").unwrap(),
            Response::ChangeSender {
                address: "<new@example.org>".into(),
                parameters: String::new()
            }
        );
        assert_eq!(
            Response::decode(b'y', b"550 5.7.1 no\0").unwrap(),
            Response::ReplyCode(b"550 5.7.1 no".to_vec())
        );
        assert!(matches!(
            Response::decode(b'h', b"X-Only-Name\0"),
            Err(ProtocolError::Truncated { code: 'h' })
        ));
        assert!(matches!(
            Response::decode(b'c', b"x"),
            Err(ProtocolError::TrailingData { .. })
        ));
        assert!(matches!(
            Response::decode(b'Z', b""),
            Err(ProtocolError::UnknownCode('Z'))
        ));
    }

    #[test]
    fn reply_texts_are_checked_like_postfix() {
        assert_eq!(
            reply_lines(b"554 5.7.1 Gtube 100%% spam").unwrap(),
            vec!["554 5.7.1 Gtube 100% spam"]
        );
        assert_eq!(
            reply_lines(b"451-4.7.1 one\r\n451 4.7.1 two").unwrap(),
            vec!["451-4.7.1 one", "451 4.7.1 two"]
        );
        for bad in [
            &b"250 2.0.0 ok"[..],
            b"550-5.7.1 no final line",
            b"550 4.7.1 wrong class",
            b"550 x\r\n",
            b"550-a\r\n551 b",
            b"55",
            b"",
        ] {
            assert!(
                reply_lines(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            reply_lines(b"550 5.7.1 50% off").unwrap(),
            vec!["550 5.7.1 50 off"]
        );
    }
}
