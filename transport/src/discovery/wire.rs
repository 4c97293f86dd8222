//! The discovery protocol's frames and their versioned, length-checked encoding.
//!
//! # Wire format (version 1.2)
//!
//! All integers little-endian; `str`/`bytes` are a `u16` length and that many bytes.
//!
//! ```text
//! header   magic "EFPD" | major u8 | minor u8 | kind u8 | 0 u8 | body length u32   (12 bytes)
//! body     Hello / Welcome: engine str | fabric str | rails u16 | per rail: address bytes
//!          Lookup:          name str
//!          Found:           descriptor bytes (a SegmentDescriptor, u32 length)
//!          Error:           code u8 | message str
//!          List (1.2):      prefix str
//!          Listing (1.2):   count u32 | per segment: name str | base u64 | len u64 | truncated u8
//! ```
//!
//! Error codes: 1 not found, 2 bad request, 3 refused, 4 busy (1.1: no connection slot free;
//! the message says how many connections are open).
//!
//! A connection starts with the requester's `Hello` (its engine, fabric and per-rail
//! addresses, so the target can accept it, e.g. create the reverse EFA address handle) and the
//! target's `Welcome`; then `Lookup`s, each answered by `Found` or `Error`, and (1.2) `List`s,
//! each answered by a `Listing` of the published segments whose names start with the prefix
//! (name and address range only; as many as fit in a frame, `truncated` set when some did not;
//! a 1.1 server drops the connection on a `List`). The body length is
//! checked against a maximum before anything is allocated. A different major version is
//! refused; a newer minor may append fields, which are skipped. Decoding never panics
//! (fuzzed by `fuzz/fuzz_targets/handshake.rs`).

use crate::bytes::{check_count, put_blob, BytesError, Reader};
use crate::descriptor::{DescriptorError, SegmentDescriptor, MAX_BLOB_LEN, MAX_NAME_LEN};
use crate::fabric::MAX_RAILS;

/// Frame magic.
pub const MAGIC: [u8; 4] = *b"EFPD";
/// Major version written and accepted.
pub const VERSION_MAJOR: u8 = 1;
/// Minor version written.
pub const VERSION_MINOR: u8 = 2;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 12;
/// Default largest body accepted.
pub const DEFAULT_MAX_BODY: usize = 64 << 10;
/// Largest descriptor carried in a `Found` frame.
const MAX_DESCRIPTOR: usize = 1 << 20;

/// A frame kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// The requester introduces itself.
    Hello = 1,
    /// The target introduces itself in reply.
    Welcome = 2,
    /// Asks for a descriptor by name.
    Lookup = 3,
    /// A descriptor.
    Found = 4,
    /// A refusal or failure.
    Error = 5,
    /// Asks for the published segments whose names start with a prefix (1.2).
    List = 6,
    /// The answer to a `List` (1.2).
    Listing = 7,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::Lookup,
            4 => Kind::Found,
            5 => Kind::Error,
            6 => Kind::List,
            7 => Kind::Listing,
            _ => return None,
        })
    }
}

/// Who an engine is, as told in `Hello` and `Welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerHello {
    /// Engine name.
    pub engine: String,
    /// Fabric name (`tcp`, `efa`, ...), empty when no fabric is attached.
    pub fabric: String,
    /// The engine's per-rail fabric addresses.
    pub addresses: Vec<Vec<u8>>,
}

/// One published segment as a `Listing` names it: enough to tell which segment covers an
/// address, then open it by name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentSummary {
    /// Name it is published under.
    pub name: String,
    /// Start address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Bytes of a `Listing` entry besides its name (name length, base, length).
pub const SUMMARY_FIXED_LEN: usize = 2 + 8 + 8;

/// The answer to a `List`: segments in name order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Listing {
    /// The segments that fit in the frame.
    pub segments: Vec<SegmentSummary>,
    /// Some matching segments did not fit (ask again with a longer prefix).
    pub truncated: bool,
}

