// A single-threaded CQ skips the provider's lock that also guards QP destruction: asking for one
// is an unsafe promise, not a plain option.
fn main() {
    let ctx = efa::Context::open("any").unwrap();
    let _ = efa::Cq::builder(&ctx, 16).single_threaded(true).build();
}
