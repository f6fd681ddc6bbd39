//! Seal and open throughput of kluis-core, in memory, next to raw ring AES-256-GCM.
//!
//! Run with `cargo bench -p kluis-benches`; see docs/BENCHMARKS.md. Each size is one
//! criterion group, so the report shows the raw AEAD and the format side by side.

use std::cell::OnceCell;
use std::hint::black_box;
use std::io::{Read, Write};
use std::time::Duration;

use criterion::{BatchSize, BenchmarkGroup, Criterion, SamplingMode, Throughput, measurement};
use kluis_core::fast::{Backend, CHUNK_LEN};
use kluis_core::{Header, LabelKey, Metadata, Recipient, Slot};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;
const TAG_LEN: usize = 16;

/// `(name, bytes)`; the last one is large enough to leave the caches far behind.
const SIZES: [(&str, usize); 3] = [("1KiB", KIB), ("1MiB", MIB), ("256MiB", 256 * MIB)];

fn ring_key() -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[0x42; 32]).expect("32-byte key"))
}

/// A 96-bit counter nonce, as any chunked format would use.
fn nonce(i: usize) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&(i as u64).to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// The best a chunked format can do with ring: seal in place, 64 KiB at a time, no copies.
fn raw_seal(key: &LessSafeKey, buf: &mut [u8], first: usize) {
    for (i, chunk) in buf.chunks_mut(CHUNK_LEN).enumerate() {
        let tag = key
            .seal_in_place_separate_tag(nonce(first + i), Aad::empty(), chunk)
            .expect("within AES-GCM limits");
        let _ = black_box(tag);
    }
}

/// `raw_seal` with each tag after its chunk: the input for `raw_open`.
fn raw_sealed(key: &LessSafeKey, plain: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    raw_seal_into(key, plain, &mut out);
    out
}

/// Append each chunk to `out`, seal it there and append its tag.
fn raw_seal_into(key: &LessSafeKey, plain: &[u8], out: &mut Vec<u8>) {
    out.reserve(plain.len() + plain.len().div_ceil(CHUNK_LEN) * TAG_LEN);
    for (i, chunk) in plain.chunks(CHUNK_LEN).enumerate() {
        let start = out.len();
        out.extend_from_slice(chunk);
        let tag = key
            .seal_in_place_separate_tag(nonce(i), Aad::empty(), &mut out[start..])
            .expect("within AES-GCM limits");
        out.extend_from_slice(tag.as_ref());
    }
}

/// `raw_seal_into` on two threads: zero the output, then each thread copies its half of the
/// chunks into place and seals them there.
fn raw_seal_into_two(key: &LessSafeKey, plain: &[u8], out: &mut Vec<u8>) {
    out.resize(plain.len() + plain.len().div_ceil(CHUNK_LEN) * TAG_LEN, 0);
    on_two_threads(out, CHUNK_LEN + TAG_LEN, |half, first| {
        for (i, chunk) in half.chunks_mut(CHUNK_LEN + TAG_LEN).enumerate() {
            let from = (first + i) * CHUNK_LEN;
            let (p, tag) = chunk.split_at_mut(chunk.len() - TAG_LEN);
            p.copy_from_slice(&plain[from..from + p.len()]);
            let t = key
                .seal_in_place_separate_tag(nonce(first + i), Aad::empty(), p)
                .expect("within AES-GCM limits");
            tag.copy_from_slice(t.as_ref());
        }
    });
}

/// Open the chunks of `raw_sealed` in place (`buf` starting at chunk `first`).
fn raw_open(key: &LessSafeKey, buf: &mut [u8], first: usize) {
    for (i, chunk) in buf.chunks_mut(CHUNK_LEN + TAG_LEN).enumerate() {
        let plain = key
            .open_in_place(nonce(first + i), Aad::empty(), chunk)
            .expect("authentic chunk");
        black_box(plain);
    }
}

