//! Descriptors in etcd (v3 API), bound to a lease this process keeps alive.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use tokio::runtime::Runtime;

use super::{Metadata, MetadataError, OnGone, ServiceError, WatchGuard};
use crate::descriptor::SegmentDescriptor;

/// Settings of an [`EtcdMetadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client endpoints of the etcd cluster, `host:port`.
    pub endpoints: Vec<String>,
    /// Prefix of every key (`/efa-transport/` by default); a segment `a/kv` is stored under
    /// `/efa-transport/a/kv`.
    pub prefix: String,
    /// Time to live of the lease that keeps this process's descriptors (whole seconds, at
    /// least 1; etcd raises TTLs below its own minimum, about 2 s by default). Peers learn of
    /// this process's death within about this long.
    pub lease_ttl: Duration,
    /// Bound on each call to etcd (connect, publish, lookup, remove, watch setup).
    pub timeout: Duration,
}

impl EtcdConfig {
    /// Defaults for `endpoints`: prefix `/efa-transport/`, 3 s lease, 5 s calls.
    pub fn new(endpoints: Vec<String>) -> Self {
        EtcdConfig {
            endpoints,
            prefix: "/efa-transport/".into(),
            lease_ttl: Duration::from_secs(3),
            timeout: Duration::from_secs(5),
        }
    }
}

fn check_config(c: &EtcdConfig) -> Result<(), MetadataError> {
    let bad = |what: String| Err(MetadataError::Config(what));
    if c.endpoints.is_empty() {
        return bad("etcd: endpoints is empty (expected at least one host:port)".into());
    }
    if c.prefix.is_empty() {
        return bad("etcd: prefix is empty (expected e.g. \"/efa-transport/\")".into());
    }
    if c.lease_ttl < Duration::from_secs(1) || c.lease_ttl > Duration::from_secs(86_400) {
        return bad(format!(
            "etcd: lease_ttl = {:?} is out of range (expected 1 s..=1 day)",
            c.lease_ttl
        ));
    }
    if c.timeout.is_zero() || c.timeout > Duration::from_secs(3600) {
        return bad(format!(
            "etcd: timeout = {:?} is out of range (expected 1 ns..=1 h)",
            c.timeout
        ));
    }
    Ok(())
}

/// A [`Metadata`] service on an etcd cluster: leased descriptors, transactions for the
/// ownership rule, and watches that report a peer gone.
///
/// Dropping it revokes its lease, so its descriptors vanish at once rather than after the TTL
/// (waiting at most [`EtcdConfig::timeout`] for etcd to answer).
/// Its calls block on its own runtime: call them (and drop it) outside any async runtime
/// (from async code, through `spawn_blocking`).
///
/// # Design
///
/// - Each descriptor is stored encoded under `prefix + name`, attached to the lease of the
///   [`EtcdMetadata`] that published it. A background task renews the lease every third of
///   its TTL. When the process dies or hangs (or loses etcd for longer than the TTL), etcd
///   deletes every key of the lease at once, and every watcher hears of it.
/// - Publishing is one transaction: create the key if absent; if present and owned by the
///   same engine name (a re-registration, or a restart of that engine), replace it if it has
///   not changed since it was read; if owned by another engine, refuse
///   ([`MetadataError::Conflict`]). Removing deletes a key only while it is still attached to
///   this instance's lease, so a hung old instance cannot withdraw its successor's descriptor.
/// - [`Metadata::watch`] reads the key and compares it with the descriptor the engine opened;
///   then it watches the key from the revision it read, so no change can slip in between.
///   A deletion (lease expired, removed) or another descriptor under the name (compared
///   decoded) means the opened descriptor is gone; one watch stream per opened segment, on the
///   client's one connection. A watch that breaks (etcd unreachable, revision compacted)
///   re-reads and resumes; it never reports a peer gone on a mere loss of etcd.
/// - The trait is blocking and etcd-client is async: the metadata object owns a small tokio
///   runtime (one worker thread, which runs the keep-alive and the watches) and blocks on it
///   in its control-path calls, each bounded by [`EtcdConfig::timeout`].
pub struct EtcdMetadata {
    client: Client,
    config: EtcdConfig,
    lease: i64,
    /// Cleared when etcd reports the lease expired (the keep-alive could not reach it in time).
    lease_alive: Arc<AtomicBool>,
    keeper: tokio::task::JoinHandle<()>,
    /// Last field: dropped (its worker thread joined) after the lease is revoked.
    rt: Runtime,
}

impl std::fmt::Debug for EtcdMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdMetadata")
            .field("endpoints", &self.config.endpoints)
            .field("prefix", &self.config.prefix)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// Runs `fut` on `rt` within `after`, naming the call `op` in its error.
fn block<T>(
    rt: &Runtime,
    after: Duration,
    op: impl FnOnce() -> String,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, MetadataError> {
    match rt.block_on(async { tokio::time::timeout(after, fut).await }) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(MetadataError::Service {
            op: op(),
            source: ServiceError::new(e),
        }),
        Err(_) => Err(MetadataError::Timeout { op: op(), after }),
    }
}

