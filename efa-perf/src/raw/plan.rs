//! The arithmetic of a raw test, apart from any device: which operation it posts and what the
//! device must offer for it, the message-size limit, queue depths, the buffer layout, work-request
//! ids and when receives are reposted.

use efa::{Access, EfaCaps};

/// The operation a raw test posts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Two-sided SEND/RECV: receives kept posted on the other side.
    Send,
    /// RDMA WRITE into the peer's region.
    Write,
    /// RDMA READ from the peer's region.
    Read,
}

impl Op {
    /// The operation of a test's verb; `None` for the engine's own WRITE_WITH_NOTIFY.
    pub fn of(verb: crate::cli::Verb) -> Option<Self> {
        use crate::cli::Verb;
        match verb {
            Verb::Send => Some(Self::Send),
            Verb::Write => Some(Self::Write),
            Verb::Read => Some(Self::Read),
            Verb::Notify => None,
        }
    }

    /// Whether the other side posts receives and counts arrivals (SEND); RDMA targets post
    /// nothing and learn of nothing.
    pub fn two_sided(self) -> bool {
        self == Self::Send
    }

    /// The rights a side's region grants its peer: none for SEND, remote write for WRITE, remote
    /// read for READ (both sides are targets with `-b`).
    pub fn access(self) -> Access {
        match self {
            Self::Send => Access::LOCAL_WRITE,
            Self::Write => Access::LOCAL_WRITE | Access::REMOTE_WRITE,
            Self::Read => Access::LOCAL_WRITE | Access::REMOTE_READ,
        }
    }

    /// The operation's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Send => "SEND",
            Self::Write => "RDMA WRITE",
            Self::Read => "RDMA READ",
        }
    }
}

/// A raw test the device cannot run, and what to run instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Unsupported {
    /// An EFA device without the RDMA capability the operation needs.
    #[error(
        "{device} lacks the {cap} capability (an earlier EFA generation), so --raw cannot post \
         {op} on its SRD queue pairs; run the test without --raw: the engine carries {op} over \
         SEND/RECV on such devices"
    )]
    MissingCap {
        /// The device.
        device: String,
        /// The operation.
        op: &'static str,
        /// The efadv capability it needs (`RDMA_WRITE`, `RDMA_READ`).
        cap: &'static str,
    },
    /// perftest's WRITE ping-pong on an unordered fabric.
    #[error(
        "--raw write-lat is perftest's ping-pong: each side polls the last byte of its buffer for \
         the peer's next RDMA WRITE, which needs the bytes placed in order (RC); {device} is EFA, \
         whose SRD places a WRITE's bytes in any order, so the last byte can land before the rest. \
         Use --raw read-lat or send-lat for the device's figure, or write-lat without --raw (the \
         engine's ping)"
    )]
    UnorderedWriteLat {
        /// The device.
        device: String,
    },
    /// perftest's WRITE ping-pong waits on memory, not on completions.
    #[error(
        "--raw write-lat with -e: the ping-pong polls memory for the peer's RDMA WRITE, which \
         raises no completion to wait for (perftest's ib_write_lat has no events either); drop -e, \
         or use -e with write-lat without --raw"
    )]
    EventsOnWriteLat,
}

/// Checks that a device runs `op` as a test of `metric` (`lat`: a latency test): on EFA (`efa`
/// holds its capabilities) RDMA needs `RDMA_WRITE` or `RDMA_READ` and a WRITE ping-pong is
/// refused (SRD is unordered); a WRITE ping-pong never waits for events.
pub fn check_device(
    op: Op,
    lat: bool,
    events: bool,
    efa: Option<EfaCaps>,
    device: &str,
) -> Result<(), Unsupported> {
    if op == Op::Write && lat && events {
        return Err(Unsupported::EventsOnWriteLat);
    }
    let Some(caps) = efa else {
        return Ok(());
    };
    let (need, cap) = match op {
        Op::Send => return Ok(()),
        Op::Write => (EfaCaps::RDMA_WRITE, "RDMA_WRITE"),
        Op::Read => (EfaCaps::RDMA_READ, "RDMA_READ"),
    };
    if !caps.contains(need) {
        return Err(Unsupported::MissingCap {
            device: device.into(),
            op: op.name(),
            cap,
        });
    }
    if op == Op::Write && lat {
        return Err(Unsupported::UnorderedWriteLat {
            device: device.into(),
        });
    }
    Ok(())
}

