//! Links the shared library as rdma-core's: the soname `libibverbs.so.1` (the same file also serves as
//! `libefa.so.1`, see README) and the symbol version nodes that `src/abi.rs` assigns symbols to.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap();
    println!("cargo:rerun-if-changed=versions.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/versions.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libibverbs.so.1");
}
