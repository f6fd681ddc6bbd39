//! Sealing files and folders, and verifying before an original is removed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use kluis_core::fast::BlockWriter;
use kluis_core::{FileKey, Header, Metadata, Slot, StreamReader, unlock_all};
use zeroize::Zeroizing;

use crate::atomic::{create_dirs, create_output_dir, start_output, sync_dir, sync_dirs};
use crate::error::{Error, Result};
use crate::file::{
    Stamp, absolute, buf_len, open_checked, parent_of, payload_error, read_full, reopen_sealed,
    require_file, starts_sealed,
};
use crate::name::{EXTENSION, NameKey, check_component, random_name};
use crate::open::BATCH;
use crate::output::Output;
use crate::pool;
use crate::report::{Event, Outcome, Report, SealOptions, Shared, Skip, single};
use crate::walk::{Entry, Found, has_extension, walk};

/// One file to seal.
struct Job {
    input: PathBuf,
    /// An existing folder: the output folder, or the input's own folder.
    root: PathBuf,
    /// Folders to create below `root` (a mirrored tree).
    rel_parent: PathBuf,
    /// `root/rel_parent/NAME.kluis`.
    output: PathBuf,
    /// The name stored in the sealed metadata.
    name: String,
    /// Index of its report.
    report: usize,
    /// An empty folder in a flat (`--hide-names`) output: sealed as an empty document whose
    /// stored name is its path with a `/` at the end, so opening restores the folder.
    folder: bool,
}

/// What a sealed file leaves for verification.
struct Sealed {
    /// The header as written: unlocked for verification, and compared with the one on disk.
    header: Header,
    /// The original as it was sealed.
    stamp: Stamp,
}

/// Seal files and folders. Folders are walked recursively (symbolic links are skipped, not
/// followed); `.kluis` files met inside them are skipped as already sealed.
///
/// Returns one report per file met, in walk order; a failure of one file does not stop the
/// others. The `Err` case is for problems with the whole run: no recipients, an output folder
/// that cannot be created or lies inside an input folder.
pub fn seal_paths<P: AsRef<Path>>(
    inputs: &[P],
    slots: &[Slot],
    options: &SealOptions<'_>,
) -> Result<Vec<Report>> {
    if slots.is_empty() {
        return Err(Error::NoRecipients);
    }
    let out_dir = options.output_dir.as_deref();
    if let Some(dir) = out_dir {
        create_output_dir(dir)?;
        let real_out = fs::canonicalize(dir).map_err(|e| Error::io(dir, "read", e))?;
        for input in inputs {
            let input = input.as_ref();
            let is_dir = fs::symlink_metadata(input).is_ok_and(|m| m.is_dir());
            if is_dir && fs::canonicalize(input).is_ok_and(|real| real_out.starts_with(real)) {
                return Err(Error::OutputInsideInput {
                    output: dir.into(),
                    input: input.into(),
                });
            }
        }
    }

    let mut listed = Vec::new();
    for input in inputs {
        walk(
            input.as_ref(),
            true,
            &|name| has_extension(name).then_some(Skip::AlreadySealed),
            &mut listed,
        );
    }
    let shared = Shared {
        force: options.force,
        progress: options.progress,
        temp_dir: None,
    };
    let (mut reports, jobs, bytes) = plan(listed, out_dir, options.hide_names, options.name_key);
    shared.emit(Event::Planned {
        files: jobs.len(),
        bytes,
    });
    for r in reports
        .iter()
        .filter(|r| !matches!(r.outcome, Outcome::Done))
    {
        shared.emit(Event::Finished(r));
    }

    let threads = pool::workers(options.threads, jobs.len());
    let (pad, remove) = (options.pad, options.remove_original);
    let results = pool::map(&jobs, threads, |job| {
        let (bytes, outcome, sealed) = match seal_one(job, slots, pad, remove, shared) {
            Ok((bytes, sealed)) => (bytes, Outcome::Done, sealed),
            Err(e) => (0, Outcome::Failed(e), None),
        };
        let report = Report {
            input: job.input.clone(),
            output: Some(job.output.clone()),
            bytes,
            outcome,
        };
        // A copy still to be verified finishes after verification.
        if sealed.is_none() {
            shared.emit(Event::Finished(&report));
        }
        (report, sealed)
    });
    let mut sealed = Vec::new();
    let mut dirs = Vec::new();
    for (job, (report, s)) in jobs.iter().zip(results) {
        if matches!(report.outcome, Outcome::Done) {
            dirs.push(parent_of(&job.output));
        }
        reports[job.report] = report;
        if let Some(s) = s {
            sealed.push((job, s));
        }
    }
    sync_dirs(dirs.into_iter(), &mut reports);
    sealed.retain(|(j, _)| matches!(reports[j.report].outcome, Outcome::Done));

    if options.remove_original {
        for chunk in sealed.chunks(BATCH) {
            verify_and_remove(chunk, options, shared, threads, &mut reports);
        }
        for (job, _) in &sealed {
            shared.emit(Event::Finished(&reports[job.report]));
        }
    }
    Ok(reports)
}

