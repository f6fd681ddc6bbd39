//! Runnable examples for kluis; see `quickstart.rs`.
