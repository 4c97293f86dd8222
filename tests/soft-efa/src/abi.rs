//! The exported symbols: one line per C entry point, with the symbol version rdma-core gives it
//! (`libibverbs/libibverbs.map.in`, `providers/efa/libefa.map`), and stubs for the librdmacm and
//! libmlx5 symbols that Debian's perftest links (this same file also serves those sonames, see
//! README).
//!
//! Each line makes an exported wrapper `soft_<symbol>` and a `.symver` directive that gives it the
//! public name at its version (a Rust `cdylib` exports versioned symbols this way; the version nodes
//! are declared in `versions.map`).

use std::arch::global_asm;
use std::ffi::{c_char, c_int, c_uint, c_void};

use efa_sys::*;

use crate::verbs::{fail, set_errno};
use crate::{cntr, efadv, qp, verbs};

macro_rules! exports {
    ($( $sym:ident @ $ver:literal = $wrapper:ident ( $($a:ident : $t:ty),* ) $(-> $r:ty)? => $body:expr ;)*) => {
        $(
            #[doc = concat!("`", stringify!($sym), "@@", $ver, "`.")]
            ///
            /// # Safety
            /// As the C function: the pointers must be what libibverbs/libefa expect.
            #[no_mangle]
            pub unsafe extern "C" fn $wrapper($($a: $t),*) $(-> $r)? {
                $body
            }
        )*
        global_asm!($( concat!(".symver ", stringify!($wrapper), ", ", stringify!($sym), "@@", $ver) ),*);
    };
}

/// Stub for an entry point soft-efa does not emulate that returns an errno.
fn unsupported() -> c_int {
    libc::EOPNOTSUPP
}

/// Stub for an entry point soft-efa does not emulate that returns -1 and sets errno.
fn unsupported_neg() -> c_int {
    set_errno(libc::ENOSYS);
    -1
}

type P = *mut c_void;

