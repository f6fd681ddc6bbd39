//! Runnable examples for kluis; see `library.rs`.
