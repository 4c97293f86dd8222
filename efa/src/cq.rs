//! Extended completion queues and allocation-free polling.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;

use crate::caps::EfaCaps;
use crate::channel::{ChannelInner, CompChannel};
use crate::context::Context;
use crate::device::DeviceKind;
use crate::error::{Error, Limit, Result};
use crate::gid::Gid;
use crate::held;
use crate::pd::ThreadDomain;
use crate::status::{EfaStatus, WcOpcode, WcStatus};

/// Fields every CQ of this crate reports (`IBV_WC_STANDARD_FLAGS` minus the InfiniBand-only ones).
const WC_FLAGS: u64 = (efa_sys::IBV_WC_EX_WITH_BYTE_LEN
    | efa_sys::IBV_WC_EX_WITH_IMM
    | efa_sys::IBV_WC_EX_WITH_QP_NUM
    | efa_sys::IBV_WC_EX_WITH_SRC_QP) as u64;

/// The CQ object shared by a [`Cq`] and the QPs that complete into it; destroyed last.
pub(crate) struct CqInner {
    ctx: Arc<Context>,
    raw: NonNull<efa_sys::ibv_cq_ex>,
    td: Option<Arc<ThreadDomain>>,
    /// The completion channel, destroyed after the CQ (field drops follow `Drop::drop`).
    channel: Option<Arc<ChannelInner>>,
}

// SAFETY: CqInner is only a keep-alive handle for QPs (which read the pointer at creation);
// polling goes through the unique `Cq` with &mut.
unsafe impl Send for CqInner {}
// SAFETY: as above; no method touches the CQ through a shared reference.
unsafe impl Sync for CqInner {}

impl CqInner {
    pub(crate) fn as_cq(&self) -> *mut efa_sys::ibv_cq {
        efa_sys::ibv_cq_ex_to_cq(self.raw.as_ptr())
    }

    /// The CQ's address, as [`held`](crate::held) records it.
    pub(crate) fn raw_addr(&self) -> usize {
        self.raw.as_ptr() as usize
    }

    /// The thread domain the CQ was created on.
    pub(crate) fn td(&self) -> Option<&Arc<ThreadDomain>> {
        self.td.as_ref()
    }
}

impl Drop for CqInner {
    fn drop(&mut self) {
        // SAFETY: the Cq and every QP using this CQ are gone (they hold this Arc); destroyed once.
        let rc = unsafe { (self.ctx.verbs().ibv_destroy_cq)(self.as_cq()) };
        crate::teardown::check("ibv_destroy_cq", rc);
    }
}

/// Options for a [`Cq`].
#[derive(Debug)]
#[must_use]
pub struct CqBuilder<'c> {
    ctx: &'c Arc<Context>,
    cqe: u32,
    single_threaded: bool,
    source_gid: Option<bool>,
    unsolicited: bool,
    td: Option<Arc<ThreadDomain>>,
    channel: Option<(Arc<ChannelInner>, u64)>,
}

impl<'c> CqBuilder<'c> {
    /// Create the CQ on completion channel `channel`, so it can be armed
    /// ([`Cq::req_notify`]) and waited for ([`CompChannel::wait`]); events for it carry
    /// `token` ([`CqEvent::token`](crate::CqEvent::token)). The channel must belong to the
    /// same context. Devices that cannot raise completion events (EFA without the kernel's
    /// `CQ_NOTIFICATIONS` capability) make [`build`](Self::build) fail with
    /// [`Error::Unsupported`].
    pub fn channel(mut self, channel: &CompChannel, token: u64) -> Self {
        self.channel = Some((Arc::clone(channel.inner()), token));
        self
    }

    /// Ask the provider to skip the CQ lock (`IBV_CREATE_CQ_ATTR_SINGLE_THREADED`). Off by default.
    /// Libraries that reject the flag (EFA before rdma-core 60) get a CQ without it. Ignored on a
    /// thread-domain CQ: there the provider already polls without the lock (rdma-core 61 and
    /// later), and rdma-core 59 refuses the flag outright.
    ///
    /// # Safety
    /// The lock the flag removes also guards the provider's table of the CQ's QPs: EFA removes a
    /// destroyed QP from it under that lock. With the flag, no QP completing into this CQ may be
    /// dropped (or created) on one thread while the CQ is polled on another.
    pub unsafe fn single_threaded(mut self, on: bool) -> Self {
        self.single_threaded = on;
        self
    }

    /// Report the source GID of receives from peers without an AH (EFA `CQ_WITH_SGID`).
    /// Default: on when the device has the capability. Asking for it on a device without it
    /// fails at [`build`](Self::build).
    pub fn source_gid(mut self, on: bool) -> Self {
        self.source_gid = Some(on);
        self
    }