exports! {
    // ---- libibverbs ----
    ibv_get_device_list @ "IBVERBS_1.1" = soft_ibv_get_device_list(n: *mut c_int) -> *mut *mut ibv_device => verbs::get_device_list(n);
    ibv_free_device_list @ "IBVERBS_1.1" = soft_ibv_free_device_list(l: *mut *mut ibv_device) => verbs::free_device_list(l);
    ibv_get_device_name @ "IBVERBS_1.1" = soft_ibv_get_device_name(d: *mut ibv_device) -> *const c_char => verbs::get_device_name(d);
    ibv_get_device_guid @ "IBVERBS_1.1" = soft_ibv_get_device_guid(d: *mut ibv_device) -> u64 => verbs::get_device_guid(d);
    ibv_get_device_index @ "IBVERBS_1.9" = soft_ibv_get_device_index(d: *mut ibv_device) -> c_int => verbs::get_device_index(d);
    ibv_open_device @ "IBVERBS_1.1" = soft_ibv_open_device(d: *mut ibv_device) -> *mut ibv_context => verbs::open_device(d);
    ibv_close_device @ "IBVERBS_1.1" = soft_ibv_close_device(c: *mut ibv_context) -> c_int => verbs::close_device(c);
    ibv_get_async_event @ "IBVERBS_1.1" = soft_ibv_get_async_event(c: *mut ibv_context, e: *mut ibv_async_event) -> c_int => verbs::get_async_event(c, e);
    ibv_ack_async_event @ "IBVERBS_1.1" = soft_ibv_ack_async_event(e: *mut ibv_async_event) => verbs::ack_async_event(e);
    ibv_query_device @ "IBVERBS_1.1" = soft_ibv_query_device(c: *mut ibv_context, a: *mut ibv_device_attr) -> c_int => verbs::query_device(c, a);
    ibv_query_port @ "IBVERBS_1.1" = soft_ibv_query_port(c: *mut ibv_context, p: u8, a: *mut _compat_ibv_port_attr) -> c_int => verbs::query_port(c, p, a);
    ibv_query_gid @ "IBVERBS_1.1" = soft_ibv_query_gid(c: *mut ibv_context, p: u8, i: c_int, g: *mut ibv_gid) -> c_int => verbs::query_gid(c, p, i, g);
    _ibv_query_gid_ex @ "IBVERBS_1.11" = soft__ibv_query_gid_ex(c: *mut ibv_context, p: u32, i: u32, e: *mut ibv_gid_entry, f: u32, s: usize) -> c_int => verbs::query_gid_ex(c, p, i, e, f, s);
    _ibv_query_gid_table @ "IBVERBS_1.11" = soft__ibv_query_gid_table(c: *mut ibv_context, e: *mut ibv_gid_entry, m: usize, f: u32, s: usize) -> isize => verbs::query_gid_table(c, e, m, f, s);
    ibv_query_gid_type @ "IBVERBS_PRIVATE_34" = soft_ibv_query_gid_type(c: *mut ibv_context, p: u8, i: c_uint, t: *mut c_int) -> c_int => verbs::query_gid_type(c, p, i, t);
    ibv_query_pkey @ "IBVERBS_1.1" = soft_ibv_query_pkey(c: *mut ibv_context, p: u8, i: c_int, k: *mut u16) -> c_int => verbs::query_pkey(c, p, i, k);
    ibv_get_pkey_index @ "IBVERBS_1.5" = soft_ibv_get_pkey_index(c: *mut ibv_context, p: u8, k: u16) -> c_int => verbs::get_pkey_index(c, p, k);
    ibv_alloc_pd @ "IBVERBS_1.1" = soft_ibv_alloc_pd(c: *mut ibv_context) -> *mut ibv_pd => verbs::alloc_pd(c);
    ibv_dealloc_pd @ "IBVERBS_1.1" = soft_ibv_dealloc_pd(p: *mut ibv_pd) -> c_int => verbs::dealloc_pd(p);
    ibv_reg_mr @ "IBVERBS_1.1" = soft_ibv_reg_mr(p: *mut ibv_pd, a: P, l: usize, f: c_int) -> *mut ibv_mr => verbs::reg_mr(p, a, l, f);
    ibv_reg_mr_iova @ "IBVERBS_1.7" = soft_ibv_reg_mr_iova(p: *mut ibv_pd, a: P, l: usize, i: u64, f: c_int) -> *mut ibv_mr => verbs::reg_mr_iova(p, a, l, i, f);
    ibv_reg_mr_iova2 @ "IBVERBS_1.8" = soft_ibv_reg_mr_iova2(p: *mut ibv_pd, a: P, l: usize, i: u64, f: c_uint) -> *mut ibv_mr => verbs::reg_mr_iova2(p, a, l, i, f);
    ibv_reg_dmabuf_mr @ "IBVERBS_1.12" = soft_ibv_reg_dmabuf_mr(p: *mut ibv_pd, o: u64, l: usize, i: u64, fd: c_int, f: c_int) -> *mut ibv_mr => verbs::reg_dmabuf_mr(p, o, l, i, fd, f);
    ibv_rereg_mr @ "IBVERBS_1.1" = soft_ibv_rereg_mr() -> c_int => unsupported();
    ibv_dereg_mr @ "IBVERBS_1.1" = soft_ibv_dereg_mr(m: *mut ibv_mr) -> c_int => verbs::dereg_mr(m);
    ibv_create_comp_channel @ "IBVERBS_1.0" = soft_ibv_create_comp_channel(c: *mut ibv_context) -> *mut ibv_comp_channel => verbs::create_comp_channel(c);
    ibv_destroy_comp_channel @ "IBVERBS_1.0" = soft_ibv_destroy_comp_channel(ch: *mut ibv_comp_channel) -> c_int => verbs::destroy_comp_channel(ch);
    ibv_create_cq @ "IBVERBS_1.1" = soft_ibv_create_cq(c: *mut ibv_context, n: c_int, x: P, ch: *mut ibv_comp_channel, v: c_int) -> *mut ibv_cq => verbs::create_cq(c, n, x, ch, v);
    ibv_resize_cq @ "IBVERBS_1.1" = soft_ibv_resize_cq() -> c_int => unsupported();
    ibv_destroy_cq @ "IBVERBS_1.1" = soft_ibv_destroy_cq(cq: *mut ibv_cq) -> c_int => verbs::destroy_cq(cq);
    ibv_get_cq_event @ "IBVERBS_1.1" = soft_ibv_get_cq_event(ch: *mut ibv_comp_channel, cq: *mut *mut ibv_cq, x: *mut P) -> c_int => verbs::get_cq_event(ch, cq, x);
    ibv_ack_cq_events @ "IBVERBS_1.1" = soft_ibv_ack_cq_events(cq: *mut ibv_cq, n: c_uint) => verbs::ack_cq_events(cq, n);
    ibv_create_srq @ "IBVERBS_1.1" = soft_ibv_create_srq() -> P => fail(libc::EOPNOTSUPP);
    ibv_modify_srq @ "IBVERBS_1.1" = soft_ibv_modify_srq() -> c_int => unsupported();
    ibv_query_srq @ "IBVERBS_1.1" = soft_ibv_query_srq() -> c_int => unsupported();
    ibv_destroy_srq @ "IBVERBS_1.1" = soft_ibv_destroy_srq() -> c_int => unsupported();
    ibv_create_qp @ "IBVERBS_1.1" = soft_ibv_create_qp(p: *mut ibv_pd, a: *mut ibv_qp_init_attr) -> *mut ibv_qp => qp::create_qp(p, a);
    ibv_modify_qp @ "IBVERBS_1.1" = soft_ibv_modify_qp(q: *mut ibv_qp, a: *mut ibv_qp_attr, m: c_int) -> c_int => qp::modify_qp(q, a, m);
    ibv_query_qp @ "IBVERBS_1.1" = soft_ibv_query_qp(q: *mut ibv_qp, a: *mut ibv_qp_attr, m: c_int, i: *mut ibv_qp_init_attr) -> c_int => qp::query_qp(q, a, m, i);
    ibv_destroy_qp @ "IBVERBS_1.1" = soft_ibv_destroy_qp(q: *mut ibv_qp) -> c_int => qp::destroy_qp(q);
    ibv_qp_to_qp_ex @ "IBVERBS_1.6" = soft_ibv_qp_to_qp_ex(q: *mut ibv_qp) -> *mut ibv_qp_ex => qp::qp_to_qp_ex(q);
    ibv_query_qp_data_in_order @ "IBVERBS_1.14" = soft_ibv_query_qp_data_in_order() -> c_int => 0;
    ibv_create_ah @ "IBVERBS_1.1" = soft_ibv_create_ah(p: *mut ibv_pd, a: *mut ibv_ah_attr) -> *mut ibv_ah => verbs::create_ah(p, a);
    ibv_init_ah_from_wc @ "IBVERBS_1.1" = soft_ibv_init_ah_from_wc() -> c_int => unsupported_neg();
    ibv_create_ah_from_wc @ "IBVERBS_1.1" = soft_ibv_create_ah_from_wc() -> P => fail(libc::EOPNOTSUPP);
    ibv_destroy_ah @ "IBVERBS_1.1" = soft_ibv_destroy_ah(a: *mut ibv_ah) -> c_int => verbs::destroy_ah(a);
    ibv_attach_mcast @ "IBVERBS_1.1" = soft_ibv_attach_mcast() -> c_int => unsupported();
    ibv_detach_mcast @ "IBVERBS_1.1" = soft_ibv_detach_mcast() -> c_int => unsupported();
    ibv_fork_init @ "IBVERBS_1.1" = soft_ibv_fork_init() -> c_int => verbs::fork_init();
    ibv_is_fork_initialized @ "IBVERBS_1.13" = soft_ibv_is_fork_initialized() -> c_int => verbs::is_fork_initialized();
    ibv_wc_status_str @ "IBVERBS_1.1" = soft_ibv_wc_status_str(s: ibv_wc_status) -> *const c_char => verbs::wc_status_str(s);
    ibv_node_type_str @ "IBVERBS_1.1" = soft_ibv_node_type_str(t: ibv_node_type) -> *const c_char => verbs::node_type_str(t);
    ibv_port_state_str @ "IBVERBS_1.1" = soft_ibv_port_state_str(s: ibv_port_state) -> *const c_char => verbs::port_state_str(s);
    ibv_event_type_str @ "IBVERBS_1.1" = soft_ibv_event_type_str(e: ibv_event_type) -> *const c_char => verbs::event_type_str(e);
    ibv_rate_to_mult @ "IBVERBS_1.0" = soft_ibv_rate_to_mult(r: ibv_rate) -> c_int => verbs::rate_to_mult(r);
    mult_to_ibv_rate @ "IBVERBS_1.0" = soft_mult_to_ibv_rate(m: c_int) -> ibv_rate => verbs::mult_to_rate(m);
    ibv_rate_to_mbps @ "IBVERBS_1.1" = soft_ibv_rate_to_mbps(r: ibv_rate) -> c_int => verbs::rate_to_mbps(r);
    mbps_to_ibv_rate @ "IBVERBS_1.1" = soft_mbps_to_ibv_rate(m: c_int) -> ibv_rate => verbs::mbps_to_rate(m);
    ibv_resolve_eth_l2_from_gid @ "IBVERBS_1.1" = soft_ibv_resolve_eth_l2_from_gid() -> c_int => unsupported();
    ibv_read_sysfs_file @ "IBVERBS_1.0" = soft_ibv_read_sysfs_file(d: *const c_char, f: *const c_char, b: *mut c_char, n: usize) -> c_int => verbs::read_sysfs_file(d, f, b, n);
    ibv_query_ece @ "IBVERBS_1.10" = soft_ibv_query_ece() -> c_int => unsupported();
    ibv_set_ece @ "IBVERBS_1.10" = soft_ibv_set_ece() -> c_int => unsupported();
    ibv_import_device @ "IBVERBS_1.10" = soft_ibv_import_device() -> P => fail(libc::EOPNOTSUPP);
    ibv_import_pd @ "IBVERBS_1.10" = soft_ibv_import_pd() -> P => fail(libc::EOPNOTSUPP);
    ibv_unimport_pd @ "IBVERBS_1.10" = soft_ibv_unimport_pd() => ();
    ibv_import_mr @ "IBVERBS_1.10" = soft_ibv_import_mr() -> P => fail(libc::EOPNOTSUPP);
    ibv_unimport_mr @ "IBVERBS_1.10" = soft_ibv_unimport_mr() => ();
    ibv_import_dm @ "IBVERBS_1.13" = soft_ibv_import_dm() -> P => fail(libc::EOPNOTSUPP);
    ibv_unimport_dm @ "IBVERBS_1.13" = soft_ibv_unimport_dm() => ();

    _ibv_query_comp_cntr_caps @ "IBVERBS_1.18" = soft__ibv_query_comp_cntr_caps(c: *mut ibv_context, k: *mut ibv_comp_cntr_caps, n: usize) -> c_int => cntr::query_caps(c, k, n);
    ibv_create_comp_cntr @ "IBVERBS_1.18" = soft_ibv_create_comp_cntr(c: *mut ibv_context, a: *mut ibv_comp_cntr_init_attr) -> *mut ibv_comp_cntr => cntr::create_cntr(c, a);
    ibv_destroy_comp_cntr @ "IBVERBS_1.18" = soft_ibv_destroy_comp_cntr(k: *mut ibv_comp_cntr) -> c_int => cntr::destroy(k);
    ibv_set_comp_cntr @ "IBVERBS_1.18" = soft_ibv_set_comp_cntr(k: *mut ibv_comp_cntr, v: u64) -> c_int => cntr::set(k, v, false);
    ibv_set_err_comp_cntr @ "IBVERBS_1.18" = soft_ibv_set_err_comp_cntr(k: *mut ibv_comp_cntr, v: u64) -> c_int => cntr::set(k, v, true);
    ibv_inc_comp_cntr @ "IBVERBS_1.18" = soft_ibv_inc_comp_cntr(k: *mut ibv_comp_cntr, v: u64) -> c_int => cntr::inc(k, v, false);
    ibv_inc_err_comp_cntr @ "IBVERBS_1.18" = soft_ibv_inc_err_comp_cntr(k: *mut ibv_comp_cntr, v: u64) -> c_int => cntr::inc(k, v, true);
    ibv_read_comp_cntr @ "IBVERBS_1.18" = soft_ibv_read_comp_cntr(k: *mut ibv_comp_cntr, v: *mut u64) -> c_int => cntr::read(k, v, false);
    ibv_read_err_comp_cntr @ "IBVERBS_1.18" = soft_ibv_read_err_comp_cntr(k: *mut ibv_comp_cntr, v: *mut u64) -> c_int => cntr::read(k, v, true);
    ibv_qp_attach_comp_cntr @ "IBVERBS_1.18" = soft_ibv_qp_attach_comp_cntr(q: *mut ibv_qp, k: *mut ibv_comp_cntr, a: *mut ibv_qp_attach_comp_cntr_attr) -> c_int => cntr::attach(q, k, a);

    // ---- libefa ----
    efadv_create_driver_qp @ "EFA_1.0" = soft_efadv_create_driver_qp(p: *mut ibv_pd, a: *mut ibv_qp_init_attr, t: u32) -> *mut ibv_qp => efadv::create_driver_qp(p, a, t);
    efadv_create_qp_ex @ "EFA_1.1" = soft_efadv_create_qp_ex(c: *mut ibv_context, a: *mut ibv_qp_init_attr_ex, e: *mut efadv_qp_init_attr, n: u32) -> *mut ibv_qp => efadv::create_qp_ex(c, a, e, n);
    efadv_query_device @ "EFA_1.1" = soft_efadv_query_device(c: *mut ibv_context, a: *mut efadv_device_attr, n: u32) -> c_int => efadv::query_device(c, a, n);
    efadv_query_ah @ "EFA_1.1" = soft_efadv_query_ah(a: *mut ibv_ah, x: *mut efadv_ah_attr, n: u32) -> c_int => efadv::query_ah(a, x, n);
    efadv_create_cq @ "EFA_1.2" = soft_efadv_create_cq(c: *mut ibv_context, a: *mut ibv_cq_init_attr_ex, e: *mut efadv_cq_init_attr, n: u32) -> *mut ibv_cq_ex => efadv::create_cq(c, a, e, n);
    efadv_cq_from_ibv_cq_ex @ "EFA_1.2" = soft_efadv_cq_from_ibv_cq_ex(cq: *mut ibv_cq_ex) -> *mut efadv_cq => efadv::cq_from_ibv_cq_ex(cq);
    efadv_query_mr @ "EFA_1.3" = soft_efadv_query_mr(m: *mut ibv_mr, a: *mut efadv_mr_attr, n: u32) -> c_int => efadv::query_mr(m, a, n);
    efadv_query_qp_wqs @ "EFA_1.4" = soft_efadv_query_qp_wqs(q: *mut ibv_qp, s: *mut efadv_wq_attr, r: *mut efadv_wq_attr, n: u32) -> c_int => efadv::query_qp_wqs(q, s, r, n);
    efadv_get_max_sq_depth @ "EFA_1.5" = soft_efadv_get_max_sq_depth(c: *mut ibv_context, a: *mut efadv_sq_depth_attr, n: u32) -> c_int => efadv::get_max_sq_depth(c, a, n);
    efadv_get_max_rq_depth @ "EFA_1.5" = soft_efadv_get_max_rq_depth(c: *mut ibv_context, a: *mut efadv_rq_depth_attr, n: u32) -> c_int => efadv::get_max_rq_depth(c, a, n);
    efadv_qp_from_ibv_qp_ex @ "EFA_1.6" = soft_efadv_qp_from_ibv_qp_ex(q: *mut ibv_qp_ex) -> *mut efadv_qp => qp::efadv_qp_of(q);
    efadv_create_comp_cntr @ "EFA_1.7" = soft_efadv_create_comp_cntr(c: *mut ibv_context, a: *mut ibv_comp_cntr_init_attr, e: *mut efadv_comp_cntr_init_attr, n: u32) -> *mut ibv_comp_cntr => cntr::efadv_create_cntr(c, a, e, n);
    efadv_query_cq @ "EFA_1.4" = soft_efadv_query_cq(cq: *mut ibv_cq, a: *mut efadv_cq_attr, n: u32) -> c_int => efadv::query_cq(cq, a, n);

    // ---- librdmacm stubs (perftest's -R): RDMA-CM is not emulated ----
    rdma_create_event_channel @ "RDMACM_1.0" = soft_rdma_create_event_channel() -> P => fail(libc::ENOSYS);
    rdma_destroy_event_channel @ "RDMACM_1.0" = soft_rdma_destroy_event_channel() => ();
    rdma_create_id @ "RDMACM_1.0" = soft_rdma_create_id() -> c_int => unsupported_neg();
    rdma_destroy_id @ "RDMACM_1.0" = soft_rdma_destroy_id() -> c_int => unsupported_neg();
    rdma_bind_addr @ "RDMACM_1.0" = soft_rdma_bind_addr() -> c_int => unsupported_neg();
    rdma_resolve_addr @ "RDMACM_1.0" = soft_rdma_resolve_addr() -> c_int => unsupported_neg();
    rdma_resolve_route @ "RDMACM_1.0" = soft_rdma_resolve_route() -> c_int => unsupported_neg();
    rdma_create_qp @ "RDMACM_1.0" = soft_rdma_create_qp() -> c_int => unsupported_neg();
    rdma_create_qp_ex @ "RDMACM_1.0" = soft_rdma_create_qp_ex() -> c_int => unsupported_neg();
    rdma_destroy_qp @ "RDMACM_1.0" = soft_rdma_destroy_qp() => ();
    rdma_connect @ "RDMACM_1.0" = soft_rdma_connect() -> c_int => unsupported_neg();
    rdma_listen @ "RDMACM_1.0" = soft_rdma_listen() -> c_int => unsupported_neg();
    rdma_accept @ "RDMACM_1.0" = soft_rdma_accept() -> c_int => unsupported_neg();
    rdma_reject @ "RDMACM_1.0" = soft_rdma_reject() -> c_int => unsupported_neg();
    rdma_disconnect @ "RDMACM_1.0" = soft_rdma_disconnect() -> c_int => unsupported_neg();
    rdma_get_cm_event @ "RDMACM_1.0" = soft_rdma_get_cm_event() -> c_int => unsupported_neg();
    rdma_ack_cm_event @ "RDMACM_1.0" = soft_rdma_ack_cm_event() -> c_int => unsupported_neg();
    rdma_event_str @ "RDMACM_1.0" = soft_rdma_event_str() -> *const c_char => c"RDMA-CM is not emulated by soft-efa".as_ptr();
    rdma_getaddrinfo @ "RDMACM_1.0" = soft_rdma_getaddrinfo() -> c_int => unsupported_neg();
    rdma_freeaddrinfo @ "RDMACM_1.0" = soft_rdma_freeaddrinfo() => ();
    rdma_set_option @ "RDMACM_1.0" = soft_rdma_set_option() -> c_int => unsupported_neg();

    // ---- libmlx5 stubs (perftest links them; never reached on an EFA device) ----
    mlx5dv_open_device @ "MLX5_1.7" = soft_mlx5dv_open_device() -> P => fail(libc::EOPNOTSUPP);
    mlx5dv_create_qp @ "MLX5_1.3" = soft_mlx5dv_create_qp() -> P => fail(libc::EOPNOTSUPP);
    mlx5dv_qp_ex_from_ibv_qp_ex @ "MLX5_1.10" = soft_mlx5dv_qp_ex_from_ibv_qp_ex() -> P => fail(libc::EOPNOTSUPP);
    mlx5dv_create_mkey @ "MLX5_1.10" = soft_mlx5dv_create_mkey() -> P => fail(libc::EOPNOTSUPP);
    mlx5dv_destroy_mkey @ "MLX5_1.10" = soft_mlx5dv_destroy_mkey() -> c_int => unsupported();
    mlx5dv_devx_general_cmd @ "MLX5_1.7" = soft_mlx5dv_devx_general_cmd() -> c_int => unsupported();
    mlx5dv_crypto_login @ "MLX5_1.21" = soft_mlx5dv_crypto_login() -> c_int => unsupported();
    mlx5dv_dek_create @ "MLX5_1.21" = soft_mlx5dv_dek_create() -> P => fail(libc::EOPNOTSUPP);
    mlx5dv_dek_destroy @ "MLX5_1.21" = soft_mlx5dv_dek_destroy() -> c_int => unsupported();
}
