//! The control protocol between an `efa-perf` client and server: one JSON object per line over TCP
//! (see the `remote` module of the binary for the exchange).
//!
//! This module is the part a server applies to bytes from the network, kept free of sockets and
//! engines so it can be tested and fuzzed alone: [`read_line`] bounds a line, [`parse`] decodes a
//! message, [`check_hello`] and [`check_step`] validate what a client asks of the server.

use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Read};

/// Version of the control protocol.
pub const PROTOCOL: u32 = 1;
/// Longest control line a server reads: every message a client sends is a few hundred bytes.
pub const SERVER_MAX_LINE: usize = 64 << 10;
/// Longest control line a client reads: a result carries every completion event of a run.
pub const CLIENT_MAX_LINE: usize = 256 << 20;
/// Most memory a server registers for a client (`stripe` x `streams`).
pub const SERVER_MAX_MEMORY: u64 = 1 << 30;

/// Which operation a test measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// Two-sided SEND/RECV.
    Send,
    /// One-sided RDMA WRITE.
    Write,
    /// One-sided RDMA READ.
    Read,
    /// RDMA WRITE with a notification through the transport engine (write-with-immediate on
    /// verbs and EFA): the engine's two-sided signal, not a SEND.
    Notify,
}

impl Verb {
    /// perftest's name of the verb in its banner.
    pub fn perftest_name(self) -> &'static str {
        match self {
            Self::Send => "Send",
            Self::Write => "RDMA_Write",
            Self::Read => "RDMA_Read",
            Self::Notify => "Write_with_Notify",
        }
    }

    /// Lower-case name used in test names (`write_bw`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Send => "send",
            Self::Write => "write",
            Self::Read => "read",
            Self::Notify => "notify",
        }
    }
}

/// Bandwidth or latency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Throughput with many operations in flight.
    Bw,
    /// Time of one operation at a time.
    Lat,
}

/// A control message.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "msg", rename_all = "snake_case")]
#[allow(missing_docs)] // The fields are the protocol's; the exchange is documented in `remote`.
pub enum Msg {
    /// Client: what it will run.
    Hello {
        protocol: u32,
        fabric: String,
        verb: Verb,
        metric: Metric,
        streams: u32,
        depth: u32,
        bidirectional: bool,
        stripe: u64,
        /// The test runs straight on the efa crate (`--raw`; SEND tests always do), not through
        /// the engine. Absent from older clients: false.
        #[serde(default)]
        raw: bool,
        /// Bytes each stream cycles its messages through (`--cycle-buffer`); absent: a place
        /// per message in flight.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cycle_buffer: Option<u64>,
    },
    /// Server: its engine is up.
    Ready {
        discovery: String,
        device: String,
        transport_type: String,
        connection_type: String,
    },
    /// Client: it opened the server's segment.
    Opened { discovery: String },
    /// Either side of a raw test: its queue pairs' addresses, its largest message of the test's
    /// operation (the port's `max_msg_sz`, or EFA's `max_rdma_size` for RDMA) and, in RDMA
    /// tests, the region the peer WRITEs to or READs from (the server answers a hello with it,
    /// the client answers the server's).
    Qps {
        max_msg_sz: u64,
        qps: Vec<QpAddress>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<Region>,
    },
    /// Server: it opened the client's segment.
    Linked,
    /// Client: run one size (iterations or a duration).
    Run {
        size: u64,
        iterations: Option<u64>,
        duration_ms: Option<u64>,
    },
    /// Server: its side of the run started.
    Go,
    /// Client: its side finished after `ops` operations.
    Finished { ops: u64 },
    /// Server: its side's figures.
    Result {
        cpu_percent: f64,
        streams: Vec<StreamSummary>,
    },
    /// Either side: giving up, and why.
    Error { message: String },
    /// Client: done.
    Bye,
}

/// The address of one queue pair, as a peer needs it: an SRD peer makes an address handle for
/// the GID and names the QP number and Q_Key in every send; an RC peer connects to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QpAddress {
    /// Port GID.
    pub gid: [u8; 16],
    /// QP number (24 bits).
    pub qpn: u32,
    /// Q_Key (SRD) or initial packet sequence number (RC, 24 bits).
    pub qkey_or_psn: u32,
    /// Port LID (InfiniBand; 0 on RoCE and EFA).
    pub lid: u16,
}

/// A registered region a peer reaches by RDMA: its address in the owner's address space, its
/// length and its remote key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Remote key.
    pub rkey: u32,
}

