//! Plain domain types of a read stream, shared by the server and the client:
//! its header, its data and its end.

use bytes::Bytes;

use crate::checksum::Digest;
use crate::entry::{EntryInfo, FileVersion};

/// What a `Read` stream is about to send.
#[derive(Clone, Debug)]
pub struct ReadStart {
    /// The file as `Stat` describes it.
    pub entry: EntryInfo,
    /// The version being read.
    pub version: FileVersion,
    /// First byte sent.
    pub offset: u64,
    /// Bytes that follow.
    pub length: u64,
    /// sha256 of the bytes before `offset`, when `offset > 0`.
    pub prefix_sha256: Option<Digest>,
}

/// One item of a read stream, in order: `Start`, `Data`..., `End`.
#[derive(Clone, Debug)]
pub enum ReadEvent {
    /// The header.
    Start(ReadStart),
    /// The next bytes.
    Data(Bytes),
    /// The sha256 of the whole file.
    End(Digest),
}