    /// Report whether a write-with-immediate arrived without a receive (EFA
    /// `UNSOLICITED_WRITE_RECV`). Off by default.
    pub fn unsolicited_flag(mut self, on: bool) -> Self {
        self.unsolicited = on;
        self
    }

    /// Create the CQ on a thread domain, so it and the QPs on the same domain run lock-free.
    ///
    /// # Safety
    /// The CQ and every QP created on `td` must not be used from two threads at the same time:
    /// polling this CQ and posting to those QPs must happen on one thread at a time (move them
    /// together, never share them). The provider takes no lock to protect them.
    pub unsafe fn thread_domain(mut self, td: &Arc<ThreadDomain>) -> Self {
        self.td = Some(Arc::clone(td));
        self
    }

    /// Create the CQ.
    ///
    /// # Errors
    ///
    /// [`Error::Limit`] for a depth over the device's `max_cqe`, [`Error::Unsupported`] for flags
    /// the device or library lacks, [`Error::Verbs`] when `ibv_create_cq_ex` fails (with its errno and
    /// the depth).
    pub fn build(self) -> Result<Cq> {
        let ctx = self.ctx;
        let max = ctx.device_attr().max_cqe;
        if self.cqe == 0 || (max != 0 && self.cqe > max) {
            return Err(Error::limit(Limit::CqDepth, self.cqe.into(), max.into()));
        }
        let caps = ctx.efa_caps();
        let sgid = match self.source_gid {
            Some(true) if !caps.contains(EfaCaps::CQ_WITH_SGID) => {
                return Err(Error::Unsupported {
                    what: "source GID in completions",
                    why: "device lacks the CQ_WITH_SGID capability",
                })
            }
            Some(on) => on,
            None => caps.contains(EfaCaps::CQ_WITH_SGID),
        };
        if self.unsolicited && !caps.contains(EfaCaps::UNSOLICITED_WRITE_RECV) {
            return Err(Error::Unsupported {
                what: "unsolicited write-receive flag",
                why: "device lacks the UNSOLICITED_WRITE_RECV capability",
            });
        }
        let mut efa_wc = 0u64;
        if sgid {
            efa_wc |= u64::from(efa_sys::EFADV_WC_EX_WITH_SGID);
        }
        if self.unsolicited {
            efa_wc |= u64::from(efa_sys::EFADV_WC_EX_WITH_IS_UNSOLICITED);
        }

        if let Some((ch, _)) = &self.channel {
            if !Arc::ptr_eq(ch.context(), ctx) {
                return Err(Error::Invalid {
                    what: "completion channel of another context",
                    value: ch.as_raw() as u64,
                });
            }
        }
        let channel = self.channel.as_ref().map(|(ch, t)| (ch.as_raw(), *t));
        let single_threaded = self.single_threaded && self.td.is_none();
        let (made, single_threaded) = match create(
            ctx,
            self.cqe,
            single_threaded,
            efa_wc,
            self.td.as_deref(),
            channel,
        ) {
            Err(Error::Verbs { errno, .. })
                if single_threaded && (errno == libc::EOPNOTSUPP || errno == libc::EINVAL) =>
            {
                (create(ctx, self.cqe, false, efa_wc, None, channel), false)
            }
            r => (r, single_threaded),
        };
        let raw = match made {
            Err(Error::Verbs { errno, .. }) if channel.is_some() && errno == libc::EOPNOTSUPP => {
                return Err(Error::Unsupported {
                    what: "completion events (CQ on a completion channel)",
                    why: "the device cannot notify (EFA without the CQ_NOTIFICATIONS capability)",
                })
            }
            r => r?,
        };
        let efa_cq = if ctx.is_efa() && efa_wc != 0 {
            efa_sys::efadv()
                .ok()
                .and_then(|dv| dv.efadv_cq_from_ibv_cq_ex)
                // SAFETY: the CQ was created by efadv_create_cq on an EFA context.
                .and_then(|f| NonNull::new(unsafe { f(raw.as_ptr()) }))
                .map(EfaCq)
        } else {
            None
        };
        Ok(Cq {
            _not_sync: PhantomData,
            core: PollCore {
                raw: RawCq(raw),
                efa_cq,
                sgid: sgid && efa_cq.is_some(),
                unsolicited: self.unsolicited && efa_cq.is_some(),
                is_efa: ctx.is_efa(),
                one_per_pass: ctx.info().kind == DeviceKind::SoftRoce,
                deferred: None,
                locked_passes: !single_threaded,
                in_pass: false,
            },
            inner: Arc::new(CqInner {
                ctx: Arc::clone(ctx),
                raw,
                td: self.td,
                channel: self.channel.map(|(ch, _)| ch),
            }),
        })
    }
}

