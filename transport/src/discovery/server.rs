//! The descriptor server: one accept thread, one short-lived thread per connection (bounded
//! in number), every read under a deadline and every connection under a session limit.
//!
//! When every slot is taken, a new connection takes over the slot of the longest-open
//! connection that waits between frames (closing it): a client that greets and then idles, or
//! looks something up now and then, cannot lock others out. When no slot is idle (all are
//! mid-frame, which the frame deadline bounds), the new connection gets an Error frame with
//! code `Busy` and is closed.

use std::io::Read;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::*};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use super::conn::{read_frame_then, write_frame, FrameError};
use super::wire::{ErrorCode, Message, PeerHello};
use super::{ConnInfo, State};

/// Bound on writing a refusal from the accept thread (the frame is small and the socket new).
const REFUSAL_WRITE: Duration = Duration::from_millis(100);

pub(crate) fn run(listener: TcpListener, state: Arc<State>) {
    for conn in listener.incoming() {
        if state.stop.load(Acquire) {
            break;
        }
        let sock = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("discovery: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        let peer = sock
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        let info = match admit(&state, &sock) {
            Ok(info) => info,
            Err(open) => {
                state.stats.rejected.fetch_add(1, Relaxed);
                log::warn!("discovery: refusing {peer}: all {open} connections are busy");
                refuse_busy(sock, open);
                continue;
            }
        };
        state.stats.accepted.fetch_add(1, Relaxed);
        let st = state.clone();
        let mine = info.clone();
        let spawned = std::thread::Builder::new()
            .name("discovery-conn".into())
            .spawn(move || {
                let _slot = Slot(&st, mine.clone());
                serve(sock, &st, &mine, &peer);
            });
        if let Err(e) = spawned {
            log::warn!("discovery: cannot start a connection thread: {e}");
            drop(Slot(&state, info));
        }
    }
}

/// Gives a slot back when its connection thread ends (unwinding included).
struct Slot<'a>(&'a State, Arc<ConnInfo>);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut conns = self.0.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.retain(|c| !Arc::ptr_eq(c, &self.1));
    }
}

/// Takes a connection slot for `sock`, taking over the longest-open idle one when all are in
/// use. `Err(open)` when every slot is busy mid-frame.
fn admit(state: &State, sock: &TcpStream) -> Result<Arc<ConnInfo>, usize> {
    let mut conns = state.conns.lock().unwrap_or_else(PoisonError::into_inner);
    if conns.len() >= state.config.max_connections {
        let victim = conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.idle.load(Acquire))
            .min_by_key(|(_, c)| c.started)
            .map(|(i, _)| i)
            .ok_or(conns.len())?;
        let old = conns.swap_remove(victim);
        // Its thread sees the connection closed and ends.
        let _ = old.sock.shutdown(Shutdown::Both);
        state.stats.evicted.fetch_add(1, Relaxed);
        log::info!("discovery: closed an idle connection to make room for a new one");
    }
    let info = Arc::new(ConnInfo {
        sock: sock.try_clone().map_err(|_| conns.len())?,
        started: Instant::now(),
        idle: AtomicBool::new(true),
    });
    conns.push(info.clone());
    Ok(info)
}

