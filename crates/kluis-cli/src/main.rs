//! The `kluis` command (work in progress).

fn main() {}
