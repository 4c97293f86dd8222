//! The initiator side: a worker's own connections, driven inside `post` and `poll`.
//!
//! Each endpoint owns one non-blocking stream per (peer, local rail), opened on first use.
//! `post` frames requests into the stream's preallocated ring and pushes bytes with one
//! gathered send; `poll` continues sends, reads responses (READ data lands straight in the
//! destination with `readv`) and reports completions. No I/O thread sits between the worker
//! and the socket, so there is no hand-off, no shared queue and no lock: the same shape as a
//! thread-owned QP. Steady-state `post`/`poll` allocate nothing; a stream's buffers are
//! allocated once when it is first used.
//!
//! Responses on one stream come back in request order (one service thread per connection),
//! so a response must carry the token of the oldest unanswered request, or the stream is
//! treated as corrupt and failed.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Instant;

use super::sys::{self, Piece, MAX_IOV};
use super::wire::{self, Op, Request, Response, REQ_LEN, RESP_LEN};
use super::{Peer, Shared};
use crate::fabric::{Completion, Endpoint, PeerId, WorkOp, WorkRequest};
use crate::FailReason;

/// Response bytes buffered per stream (READ data beyond what is buffered goes straight to its
/// destination).
const RX_BUF: usize = 16 << 10;
/// Fruitless polls before [`TcpEndpoint::wait_ready`] sleeps.
const IDLE_POLLS: u32 = 16;
/// Marks a completion that belongs to no stream (the request named an unknown peer).
const NO_STREAM: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Slot {
    wr: WorkRequest,
    hdr: [u8; REQ_LEN],
}

impl Slot {
    fn frame_len(&self) -> usize {
        let payload = if self.wr.op.writes() {
            self.wr.len as usize
        } else {
            0
        };
        REQ_LEN + payload
    }
}

struct Stream {
    peer: PeerId,
    rail: u16,
    remote_rail: u16,
    sock: Option<TcpStream>,
    ring: Box<[Slot]>,
    /// Oldest unanswered request.
    head: u64,
    /// Next request (partly) unsent.
    send: u64,
    /// Next free ring slot.
    tail: u64,
    /// Bytes of `ring[send]`'s frame already sent.
    send_off: usize,
    /// Ring slots plus completions not yet returned by `poll` (the send-queue occupancy).
    used: u32,
    rx: Box<[u8]>,
    rx_start: usize,
    rx_end: usize,
    /// READ data still to receive for `ring[head]`.
    data_left: u64,
    last_progress: Instant,
    /// When the stream last failed: no reconnect for `reconnect_backoff` after it, unless the
    /// peer was connected anew (`elapsed`, not a deadline sum, so any back-off is fine).
    failed_at: Option<Instant>,
    epoch_seen: u64,
}

type Comps = VecDeque<(Completion, u32)>;

impl Stream {
    fn cap(&self) -> u64 {
        self.ring.len() as u64
    }

    fn slot(&self, i: u64) -> &Slot {
        &self.ring[(i % self.cap()) as usize]
    }

    fn complete(&mut self, comps: &mut Comps, me: u32, error: Option<FailReason>) {
        let token = self.slot(self.head).wr.token;
        comps.push_back((Completion { token, error }, me));
        self.head += 1;
    }

    fn fail(&mut self, comps: &mut Comps, me: u32, reason: FailReason) {
        if self.head != self.tail {
            log::warn!(
                "tcp fabric: stream to peer {} rail {} failed ({reason}); failing {} requests",
                self.peer,
                self.rail,
                self.tail - self.head
            );
        }
        self.sock = None;
        while self.head != self.tail {
            self.complete(comps, me, Some(reason));
        }
        self.send = self.tail;
        self.send_off = 0;
        self.data_left = 0;
        self.rx_start = 0;
        self.rx_end = 0;
        self.failed_at = Some(Instant::now());
    }