/// Tells a client there is no slot for it, without blocking the accept thread.
fn refuse_busy(mut sock: TcpStream, open: usize) {
    let msg = Message::Error {
        code: ErrorCode::Busy,
        message: format!("server busy: all {open} connection slots are in use; retry later"),
    };
    let _ = write_frame(&mut sock, &msg, REFUSAL_WRITE);
    let _ = sock.shutdown(Shutdown::Write);
    // Unread input would turn the close into a reset that can discard the frame: drop what
    // has arrived (without waiting for more).
    if sock.set_nonblocking(true).is_ok() {
        let mut buf = [0u8; 4096];
        for _ in 0..16 {
            if !matches!(sock.read(&mut buf), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

fn refuse(sock: &mut TcpStream, state: &State, code: ErrorCode, message: String) {
    let _ = write_frame(
        sock,
        &Message::Error { code, message },
        state.config.frame_timeout,
    );
}

fn serve(mut sock: TcpStream, state: &State, info: &ConnInfo, peer: &str) {
    let _ = sock.set_nodelay(true);
    let reject = |why: &dyn std::fmt::Display| {
        state.stats.rejected.fetch_add(1, Relaxed);
        log::warn!("discovery: rejecting {peer}: {why}");
    };
    let Some(hello) = greet(&mut sock, state, info, &reject) else {
        return;
    };
    log::debug!("discovery: hello from engine {:?} at {peer}", hello.engine);
    let c = &state.config;
    let me: PeerHello = state.own_hello();
    if write_frame(&mut sock, &Message::Welcome(me), c.frame_timeout).is_err() {
        return;
    }
    loop {
        info.idle.store(true, Release);
        let left = c.session_timeout.saturating_sub(info.started.elapsed());
        if left.is_zero() {
            log::debug!(
                "discovery: closing {peer}: session of {:?} over",
                c.session_timeout
            );
            return;
        }
        let idle = c.idle_timeout.min(left);
        let begun = || info.idle.store(false, Release);
        match read_frame_then(&mut sock, c.max_frame, idle, c.frame_timeout, begun) {
            Ok(Message::Lookup(name)) => {
                if write_frame(&mut sock, &answer(state, name), c.frame_timeout).is_err() {
                    return;
                }
            }
            Ok(Message::List(prefix)) => {
                let listing = Message::Listing(state.list(&prefix, c.max_frame));
                if write_frame(&mut sock, &listing, c.frame_timeout).is_err() {
                    return;
                }
            }
            Ok(other) => {
                reject(&format_args!("unexpected {} frame", kind_name(&other)));
                let why = "lookup or list expected".into();
                refuse(&mut sock, state, ErrorCode::BadRequest, why);
                return;
            }
            Err(FrameError::Closed) => return,
            Err(FrameError::Idle(_)) => {
                log::debug!("discovery: closing idle connection from {peer}");
                return;
            }
            Err(e) => {
                reject(&e);
                return;
            }
        }
    }
}

/// Reads and checks the hello (the fabric accepts the peer); `None` when the connection ends.
fn greet(
    sock: &mut TcpStream,
    state: &State,
    info: &ConnInfo,
    reject: &dyn Fn(&dyn std::fmt::Display),
) -> Option<PeerHello> {
    let c = &state.config;
    let begun = || info.idle.store(false, Release);
    let hello = match read_frame_then(sock, c.max_frame, c.frame_timeout, c.frame_timeout, begun) {
        Ok(Message::Hello(h)) => h,
        Ok(other) => {
            reject(&format_args!(
                "expected a hello, got {:?}",
                kind_name(&other)
            ));
            refuse(sock, state, ErrorCode::BadRequest, "hello expected".into());
            return None;
        }
        Err(FrameError::Closed) => return None,
        Err(e) => {
            reject(&e);
            return None;
        }
    };
    if let Err(why) = state.accept(&hello) {
        reject(&why);
        refuse(sock, state, ErrorCode::Refused, why);
        return None;
    }
    Some(hello)
}

fn answer(state: &State, name: String) -> Message {
    match state.find(&name) {
        Some(desc) => {
            state.stats.served.fetch_add(1, Relaxed);
            Message::Found(desc)
        }
        None => Message::Error {
            code: ErrorCode::NotFound,
            message: name,
        },
    }
}

fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Hello(_) => "hello",
        Message::Welcome(_) => "welcome",
        Message::Lookup(_) => "lookup",
        Message::Found(_) => "found",
        Message::Error { .. } => "error",
        Message::List(_) => "list",
        Message::Listing(_) => "listing",
    }
}
