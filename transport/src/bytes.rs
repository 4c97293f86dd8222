//! The one length-checked little-endian byte reader of the hand-written decoders (segment
//! descriptors, discovery frames, fabric addresses and keys), with the one error for input that
//! is short or malformed field by field ([`BytesError`]). Each decoder's own error keeps it as
//! its cause.
//!
//! Length-prefixed fields (`blob`, `str`) carry a little-endian `u16` length, then the bytes.

/// Why bytes do not read as the fields asked for (or, when encoding, why a field does not fit
/// its length prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BytesError {
    /// The input ended early.
    #[error("truncated: need {need} bytes at offset {at}, have {have}")]
    Truncated {
        /// Offset of the field.
        at: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// A field over its limit.
    #[error("field {field} has {len} entries/bytes, limit {max}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A string field that is not UTF-8.
    #[error("field {0} is not UTF-8")]
    BadUtf8(&'static str),
    /// Bytes left over after the last field.
    #[error("{0} trailing bytes")]
    Trailing(usize),
}

/// Reads fixed-width little-endian fields and length-prefixed fields, checking every length.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, at: 0 }
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.at
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], BytesError> {
        let have = self.remaining();
        if n > have {
            return Err(BytesError::Truncated {
                at: self.at,
                need: n,
                have,
            });
        }
        let s = &self.buf[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }

    /// The next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], BytesError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, BytesError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, BytesError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, BytesError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, BytesError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A `u16`-length-prefixed field of at most `max` bytes.
    pub(crate) fn blob(&mut self, field: &'static str, max: usize) -> Result<&'a [u8], BytesError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(BytesError::TooLong { field, len, max });
        }
        self.take(len)
    }

    /// A `u16`-length-prefixed UTF-8 field of at most `max` bytes.
    pub(crate) fn str(&mut self, field: &'static str, max: usize) -> Result<String, BytesError> {
        let b = self.blob(field, max)?;
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| BytesError::BadUtf8(field))
    }

    /// A `u16` count of entries, at most `max`.
    pub(crate) fn count(&mut self, field: &'static str, max: usize) -> Result<usize, BytesError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(BytesError::TooLong { field, len: n, max });
        }
        Ok(n)
    }

    /// Fails unless every byte was read.
    #[cfg_attr(not(feature = "rdma"), allow(dead_code))] // The RDMA fabrics' codecs.
    pub(crate) fn end(&self) -> Result<(), BytesError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(BytesError::Trailing(n)),
        }
    }
}

/// `n` entries of `field` as a `u16` count, refusing more than `max`.
pub(crate) fn check_count(field: &'static str, n: usize, max: usize) -> Result<u16, BytesError> {
    u16::try_from(n)
        .ok()
        .filter(|&c| usize::from(c) <= max)
        .ok_or(BytesError::TooLong { field, len: n, max })
}

/// Appends `b` with its `u16` length prefix, refusing more than `max` bytes.
pub(crate) fn put_blob(
    out: &mut Vec<u8>,
    field: &'static str,
    b: &[u8],
    max: usize,
) -> Result<(), BytesError> {
    let len = check_count(field, b.len(), max)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(b);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_and_names_what_is_short() {
        let mut out = vec![1, 0x34, 0x12];
        put_blob(&mut out, "name", b"ab", 8).unwrap();
        let mut r = Reader::new(&out);
        assert_eq!((r.u8().unwrap(), r.u16().unwrap()), (1, 0x1234));
        assert_eq!(r.str("name", 8).unwrap(), "ab");
        assert_eq!(r.end(), Ok(()));
        assert_eq!(
            r.u32(),
            Err(BytesError::Truncated {
                at: 7,
                need: 4,
                have: 0
            })
        );
    }

    #[test]
    fn length_prefixes_are_bounded_both_ways() {
        let mut out = Vec::new();
        assert_eq!(
            put_blob(&mut out, "f", &[0; 5], 4),
            Err(BytesError::TooLong {
                field: "f",
                len: 5,
                max: 4
            })
        );
        assert!(out.is_empty());
        let mut r = Reader::new(&[5, 0, 1, 2, 3, 4, 5]);
        assert!(matches!(
            r.blob("f", 4),
            Err(BytesError::TooLong { len: 5, .. })
        ));
        let mut r = Reader::new(&[1, 0, 0xff, 9]);
        assert_eq!(r.str("s", 4), Err(BytesError::BadUtf8("s")));
        assert_eq!(r.end(), Err(BytesError::Trailing(1)));
    }
}