impl EtcdMetadata {
    /// Connects to the cluster, takes a lease and starts keeping it alive.
    ///
    /// # Errors
    ///
    /// [`MetadataError::Config`] for settings out of range; [`MetadataError::Service`] or
    /// [`MetadataError::Timeout`] when no endpoint answers within the timeout.
    pub fn connect(config: EtcdConfig) -> Result<EtcdMetadata, MetadataError> {
        check_config(&config)?;
        let span = tracing::info_span!("etcd_connect", endpoints = ?config.endpoints);
        let _enter = span.enter();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-metadata")
            .enable_all()
            .build()
            .map_err(|e| MetadataError::Service {
                op: "start the etcd client runtime".into(),
                source: ServiceError::new(e),
            })?;
        let eps = config.endpoints.join(",");
        let options = ConnectOptions::new().with_connect_timeout(config.timeout);
        let mut client = block(
            &rt,
            config.timeout,
            || format!("connect {eps}"),
            Client::connect(config.endpoints.clone(), Some(options)),
        )?;
        let ttl = config.lease_ttl.as_secs_f64().ceil() as i64;
        let grant = block(
            &rt,
            config.timeout,
            || format!("grant a {ttl} s lease at {eps}"),
            client.lease_grant(ttl, None),
        )?;
        let (lease, granted) = (grant.id(), grant.ttl());
        let lease_alive = Arc::new(AtomicBool::new(true));
        let period = Duration::from_secs(granted.max(1) as u64) / 3;
        let keeper = rt.spawn(keep_alive(
            client.clone(),
            lease,
            period,
            lease_alive.clone(),
        ));
        tracing::info!(lease, ttl = granted, "etcd metadata connected");
        Ok(EtcdMetadata {
            client,
            config,
            lease,
            lease_alive,
            keeper,
            rt,
        })
    }

    /// The id of this instance's lease.
    pub fn lease_id(&self) -> i64 {
        self.lease
    }

    /// Whether the lease is still alive as far as this process knows (false once etcd
    /// reported it expired: this process's descriptors are gone and peers treat it as dead).
    pub fn lease_alive(&self) -> bool {
        self.lease_alive.load(Ordering::Acquire)
    }

    /// The settings in force.
    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.prefix)
    }

    fn call<T>(
        &self,
        op: impl FnOnce() -> String,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, MetadataError> {
        block(&self.rt, self.config.timeout, op, fut)
    }

    /// One attempt at the ownership rule; `None` when the key changed under it (retry).
    fn try_publish(
        &self,
        desc: &SegmentDescriptor,
        key: &str,
        bytes: &[u8],
    ) -> Result<Option<()>, MetadataError> {
        let put = || TxnOp::put(key, bytes, Some(PutOptions::new().with_lease(self.lease)));
        let txn = Txn::new()
            .when([Compare::version(key, CompareOp::Equal, 0)])
            .and_then([put()])
            .or_else([TxnOp::get(key, None)]);
        let mut c = self.client.clone();
        let resp = self.call(|| format!("publish {key:?}"), c.txn(txn))?;
        if resp.succeeded() {
            return Ok(Some(()));
        }
        let existing = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
            _ => None,
        });
        let Some(kv) = existing else {
            return Ok(None);
        };
        let old =
            SegmentDescriptor::decode(kv.value()).map_err(|source| MetadataError::Corrupt {
                name: desc.name.clone(),
                source,
            })?;
        if old.engine != desc.engine {
            return Err(MetadataError::Conflict {
                name: desc.name.clone(),
                owner: old.engine,
            });
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key,
                CompareOp::Equal,
                kv.mod_revision(),
            )])
            .and_then([put()]);
        let resp = self.call(|| format!("replace {key:?}"), c.txn(txn))?;
        Ok(resp.succeeded().then_some(()))
    }
}

impl Metadata for EtcdMetadata {
    fn publish(&self, desc: &SegmentDescriptor) -> Result<(), MetadataError> {
        let bytes = desc.encode().map_err(|source| MetadataError::Corrupt {
            name: desc.name.clone(),
            source,
        })?;
        let key = self.key(&desc.name);
        // Each retry means another writer changed the key in between; a few are plenty.
        for _ in 0..4 {
            if self.try_publish(desc, &key, &bytes)?.is_some() {
                return Ok(());
            }
        }
        Err(MetadataError::Unavailable(format!(
            "publish {key:?}: the key changed under each of 4 transactions"
        )))
    }

    fn lookup(&self, name: &str) -> Result<SegmentDescriptor, MetadataError> {
        let key = self.key(name);
        let mut c = self.client.clone();
        let resp = self.call(|| format!("get {key:?}"), c.get(key.as_str(), None))?;
        let kv = resp
            .kvs()
            .first()
            .ok_or_else(|| MetadataError::NotFound(name.to_string()))?;
        SegmentDescriptor::decode(kv.value()).map_err(|source| MetadataError::Corrupt {
            name: name.to_string(),
            source,
        })
    }