/// A peer's queue pairs, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerQps {
    /// The peer's largest message of the test's operation.
    pub max_msg_sz: u64,
    /// One address per stream.
    pub qps: Vec<QpAddress>,
    /// The region RDMA tests reach, when the peer gave one.
    pub region: Option<Region>,
}

/// Checks a peer's queue-pair addresses: one per stream, every QP number and PSN in 24 bits,
/// a largest message of at least one byte, and a region (if any) of at least one byte that does
/// not wrap the address space.
pub fn check_qps(msg: Msg, streams: u32) -> Result<PeerQps, ControlError> {
    let Msg::Qps {
        max_msg_sz,
        qps,
        region,
    } = msg
    else {
        return Err(ControlError::OutOfTurn(format!(
            "expected queue-pair addresses, got {msg:?}"
        )));
    };
    if qps.len() != streams as usize {
        return Err(ControlError::OutOfTurn(format!(
            "peer gave {} queue pairs for {streams} streams",
            qps.len()
        )));
    }
    if max_msg_sz == 0 || qps.iter().any(|q| q.qpn > 0x00ff_ffff) {
        return Err(ControlError::OutOfTurn(
            "peer gave a QP number over 24 bits or a largest message of 0 bytes".into(),
        ));
    }
    if let Some(r) = region {
        if r.len == 0 || r.addr.checked_add(r.len).is_none() {
            return Err(ControlError::OutOfTurn(format!(
                "peer gave a region of {} bytes at {:#x}",
                r.len, r.addr
            )));
        }
    }
    Ok(PeerQps {
        max_msg_sz,
        qps,
        region,
    })
}

/// What a server-side stream reports back.
#[derive(Debug, Serialize, Deserialize)]
pub struct StreamSummary {
    /// Operations completed.
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// When the stream ended, microseconds after the start.
    pub end_us: u64,
    /// Completion events: (microseconds after the start, operations, bytes).
    pub events: Vec<(u64, u64, u64)>,
}

/// Why a control line could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// End of stream before any byte of a line.
    #[error("closed the control connection")]
    Closed,
    /// End of stream inside a line.
    #[error("closed the control connection mid-message")]
    Truncated,
    /// The line is longer than the limit.
    #[error("sent a control message longer than {0} bytes")]
    TooLong(usize),
    /// The line is not UTF-8.
    #[error("sent a control message that is not UTF-8")]
    NotUtf8,
    /// The read failed (a timeout among others: see [`io::Error::kind`]).
    #[error(transparent)]
    Io(io::Error),
}

/// Reads one `\n`-terminated line of at most `max_line` bytes (the newline included). Reads at
/// most `max_line + 1` bytes, so a client cannot make the reader buffer more.
pub fn read_line<R: BufRead>(reader: &mut R, max_line: usize) -> Result<String, LineError> {
    let mut line = String::new();
    let limit = max_line as u64 + 1;
    match reader.take(limit).read_line(&mut line) {
        Ok(0) => Err(LineError::Closed),
        Ok(n) if n > max_line => Err(LineError::TooLong(max_line)),
        Ok(_) if line.ends_with('\n') => Ok(line),
        Ok(_) => Err(LineError::Truncated),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Err(LineError::NotUtf8),
        Err(e) => Err(LineError::Io(e)),
    }
}

/// Why a client's message is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// Not a control message.
    #[error("bad control message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The peer gave up.
    #[error("{0}")]
    Peer(String),
    /// A message out of turn.
    #[error("{0}")]
    OutOfTurn(String),
    /// Another protocol version.
    #[error("client speaks control protocol {0}, this server {PROTOCOL}")]
    Protocol(u32),
    /// The client runs another test.
    #[error(
        "client runs {client:?} but this server was started for {server:?} \
         (start both sides with the same test)"
    )]
    OtherTest {
        /// The client's test.
        client: (Verb, Metric),
        /// The server's.
        server: (Verb, Metric),
    },
    /// The memory asked for is out of bounds.
    #[error(
        "client asks for {streams} stripes of {stripe} bytes ({total} bytes); this server registers \
         between 1 byte and {SERVER_MAX_MEMORY} bytes (lower -s, -t or -q)"
    )]
    Memory {
        /// Streams asked for.
        streams: u32,
        /// Bytes per stream.
        stripe: u64,
        /// Their product (saturated).
        total: u64,
    },
    /// A message size that does not fit the stripes.
    #[error("client asks for {size}-byte messages in {stripe}-byte stripes")]
    Size {
        /// Message size asked for.
        size: u64,
        /// Stripe size agreed in the hello.
        stripe: u64,
    },
}