/// Error codes of `Error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ErrorCode {
    /// No descriptor of that name.
    NotFound = 1,
    /// The request made no sense in this state.
    BadRequest = 2,
    /// The hello was refused (fabric mismatch, addresses the fabric rejects).
    Refused = 3,
    /// The server has no connection slot free (every one is busy mid-frame); retry later.
    Busy = 4,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// The requester's hello.
    Hello(PeerHello),
    /// The target's reply to a hello.
    Welcome(PeerHello),
    /// A lookup by segment name.
    Lookup(String),
    /// The descriptor looked up.
    Found(SegmentDescriptor),
    /// A refusal or failure.
    Error {
        /// What went wrong.
        code: ErrorCode,
        /// Details.
        message: String,
    },
    /// A listing request by name prefix (1.2).
    List(String),
    /// The segments listed (1.2).
    Listing(Listing),
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A field is short, too long or not UTF-8, or bytes are left over.
    #[error(transparent)]
    Bytes(#[from] BytesError),
    /// Wrong magic.
    #[error("bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// Another major version.
    #[error("unsupported version {major}.{minor}")]
    Version {
        /// Major.
        major: u8,
        /// Minor.
        minor: u8,
    },
    /// An unknown frame kind.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// Reserved header bits set.
    #[error("reserved header byte is {0:#x}")]
    Reserved(u8),
    /// A body over the limit.
    #[error("frame body of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// Declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A flag byte other than 0 or 1.
    #[error("field {0} is neither 0 nor 1")]
    BadFlag(&'static str),
    /// An unknown error code.
    #[error("unknown error code {0}")]
    ErrorCode(u8),
    /// The embedded descriptor is invalid.
    #[error("bad descriptor")]
    Descriptor(#[from] DescriptorError),
}

fn put_hello(out: &mut Vec<u8>, h: &PeerHello) -> Result<(), WireError> {
    put_blob(out, "engine", h.engine.as_bytes(), MAX_NAME_LEN)?;
    put_blob(out, "fabric", h.fabric.as_bytes(), MAX_NAME_LEN)?;
    let n = check_count("rails", h.addresses.len(), MAX_RAILS)?;
    out.extend_from_slice(&n.to_le_bytes());
    for a in &h.addresses {
        put_blob(out, "address", a, MAX_BLOB_LEN)?;
    }
    Ok(())
}

fn get_hello(r: &mut Reader<'_>) -> Result<PeerHello, WireError> {
    let engine = r.str("engine", MAX_NAME_LEN)?;
    let fabric = r.str("fabric", MAX_NAME_LEN)?;
    let n = r.count("rails", MAX_RAILS)?;
    let mut addresses = Vec::with_capacity(n);
    for _ in 0..n {
        addresses.push(r.blob("address", MAX_BLOB_LEN)?.to_vec());
    }
    Ok(PeerHello {
        engine,
        fabric,
        addresses,
    })
}

/// Encodes a frame (header and body).
pub fn encode(msg: &Message) -> Result<Vec<u8>, WireError> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION_MAJOR);
    out.push(VERSION_MINOR);
    out.push(kind_of(msg) as u8);
    out.push(0);
    out.extend_from_slice(&[0; 4]);
    match msg {
        Message::Hello(h) | Message::Welcome(h) => put_hello(&mut out, h)?,
        Message::Lookup(name) => put_blob(&mut out, "name", name.as_bytes(), MAX_NAME_LEN)?,
        Message::List(prefix) => put_blob(&mut out, "prefix", prefix.as_bytes(), MAX_NAME_LEN)?,
        Message::Listing(l) => {
            let n = u32::try_from(l.segments.len()).map_err(|_| BytesError::TooLong {
                field: "segments",
                len: l.segments.len(),
                max: u32::MAX as usize,
            })?;
            out.extend_from_slice(&n.to_le_bytes());
            for seg in &l.segments {
                put_blob(&mut out, "name", seg.name.as_bytes(), MAX_NAME_LEN)?;
                out.extend_from_slice(&seg.base.to_le_bytes());
                out.extend_from_slice(&seg.len.to_le_bytes());
            }
            out.push(u8::from(l.truncated));
        }
        Message::Found(d) => {
            let bytes = d.encode()?;
            if bytes.len() > MAX_DESCRIPTOR {
                return Err(BytesError::TooLong {
                    field: "descriptor",
                    len: bytes.len(),
                    max: MAX_DESCRIPTOR,
                }
                .into());
            }
            out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            out.extend_from_slice(&bytes);
        }
        Message::Error { code, message } => {
            out.push(*code as u8);
            // Cut an over-long message at a character boundary, so it stays valid UTF-8.
            let mut end = message.len().min(MAX_NAME_LEN);
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            put_blob(
                &mut out,
                "message",
                &message.as_bytes()[..end],
                MAX_NAME_LEN,
            )?;
        }
    }
    let body = (out.len() - HEADER_LEN) as u32;
    out[8..12].copy_from_slice(&body.to_le_bytes());
    Ok(out)
}

