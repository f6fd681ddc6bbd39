//! The format's limits a user may need, as associated constants of the types they limit (the
//! format constants themselves are private, in `format`).

use crate::format;
use crate::header::Header;
use crate::identity_file;
use crate::keys::Identity;
use crate::metadata::{self, Metadata};
use crate::stanza::Stanza;

impl Header {
    /// The largest header a reader accepts, in bytes (FORMAT.md §4).
    pub const MAX_LEN: usize = format::MAX_HEADER_LEN;
    /// The most slots a header may carry.
    pub const MAX_SLOTS: usize = format::MAX_SLOTS;
}

impl Metadata {
    /// The longest file name the sealed metadata holds, in bytes.
    pub const MAX_NAME_LEN: usize = metadata::MAX_NAME_LEN;
}

impl Stanza {
    /// The largest stanza content a reader accepts, in bytes.
    pub const MAX_LEN: usize = format::MAX_STANZA_LEN;
    /// The longest label name, in bytes.
    pub const MAX_LABEL_LEN: usize = format::MAX_LABEL_LEN;
}

impl Identity {
    /// The largest identity file a reader should accept, in bytes: read at most this many
    /// (plus one, to tell a larger file) before [`Identity::from_file_string`].
    pub const MAX_FILE_LEN: usize = identity_file::MAX_IDENTITY_FILE_LEN;
}
