//! Control paths (register, accept, open_segment and its connect, unregister) open `tracing`
//! spans; submit and wait open none. Alone in its test binary: tracing caches per call site
//! whether anyone listens, and a test running beside it on another thread could settle that
//! before this one's subscriber is in place.

mod common;

use std::time::Duration;

use common::*;
use transport::fabric::sim::SimConfig;
use transport::*;

const WAIT: Duration = Duration::from_secs(5);

/// Records the names of the spans created on this thread.
#[derive(Default)]
struct SpanNames(std::sync::Mutex<Vec<&'static str>>);

impl tracing::Subscriber for SpanNames {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut names = self.0.lock().unwrap();
        names.push(span.metadata().name());
        tracing::span::Id::from_u64(names.len() as u64)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn control_paths_open_tracing_spans_and_the_hot_path_none() {
    let names = std::sync::Arc::new(SpanNames::default());
    let c = Cluster::new();
    let (a, _) = c.engine("a", SimConfig::default());
    let (b, _) = c.engine("b", SimConfig::default());
    tracing::subscriber::with_default(names.clone(), || {
        let src = owned(&a, "a/src", 4096, Access::NONE, |_| 1);
        let dst = owned(&b, "b/dst", 4096, Access::REMOTE_WRITE, |_| 0);
        b.accept_peer(&a.local_addresses()).unwrap();
        let r = a.open_segment("b/dst").unwrap();
        let before = names.0.lock().unwrap().len();
        let mut w = a.worker().unwrap();
        let batch = a.allocate_batch(1).unwrap();
        w.submit(batch, &[Request::write(src, 0, r, 0, 64)])
            .unwrap();
        assert!(w.wait(batch, WAIT).unwrap().all_completed());
        assert_eq!(
            names.0.lock().unwrap().len(),
            before,
            "no span on submit or wait"
        );
        a.free_batch(batch).unwrap();
        a.close_segment(r).unwrap();
        b.unregister(dst).unwrap();
    });
    let names = names.0.lock().unwrap();
    for want in [
        "register",
        "accept",
        "open_segment",
        "connect",
        "unregister",
    ] {
        assert!(names.contains(&want), "no {want} span in {names:?}");
    }
}