    fn connect(&mut self, shared: &Shared, peer: &Peer) -> Result<(), FailReason> {
        let epoch = peer.epoch.load(Acquire);
        if let Some(t) = self.failed_at {
            if epoch == self.epoch_seen && t.elapsed() < shared.config.reconnect_backoff {
                return Err(FailReason::UnresponsiveRemote);
            }
        }
        self.epoch_seen = epoch;
        let addr = peer.addrs[self.remote_rail as usize];
        match open(shared, addr, self.remote_rail, peer.instance) {
            Ok(sock) => {
                self.sock = Some(sock);
                self.failed_at = None;
                Ok(())
            }
            Err(e) => {
                log::warn!(
                    "tcp fabric: cannot connect to peer {} at {addr}: {e}",
                    self.peer
                );
                self.failed_at = Some(Instant::now());
                Err(FailReason::UnreachableRemote)
            }
        }
    }

    /// Sends as much of the unsent frames as the socket takes. Returns whether bytes moved.
    fn pump_send(&mut self) -> io::Result<bool> {
        let Some(sock) = self.sock.as_ref() else {
            return Ok(false);
        };
        let mut moved = false;
        while self.send < self.tail {
            let mut pieces = [Piece::EMPTY; MAX_IOV];
            let mut n = 0;
            let mut i = self.send;
            let mut off = self.send_off;
            while i < self.tail && n + 2 <= MAX_IOV {
                let s = &self.ring[(i % self.cap()) as usize];
                if off < REQ_LEN {
                    pieces[n] = Piece {
                        ptr: s.hdr[off..].as_ptr() as *mut u8,
                        len: REQ_LEN - off,
                    };
                    n += 1;
                }
                if s.wr.op.writes() {
                    let done = off.saturating_sub(REQ_LEN);
                    pieces[n] = Piece {
                        ptr: (s.wr.local_addr as *mut u8).wrapping_add(done),
                        len: s.wr.len as usize - done,
                    };
                    n += 1;
                }
                off = 0;
                i += 1;
            }
            // SAFETY: headers live in our ring; payloads are the engine's registered memory,
            // valid until this request completes (the `register` contract), checked against
            // the local key at post time.
            match unsafe { sys::writev(sock, &pieces[..n]) } {
                Ok(mut k) => {
                    moved |= k > 0;
                    while k > 0 {
                        let left = self.slot(self.send).frame_len() - self.send_off;
                        if k >= left {
                            k -= left;
                            self.send += 1;
                            self.send_off = 0;
                        } else {
                            self.send_off += k;
                            k = 0;
                        }
                    }
                }
                Err(e) if sys::would_block(&e) => break,
                Err(e) => return Err(e),
            }
        }
        Ok(moved)
    }

    /// Reads responses. Returns whether bytes moved; `Err` fails the stream.
    fn pump_recv(&mut self, comps: &mut Comps, me: u32) -> Result<bool, FailReason> {
        let mut moved = false;
        loop {
            if self.head == self.send && self.data_left == 0 {
                return Ok(moved);
            }
            if self.data_left > 0 {
                match self.recv_payload(comps, me)? {
                    Some(m) => moved |= m,
                    None => return Ok(moved),
                }
                continue;
            }
            if self.take_response(comps, me)? {
                continue;
            }
            match self.fill_rx()? {
                Some(()) => moved = true,
                None => return Ok(moved),
            }
        }
    }

    /// Moves READ payload into the head request's destination: from the buffer, else straight
    /// from the socket (the rest of the read lands in the buffer). Completes the READ when its
    /// last byte is in. `None` when the socket has nothing now; else whether socket bytes moved.
    fn recv_payload(&mut self, comps: &mut Comps, me: u32) -> Result<Option<bool>, FailReason> {
        let wr = self.slot(self.head).wr;
        let dst = (wr.local_addr as *mut u8).wrapping_add((wr.len - self.data_left) as usize);
        let buffered = self.rx_end - self.rx_start;
        let mut moved = false;
        if buffered > 0 {
            let n = buffered.min(self.data_left as usize);
            // SAFETY: `dst..dst+n` lies in the READ's destination, registered memory
            // checked at post time and valid until completion; `rx` is ours.
            unsafe { std::ptr::copy_nonoverlapping(self.rx[self.rx_start..].as_ptr(), dst, n) };
            self.rx_start += n;
            self.data_left -= n as u64;
        } else {
            self.rx_start = 0;
            self.rx_end = 0;
            let pieces = [
                Piece {
                    ptr: dst,
                    len: self.data_left as usize,
                },
                Piece {
                    ptr: self.rx.as_mut_ptr(),
                    len: self.rx.len(),
                },
            ];
            let sock = self.sock.as_ref().ok_or(FailReason::UnresponsiveRemote)?;
            // SAFETY: as above for `dst`; the second piece is our buffer.
            match unsafe { sys::readv(sock, &pieces) } {
                Ok(0) => return Err(FailReason::UnresponsiveRemote),
                Ok(n) => {
                    moved = true;
                    let k = n.min(self.data_left as usize);
                    self.data_left -= k as u64;
                    self.rx_end = n - k;
                }
                Err(e) if sys::would_block(&e) => return Ok(None),
                Err(_) => return Err(FailReason::UnresponsiveRemote),
            }
        }
        if self.data_left == 0 {
            self.complete(comps, me, None);
        }
        Ok(Some(moved))
    }

