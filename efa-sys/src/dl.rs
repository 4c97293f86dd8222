//! Thin `dlopen`/`dlvsym` wrapper.

use core::ffi::{c_char, c_void, CStr};

use crate::error::{DlErrorText, LibraryName, LoadError};

/// An open shared library. Never closed: the function pointers resolved from
/// it are handed out with `'static` lifetime.
#[derive(Clone, Copy)]
pub(crate) struct Library {
    handle: *mut c_void,
    name: LibraryName,
}

impl Library {
    /// `dlopen(name, RTLD_NOW | RTLD_LOCAL)`.
    pub(crate) fn open(name: &CStr) -> Result<Self, LoadError> {
        let library = LibraryName::new(name.to_bytes());
        // SAFETY: `name` is NUL-terminated; dlopen has no other precondition.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(LoadError::LibraryNotFound {
                library,
                detail: last_dlerror(name.to_bytes()),
            });
        }
        Ok(Self {
            handle,
            name: library,
        })
    }

    pub(crate) fn name(&self) -> LibraryName {
        self.name
    }

    /// Looks `symbol` up at `version` first, so that a symbol exported under
    /// several versions binds to the ABI the headers describe; falls back to
    /// the default version for libraries built without symbol versioning.
    /// Both strings must end in NUL.
    pub(crate) fn symbol(
        &self,
        symbol: &'static str,
        version: &'static str,
    ) -> Option<*mut c_void> {
        debug_assert!(symbol.ends_with('\0') && version.ends_with('\0'));
        let sym = symbol.as_ptr().cast::<c_char>();
        // SAFETY: `handle` came from a successful dlopen and is never closed;
        // both strings are NUL-terminated (checked above in debug builds,
        // guaranteed by the callers' `concat!(.., "\0")`).
        let p = unsafe { libc::dlvsym(self.handle, sym, version.as_ptr().cast()) };
        if !p.is_null() {
            return Some(p);
        }
        // SAFETY: as above.
        let p = unsafe { libc::dlsym(self.handle, sym) };
        (!p.is_null()).then_some(p)
    }
}

/// The pending `dlerror()` text, minus the "<library>: " prefix glibc puts
/// in front (the error names the library already).
fn last_dlerror(library: &[u8]) -> DlErrorText {
    // SAFETY: dlerror returns NULL or a NUL-terminated thread-local string,
    // which is copied before any other dl* call can overwrite it.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            DlErrorText::new(b"unknown dlopen error")
        } else {
            let text = CStr::from_ptr(e).to_bytes();
            let text = text
                .strip_prefix(library)
                .and_then(|t| t.strip_prefix(b": "))
                .unwrap_or(text);
            DlErrorText::new(text)
        }
    }
}
