//! efa (under construction).