/// Open the chunks of `raw_sealed`, which start `at` bytes into `buf`, moving each chunk's
/// plaintext next to the one before (`open_within`), so the plaintext ends up contiguous at the
/// start of `buf`: the job `open_in_place` does, without any format around it.
fn raw_open_together(key: &LessSafeKey, buf: &mut [u8], at: usize) {
    let chunks = (buf.len() - at).div_ceil(CHUNK_LEN + TAG_LEN);
    for i in 0..chunks {
        let (out, from) = (i * CHUNK_LEN, at + i * (CHUNK_LEN + TAG_LEN));
        let end = (from + CHUNK_LEN + TAG_LEN).min(buf.len());
        let plain = key
            .open_within(nonce(i), Aad::empty(), &mut buf[out..end], from - out..)
            .expect("authentic chunk");
        black_box(plain);
    }
}

/// `f` over the two halves of `buf` (split at a `chunk`-byte boundary) on two threads, with
/// the number of the first chunk of each half: what two cores can do at most.
fn on_two_threads(buf: &mut [u8], chunk: usize, f: impl Fn(&mut [u8], usize) + Sync) {
    let half = buf.len().div_ceil(chunk).div_ceil(2) * chunk;
    let (a, b) = buf.split_at_mut(half.min(buf.len()));
    std::thread::scope(|s| {
        s.spawn(|| f(b, half / chunk));
        f(a, 0);
    });
}

fn configure(group: &mut BenchmarkGroup<'_, measurement::WallTime>, size: usize) {
    group.throughput(Throughput::Bytes(size as u64));
    if size >= 64 * MIB {
        // One iteration takes a tenth of a second or more: few, equal samples.
        group
            .sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(6));
    } else {
        group
            .sample_size(30)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
    }
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Ring => "ring",
        _ => "aes-gcm",
    }
}

