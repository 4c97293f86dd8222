//! Reading and writing frames on a socket with deadlines (no read may hang).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::wire::{self, Message, WireError, HEADER_LEN};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("no frame began within {0:?}")]
    Idle(Duration),
    #[error("frame not complete within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
}

/// Reads `buf` whole before `deadline` (`None`: no deadline; `budget` names the limit in the
/// error).
fn read_until(
    sock: &mut TcpStream,
    buf: &mut [u8],
    deadline: Option<Instant>,
    budget: Duration,
) -> Result<(), FrameError> {
    let mut at = 0;
    while at < buf.len() {
        let left = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(FrameError::Timeout(budget));
                }
                Some(left)
            }
            None => None,
        };
        sock.set_read_timeout(left)?;
        match sock.read(&mut buf[at..]) {
            Ok(0) => return Err(FrameError::Closed),
            Ok(n) => at += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `after` from now, or `None` (no deadline) when that is beyond the clock's range.
pub(crate) fn deadline(after: Duration) -> Option<Instant> {
    Instant::now().checked_add(after)
}

/// Reads one frame. The first byte may take up to `idle`; from then on the whole frame must
/// arrive within `frame` (so a peer trickling bytes cannot hold the connection). The body
/// length is checked against `max_body` before the body buffer is allocated. A duration too
/// long for the clock (`Duration::MAX`) means no deadline.
pub(crate) fn read_frame(
    sock: &mut TcpStream,
    max_body: usize,
    idle: Duration,
    frame: Duration,
) -> Result<Message, FrameError> {
    read_frame_then(sock, max_body, idle, frame, || {})
}

/// [`read_frame`], calling `begun` once the first byte of the frame has arrived.
pub(crate) fn read_frame_then(
    sock: &mut TcpStream,
    max_body: usize,
    idle: Duration,
    frame: Duration,
    begun: impl FnOnce(),
) -> Result<Message, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    read_until(sock, &mut h[..1], deadline(idle), idle).map_err(|e| match e {
        FrameError::Timeout(d) => FrameError::Idle(d),
        other => other,
    })?;
    begun();
    let deadline = deadline(frame);
    read_until(sock, &mut h[1..], deadline, frame)?;
    let header = wire::decode_header(&h, max_body)?;
    let mut body = vec![0u8; header.len];
    read_until(sock, &mut body, deadline, frame)?;
    Ok(wire::decode_body(&header, &body)?)
}

/// Writes one frame within `timeout`.
pub(crate) fn write_frame(
    sock: &mut TcpStream,
    msg: &Message,
    timeout: Duration,
) -> Result<(), FrameError> {
    let bytes = wire::encode(msg)?;
    sock.set_write_timeout(Some(timeout))?;
    sock.write_all(&bytes)?;
    Ok(())
}
