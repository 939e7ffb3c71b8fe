//! fetchd: verified file and log streaming over gRPC.
//!
//! A server exports one directory tree; clients download files from it as
//! chunked gRPC server streams and verify a sha256 over the whole file before
//! a file is put in place, follow a log as it grows (`tail`), or upload a
//! file as a client stream that the server verifies the same way before it
//! puts it in place (`put`). The modules, in the order a download flows
//! through them:
//!
//! - [`cli`]: the `fetchd` command line, one module per verb.
//! - [`client`]: connecting to a server, downloading one file (resume, skip,
//!   retry) and assembling its chunks; following a log with reconnects;
//!   reading and hashing a file to upload.
//! - [`proto`]: the generated `fetchd.v1` messages and service stubs.
//! - [`server`]: the gRPC service, the chunk reader, the listing walker,
//!   the tail streams with their shared folder watches, and the upload
//!   writer (temporary file, verify, atomic placement).
//! - [`sandbox`]: resolving request paths beneath the root, race-free.
//! - [`checksum`]: streaming sha256.
//! - [`partfile`]: `DEST.part` files that become `DEST` only when verified.
//! - [`tls`]: certificate and key files, and what a failed TLS handshake
//!   means (both sides).
//! - [`error`]: the one error type and its mapping to gRPC status codes.
//! - [`entry`]: plain domain types shared by server and client.
//! - [`tail`]: the domain types of a tail stream (cursor, file identity,
//!   events).

pub mod checksum;
pub mod cli;
pub mod client;
pub mod entry;
pub mod error;
pub mod partfile;
pub mod proto;
pub mod server;
pub mod store;
pub mod tail;
pub mod tls;
pub mod wire;

pub use error::{Error, Result};