fn create(
    ctx: &Context,
    cqe: u32,
    single_threaded: bool,
    efa_wc: u64,
    td: Option<&ThreadDomain>,
    channel: Option<(*mut efa_sys::ibv_comp_channel, u64)>,
) -> Result<NonNull<efa_sys::ibv_cq_ex>> {
    // SAFETY: plain C struct; zero means no channel, no flags, no parent domain.
    let mut attr: efa_sys::ibv_cq_init_attr_ex = unsafe { std::mem::zeroed() };
    attr.cqe = cqe;
    attr.wc_flags = WC_FLAGS;
    if let Some((ch, token)) = channel {
        // The token travels as the CQ's context pointer and comes back with each event.
        attr.channel = ch;
        attr.cq_context = token as usize as *mut std::ffi::c_void;
    }
    if single_threaded {
        attr.comp_mask |= efa_sys::IBV_CQ_INIT_ATTR_MASK_FLAGS;
        attr.flags |= efa_sys::IBV_CREATE_CQ_ATTR_SINGLE_THREADED;
    }
    if let Some(td) = td {
        attr.comp_mask |= efa_sys::IBV_CQ_INIT_ATTR_MASK_PD;
        attr.parent_domain = td.parent_raw();
    }
    let efadv_create = if ctx.is_efa() {
        efa_sys::efadv().ok().and_then(|dv| dv.efadv_create_cq)
    } else {
        None
    };
    let (raw, call) = match efadv_create {
        Some(f) => {
            let mut efa_attr = efa_sys::efadv_cq_init_attr {
                comp_mask: 0,
                wc_flags: efa_wc,
                ..Default::default()
            };
            // SAFETY: the context is open; both attrs are initialised and the efadv one is
            // passed with its full size (zero past the fields set): older libraries check the
            // tail is zero, and rdma-core 59 and 60, which read the later fields whatever
            // `inlen` says, find them zero too.
            let p = unsafe {
                f(
                    ctx.as_raw(),
                    &mut attr,
                    &mut efa_attr,
                    std::mem::size_of::<efa_sys::efadv_cq_init_attr>() as u32,
                )
            };
            (p, "efadv_create_cq")
        }
        None if efa_wc != 0 => {
            return Err(Error::Unsupported {
                what: "EFA completion fields",
                why: "libefa lacks efadv_create_cq",
            })
        }
        // SAFETY: the context is open and `attr` initialised.
        None => (
            unsafe { efa_sys::ibv_create_cq_ex(ctx.as_raw(), &mut attr) },
            "ibv_create_cq_ex",
        ),
    };
    NonNull::new(raw)
        .ok_or_else(|| Error::verbs_arg(call, crate::error::last_errno(), "cqe", cqe.into()))
}

/// The raw extended CQ inside a [`PollCore`].
#[derive(Clone, Copy)]
struct RawCq(NonNull<efa_sys::ibv_cq_ex>);

// SAFETY: the CQ has no thread affinity. It is only reached through `Cq` (not Sync: polling
// takes &mut, so there is one poller at a time) and the `Poll`/`Completion` borrows of one pass,
// which are neither Send nor Sync. Thread-domain CQs carry the caller's promise made in
// `CqBuilder::thread_domain`.
unsafe impl Send for RawCq {}
// SAFETY: as above.
unsafe impl Sync for RawCq {}

/// The efadv view of an EFA CQ (same object as the `ibv_cq_ex`).
#[derive(Clone, Copy)]
struct EfaCq(NonNull<efa_sys::efadv_cq>);

// SAFETY: only reached through `Cq`, which is Send but not Sync; the marker keeps Cq's own
// auto traits decided by its `_not_sync` field alone.
unsafe impl Send for EfaCq {}
// SAFETY: as above.
unsafe impl Sync for EfaCq {}

/// An extended completion queue (`ibv_cq_ex`).
///
/// Polling takes `&mut self`: one poller at a time, so the provider's CQ lock is not needed.
/// QPs keep the underlying CQ alive, so dropping a `Cq` before its QPs is safe.
///
/// A pass ([`Poll`], and each pass of [`poll_with`](Self::poll_with)) over a CQ that is not
/// single-threaded holds the provider's CQ lock, and destroying a QP takes the locks of its CQs
/// (EFA, mlx5): a QP dropped on this thread inside a pass over one of its CQs is destroyed when
/// the pass ends. A forgotten ([`mem::forget`](std::mem::forget)) pass is ended before the next
/// one starts.
pub struct Cq {
    // Polling state lives in the provider's CQ: never Sync, whatever the fields below are.
    _not_sync: PhantomData<Cell<()>>,
    inner: Arc<CqInner>,
    core: PollCore,
}