    /// Decodes the head request's response when the buffer holds one: completes the request, or
    /// for a successful READ expects its payload next. Returns whether a response was taken.
    fn take_response(&mut self, comps: &mut Comps, me: u32) -> Result<bool, FailReason> {
        if self.rx_end - self.rx_start < RESP_LEN {
            return Ok(false);
        }
        let resp =
            Response::decode(&self.rx[self.rx_start..self.rx_start + RESP_LEN]).map_err(|e| {
                log::warn!(
                    "tcp fabric: malformed response from peer {}: {e}",
                    self.peer
                );
                FailReason::Io
            })?;
        self.rx_start += RESP_LEN;
        let wr = self.slot(self.head).wr;
        if resp.token != wr.token {
            log::warn!(
                "tcp fabric: peer {} answered token {:#x}, expected {:#x}",
                self.peer,
                resp.token,
                wr.token
            );
            return Err(FailReason::Io);
        }
        match (resp.error(), wr.op) {
            (None, WorkOp::Read) => {
                if resp.len != wr.len {
                    return Err(FailReason::Io);
                }
                self.data_left = resp.len;
            }
            (error, _) => self.complete(comps, me, error),
        }
        Ok(true)
    }

    /// Reads more of the socket into the buffer, after what is left of it. `None` when the
    /// socket has nothing now.
    fn fill_rx(&mut self) -> Result<Option<()>, FailReason> {
        if self.rx_start > 0 {
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        let sock = self.sock.as_mut().ok_or(FailReason::UnresponsiveRemote)?;
        match sock.read(&mut self.rx[self.rx_end..]) {
            Ok(0) => Err(FailReason::UnresponsiveRemote),
            Ok(n) => {
                self.rx_end += n;
                Ok(Some(()))
            }
            Err(e) if sys::would_block(&e) => Ok(None),
            Err(_) => Err(FailReason::UnresponsiveRemote),
        }
    }
}

/// Opens and greets a data connection (blocking, bounded by the connect timeout), then makes
/// it non-blocking.
pub(crate) fn open(
    shared: &Shared,
    addr: std::net::SocketAddr,
    rail: u16,
    instance: u64,
) -> io::Result<TcpStream> {
    let t = shared.config.connect_timeout;
    let mut sock = TcpStream::connect_timeout(&addr, t)?;
    sock.set_nodelay(true)?;
    if let Some(b) = shared.config.socket_buffer {
        sys::set_buffers(&sock, b)?;
    }
    sock.set_read_timeout(Some(t))?;
    sock.set_write_timeout(Some(t))?;
    sock.write_all(&wire::encode_hello(rail, instance))?;
    let mut reply = [0u8; wire::HELLO_REPLY_LEN];
    sock.read_exact(&mut reply)?;
    let (status, theirs) = wire::decode_hello_reply(&reply)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    if status != wire::HELLO_OK {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "peer refused the hello with status {status}: {} (it is instance {theirs:#x}, expected {instance:#x})",
                wire::hello_status_name(status)
            ),
        ));
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// A worker's connections. See the [module docs](self).
pub(crate) struct TcpEndpoint {
    shared: Arc<Shared>,
    streams: Vec<Stream>,
    /// `index[peer][rail]`: stream index + 1, or 0.
    index: Vec<Box<[u32]>>,
    comps: Comps,
    outstanding: usize,
    /// Consecutive polls that moved nothing while requests were outstanding.
    idle: u32,
    /// One entry per stream, for [`TcpEndpoint::wait_ready`].
    pollfds: Vec<libc::pollfd>,
}