/// Seal one file. Fails unless it is a regular file; returns its report.
pub fn seal_file(input: &Path, slots: &[Slot], options: &SealOptions<'_>) -> Result<Report> {
    require_file(input)?;
    single(seal_paths(&[input], slots, options)?, input)
}

/// Turn the listing into jobs: output paths, stored names, and the checks that keep two
/// inputs from sharing an output or a restored name. Returns the reports (final for skipped
/// and refused files), the jobs and their total size.
fn plan(
    listed: Vec<Entry>,
    out_dir: Option<&Path>,
    hide: bool,
    name_key: Option<&NameKey>,
) -> (Vec<Report>, Vec<Job>, u64) {
    // The files to seal (not a `.kluis` file given by name, which is refused below: another
    // input sealed over it is "exists", not "would replace an input").
    let inputs: HashSet<PathBuf> = listed
        .iter()
        .filter_map(|e| match e {
            Entry::File(f) if !sealed_by_name(f) => Some(absolute(&f.path)),
            _ => None,
        })
        .collect();
    let mut outputs: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut names: HashMap<(PathBuf, String), PathBuf> = HashMap::new();
    let mut reports = Vec::with_capacity(listed.len());
    let mut jobs = Vec::new();
    let mut bytes = 0u64;
    for entry in listed {
        let failed = |input: PathBuf, e| Report {
            input,
            output: None,
            bytes: 0,
            outcome: Outcome::Failed(e),
        };
        let (found, folder) = match entry {
            // Mirrored in a non-flat output folder; nothing to seal. In a flat one (hidden
            // names), sealed as an empty document that stands for the folder. In place, it
            // stays where it is.
            Entry::EmptyDir(path, rel) => match (out_dir, hide) {
                (Some(out), false) => {
                    if let Err(e) = create_dirs(out, &rel) {
                        reports.push(Report {
                            output: Some(out.join(&rel)),
                            ..failed(path, e)
                        });
                    }
                    continue;
                }
                (Some(_), true) => {
                    let found = Found {
                        path,
                        rel_dir: rel,
                        len: 0,
                        direct: false,
                    };
                    (found, true)
                }
                (None, _) => continue,
            },
            Entry::File(f) if sealed_by_name(&f) => {
                let path = f.path.clone();
                reports.push(failed(f.path, Error::AlreadySealed { path }));
                continue;
            }
            Entry::File(f) => (f, false),
            Entry::Skipped(input, skip) => {
                reports.push(Report {
                    input,
                    output: None,
                    bytes: 0,
                    outcome: Outcome::Skipped(skip),
                });
                continue;
            }
            Entry::Failed(input, e) => {
                reports.push(failed(input, e));
                continue;
            }
        };
        let job = match job_for(&found, folder, out_dir, hide, name_key, reports.len()) {
            Ok(job) => job,
            Err(e) => {
                reports.push(failed(found.path, e));
                continue;
            }
        };
        let output = absolute(&job.output);
        let restored = restored_key(&job);
        let clash = if inputs.contains(&output) {
            Some(Error::OutputIsInput {
                path: job.input.clone(),
            })
        } else if let Some(other) = outputs.get(&output) {
            Some(Error::Collision {
                path: job.input.clone(),
                other: other.clone(),
            })
        } else {
            names.get(&restored).map(|other| Error::Collision {
                path: job.input.clone(),
                other: other.clone(),
            })
        };
        if let Some(e) = clash {
            reports.push(Report {
                output: Some(job.output),
                ..failed(job.input, e)
            });
            continue;
        }
        outputs.insert(output, job.input.clone());
        names.insert(restored, job.input.clone());
        bytes = bytes.saturating_add(found.len);
        reports.push(Report {
            input: job.input.clone(),
            output: Some(job.output.clone()),
            bytes: 0,
            outcome: Outcome::Done,
        });
        jobs.push(job);
    }
    (reports, jobs, bytes)
}

