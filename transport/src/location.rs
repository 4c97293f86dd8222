//! Where a registered buffer lives (`cpu:N`, `gpu:N`), used for rail affinity.

use std::fmt;
use std::str::FromStr;

/// The memory a segment lives in, parsed from tags such as `cpu:0` or `gpu:3`.
///
/// The index is a NUMA node for CPU memory and a device ordinal for GPU memory. The
/// [`RailPolicy`](crate::RailPolicy) hook maps a location to the rails closest to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    /// Host memory on the given NUMA node.
    Cpu(u32),
    /// Device memory of the given GPU.
    Gpu(u32),
}

impl Default for Location {
    fn default() -> Self {
        Location::Cpu(0)
    }
}

/// A location tag that is not `cpu:N` or `gpu:N`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad location tag {tag:?}: expected `cpu:N` or `gpu:N`")]
pub struct LocationParseError {
    /// The tag as given.
    pub tag: String,
}

impl FromStr for Location {
    type Err = LocationParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || LocationParseError { tag: s.to_string() };
        let (kind, index) = s.split_once(':').ok_or_else(bad)?;
        // Reject signs and blanks that `u32::from_str` would accept or that hide typos.
        if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let index: u32 = index.parse().map_err(|_| bad())?;
        match kind {
            "cpu" => Ok(Location::Cpu(index)),
            "gpu" => Ok(Location::Gpu(index)),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Cpu(n) => write!(f, "cpu:{n}"),
            Location::Gpu(n) => write!(f, "gpu:{n}"),
        }
    }
}

impl Location {
    /// Wire code of the kind (descriptor encoding).
    pub(crate) fn kind_code(self) -> u8 {
        match self {
            Location::Cpu(_) => 1,
            Location::Gpu(_) => 2,
        }
    }

    /// The NUMA node or GPU ordinal.
    pub fn index(self) -> u32 {
        match self {
            Location::Cpu(n) | Location::Gpu(n) => n,
        }
    }

    pub(crate) fn from_code(kind: u8, index: u32) -> Option<Self> {
        match kind {
            1 => Some(Location::Cpu(index)),
            2 => Some(Location::Gpu(index)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_tags() {
        assert_eq!("cpu:0".parse::<Location>().unwrap(), Location::Cpu(0));
        assert_eq!("gpu:7".parse::<Location>().unwrap(), Location::Gpu(7));
        assert_eq!(Location::Gpu(7).to_string(), "gpu:7");
    }

    #[test]
    fn rejects_bad_tags_by_name() {
        for tag in [
            "",
            "cpu",
            "cpu:",
            "cpu:-1",
            "cpu:+1",
            "npu:0",
            "gpu:x",
            "cpu:99999999999",
        ] {
            let err = tag.parse::<Location>().unwrap_err();
            assert_eq!(err.tag, tag);
        }
    }
}
