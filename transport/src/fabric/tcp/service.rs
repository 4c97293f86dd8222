//! The target side: a listener thread and one service thread per data connection.
//!
//! A service thread reads request frames, checks each against the registration table (key,
//! bounds, rights) and only then moves bytes: a WRITE payload is read straight into the
//! registered memory, a READ is answered with one `writev` of header and registered memory.
//! A request that fails the check gets an error response (a WRITE's payload is read and
//! dropped), so the stream stays in step. A malformed frame or a peer that stalls mid-frame
//! for longer than the fabric timeout closes that connection only.

use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::sys::{self, Piece};
use super::wire::{self, Op, Request, Response, REQ_LEN, RESP_LEN};
use super::{Shared, MAX_TRANSFER_LIMIT};
use crate::{Access, FailReason};

/// How often a blocked service thread wakes to check for shutdown and stalls.
const TICK: Duration = Duration::from_millis(100);
/// Receive buffer of a service thread (headers and small payloads land here first).
const RX_BUF: usize = 64 << 10;
/// Responses are gathered up to this size before they are written.
const TX_BUF: usize = 16 << 10;

#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("malformed frame: {0}")]
    Malformed(#[from] wire::WireError),
    #[error("request of {len} bytes exceeds the limit of {max}")]
    TooLong { len: u64, max: u64 },
    #[error("notify frame with {0} payload bytes")]
    NotifyPayload(u64),
    #[error("peer stalled mid-frame for {0:?}")]
    Stalled(Duration),
    #[error("connection closed mid-frame")]
    Truncated,
    #[error("fabric shutting down")]
    Shutdown,
    #[error("hello refused (status {0})")]
    Refused(u8),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

pub(crate) fn run_listener(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Acquire) {
            break;
        }
        match conn {
            Ok(sock) => {
                shared.stats.connections.fetch_add(1, Relaxed);
                if !admit(&shared) {
                    refuse_busy(sock);
                    continue;
                }
                let s = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("tcp-service".into())
                    .spawn(move || serve(sock, Admitted::new(s)));
                if let Err(e) = spawned {
                    log::warn!("tcp fabric: cannot start a service thread: {e}");
                    shared.stats.greeting.fetch_sub(1, AcqRel);
                    shared.stats.serving.fetch_sub(1, AcqRel);
                }
            }
            Err(e) => {
                log::warn!("tcp fabric: accept failed: {e}");
                std::thread::sleep(TICK);
            }
        }
    }
}

/// Counts a new connection in, unless the connection limit (or the share of it for
/// connections still waiting for their hello) is reached. Only the listener thread adds.
fn admit(shared: &Shared) -> bool {
    let max = shared.config.max_connections;
    let max_greeting = (max / 4).max(1);
    let st = &shared.stats;
    if st.serving.load(Acquire) >= max || st.greeting.load(Acquire) >= max_greeting {
        st.refused.fetch_add(1, Relaxed);
        return false;
    }
    st.serving.fetch_add(1, AcqRel);
    st.greeting.fetch_add(1, AcqRel);
    true
}

