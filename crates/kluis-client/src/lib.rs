//! kluis-client: talks to kluis-server (work in progress).
