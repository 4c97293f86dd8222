// A region registered over a borrowed buffer cannot outlive the buffer.
fn main() {
    let ctx = efa::Context::open("any").unwrap();
    let pd = efa::Pd::new(&ctx).unwrap();
    let mr;
    {
        let mut buf = vec![0u8; 64];
        mr = efa::Mr::register(&pd, &mut buf, efa::Access::default()).unwrap();
    }
    println!("{}", mr.lkey());
}