fn bench(c: &mut Criterion) {
    let label = LabelKey::from_secret_bytes("hr", 1, [0x11; 32]).expect("valid label");
    let slots = [Slot::single(Recipient::Label(label.public_key().clone()))];
    let metadata = Metadata::default();
    let key = ring_key();

    let empty = kluis_core::fast::seal(
        &slots,
        &metadata,
        b"",
        &kluis_core::fast::FastOptions::default().backend(Backend::Ring),
    )
    .expect("seal");
    let header = Header::parse(&empty).expect("parse");
    println!(
        "header length, one org slot (label \"hr\"): {} bytes",
        header.len()
    );

    // Without `--bench` (e.g. `cargo test --benches`) criterion runs each benchmark once as a
    // test, usually unoptimised: skip the largest size there.
    let smoke_test = !std::env::args().any(|a| a == "--bench");
    for (name, size) in SIZES {
        if smoke_test && size > MIB {
            continue;
        }
        let plain: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let mut group = c.benchmark_group(name);
        configure(&mut group, size);

        // Inputs are built on first use, so a filtered run (or a profile) only pays for its own.
        let mut buf: Option<Vec<u8>> = None;
        group.bench_function("ring AEAD seal (raw)", |b| {
            let buf = buf.get_or_insert_with(|| plain.clone());
            b.iter(|| raw_seal(&key, buf, 0))
        });
        group.bench_function("ring AEAD seal (raw, 2 threads)", |b| {
            let buf = buf.get_or_insert_with(|| plain.clone());
            b.iter(|| on_two_threads(buf, CHUNK_LEN, |half, first| raw_seal(&key, half, first)))
        });
        drop(buf);
        // What any API that leaves the caller's plaintext intact must at least do: copy each
        // chunk into a (reused) output and seal it there.
        let mut out = Vec::new();
        group.bench_function("ring AEAD seal (raw, copy into reused output)", |b| {
            b.iter(|| {
                out.clear();
                raw_seal_into(&key, &plain, &mut out)
            })
        });
        group.bench_function(
            "ring AEAD seal (raw, copy into reused output, 2 threads)",
            |b| {
                b.iter(|| {
                    out.clear();
                    raw_seal_into_two(&key, &plain, &mut out)
                })
            },
        );
        drop(out);
        let sealed = OnceCell::new();
        group.bench_function("ring AEAD open (raw)", |b| {
            let sealed = sealed.get_or_init(|| raw_sealed(&key, &plain));
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| raw_open(&key, buf, 0),
                BatchSize::LargeInput,
            )
        });
        group.bench_function("ring AEAD open (raw, 2 threads)", |b| {
            let sealed = sealed.get_or_init(|| raw_sealed(&key, &plain));
            b.iter_batched_ref(
                || sealed.clone(),
                |buf| {
                    on_two_threads(buf, CHUNK_LEN + TAG_LEN, |half, first| {
                        raw_open(&key, half, first)
                    })
                },
                BatchSize::LargeInput,
            )
        });
        // As `open_in_place` lays it out: after a header, the plaintext moved together.
        group.bench_function("ring AEAD open (raw, plaintext moved together)", |b| {
            let sealed = sealed.get_or_init(|| raw_sealed(&key, &plain));
            let mut after_header = vec![0u8; header.len()];
            after_header.extend_from_slice(sealed);
            b.iter_batched_ref(
                || after_header.clone(),
                |buf| raw_open_together(&key, buf, header.len()),
                BatchSize::LargeInput,
            )
        });
        drop(sealed);

        // The streaming API into an output buffer reused across iterations: the format's own
        // cost (chunk copies, header crypto) without first-touch page faults of a fresh Vec.
        let sized = Metadata::with_size(size as u64);
        let mut out = Vec::new();
        group.bench_function("kluis seal (ring, stream, reused output)", |b| {
            b.iter(|| {
                out.clear();
                let mut w = kluis_core::fast::stream_writer(
                    &mut out,
                    &slots,
                    &sized,
                    &kluis_core::fast::FastOptions::default().backend(Backend::Ring),
                )
                .expect("writer");
                w.write_all(&plain).expect("write");
                w.finish().expect("finish");
            })
        });
        // The same on one core only: the parallel speed-up is the ratio of the two.
        group.bench_function("kluis seal (ring, stream, reused output, 1 thread)", |b| {
            b.iter(|| {
                out.clear();
                let mut w = kluis_core::fast::stream_writer(
                    &mut out,
                    &slots,
                    &sized,
                    &kluis_core::fast::FastOptions::default()
                        .backend(Backend::Ring)
                        .threads(1),
                )
                .expect("writer");
                w.write_all(&plain).expect("write");
                w.finish().expect("finish");
            })
        });
        // To a sink (like `> /dev/null`): no output buffer at all.
        group.bench_function("kluis seal (ring, stream, to a sink)", |b| {
            b.iter(|| {
                let mut w = kluis_core::fast::stream_writer(
                    std::io::sink(),
                    &slots,
                    &sized,
                    &kluis_core::fast::FastOptions::default().backend(Backend::Ring),
                )
                .expect("writer");
                w.write_all(&plain).expect("write");
                w.finish().expect("finish");
            })
        });
        drop(out);
        let sealed = OnceCell::new();
        let mut out = Vec::new();
        // On all cores, then on one: the parallel speed-up is the ratio of the two.
        for (bench, threads) in [
            ("kluis open (ring, stream, reused output)", 0),
            ("kluis open (ring, stream, reused output, 1 thread)", 1),
        ] {
            group.bench_function(bench, |b| {
                let sealed = sealed.get_or_init(|| {
                    kluis_core::fast::seal(
                        &slots,
                        &metadata,
                        &plain,
                        &kluis_core::fast::FastOptions::default().backend(Backend::Ring),
                    )
                    .expect("seal")
                });
                out.resize(size, 0);
                b.iter(|| {
                    let mut input = &sealed[..];
                    let header = Header::read(&mut input).expect("header");
                    let key = header.unlock(&[&label]).expect("unlock");
                    let mut r = kluis_core::fast::stream_reader(
                        &header,
                        &key,
                        input,
                        &kluis_core::fast::FastOptions::default()
                            .backend(Backend::Ring)
                            .threads(threads),
                    )
                    .expect("reader");
                    r.read_exact(&mut out).expect("read");
                    assert_eq!(r.read(&mut [0]).expect("end"), 0);
                });
                assert!(out == plain, "stream round trip at {name}");
            });
        }
        drop((sealed, out));

        for &backend in Backend::all() {
            let bn = backend_name(backend);
            group.bench_function(format!("kluis seal ({bn})"), |b| {
                b.iter(|| {
                    kluis_core::fast::seal(
                        &slots,
                        &metadata,
                        &plain,
                        &kluis_core::fast::FastOptions::default().backend(backend),
                    )
                    .expect("seal")
                })
            });
            let sealed = OnceCell::new();
            group.bench_function(format!("kluis open ({bn})"), |b| {
                let sealed = sealed.get_or_init(|| {
                    let sealed = kluis_core::fast::seal(
                        &slots,
                        &metadata,
                        &plain,
                        &kluis_core::fast::FastOptions::default().backend(backend),
                    )
                    .expect("seal");
                    let (opened, _) = kluis_core::fast::open(
                        &sealed,
                        &[&label],
                        &kluis_core::fast::FastOptions::default().backend(backend),
                    )
                    .expect("open");
                    assert!(opened == plain, "{bn} round trip at {name}");
                    sealed
                });
                b.iter(|| {
                    kluis_core::fast::open(
                        sealed,
                        &[&label],
                        &kluis_core::fast::FastOptions::default().backend(backend),
                    )
                    .expect("open")
                })
            });
            // The buffer-reusing forms: no fresh allocation per call, like the raw rows; on all
            // cores (threads 0) and on one.
            for (threads, cores) in [(0, ""), (1, ", 1 thread")] {
                let mut out = Vec::new();
                group.bench_function(
                    format!("kluis seal_into ({bn}, reused output{cores})"),
                    |b| {
                        b.iter(|| {
                            out.clear();
                            kluis_core::fast::seal_into(
                                &slots,
                                &metadata,
                                &plain,
                                &mut out,
                                &kluis_core::fast::FastOptions::default()
                                    .backend(backend)
                                    .threads(threads),
                            )
                            .expect("seal")
                        })
                    },
                );
                drop(out);
                // Into a buffer the caller already has (written once, before timing): no
                // allocation and nothing zeroed per call.
                let mut slice = Vec::new();
                group.bench_function(
                    format!("kluis seal_to_slice ({bn}, reused output{cores})"),
                    |b| {
                        if slice.is_empty() {
                            slice = vec![
                                0u8;
                                kluis_core::fast::max_sealed_len(size, &metadata)
                                    .expect("fits")
                            ];
                        }
                        b.iter(|| {
                            kluis_core::fast::seal_to_slice(
                                &slots,
                                &metadata,
                                &plain,
                                &mut slice,
                                &kluis_core::fast::FastOptions::default()
                                    .backend(backend)
                                    .threads(threads),
                            )
                            .expect("seal")
                        })
                    },
                );
                drop(slice);
                let sealed = OnceCell::new();
                group.bench_function(format!("kluis open_in_place ({bn}{cores})"), |b| {
                    let sealed = sealed.get_or_init(|| {
                        kluis_core::fast::seal(
                            &slots,
                            &metadata,
                            &plain,
                            &kluis_core::fast::FastOptions::default().backend(backend),
                        )
                        .expect("seal")
                    });
                    b.iter_batched_ref(
                        || sealed.clone(),
                        |buf| {
                            kluis_core::fast::open_in_place(
                                buf,
                                &[&label],
                                &kluis_core::fast::FastOptions::default()
                                    .backend(backend)
                                    .threads(threads),
                            )
                            .expect("open")
                        },
                        BatchSize::LargeInput,
                    )
                });
            }
        }
        group.finish();
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
