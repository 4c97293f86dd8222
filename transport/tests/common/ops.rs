//! Random request sequences for the model tests (over `sim` and over `efa`): one operation, the
//! request it makes, and the filter that keeps a batch's effect independent of completion order.

use transport::*;

/// One request of a model test, before it meets an engine.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub read: bool,
    pub notify: bool,
    pub peer: usize,
    pub len: u64,
    pub local_off: u64,
    pub remote_off: u64,
}

impl Op {
    /// The request from `local` to `remote`; a notifying WRITE counts tag `tag`.
    pub fn request(&self, local: SegmentId, remote: RemoteSegment, tag: u32) -> Request {
        let (lo, ro, n) = (self.local_off, self.remote_off, self.len);
        if self.read {
            return Request::read(local, lo, remote, ro, n);
        }
        let req = Request::write(local, lo, remote, ro, n);
        if self.notify {
            req.with_op(Opcode::WriteWithNotify(tag))
        } else {
            req
        }
    }
}

impl Op {
    /// Applies the operation to the reference model: plain copies between `local` and the
    /// peer's memory in `remotes`, and a count in `notes` for a notifying WRITE.
    pub fn apply(&self, local: &mut [u8], remotes: &mut [Vec<u8>], notes: &mut [u64]) {
        let (lo, ro, n) = (
            self.local_off as usize,
            self.remote_off as usize,
            self.len as usize,
        );
        let remote = &mut remotes[self.peer];
        if self.read {
            local[lo..lo + n].copy_from_slice(&remote[ro..ro + n]);
        } else {
            remote[ro..ro + n].copy_from_slice(&local[lo..lo + n]);
            notes[self.peer] += u64::from(self.notify);
        }
    }
}

fn overlap(a: u64, al: u64, b: u64, bl: u64) -> bool {
    a < b + bl && b < a + al
}

/// Drops requests whose effect would depend on completion order (unordered fabric): a write
/// target overlapping another request's remote range on the same peer, or a read destination
/// overlapping another request's local range. Peers are taken modulo `peers`.
pub fn independent(ops: Vec<Op>, peers: usize) -> Vec<Op> {
    let mut kept: Vec<Op> = Vec::new();
    for mut op in ops {
        op.peer %= peers;
        let clash = kept.iter().any(|k| {
            let remote = k.peer == op.peer
                && (!k.read || !op.read)
                && overlap(k.remote_off, k.len, op.remote_off, op.len);
            let local = (k.read || op.read) && overlap(k.local_off, k.len, op.local_off, op.len);
            remote || local
        });
        if !clash {
            kept.push(op);
        }
    }
    kept
}
