//! `fetchd get`: download a file, verified, to a local file or stdout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cli::{ClientArgs, EXIT_FAILURE, EXIT_OK, Output, report, stderr_is_terminal};
use crate::client::download::{self, DownloadOptions, Outcome, Report};
use crate::error::{Error, Result};
use crate::sandbox::RequestPath;

/// Arguments of `fetchd get`.
#[derive(Debug, Args)]
#[command(after_help = "\
DEST rules: no -o writes ./BASENAME; -o FILE writes FILE; -o DIR/ or an existing
directory writes DIR/BASENAME; -o - writes to stdout. Data goes to DEST.part first
and is renamed onto DEST only when its sha256 matches the server's. A leftover
DEST.part is resumed; a DEST that already matches is skipped (unless --force).")]
pub struct GetArgs {
    /// Path of the file on the server (relative to its root).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,

    /// Where to write: a file, a directory (DIR/ or existing), or - for stdout.
    #[arg(short = 'o', long = "output", value_name = "DEST")]
    pub output: Option<String>,

    /// Download even if DEST already has the server's size and sha256.
    #[arg(long)]
    pub force: bool,

    /// No progress display and no notices.
    #[arg(short, long)]
    pub quiet: bool,

    /// One JSON object per file on stdout, when that file is done.
    #[arg(long)]
    pub json: bool,

    /// Receive at most RATE bytes per second (suffixes K, M, G: powers of 1024).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub limit_rate: Option<u64>,
}

/// Where one downloaded file goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Standard output (`-o -`).
    Stdout,
    /// A local file; `create_parent` when `-o DIR/` named a folder that may
    /// not exist yet.
    File {
        /// The file to write.
        path: PathBuf,
        /// Create the folder holding it first.
        create_parent: bool,
    },
}

/// Applies the contract's rules for one PATH and an optional `-o`.
pub fn destination(remote: &str, output: Option<&str>) -> Result<Destination> {
    let basename = || -> Result<String> {
        let parsed = RequestPath::parse(remote)?;
        match parsed.display().rsplit('/').next() {
            Some(name) if !name.is_empty() && name != ".." => Ok(name.to_string()),
            _ => Err(Error::Usage(format!(
                "{remote}: names no file; give a file path (or -r for a tree)"
            ))),
        }
    };
    Ok(match output {
        Some("-") => Destination::Stdout,
        None => Destination::File {
            path: PathBuf::from(basename()?),
            create_parent: false,
        },
        Some(out) if out.ends_with('/') => Destination::File {
            path: Path::new(out).join(basename()?),
            create_parent: true,
        },
        Some(out) if Path::new(out).is_dir() => Destination::File {
            path: Path::new(out).join(basename()?),
            create_parent: false,
        },
        Some(out) => Destination::File {
            path: PathBuf::from(out),
            create_parent: false,
        },
    })
}

/// Parses `10M`, `512K`, `1G` or a plain number of bytes per second.
fn parse_rate(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let (digits, scale) = match text.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&text[..text.len() - 1], 1024),
        Some('M') => (&text[..text.len() - 1], 1024 * 1024),
        Some('G') => (&text[..text.len() - 1], 1024 * 1024 * 1024),
        _ => (text, 1),
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => n
            .checked_mul(scale)
            .ok_or_else(|| "rate too large".to_string()),
        _ => Err(format!("{text:?} is not a rate such as 500K or 10M")),
    }
}

/// Runs `fetchd get`.
pub async fn run(args: GetArgs, client_args: ClientArgs) -> Result<u8> {
    if args.paths.len() > 1 {
        return Err(Error::Usage(
            "several PATHs are not supported by this build yet; run fetchd get once per file"
                .into(),
        ));
    }
    let remote = &args.paths[0];
    let dest = destination(remote, args.output.as_deref())?;
    let client = client_args.connect().await?;

    let show_progress = !args.quiet && !args.json && stderr_is_terminal();
    let progress = if show_progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_message(remote.clone());
        bar
    } else {
        ProgressBar::hidden()
    };
    let quiet = args.quiet || args.json;
    let notify_bar = progress.clone();
    let options = DownloadOptions {
        force: args.force,
        progress,
        limit_rate: args.limit_rate,
        notify: Arc::new(move |line: &str| {
            if !quiet {
                notify_bar.suspend(|| eprintln!("fetchd: {line}"));
            }
        }),
    };

    let (result, dest_shown) = match &dest {
        Destination::Stdout => (
            download::download_to_stdout(&client, remote, &options).await,
            "-".to_string(),
        ),
        Destination::File {
            path,
            create_parent,
        } => {
            if *create_parent && let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|err| Error::io(parent, err))?;
            }
            (
                download::download_file(&client, remote, path, &options).await,
                path.display().to_string(),
            )
        }
    };

    if args.json {
        let mut out = Output::default();
        out.line(&json_line(remote, &dest_shown, &result).to_string())?;
        out.flush()?;
    }
    match result {
        Ok(_) => Ok(EXIT_OK),
        Err(err) if matches!(err, Error::Usage(_)) => Err(err),
        Err(err) => {
            report(&err);
            Ok(EXIT_FAILURE)
        }
    }
}

/// The `--json` object for one file.
pub fn json_line(remote: &str, dest: &str, result: &Result<Report>) -> serde_json::Value {
    let path = remote.trim_start_matches('/');
    match result {
        Ok(report) => json!({
            "path": path,
            "dest": dest,
            "bytes": report.bytes,
            "sha256": report.sha256.to_hex(),
            "status": match report.outcome {
                Outcome::Downloaded => "ok",
                Outcome::Skipped => "skipped",
            },
        }),
        Err(err) => {
            let message = err.to_string();
            let reason = message
                .strip_prefix(&format!("{path}: "))
                .unwrap_or(&message)
                .to_string();
            json!({
                "path": path,
                "dest": dest,
                "bytes": null,
                "sha256": null,
                "status": "error",
                "error": reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No -o: ./BASENAME; -o FILE; -o DIR/; -o -.
    #[test]
    fn destinations_follow_the_contract() {
        let file = |path: &str, create_parent| Destination::File {
            path: PathBuf::from(path),
            create_parent,
        };
        assert_eq!(
            destination("logs/app.log", None).expect("ok"),
            file("app.log", false)
        );
        assert_eq!(
            destination("/a/b.bin", Some("x.bin")).expect("ok"),
            file("x.bin", false)
        );
        assert_eq!(
            destination("a/b.bin", Some("out/")).expect("ok"),
            file("out/b.bin", true)
        );
        assert_eq!(
            destination("a/b.bin", Some("-")).expect("ok"),
            Destination::Stdout
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let dir_str = dir.path().to_str().expect("utf-8");
        assert_eq!(
            destination("a/b.bin", Some(dir_str)).expect("ok"),
            Destination::File {
                path: dir.path().join("b.bin"),
                create_parent: false
            }
        );
    }

    /// Paths without a file name need -o or -r.
    #[test]
    fn root_has_no_basename() {
        for remote in ["/", "a/..", ".."] {
            assert!(destination(remote, None).is_err(), "{remote}");
        }
    }

    /// Rates take K, M and G suffixes.
    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("100"), Ok(100));
        assert_eq!(parse_rate("2K"), Ok(2048));
        assert_eq!(parse_rate("1m"), Ok(1024 * 1024));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
    }
}