/// What polling needs: the raw CQ and how it was created. Separate from ownership so the
/// polling logic can run against a fake CQ in tests.
pub(crate) struct PollCore {
    raw: RawCq,
    efa_cq: Option<EfaCq>,
    sgid: bool,
    unsolicited: bool,
    is_efa: bool,
    /// End every pass after one completion, never letting `ibv_next_poll` reach `ENOENT`.
    /// Soft-RoCE's provider (rdma-core 44 and others before the fix in rdma-core PR 1512)
    /// advances its consumer index both when `ibv_next_poll` finds the queue empty and again in
    /// `ibv_end_poll`, which skips a slot and later yields phantom completions.
    one_per_pass: bool,
    /// An `ibv_next_poll` error held back because the call that met it returned completions.
    deferred: Option<i32>,
    /// Whether the provider holds the CQ's lock through a pass (a CQ that is not
    /// single-threaded), which [`held`] records.
    locked_passes: bool,
    /// Whether a pass is open: a [`Poll`] is alive, or was forgotten (`mem::forget`) with the
    /// provider's pass (and lock) still open.
    in_pass: bool,
}

impl Drop for Cq {
    fn drop(&mut self) {
        self.core.end_forgotten();
    }
}

impl std::fmt::Debug for Cq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cq")
            .field("cqe", &self.capacity())
            .field("source_gid", &self.core.sgid)
            .finish_non_exhaustive()
    }
}

