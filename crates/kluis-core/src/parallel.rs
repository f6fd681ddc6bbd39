//! Sealing and opening many payload chunks at once over the available cores. Chunks are
//! independent under STREAM (each has its own nonce), so the order of work does not matter;
//! only the bytes each thread touches must not overlap.

use crate::backend::ChunkCipher;
use crate::chunk::chunk_nonce;
use crate::format::{CHUNK_LEN, SEALED_CHUNK_LEN};

/// Most threads one call uses.
pub(crate) const MAX_THREADS: usize = 8;
/// Fewest chunks worth handing to a thread of its own by default (512 KiB: about 60 µs of
/// AES-GCM, several times what starting a thread costs).
const MIN_CHUNKS_PER_THREAD: usize = 8;

/// The threads used by default: the available cores, at most [`MAX_THREADS`]. Asked once per
/// process (on Linux it reads cgroup files).
pub(crate) fn default_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS)
    })
}

/// The threads to use for `chunks` chunks when the caller asked for `threads`: 0 means the
/// default (the available cores, at most [`MAX_THREADS`], each with at least
/// [`MIN_CHUNKS_PER_THREAD`] chunks); any other number is used as given, at most one thread
/// per chunk and at most [`MAX_THREADS`].
pub(crate) fn for_chunks(threads: usize, chunks: usize) -> usize {
    match threads {
        0 => default_threads().min(chunks / MIN_CHUNKS_PER_THREAD),
        n => n.min(MAX_THREADS).min(chunks),
    }
    .max(1)
}

/// Run `f` on each of `parts`, on the calling thread and up to `parts.len() - 1` more; the
/// results come back in the order of `parts`. Should the OS refuse a thread, the threads it
/// has (at least the calling one) do all the parts.
fn on_threads<P: Send, T: Send>(parts: Vec<P>, f: impl Fn(P) -> T + Sync) -> Vec<T> {
    use std::sync::{Mutex, PoisonError};
    let n = parts.len();
    let queue = Mutex::new(parts.into_iter().enumerate().collect::<Vec<_>>());
    let results = Mutex::new((0..n).map(|_| None).collect::<Vec<Option<T>>>());
    let work = || {
        loop {
            let next = queue.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let Some((i, part)) = next else { break };
            let r = f(part);
            results.lock().unwrap_or_else(PoisonError::into_inner)[i] = Some(r);
        }
    };
    std::thread::scope(|scope| {
        for _ in 1..n {
            if std::thread::Builder::new()
                .spawn_scoped(scope, work)
                .is_err()
            {
                break;
            }
        }
        work();
    });
    results
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .map(|r| r.expect("every part was run"))
        .collect()
}

/// Grow `out` by `n` zero bytes. When `out` has the room already, or holds something (so
/// growing it must copy that anyway, and keeps `Vec`'s doubling for a series of appends), the
/// new bytes are zeroed here (`Vec::resize`). An empty `out` without the room gets a new buffer
/// that comes zeroed from the allocator: for large sizes, fresh pages from the kernel, which
/// the threads that fill it fault in side by side instead of this thread zeroing them all
/// first (for a fresh 256 MiB buffer that took longer than sealing it). glibc may serve sizes
/// up to 32 MiB from its heap instead and zero them here, as before. `None` if the memory
/// cannot be had; `out` is then unchanged.
pub(crate) fn grow_zeroed(out: &mut Vec<u8>, n: usize) -> Option<()> {
    let at = out.len();
    if out.capacity() - at < n {
        if at > 0 {
            out.try_reserve(n).ok()?;
        } else {
            // Ask without aborting first: `vec!` aborts the process where memory is refused.
            Vec::<u8>::new().try_reserve_exact(n).ok()?;
            *out = vec![0u8; n];
            return Some(());
        }
    }
    out.resize(at + n, 0);
    Some(())
}