/// The byte a WRITE ping-pong's `i`-th message ends with (never 0, so a cleared byte is never
/// taken for an arrival; consecutive messages differ).
pub fn seq(i: u64) -> u8 {
    (i % 255) as u8 + 1
}

/// Receives perftest keeps posted per queue pair in a bandwidth test (its default `rx_depth`).
pub const RX_DEPTH_BW: u32 = 512;
/// Receives posted per queue pair in a latency test.
pub const RX_DEPTH_LAT: u32 = 64;
/// Send-queue depth of a latency test: one ping in flight, completions reaped lazily.
pub const TX_DEPTH_LAT: u32 = 16;
/// SENDs of a SEND latency run per completion asked for on RC (see
/// `Side::moderate_latency_sends`): at most the send queue's depth, which the unsignaled ones
/// hold until a signaled one completes.
pub const LAT_CQ_MOD: u64 = 8;
const _: () = assert!(LAT_CQ_MOD <= TX_DEPTH_LAT as u64);
/// Inline bytes a latency test asks for, as perftest's latency tests send small messages inline
/// (copied into the work request: no buffer read by the device). On EFA at most 32, the size that
/// keeps the 64-byte work-queue entry.
pub const INLINE_LAT: u32 = 64;
/// Inline bytes of EFA's 64-byte work-queue entry.
pub const INLINE_EFA: u32 = 32;
/// Largest area of slots per queue pair and direction; beyond it slots overlap, as perftest's
/// cyclic buffer does (the bytes of a bandwidth test are never read).
const AREA_CAP: u64 = 16 << 20;
/// Largest region of one side, unless one send and one receive slot per queue pair need more.
const REGION_CAP: u64 = 1 << 30;
/// Most queue pairs a side builds (`-q`'s range).
pub const MAX_QPS: u32 = 256;
/// Deepest send queue a side asks for (`-t`'s range).
pub const MAX_DEPTH: u32 = 65536;

/// A test shape a server refuses before building anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "client asks for {qps} queue pairs of send depth {depth}; this server takes 1 to {MAX_QPS} \
     queue pairs of depth 1 to {MAX_DEPTH}"
)]
pub struct BadShape {
    /// Queue pairs asked for.
    pub qps: u32,
    /// Send depth asked for.
    pub depth: u32,
}

/// Checks a client's queue pairs and depth.
pub fn check_shape(qps: u32, depth: u32) -> Result<(), BadShape> {
    if (1..=MAX_QPS).contains(&qps) && (1..=MAX_DEPTH).contains(&depth) {
        Ok(())
    } else {
        Err(BadShape { qps, depth })
    }
}

/// A message size the device cannot send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{size}-byte messages exceed the largest {op} of {device}: the {limit} is {max} bytes \
     (give -s {max} or less)"
)]
pub struct TooLarge {
    /// Message size asked for.
    pub size: u64,
    /// The limit.
    pub max: u64,
    /// Which device (or "the peer's device").
    pub device: String,
    /// The operation.
    pub op: &'static str,
    /// What the limit is (the port's `max_msg_sz`, EFA's `max_rdma_size`).
    pub limit: &'static str,
}

/// What bounds an operation's size: SEND and RC's RDMA by the port's `max_msg_sz`, EFA's RDMA
/// by the device's `max_rdma_size`.
pub fn limit_name(op: Op, efa: bool) -> &'static str {
    match (op, efa) {
        (Op::Write | Op::Read, true) => "device's max_rdma_size",
        _ => "port's max_msg_sz",
    }
}

/// Refuses a message larger than `max` (see [`limit_name`]).
pub fn check_size(size: u64, max: u64, device: &str, op: Op, efa: bool) -> Result<(), TooLarge> {
    if size > max {
        return Err(TooLarge {
            size,
            max,
            device: device.into(),
            op: op.name(),
            limit: limit_name(op, efa),
        });
    }
    Ok(())
}

/// The sizes of a sweep (`-a`) the port can send, and the largest size dropped, if any.
pub fn sweep_within(sizes: &[u64], max: u64) -> (Vec<u64>, Option<u64>) {
    let kept = sizes.iter().copied().filter(|&s| s <= max).collect();
    (kept, sizes.iter().copied().filter(|&s| s > max).max())
}

/// Receives to keep posted per queue pair: `want`, within the receive queue's and the shared
/// receive CQ's depth (`qps` queue pairs complete into one CQ), at least 1.
pub fn rx_depth(want: u32, qps: u32, max_qp_wr: u32, max_cqe: u32) -> u32 {
    let per_cq = max_cqe / qps.max(1);
    want.min(max_qp_wr).min(per_cq).max(1)
}