    /// Removes the descriptor only while it is attached to this instance's lease (one this
    /// instance published); returns whether it did.
    fn remove(&self, name: &str) -> Result<bool, MetadataError> {
        let key = self.key(name);
        let txn = Txn::new()
            .when([Compare::lease(key.as_str(), CompareOp::Equal, self.lease)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        let mut c = self.client.clone();
        let resp = self.call(|| format!("delete {key:?}"), c.txn(txn))?;
        Ok(resp.succeeded())
    }

    fn watch(&self, desc: &SegmentDescriptor, gone: OnGone) -> Result<WatchGuard, MetadataError> {
        let key = self.key(&desc.name);
        let mut c = self.client.clone();
        let resp = self.call(|| format!("get {key:?}"), c.get(key.as_str(), None))?;
        if !publishes(resp.kvs().first(), desc) {
            peer_gone(&desc.name, &desc.engine, "no longer published");
            gone();
            return Ok(WatchGuard::none());
        }
        let from = resp.header().map_or(0, |h| h.revision()) + 1;
        let w = KeyWatch {
            client: self.client.clone(),
            key,
            expect: desc.clone(),
        };
        let task = &self.rt.spawn(w.run(from, gone));
        let abort = task.abort_handle();
        Ok(WatchGuard::new(move || abort.abort()))
    }
}

impl Drop for EtcdMetadata {
    fn drop(&mut self) {
        self.keeper.abort();
        let mut c = self.client.clone();
        let lease = self.lease;
        // Best effort: without it the descriptors still vanish when the lease expires.
        let _ = self.call(|| format!("revoke lease {lease}"), c.lease_revoke(lease));
    }
}

/// Renews `lease` every `period` until aborted; re-opens the keep-alive stream when it breaks.
async fn keep_alive(mut client: Client, lease: i64, period: Duration, alive: Arc<AtomicBool>) {
    loop {
        match client.lease_keep_alive(lease).await {
            Ok((mut keeper, mut stream)) => loop {
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match tokio::time::timeout(period.max(Duration::from_millis(100)), stream.message())
                    .await
                {
                    Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                    Ok(Ok(Some(_))) => {
                        alive.store(false, Ordering::Release);
                        tracing::error!(
                            lease,
                            "etcd lease expired: this process's descriptors are gone"
                        );
                        return;
                    }
                    _ => break,
                }
                tokio::time::sleep(period).await;
            },
            Err(e) => tracing::warn!(lease, error = %e, "etcd lease keep-alive failed; retrying"),
        }
        tokio::time::sleep(period.min(Duration::from_millis(500))).await;
    }
}

/// Whether `kv` holds `desc` (compared decoded, so a peer whose codec writes the same
/// descriptor differently is not taken for gone).
fn publishes(kv: Option<&etcd_client::KeyValue>, desc: &SegmentDescriptor) -> bool {
    kv.and_then(|kv| SegmentDescriptor::decode(kv.value()).ok())
        .is_some_and(|d| d == *desc)
}

fn peer_gone(name: &str, engine: &str, why: &str) {
    let span = tracing::warn_span!("peer_gone", segment = name, engine = engine);
    let _enter = span.enter();
    tracing::warn!(why, "segment's owner is gone");
}

/// A watch on one key, for [`Metadata::watch`].
struct KeyWatch {
    client: Client,
    key: String,
    expect: SegmentDescriptor,
}

/// What a watch stream ended with.
enum Change {
    /// The key was deleted (lease expired, removed) or replaced.
    Gone(&'static str),
    /// The stream broke or was cancelled (etcd unreachable, revision compacted).
    Broken,
}

impl KeyWatch {
    async fn run(mut self, mut from: i64, gone: OnGone) {
        loop {
            match self.until_change(from).await {
                Change::Gone(why) => break peer_gone(&self.expect.name, &self.expect.engine, why),
                Change::Broken => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    // Whatever happened while the stream was down shows in the current value.
                    let Ok(resp) = self.client.get(self.key.as_str(), None).await else {
                        continue;
                    };
                    if !publishes(resp.kvs().first(), &self.expect) {
                        break peer_gone(
                            &self.expect.name,
                            &self.expect.engine,
                            "changed while unwatched",
                        );
                    }
                    from = resp.header().map_or(from, |h| h.revision() + 1);
                }
            }
        }
        gone();
    }

    async fn until_change(&mut self, from: i64) -> Change {
        let options = WatchOptions::new().with_start_revision(from);
        let Ok(mut stream) = self.client.watch(self.key.as_str(), Some(options)).await else {
            return Change::Broken;
        };
        loop {
            let Ok(Some(resp)) = stream.message().await else {
                return Change::Broken;
            };
            for ev in resp.events() {
                match ev.event_type() {
                    EventType::Delete => return Change::Gone("deleted (lease expired or removed)"),
                    // The same descriptor written again (same owner, same keys) is no change.
                    EventType::Put if publishes(ev.kv(), &self.expect) => {}
                    EventType::Put => {
                        return Change::Gone("replaced (owner restarted or re-registered)")
                    }
                }
            }
            if resp.canceled() {
                return Change::Broken;
            }
        }
    }
}
