//! Raw vectored socket I/O on memory the engine registered (not Rust slices: peers and the
//! owner may touch that memory concurrently, as with RDMA), and socket options std lacks.

use std::io;
use std::os::fd::AsRawFd;

/// Most iovecs passed to one `readv`/`writev`.
pub(crate) const MAX_IOV: usize = 64;

/// One piece of a vectored transfer: a raw address and a length.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub ptr: *mut u8,
    pub len: usize,
}

impl Piece {
    pub(crate) const EMPTY: Piece = Piece {
        ptr: std::ptr::null_mut(),
        len: 0,
    };
}

fn iovecs(pieces: &[Piece], out: &mut [libc::iovec; MAX_IOV]) -> usize {
    let mut n = 0;
    for p in pieces.iter().filter(|p| p.len > 0).take(MAX_IOV) {
        out[n] = libc::iovec {
            iov_base: p.ptr.cast(),
            iov_len: p.len,
        };
        n += 1;
    }
    n
}

fn result(rc: isize) -> io::Result<usize> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as usize)
    }
}

/// Gathered send of the pieces (at most [`MAX_IOV`] non-empty ones), like `writev` but with
/// `MSG_NOSIGNAL` so a peer that went away yields `EPIPE` instead of killing the process with
/// `SIGPIPE`. Retries on `EINTR`.
///
/// # Safety
///
/// Every piece must be valid for reads of `len` bytes for the duration of the call.
pub(crate) unsafe fn writev(sock: &impl AsRawFd, pieces: &[Piece]) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOV];
    let n = iovecs(pieces, &mut iov);
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    loop {
        // SAFETY: `msg` points at `iov[..n]`, which describes memory the caller guarantees
        // readable; the fd is open for the life of `sock`.
        let rc = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        match result(rc) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// `readv` into the pieces (at most [`MAX_IOV`] non-empty ones). Retries on `EINTR`.
///
/// # Safety
///
/// Every piece must be valid for writes of `len` bytes for the duration of the call.
pub(crate) unsafe fn readv(sock: &impl AsRawFd, pieces: &[Piece]) -> io::Result<usize> {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOV];
    let n = iovecs(pieces, &mut iov);
    if n == 0 {
        return Ok(0);
    }
    loop {
        // SAFETY: `iov[..n]` describes memory the caller guarantees writable.
        let rc = unsafe { libc::readv(sock.as_raw_fd(), iov.as_ptr(), n as libc::c_int) };
        match result(rc) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Sets `SO_SNDBUF` and `SO_RCVBUF` (the kernel doubles the value and caps it at
/// `net.core.wmem_max`/`rmem_max`). Setting them turns off the kernel's autotuning.
pub(crate) fn set_buffers(sock: &impl AsRawFd, bytes: usize) -> io::Result<()> {
    let v = bytes.min(i32::MAX as usize) as libc::c_int;
    for opt in [libc::SO_SNDBUF, libc::SO_RCVBUF] {
        // SAFETY: `v` is a live c_int and its size is passed; the fd is open.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether an error means "try again later" on a non-blocking or timed socket.
pub(crate) fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