fn kind_of(msg: &Message) -> Kind {
    match msg {
        Message::Hello(_) => Kind::Hello,
        Message::Welcome(_) => Kind::Welcome,
        Message::Lookup(_) => Kind::Lookup,
        Message::Found(_) => Kind::Found,
        Message::Error { .. } => Kind::Error,
        Message::List(_) => Kind::List,
        Message::Listing(_) => Kind::Listing,
    }
}

/// A checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame kind.
    pub kind: Kind,
    /// Minor version of the sender.
    pub minor: u8,
    /// Body length (at most the limit given to [`decode_header`]).
    pub len: usize,
}

/// Checks a header: magic, major version, kind, reserved byte and the body length against
/// `max_body`.
pub fn decode_header(h: &[u8], max_body: usize) -> Result<Header, WireError> {
    let mut r = Reader::new(h);
    let magic = r.take(4)?;
    if magic != MAGIC {
        return Err(WireError::BadMagic([
            magic[0], magic[1], magic[2], magic[3],
        ]));
    }
    let major = r.u8()?;
    let minor = r.u8()?;
    if major != VERSION_MAJOR {
        return Err(WireError::Version { major, minor });
    }
    let k = r.u8()?;
    let kind = Kind::from_u8(k).ok_or(WireError::Kind(k))?;
    let reserved = r.u8()?;
    if reserved != 0 {
        return Err(WireError::Reserved(reserved));
    }
    let len = r.u32()? as usize;
    if len > max_body {
        return Err(WireError::Oversized { len, max: max_body });
    }
    Ok(Header { kind, minor, len })
}

/// Decodes a body of the kind and minor version a header announced.
pub fn decode_body(header: &Header, body: &[u8]) -> Result<Message, WireError> {
    if body.len() != header.len {
        return Err(BytesError::Truncated {
            at: 0,
            need: header.len,
            have: body.len(),
        }
        .into());
    }
    let mut r = Reader::new(body);
    let msg = match header.kind {
        Kind::Hello => Message::Hello(get_hello(&mut r)?),
        Kind::Welcome => Message::Welcome(get_hello(&mut r)?),
        Kind::Lookup => Message::Lookup(r.str("name", MAX_NAME_LEN)?),
        Kind::List => Message::List(r.str("prefix", MAX_NAME_LEN)?),
        Kind::Listing => {
            let n = r.u32()? as usize;
            // Every entry takes at least its fixed bytes: refuse a count the body cannot hold
            // before allocating for it.
            let room = r.remaining() / SUMMARY_FIXED_LEN;
            if n > room {
                return Err(BytesError::TooLong {
                    field: "segments",
                    len: n,
                    max: room,
                }
                .into());
            }
            let mut segments = Vec::with_capacity(n);
            for _ in 0..n {
                segments.push(SegmentSummary {
                    name: r.str("name", MAX_NAME_LEN)?,
                    base: r.u64()?,
                    len: r.u64()?,
                });
            }
            let truncated = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(WireError::BadFlag("truncated")),
            };
            Message::Listing(Listing {
                segments,
                truncated,
            })
        }
        Kind::Found => {
            let n = r.u32()? as usize;
            if n > MAX_DESCRIPTOR {
                return Err(BytesError::TooLong {
                    field: "descriptor",
                    len: n,
                    max: MAX_DESCRIPTOR,
                }
                .into());
            }
            Message::Found(SegmentDescriptor::decode(r.take(n)?)?)
        }
        Kind::Error => {
            let c = r.u8()?;
            let code = match c {
                1 => ErrorCode::NotFound,
                2 => ErrorCode::BadRequest,
                3 => ErrorCode::Refused,
                4 => ErrorCode::Busy,
                other => return Err(WireError::ErrorCode(other)),
            };
            Message::Error {
                code,
                message: r.str("message", MAX_NAME_LEN)?,
            }
        }
    };
    let rest = r.remaining();
    let newer = header.minor > VERSION_MINOR;
    if rest != 0 && !newer {
        return Err(BytesError::Trailing(rest).into());
    }
    Ok(msg)
}

