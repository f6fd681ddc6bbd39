//! The [`BlockSink`] trait: output memory that the block writer seals into and the stream
//! reader opens into. At the bottom of the module graph (it needs only `std::io`).

use std::io;

/// Output memory cut into blocks, filled one after the other, which a
/// [`crate::fast::BlockWriter`] seals a document straight into (for example aligned blocks for
/// `O_DIRECT` writes).
pub trait BlockSink {
    /// The free rest of the block being filled, never empty: when the block is full, this
    /// first takes it (writes it out) and starts the next. Bytes put here count only once
    /// [`BlockSink::advance`] says so, and stay where they are until then.
    fn spare(&mut self) -> io::Result<&mut [u8]>;

    /// Count the first `n` bytes of [`BlockSink::spare`] as filled.
    fn advance(&mut self, n: usize);
}

/// A sink borrowed for one document (like `Write for &mut W`).
impl<S: BlockSink + ?Sized> BlockSink for &mut S {
    fn spare(&mut self) -> io::Result<&mut [u8]> {
        (**self).spare()
    }

    fn advance(&mut self, n: usize) {
        (**self).advance(n);
    }
}