/// Decodes one control line; a peer's [`Msg::Error`] becomes [`ControlError::Peer`].
pub fn parse(line: &str) -> Result<Msg, ControlError> {
    match serde_json::from_str(line)? {
        Msg::Error { message } => Err(ControlError::Peer(message)),
        m => Ok(m),
    }
}

/// A client's hello, validated by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The fabric the client runs over (checked against the server's by the caller).
    pub fabric: String,
    /// Streams (queue pairs), at least 1.
    pub streams: u32,
    /// Operations in flight per stream.
    pub depth: u32,
    /// Both directions at once.
    pub bidirectional: bool,
    /// Bytes per stream, at least 1; `stripe * streams` is at most [`SERVER_MAX_MEMORY`].
    pub stripe: u64,
    /// The client runs the test straight on the efa crate (`--raw`).
    pub raw: bool,
    /// Bytes each stream cycles its messages through (`--cycle-buffer`).
    pub cycle_buffer: Option<u64>,
}

/// Checks the first message of a client against the server's test.
pub fn check_hello(msg: Msg, verb: Verb, metric: Metric) -> Result<Hello, ControlError> {
    let Msg::Hello {
        protocol,
        fabric,
        verb: cverb,
        metric: cmetric,
        streams,
        depth,
        bidirectional,
        stripe,
        raw,
        cycle_buffer,
    } = msg
    else {
        return Err(ControlError::OutOfTurn(
            "client did not start with hello".into(),
        ));
    };
    if protocol != PROTOCOL {
        return Err(ControlError::Protocol(protocol));
    }
    if (cverb, cmetric) != (verb, metric) {
        return Err(ControlError::OtherTest {
            client: (cverb, cmetric),
            server: (verb, metric),
        });
    }
    let total = stripe.saturating_mul(streams as u64);
    if stripe == 0 || streams == 0 || total > SERVER_MAX_MEMORY {
        return Err(ControlError::Memory {
            streams,
            stripe,
            total,
        });
    }
    Ok(Hello {
        fabric,
        streams,
        depth,
        bidirectional,
        stripe,
        raw,
        cycle_buffer,
    })
}

/// What a client asks for once linked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// One run of `size`-byte messages (`1..=stripe`).
    Run {
        /// Message size.
        size: u64,
        /// How long.
        amount: RunAmount,
    },
    /// The client is done.
    Bye,
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAmount {
    /// This many operations per stream.
    Iterations(u64),
    /// This many milliseconds.
    Millis(u64),
}

