//! Hugepage-backed memory and what backs a range of memory.
//!
//! Registering memory pins it page by page, so its cost grows with the number of pages: a GiB
//! of 4 KiB pages is 262,144 pages, of 2 MiB pages 512, of 1 GiB pages one. Mooncake's users
//! saw a 100 GB pool take 302 s to register with 4 KiB pages and 1.6 s with hugepages.
//! [`OwnedMemory::huge`](crate::OwnedMemory::huge) maps such memory; [`page_info`] tells what
//! backs any range (the engine reports it per registration).

use std::io::{BufRead, BufReader};

use crate::OsError;

/// 2 MiB, the x86_64 and aarch64 (4 KiB granule) huge page.
pub const SIZE_2M: u64 = 2 << 20;
/// 1 GiB, the gigantic page.
pub const SIZE_1G: u64 = 1 << 30;

/// Which pages [`OwnedMemory::huge`](crate::OwnedMemory::huge) asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HugePages {
    /// 2 MiB hugetlbfs pages when some are reserved (`/proc/sys/vm/nr_hugepages`), else
    /// anonymous memory advised for transparent hugepages (`madvise(MADV_HUGEPAGE)`), which
    /// the kernel backs with 2 MiB pages when it can and with base pages when it cannot.
    Any,
    /// 2 MiB hugetlbfs pages only (`MAP_HUGETLB | MAP_HUGE_2MB`); refused when none are free.
    Size2M,
    /// 1 GiB hugetlbfs pages only (`MAP_HUGETLB | MAP_HUGE_1GB`); refused when none are free.
    Size1G,
}

impl HugePages {
    /// The hugetlbfs page size asked for (2 MiB for [`HugePages::Any`], its first choice).
    pub fn page_size(self) -> u64 {
        match self {
            HugePages::Any | HugePages::Size2M => SIZE_2M,
            HugePages::Size1G => SIZE_1G,
        }
    }
}

/// What backs a piece of [`OwnedMemory`](crate::OwnedMemory), as chosen when it was mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backing {
    /// Base pages from the allocator.
    Base,
    /// Anonymous memory, 2 MiB aligned, advised for transparent hugepages; how much of it the
    /// kernel backs with them, [`page_info`] tells.
    Transparent,
    /// hugetlbfs pages of this many bytes.
    Huge(u64),
}

/// A hugepage mapping the OS refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot map {len} bytes of {page_size}-byte {what}")]
pub struct HugeAllocError {
    /// Requested length.
    pub len: usize,
    /// Page size asked for.
    pub page_size: u64,
    /// What was being mapped (`hugetlbfs pages`, `transparent-hugepage memory`).
    pub what: &'static str,
    /// The OS error (`ENOMEM` when no hugepages are free), or `None` for a length of 0 or one
    /// that overflows when rounded up to whole pages.
    #[source]
    pub source: Option<OsError>,
}

/// What backs a range of this process's memory: the kernel's view (`/proc/self/smaps`) of the
/// mapping that holds its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageInfo {
    /// `KernelPageSize` of the mapping: 4096 for base pages (and transparent hugepages), 2 MiB
    /// or 1 GiB for hugetlbfs pages.
    pub page_size: u64,
    /// `AnonHugePages`: bytes of the mapping backed by transparent hugepages now.
    pub transparent_huge_bytes: u64,
    /// The mapping's length in bytes.
    pub mapping_len: u64,
}

impl PageInfo {
    /// The largest page size seen: the hugetlbfs size, else 2 MiB when transparent hugepages
    /// back some of the mapping, else the base page size.
    pub fn effective_page_size(&self) -> u64 {
        if self.page_size > 4096 {
            self.page_size
        } else if self.transparent_huge_bytes > 0 {
            SIZE_2M
        } else {
            self.page_size
        }
    }
}

/// Why [`page_info`] has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageInfoError {
    /// `/proc/self/smaps` could not be read.
    #[error("cannot read /proc/self/smaps")]
    Read(#[source] OsError),
    /// No mapping holds the address.
    #[error("no mapping holds address {0:#x}")]
    Unmapped(u64),
}

