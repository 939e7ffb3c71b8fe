//! The quick start works: serve a tree, fetch a file, the bytes match.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// `fetchd get` of one file writes ./BASENAME with the server's bytes.
#[test]
fn get_one_file_into_cwd() {
    let root = tempfile::tempdir().unwrap();
    let data = random_bytes(100_000, 1);
    std::fs::write(root.path().join("blob.bin"), &data).unwrap();
    let server = ServerProcess::start(root.path(), &[]);
    let cwd = tempfile::tempdir().unwrap();
    client(&server.url, cwd.path(), &["get", "blob.bin"]).expect_code(0);
    assert_eq!(std::fs::read(cwd.path().join("blob.bin")).unwrap(), data);
}
