// While registered, the buffer belongs to the region (and the device): no direct access.
fn main() {
    let ctx = efa::Context::open("any").unwrap();
    let pd = efa::Pd::new(&ctx).unwrap();
    let mut buf = vec![0u8; 64];
    let mr = efa::Mr::register(&pd, &mut buf, efa::Access::default()).unwrap();
    buf[0] = 1;
    drop(mr);
}
