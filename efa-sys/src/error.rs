//! The loader's error type.

use core::fmt;

/// A short string kept inline (no allocation), truncated to `N` bytes.
///
/// Used for library names and `dlerror()` texts inside [`LoadError`], which
/// must be `Copy` so that a cached load failure can be handed out repeatedly.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct FixedStr<const N: usize> {
    buf: [u8; N],
    len: u8,
}

impl<const N: usize> FixedStr<N> {
    /// Copies `bytes`, cut at the last UTF-8 boundary that fits in `N` bytes;
    /// bytes that are not UTF-8 become `?` so that [`as_str`](Self::as_str)
    /// is total.
    pub fn new(bytes: &[u8]) -> Self {
        const { assert!(N <= u8::MAX as usize, "FixedStr holds at most 255 bytes") };
        let mut buf = [0u8; N];
        let mut len = 0;
        let mut rest = bytes;
        while !rest.is_empty() && len < N {
            let (good, bad) = match core::str::from_utf8(rest) {
                Ok(s) => (s, false),
                Err(e) => (
                    // SAFETY: `valid_up_to` is the length of a valid UTF-8 prefix.
                    unsafe { core::str::from_utf8_unchecked(&rest[..e.valid_up_to()]) },
                    true,
                ),
            };
            for ch in good.chars() {
                let w = ch.len_utf8();
                if len + w > N {
                    return Self {
                        buf,
                        len: len as u8,
                    };
                }
                ch.encode_utf8(&mut buf[len..len + w]);
                len += w;
            }
            rest = &rest[good.len()..];
            if bad {
                if len < N {
                    buf[len] = b'?';
                    len += 1;
                }
                rest = &rest[1..];
            }
        }
        Self {
            buf,
            len: len as u8,
        }
    }

    /// The stored text.
    pub fn as_str(&self) -> &str {
        // `new` writes whole UTF-8 characters only.
        core::str::from_utf8(&self.buf[..usize::from(self.len)]).unwrap_or("")
    }
}

impl<const N: usize> fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<const N: usize> fmt::Display for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// The buffers are sized so that `LoadError` stays under 128 bytes: callers
// wrap it in their own error enums and return it in `Result`s.

/// Name of a shared library as given to `dlopen` (cut at 40 bytes).
pub type LibraryName = FixedStr<40>;
/// Text of `dlerror()` without the leading library name (cut at 72 bytes).
pub type DlErrorText = FixedStr<72>;

/// Why libibverbs or libefa could not be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoadError {
    /// `dlopen` failed (library not installed, or not loadable).
    LibraryNotFound {
        /// The library name passed to `dlopen`, e.g. `libibverbs.so.1`.
        library: LibraryName,
        /// What `dlerror()` said.
        detail: DlErrorText,
    },
    /// The library loaded but lacks a symbol the stack cannot work without
    /// (rdma-core older than this crate's floor, or not rdma-core at all).
    SymbolMissing {
        /// The library the symbol was looked up in.
        library: LibraryName,
        /// The C symbol name.
        symbol: &'static str,
        /// The symbol version asked for first (e.g. `IBVERBS_1.1`).
        version: &'static str,
    },
}

impl LoadError {
    /// The library this error is about.
    pub fn library(&self) -> &str {
        match self {
            LoadError::LibraryNotFound { library, .. }
            | LoadError::SymbolMissing { library, .. } => library.as_str(),
        }
    }
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::LibraryNotFound { library, detail } => {
                write!(f, "cannot load {library}: {detail}")?;
                if library.as_str().starts_with("libibverbs") || library.as_str().starts_with("libefa") {
                    f.write_str(" (install rdma-core: libibverbs1 and ibverbs-providers)")?;
                }
                Ok(())
            }
            LoadError::SymbolMissing { library, symbol, version } => write!(
                f,
                "{library} has no symbol {symbol} (version {version}); rdma-core is too old or not rdma-core"
            ),
        }
    }
}

impl core::error::Error for LoadError {}
