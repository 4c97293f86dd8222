//! Run-time loading of libibverbs and libefa.
//!
//! Nothing links against rdma-core at build time: the tables below are filled
//! with `dlopen` + `dlvsym` on first use. Symbols that every supported
//! rdma-core exports are plain function pointers; symbols that only newer
//! releases export are `Option`s, `None` when the installed library lacks them.

use core::ffi::CStr;

use crate::dl::Library;
use crate::error::LoadError;
use crate::once::OnceLoad;
use crate::pfn;

/// Default soname of libibverbs.
pub const LIBIBVERBS: &CStr = c"libibverbs.so.1";
/// Default soname of libefa (EFA direct verbs).
pub const LIBEFA: &CStr = c"libefa.so.1";

macro_rules! symbol_table {
    (
        $(#[$meta:meta])*
        pub struct $table:ident;
        $( $kind:ident $name:ident @ $version:literal $(, $doc:literal)? ;)*
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy)]
        pub struct $table {
            $(
                #[doc = concat!("`", stringify!($name), "` (symbol version ", $version, ").")]
                $(#[doc = ""] #[doc = $doc])?
                pub $name: symbol_table!(@ty $kind $name),
            )*
        }

        impl $table {
            /// Opens `library` and resolves every symbol of the table.
            ///
            /// The library stays loaded for the rest of the process (the
            /// returned pointers must stay valid), so repeated calls only
            /// bump `dlopen`'s reference count.
            pub fn load_from(library: &CStr) -> Result<Self, LoadError> {
                let lib = Library::open(library)?;
                Self::resolve(&lib)
            }

            fn resolve(lib: &Library) -> Result<Self, LoadError> {
                Ok(Self {
                    $(
                        $name: symbol_table!(@load $kind lib $name $version),
                    )*
                })
            }
        }

        impl core::fmt::Debug for $table {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let mut s = f.debug_struct(stringify!($table));
                $( s.field(stringify!($name), &symbol_table!(@present $kind self.$name)); )*
                s.finish()
            }
        }
    };
    (@ty required $name:ident) => { pfn::$name };
    (@ty optional $name:ident) => { Option<pfn::$name> };
    (@load required $lib:ident $name:ident $version:literal) => {
        match $lib.symbol(concat!(stringify!($name), "\0"), concat!($version, "\0")) {
            // SAFETY: the symbol was exported by rdma-core under this name and
            // version, whose C prototype is the one `pfn::$name` spells out.
            Some(p) => unsafe { core::mem::transmute::<*mut core::ffi::c_void, pfn::$name>(p) },
            None => {
                return Err(LoadError::SymbolMissing {
                    library: $lib.name(),
                    symbol: stringify!($name),
                    version: $version,
                })
            }
        }
    };
    (@load optional $lib:ident $name:ident $version:literal) => {
        $lib.symbol(concat!(stringify!($name), "\0"), concat!($version, "\0"))
            // SAFETY: as for required symbols.
            .map(|p| unsafe { core::mem::transmute::<*mut core::ffi::c_void, pfn::$name>(p) })
    };
    (@present required $e:expr) => { true };
    (@present optional $e:expr) => { $e.is_some() };
}