impl TcpEndpoint {
    pub(crate) fn new(shared: Arc<Shared>) -> TcpEndpoint {
        TcpEndpoint {
            shared,
            streams: Vec::new(),
            index: Vec::new(),
            comps: VecDeque::with_capacity(64),
            outstanding: 0,
            idle: 0,
            pollfds: Vec::new(),
        }
    }

    /// The stream for (peer, rail), created on first use (the only allocation, once).
    fn stream(&mut self, wr: &WorkRequest) -> Result<usize, FailReason> {
        let rails = self.shared.config.rails;
        if wr.rail >= rails {
            return Err(FailReason::InvalidAh);
        }
        let p = wr.peer as usize;
        if let Some(&i) = self.index.get(p).and_then(|r| r.get(wr.rail as usize)) {
            if i != 0 {
                return Ok(i as usize - 1);
            }
        }
        let peer = self
            .shared
            .peers
            .get(p)
            .and_then(|s| s.get())
            .ok_or(FailReason::InvalidAh)?;
        if wr.remote_rail as usize >= peer.addrs.len() {
            return Err(FailReason::InvalidAh);
        }
        if self.index.len() <= p {
            self.index
                .resize_with(p + 1, || vec![0u32; rails as usize].into_boxed_slice());
        }
        let depth = self.shared.config.queue_depth as usize;
        let blank = Slot {
            wr: *wr,
            hdr: [0; REQ_LEN],
        };
        self.streams.push(Stream {
            peer: wr.peer,
            rail: wr.rail,
            remote_rail: wr.remote_rail,
            sock: None,
            ring: vec![blank; depth].into_boxed_slice(),
            head: 0,
            send: 0,
            tail: 0,
            send_off: 0,
            used: 0,
            rx: vec![0; RX_BUF].into_boxed_slice(),
            rx_start: 0,
            rx_end: 0,
            data_left: 0,
            last_progress: Instant::now(),
            failed_at: None,
            epoch_seen: peer.epoch.load(Acquire),
        });
        self.comps.reserve(depth);
        self.pollfds.push(libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        });
        let i = self.streams.len();
        self.index[p][wr.rail as usize] = i as u32;
        Ok(i - 1)
    }

    fn check(&self, wr: &WorkRequest) -> Option<FailReason> {
        match wr.op {
            WorkOp::Notify { .. } => (wr.len != 0).then_some(FailReason::BadLength),
            WorkOp::Read | WorkOp::Write | WorkOp::WriteNotify { .. } => {
                if wr.len == 0 || wr.len > self.shared.config.max_transfer_size {
                    Some(FailReason::BadLength)
                } else if !self
                    .shared
                    .regions
                    .check_local(wr.local_key, wr.local_addr, wr.len)
                {
                    Some(FailReason::InvalidLkey)
                } else {
                    None
                }
            }
        }
    }

    /// Sleeps in the kernel until a busy stream can move bytes, for at most `idle_wait`: the
    /// caller polls in a loop, and after [`IDLE_POLLS`] fruitless polls a spinning initiator
    /// only takes CPU from the receiver (often on the same host). The wake-up is as prompt as
    /// a blocking `send` would get.
    fn wait_ready(&mut self) {
        let Some(wait) = self.shared.config.idle_wait else {
            return;
        };
        let mut n = 0;
        for st in &self.streams {
            let Some(sock) = st.sock.as_ref() else {
                continue;
            };
            if st.head == st.tail || n == self.pollfds.len() {
                continue;
            }
            let mut events = libc::POLLIN;
            if st.send < st.tail {
                events |= libc::POLLOUT;
            }
            self.pollfds[n] = libc::pollfd {
                fd: sock.as_raw_fd(),
                events,
                revents: 0,
            };
            n += 1;
        }
        if n == 0 {
            return;
        }
        let ts = libc::timespec {
            tv_sec: wait.as_secs() as libc::time_t,
            tv_nsec: wait.subsec_nanos() as libc::c_long,
        };
        // SAFETY: `pollfds[..n]` are initialised entries of our own array with open fds; the
        // timespec lives across the call; no signal mask is passed.
        unsafe {
            libc::ppoll(
                self.pollfds.as_mut_ptr(),
                n as libc::nfds_t,
                &ts,
                std::ptr::null(),
            )
        };
    }

    /// Moves bytes on every busy stream; returns whether any moved.
    fn drive(&mut self) -> bool {
        let mut any = false;
        let timeout = self.shared.config.timeout;
        for (i, st) in self.streams.iter_mut().enumerate() {
            if st.head == st.tail {
                continue;
            }
            let me = i as u32;
            let sent = match st.pump_send() {
                Ok(m) => m,
                Err(_) => {
                    st.fail(&mut self.comps, me, FailReason::UnresponsiveRemote);
                    continue;
                }
            };
            match st.pump_recv(&mut self.comps, me) {
                Ok(recv) if sent || recv => {
                    any = true;
                    st.last_progress = Instant::now();
                }
                Ok(_) => {
                    if st.head != st.tail && st.last_progress.elapsed() > timeout {
                        st.fail(&mut self.comps, me, FailReason::UnresponsiveRemote);
                    }
                }
                Err(reason) => st.fail(&mut self.comps, me, reason),
            }
        }
        any
    }
}

