//! A connected server of a fleet, and what a fleet download reports.

use crate::client::Client;
use crate::client::download::Report;

/// One connected server of a fleet, and the label it is shown by.
#[derive(Clone, Debug)]
pub(crate) struct Replica {
    /// `LABEL` of `LABEL=URL`, else the URL's `host:port`.
    pub label: String,
    /// Its connection.
    pub client: Client,
}

/// A file a fleet download delivered, and the replicas it came from.
#[derive(Clone, Debug)]
pub(crate) struct Delivered {
    /// What the download reports.
    pub report: Report,
    /// Labels of the replicas that sent bytes of it (none when skipped).
    pub servers: Vec<String>,
}