symbol_table! {
    /// Entry points of libibverbs, one field per exported C symbol, named
    /// exactly as the symbol and typed as its C prototype.
    ///
    /// Fields that are `Option` were added after IBVERBS_1.6 (rdma-core
    /// before v26 lacks them; Debian bookworm's v44 has all of them except
    /// `ibv_query_qp_data_in_order`).
    ///
    /// `ibv_query_port` and `ibv_reg_mr` are the exported compat entry points:
    /// use the crate-root [`ibv_query_port`](crate::ibv_query_port()) and
    /// [`ibv_reg_mr`](crate::ibv_reg_mr()) which do what the header macros do.
    pub struct Verbs;
    required ibv_get_device_list @ "IBVERBS_1.1";
    required ibv_free_device_list @ "IBVERBS_1.1";
    required ibv_get_device_name @ "IBVERBS_1.1";
    required ibv_get_device_guid @ "IBVERBS_1.1";
    optional ibv_get_device_index @ "IBVERBS_1.9";
    required ibv_open_device @ "IBVERBS_1.1";
    required ibv_close_device @ "IBVERBS_1.1";
    required ibv_get_async_event @ "IBVERBS_1.1";
    required ibv_ack_async_event @ "IBVERBS_1.1";
    required ibv_query_device @ "IBVERBS_1.1";
    required ibv_query_port @ "IBVERBS_1.1",
        "Compat export: fills only the fields of the original `ibv_port_attr` and leaves the extended ones alone. Prefer [`crate::ibv_query_port()`].";
    required ibv_query_gid @ "IBVERBS_1.1";
    optional _ibv_query_gid_ex @ "IBVERBS_1.11", "Called by [`crate::ibv_query_gid_ex()`].";
    optional _ibv_query_gid_table @ "IBVERBS_1.11", "Called by [`crate::ibv_query_gid_table()`].";
    required ibv_query_pkey @ "IBVERBS_1.1";
    required ibv_get_pkey_index @ "IBVERBS_1.5";
    required ibv_alloc_pd @ "IBVERBS_1.1";
    required ibv_dealloc_pd @ "IBVERBS_1.1";
    required ibv_reg_mr @ "IBVERBS_1.1",
        "Compat export, without the optional access flags. Prefer [`crate::ibv_reg_mr()`].";
    optional ibv_reg_mr_iova @ "IBVERBS_1.7";
    optional ibv_reg_mr_iova2 @ "IBVERBS_1.8";
    optional ibv_reg_dmabuf_mr @ "IBVERBS_1.12";
    required ibv_rereg_mr @ "IBVERBS_1.1";
    required ibv_dereg_mr @ "IBVERBS_1.1";
    required ibv_create_comp_channel @ "IBVERBS_1.0";
    required ibv_destroy_comp_channel @ "IBVERBS_1.0";
    required ibv_create_cq @ "IBVERBS_1.1";
    required ibv_resize_cq @ "IBVERBS_1.1";
    required ibv_destroy_cq @ "IBVERBS_1.1";
    required ibv_get_cq_event @ "IBVERBS_1.1";
    required ibv_ack_cq_events @ "IBVERBS_1.1";
    required ibv_create_srq @ "IBVERBS_1.1";
    required ibv_modify_srq @ "IBVERBS_1.1";
    required ibv_query_srq @ "IBVERBS_1.1";
    required ibv_destroy_srq @ "IBVERBS_1.1";
    required ibv_create_qp @ "IBVERBS_1.1";
    required ibv_modify_qp @ "IBVERBS_1.1";
    required ibv_query_qp @ "IBVERBS_1.1";
    required ibv_destroy_qp @ "IBVERBS_1.1";
    required ibv_qp_to_qp_ex @ "IBVERBS_1.6";
    optional ibv_query_qp_data_in_order @ "IBVERBS_1.14";
    required ibv_create_ah @ "IBVERBS_1.1";
    required ibv_init_ah_from_wc @ "IBVERBS_1.1";
    required ibv_create_ah_from_wc @ "IBVERBS_1.1";
    required ibv_destroy_ah @ "IBVERBS_1.1";
    required ibv_attach_mcast @ "IBVERBS_1.1";
    required ibv_detach_mcast @ "IBVERBS_1.1";
    required ibv_fork_init @ "IBVERBS_1.1";
    optional ibv_is_fork_initialized @ "IBVERBS_1.13";
    required ibv_wc_status_str @ "IBVERBS_1.1";
    required ibv_node_type_str @ "IBVERBS_1.1";
    required ibv_port_state_str @ "IBVERBS_1.1";
    required ibv_event_type_str @ "IBVERBS_1.1";
    required ibv_rate_to_mult @ "IBVERBS_1.0";
    required mult_to_ibv_rate @ "IBVERBS_1.0";
    required ibv_rate_to_mbps @ "IBVERBS_1.1";
    required mbps_to_ibv_rate @ "IBVERBS_1.1";
    required ibv_resolve_eth_l2_from_gid @ "IBVERBS_1.1";
    optional ibv_query_ece @ "IBVERBS_1.10";
    optional ibv_set_ece @ "IBVERBS_1.10";
    optional ibv_import_device @ "IBVERBS_1.10";
    optional ibv_import_pd @ "IBVERBS_1.10";
    optional ibv_unimport_pd @ "IBVERBS_1.10";
    optional ibv_import_mr @ "IBVERBS_1.10";
    optional ibv_unimport_mr @ "IBVERBS_1.10";
    optional ibv_import_dm @ "IBVERBS_1.13";
    optional ibv_unimport_dm @ "IBVERBS_1.13";
    optional _ibv_query_comp_cntr_caps @ "IBVERBS_1.18", "Completion counters (rdma-core master).";
    optional ibv_create_comp_cntr @ "IBVERBS_1.18";
    optional ibv_destroy_comp_cntr @ "IBVERBS_1.18";
    optional ibv_set_comp_cntr @ "IBVERBS_1.18";
    optional ibv_set_err_comp_cntr @ "IBVERBS_1.18";
    optional ibv_inc_comp_cntr @ "IBVERBS_1.18";
    optional ibv_inc_err_comp_cntr @ "IBVERBS_1.18";
    optional ibv_read_comp_cntr @ "IBVERBS_1.18";
    optional ibv_read_err_comp_cntr @ "IBVERBS_1.18";
    optional ibv_qp_attach_comp_cntr @ "IBVERBS_1.18";
}

