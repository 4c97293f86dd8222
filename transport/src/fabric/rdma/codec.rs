//! Length-checked little-endian byte codec for addresses and keys that cross machines.
//!
//! Decoding never panics: every read checks the remaining length and fails with a
//! [`FabricError`] that names the rail and what was wrong.

use crate::{BytesError, FabricError};

/// Appends fixed-width fields to a buffer.
#[derive(Debug, Default)]
pub(crate) struct Writer(Vec<u8>);

impl Writer {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Writer(Vec::with_capacity(n))
    }
    pub(crate) fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub(crate) fn bytes(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Reads fixed-width fields with [`bytes::Reader`](crate::bytes::Reader), naming the rail and
/// what is read in its errors.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    bytes: crate::bytes::Reader<'a>,
    rail: u16,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// A reader of `what` (for error messages) given for `rail`.
    pub(crate) fn new(buf: &'a [u8], rail: u16, what: &'static str) -> Self {
        Reader {
            bytes: crate::bytes::Reader::new(buf),
            rail,
            what,
        }
    }

    pub(crate) fn error(&self, reason: String) -> FabricError {
        FabricError::BadAddress {
            rail: self.rail,
            reason: format!("{}: {reason}", self.what),
        }
    }

    fn read<T>(
        &mut self,
        f: impl FnOnce(&mut crate::bytes::Reader<'a>) -> Result<T, BytesError>,
    ) -> Result<T, FabricError> {
        f(&mut self.bytes).map_err(|e| self.error(e.to_string()))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, FabricError> {
        self.read(|r| r.u8())
    }
    pub(crate) fn u16(&mut self) -> Result<u16, FabricError> {
        self.read(|r| r.u16())
    }
    pub(crate) fn u32(&mut self) -> Result<u32, FabricError> {
        self.read(|r| r.u32())
    }
    pub(crate) fn u64(&mut self) -> Result<u64, FabricError> {
        self.read(|r| r.u64())
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], FabricError> {
        self.read(|r| r.array())
    }

    /// Checks the magic bytes and the version, the first fields of every encoding.
    pub(crate) fn header(&mut self, magic: &[u8; 2], version: u8) -> Result<(), FabricError> {
        let m: [u8; 2] = self.array()?;
        if &m != magic {
            return Err(self.error(format!(
                "magic {m:02x?} is not {magic:02x?} (wrong fabric?)"
            )));
        }
        let v = self.u8()?;
        if v != version {
            return Err(self.error(format!("encoding version {v}, this build reads {version}")));
        }
        Ok(())
    }

    /// Fails unless every byte was consumed.
    pub(crate) fn end(mut self) -> Result<(), FabricError> {
        self.read(|r| r.end())
    }
}

/// Encoding of a remote key: magic `RK`, version 1, the 32-bit `rkey`.
const KEY_MAGIC: &[u8; 2] = b"RK";
const KEY_VERSION: u8 = 1;

/// Encodes a memory region's `rkey` for a descriptor.
pub(crate) fn encode_rkey(rkey: u32) -> Vec<u8> {
    Writer::with_capacity(7)
        .bytes(KEY_MAGIC)
        .u8(KEY_VERSION)
        .u32(rkey)
        .finish()
}

/// Decodes [`encode_rkey`]'s bytes.
pub(crate) fn decode_rkey(rail: u16, key: &[u8]) -> Result<u64, FabricError> {
    let mut r = Reader::new(key, rail, "remote key");
    let parsed = (|| {
        r.header(KEY_MAGIC, KEY_VERSION)?;
        let k = r.u32()?;
        Ok::<_, FabricError>(k)
    })();
    match parsed.and_then(|k| r.end().map(|()| k)) {
        Ok(k) => Ok(u64::from(k)),
        Err(_) => Err(FabricError::BadKey { rail }),
    }
}

/// Decodes a per-rail address list: `1..=MAX_RAILS` entries, rail `i` decoded by
/// `decode(i, bytes)`. Checks that the rails belong together are the caller's.
pub(crate) fn decode_rails<T>(
    addrs: &[Vec<u8>],
    decode: impl Fn(u16, &[u8]) -> Result<T, FabricError>,
) -> Result<Vec<T>, FabricError> {
    if addrs.is_empty() || addrs.len() > crate::fabric::MAX_RAILS {
        return Err(FabricError::BadAddress {
            rail: 0,
            reason: format!(
                "{} rails listed, expected 1..={}",
                addrs.len(),
                crate::fabric::MAX_RAILS
            ),
        });
    }
    addrs
        .iter()
        .enumerate()
        .map(|(i, a)| decode(i as u16, a))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn rkey_round_trip_and_rejects() {
        let k = encode_rkey(0xdead_beef);
        assert_eq!(decode_rkey(2, &k).unwrap(), 0xdead_beef);
        assert_eq!(
            decode_rkey(2, &k[..6]),
            Err(FabricError::BadKey { rail: 2 })
        );
        let mut long = k.clone();
        long.push(0);
        assert_eq!(decode_rkey(0, &long), Err(FabricError::BadKey { rail: 0 }));
        let mut v2 = k.clone();
        v2[2] = 2;
        assert!(decode_rkey(0, &v2).is_err());
        // A sim key (8 bytes, no magic) is refused, not misread.
        assert!(decode_rkey(0, &7u64.to_le_bytes()).is_err());
    }

    #[test]
    fn rail_lists_are_counted_and_decoded_in_order() {
        let one = |rail: u16, b: &[u8]| -> Result<(u16, u8), FabricError> {
            b.first()
                .map(|&v| (rail, v))
                .ok_or(FabricError::BadKey { rail })
        };
        assert_eq!(
            decode_rails(&[vec![7], vec![9]], one).unwrap(),
            [(0, 7), (1, 9)]
        );
        assert_eq!(
            decode_rails(&[vec![7], vec![]], one),
            Err(FabricError::BadKey { rail: 1 })
        );
        let none: [Vec<u8>; 0] = [];
        let too_many = vec![vec![1u8]; crate::fabric::MAX_RAILS + 1];
        for list in [&none[..], &too_many[..]] {
            match decode_rails(list, one) {
                Err(FabricError::BadAddress { reason, .. }) => {
                    assert!(
                        reason.contains(&format!("{} rails listed", list.len())),
                        "{reason}"
                    )
                }
                other => panic!("{} rails accepted: {other:?}", list.len()),
            }
        }
    }

    #[test]
    fn reader_names_what_is_wrong() {
        let mut r = Reader::new(&[1, 2], 3, "thing");
        let e = r.u32().unwrap_err();
        assert_eq!(
            e,
            FabricError::BadAddress {
                rail: 3,
                reason: "thing: truncated: need 4 bytes at offset 0, have 2".into()
            }
        );
    }

    proptest! {
        #[test]
        fn decode_rkey_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = decode_rkey(0, &bytes);
        }
    }
}
