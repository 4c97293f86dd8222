//! Segment descriptors: what a peer needs to address a segment, and their binary encoding.
//!
//! # Wire format (format version 1.1)
//!
//! All integers little-endian. `str`/`bytes` are a `u16` length followed by that many bytes.
//!
//! ```text
//! magic    4  b"EFSD"
//! major    1  must equal 1 (incompatible changes bump it)
//! minor    1  compatible additions bump it; decoders skip trailing bytes of a newer minor
//! length   4  bytes that follow this field (the whole body), checked exactly
//! revision 8  descriptor revision (a re-registered name gets a higher one)
//! name     str, fabric str, engine str
//! location 1 kind (1 cpu, 2 gpu) + 4 index
//! access   1  bits (1 read, 2 write)
//! base     8, len 8 (base + len must not overflow)
//! rails    2  count, then per rail: address bytes, key bytes
//! -- 1.1 --
//! offers   1  count of alternate fabrics, then per offer: fabric str, rails as above
//! ```
//!
//! The first offer is `fabric` with `rails`; an engine that speaks several fabrics
//! ([`MultiFabric`](crate::fabric::multi::MultiFabric)) lists the others as alternates, in its
//! order of preference. A 1.0 decoder skips them (and reads the first offer only).
//!
//! Decoding checks every length against the input and the limits below and never panics; it
//! is fuzzed (`fuzz/fuzz_targets/descriptor_decode.rs`).

use crate::bytes::{check_count, put_blob, BytesError, Reader};
use crate::{Access, Location};

const MAGIC: &[u8; 4] = b"EFSD";
/// Major format version written and accepted.
pub const FORMAT_MAJOR: u8 = 1;
/// Minor format version written.
pub const FORMAT_MINOR: u8 = 1;
/// Longest name (segment, fabric, engine) in bytes.
pub const MAX_NAME_LEN: usize = 1024;
/// Most rails a descriptor may list.
pub const MAX_RAILS: usize = 64;
/// Longest per-rail address or key in bytes.
pub const MAX_BLOB_LEN: usize = 1024;
/// Most alternate fabrics a descriptor may list.
pub const MAX_ALTERNATES: usize = 3;

/// The fabric-specific part of a descriptor for one rail: opaque to the engine, meaningful to
/// the fabric that produced it (e.g. EFA: GID + QPN + QKey, and an rkey; TCP: host:port and a
/// region id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RailDescriptor {
    /// The owner's address on this rail.
    pub address: Vec<u8>,
    /// The remote key of the segment on this rail.
    pub key: Vec<u8>,
}

/// Everything a peer needs to open a segment: published through [`Metadata`](crate::Metadata).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentDescriptor {
    /// Revision, increasing each time the name is (re)published by its owner.
    pub revision: u64,
    /// Segment name (unique within the metadata namespace).
    pub name: String,
    /// Name of the fabric the segment is registered with (`sim`, `tcp`, `verbs`, `efa`).
    pub fabric: String,
    /// Name of the owning engine.
    pub engine: String,
    /// Where the memory lives.
    pub location: Location,
    /// What peers may do.
    pub access: Access,
    /// Base address in the owner's address space (remote offsets are added to it).
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Per-rail address and key.
    pub rails: Vec<RailDescriptor>,
    /// Other fabrics the owner can be reached over, in its order of preference after
    /// `fabric` (empty for an engine on one fabric).
    pub alternates: Vec<FabricOffer>,
}

/// One more fabric a segment's owner can be reached over: its name and its per-rail address
/// and key, as in the descriptor's first offer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct FabricOffer {
    /// Fabric name (`tcp`, `efa`, ...).
    pub fabric: String,
    /// Per-rail address and key on that fabric.
    pub rails: Vec<RailDescriptor>,
}

impl SegmentDescriptor {
    /// Every fabric the owner offers, in its order of preference: `(fabric, rails)`, the first
    /// offer first.
    pub fn offers(&self) -> impl Iterator<Item = (&str, &[RailDescriptor])> {
        std::iter::once((self.fabric.as_str(), self.rails.as_slice())).chain(
            self.alternates
                .iter()
                .map(|o| (o.fabric.as_str(), o.rails.as_slice())),
        )
    }
}

/// Why a descriptor could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DescriptorError {
    /// A field is short, too long or not UTF-8, or bytes are left over.
    #[error(transparent)]
    Bytes(#[from] BytesError),
    /// The magic bytes are wrong.
    #[error("bad descriptor magic {0:02x?}")]
    BadMagic([u8; 4]),
    /// An unknown major version.
    #[error("unsupported descriptor format version {major}.{minor}")]
    UnsupportedVersion {
        /// Major.
        major: u8,
        /// Minor.
        minor: u8,
    },
    /// The length field disagrees with the input.
    #[error("descriptor length field says {declared} bytes, input has {actual}")]
    LengthMismatch {
        /// Declared body length.
        declared: usize,
        /// Actual body length.
        actual: usize,
    },
    /// An unknown location kind.
    #[error("unknown location kind {0}")]
    BadLocation(u8),
    /// Unknown access bits.
    #[error("unknown access bits {0:#x}")]
    BadAccess(u8),
    /// `base + len` overflows.
    #[error("segment range {base:#x}+{len} overflows")]
    RangeOverflow {
        /// Base.
        base: u64,
        /// Length.
        len: u64,
    },
}

