//! efa-sys (under construction).
