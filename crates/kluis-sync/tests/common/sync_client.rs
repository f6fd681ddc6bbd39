//! A stand-in for the sync client (OneDrive, Dropbox) between two sealed folders; shared by
//! kluis-sync's property test and kluis-cli's two-process test.
#![allow(dead_code)]

use std::path::Path;

/// Every file below `dir` with its content, sorted.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else if let Ok(data) = std::fs::read(&p) {
                out.push((
                    p.strip_prefix(base).unwrap().to_string_lossy().into_owned(),
                    data,
                ));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A stand-in for the sync client between two sealed folders: a three-way merge against what
/// it last saw on both, copying through its own temporary names in two pieces. Both changed:
/// the first folder's version keeps the name, the second's is kept as `NAME-DEVICE2.EXT`.
#[derive(Default)]
pub struct SyncClient {
    base: std::collections::BTreeMap<String, Vec<u8>>,
    n: u64,
    /// Wait this long between the two pieces of every copy (0: none).
    pub delay: std::time::Duration,
}

impl SyncClient {
    fn pause(&self) {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
    }

    fn put(&mut self, dir: &Path, name: &str, data: &[u8]) {
        self.n += 1;
        self.pause();
        let tmp = dir.join(format!(".~sync-{}.tmp", self.n));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).unwrap();
            let half = data.len() / 2;
            f.write_all(&data[..half]).unwrap();
            f.flush().unwrap();
            self.pause();
            f.write_all(&data[half..]).unwrap();
        }
        let target = dir.join(name);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::rename(tmp, target).unwrap();
    }

    /// Bring `x` and `y` together.
    /// Returns whether it changed anything.
    pub fn sync(&mut self, x: &Path, y: &Path) -> bool {
        let mut changed = false;
        let fx: std::collections::BTreeMap<_, _> = files(x).into_iter().collect();
        let fy: std::collections::BTreeMap<_, _> = files(y).into_iter().collect();
        let mut names: Vec<String> = fx.keys().chain(fy.keys()).cloned().collect();
        names.extend(self.base.keys().cloned());
        names.sort();
        names.dedup();
        for name in names {
            if name.starts_with(".~sync-") {
                continue;
            }
            let (a, b, base) = (fx.get(&name), fy.get(&name), self.base.get(&name));
            if a == b {
                match a {
                    Some(v) => self.base.insert(name, v.clone()),
                    None => self.base.remove(&name),
                };
                continue;
            }
            changed = true;
            if b == base {
                match a {
                    Some(v) => self.put(y, &name, v),
                    None => {
                        let _ = std::fs::remove_file(y.join(&name));
                    }
                }
                match a {
                    Some(v) => self.base.insert(name, v.clone()),
                    None => self.base.remove(&name),
                };
            } else if a == base {
                match b {
                    Some(v) => self.put(x, &name, v),
                    None => {
                        let _ = std::fs::remove_file(x.join(&name));
                    }
                }
                match b {
                    Some(v) => self.base.insert(name, v.clone()),
                    None => self.base.remove(&name),
                };
            } else {
                // Both changed. A deletion loses against a change.
                match (a, b) {
                    (Some(va), Some(vb)) => {
                        let other = match name.rfind('.') {
                            Some(i) if i > 0 => format!("{}-DEVICE2{}", &name[..i], &name[i..]),
                            _ => format!("{name}-DEVICE2"),
                        };
                        let (va, vb) = (va.clone(), vb.clone());
                        self.put(y, &name, &va);
                        self.put(x, &other, &vb);
                        self.put(y, &other, &vb);
                        self.base.insert(name, va);
                        self.base.insert(other, vb);
                    }
                    (Some(v), None) => {
                        let v = v.clone();
                        self.put(y, &name, &v);
                        self.base.insert(name, v);
                    }
                    (None, Some(v)) => {
                        let v = v.clone();
                        self.put(x, &name, &v);
                        self.base.insert(name, v);
                    }
                    (None, None) => unreachable!(),
                }
            }
        }
        changed
    }
}