/// Receive completions a queue pair collects before they are reposted together: an eighth of
/// its receives, at most 64, so at least seven eighths stay posted.
pub fn refill_batch(rx_depth: u32) -> u32 {
    (rx_depth / 8).clamp(1, 64)
}

/// Where each queue pair's send and receive slots lie in one registered region:
/// `[qp 0 sends | qp 0 receives | qp 1 sends | ...]`, every slot `slot` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Bytes of a slot: the largest message of the test.
    pub slot: u64,
    /// Send slots per queue pair (used in turn).
    pub send_slots: u64,
    /// Receive slots per queue pair (used in turn).
    pub recv_slots: u64,
    /// Queue pairs.
    pub qps: u32,
}

impl Layout {
    /// Slots for `tx` sends and `rx` receives in flight per queue pair, each area capped, the
    /// whole within [`REGION_CAP`] when one slot each way per queue pair allows.
    ///
    /// RDMA tests use the send slots as the sources of WRITEs and the destinations of READs,
    /// and the receive slots as the peer's targets: operation `n` of queue pair `qp` goes from
    /// `send_offset(qp, n)` to the peer's `recv_offset(qp, n)`, so both sides must build the same
    /// layout ([`Layout::rdma`]).
    pub fn new(qps: u32, slot: u64, tx: u32, rx: u32) -> Self {
        let slot = slot.max(1);
        let area = AREA_CAP.min(REGION_CAP / (2 * u64::from(qps.max(1))));
        let fit = (area / slot).max(1);
        Self {
            slot,
            send_slots: u64::from(tx).clamp(1, fit),
            recv_slots: u64::from(rx).clamp(1, fit),
            qps: qps.max(1),
        }
    }

    /// The layout of an RDMA bandwidth test, the same on both sides: `depth` slots each way per
    /// queue pair.
    pub fn rdma(qps: u32, slot: u64, depth: u32) -> Self {
        Self::new(qps, slot, depth, depth)
    }

    /// The layout of a latency test, RDMA or SEND: one slot each way per queue pair, which every
    /// message uses, as perftest's latency tests use one buffer. A ping-pong has one message in
    /// flight each way, so a receive slot is free again before the next message can land; a
    /// message touches the same pages as the one before.
    pub fn latency(qps: u32, slot: u64) -> Self {
        Self::new(qps, slot, 1, 1)
    }

    fn per_qp(&self) -> u64 {
        (self.send_slots + self.recv_slots) * self.slot
    }

    /// Bytes of the whole region.
    pub fn len(&self) -> u64 {
        self.per_qp() * u64::from(self.qps)
    }

    /// Offset of the `n`-th send of queue pair `qp`.
    pub fn send_offset(&self, qp: u32, n: u64) -> u64 {
        u64::from(qp) * self.per_qp() + (n % self.send_slots) * self.slot
    }

    /// Offset of the `n`-th receive of queue pair `qp`.
    pub fn recv_offset(&self, qp: u32, n: u64) -> u64 {
        u64::from(qp) * self.per_qp() + (self.send_slots + n % self.recv_slots) * self.slot
    }
}

/// On RC, one send in this many asks for a completion (perftest's default `--cq-mod`), and the
/// last of every posted batch; a completion then stands for every earlier send of its queue pair
/// (RC completes in order). SRD completes out of order and EFA refuses unsignaled sends: there
/// every send is signaled.
pub const CQ_MODERATION: u64 = 100;

/// Whether send `n` of a queue pair asks for a completion on RC (`last`: the last of its batch).
pub fn signaled(n: u64, last: bool) -> bool {
    last || (n + 1) % CQ_MODERATION == 0
}

/// Whether SEND `n` of a latency run of `total` SENDs asks for a completion on RC: every
/// [`LAT_CQ_MOD`]th and the last.
pub fn lat_signaled(n: u64, total: u64) -> bool {
    (n + 1) % LAT_CQ_MOD == 0 || n + 1 >= total
}

/// Sends of a queue pair completed once the send whose id has counter bits `low` completed, when
/// `done` had completed before it (in-order completion, as RC gives).
pub fn covered(done: u64, low: u32) -> u64 {
    done + u64::from(low.wrapping_sub(done as u32)) + 1
}

/// A work request's id: the queue pair in the high 32 bits, a counter in the low ones.
pub fn wr_id(qp: u32, n: u64) -> u64 {
    (u64::from(qp) << 32) | (n & 0xffff_ffff)
}