impl SegmentDescriptor {
    /// Encodes to the versioned binary form. Fails only when a field exceeds its limit.
    pub fn encode(&self) -> Result<Vec<u8>, DescriptorError> {
        if self.alternates.len() > MAX_ALTERNATES {
            return Err(BytesError::TooLong {
                field: "offers",
                len: self.alternates.len(),
                max: MAX_ALTERNATES,
            }
            .into());
        }
        if self.base.checked_add(self.len).is_none() {
            return Err(DescriptorError::RangeOverflow {
                base: self.base,
                len: self.len,
            });
        }
        let mut out = Vec::with_capacity(64 + self.name.len() + self.rails.len() * 32);
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_MAJOR);
        out.push(FORMAT_MINOR);
        out.extend_from_slice(&[0; 4]); // body length, patched below
        out.extend_from_slice(&self.revision.to_le_bytes());
        put_blob(&mut out, "name", self.name.as_bytes(), MAX_NAME_LEN)?;
        put_blob(&mut out, "fabric", self.fabric.as_bytes(), MAX_NAME_LEN)?;
        put_blob(&mut out, "engine", self.engine.as_bytes(), MAX_NAME_LEN)?;
        out.push(self.location.kind_code());
        out.extend_from_slice(&self.location.index().to_le_bytes());
        out.push(self.access.bits());
        out.extend_from_slice(&self.base.to_le_bytes());
        out.extend_from_slice(&self.len.to_le_bytes());
        put_rails(&mut out, &self.rails)?;
        out.push(self.alternates.len() as u8);
        for o in &self.alternates {
            put_blob(&mut out, "offer fabric", o.fabric.as_bytes(), MAX_NAME_LEN)?;
            put_rails(&mut out, &o.rails)?;
        }
        let body = (out.len() - 10) as u32;
        out[6..10].copy_from_slice(&body.to_le_bytes());
        Ok(out)
    }

    /// Decodes the binary form. Never panics; every malformed input is a [`DescriptorError`].
    pub fn decode(buf: &[u8]) -> Result<SegmentDescriptor, DescriptorError> {
        let mut r = Reader::new(buf);
        let magic = r.array::<4>()?;
        if &magic != MAGIC {
            return Err(DescriptorError::BadMagic(magic));
        }
        let major = r.u8()?;
        let minor = r.u8()?;
        if major != FORMAT_MAJOR {
            return Err(DescriptorError::UnsupportedVersion { major, minor });
        }
        let declared = r.u32()? as usize;
        let actual = r.remaining();
        if declared != actual {
            return Err(DescriptorError::LengthMismatch { declared, actual });
        }
        let revision = r.u64()?;
        let name = r.str("name", MAX_NAME_LEN)?;
        let fabric = r.str("fabric", MAX_NAME_LEN)?;
        let engine = r.str("engine", MAX_NAME_LEN)?;
        let kind = r.u8()?;
        let index = r.u32()?;
        let location =
            Location::from_code(kind, index).ok_or(DescriptorError::BadLocation(kind))?;
        let bits = r.u8()?;
        let access = Access::from_bits(bits).ok_or(DescriptorError::BadAccess(bits))?;
        let base = r.u64()?;
        let len = r.u64()?;
        if base.checked_add(len).is_none() {
            return Err(DescriptorError::RangeOverflow { base, len });
        }
        let rails = read_rails(&mut r)?;
        let alternates = if minor >= 1 {
            read_offers(&mut r)?
        } else {
            Vec::new()
        };
        let rest = r.remaining();
        // A newer minor version may append fields this decoder does not know; skip them.
        let newer = minor > FORMAT_MINOR;
        if rest != 0 && !newer {
            return Err(BytesError::Trailing(rest).into());
        }
        Ok(SegmentDescriptor {
            revision,
            name,
            fabric,
            engine,
            location,
            access,
            base,
            len,
            rails,
            alternates,
        })
    }
}

fn put_rails(out: &mut Vec<u8>, rails: &[RailDescriptor]) -> Result<(), BytesError> {
    let n = check_count("rails", rails.len(), MAX_RAILS)?;
    out.extend_from_slice(&n.to_le_bytes());
    for r in rails {
        put_blob(out, "rail address", &r.address, MAX_BLOB_LEN)?;
        put_blob(out, "rail key", &r.key, MAX_BLOB_LEN)?;
    }
    Ok(())
}

fn read_rails(r: &mut Reader<'_>) -> Result<Vec<RailDescriptor>, BytesError> {
    let n = r.count("rails", MAX_RAILS)?;
    let mut rails = Vec::with_capacity(n);
    for _ in 0..n {
        let address = r.blob("rail address", MAX_BLOB_LEN)?.to_vec();
        let key = r.blob("rail key", MAX_BLOB_LEN)?.to_vec();
        rails.push(RailDescriptor { address, key });
    }
    Ok(rails)
}