/// A copy of `src` in a fresh buffer, made over up to `threads` threads (0: the default, for
/// inputs of more than a few chunks) so that the new buffer's pages are faulted in side by
/// side (see [`grow_zeroed`]). `None` if the memory cannot be had.
pub(crate) fn copy_fresh(src: &[u8], threads: usize) -> Option<Vec<u8>> {
    let threads = for_chunks(threads, src.len() / SEALED_CHUNK_LEN);
    if threads == 1 {
        let mut out = Vec::new();
        out.try_reserve_exact(src.len()).ok()?;
        out.extend_from_slice(src);
        return Some(out);
    }
    let mut out = Vec::new();
    grow_zeroed(&mut out, src.len())?;
    let per = src.len().div_ceil(threads).max(1);
    let parts = out.chunks_mut(per).zip(src.chunks(per)).collect();
    on_threads(parts, |(to, from): (&mut [u8], &[u8])| {
        to.copy_from_slice(from)
    });
    Some(out)
}

/// Run `f` over the whole sealed chunks of `buf`, split into up to `threads` runs of
/// consecutive chunks, each on a thread of its own (see [`on_threads`]). `f` gets a run and
/// the index in `buf` of its first chunk; the results come back in run order.
pub(crate) fn on_runs<T: Send>(
    buf: &mut [u8],
    threads: usize,
    f: impl Fn(&mut [u8], usize) -> T + Sync,
) -> Vec<T> {
    let chunks = buf.len() / SEALED_CHUNK_LEN;
    let per = chunks.div_ceil(threads.max(1));
    let runs: Vec<_> = buf
        .chunks_mut(per.max(1) * SEALED_CHUNK_LEN)
        .enumerate()
        .collect();
    on_threads(runs, |(k, run)| f(run, k * per))
}

/// Seal full (never last) chunks laid out back to back in `buf` (each `CHUNK_LEN` of plaintext
/// followed by room for its tag), the first one being chunk number `first`, over `threads`
/// threads. Each thread first calls `fill` with a chunk's number (counted in `buf`) and its
/// plaintext space, to put the plaintext there itself.
pub(crate) fn seal_full_chunks(
    cipher: &ChunkCipher,
    buf: &mut [u8],
    first: u64,
    threads: usize,
    fill: impl Fn(usize, &mut [u8]) + Sync,
) {
    on_runs(buf, threads, |run, start| {
        for (i, chunk) in run.chunks_exact_mut(SEALED_CHUNK_LEN).enumerate() {
            let (plain, tag) = chunk.split_at_mut(CHUNK_LEN);
            fill(start + i, plain);
            let nonce = chunk_nonce(first + (start + i) as u64, false);
            tag.copy_from_slice(&cipher.seal(nonce, plain));
        }
    });
}

/// Open full, non-final chunks laid out back to back in `buf` (each sealed chunk
/// `SEALED_CHUNK_LEN` long), the first one being chunk number `first`, in place over
/// `threads` threads: chunk `i`'s plaintext ends up at the start of its own slot. Returns the
/// index (in `buf`) of the first chunk that failed to authenticate, if any.
pub(crate) fn open_full_chunks(
    cipher: &ChunkCipher,
    buf: &mut [u8],
    first: u64,
    threads: usize,
) -> Option<usize> {
    let failed = on_runs(buf, threads, |run, start| {
        run.chunks_exact_mut(SEALED_CHUNK_LEN)
            .enumerate()
            .find_map(|(i, chunk)| {
                let nonce = chunk_nonce(first + (start + i) as u64, false);
                cipher
                    .open_within(nonce, chunk, 0)
                    .is_none()
                    .then_some(start + i)
            })
    });
    failed.into_iter().flatten().min()
}

/// One thread's share of [`open_shifted`]: chunks `first..end`, whose plaintext goes to its
/// own `region` (which starts at byte `base` of the document), and the ciphertext that lies
/// past the region, copied to `tail` (which starts at byte `tail_at`).
struct ShiftedRun<'a> {
    first: usize,
    end: usize,
    base: usize,
    region: &'a mut [u8],
    tail_at: usize,
    tail: Vec<u8>,
}

