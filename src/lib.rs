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
//! - [`delta`]: files as content-defined chunks (FastCDC, BLAKE3), shared
//!   by both ends of a delta transfer: cutting, checking a manifest, and
//!   the plan that rebuilds a file from a local copy and fetched ranges.
//! - [`partfile`]: `DEST.part` files that become `DEST` only when verified.
//! - [`tls`]: certificate and key files, and what a failed TLS handshake
//!   means (both sides).
//! - [`error`]: the one error type and its mapping to gRPC status codes.
//! - [`entry`], [`read_stream`], [`tail_stream`]: plain domain types shared
//!   by server and client (entries and file versions; what a read stream
//!   says; what a tail stream says).

mod checksum;
mod cli;
mod client;
mod delta;
mod entry;
mod error;
mod partfile;
pub mod proto;
mod read_stream;
mod server;
mod store;
mod tail_stream;
mod tls;
mod wire;

// The public surface: the command line (for the binary), the Rust client,
// the server, and the plain types they exchange. Everything else is the
// crate's own.
pub use checksum::{Digest, Hasher};
pub use cli::{Cli, init_logging, run as run_cli};
pub use client::channel::{NEAR_RTT, Windows};
pub use client::follow::TailStream;
pub use client::options::{Compression, ConnectOptions};
pub use client::retry::RetryPolicy;
pub use client::target::Target;
pub use client::upload::UPLOAD_CHUNK_BYTES;
pub use client::{Client, ManyResult, ReadStream, RemoteStat};
pub use entry::{EntryInfo, EntryKind, FileVersion};
pub use error::{Error, Result};
pub use read_stream::{ReadEvent, ReadStart};
pub use server::auth::Tokens;
pub use server::config::{DEFAULT_MAX_REQUEST_BYTES, ServerConfig};
pub use server::read::CHUNK_BYTES;
pub use server::run as run_server;
pub use store::local::staging::is_temp_name;
pub use tail_stream::{FileId, TailCursor, TailEvent, TailNotice, TailStart};
pub use tls::ServerTls;
