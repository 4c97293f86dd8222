mod context_ops;
mod fake;
mod fast_path;
// Offsets printed by a C program on x86_64; aarch64 is covered by the
// layout assertions bindgen generated from clang for that target.
#[cfg(target_arch = "x86_64")]
mod layout;
mod loader;
