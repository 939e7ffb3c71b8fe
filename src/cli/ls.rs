//! `fetchd ls`: list a directory on the server.

use clap::Args;
use serde_json::json;

use crate::cli::args::ClientArgs;
use crate::cli::output::{EXIT_OK, Output};
use crate::entry::EntryInfo;
use crate::error::Result;

/// Arguments of `fetchd ls`.
#[derive(Debug, Args)]
#[command(after_help = "\
Each line: TYPE SIZE MTIME PATH, where TYPE is d (folder), f (file) or l (symlink),
SIZE is in bytes, MTIME is RFC 3339 UTC and PATH is below the server's root, e.g.
  f 4096 2026-11-24T01:02:03Z logs/app.log")]
pub struct LsArgs {
    /// Directory (or file) on the server; the root when left out.
    #[arg(value_name = "DIR", default_value = "/")]
    pub dir: String,

    /// Recurse into subdirectories (symlinked ones are listed, not entered).
    #[arg(short, long)]
    pub recursive: bool,

    /// One JSON object a line: {"path","type","size","mtime"}.
    #[arg(long)]
    pub json: bool,

    /// Options of the client verbs (also accepted before the verb).
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Runs `fetchd ls`.
pub(crate) async fn run(args: LsArgs, client_args: ClientArgs) -> Result<u8> {
    let client = client_args.connect_first().await?;
    let notify = |line: &str| eprintln!("fetchd: {line}");
    let subject = crate::client::download::shown(&args.dir);
    let mut streak = client.retry_policy().streak();
    let mut out = Output::default();
    // Entries printed so far: a listing broken off by a lost or restarting
    // server is asked for again and continues after them (the server lists
    // in a fixed order).
    let mut printed: u64 = 0;
    loop {
        let mut seen: u64 = 0;
        let listed = async {
            let mut entries = client.list(&args.dir, args.recursive).await?;
            while let Some(entry) = entries.next().await? {
                seen += 1;
                if seen <= printed {
                    continue;
                }
                let line = if args.json {
                    json_line(&entry).to_string()
                } else {
                    text_line(&entry)
                };
                if !out.line(&line)? {
                    return Ok(false);
                }
                printed += 1;
                streak.progressed();
            }
            Ok(true)
        }
        .await;
        match listed {
            Ok(true) => break,
            Ok(false) => return Ok(EXIT_OK),
            Err(err) => {
                out.flush()?;
                if !streak.wait(&subject, &err, &notify).await {
                    return Err(err);
                }
            }
        }
    }
    out.flush()?;
    Ok(EXIT_OK)
}

/// `f 4096 2026-11-24T01:02:03Z logs/app.log`
pub(crate) fn text_line(entry: &EntryInfo) -> String {
    format!(
        "{} {} {} {}",
        entry.kind.letter(),
        entry.size,
        format_mtime(entry.mtime_ns),
        entry.path
    )
}

/// `{"path":"logs/app.log","type":"file","size":4096,"mtime":"2026-11-24T01:02:03Z"}`
pub(crate) fn json_line(entry: &EntryInfo) -> serde_json::Value {
    json!({
        "path": entry.path,
        "type": entry.kind.word(),
        "size": entry.size,
        "mtime": format_mtime(entry.mtime_ns),
    })
}

/// Formats a nanosecond timestamp as RFC 3339 in UTC, to the second
/// (`2026-11-24T01:02:03Z`).
pub(crate) fn format_mtime(mtime_ns: i64) -> String {
    let secs = mtime_ns.div_euclid(1_000_000_000);
    let time = u64::try_from(secs)
        .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
        .unwrap_or(std::time::UNIX_EPOCH);
    humantime::format_rfc3339_seconds(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::EntryKind;

    /// Timestamps print as RFC 3339 UTC seconds, as `fetchd ls` promises.
    #[test]
    fn mtime_formats_as_rfc3339_seconds() {
        assert_eq!(format_mtime(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_mtime(1_795_482_123_999_999_999),
            "2026-11-24T01:02:03Z"
        );
    }

    /// Lines look exactly like the contract's example.
    #[test]
    fn lines_match_the_contract() {
        let entry = EntryInfo {
            path: "logs/app.log".into(),
            kind: EntryKind::File,
            size: 4096,
            mtime_ns: 1_795_482_123_000_000_000,
            mode: 0o644,
            sha256: None,
        };
        assert_eq!(
            text_line(&entry),
            "f 4096 2026-11-24T01:02:03Z logs/app.log"
        );
        assert_eq!(
            json_line(&entry).to_string(),
            r#"{"mtime":"2026-11-24T01:02:03Z","path":"logs/app.log","size":4096,"type":"file"}"#
        );
    }
}