/// Decodes one whole frame that fills `frame` exactly.
pub fn decode(frame: &[u8], max_body: usize) -> Result<Message, WireError> {
    let header = decode_header(frame, max_body)?;
    let body = &frame[HEADER_LEN.min(frame.len())..];
    if body.len() != header.len {
        return Err(BytesError::Truncated {
            at: HEADER_LEN,
            need: header.len,
            have: body.len(),
        }
        .into());
    }
    decode_body(&header, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Access, Location, RailDescriptor};

    fn samples() -> Vec<Message> {
        let hello = PeerHello {
            engine: "node-a".into(),
            fabric: "tcp".into(),
            addresses: vec![b"TCP1xyz".to_vec(), vec![]],
        };
        vec![
            Message::Hello(hello.clone()),
            Message::Welcome(hello),
            Message::Lookup("kv/0".into()),
            Message::Found(SegmentDescriptor {
                revision: 2,
                name: "kv/0".into(),
                fabric: "tcp".into(),
                engine: "node-a".into(),
                location: Location::Cpu(0),
                access: Access::REMOTE_READ,
                base: 4096,
                len: 100,
                rails: vec![RailDescriptor {
                    address: vec![1],
                    key: vec![2; 8],
                }],
                alternates: vec![],
            }),
            Message::Error {
                code: ErrorCode::NotFound,
                message: "no".into(),
            },
            Message::List("kv/".into()),
            Message::Listing(Listing::default()),
            Message::Listing(Listing {
                segments: vec![
                    SegmentSummary {
                        name: "kv/0".into(),
                        base: 4096,
                        len: 100,
                    },
                    SegmentSummary {
                        name: "kv/1".into(),
                        base: u64::MAX,
                        len: 0,
                    },
                ],
                truncated: true,
            }),
        ]
    }

    #[test]
    fn round_trips_and_every_truncation_fails() {
        for m in samples() {
            let f = encode(&m).unwrap();
            assert_eq!(decode(&f, DEFAULT_MAX_BODY).unwrap(), m);
            for cut in 0..f.len() {
                assert!(
                    decode(&f[..cut], DEFAULT_MAX_BODY).is_err(),
                    "{m:?} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn long_error_messages_are_cut_on_a_char_boundary() {
        let message = "\u{e9}".repeat(MAX_NAME_LEN);
        let f = encode(&Message::Error {
            code: ErrorCode::Refused,
            message,
        })
        .unwrap();
        match decode(&f, DEFAULT_MAX_BODY).unwrap() {
            Message::Error { message, .. } => {
                assert_eq!(message, "\u{e9}".repeat(MAX_NAME_LEN / 2))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listing_counts_beyond_the_body_are_refused() {
        let mut f = encode(&Message::Listing(Listing::default())).unwrap();
        f[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode(&f, DEFAULT_MAX_BODY),
            Err(WireError::Bytes(BytesError::TooLong {
                field: "segments",
                ..
            }))
        ));
        let mut f = encode(&Message::Listing(Listing::default())).unwrap();
        *f.last_mut().unwrap() = 2;
        assert_eq!(
            decode(&f, DEFAULT_MAX_BODY),
            Err(WireError::BadFlag("truncated"))
        );
    }

    #[test]
    fn rejects_bad_headers() {
        let f = encode(&Message::Lookup("x".into())).unwrap();
        let mut b = f.clone();
        b[0] = b'X';
        assert!(matches!(decode(&b, 1024), Err(WireError::BadMagic(_))));
        let mut b = f.clone();
        b[4] = 9;
        assert_eq!(
            decode(&b, 1024),
            Err(WireError::Version {
                major: 9,
                minor: VERSION_MINOR
            })
        );
        let mut b = f.clone();
        b[6] = 77;
        assert_eq!(decode(&b, 1024), Err(WireError::Kind(77)));
        let mut b = f.clone();
        b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&b, 1024), Err(WireError::Oversized { .. })));
        let mut b = f.clone();
        b.push(0);
        b[8] += 1;
        assert_eq!(
            decode(&b, 1024),
            Err(WireError::Bytes(BytesError::Trailing(1)))
        );
        b[5] = VERSION_MINOR + 1;
        assert_eq!(decode(&b, 1024).unwrap(), Message::Lookup("x".into()));
    }
}