symbol_table! {
    /// Entry points of libefa (EFA direct verbs), one field per exported C
    /// symbol, named exactly as the symbol and typed as its C prototype.
    ///
    /// Required: EFA_1.0/EFA_1.1 (every rdma-core with EFA support).
    /// Optional: EFA_1.2 (CQ with source GID), EFA_1.3 (`efadv_query_mr`,
    /// absent from Debian bookworm's v44), EFA_1.4 (work queue and CQ
    /// queries, rdma-core 59), EFA_1.5 (true queue depths, 63), EFA_1.6
    /// (`efadv_qp_from_ibv_qp_ex` for processing hints, 64), EFA_1.7
    /// (completion counters, rdma-core master), and `efadv_query_ah` which
    /// some vendor builds leave out.
    pub struct Efadv;
    required efadv_create_driver_qp @ "EFA_1.0";
    required efadv_create_qp_ex @ "EFA_1.1";
    required efadv_query_device @ "EFA_1.1";
    optional efadv_query_ah @ "EFA_1.1";
    optional efadv_create_cq @ "EFA_1.2";
    optional efadv_cq_from_ibv_cq_ex @ "EFA_1.2";
    optional efadv_query_mr @ "EFA_1.3";
    optional efadv_query_qp_wqs @ "EFA_1.4";
    optional efadv_query_cq @ "EFA_1.4";
    optional efadv_get_max_sq_depth @ "EFA_1.5";
    optional efadv_get_max_rq_depth @ "EFA_1.5";
    optional efadv_qp_from_ibv_qp_ex @ "EFA_1.6";
    optional efadv_create_comp_cntr @ "EFA_1.7";
}

static VERBS: OnceLoad<Verbs> = OnceLoad::new();
static EFADV: OnceLoad<Efadv> = OnceLoad::new();

/// libibverbs (`libibverbs.so.1`), loaded on first call; the result, success
/// or failure, is cached for the life of the process.
pub fn verbs() -> Result<&'static Verbs, LoadError> {
    VERBS.get_or_init(|| Verbs::load_from(LIBIBVERBS))
}

/// libefa (`libefa.so.1`), loaded on first call; the result, success or
/// failure, is cached for the life of the process.
pub fn efadv() -> Result<&'static Efadv, LoadError> {
    EFADV.get_or_init(|| Efadv::load_from(LIBEFA))
}