/// A file given by name whose name says it is sealed already (`.kluis`, in any case).
fn sealed_by_name(f: &Found) -> bool {
    f.direct && f.path.file_name().is_some_and(has_extension)
}

/// Where a job's file would be restored when its output is opened in place.
fn restored_key(job: &Job) -> (PathBuf, String) {
    (absolute(&job.root.join(&job.rel_parent)), job.name.clone())
}

/// Where one file goes and what name it stores. `folder`: `found` is an empty folder in a
/// flat output; its stored name is its whole path below the output, ending in `/`.
fn job_for(
    found: &Found,
    folder: bool,
    out_dir: Option<&Path>,
    hide: bool,
    name_key: Option<&NameKey>,
    report: usize,
) -> Result<Job> {
    let path = &found.path;
    let not_utf8 = || Error::NameNotUtf8 { path: path.clone() };
    let portable = |c: &str| {
        check_component(c).map_err(|problem| Error::NameNotPortable {
            path: path.clone(),
            problem,
        })
    };
    if folder {
        let out = out_dir.ok_or_else(|| Error::NotAFile { path: path.clone() })?;
        let mut name = String::new();
        for c in found.rel_dir.iter() {
            let c = c.to_str().ok_or_else(not_utf8)?;
            portable(c)?;
            name.push_str(c);
            name.push('/');
        }
        if name.len() > kluis_core::Metadata::MAX_NAME_LEN {
            return Err(Error::NameNotPortable {
                path: path.clone(),
                problem: crate::NameProblem::TooLong,
            });
        }
        let hidden = match name_key {
            Some(k) => k.hidden_name(&name),
            None => random_name()?,
        };
        return Ok(Job {
            input: path.clone(),
            output: out.join(format!("{hidden}.{EXTENSION}")),
            root: out.to_path_buf(),
            rel_parent: PathBuf::new(),
            name,
            report,
            folder: true,
        });
    }
    let base = path
        .file_name()
        .ok_or_else(|| Error::NotAFile { path: path.clone() })?
        .to_str()
        .ok_or_else(not_utf8)?;
    portable(base)?;
    let (root, rel_parent, name) = match out_dir {
        None => (parent_of(path), PathBuf::new(), base.to_owned()),
        Some(out) if !hide => (out.to_path_buf(), found.rel_dir.clone(), base.to_owned()),
        Some(out) => {
            // Flat output; the stored name is the whole relative path.
            let mut name = String::new();
            for c in found.rel_dir.iter() {
                let c = c.to_str().ok_or_else(not_utf8)?;
                portable(c)?;
                name.push_str(c);
                name.push('/');
            }
            name.push_str(base);
            (out.to_path_buf(), PathBuf::new(), name)
        }
    };
    let file = if hide {
        let hidden = match name_key {
            Some(k) => k.hidden_name(&name),
            None => random_name()?,
        };
        format!("{hidden}.{EXTENSION}")
    } else {
        format!("{base}.{EXTENSION}")
    };
    if name.len() > kluis_core::Metadata::MAX_NAME_LEN {
        return Err(Error::NameNotPortable {
            path: path.clone(),
            problem: crate::NameProblem::TooLong,
        });
    }
    Ok(Job {
        input: path.clone(),
        output: root.join(&rel_parent).join(file),
        root,
        rel_parent,
        name,
        report,
        folder: false,
    })
}

