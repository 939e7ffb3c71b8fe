//! `fetchd stat`: what the server knows about one path.

use clap::Args;
use serde_json::json;

use crate::cli::args::ClientArgs;
use crate::cli::ls::format_mtime;
use crate::cli::output::{EXIT_OK, Output};
use crate::error::Result;

/// Arguments of `fetchd stat`.
#[derive(Debug, Args)]
pub struct StatArgs {
    /// Path on the server.
    #[arg(value_name = "PATH")]
    pub path: String,

    /// Also have the server compute the file's sha256.
    #[arg(long)]
    pub sha256: bool,

    /// One JSON object instead of `key: value` lines.
    #[arg(long)]
    pub json: bool,

    /// Options of the client verbs (also accepted before the verb).
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `fetchd stat`.
pub(crate) async fn run(args: StatArgs, client_args: ClientArgs) -> Result<u8> {
    let client = client_args.connect_first().await?;
    let notify = |line: &str| eprintln!("fetchd: {line}");
    let subject = crate::client::download::shown(&args.path);
    let stat = client
        .retrying(&subject, &notify, || client.stat(&args.path, args.sha256))
        .await?;
    let entry = &stat.entry;
    let sha256 = stat.sha256.map(|digest| digest.to_hex());
    let mut out = Output::default();
    if args.json {
        let value = json!({
            "path": entry.path,
            "type": entry.kind.word(),
            "size": entry.size,
            "mtime": format_mtime(entry.mtime_ns),
            "mode": format!("{:04o}", entry.mode),
            "sha256": sha256,
        });
        out.line(&value.to_string())?;
    } else {
        let shown = if entry.path.is_empty() {
            "/"
        } else {
            &entry.path
        };
        out.line(&format!("path: {shown}"))?;
        out.line(&format!("type: {}", entry.kind.word()))?;
        out.line(&format!("size: {}", entry.size))?;
        out.line(&format!("mtime: {}", format_mtime(entry.mtime_ns)))?;
        out.line(&format!("mode: {:04o}", entry.mode))?;
        if let Some(sha256) = sha256 {
            out.line(&format!("sha256: {sha256}"))?;
        }
    }
    out.flush()?;
    Ok(EXIT_OK)
}
