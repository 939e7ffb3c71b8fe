//! Streaming sha256: hash bytes as they pass, compare whole-file digests.

use std::fmt;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

/// Bytes read per call when hashing a local file.
pub(crate) const HASH_BUFFER_BYTES: usize = 256 * 1024;

/// A sha256 digest of a whole file.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest([u8; 32]);

impl Digest {
    /// The digest from its 32 raw bytes; `None` for any other length.
    pub fn from_slice(bytes: &[u8]) -> Option<Digest> {
        bytes.try_into().ok().map(Digest)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as `sha256sum` prints it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// An incremental sha256 over bytes fed in order.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    bytes: u64,
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hasher")
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Hasher {
    /// A hasher that has seen nothing.
    pub fn new() -> Hasher {
        Hasher::default()
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.bytes += data.len() as u64;
    }

    /// How many bytes were fed so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The digest of everything fed so far, leaving the hasher usable.
    pub fn snapshot(&self) -> Digest {
        Digest(self.inner.clone().finalize().into())
    }

    /// The digest of everything fed.
    pub fn finalize(self) -> Digest {
        Digest(self.inner.finalize().into())
    }
}

/// Hashes up to `limit` bytes of `reader` (all of it when `None`) into a
/// new hasher, which the caller can keep feeding.
pub(crate) fn hash_prefix(reader: impl Read, limit: Option<u64>) -> io::Result<Hasher> {
    let mut hasher = Hasher::new();
    feed(reader, &mut hasher, limit)?;
    Ok(hasher)
}

/// Feeds `reader` into `hasher` until the hasher has seen `until` bytes in
/// all (or the reader ends, when `None` or when it is shorter).
pub(crate) fn feed(
    mut reader: impl Read,
    hasher: &mut Hasher,
    until: Option<u64>,
) -> io::Result<()> {
    // No bigger buffer than the bytes wanted: a server checking that a small
    // file did not grow reads one byte, and must not zero 256 KiB for it.
    let wanted = until.map_or(u64::MAX, |until| until.saturating_sub(hasher.bytes()));
    if wanted == 0 {
        return Ok(());
    }
    let mut buf = vec![
        0u8;
        usize::try_from(wanted)
            .map_or(HASH_BUFFER_BYTES, |wanted| wanted.min(HASH_BUFFER_BYTES))
    ];
    loop {
        let want = match until {
            Some(until) => {
                let left = until.saturating_sub(hasher.bytes());
                if left == 0 {
                    return Ok(());
                }
                buf.len().min(usize::try_from(left).unwrap_or(usize::MAX))
            }
            None => buf.len(),
        };
        match reader.read(&mut buf[..want]) {
            Ok(0) => return Ok(()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The empty input hashes to the well-known sha256 of nothing.
    #[test]
    fn empty_digest_is_the_known_constant() {
        assert_eq!(
            Hasher::new().finalize().to_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// Hashing in pieces equals hashing at once, and a limit stops early.
    #[test]
    fn pieces_and_limits_agree() {
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut whole = Hasher::new();
        whole.update(&data);
        let streamed = hash_prefix(&data[..], None).expect("hash");
        assert_eq!(streamed.bytes(), data.len() as u64);
        assert_eq!(streamed.finalize(), whole.finalize());

        let prefix = hash_prefix(&data[..], Some(1000)).expect("hash");
        let mut expected = Hasher::new();
        expected.update(&data[..1000]);
        assert_eq!(prefix.finalize(), expected.finalize());
    }

    /// Digests round-trip through their raw bytes; other lengths are refused.
    #[test]
    fn digest_from_slice() {
        let digest = Hasher::new().finalize();
        assert_eq!(Digest::from_slice(digest.as_bytes()), Some(digest));
        assert_eq!(Digest::from_slice(&[0u8; 31]), None);
    }
}