/// Seal one file to a temporary file beside its output, then link it into place. Returns the
/// size sealed and, with `verify`, what verifying the copy needs.
fn seal_one(
    job: &Job,
    slots: &[Slot],
    pad: bool,
    verify: bool,
    shared: Shared<'_>,
) -> Result<(u64, Option<Sealed>)> {
    shared.emit(Event::Started { input: &job.input });
    if job.folder {
        return seal_folder(job, slots, pad, shared).map(|()| (0, None));
    }
    let (mut input, meta) = open_checked(&job.input, None)?;
    // Renamed or not, a sealed document is not sealed a second time.
    if starts_sealed(&mut input).map_err(|e| Error::io(&job.input, "read", e))? {
        return Err(Error::AlreadySealed {
            path: job.input.clone(),
        });
    }
    let tmp = start_output(
        &job.root,
        &job.rel_parent,
        &job.output,
        shared.force,
        false,
        None,
    )?;
    let len = meta.len();
    let metadata = document_metadata(job, len, meta.modified().ok(), pad)?;

    // The plaintext is read straight into the output's blocks and sealed there.
    let out = Output::new(tmp.file(), len).map_err(|e| Error::io(&job.output, "write", e))?;
    let mut writer =
        BlockWriter::new(out, slots, &metadata).map_err(|e| Error::format(&job.input, e))?;
    let header = verify.then(|| writer.header().clone());
    let write_error = |e: io::Error| match kluis_core::Error::from_io(e) {
        kluis_core::Error::SizeMismatch { .. } => Error::Changed {
            path: job.input.clone(),
        },
        kluis_core::Error::Io(e) => Error::io(&job.output, "write", e),
        other => Error::format(&job.input, other),
    };
    loop {
        // Read straight into the output block: no copy of the plaintext. Empty once the
        // promised size is in: a file that grew is caught by the stamp check below.
        let space = writer.spare().map_err(write_error)?;
        if space.is_empty() {
            break;
        }
        let n = match input.read(space) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(&job.input, "read", e)),
        };
        writer.advance(n).map_err(write_error)?;
        shared.emit(Event::Read {
            input: &job.input,
            bytes: n as u64,
        });
    }
    let out = writer.finish().map_err(|e| write_error(e.into()))?;
    out.finish().map_err(write_error)?;
    // Written meanwhile (same size, new time) or replaced: the copy may be inconsistent.
    let after = input
        .metadata()
        .map_err(|e| Error::io(&job.input, "read", e))?;
    if Stamp::of(&after) != Stamp::of(&meta) {
        return Err(Error::Changed {
            path: job.input.clone(),
        });
    }
    tmp.commit(&job.output, shared.force)?;
    let stamp = Stamp::of(&meta);
    Ok((len, header.map(|header| Sealed { header, stamp })))
}

/// The sealed metadata of `job`'s document: its stored name, `len`, the time it was modified
/// (left out when it cannot be stored, outside 1601..9999, rather than fail), padded with
/// `pad`.
fn document_metadata(
    job: &Job,
    len: u64,
    modified: Option<std::time::SystemTime>,
    pad: bool,
) -> Result<Metadata> {
    let mut metadata = Metadata::with_size(len).name(job.name.clone());
    metadata.modified = modified;
    if metadata.modified.is_some() && metadata.encode().is_err() {
        metadata.modified = None;
    }
    if pad {
        metadata = metadata
            .padded()
            .map_err(|e| Error::format(&job.input, e))?;
    }
    Ok(metadata)
}