fn read_offers(r: &mut Reader<'_>) -> Result<Vec<FabricOffer>, BytesError> {
    let n = r.u8()? as usize;
    if n > MAX_ALTERNATES {
        return Err(BytesError::TooLong {
            field: "offers",
            len: n,
            max: MAX_ALTERNATES,
        });
    }
    let mut offers = Vec::with_capacity(n);
    for _ in 0..n {
        let fabric = r.str("offer fabric", MAX_NAME_LEN)?;
        let rails = read_rails(r)?;
        offers.push(FabricOffer { fabric, rails });
    }
    Ok(offers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentDescriptor {
        SegmentDescriptor {
            revision: 3,
            name: "kv/0".into(),
            fabric: "sim".into(),
            engine: "node-a".into(),
            location: Location::Gpu(2),
            access: Access::REMOTE_READ_WRITE,
            base: 0x7000_0000,
            len: 1 << 20,
            rails: vec![
                RailDescriptor {
                    address: vec![1, 2, 3],
                    key: vec![9; 8],
                },
                RailDescriptor::default(),
            ],
            alternates: vec![FabricOffer {
                fabric: "tcp".into(),
                rails: vec![RailDescriptor {
                    address: b"127.0.0.1:9".to_vec(),
                    key: vec![4; 8],
                }],
            }],
        }
    }

    #[test]
    fn offers_list_the_first_fabric_then_the_alternates() {
        let d = sample();
        let names: Vec<&str> = d.offers().map(|(f, _)| f).collect();
        assert_eq!(names, ["sim", "tcp"]);
        assert_eq!(d.offers().nth(1).unwrap().1, d.alternates[0].rails);
    }

    #[test]
    fn decodes_format_1_0_without_offers() {
        let mut d = sample();
        d.alternates.clear();
        let mut bytes = d.encode().unwrap();
        // 1.0 ends after the rails: drop the offer count and relabel.
        bytes.pop();
        bytes[5] = 0;
        let body = (bytes.len() - 10) as u32;
        bytes[6..10].copy_from_slice(&body.to_le_bytes());
        assert_eq!(SegmentDescriptor::decode(&bytes).unwrap(), d);
    }

    #[test]
    fn refuses_too_many_offers() {
        let mut d = sample();
        d.alternates = vec![FabricOffer::default(); MAX_ALTERNATES + 1];
        assert!(matches!(
            d.encode(),
            Err(DescriptorError::Bytes(BytesError::TooLong {
                field: "offers",
                ..
            }))
        ));
        let mut bytes = sample().encode().unwrap();
        // The offer count follows the first offer's rails.
        let at = bytes.len() - (2 + 3 + 2 + 2 + 11 + 2 + 8) - 1;
        assert_eq!(bytes[at], 1);
        bytes[at] = MAX_ALTERNATES as u8 + 1;
        assert!(matches!(
            SegmentDescriptor::decode(&bytes),
            Err(DescriptorError::Bytes(BytesError::TooLong {
                field: "offers",
                ..
            }))
        ));
    }

    #[test]
    fn round_trips() {
        let d = sample();
        let bytes = d.encode().unwrap();
        assert_eq!(SegmentDescriptor::decode(&bytes).unwrap(), d);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(
                SegmentDescriptor::decode(&bytes[..cut]).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn rejects_bad_header_fields() {
        let mut bytes = sample().encode().unwrap();
        bytes[0] = b'X';
        assert!(matches!(
            SegmentDescriptor::decode(&bytes),
            Err(DescriptorError::BadMagic(_))
        ));
        let mut bytes = sample().encode().unwrap();
        bytes[4] = 2;
        assert_eq!(
            SegmentDescriptor::decode(&bytes),
            Err(DescriptorError::UnsupportedVersion {
                major: 2,
                minor: FORMAT_MINOR
            })
        );
        let mut bytes = sample().encode().unwrap();
        bytes.push(0);
        assert!(matches!(
            SegmentDescriptor::decode(&bytes),
            Err(DescriptorError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn newer_minor_may_append_fields() {
        let mut bytes = sample().encode().unwrap();
        bytes[5] = FORMAT_MINOR + 1;
        bytes.extend_from_slice(&[0xAA; 5]);
        let body = (bytes.len() - 10) as u32;
        bytes[6..10].copy_from_slice(&body.to_le_bytes());
        assert_eq!(SegmentDescriptor::decode(&bytes).unwrap(), sample());
        bytes[5] = FORMAT_MINOR;
        assert_eq!(
            SegmentDescriptor::decode(&bytes),
            Err(DescriptorError::Bytes(BytesError::Trailing(5)))
        );
    }

    #[test]
    fn encode_refuses_oversized_fields() {
        let mut d = sample();
        d.name = "x".repeat(MAX_NAME_LEN + 1);
        assert!(matches!(
            d.encode(),
            Err(DescriptorError::Bytes(BytesError::TooLong {
                field: "name",
                ..
            }))
        ));
        let mut d = sample();
        d.base = u64::MAX;
        assert!(matches!(
            d.encode(),
            Err(DescriptorError::RangeOverflow { .. })
        ));
    }
}