impl Cq {
    /// A builder for a CQ with at least `cqe` entries.
    pub fn builder(ctx: &Arc<Context>, cqe: u32) -> CqBuilder<'_> {
        CqBuilder {
            ctx,
            cqe,
            single_threaded: false,
            source_gid: None,
            unsolicited: false,
            td: None,
            channel: None,
        }
    }

    /// A CQ with at least `cqe` entries and the defaults of [`CqBuilder`].
    ///
    /// # Errors
    ///
    /// As [`CqBuilder::build`].
    pub fn new(ctx: &Arc<Context>, cqe: u32) -> Result<Self> {
        Self::builder(ctx, cqe).build()
    }

    /// Entries the provider granted (may exceed what was asked).
    pub fn capacity(&self) -> u32 {
        // SAFETY: the CQ is live; cqe is set at creation.
        u32::try_from(unsafe { (*self.inner.raw.as_ptr()).cqe }).unwrap_or(0)
    }

    /// Whether completions carry the source GID of unknown senders.
    pub fn has_source_gid(&self) -> bool {
        self.core.sgid
    }

    pub(crate) fn inner(&self) -> &Arc<CqInner> {
        &self.inner
    }

    /// Whether the CQ was created on a completion channel ([`CqBuilder::channel`]).
    pub fn has_channel(&self) -> bool {
        self.inner.channel.is_some()
    }

    /// Arms the CQ: its next completion raises one event on its channel
    /// ([`CompChannel::wait`]). Arm, poll once more, then wait (see [`CompChannel`](crate::CompChannel)): a
    /// completion that landed before the arming raises no event. `solicited_only` limits the
    /// event to solicited completions; EFA refuses it ([`Error::Unsupported`]).
    ///
    /// Fails with [`Error::Unsupported`] on a CQ without a channel.
    pub fn req_notify(&mut self, solicited_only: bool) -> Result<()> {
        if self.inner.channel.is_none() {
            return Err(Error::Unsupported {
                what: "arming a CQ",
                why: "the CQ was created without a completion channel",
            });
        }
        // SAFETY: the CQ is live and has a channel; `&mut self` keeps pollers and armers to one.
        let rc = unsafe {
            efa_sys::ibv_req_notify_cq(self.inner.as_cq(), std::ffi::c_int::from(solicited_only))
        };
        match rc {
            0 => Ok(()),
            libc::EOPNOTSUPP if solicited_only => Err(Error::Unsupported {
                what: "solicited-only completion events",
                why: "the provider refuses them (EFA does)",
            }),
            e => Err(Error::verbs_arg(
                "ibv_req_notify_cq",
                e,
                "solicited_only",
                u64::from(solicited_only),
            )),
        }
    }

    /// The raw extended CQ; valid while `self` (or a QP using it) lives.
    pub fn as_raw(&self) -> *mut efa_sys::ibv_cq_ex {
        self.inner.raw.as_ptr()
    }

    /// The provider's completion ring (`efadv_query_cq`, rdma-core 59): buffer, entry size,
    /// entry count and doorbell, for users who read CQEs themselves.
    ///
    /// # Safety
    /// The pointers are the provider's own ring: reading entries through them must follow EFA's
    /// CQE format and phase bit, and polling through this crate at the same time loses
    /// completions. They are valid while the CQ lives.
    pub unsafe fn efa_ring(&self) -> Result<efa_sys::efadv_cq_attr> {
        let f = efa_sys::efadv()?.efadv_query_cq.ok_or(Error::Unsupported {
            what: "CQ ring query",
            why: "libefa older than rdma-core 59 (no efadv_query_cq)",
        })?;
        let mut attr = efa_sys::efadv_cq_attr::default();
        // SAFETY: the CQ is live; `attr` is initialised and passed with its size.
        let rc = unsafe {
            f(
                self.inner.as_cq(),
                &mut attr,
                std::mem::size_of_val(&attr) as u32,
            )
        };
        if rc != 0 {
            return Err(Error::verbs("efadv_query_cq", rc));
        }
        Ok(attr)
    }

    /// Start a polling pass. `Ok(None)` when the CQ is empty.
    ///
    /// The returned [`Poll`] lends one [`Completion`] at a time and ends the pass on drop.
    pub fn poll(&mut self) -> Result<Option<Poll<'_>>> {
        self.unheld()?;
        self.core.poll()
    }

    /// Poll up to `out.len()` completions into `out`, every field of each copied out
    /// ([`Completion::to_owned`]); returns how many were written. [`poll_with`](Self::poll_with)
    /// reads only what its caller asks for.
    ///
    /// # Errors
    /// [`Error::Verbs`] when the provider fails to poll; completions consumed before the failure
    /// are returned first and the error is reported by the next call.
    pub fn poll_into(&mut self, out: &mut [WorkCompletion]) -> Result<usize> {
        self.poll_into_with(out, |c| c.to_owned())
    }

    /// Poll up to `out.len()` completions into `out`, each made by `read` from the lent
    /// [`Completion`]: what `read` asks of it is all the provider is asked (see
    /// [`poll_with`](Self::poll_with)); returns how many were written. A hot loop that needs a
    /// few fields of a success and every field of a failure starts from [`Completion::brief`]
    /// and adds the success fields it uses.
    ///
    /// # Errors
    /// As [`poll_into`](Self::poll_into).
    pub fn poll_into_with<F>(&mut self, out: &mut [WorkCompletion], read: F) -> Result<usize>
    where
        F: FnMut(&Completion<'_>) -> WorkCompletion,
    {
        self.unheld()?;
        self.core.poll_into_with(out, read)
    }

    /// Completions on demand: lends up to `max` completions, one at a time, to `f`, and returns
    /// how many. Nothing is read from the provider unless `f` asks: `wr_id` and `status` are
    /// fields of the CQ (no call), [`Completion::efa_status`] or
    /// [`vendor_err`](Completion::vendor_err) cost one provider call, and every other accessor
    /// one call (or a few) of its own. Receive-only fields must be asked only of receive
    /// completions ([`Completion::opcode`]); [`Completion::to_owned`] does that itself.
    ///
    /// # Errors
    /// As [`poll_into`](Self::poll_into).
    pub fn poll_with<F: FnMut(&Completion<'_>)>(&mut self, max: usize, f: F) -> Result<usize> {
        self.unheld()?;
        self.core.poll_with(max, f)
    }

    /// [`Error::PollInBatch`] when this thread has a batch open whose send-queue lock a poll of
    /// this CQ would wait for ([`held`](crate::held)).
    #[inline]
    fn unheld(&self) -> Result<()> {
        match held::batch_blocking(self.core.as_raw() as usize) {
            Some(qpn) => Err(Error::PollInBatch { qpn }),
            None => Ok(()),
        }
    }

    /// Poll until `want` completions arrived or `timeout` passed (`Duration::MAX`: no
    /// deadline), writing them into `out` (`want` is capped at `out.len()`). Returns how many
    /// arrived.
    pub fn wait_into(
        &mut self,
        out: &mut [WorkCompletion],
        want: usize,
        timeout: std::time::Duration,
    ) -> Result<usize> {
        self.wait_into_with(out, want, timeout, |c| c.to_owned())
    }

    /// [`wait_into`](Self::wait_into), each completion made by `read` from the lent
    /// [`Completion`], as in [`poll_into_with`](Self::poll_into_with).
    ///
    /// # Errors
    /// As [`poll_into`](Self::poll_into).
    pub fn wait_into_with<F>(
        &mut self,
        out: &mut [WorkCompletion],
        want: usize,
        timeout: std::time::Duration,
        mut read: F,
    ) -> Result<usize>
    where
        F: FnMut(&Completion<'_>) -> WorkCompletion,
    {
        let want = want.min(out.len());
        // `elapsed` rather than a deadline sum: `Duration::MAX` waits for ever.
        let start = std::time::Instant::now();
        let mut got = 0;
        while got < want {
            got += self.poll_into_with(&mut out[got..want], &mut read)?;
            if got < want && start.elapsed() >= timeout {
                break;
            }
            if got < want {
                std::hint::spin_loop();
            }
        }
        Ok(got)
    }
}

impl PollCore {
    fn as_raw(&self) -> *mut efa_sys::ibv_cq_ex {
        self.raw.0.as_ptr()
    }

    fn poll(&mut self) -> Result<Option<Poll<'_>>> {
        self.end_forgotten();
        let mut attr = efa_sys::ibv_poll_cq_attr { comp_mask: 0 };
        // SAFETY: the CQ is live and this is its only poller (&mut self).
        let rc = unsafe { efa_sys::ibv_start_poll(self.as_raw(), &mut attr) };
        if rc == 0 {
            self.in_pass = true;
            if self.locked_passes {
                held::enter_pass(self.as_raw() as usize);
            }
        }
        match rc {
            0 => Ok(Some(Poll {
                _not_send: PhantomData,
                cq: self,
                fresh: true,
                exhausted: false,
            })),
            libc::ENOENT => Ok(None),
            e => Err(Error::verbs("ibv_start_poll", e)),
        }
    }

    /// Ends a pass a forgotten ([`mem::forget`](std::mem::forget)) [`Poll`] left open, which
    /// still holds the provider's CQ lock and this thread's record of it.
    fn end_forgotten(&mut self) {
        if self.in_pass {
            self.end_pass();
        }
    }

    /// Ends the open pass (`ibv_end_poll`), then destroys the QPs dropped inside it ([`held`]).
    fn end_pass(&mut self) {
        // SAFETY: a pass started by a successful ibv_start_poll is open; ended once.
        unsafe { efa_sys::ibv_end_poll(self.as_raw()) };
        self.in_pass = false;
        if self.locked_passes {
            held::leave_pass(self.as_raw() as usize);
        }
    }

    /// Lends up to `max` completions to `f`, from as many passes as it takes: one pass, or on a
    /// one-per-pass CQ one pass per completion, so a short count always means the CQ ran empty.
    /// Reads nothing itself: each field is read from the provider when `f` asks for it.
    ///
    /// When `ibv_next_poll` fails after completions were consumed, those come back and the error
    /// is reported by the next call, so no completion is ever lost to an error.
    fn poll_with<F: FnMut(&Completion<'_>)>(&mut self, max: usize, mut f: F) -> Result<usize> {
        if let Some(errno) = self.deferred.take() {
            return Err(Error::verbs("ibv_next_poll", errno));
        }
        let one_per_pass = self.one_per_pass;
        let mut n = 0;
        let mut failed = None;
        while n < max && failed.is_none() {
            let Some(mut p) = self.poll()? else {
                break;
            };
            while n < max {
                match p.next() {
                    Ok(Some(c)) => f(&c),
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
                n += 1;
            }
            if !one_per_pass {
                break;
            }
        }
        match failed {
            Some(e) if n == 0 => Err(e),
            Some(e) => {
                self.deferred = Some(e.errno().unwrap_or(libc::EIO));
                Ok(n)
            }
            None => Ok(n),
        }
    }

    /// [`poll_with`](Self::poll_with), each completion copied out whole.
    #[cfg(test)]
    fn poll_into(&mut self, out: &mut [WorkCompletion]) -> Result<usize> {
        self.poll_into_with(out, |c| c.to_owned())
    }

    /// [`poll_with`](Self::poll_with), each completion written to `out` as `read` makes it.
    fn poll_into_with<F>(&mut self, out: &mut [WorkCompletion], mut read: F) -> Result<usize>
    where
        F: FnMut(&Completion<'_>) -> WorkCompletion,
    {
        let mut n = 0;
        self.poll_with(out.len(), |c| {
            out[n] = read(c);
            n += 1;
        })
    }
}

/// One polling pass over a [`Cq`]; ends the pass (`ibv_end_poll`) on drop.
pub struct Poll<'c> {
    // A pass belongs to the thread that started it.
    _not_send: PhantomData<*const ()>,
    cq: &'c mut PollCore,
    fresh: bool,
    exhausted: bool,
}

impl std::fmt::Debug for Poll<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Poll")
            .field("exhausted", &self.exhausted)
            .finish()
    }
}