/// Answers a connection over the limit with a `HELLO_BUSY` reply (without waiting for its
/// hello) and closes it. Never blocks the listener: the reply is 16 bytes on a new socket.
fn refuse_busy(sock: TcpStream) {
    log::warn!(
        "tcp fabric: refusing a connection from {:?}: at the connection limit",
        sock.peer_addr().ok()
    );
    if sock.set_nonblocking(true).is_ok() {
        let _ = (&sock).write(&wire::encode_hello_reply(wire::HELLO_BUSY, 0));
        let _ = sock.shutdown(std::net::Shutdown::Write);
        // Unread input (the hello) would turn the close into a reset that can discard the
        // reply: drop what has arrived, without waiting for more.
        let mut buf = [0u8; 64];
        for _ in 0..4 {
            if !matches!((&sock).read(&mut buf), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// A connection counted by `admit`: uncounted when dropped (unwinding included).
struct Admitted {
    shared: Arc<Shared>,
    greeting: bool,
}

impl Admitted {
    fn new(shared: Arc<Shared>) -> Admitted {
        Admitted {
            shared,
            greeting: true,
        }
    }

    /// The hello was accepted: the connection no longer counts as waiting for it.
    fn greeted(&mut self) {
        if std::mem::replace(&mut self.greeting, false) {
            self.shared.stats.greeting.fetch_sub(1, AcqRel);
        }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.greeted();
        self.shared.stats.serving.fetch_sub(1, AcqRel);
    }
}

fn serve(sock: TcpStream, mut admitted: Admitted) {
    let shared = admitted.shared.clone();
    let peer = sock
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    let mut conn = match Conn::new(sock, shared.clone()) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("tcp fabric: cannot set up connection from {peer}: {e}");
            return;
        }
    };
    match conn.run(&mut admitted) {
        Ok(()) | Err(ConnError::Shutdown) => log::debug!("tcp fabric: {peer} disconnected"),
        Err(
            e @ (ConnError::Malformed(_)
            | ConnError::TooLong { .. }
            | ConnError::NotifyPayload(_)
            | ConnError::Refused(_)),
        ) => {
            shared.stats.rejected.fetch_add(1, Relaxed);
            log::warn!("tcp fabric: closing connection from {peer}: {e}");
        }
        Err(e) => {
            shared.stats.dropped.fetch_add(1, Relaxed);
            log::info!("tcp fabric: closing connection from {peer}: {e}");
        }
    }
}

struct Conn {
    sock: TcpStream,
    shared: Arc<Shared>,
    rx: Box<[u8]>,
    start: usize,
    end: usize,
    tx: Vec<u8>,
    stall: Duration,
    /// While greeting: when the whole hello must have arrived.
    hello_by: Option<Instant>,
}

impl Conn {
    fn new(sock: TcpStream, shared: Arc<Shared>) -> io::Result<Conn> {
        sock.set_nodelay(true)?;
        sock.set_read_timeout(Some(TICK))?;
        sock.set_write_timeout(Some(TICK))?;
        if let Some(b) = shared.config.socket_buffer {
            sys::set_buffers(&sock, b)?;
        }
        let stall = shared.config.timeout;
        Ok(Conn {
            sock,
            shared,
            rx: vec![0; RX_BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            tx: Vec::with_capacity(TX_BUF + RESP_LEN),
            stall,
            hello_by: None,
        })
    }

    fn buffered(&self) -> usize {
        self.end - self.start
    }

    fn check_stop(&self) -> Result<(), ConnError> {
        if self.shared.stop.load(Acquire) {
            Err(ConnError::Shutdown)
        } else {
            Ok(())
        }
    }

    /// Makes at least `need` bytes available in `rx`. `Ok(false)` means a clean close between
    /// frames (`idle` and nothing buffered).
    fn fill(&mut self, need: usize, idle: bool) -> Result<bool, ConnError> {
        if self.buffered() >= need {
            return Ok(true);
        }
        // About to wait for the peer: let it see the responses so far first.
        self.flush()?;
        if self.start > 0 {
            self.rx.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let mut last = Instant::now();
        while self.end < need {
            if self.hello_by.is_some_and(|t| Instant::now() >= t) {
                return Err(ConnError::Stalled(self.shared.config.connect_timeout));
            }
            match self.sock.read(&mut self.rx[self.end..]) {
                Ok(0) if idle && self.end == 0 => return Ok(false),
                Ok(0) => return Err(ConnError::Truncated),
                Ok(n) => {
                    self.end += n;
                    last = Instant::now();
                }
                Err(e) if sys::would_block(&e) => {
                    self.check_stop()?;
                    // Between frames a connection may idle for as long as it likes.
                    if !(idle && self.end == 0) && last.elapsed() > self.stall {
                        return Err(ConnError::Stalled(self.stall));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Moves `len` payload bytes into `dst` (or drops them when `dst` is null).
    fn take_payload(&mut self, dst: *mut u8, len: u64) -> Result<(), ConnError> {
        let mut left = len as usize;
        let mut at = 0usize;
        let n = self.buffered().min(left);
        if n > 0 {
            if !dst.is_null() {
                // SAFETY: `dst..dst+len` was checked against a live registration allowing
                // writes, which the caller's guard keeps alive; `rx` is our own buffer.
                unsafe { std::ptr::copy_nonoverlapping(self.rx[self.start..].as_ptr(), dst, n) };
            }
            self.start += n;
            at += n;
            left -= n;
        }
        let mut last = Instant::now();
        while left > 0 {
            let piece = if dst.is_null() {
                let m = left.min(self.rx.len());
                Piece {
                    ptr: self.rx.as_mut_ptr(),
                    len: m,
                }
            } else {
                Piece {
                    ptr: dst.wrapping_add(at),
                    len: left,
                }
            };
            // SAFETY: the piece is either our own buffer or checked registered memory (above).
            match unsafe { sys::readv(&self.sock, &[piece]) } {
                Ok(0) => return Err(ConnError::Truncated),
                Ok(n) => {
                    at += n;
                    left -= n;
                    last = Instant::now();
                }
                Err(e) if sys::would_block(&e) => {
                    self.check_stop()?;
                    if last.elapsed() > self.stall {
                        return Err(ConnError::Stalled(self.stall));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Writes all pieces (after any gathered responses).
    fn send(&mut self, tail: &[Piece]) -> Result<(), ConnError> {
        let mut pieces = [Piece::EMPTY; 4];
        pieces[0] = Piece {
            ptr: self.tx.as_mut_ptr(),
            len: self.tx.len(),
        };
        let n = tail.len().min(3);
        pieces[1..1 + n].copy_from_slice(&tail[..n]);
        let mut pieces = &mut pieces[..1 + n];
        let mut last = Instant::now();
        while pieces.iter().any(|p| p.len > 0) {
            // SAFETY: `tx` is ours; the tail pieces are our header buffers or checked
            // registered memory held by the caller's guard.
            match unsafe { sys::writev(&self.sock, pieces) } {
                Ok(mut n) => {
                    last = Instant::now();
                    for p in pieces.iter_mut() {
                        let k = n.min(p.len);
                        p.ptr = p.ptr.wrapping_add(k);
                        p.len -= k;
                        n -= k;
                    }
                    while pieces.first().is_some_and(|p| p.len == 0) && pieces.len() > 1 {
                        pieces = &mut pieces[1..];
                    }
                }
                Err(e) if sys::would_block(&e) => {
                    self.check_stop()?;
                    if last.elapsed() > self.stall {
                        return Err(ConnError::Stalled(self.stall));
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.tx.clear();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ConnError> {
        if self.tx.is_empty() {
            Ok(())
        } else {
            self.send(&[])
        }
    }

    fn respond(&mut self, token: u64, status: Result<(), FailReason>) -> Result<(), ConnError> {
        let mut hdr = [0u8; RESP_LEN];
        Response {
            status: wire::status_of(status),
            token,
            len: 0,
        }
        .encode(&mut hdr);
        self.tx.extend_from_slice(&hdr);
        if self.tx.len() >= TX_BUF {
            self.flush()?;
        }
        Ok(())
    }

    fn hello(&mut self) -> Result<bool, ConnError> {
        // The whole hello is due within the connect timeout: a silent or trickling
        // connection may not hold a thread for longer.
        self.hello_by = Instant::now().checked_add(self.shared.config.connect_timeout);
        let filled = self.fill(wire::HELLO_LEN, false);
        self.hello_by = None;
        if !filled? {
            return Ok(false);
        }
        let mut h = [0u8; wire::HELLO_LEN];
        h.copy_from_slice(&self.rx[self.start..self.start + wire::HELLO_LEN]);
        self.start += wire::HELLO_LEN;
        let (rail, instance) = wire::decode_hello(&h)?;
        let mine = self.shared.instance;
        let status = if instance != mine {
            wire::HELLO_WRONG_INSTANCE
        } else if rail >= self.shared.config.rails {
            wire::HELLO_BAD_RAIL
        } else {
            wire::HELLO_OK
        };
        let reply = wire::encode_hello_reply(status, mine);
        self.sock.write_all(&reply)?;
        if status != wire::HELLO_OK {
            return Err(ConnError::Refused(status));
        }
        Ok(true)
    }

    fn run(&mut self, admitted: &mut Admitted) -> Result<(), ConnError> {
        if !self.hello()? {
            return Ok(());
        }
        admitted.greeted();
        let max = self.shared.config.max_transfer_size;
        // One handle for the life of the connection, passed down by reference: the guards
        // borrow from it while `self` is borrowed mutably, with no per-request refcounting.
        let shared = self.shared.clone();
        loop {
            if !self.fill(REQ_LEN, true)? {
                return Ok(());
            }
            let mut h = [0u8; REQ_LEN];
            h.copy_from_slice(&self.rx[self.start..self.start + REQ_LEN]);
            self.start += REQ_LEN;
            let req = Request::decode(&h)?;
            if req.len > MAX_TRANSFER_LIMIT {
                return Err(ConnError::TooLong {
                    len: req.len,
                    max: MAX_TRANSFER_LIMIT,
                });
            }
            match req.op {
                Op::Write | Op::WriteNotify | Op::Read if req.len > max => self.over_limit(&req)?,
                Op::Write | Op::WriteNotify => self.write(&shared, &req)?,
                Op::Read => self.read(&shared, &req)?,
                Op::Notify => {
                    if req.len != 0 {
                        return Err(ConnError::NotifyPayload(req.len));
                    }
                    let recorded = self
                        .shared
                        .notifications
                        .get()
                        .is_some_and(|n| n.record(req.tag));
                    let status = if recorded {
                        Ok(())
                    } else {
                        Err(FailReason::RemoteAbort)
                    };
                    self.count(status);
                    self.respond(req.token, status)?;
                }
            }
        }
    }

    fn count(&self, status: Result<(), FailReason>) {
        let c = if status.is_ok() {
            &self.shared.stats.served
        } else {
            &self.shared.stats.denied
        };
        c.fetch_add(1, Relaxed);
    }

    /// Answers a request larger than this fabric's `max_transfer_size` (a WRITE's payload is
    /// read and dropped), keeping the stream in step.
    fn over_limit(&mut self, req: &Request) -> Result<(), ConnError> {
        if req.op.has_payload() {
            self.take_payload(std::ptr::null_mut(), req.len)?;
        }
        let status = Err(FailReason::ExceedsPeerLimit);
        self.count(status);
        self.respond(req.token, status)
    }

    /// A WRITE's payload placed; a WRITE_NOTIFY's tag then counted, and refused (nothing
    /// placed) when this engine cannot count it.
    fn write(&mut self, shared: &Shared, req: &Request) -> Result<(), ConnError> {
        let notifications = match req.op {
            Op::WriteNotify => shared
                .notifications
                .get()
                .filter(|n| req.tag < n.tags())
                .ok_or(FailReason::RemoteAbort)
                .map(Some),
            _ => Ok(None),
        };
        let checked = notifications.and_then(|n| {
            shared
                .regions
                .acquire(req.key, req.addr, req.len, Access::REMOTE_WRITE)
                .map(|guard| (guard, n))
        });
        let status = match checked {
            Ok((_guard, notifications)) => {
                self.take_payload(req.addr as *mut u8, req.len)?;
                if let Some(n) = notifications {
                    n.record(req.tag);
                }
                Ok(())
            }
            Err(reason) => {
                self.take_payload(std::ptr::null_mut(), req.len)?;
                Err(reason)
            }
        };
        self.count(status);
        self.respond(req.token, status)
    }

    fn read(&mut self, shared: &Shared, req: &Request) -> Result<(), ConnError> {
        let checked = shared
            .regions
            .acquire(req.key, req.addr, req.len, Access::REMOTE_READ);
        match checked {
            Ok(_guard) => {
                self.count(Ok(()));
                let mut hdr = [0u8; RESP_LEN];
                Response {
                    status: 0,
                    token: req.token,
                    len: req.len,
                }
                .encode(&mut hdr);
                self.send(&[
                    Piece {
                        ptr: hdr.as_mut_ptr(),
                        len: RESP_LEN,
                    },
                    Piece {
                        ptr: req.addr as *mut u8,
                        len: req.len as usize,
                    },
                ])
            }
            Err(reason) => {
                self.count(Err(reason));
                self.respond(req.token, Err(reason))
            }
        }
    }
}
