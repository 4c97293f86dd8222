//! The descriptor server: one accept thread, one short-lived thread per connection (bounded
//! in number), every read under a deadline.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering::*;
use std::sync::Arc;

use super::conn::{read_frame, write_frame, FrameError};
use super::wire::{ErrorCode, Message, PeerHello};
use super::State;

pub(crate) fn run(listener: TcpListener, state: Arc<State>) {
    for conn in listener.incoming() {
        if state.stop.load(Acquire) {
            break;
        }
        let sock = match conn {
            Ok(s) => s,
            Err(e) => {
                log::warn!("discovery: accept failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        let peer = sock
            .peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "?".into());
        if state.active.fetch_add(1, AcqRel) >= state.config.max_connections {
            state.active.fetch_sub(1, AcqRel);
            state.stats.rejected.fetch_add(1, Relaxed);
            log::warn!(
                "discovery: refusing {peer}: {} connections already open",
                state.config.max_connections
            );
            continue;
        }
        state.stats.accepted.fetch_add(1, Relaxed);
        let st = state.clone();
        let spawned = std::thread::Builder::new()
            .name("discovery-conn".into())
            .spawn(move || {
                serve(sock, &st, &peer);
                st.active.fetch_sub(1, AcqRel);
            });
        if let Err(e) = spawned {
            state.active.fetch_sub(1, AcqRel);
            log::warn!("discovery: cannot start a connection thread: {e}");
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

fn serve(mut sock: TcpStream, state: &State, peer: &str) {
    let _ = sock.set_nodelay(true);
    let c = &state.config;
    let reject = |why: &dyn std::fmt::Display| {
        state.stats.rejected.fetch_add(1, Relaxed);
        log::warn!("discovery: rejecting {peer}: {why}");
    };
    let hello = match read_frame(&mut sock, c.max_frame, c.frame_timeout, c.frame_timeout) {
        Ok(Message::Hello(h)) => h,
        Ok(other) => {
            reject(&format_args!(
                "expected a hello, got {:?}",
                kind_name(&other)
            ));
            refuse(
                &mut sock,
                state,
                ErrorCode::BadRequest,
                "hello expected".into(),
            );
            return;
        }
        Err(FrameError::Closed) => return,
        Err(e) => {
            reject(&e);
            return;
        }
    };
    if let Err(why) = state.accept(&hello) {
        reject(&why);
        refuse(&mut sock, state, ErrorCode::Refused, why);
        return;
    }
    log::debug!("discovery: hello from engine {:?} at {peer}", hello.engine);
    let me: PeerHello = state.own_hello();
    if write_frame(&mut sock, &Message::Welcome(me), c.frame_timeout).is_err() {
        return;
    }
    loop {
        match read_frame(&mut sock, c.max_frame, c.idle_timeout, c.frame_timeout) {
            Ok(Message::Lookup(name)) => {
                let reply = match state.find(&name) {
                    Some(desc) => {
                        state.stats.served.fetch_add(1, Relaxed);
                        Message::Found(desc)
                    }
                    None => Message::Error {
                        code: ErrorCode::NotFound,
                        message: name,
                    },
                };
                if write_frame(&mut sock, &reply, c.frame_timeout).is_err() {
                    return;
                }
            }
            Ok(other) => {
                reject(&format_args!("unexpected {} frame", kind_name(&other)));
                refuse(
                    &mut sock,
                    state,
                    ErrorCode::BadRequest,
                    "lookup expected".into(),
                );
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

fn kind_name(m: &Message) -> &'static str {
    match m {
        Message::Hello(_) => "hello",
        Message::Welcome(_) => "welcome",
        Message::Lookup(_) => "lookup",
        Message::Found(_) => "found",
        Message::Error { .. } => "error",
    }
}
