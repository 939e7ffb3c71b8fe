//! fetchd: verified file and log streaming over gRPC.
//!
//! A server exports one tree; clients download files from it as chunked
//! gRPC server streams and verify a sha256 over the whole file before a file
//! is put in place, follow a log as it grows (`tail`), or upload a file as a
//! client stream that the server verifies the same way before it puts it in
//! place (`put`). The modules, in the order a download flows through them:
//!
//! - [`cli`]: the `fetchd` command line, one module per verb.
//! - [`client`]: which server and how to connect; downloading one file
//!   (resume, skip, retry) and many; following a log across reconnects;
//!   uploading; the one retry policy.
//! - [`wire`]: the gRPC framing of `Read`, shared by the two paths that
//!   bypass tonic's codec.
//! - [`proto`]: the generated `fetchd.v1` messages and service stubs.
//! - [`server`]: the gRPC service over a store, the chunk reader, the
//!   digest cache, the upload writer, and the layers every call passes.
//! - [`store`]: the seam between the server and the tree it exports, and
//!   the local tree behind it (the sandbox, staging, tail followers).
//! - [`checksum`]: streaming sha256.
//! - [`partfile`]: `DEST.part` files that become `DEST` only when verified.
//! - [`tls`]: certificate and key files, and what a failed TLS handshake
//!   means (both sides).
//! - [`error`]: the one error type and its mapping to gRPC status codes.
//! - [`entry`], [`read_stream`], [`tail_stream`]: plain domain types shared
//!   by server and client (entries and file versions; what a read stream
//!   says; what a tail stream says).

pub mod checksum;
pub mod cli;
pub mod client;
pub mod entry;
pub mod error;
pub mod partfile;
pub mod proto;
pub mod read_stream;
pub mod server;
pub mod store;
pub mod tail_stream;
pub mod tls;
pub mod wire;

pub use error::{Error, Result};
