//! Checks a raw address range against the process's memory map, so a wrong integer passed as a
//! pointer is refused instead of registered (and later written through).

/// Whether `addr..addr+len` lies in mappings that are readable and writable, with no gap.
pub fn check_rw_mapped(addr: u64, len: u64) -> Result<(), String> {
    let end = addr
        .checked_add(len)
        .ok_or_else(|| format!("{addr:#x}+{len} wraps around the address space"))?;
    if addr == 0 || len == 0 {
        return Err(format!("{addr:#x}+{len} is null or empty"));
    }
    let maps = std::fs::read_to_string("/proc/self/maps")
        .map_err(|e| format!("cannot read /proc/self/maps: {e}"))?;
    let mut ranges: Vec<(u64, u64)> = maps.lines().filter_map(parse_line).collect();
    ranges.sort_unstable();
    let mut at = addr;
    for (start, stop) in ranges {
        if stop <= at {
            continue;
        }
        if start > at {
            break;
        }
        at = stop;
        if at >= end {
            return Ok(());
        }
    }
    Err(format!(
        "{addr:#x}+{len}: bytes from {at:#x} on are not mapped readable and writable in this process"
    ))
}

/// `start-end rw?p ...` to the range, for readable and writable mappings only.
fn parse_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?.as_bytes();
    if perms.len() < 2 || perms[0] != b'r' || perms[1] != b'w' {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    Some((
        u64::from_str_radix(a, 16).ok()?,
        u64::from_str_radix(b, 16).ok()?,
    ))
}
