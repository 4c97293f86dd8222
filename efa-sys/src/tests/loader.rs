//! Loader: typed errors, caching, and the installed libibverbs.

use std::format;
use std::string::ToString;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::vec::Vec;

use crate::once::OnceLoad;
use crate::*;

const ALLOW_ABSENT: &str = "EFA_SYS_ALLOW_NO_LIBIBVERBS";

/// The installed libibverbs, or `None` (test skipped) when it is absent and
/// `EFA_SYS_ALLOW_NO_LIBIBVERBS=1`; otherwise an absent library fails the
/// calling test with the loader's message.
pub(super) fn installed_verbs() -> Option<&'static Verbs> {
    match verbs() {
        Ok(v) => Some(v),
        Err(e) if std::env::var(ALLOW_ABSENT).as_deref() == Ok("1") => {
            std::eprintln!("skipped: {e} ({ALLOW_ABSENT}=1)");
            None
        }
        Err(e) => panic!(
            "{e}\nthis test needs libibverbs (apt-get install libibverbs1 ibverbs-providers); \
             set {ALLOW_ABSENT}=1 to skip it"
        ),
    }
}

#[test]
fn missing_library_is_a_typed_error_naming_it() {
    let err = Verbs::load_from(c"libefa-sys-no-such-library.so.9").unwrap_err();
    match err {
        LoadError::LibraryNotFound { library, detail } => {
            assert_eq!(library.as_str(), "libefa-sys-no-such-library.so.9");
            assert!(
                detail.as_str().contains("No such file"),
                "dlerror detail: {detail}"
            );
        }
        other => panic!("expected LibraryNotFound, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("libefa-sys-no-such-library.so.9"), "{text}");
    assert_eq!(err.library(), "libefa-sys-no-such-library.so.9");
}

#[test]
fn missing_symbol_is_a_typed_error_naming_it() {
    // libc loads fine but exports no verbs: the first required symbol fails.
    let err = Verbs::load_from(c"libc.so.6").unwrap_err();
    assert_eq!(
        err,
        LoadError::SymbolMissing {
            library: LibraryName::new(b"libc.so.6"),
            symbol: "ibv_get_device_list",
            version: "IBVERBS_1.1",
        }
    );
    let text = err.to_string();
    assert!(
        text.contains("libc.so.6") && text.contains("ibv_get_device_list"),
        "{text}"
    );

    match Efadv::load_from(c"libc.so.6").unwrap_err() {
        LoadError::SymbolMissing {
            symbol, version, ..
        } => {
            assert_eq!((symbol, version), ("efadv_create_driver_qp", "EFA_1.0"));
        }
        other => panic!("expected SymbolMissing, got {other:?}"),
    }
}

#[test]
fn load_error_is_a_core_error() {
    fn takes_error(e: &dyn core::error::Error) -> std::string::String {
        e.to_string()
    }
    let err = Efadv::load_from(c"libefa-sys-no-such-library.so.9").unwrap_err();
    assert!(takes_error(&err).starts_with("cannot load libefa-sys-no-such-library.so.9: "));
}

/// Calls `ibv_get_device_list` through the loader. Without devices the list
/// is empty; on a kernel without the RDMA core (no
/// `/sys/class/infiniband_verbs`) libibverbs answers NULL with `ENOSYS`.
/// Either answer proves the call reached the library; anything else fails.
#[test]
fn installed_libibverbs_lists_devices() {
    let Some(v) = installed_verbs() else { return };
    let mut n: i32 = -1;
    let kernel_has_rdma = std::path::Path::new("/sys/class/infiniband_verbs").exists();
    // SAFETY: `n` is writable; the list is freed below and not used after.
    unsafe {
        *libc::__errno_location() = 0;
        let list = (v.ibv_get_device_list)(&mut n);
        if list.is_null() {
            let errno = *libc::__errno_location();
            assert!(
                errno == libc::ENOSYS && !kernel_has_rdma,
                "ibv_get_device_list failed: errno {errno} (kernel RDMA stack present: {kernel_has_rdma})"
            );
            std::eprintln!(
                "libibverbs loaded; kernel has no RDMA stack (ENOSYS), so no device list"
            );
            return;
        }
        assert!(n >= 0);
        // The array is NULL-terminated after exactly `n` entries.
        for i in 0..n as usize {
            let dev = *list.add(i);
            assert!(!dev.is_null());
            assert!(!(v.ibv_get_device_name)(dev).is_null());
        }
        assert!((*list.add(n as usize)).is_null());
        (v.ibv_free_device_list)(list);
    }
    std::eprintln!("libibverbs: {n} device(s)");
}

#[test]
fn installed_libibverbs_resolves_versioned_entry_points() {
    let Some(v) = installed_verbs() else { return };
    // Symbols resolved at their versions must be the same code dlvsym finds.
    let lib = crate::dl::Library::open(LIBIBVERBS).unwrap();
    let reg_mr = lib.symbol("ibv_reg_mr\0", "IBVERBS_1.1\0").unwrap();
    assert_eq!(v.ibv_reg_mr as usize, reg_mr as usize);
    let port = lib.symbol("ibv_query_port\0", "IBVERBS_1.1\0").unwrap();
    assert_eq!(v.ibv_query_port as usize, port as usize);
    // The library's own string tables answer through the loaded pointers.
    // SAFETY: ibv_wc_status_str returns a static NUL-terminated string.
    let s = unsafe { core::ffi::CStr::from_ptr((v.ibv_wc_status_str)(IBV_WC_SUCCESS)) };
    assert_eq!(s.to_str().unwrap(), "success");
}

#[test]
fn verbs_and_efadv_are_cached() {
    let a = verbs().map(|v| v as *const Verbs);
    let b = verbs().map(|v| v as *const Verbs);
    assert_eq!(a, b);
    let a = efadv().map(|v| v as *const Efadv);
    let b = efadv().map(|v| v as *const Efadv);
    assert_eq!(a, b);
    if let (Err(e), Some(_)) = (efadv(), installed_verbs()) {
        // libefa ships with libibverbs in rdma-core packages.
        panic!("libibverbs loads but libefa does not: {e}");
    }
}

#[test]
fn once_load_runs_the_initialiser_once_under_contention() {
    static CELL: OnceLoad<usize> = OnceLoad::new();
    static RUNS: AtomicUsize = AtomicUsize::new(0);
    let threads: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                CELL.get_or_init(|| {
                    RUNS.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    Ok(41 + RUNS.load(Ordering::SeqCst))
                })
                .map(|v| v as *const usize as usize)
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().unwrap().unwrap())
        .collect();
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    assert!(
        results.windows(2).all(|w| w[0] == w[1]),
        "all threads see one value"
    );
    assert_eq!(CELL.get_or_init(|| Ok(0)).copied(), Ok(42));
}

#[test]
fn once_load_caches_failure() {
    static CELL: OnceLoad<u8> = OnceLoad::new();
    let err = LoadError::SymbolMissing {
        library: LibraryName::new(b"x"),
        symbol: "y",
        version: "z",
    };
    assert_eq!(CELL.get_or_init(|| Err(err)), Err(err));
    assert_eq!(
        CELL.get_or_init(|| Ok(1)),
        Err(err),
        "the failure is cached"
    );
}

#[test]
fn fixed_str_truncates_on_char_boundaries_and_replaces_bad_bytes() {
    let s = FixedStr::<5>::new("abcé€".as_bytes());
    assert_eq!(s.as_str(), "abcé");
    let s = FixedStr::<8>::new(b"a\xffb");
    assert_eq!(s.as_str(), "a?b");
    let long = [b'x'; 300];
    assert_eq!(LibraryName::new(&long).as_str().len(), 40);
    assert_eq!(format!("{:?}", FixedStr::<4>::new(b"ab")), "\"ab\"");
}

#[test]
fn symbols_newer_than_the_library_are_reported_absent() {
    let Some(_) = installed_verbs() else { return };
    let dv = efadv().expect("libefa ships with libibverbs");
    // Each EFA_1.x node extends the previous one: a library without one lacks all later ones.
    let by_version = [
        dv.efadv_create_cq.is_some(),         // EFA_1.2, rdma-core 43
        dv.efadv_query_mr.is_some(),          // EFA_1.3, 50
        dv.efadv_query_qp_wqs.is_some(),      // EFA_1.4, 59
        dv.efadv_get_max_sq_depth.is_some(),  // EFA_1.5, 63
        dv.efadv_qp_from_ibv_qp_ex.is_some(), // EFA_1.6, 64
        dv.efadv_create_comp_cntr.is_some(),  // EFA_1.7, master
    ];
    let first_absent = by_version
        .iter()
        .position(|p| !p)
        .unwrap_or(by_version.len());
    assert!(
        by_version[first_absent..].iter().all(|p| !p),
        "a symbol is present after an absent older one: {by_version:?}"
    );
    // The Debug view names each optional symbol with its presence.
    let text = std::format!("{dv:?}");
    assert!(text.contains("efadv_get_max_sq_depth: "), "{text}");
    std::println!("libefa: EFA_1.2..1.7 present = {by_version:?}");
}
