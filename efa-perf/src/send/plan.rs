//! The arithmetic of a SEND test, apart from any device: the message-size limit, queue depths,
//! the buffer layout, work-request ids and when receives are reposted.

/// Receives perftest keeps posted per queue pair in a bandwidth test (its default `rx_depth`).
pub const RX_DEPTH_BW: u32 = 512;
/// Receives posted per queue pair in a latency test.
pub const RX_DEPTH_LAT: u32 = 64;
/// Send-queue depth of a latency test: one ping in flight, completions reaped lazily.
pub const TX_DEPTH_LAT: u32 = 16;
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
    "{size}-byte messages exceed the largest SEND of {device}: the port's max_msg_sz is {max} bytes \
     (give -s {max} or less)"
)]
pub struct TooLarge {
    /// Message size asked for.
    pub size: u64,
    /// The port's `max_msg_sz`.
    pub max: u64,
    /// Which device (or "the peer's device").
    pub device: String,
}

/// Refuses a message larger than the port's `max_msg_sz`.
pub fn check_size(size: u64, max: u64, device: &str) -> Result<(), TooLarge> {
    if size > max {
        return Err(TooLarge {
            size,
            max,
            device: device.into(),
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
        assert!(check_size(8928, 8928, "softefa0").is_ok());
        let e = check_size(8929, 8928, "softefa0").unwrap_err();
        let text = e.to_string();
        for needle in ["8929", "8928", "softefa0", "max_msg_sz"] {
            assert!(text.contains(needle), "{text}");
        }
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
    fn wr_ids_carry_the_queue_pair() {
        let id = wr_id(255, (7 << 32) + 9);
        assert_eq!((wr_qp(id), id & 0xffff_ffff), (255, 9));
    }
}