impl Endpoint for TcpEndpoint {
    fn post(&mut self, wrs: &[WorkRequest]) -> usize {
        let mut accepted = 0;
        for wr in wrs {
            // Completions are queued without growing: refuse when the queue is at capacity.
            if self.comps.len() == self.comps.capacity() {
                break;
            }
            let s = match self.stream(wr) {
                Ok(s) => s,
                Err(reason) => {
                    self.comps.push_back((
                        Completion {
                            token: wr.token,
                            error: Some(reason),
                        },
                        NO_STREAM,
                    ));
                    self.outstanding += 1;
                    accepted += 1;
                    continue;
                }
            };
            if self.streams[s].used as usize >= self.streams[s].ring.len() {
                break;
            }
            accepted += 1;
            self.outstanding += 1;
            self.streams[s].used += 1;
            let mut error = self.check(wr);
            // Field borrows, not an `Arc` clone: no shared counter is touched per request.
            let shared: &Shared = &self.shared;
            let st = &mut self.streams[s];
            if error.is_none() && st.sock.is_none() {
                let peer = shared.peers[wr.peer as usize].get();
                error = match peer {
                    Some(peer) => st.connect(shared, peer).err(),
                    None => Some(FailReason::InvalidAh),
                };
            }
            if let Some(e) = error {
                self.comps.push_back((
                    Completion {
                        token: wr.token,
                        error: Some(e),
                    },
                    s as u32,
                ));
                continue;
            }
            if st.head == st.tail {
                st.last_progress = Instant::now();
            }
            let (op, tag) = match wr.op {
                WorkOp::Read => (Op::Read, 0),
                WorkOp::Write => (Op::Write, 0),
                WorkOp::Notify { tag } => (Op::Notify, tag),
                WorkOp::WriteNotify { tag } => (Op::WriteNotify, tag),
            };
            let at = (st.tail % st.cap()) as usize;
            let slot = &mut st.ring[at];
            slot.wr = *wr;
            Request {
                op,
                tag,
                token: wr.token,
                addr: wr.remote_addr,
                key: wr.remote_key,
                len: wr.len,
            }
            .encode(&mut slot.hdr);
            st.tail += 1;
        }
        for (i, st) in self.streams.iter_mut().enumerate() {
            if st.send < st.tail {
                if let Err(e) = st.pump_send() {
                    log::debug!("tcp fabric: send to peer {} failed: {e}", st.peer);
                    st.fail(&mut self.comps, i as u32, FailReason::UnresponsiveRemote);
                }
            }
        }
        accepted
    }

    fn poll(&mut self, out: &mut [Completion]) -> usize {
        if self.comps.len() < out.len() {
            let moved = self.drive();
            if moved || !self.comps.is_empty() || self.outstanding == 0 {
                self.idle = 0;
            } else {
                self.idle += 1;
                if self.idle >= IDLE_POLLS {
                    self.wait_ready();
                }
            }
        }
        let mut n = 0;
        while n < out.len() {
            let Some((c, s)) = self.comps.pop_front() else {
                break;
            };
            if let Some(st) = self.streams.get_mut(s as usize) {
                st.used -= 1;
            }
            out[n] = c;
            n += 1;
        }
        self.outstanding -= n;
        n
    }

    fn outstanding(&self) -> usize {
        self.outstanding
    }
}