/// Checks a client's message between runs against the agreed `stripe`.
pub fn check_step(msg: Msg, stripe: u64) -> Result<Step, ControlError> {
    let (size, amount) = match msg {
        Msg::Run {
            size,
            iterations: Some(n),
            ..
        } => (size, RunAmount::Iterations(n)),
        Msg::Run {
            size,
            duration_ms: Some(ms),
            ..
        } => (size, RunAmount::Millis(ms)),
        Msg::Bye => return Ok(Step::Bye),
        other => return Err(ControlError::OutOfTurn(format!("unexpected {other:?}"))),
    };
    if size == 0 || size > stripe {
        return Err(ControlError::Size { size, stripe });
    }
    Ok(Step::Run { size, amount })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(stripe: u64, streams: u32) -> String {
        serde_json::to_string(&Msg::Hello {
            protocol: PROTOCOL,
            fabric: "tcp".into(),
            verb: Verb::Write,
            metric: Metric::Bw,
            streams,
            depth: 8,
            bidirectional: false,
            stripe,
            raw: false,
            cycle_buffer: Some(4096),
        })
        .unwrap()
    }

    #[test]
    fn lines_are_bounded() {
        let mut r = io::Cursor::new(b"abc\ndefgh\nij".to_vec());
        assert_eq!(read_line(&mut r, 4).unwrap(), "abc\n");
        assert!(matches!(read_line(&mut r, 4), Err(LineError::TooLong(4))));
        let mut r = io::Cursor::new(b"ij".to_vec());
        assert!(matches!(read_line(&mut r, 4), Err(LineError::Truncated)));
        assert!(matches!(read_line(&mut r, 4), Err(LineError::Closed)));
        let mut r = io::Cursor::new(b"\xff\n".to_vec());
        assert!(matches!(read_line(&mut r, 4), Err(LineError::NotUtf8)));
    }

    #[test]
    fn hello_is_checked() {
        let h = check_hello(parse(&hello(4096, 2)).unwrap(), Verb::Write, Metric::Bw).unwrap();
        assert_eq!((h.stripe, h.streams, h.fabric.as_str()), (4096, 2, "tcp"));
        assert!(!h.raw);
        assert_eq!(h.cycle_buffer, Some(4096));
        // A hello without `raw` (an older client) runs through the engine, without `cycle_buffer`
        // a place per message in flight; both are carried.
        let old = r#"{"msg":"hello","protocol":1,"fabric":"efa","verb":"read","metric":"lat","streams":1,"depth":1,"bidirectional":false,"stripe":64}"#;
        let h = check_hello(parse(old).unwrap(), Verb::Read, Metric::Lat).unwrap();
        assert!(!h.raw);
        assert_eq!(h.cycle_buffer, None);
        let raw = old.replace("\"stripe\":64", "\"stripe\":64,\"raw\":true");
        assert!(
            check_hello(parse(&raw).unwrap(), Verb::Read, Metric::Lat)
                .unwrap()
                .raw
        );
        for (stripe, streams) in [(0, 1), (1, 0), (SERVER_MAX_MEMORY, 2), (u64::MAX, u32::MAX)] {
            let m = parse(&hello(stripe, streams)).unwrap();
            assert!(matches!(
                check_hello(m, Verb::Write, Metric::Bw),
                Err(ControlError::Memory { .. })
            ));
        }
        let m = parse(&hello(4096, 1)).unwrap();
        assert!(matches!(
            check_hello(m, Verb::Read, Metric::Bw),
            Err(ControlError::OtherTest { .. })
        ));
        assert!(matches!(
            check_hello(Msg::Bye, Verb::Read, Metric::Bw),
            Err(ControlError::OutOfTurn(_))
        ));
        assert!(matches!(parse("{"), Err(ControlError::Malformed(_))));
        assert!(matches!(
            parse(r#"{"msg":"error","message":"no"}"#),
            Err(ControlError::Peer(m)) if m == "no"
        ));
    }

    #[test]
    fn qp_addresses_are_checked() {
        let qp = QpAddress {
            gid: [0xfe; 16],
            qpn: 7,
            qkey_or_psn: 0x1111_1111,
            lid: 0,
        };
        let with = |max_msg_sz, qps: Vec<QpAddress>, region| {
            let line = serde_json::to_string(&Msg::Qps {
                max_msg_sz,
                qps,
                region,
            })
            .unwrap();
            parse(&line).unwrap()
        };
        let msg = |max_msg_sz, qps| with(max_msg_sz, qps, None);
        let got = check_qps(msg(8928, vec![qp, qp]), 2).unwrap();
        assert_eq!(
            (got.max_msg_sz, got.qps, got.region),
            (8928, vec![qp, qp], None)
        );
        let region = Region {
            addr: 0x7f00_0000_0000,
            len: 4096,
            rkey: 9,
        };
        let got = check_qps(with(8928, vec![qp], Some(region)), 1).unwrap();
        assert_eq!(got.region, Some(region));
        for bad in [
            Region { len: 0, ..region },
            Region {
                addr: u64::MAX - 10,
                ..region
            },
        ] {
            assert!(check_qps(with(8928, vec![qp], Some(bad)), 1).is_err());
        }
        assert!(check_qps(msg(8928, vec![qp]), 2).is_err());
        assert!(check_qps(msg(0, vec![qp]), 1).is_err());
        let wide = QpAddress { qpn: 1 << 24, ..qp };
        assert!(check_qps(msg(8928, vec![wide]), 1).is_err());
        assert!(matches!(
            check_qps(Msg::Linked, 1),
            Err(ControlError::OutOfTurn(_))
        ));
    }

    #[test]
    fn steps_are_checked() {
        let run = |size, it: Option<u64>, ms: Option<u64>| Msg::Run {
            size,
            iterations: it,
            duration_ms: ms,
        };
        assert_eq!(
            check_step(run(64, Some(5), None), 64).unwrap(),
            Step::Run {
                size: 64,
                amount: RunAmount::Iterations(5)
            }
        );
        assert_eq!(
            check_step(run(1, None, Some(9)), 64).unwrap(),
            Step::Run {
                size: 1,
                amount: RunAmount::Millis(9)
            }
        );
        assert!(matches!(
            check_step(run(65, Some(1), None), 64),
            Err(ControlError::Size { .. })
        ));
        assert!(matches!(
            check_step(run(0, Some(1), None), 64),
            Err(ControlError::Size { .. })
        ));
        assert!(matches!(
            check_step(run(8, None, None), 64),
            Err(ControlError::OutOfTurn(_))
        ));
        assert_eq!(check_step(Msg::Bye, 64).unwrap(), Step::Bye);
    }
}
