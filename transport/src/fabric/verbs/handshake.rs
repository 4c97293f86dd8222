//! The connection handshake of the `verbs` fabric, over TCP to the target's connection service.
//!
//! The initiator sends its instance id, its per-rail [`RailAddress`]es, and one [`QpAddress`]
//! per queue pair it created for the target (`slots x initiator rails x target rails`, in that
//! order); the target creates as many QPs of its own, connects them, and answers with their
//! addresses in the same order. Once the initiator has connected its QPs too it confirms
//! ([`confirm`]): from then on the target may post on its ends as well (each connection carries
//! both directions). Messages are length-prefixed (u32), versioned and checked like every
//! address; a malformed message is refused, never trusted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::addr::{QpAddress, RailAddress, QP_ADDRESS_LEN};
use crate::fabric::rdma::codec::{Reader, Writer};
use crate::FabricError;

const MAGIC: &[u8; 2] = b"VH";
const VERSION: u8 = 2;
const KIND_REQUEST: u8 = 1;
const KIND_ACCEPTED: u8 = 2;
const KIND_REFUSED: u8 = 3;
const KIND_CONNECTED: u8 = 4;
/// Largest message either side accepts.
pub(crate) const MAX_MESSAGE: usize = 1 << 20;

/// What the initiator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    /// The initiator's per-rail addresses (its engine's published ones).
    pub rails: Vec<RailAddress>,
    /// Endpoint slots the initiator connects.
    pub slots: u16,
    /// The target's rail count, as the initiator read it from the target's addresses.
    pub target_rails: u16,
    /// `slots x rails.len() x target_rails` QPs, slot-major.
    pub qps: Vec<QpAddress>,
}

/// The target's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Response {
    /// The target's QPs, in the request's order.
    Accepted(Vec<QpAddress>),
    /// Why the target refused.
    Refused(String),
}

fn bad(reason: impl Into<String>) -> FabricError {
    FabricError::BadAddress {
        rail: 0,
        reason: reason.into(),
    }
}

fn put_qps(mut w: Writer, qps: &[QpAddress]) -> Writer {
    w = w.u32(qps.len() as u32);
    for q in qps {
        w = w.bytes(&q.encode());
    }
    w
}

fn get_qps(r: &mut Reader<'_>, max: usize) -> Result<Vec<QpAddress>, FabricError> {
    let n = r.u32()? as usize;
    if n > max {
        return Err(r.error(format!("{n} QP addresses, at most {max} allowed")));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let raw: [u8; QP_ADDRESS_LEN] = r.array()?;
        out.push(QpAddress::decode(0, &raw)?);
    }
    Ok(out)
}

/// Position of a QP in a handshake's lists: slot-major, then initiator rail, then target rail.
pub(crate) fn qp_position(
    slot: usize,
    initiator_rail: usize,
    target_rail: usize,
    initiator_rails: usize,
    target_rails: usize,
) -> usize {
    (slot * initiator_rails + initiator_rail) * target_rails + target_rail
}

impl Request {
    pub(crate) fn expected_qps(&self) -> usize {
        usize::from(self.slots) * self.rails.len() * usize::from(self.target_rails)
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(64 + self.qps.len() * QP_ADDRESS_LEN)
            .bytes(MAGIC)
            .u8(VERSION)
            .u8(KIND_REQUEST)
            .u16(self.slots)
            .u16(self.target_rails)
            .u16(self.rails.len() as u16);
        for r in &self.rails {
            w = w.bytes(&r.encode());
        }
        put_qps(w, &self.qps).finish()
    }

