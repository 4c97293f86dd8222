//! Splitting a request into work-request sized slices.

/// Most work requests (slices) one request may be cut into. A request's outstanding work
/// requests are counted in 32 bits, and a batch's too; this keeps both far from overflowing.
pub const MAX_SLICES_PER_REQUEST: u64 = 1 << 24;

/// How requests are cut into slices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlicePlan {
    /// Target slice size (at most the fabric's `max_transfer_size`).
    pub slice_size: u64,
    /// A tail shorter than this is merged into the previous slice instead of sent alone, as long
    /// as the merged slice stays within `max`.
    pub min_tail: u64,
    /// Hard limit per slice (the fabric's `max_transfer_size`).
    pub max: u64,
}

impl SlicePlan {
    /// A plan for `slice_size` under the fabric limit `max`; tails under a quarter of a slice
    /// are merged.
    pub fn new(slice_size: u64, max: u64) -> Self {
        let slice_size = slice_size.clamp(1, max.max(1));
        SlicePlan {
            slice_size,
            min_tail: slice_size / 4,
            max: max.max(1),
        }
    }

    /// Number of slices for `len` bytes (`len >= 1`).
    #[inline]
    pub fn count(&self, len: u64) -> u64 {
        let s = self.slice_size;
        // Small requests are the common case; skip the divisions.
        if len <= s {
            return 1;
        }
        let full = len / s;
        let tail = len % s;
        if full == 0 {
            return 1;
        }
        if tail == 0 {
            return full;
        }
        if tail < self.min_tail && s + tail <= self.max {
            full
        } else {
            full + 1
        }
    }

    /// Offset and length of slice `i` of `n = count(len)` slices.
    #[inline]
    pub fn slice(&self, len: u64, i: u64, n: u64) -> (u64, u64) {
        if n == 1 {
            return (0, len);
        }
        let off = i * self.slice_size;
        if i + 1 == n {
            (off, len - off)
        } else {
            (off, self.slice_size)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn merges_small_tail() {
        let p = SlicePlan::new(1000, 1 << 30);
        assert_eq!(p.count(1000), 1);
        assert_eq!(p.count(2100), 2); // 100-byte tail merged
        assert_eq!(p.slice(2100, 1, 2), (1000, 1100));
        assert_eq!(p.count(2300), 3); // 300 >= 250 stands alone
        assert_eq!(p.count(10), 1);
    }

    #[test]
    fn never_exceeds_max() {
        let p = SlicePlan::new(1000, 1050);
        assert_eq!(p.count(2100), 3);
        assert_eq!(p.slice(2100, 2, 3), (2000, 100));
    }

    proptest! {
        #[test]
        fn slices_tile_the_request(len in 1u64..1_000_000, s in 1u64..70_000, max in 1u64..200_000) {
            let p = SlicePlan::new(s, max);
            let n = p.count(len);
            let mut next = 0;
            for i in 0..n {
                let (off, l) = p.slice(len, i, n);
                prop_assert_eq!(off, next);
                prop_assert!(l >= 1 && l <= p.max);
                if n > 1 && i + 1 == n {
                    prop_assert!(l >= p.min_tail || p.slice_size + l > p.max);
                }
                next = off + l;
            }
            prop_assert_eq!(next, len);
        }
    }
}