impl Poll<'_> {
    /// The next completion, borrowed until the following call; `Ok(None)` when the CQ is empty.
    // A lending iterator: each completion borrows the poller, which `Iterator` cannot express.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Completion<'_>>> {
        if self.exhausted {
            return Ok(None);
        }
        if self.fresh {
            self.fresh = false;
        } else if self.cq.one_per_pass {
            self.exhausted = true;
            return Ok(None);
        } else {
            // SAFETY: inside a pass started by a successful ibv_start_poll.
            match unsafe { efa_sys::ibv_next_poll(self.cq.as_raw()) } {
                0 => {}
                libc::ENOENT => {
                    self.exhausted = true;
                    return Ok(None);
                }
                e => {
                    self.exhausted = true;
                    return Err(Error::verbs("ibv_next_poll", e));
                }
            }
        }
        Ok(Some(Completion {
            _not_send: PhantomData,
            cq: self.cq,
        }))
    }
}

impl Drop for Poll<'_> {
    fn drop(&mut self) {
        self.cq.end_pass();
    }
}

/// The current completion of a [`Poll`]. Per verbs rules only `wr_id`, `status`, `vendor_err`
/// and `qp_num` are meaningful when the status is an error.
pub struct Completion<'p> {
    _not_send: PhantomData<*const ()>,
    cq: &'p PollCore,
}

