mod context_ops;
mod fake;
mod fast_path;
mod layout;
mod loader;