/// The queue pair a work request id names.
pub fn wr_qp(id: u64) -> u32 {
    (id >> 32) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_over_max_msg_sz_are_refused_by_name() {
        assert!(check_size(8928, 8928, "softefa0", Op::Send, true).is_ok());
        let e = check_size(8929, 8928, "softefa0", Op::Send, true).unwrap_err();
        let text = e.to_string();
        for needle in ["8929", "8928", "softefa0", "max_msg_sz", "SEND"] {
            assert!(text.contains(needle), "{text}");
        }
        // EFA's RDMA is bounded by max_rdma_size, RC's by the port.
        let e = check_size(1 << 30, 1 << 20, "softefa0", Op::Read, true).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("RDMA READ") && text.contains("max_rdma_size"),
            "{text}"
        );
        let e = check_size(1 << 30, 1 << 20, "rxe0", Op::Write, false).unwrap_err();
        assert!(e.to_string().contains("max_msg_sz"), "{e}");
        let (kept, dropped) = sweep_within(&[2, 4096, 8192, 16384, 1 << 20], 8928);
        assert_eq!((kept, dropped), (vec![2, 4096, 8192], Some(1 << 20)));
        assert_eq!(sweep_within(&[2, 4], 8).1, None);
    }

    #[test]
    fn depths_fit_the_queues_and_the_shared_cq() {
        assert_eq!(rx_depth(RX_DEPTH_BW, 1, 32768, 32768), 512);
        assert_eq!(rx_depth(RX_DEPTH_BW, 256, 32768, 32768), 128);
        assert_eq!(rx_depth(RX_DEPTH_BW, 1, 100, 32768), 100);
        assert_eq!(rx_depth(RX_DEPTH_BW, 4, 32768, 0), 1);
        assert_eq!(refill_batch(512), 64);
        assert_eq!(refill_batch(64), 8);
        assert_eq!(refill_batch(3), 1);
    }

    #[test]
    fn slots_cycle_inside_each_queue_pairs_area() {
        let l = Layout::new(2, 4096, 128, 512);
        assert_eq!(l.len(), 2 * 640 * 4096);
        assert_eq!(l.send_offset(0, 0), 0);
        assert_eq!(l.send_offset(0, 128), 0);
        assert_eq!(l.recv_offset(0, 0), 128 * 4096);
        assert_eq!(l.recv_offset(1, 513), 640 * 4096 + 129 * 4096);
        for qp in 0..2 {
            for n in [0, 1, 127, 511, 100_000] {
                assert!(l.send_offset(qp, n) + l.slot <= l.recv_offset(qp, 0));
                assert!(l.recv_offset(qp, n) + l.slot <= l.len());
            }
        }
        // 8 MiB messages: two slots fill the cap, so the area holds two.
        let big = Layout::new(1, 8 << 20, 128, 512);
        assert_eq!((big.send_slots, big.recv_slots), (2, 2));
        assert_eq!(Layout::new(1, 64 << 20, 1, 1).len(), 128 << 20);
        // Many queue pairs share the region cap.
        assert!(Layout::new(MAX_QPS, 4 << 20, 128, 512).len() <= 2 * REGION_CAP);
        assert!(Layout::new(MAX_QPS, 8192, 128, 512).len() <= REGION_CAP);
    }

    #[test]
    fn shapes_outside_the_ranges_are_refused() {
        assert!(check_shape(1, 1).is_ok() && check_shape(MAX_QPS, MAX_DEPTH).is_ok());
        for (q, d) in [
            (0, 8),
            (MAX_QPS + 1, 8),
            (1, 0),
            (1, MAX_DEPTH + 1),
            (u32::MAX, u32::MAX),
        ] {
            let e = check_shape(q, d).unwrap_err();
            assert!(e.to_string().contains(&q.to_string()), "{e}");
        }
    }

    #[test]
    fn a_moderated_completion_covers_the_sends_before_it() {
        assert!(signaled(99, false) && signaled(5, true) && !signaled(5, false));
        assert_eq!(covered(0, 0), 1);
        assert_eq!(covered(10, 41), 42);
        // Counters wrap at 32 bits in the id, not in the count.
        let done = (1u64 << 32) - 3;
        assert_eq!(covered(done, 4), (1 << 32) + 5);
    }

    #[test]
    fn a_send_latency_run_signals_every_eighth_send_and_its_last() {
        let signaled: Vec<u64> = (0..50).filter(|&n| lat_signaled(n, 50)).collect();
        assert_eq!(signaled, [7, 15, 23, 31, 39, 47, 49]);
        // Never more unsignaled SENDs in a row than the queue holds beside a signaled one.
        for total in [1, 7, 8, 9, 1000] {
            let mut run = 0;
            for n in 0..total {
                run = if lat_signaled(n, total) { 0 } else { run + 1 };
                assert!(run < TX_DEPTH_LAT as u64, "total {total}, send {n}");
            }
            assert!(lat_signaled(total - 1, total), "the last of {total}");
        }
    }

    #[test]
    fn rdma_needs_the_devices_caps_and_write_lat_needs_order() {
        let all = EfaCaps::RDMA_READ | EfaCaps::RDMA_WRITE;
        for op in [Op::Send, Op::Write, Op::Read] {
            // Verbs devices (RC) run everything but a WRITE ping-pong with events.
            assert_eq!(
                check_device(op, op != Op::Write, true, None, "rxe0"),
                Ok(())
            );
            assert_eq!(check_device(op, true, false, None, "rxe0"), Ok(()));
            assert_eq!(check_device(op, false, false, Some(all), "efa_0"), Ok(()));
        }
        assert_eq!(
            check_device(Op::Write, true, true, None, "rxe0"),
            Err(Unsupported::EventsOnWriteLat)
        );
        // soft-efa's `send` profile lacks both, `read` lacks WRITE.
        let e = check_device(
            Op::Write,
            false,
            false,
            Some(EfaCaps::RDMA_READ),
            "softefa0",
        );
        let text = e.unwrap_err().to_string();
        for needle in ["softefa0", "RDMA_WRITE", "RDMA WRITE", "without --raw"] {
            assert!(text.contains(needle), "{text}");
        }
        let e = check_device(Op::Read, true, false, Some(EfaCaps::empty()), "softefa0");
        assert!(e.unwrap_err().to_string().contains("RDMA_READ"));
        assert_eq!(
            check_device(Op::Send, false, false, Some(EfaCaps::empty()), "d"),
            Ok(())
        );
        // SRD is unordered: the WRITE ping-pong is refused even with every cap.
        let e = check_device(Op::Write, true, false, Some(all), "efa_0").unwrap_err();
        assert!(matches!(e, Unsupported::UnorderedWriteLat { .. }));
        assert!(e.to_string().contains("SRD"), "{e}");
        assert_eq!(
            check_device(Op::Read, true, false, Some(all), "efa_0"),
            Ok(())
        );
    }

    #[test]
    fn ops_grant_only_the_rights_they_need() {
        assert_eq!(Op::Send.access(), Access::LOCAL_WRITE);
        assert!(Op::Write.access().contains(Access::REMOTE_WRITE));
        assert!(!Op::Write.access().contains(Access::REMOTE_READ));
        assert!(Op::Read.access().contains(Access::REMOTE_READ));
        assert!(!Op::Read.access().contains(Access::REMOTE_WRITE));
        assert!(Op::Send.two_sided() && !Op::Write.two_sided() && !Op::Read.two_sided());
    }

    #[test]
    fn rdma_layouts_agree_and_latency_uses_one_slot_each_way() {
        let bw = Layout::rdma(2, 4096, 128);
        assert_eq!((bw.send_slots, bw.recv_slots), (128, 128));
        assert_eq!(bw, Layout::rdma(2, 4096, 128));
        let lat = Layout::latency(2, 64);
        assert_eq!((lat.send_slots, lat.recv_slots), (1, 1));
        assert_eq!(lat.recv_offset(0, 7), lat.recv_offset(0, 0));
        assert_eq!(lat.send_offset(1, 9), lat.send_offset(1, 0));
        assert!(lat.send_offset(0, 0) + 64 <= lat.recv_offset(0, 0));
        assert!(lat.recv_offset(0, 0) + 64 <= lat.send_offset(1, 0));
        assert_eq!(lat.len(), 256);
    }

    #[test]
    fn sequence_bytes_are_never_zero_and_change_every_message() {
        for i in 0..1000 {
            assert_ne!(seq(i), 0);
            assert_ne!(seq(i), seq(i + 1));
        }
        assert_eq!(seq(0), seq(255));
    }

    #[test]
    fn wr_ids_carry_the_queue_pair() {
        let id = wr_id(255, (7 << 32) + 9);
        assert_eq!((wr_qp(id), id & 0xffff_ffff), (255, 9));
    }
}
