//! kluis-file: seal and open files and folders (work in progress).
