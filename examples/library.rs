//! kluis-core as a library, without a key server: seal a document on disk, inspect it without
//! a key, open it, show that a double-key document needs both keys, and use the performance
//! entry points of `kluis_core::fast`. The label key lives in this process here; in real use
//! it lives on kluis-server (see `quickstart.sh`).
//!
//! Run: `cargo run --release --example library`.

use std::error::Error;
use std::fs;
use std::io::{BufReader, BufWriter};

use kluis_core::fast::{self, FastOptions};
use kluis_core::{
    Header, Identity, LabelKey, Metadata, Recipient, Slot, StreamReader, StreamWriter, open, seal,
};

fn main() -> Result<(), Box<dyn Error>> {
    let dir = tempfile::tempdir()?;
    println!(
        "kluis-core as a library (working in {})\n",
        dir.path().display()
    );

    // 1. Keys. The organisation's label key would live on kluis-server; the holder's key
    //    lives in a passphrase-protected identity file on the holder's device.
    let hr = LabelKey::generate("hr", 1)?;
    let holder = Identity::generate()?;
    let id_path = dir.path().join("holder.kluis-identity");
    kluis_file::write_identity_file(&holder, &id_path, b"a long passphrase")?;
    println!("label `hr` v1 public key: {}", hr.public_key().key());
    println!("holder identity written:   {}", id_path.display());
    println!("holder public key:         {}\n", holder.public_key());

    // 2. Seal a file to the `hr` label, streaming from disk to disk.
    let original = dir.path().join("salary-review.txt");
    fs::write(
        &original,
        "Salary review 2026: confidential personal data.\n".repeat(2000),
    )?;
    let sealed_path = dir.path().join("3f9a.kluis");
    let size = fs::metadata(&original)?.len();
    let meta = Metadata::with_size(size)
        .name("salary-review.txt")
        .padded()?;
    let mut w = StreamWriter::new(
        BufWriter::new(fs::File::create(&sealed_path)?),
        &[Slot::single(Recipient::Label(hr.public_key().clone()))],
        &meta,
    )?;
    std::io::copy(&mut fs::File::open(&original)?, &mut w)?;
    w.finish()?; // MUST be called: it writes the last chunk.
    println!("sealed {size} bytes -> {}", sealed_path.display());

    // 3. Inspect: no key needed, and nothing personal is visible.
    let total = fs::metadata(&sealed_path)?.len();
    let mut input = BufReader::new(fs::File::open(&sealed_path)?);
    let header = Header::read(&mut input)?;
    let info = header.payload_info(total)?;
    println!(
        "inspect: doc_id {}, {} slot(s), header {} bytes, {} chunk(s), padded size {} bytes",
        header.doc_id(),
        header.slots().len(),
        header.len(),
        info.chunks,
        info.padded_len
    );

    // 4. Open: the label key unwraps the file key; the header MAC is checked first.
    let key = header.unlock(&[&hr])?;
    let mut reader = StreamReader::new(&header, &key, input)?;
    let mut restored = Vec::new();
    std::io::copy(&mut reader, &mut restored)?;
    assert_eq!(restored, fs::read(&original)?);
    println!(
        "opened: {} ({} bytes), identical to the original\n",
        reader.metadata().name,
        restored.len()
    );

    // 5. Double key: the label key and the holder's key are both needed.
    let holder = kluis_file::read_identity_file(&id_path, b"a long passphrase")?;
    let slot = Slot::double(
        Recipient::Label(hr.public_key().clone()),
        Recipient::Key(holder.public_key()),
    )?;
    let sealed = seal(
        &[slot],
        &Metadata::default().name("diagnosis.pdf"),
        b"medical",
    )?;
    match open(&sealed, &[&hr]) {
        Err(e) => println!("double key, label key alone:  refused ({e})"),
        Ok(_) => return Err("a double-key document opened with one key".into()),
    }
    let (plain, m) = open(&sealed, &[&hr, &holder])?;
    println!(
        "double key, both keys:        opened {} ({} bytes)\n",
        m.name,
        plain.len()
    );

    // 6. The performance entry points (`kluis_core::fast`): the same documents, with the
    //    threads and the AEAD backend as options, sealed into and opened in a reused buffer.
    let options = FastOptions::default().threads(2);
    let mut buf = Vec::new();
    let one_slot = [Slot::single(Recipient::Label(hr.public_key().clone()))];
    fast::seal_into(
        &one_slot,
        &Metadata::default(),
        &restored,
        &mut buf,
        &options,
    )?;
    let m = fast::open_in_place(&mut buf, &[&hr], &options)?;
    assert_eq!(buf, restored);
    println!(
        "fast: sealed and opened {} bytes in place over {} threads\n",
        m.size.unwrap_or(0),
        options.threads
    );

    println!("no audit trail here: with kluis-server every opening is audited (quickstart.sh).");
    Ok(())
}