    pub(crate) fn decode(bytes: &[u8]) -> Result<Request, FabricError> {
        let mut r = Reader::new(bytes, 0, "verbs handshake request");
        r.header(MAGIC, VERSION)?;
        let kind = r.u8()?;
        if kind != KIND_REQUEST {
            return Err(r.error(format!("message kind {kind}, expected a request")));
        }
        let slots = r.u16()?;
        let target_rails = r.u16()?;
        let n = usize::from(r.u16()?);
        if n == 0 || n > crate::fabric::MAX_RAILS || slots == 0 || slots > 64 || target_rails == 0 {
            return Err(r.error(format!(
                "{n} rails, {slots} slots, {target_rails} target rails"
            )));
        }
        let mut raw = Vec::with_capacity(n);
        for _ in 0..n {
            let a: [u8; super::addr::RAIL_ADDRESS_LEN] = r.array()?;
            raw.push(a.to_vec());
        }
        let rails = RailAddress::decode_all(&raw)?;
        let max = usize::from(slots) * n * usize::from(target_rails);
        let qps = get_qps(&mut r, max)?;
        r.end()?;
        let req = Request {
            rails,
            slots,
            target_rails,
            qps,
        };
        if req.qps.len() != req.expected_qps() {
            return Err(bad(format!(
                "handshake lists {} QPs, expected {}",
                req.qps.len(),
                req.expected_qps()
            )));
        }
        Ok(req)
    }
}

impl Response {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let w = Writer::with_capacity(64).bytes(MAGIC).u8(VERSION);
        match self {
            Response::Accepted(qps) => put_qps(w.u8(KIND_ACCEPTED), qps).finish(),
            Response::Refused(why) => {
                let msg = &why.as_bytes()[..why.len().min(4096)];
                w.u8(KIND_REFUSED).u32(msg.len() as u32).bytes(msg).finish()
            }
        }
    }

    pub(crate) fn decode(bytes: &[u8], expected: usize) -> Result<Response, FabricError> {
        let mut r = Reader::new(bytes, 0, "verbs handshake response");
        r.header(MAGIC, VERSION)?;
        let out = match r.u8()? {
            KIND_ACCEPTED => {
                let qps = get_qps(&mut r, expected)?;
                if qps.len() != expected {
                    return Err(r.error(format!("{} QPs, expected {expected}", qps.len())));
                }
                Response::Accepted(qps)
            }
            KIND_REFUSED => {
                let n = r.u32()? as usize;
                if n > 4096 {
                    return Err(r.error(format!("refusal of {n} bytes")));
                }
                let mut msg = Vec::with_capacity(n);
                for _ in 0..n {
                    msg.push(r.u8()?);
                }
                Response::Refused(String::from_utf8_lossy(&msg).into_owned())
            }
            k => return Err(r.error(format!("message kind {k}"))),
        };
        r.end()?;
        Ok(out)
    }
}

/// Writes one length-prefixed message.
pub(crate) fn send(stream: &mut TcpStream, body: &[u8]) -> std::io::Result<()> {
    stream.write_all(&(body.len() as u32).to_le_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

/// Reads one length-prefixed message of at most [`MAX_MESSAGE`] bytes.
pub(crate) fn receive(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("message of {len} bytes exceeds {MAX_MESSAGE}"),
        ));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(body)
}

/// The initiator's last message: its QPs are connected (ready to receive).
pub(crate) fn connected_message() -> Vec<u8> {
    Writer::with_capacity(4)
        .bytes(MAGIC)
        .u8(VERSION)
        .u8(KIND_CONNECTED)
        .finish()
}

/// Whether `bytes` is the initiator's [`connected_message`].
pub(crate) fn is_connected_message(bytes: &[u8]) -> bool {
    let mut r = Reader::new(bytes, 0, "verbs handshake confirmation");
    r.header(MAGIC, VERSION).is_ok() && matches!(r.u8(), Ok(KIND_CONNECTED)) && r.end().is_ok()
}

/// Tells the target over the handshake's stream that the initiator's QPs are connected, and
/// waits (up to the stream's timeout) for its answer: by then the target has settled whether it
/// posts on its ends too. Best effort: without it the target only leaves its ends unused for
/// sending.
pub(crate) fn confirm(mut stream: TcpStream) {
    if send(&mut stream, &connected_message()).is_ok() {
        let _ = receive(&mut stream);
    }
}