/// Open `n` full, non-final chunks laid out from byte `at` of `buf`, the first being chunk
/// number `counter` of the payload, moving the `i`th one's plaintext to `i * CHUNK_LEN` (so the
/// plaintext ends up contiguous at the start of `buf`, with no copy but the decryption
/// itself), over `threads` threads. Returns the index (in `buf`) of the first chunk that
/// failed to authenticate, if any.
///
/// Each thread writes only its own region, `first * CHUNK_LEN .. end * CHUNK_LEN`. A chunk is
/// shifted left by `at + 16 i` bytes, so a run's last chunks may lie (partly) in the next
/// region, which that run's thread overwrites: those bytes are copied aside first (at most
/// `at + 16 n` bytes per run).
pub(crate) fn open_shifted(
    cipher: &ChunkCipher,
    buf: &mut [u8],
    at: usize,
    n: usize,
    counter: u64,
    threads: usize,
) -> Option<usize> {
    let end = at + n * SEALED_CHUNK_LEN;
    let per = n.div_ceil(threads.max(1)).max(1);
    let mut runs = Vec::new();
    let mut rest = &mut buf[..end];
    let mut base = 0;
    for first in (0..n).step_by(per) {
        let last = (first + per).min(n);
        let region_end = if last == n { end } else { last * CHUNK_LEN };
        let tail_at = (at + first * SEALED_CHUNK_LEN).max(region_end);
        let tail = rest[tail_at - base..at + last * SEALED_CHUNK_LEN - base].to_vec();
        let (region, more) = std::mem::take(&mut rest).split_at_mut(region_end - base);
        runs.push(ShiftedRun {
            first,
            end: last,
            base,
            region,
            tail_at,
            tail,
        });
        rest = more;
        base = region_end;
    }
    let failed = on_threads(runs, |run| open_run(cipher, at, counter, run));
    failed.into_iter().flatten().min()
}