/// What backs the memory at `addr` (the mapping holding it; a range spanning several mappings
/// is described by its first). Reads `/proc/self/smaps` up to that mapping: a control-path
/// call, never one for the hot path.
///
/// # Errors
///
/// [`PageInfoError::Read`] when smaps cannot be read, [`PageInfoError::Unmapped`] when no
/// mapping holds `addr`.
pub fn page_info(addr: u64) -> Result<PageInfo, PageInfoError> {
    let file =
        std::fs::File::open("/proc/self/smaps").map_err(|e| PageInfoError::Read(e.into()))?;
    parse_smaps(BufReader::new(file), addr)
}

/// [`page_info`] over smaps text from `reader`.
fn parse_smaps(reader: impl BufRead, addr: u64) -> Result<PageInfo, PageInfoError> {
    let mut inside: Option<PageInfo> = None;
    for line in reader.lines() {
        let line = line.map_err(|e| PageInfoError::Read(e.into()))?;
        if let Some(range) = vma_range(&line) {
            if inside.is_some() {
                break;
            }
            if range.contains(&addr) {
                inside = Some(PageInfo {
                    page_size: 4096,
                    transparent_huge_bytes: 0,
                    mapping_len: range.end - range.start,
                });
            }
            continue;
        }
        let Some(info) = inside.as_mut() else {
            continue;
        };
        if let Some(kb) = field_kb(&line, "KernelPageSize:") {
            info.page_size = kb << 10;
        } else if let Some(kb) = field_kb(&line, "AnonHugePages:") {
            info.transparent_huge_bytes = kb << 10;
        }
    }
    inside.ok_or(PageInfoError::Unmapped(addr))
}

/// The address range of an smaps header line (`start-end perms ...`).
fn vma_range(line: &str) -> Option<std::ops::Range<u64>> {
    let first = line.split_ascii_whitespace().next()?;
    let (a, b) = first.split_once('-')?;
    let start = u64::from_str_radix(a, 16).ok()?;
    let end = u64::from_str_radix(b, 16).ok()?;
    Some(start..end)
}

/// The value of `name:   N kB`.
fn field_kb(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?.trim();
    rest.strip_suffix("kB")?.trim().parse().ok()
}

/// An anonymous mapping made by [`map`], unmapped by [`unmap`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mapping {
    pub ptr: std::ptr::NonNull<u8>,
    pub map_len: usize,
    pub backing: Backing,
}

/// Maps `len` bytes (at least 1) as `want` asks.
pub(crate) fn map(len: usize, want: HugePages) -> Result<Mapping, HugeAllocError> {
    let err = |page_size: u64, what: &'static str, source: Option<OsError>| HugeAllocError {
        len,
        page_size,
        what,
        source,
    };
    let size = want.page_size();
    if len == 0 {
        return Err(err(size, "hugetlbfs pages", None));
    }
    match map_hugetlb(len, size) {
        Ok(m) => Ok(m),
        Err(e) if want != HugePages::Any => Err(err(size, "hugetlbfs pages", e)),
        Err(_) => map_transparent(len).map_err(|e| err(SIZE_2M, "transparent-hugepage memory", e)),
    }
}

/// `len` rounded up to whole `page` bytes, `None` on overflow.
fn round_up(len: usize, page: u64) -> Option<usize> {
    let page = usize::try_from(page).ok()?;
    len.checked_add(page - 1).map(|l| l / page * page)
}

/// A private anonymous read-write mapping of `len` bytes, with `flags` beside
/// `MAP_PRIVATE | MAP_ANONYMOUS`.
fn mmap_anonymous(len: usize, flags: libc::c_int) -> Result<*mut libc::c_void, OsError> {
    // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
    // existing memory; the result is checked before use.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(p)
}

fn map_hugetlb(len: usize, page: u64) -> Result<Mapping, Option<OsError>> {
    let map_len = round_up(len, page).ok_or(None)?;
    let size_flag = if page == SIZE_1G {
        libc::MAP_HUGE_1GB
    } else {
        libc::MAP_HUGE_2MB
    };
    let p = mmap_anonymous(map_len, libc::MAP_HUGETLB | size_flag)?;
    let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or(None)?;
    Ok(Mapping {
        ptr,
        map_len,
        backing: Backing::Huge(page),
    })
}

