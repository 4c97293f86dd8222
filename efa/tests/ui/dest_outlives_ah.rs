// A destination borrows its address handle.
fn dest(pd: &std::sync::Arc<efa::Pd>, gid: efa::Gid) -> efa::Dest<'static> {
    let ah = efa::Ah::new(pd, efa::AhAttr::new(gid, 0)).unwrap();
    efa::Dest::new(&ah, 1, 2)
}

fn main() {}
