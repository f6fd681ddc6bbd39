//! Cloud sync folders: recognising a path inside one, so plaintext written there can be
//! warned about.

use std::path::{Component, Path};

/// Folder names (compared without case, as a prefix) that sync clients create, with the
/// service they belong to. `OneDrive - Organisation` and `Dropbox (Team)` match by prefix.
const KNOWN: &[(&str, &str)] = &[
    ("onedrive", "OneDrive"),
    ("sharepoint", "SharePoint"),
    ("dropbox", "Dropbox"),
    ("google drive", "Google Drive"),
    ("googledrive", "Google Drive"),
    ("my drive", "Google Drive"),
    ("icloud drive", "iCloud Drive"),
    ("iclouddrive", "iCloud Drive"),
    ("mobile documents", "iCloud Drive"),
    ("nextcloud", "Nextcloud"),
    ("owncloud", "ownCloud"),
    ("box sync", "Box"),
    ("pcloud", "pCloud"),
    ("seafile", "Seafile"),
    ("stack", "STACK"),
];

/// The cloud sync service whose folder `path` lies in, if it looks like one: a folder on the
/// way whose name starts like a known sync client's folder (`OneDrive`, `OneDrive - Org`,
/// `Dropbox`, `Google Drive`, `iCloud Drive`, `Nextcloud`, ...), or the folder named by the
/// `OneDrive`, `OneDriveCommercial` or `OneDriveConsumer` environment variables (set by
/// OneDrive on Windows). A heuristic: a sync folder with another name is not recognised, and
/// a folder that merely has such a name is taken for one.
///
/// ```
/// use std::path::Path;
/// assert_eq!(kluis_file::sync_folder(Path::new("/home/a/OneDrive - Gemeente/x.txt")), Some("OneDrive"));
/// assert_eq!(kluis_file::sync_folder(Path::new("/home/a/Documents/x.txt")), None);
/// ```
pub fn sync_folder(path: &Path) -> Option<&'static str> {
    let path = crate::file::absolute(path);
    for var in ["OneDrive", "OneDriveCommercial", "OneDriveConsumer"] {
        if let Some(root) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            let root = Path::new(&root);
            if root.is_absolute() && path.starts_with(root) {
                return Some("OneDrive");
            }
        }
    }
    path.components().find_map(|c| {
        let Component::Normal(name) = c else {
            return None;
        };
        let name = name.to_string_lossy().to_lowercase();
        KNOWN
            .iter()
            .find(|(prefix, _)| {
                name.starts_with(prefix)
                    // `stack` only as the whole name: `stackoverflow-notes` is no sync folder.
                    && (*prefix != "stack" || name == "stack")
            })
            .map(|(_, service)| *service)
    })
}