/// Maps `len` bytes (at least 1) of anonymous memory on base pages only: advised
/// `MADV_NOHUGEPAGE`, so the kernel backs it with base pages even where transparent hugepages
/// are `always` on.
pub(crate) fn map_base(len: usize) -> Result<Mapping, HugeAllocError> {
    let page = 4096;
    let err = |source| HugeAllocError {
        len,
        page_size: page,
        what: "base pages",
        source,
    };
    let map_len = round_up(len, page)
        .filter(|&l| l > 0)
        .ok_or_else(|| err(None))?;
    let p = mmap_anonymous(map_len, 0).map_err(|e| err(Some(e)))?;
    // Advice only: a kernel without transparent hugepages refuses it, and has none to give.
    // SAFETY: `p..p+map_len` is this mapping.
    unsafe { libc::madvise(p, map_len, libc::MADV_NOHUGEPAGE) };
    let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or_else(|| err(None))?;
    Ok(Mapping {
        ptr,
        map_len,
        backing: Backing::Base,
    })
}

/// Anonymous memory aligned to 2 MiB (so whole transparent hugepages fit), advised for them.
fn map_transparent(len: usize) -> Result<Mapping, Option<OsError>> {
    let two = SIZE_2M as usize;
    let map_len = round_up(len, SIZE_2M).ok_or(None)?;
    let over = map_len.checked_add(two).ok_or(None)?;
    let p = mmap_anonymous(over, 0)?;
    let base = p as usize;
    let start = (base + two - 1) & !(two - 1);
    let head = start - base;
    let tail = over - head - map_len;
    // SAFETY: both ranges lie inside the mapping just made, outside the part kept.
    unsafe {
        if head > 0 {
            libc::munmap(p, head);
        }
        if tail > 0 {
            libc::munmap((start + map_len) as *mut libc::c_void, tail);
        }
    }
    // Advice only: a kernel without transparent hugepages refuses it, and base pages serve.
    // SAFETY: `start..start+map_len` is this mapping.
    unsafe { libc::madvise(start as *mut libc::c_void, map_len, libc::MADV_HUGEPAGE) };
    let ptr = std::ptr::NonNull::new(start as *mut u8).ok_or(None)?;
    Ok(Mapping {
        ptr,
        map_len,
        backing: Backing::Transparent,
    })
}

/// Unmaps a mapping made by [`map`].
///
/// # Safety
///
/// `m` came from [`map`] and is unmapped once, after the last use of its memory.
pub(crate) unsafe fn unmap(m: &Mapping) {
    // SAFETY: the caller's promise.
    unsafe { libc::munmap(m.ptr.as_ptr().cast(), m.map_len) };
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
KernelPageSize:        4 kB
AnonHugePages:         0 kB
7f0000000000-7f0040000000 rw-p 00000000 00:0f 1234                       /anon_hugepage (deleted)
Size:            1048576 kB
KernelPageSize:     2048 kB
MMUPageSize:        2048 kB
AnonHugePages:         0 kB
7f1000000000-7f1000400000 rw-p 00000000 00:00 0
Size:               4096 kB
KernelPageSize:        4 kB
AnonHugePages:      2048 kB
";

    #[test]
    fn smaps_names_the_mapping_holding_the_address() {
        let at = |a| parse_smaps(SMAPS.as_bytes(), a);
        let huge = at(0x7f00_1000_0000).unwrap();
        assert_eq!(huge.page_size, SIZE_2M);
        assert_eq!(huge.mapping_len, 1 << 30);
        let thp = at(0x7f10_0000_0000).unwrap();
        assert_eq!((thp.page_size, thp.transparent_huge_bytes), (4096, 2 << 20));
        assert_eq!(thp.effective_page_size(), SIZE_2M);
        assert_eq!(at(0x55d0_c000_0010).unwrap().effective_page_size(), 4096);
        assert_eq!(at(0x1000), Err(PageInfoError::Unmapped(0x1000)));
    }

    #[test]
    fn page_info_of_this_process() {
        let v = vec![1u8; 1 << 16];
        let info = page_info(v.as_ptr() as u64).unwrap();
        assert!(info.page_size >= 4096 && info.mapping_len >= 4096);
        assert!(matches!(page_info(8), Err(PageInfoError::Unmapped(8))));
    }
}