/// Open the chunks of one [`ShiftedRun`] in order (each one's plaintext lands before its
/// ciphertext, and before every later chunk's); the first that fails ends the run.
fn open_run(cipher: &ChunkCipher, at: usize, counter: u64, run: ShiftedRun<'_>) -> Option<usize> {
    let ShiftedRun {
        first,
        end,
        base,
        region,
        tail_at,
        tail,
    } = run;
    let region_end = base + region.len();
    let mut scratch: Option<zeroize::Zeroizing<Vec<u8>>> = None;
    for i in first..end {
        let nonce = chunk_nonce(counter + i as u64, false);
        let (from, to, out) = (
            at + i * SEALED_CHUNK_LEN,
            at + (i + 1) * SEALED_CHUNK_LEN,
            i * CHUNK_LEN,
        );
        let opened = if to <= region_end {
            cipher.open_within(nonce, &mut region[out - base..to - base], from - out)
        } else {
            // The ciphertext reaches past the region: put it together from the region and
            // the copy, open it aside, and move the plaintext into place.
            let s =
                scratch.get_or_insert_with(|| zeroize::Zeroizing::new(vec![0; SEALED_CHUNK_LEN]));
            let own = region_end.saturating_sub(from);
            if own > 0 {
                s[..own].copy_from_slice(&region[from - base..region_end - base]);
            }
            let t = from + own - tail_at;
            s[own..].copy_from_slice(&tail[t..t + SEALED_CHUNK_LEN - own]);
            let opened = cipher.open_within(nonce, s, 0);
            if opened.is_some() {
                region[out - base..out - base + CHUNK_LEN].copy_from_slice(&s[..CHUNK_LEN]);
            }
            opened
        };
        if opened.is_none() {
            return Some(i);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::primitives::DerivedKey;

    /// `n` full chunks sealed back to back after `at` bytes of something else, and their
    /// plaintext.
    fn layout(cipher: &ChunkCipher, at: usize, n: usize) -> (Vec<u8>, Vec<u8>) {
        let plain: Vec<u8> = (0..n * CHUNK_LEN).map(|i| (i % 253) as u8).collect();
        let mut buf = vec![0xee; at];
        for (i, chunk) in plain.chunks(CHUNK_LEN).enumerate() {
            let start = buf.len();
            buf.extend_from_slice(chunk);
            let tag = cipher.seal(chunk_nonce(i as u64, false), &mut buf[start..]);
            buf.extend_from_slice(&tag);
        }
        (buf, plain)
    }

    /// Growing keeps what was there and adds exactly `n` zero bytes, whether the buffer had
    /// the room already (zeroed here, over old contents), held something without it (grown),
    /// or was empty without it (a fresh zeroed buffer).
    #[test]
    fn growing_zeroed_keeps_the_prefix_and_adds_zeros() {
        for (prefix, capacity, n) in [
            (0, 0, 0),
            (0, 0, 3 * SEALED_CHUNK_LEN),
            (0, 100, 5000),
            (7, 7, 5000),
            (7, 20_000, 5000),
            (7, 20_000, 19_993),
            (7, 0, (1 << 20) + 1),
        ] {
            let mut out = Vec::with_capacity(capacity.max(prefix));
            // Old contents beyond the length must not show through.
            out.resize(capacity.max(prefix), 0x5a);
            out.truncate(prefix);
            out.iter_mut().for_each(|b| *b = 0xa5);
            grow_zeroed(&mut out, n).expect("memory");
            assert_eq!(out.len(), prefix + n);
            assert!(out[..prefix].iter().all(|&b| b == 0xa5));
            assert!(out[prefix..].iter().all(|&b| b == 0));
        }
        // Appending to a buffer that holds something keeps `Vec`'s doubling growth, so a
        // series of appends does not copy everything each time.
        let mut out = vec![1u8; 1000];
        out.shrink_to_fit();
        let before = out.capacity();
        grow_zeroed(&mut out, 10).expect("memory");
        assert!(out.capacity() >= 2 * before);
        let mut out = b"kept".to_vec();
        assert_eq!(grow_zeroed(&mut out, usize::MAX), None);
        assert_eq!(grow_zeroed(&mut out, isize::MAX as usize), None);
        assert_eq!(out, b"kept");
        let mut out = Vec::new();
        assert_eq!(grow_zeroed(&mut out, usize::MAX), None);
        assert!(out.is_empty());
    }

    /// The copy is exact whatever the length and threads, including lengths that split
    /// unevenly over the threads.
    #[test]
    fn fresh_copies_are_exact_over_any_number_of_threads() {
        for len in [
            0,
            1,
            SEALED_CHUNK_LEN,
            2 * SEALED_CHUNK_LEN + 1,
            20 * SEALED_CHUNK_LEN - 3,
        ] {
            let src: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            for threads in [0, 1, 2, 3, MAX_THREADS] {
                let copy = copy_fresh(&src, threads).expect("memory");
                assert!(copy == src, "{len} bytes, {threads} threads");
            }
        }
    }

    /// Shifts of up to several chunks, so that some chunks of a thread's part lie wholly in
    /// the next part (opened from the copy set aside), some across the edge, some inside.
    #[test]
    fn shifted_opening_puts_every_chunk_in_place_whatever_the_shift_and_threads() {
        let cipher = ChunkCipher::new(Backend::Ring, &DerivedKey([7; 32]));
        for at in [0, 1, CHUNK_LEN - 3, CHUNK_LEN + 17, 3 * CHUNK_LEN + 5] {
            for n in [1, 2, 5, 12] {
                let (sealed, plain) = layout(&cipher, at, n);
                for threads in 1..=MAX_THREADS {
                    let mut buf = sealed.clone();
                    assert_eq!(open_shifted(&cipher, &mut buf, at, n, 0, threads), None);
                    assert!(
                        buf[..n * CHUNK_LEN] == plain[..],
                        "shift {at}, {n} chunks, {threads} threads"
                    );
                }
            }
        }
    }

    #[test]
    fn shifted_opening_reports_the_first_failed_chunk() {
        let cipher = ChunkCipher::new(Backend::Ring, &DerivedKey([7; 32]));
        let (at, n) = (3 * CHUNK_LEN + 5, 12);
        let (sealed, _) = layout(&cipher, at, n);
        for damaged in [&[0][..], &[11], &[4, 9], &[9, 2], &[6]] {
            for threads in 1..=MAX_THREADS {
                let mut buf = sealed.clone();
                for &i in damaged {
                    buf[at + i * SEALED_CHUNK_LEN + 100] ^= 1;
                }
                let want = damaged.iter().min().copied();
                assert_eq!(
                    open_shifted(&cipher, &mut buf, at, n, 0, threads),
                    want,
                    "{damaged:?}, {threads} threads"
                );
            }
        }
    }
}