impl std::fmt::Debug for Completion<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_owned().fmt(f)
    }
}

impl Completion<'_> {
    fn raw(&self) -> *mut efa_sys::ibv_cq_ex {
        self.cq.as_raw()
    }

    /// The `wr_id` given at posting.
    pub fn wr_id(&self) -> u64 {
        // SAFETY: a completion is current while `self` borrows the pass.
        unsafe { (*self.raw()).wr_id }
    }

    /// The outcome.
    pub fn status(&self) -> WcStatus {
        // SAFETY: as for wr_id.
        WcStatus::from_raw(unsafe { (*self.raw()).status })
    }

    /// Whether the work request succeeded.
    pub fn is_success(&self) -> bool {
        self.status().is_success()
    }

    /// The provider's vendor error code.
    pub fn vendor_err(&self) -> u32 {
        // SAFETY: current completion; every provider sets read_vendor_err.
        unsafe { efa_sys::ibv_wc_read_vendor_err(self.raw()) }
    }

    /// The EFA completion status by name; `None` on other devices, where `vendor_err` means
    /// something else.
    pub fn efa_status(&self) -> Option<EfaStatus> {
        self.cq
            .is_efa
            .then(|| EfaStatus::from_raw(self.vendor_err()))
    }

    /// What completed.
    pub fn opcode(&self) -> WcOpcode {
        // SAFETY: current completion; every provider sets read_opcode.
        WcOpcode::from_raw(unsafe { efa_sys::ibv_wc_read_opcode(self.raw()) } as u32)
    }

    /// Bytes received (receives) or transferred.
    pub fn byte_len(&self) -> u32 {
        // SAFETY: current completion; the CQ was created with IBV_WC_EX_WITH_BYTE_LEN.
        unsafe { efa_sys::ibv_wc_read_byte_len(self.raw()) }
    }

    /// `wc_flags` (`IBV_WC_GRH`, `IBV_WC_WITH_IMM`, ...).
    pub fn wc_flags(&self) -> u32 {
        // SAFETY: current completion; every provider sets read_wc_flags.
        unsafe { efa_sys::ibv_wc_read_wc_flags(self.raw()) }
    }

    /// Immediate data (host order), when the completion carries it.
    pub fn imm(&self) -> Option<u32> {
        if self.wc_flags() & efa_sys::IBV_WC_WITH_IMM == 0 {
            return None;
        }
        // SAFETY: current completion; the CQ was created with IBV_WC_EX_WITH_IMM.
        Some(u32::from_be(unsafe {
            efa_sys::ibv_wc_read_imm_data(self.raw())
        }))
    }

    /// The local QP number the completion belongs to.
    pub fn qp_num(&self) -> u32 {
        // SAFETY: current completion; the CQ was created with IBV_WC_EX_WITH_QP_NUM.
        unsafe { efa_sys::ibv_wc_read_qp_num(self.raw()) }
    }

    /// The sender's QP number (datagram receives).
    pub fn src_qp(&self) -> u32 {
        // SAFETY: current completion; the CQ was created with IBV_WC_EX_WITH_SRC_QP.
        unsafe { efa_sys::ibv_wc_read_src_qp(self.raw()) }
    }

    /// The sender's GID, reported by EFA for receives from peers this side has no AH for.
    pub fn source_gid(&self) -> Option<Gid> {
        let efa_cq = self.cq.efa_cq.filter(|_| self.cq.sgid)?;
        let mut raw = efa_sys::ibv_gid { raw: [0; 16] };
        // SAFETY: current completion of a CQ created with EFADV_WC_EX_WITH_SGID.
        let rc = unsafe { efa_sys::efadv_wc_read_sgid(efa_cq.0.as_ptr(), &mut raw) };
        (rc == 0).then(|| Gid::from_raw(&raw))
    }

    /// Whether a write-with-immediate completed without consuming a receive (EFA).
    pub fn is_unsolicited(&self) -> bool {
        match self.cq.efa_cq.filter(|_| self.cq.unsolicited) {
            // SAFETY: current completion of a CQ created with EFADV_WC_EX_WITH_IS_UNSOLICITED.
            Some(c) => unsafe { efa_sys::efadv_wc_is_unsolicited(c.0.as_ptr()) },
            None => false,
        }
    }

    /// What a hot loop starts from: of a success `wr_id` and status only (fields of the CQ, no
    /// provider call), of a failure every field [`to_owned`](Self::to_owned) reads (the vendor
    /// error and QP number among them). A reader for [`Cq::poll_into_with`] adds the fields of a
    /// success it uses.
    pub fn brief(&self) -> WorkCompletion {
        let status = self.status();
        if !status.is_success() {
            return self.to_owned();
        }
        WorkCompletion {
            wr_id: self.wr_id(),
            status,
            ..WorkCompletion::default()
        }
    }

    /// Copy the completion out.
    ///
    /// Receive-only fields (`src_qp`, immediate data, source GID, unsolicited flag) are read only
    /// for receive opcodes: on EFA a send completion's receive fields alias its 64-bit request id
    /// (`src_qp` would read as `wr_id >> 48`). `byte_len` is read for receives and RDMA READ; it
    /// is 0 otherwise (EFA reports 0 on every send completion). Error completions carry only
    /// `wr_id`, status, vendor error and QP number.
    pub fn to_owned(&self) -> WorkCompletion {
        let status = self.status();
        // One provider call for both views of the vendor error.
        let vendor_err = self.vendor_err();
        let mut wc = WorkCompletion {
            wr_id: self.wr_id(),
            status,
            vendor_err,
            efa_status: self.cq.is_efa.then(|| EfaStatus::from_raw(vendor_err)),
            qp_num: self.qp_num(),
            ..WorkCompletion::default()
        };
        if !status.is_success() {
            return wc;
        }
        let opcode = self.opcode();
        wc.opcode = Some(opcode);
        let recv = matches!(opcode, WcOpcode::Recv | WcOpcode::RecvRdmaWithImm);
        if recv || opcode == WcOpcode::RdmaRead {
            wc.byte_len = self.byte_len();
        }
        if recv {
            wc.imm = self.imm();
            wc.src_qp = self.src_qp();
            wc.source_gid = self.source_gid();
            wc.unsolicited = self.is_unsolicited();
        }
        wc
    }
}