/// Runs the initiator's side: sends `req` to the service at `at`, returns the target's QPs
/// and the stream to [`confirm`] on.
pub(crate) fn exchange(
    at: SocketAddr,
    req: &Request,
    timeout: Duration,
) -> Result<(Vec<QpAddress>, TcpStream), FabricError> {
    let io = |what: &str, e: std::io::Error| {
        FabricError::os("verbs", format_args!("handshake with {at}: {what}"), e)
    };
    let mut s = TcpStream::connect_timeout(&at, timeout).map_err(|e| io("connect", e))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| io("socket", e))?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| io("socket", e))?;
    let _ = s.set_nodelay(true);
    send(&mut s, &req.encode()).map_err(|e| io("send", e))?;
    let body = receive(&mut s).map_err(|e| io("receive", e))?;
    match Response::decode(&body, req.expected_qps())? {
        Response::Accepted(qps) => Ok((qps, s)),
        Response::Refused(why) => Err(FabricError::Refused {
            fabric: "verbs",
            peer: at.to_string(),
            reason: why,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::efa::{Gid, Mtu};
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn rail(i: u16) -> RailAddress {
        RailAddress {
            rail: i,
            instance: 42,
            gid: Gid([i as u8; 16]),
            lid: 0,
            mtu: Mtu::Mtu1024,
            rd_atomic: 16,
            ip: Ipv4Addr::LOCALHOST,
            port: 4000,
        }
    }

    fn qp(n: u32) -> QpAddress {
        QpAddress {
            qpn: n,
            psn: n + 1,
            gid: Gid([9; 16]),
            lid: 0,
            mtu: Mtu::Mtu1024,
            rd_atomic: 16,
        }
    }

    #[test]
    fn request_and_response_round_trip() {
        let req = Request {
            rails: vec![rail(0), rail(1)],
            slots: 2,
            target_rails: 1,
            qps: (0..4).map(qp).collect(),
        };
        assert_eq!(Request::decode(&req.encode()).unwrap(), req);
        let ok = Response::Accepted((10..14).map(qp).collect());
        assert_eq!(Response::decode(&ok.encode(), 4).unwrap(), ok);
        let no = Response::Refused("too many peers".into());
        assert_eq!(Response::decode(&no.encode(), 4).unwrap(), no);
    }

    #[test]
    fn qp_positions_agree_on_both_sides() {
        // The initiator lists QPs slot by slot, each slot's set local-rail-major (the order
        // `QpSet::qps` and the endpoint's indexing use), every position once.
        for (ir, tr, slots) in [(1, 1, 1), (2, 3, 2), (4, 1, 3), (1, 4, 4)] {
            let mut seen = std::collections::HashSet::new();
            for s in 0..slots {
                for i in 0..ir {
                    for t in 0..tr {
                        let p = qp_position(s, i, t, ir, tr);
                        assert_eq!(p, s * ir * tr + i * tr + t);
                        assert!(seen.insert(p));
                    }
                }
            }
            assert_eq!(seen.len(), slots * ir * tr);
        }
    }

    #[test]
    fn refuses_inconsistent_counts() {
        let req = Request {
            rails: vec![rail(0)],
            slots: 2,
            target_rails: 1,
            qps: (0..3).map(qp).collect(),
        };
        assert!(Request::decode(&req.encode()).is_err());
        let ok = Response::Accepted((0..3).map(qp).collect());
        assert!(Response::decode(&ok.encode(), 4).is_err());
    }

    #[test]
    fn exchange_against_a_socket_service() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let req = Request::decode(&receive(&mut s).unwrap()).unwrap();
            let answer: Vec<_> = req.qps.iter().map(|q| qp(q.qpn + 100)).collect();
            send(&mut s, &Response::Accepted(answer).encode()).unwrap();
            let confirmed = is_connected_message(&receive(&mut s).unwrap());
            send(&mut s, &connected_message()).unwrap();
            confirmed
        });
        let req = Request {
            rails: vec![rail(0)],
            slots: 1,
            target_rails: 2,
            qps: vec![qp(1), qp(2)],
        };
        let (got, stream) = exchange(at, &req, Duration::from_secs(5)).unwrap();
        assert_eq!(got, vec![qp(101), qp(102)]);
        confirm(stream);
        assert!(server.join().unwrap(), "the confirmation reads as one");
        assert!(!is_connected_message(&Response::Accepted(vec![]).encode()));
        assert!(!is_connected_message(
            &[connected_message(), vec![0]].concat()
        ));
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Request::decode(&bytes);
            let _ = Response::decode(&bytes, 3);
            let _ = is_connected_message(&bytes);
        }
    }
}
