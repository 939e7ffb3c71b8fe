//! One file of a bulk download: where it comes from, where it goes, what a
//! listing said about it.

use std::path::{Path, PathBuf};

use crate::client::Client;
use crate::client::bulk::confine::prepare_parent;
use crate::client::download::{self, DownloadOptions, Known, Report};
use crate::error::Result;

/// One file to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    /// The path on the server.
    pub remote: String,
    /// Where it goes.
    pub dest: PathBuf,
    /// Size (and digest) from a listing, when there was one.
    pub known: Option<Known>,
}

impl Item {
    /// Fetches the item through the single-file path, its folders below
    /// `out` made first.
    pub(crate) async fn fetch(
        &self,
        client: &Client,
        out: &Path,
        options: &DownloadOptions,
    ) -> Result<Report> {
        prepare_parent(out, &self.dest)?;
        download::download_file(client, &self.remote, &self.dest, self.known, options).await
    }
}