/// Seal the empty folder of `job` as an empty document whose stored name ends in `/`. It is
/// not verified, and with `remove_original` the folder stays.
fn seal_folder(job: &Job, slots: &[Slot], pad: bool, shared: Shared<'_>) -> Result<()> {
    let tmp = start_output(
        &job.root,
        &job.rel_parent,
        &job.output,
        shared.force,
        false,
        None,
    )?;
    // Its time ranks it against a file document for the same path (the newer is opened).
    let modified = fs::metadata(&job.input).and_then(|m| m.modified()).ok();
    let metadata = document_metadata(job, 0, modified, pad)?;
    let out = Output::new(tmp.file(), 0).map_err(|e| Error::io(&job.output, "write", e))?;
    let writer =
        BlockWriter::new(out, slots, &metadata).map_err(|e| Error::format(&job.input, e))?;
    let out = writer.finish().map_err(|e| match e {
        kluis_core::Error::Io(e) => Error::io(&job.output, "write", e),
        other => Error::format(&job.input, other),
    })?;
    out.finish()
        .map_err(|e| Error::io(&job.output, "write", e))?;
    tmp.commit(&job.output, shared.force)
}

/// Open each fresh sealed copy back with the verification keys (one `unlock_all` for the
/// batch), compare it with its original byte for byte, and only then remove the original.
fn verify_and_remove(
    batch: &[(&Job, Sealed)],
    options: &SealOptions<'_>,
    shared: Shared<'_>,
    threads: usize,
    reports: &mut [Report],
) {
    let kept = |path: &Path, reason: Error| {
        Outcome::OriginalKept(Error::NotVerified {
            path: path.into(),
            reason: Box::new(reason),
        })
    };
    if options.verify_with.is_empty() {
        for (job, _) in batch {
            reports[job.report].outcome = Outcome::OriginalKept(Error::NoVerifyKeys {
                path: job.input.clone(),
            });
        }
        return;
    }
    shared.emit(Event::Unlocking {
        documents: batch.len(),
    });
    // The headers as written: `compare` checks that the copy on disk still starts with them.
    let headers: Vec<&Header> = batch.iter().map(|(_, s)| &s.header).collect();
    let keys = unlock_all(&headers, options.verify_with);
    let mut work = Vec::new();
    for ((job, sealed), key) in batch.iter().zip(keys) {
        match key {
            Ok(key) => work.push((*job, sealed, key)),
            Err(e) => reports[job.report].outcome = kept(&job.input, Error::format(&job.output, e)),
        }
    }
    let results = pool::map(&work, threads, |(job, sealed, key)| {
        if let Err(e) = compare(job, sealed, key) {
            return kept(&job.input, e);
        }
        match fs::remove_file(&job.input) {
            Ok(()) => Outcome::OriginalRemoved,
            Err(e) => Outcome::OriginalKept(Error::io(&job.input, "remove the original", e)),
        }
    });
    let mut removed_from = BTreeSet::new();
    for ((job, ..), outcome) in work.iter().zip(results) {
        if matches!(outcome, Outcome::OriginalRemoved) {
            removed_from.insert(parent_of(&job.input));
        }
        reports[job.report].outcome = outcome;
    }
    for dir in removed_from {
        // The sealed copies are durable already; this only makes the removals durable.
        let _ = sync_dir(&dir);
    }
}

/// Decrypt the sealed copy (every chunk authenticated) and compare it with the original,
/// which must still be the file that was sealed.
fn compare(job: &Job, written: &Sealed, key: &FileKey) -> Result<()> {
    let (header, stamp) = (&written.header, written.stamp);
    let file = reopen_sealed(&job.output, header)?;
    let mut sealed =
        StreamReader::new(header, key, file).map_err(|e| Error::format(&job.output, e))?;
    let (mut original, _) = open_checked(&job.input, Some(stamp))?;
    let cap = buf_len(stamp.len());
    let mut a = Zeroizing::new(vec![0u8; cap]);
    let mut b = Zeroizing::new(vec![0u8; cap]);
    let changed = || Error::Changed {
        path: job.input.clone(),
    };
    loop {
        let n = read_full(&mut sealed, &mut a).map_err(|e| payload_error(&job.output, e))?;
        let m = read_full(&mut original, &mut b[..n.max(1).min(cap)])
            .map_err(|e| Error::io(&job.input, "read", e))?;
        if n == 0 {
            return if m == 0 { Ok(()) } else { Err(changed()) };
        }
        if m != n || a[..n] != b[..n] {
            return Err(changed());
        }
    }
}