/// A completion copied out of the CQ.
///
/// EFA's reporting differs from other verbs devices: an RDMA READ completes with opcode
/// [`WcOpcode::Send`] (the provider never reports `IBV_WC_RDMA_READ`), a write with immediate
/// as [`WcOpcode::RdmaWrite`], and `byte_len` is 0 on every send-side completion. Count
/// completions by `wr_id`, never by opcode or length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkCompletion {
    /// The `wr_id` given at posting.
    pub wr_id: u64,
    /// The outcome.
    pub status: WcStatus,
    /// The provider's vendor error.
    pub vendor_err: u32,
    /// The EFA status by name (EFA devices only).
    pub efa_status: Option<EfaStatus>,
    /// The local QP number.
    pub qp_num: u32,
    /// What completed (successful completions only).
    pub opcode: Option<WcOpcode>,
    /// Bytes transferred or received (successful completions only).
    pub byte_len: u32,
    /// Immediate data, host order.
    pub imm: Option<u32>,
    /// The sender's QP number (datagram receives).
    pub src_qp: u32,
    /// The sender's GID, when EFA reports it.
    pub source_gid: Option<Gid>,
    /// A write-with-immediate that consumed no receive (EFA).
    pub unsolicited: bool,
}

impl Default for WorkCompletion {
    fn default() -> Self {
        WorkCompletion {
            wr_id: 0,
            status: WcStatus::Success,
            vendor_err: 0,
            efa_status: None,
            qp_num: 0,
            opcode: None,
            byte_len: 0,
            imm: None,
            src_qp: 0,
            source_gid: None,
            unsolicited: false,
        }
    }
}

impl WorkCompletion {
    /// Whether the work request succeeded.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }
}

#[cfg(test)]
#[path = "cq_tests.rs"]
mod tests;
