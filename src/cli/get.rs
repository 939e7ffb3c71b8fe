//! `fetchd get`: download a file, verified, to a local file or stdout.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::cli::args::{ClientArgs, CompressArg};
use crate::cli::hint::Verb;
use crate::cli::output::{EXIT_FAILURE, EXIT_OK, Output, json_error, report, stderr_is_terminal};
use crate::client::bulk::{self, DEFAULT_JOBS, Item, LocalChecks};
use crate::client::download::{self, DownloadOptions, Known, Notify, Outcome, Report};
use crate::client::fleet::{self, Replica, agree, spread};
use crate::client::target::Target;
use crate::client::{Client, ListStream};
use crate::entry::EntryKind;
use crate::error::{Error, Result};
use crate::store::RequestPath;

/// Arguments of `fetchd get`.
#[derive(Debug, Args)]
#[command(after_help = "\
One PATH: no -o writes ./BASENAME; -o FILE writes FILE; -o DIR/ or an existing
directory writes DIR/BASENAME; -o - writes to stdout.
Several PATHs or --from-file: -o names a directory (default .) and each file lands
at OUT/PATH. -r DIR: the tree below DIR lands in OUT (default ./BASENAME-of-DIR).
Data goes to DEST.part first and is renamed onto DEST only when its sha256 matches
the server's. A leftover DEST.part is resumed; a DEST that already matches is
skipped (unless --force). A busy, restarting or dropped server is retried for
--retry-for seconds (default 30), continuing from the bytes DEST.part holds; a
server that refuses the first connection fails at once.
Several servers (--server repeated, --servers-file) are replicas: each file comes
only from those that agree on its size and sha256 (the others are left out with a
notice); files of 16 MiB or more are fetched as byte ranges from all of them at
once, the files of a bulk download are spread over them (-j per server), and a
replica that fails hands its share to the others. --json adds servers.
Exit status: 0 all ok or skipped, 1 any failed, 2 usage.")]
pub struct GetArgs {
    /// Path(s) of files (or, with -r, folders) on the server.
    #[arg(value_name = "PATH", required_unless_present = "from_file")]
    pub paths: Vec<String>,

    /// Read more paths from FILE, one a line (- for stdin); blank lines and
    /// lines starting with # are skipped.
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<String>,

    /// Fetch folders recursively, keeping the tree (empty folders too).
    #[arg(short, long)]
    pub recursive: bool,

    /// Transfers at once (at most 256, the default per-connection call limit
    /// of `fetchd serve`; a larger N counts as 256).
    #[arg(short, long, default_value_t = DEFAULT_JOBS, value_name = "N")]
    pub jobs: usize,

    /// Where to write: a file, a directory (DIR/ or existing), or - for stdout.
    #[arg(short = 'o', long = "output", value_name = "DEST")]
    pub output: Option<String>,

    /// Download even if DEST already has the server's size and sha256.
    #[arg(long)]
    pub force: bool,

    /// Download every byte even when DEST holds an older copy (no delta
    /// transfer: by default only the chunks that changed are fetched).
    #[arg(long)]
    pub whole_file: bool,

    /// No progress display and no notices.
    #[arg(short, long)]
    pub quiet: bool,

    /// One JSON object per file on stdout, when that file is done.
    #[arg(long)]
    pub json: bool,

    /// Receive at most RATE bytes per second (suffixes K, M, G: powers of 1024).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub limit_rate: Option<u64>,

    /// Ask the server to compress file data on the wire (pays for text on
    /// slow links; costs CPU for data that does not compress).
    #[arg(long, value_enum, default_value_t = CompressArg::None, value_name = "ALGO")]
    pub compress: CompressArg,

    /// Options of the client verbs (also accepted before the verb).
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Where one downloaded file goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Destination {
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
pub(crate) fn destination(remote: &str, output: Option<&str>) -> Result<Destination> {
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
pub(crate) async fn run(args: GetArgs, client_args: ClientArgs) -> Result<u8> {
    if args.jobs == 0 {
        return Err(Error::Usage("-j must be at least 1".into()));
    }
    let mut paths = args.paths.clone();
    if let Some(list) = &args.from_file {
        paths.extend(read_path_list(list)?);
    }
    let single = args.from_file.is_none() && paths.len() == 1;
    if paths.is_empty() {
        return Err(Error::Usage("no paths to fetch".into()));
    }
    if !single && args.output.as_deref() == Some("-") {
        return Err(Error::Usage("-o - takes a single file, not several".into()));
    }
    let targets = client_args.targets()?;
    if targets.len() > 1 {
        return run_fleet(&args, &client_args, &targets, &paths, single).await;
    }
    let client = Client::connect(&targets[0], &client_args.options_with(args.compress)).await?;
    if single {
        let remote = &paths[0];
        if args.recursive {
            // `-r` names a folder far more often than a file: its listing
            // goes out with the `Stat` that tells which, and a file's
            // listing (its own entry) is dropped unread.
            let notify = notifier(&args, &ProgressBar::hidden());
            let shown = download::shown(remote);
            let stat = client.retrying(&shown, &*notify, || client.stat(remote, false));
            let (stat, tree) = match tree_out(&args, remote) {
                Ok(out) => {
                    let with_digests = !args.force && has_entries(&out);
                    let listing = client.list_entries(remote, true, with_digests);
                    let (stat, listing) = tokio::join!(stat, listing);
                    let tree = ListedTree {
                        out,
                        with_digests,
                        listing,
                    };
                    (stat, Ok(tree))
                }
                // A path that names no tree: the stat says what is wrong
                // with it, and a folder there gets this error.
                Err(err) => (stat.await, Err(err)),
            };
            if matches!(&stat, Ok(stat) if stat.entry.kind == EntryKind::Dir) {
                return run_tree(&args, &client, remote, tree?).await;
            }
        }
        return run_single(&args, &client, remote).await;
    }
    run_many(&args, &client, &paths).await
}

/// Paths from a `--from-file` list (`-` for stdin).
fn read_path_list(list: &str) -> Result<Vec<String>> {
    let text = if list == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|err| Error::io("<stdin>", err))?
    } else {
        std::fs::read_to_string(list).map_err(|err| Error::io(list, err))?
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(String::from)
        .collect())
}

/// A progress bar on stderr when it is a terminal and the user wants one.
fn progress_bar(args: &GetArgs, template: &str) -> ProgressBar {
    if args.quiet || args.json || !stderr_is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Options for every download of this run.
fn download_options(args: &GetArgs, progress: ProgressBar, batch: bool) -> DownloadOptions {
    DownloadOptions {
        force: args.force,
        notify: notifier(args, &progress),
        progress,
        limit_rate: args.limit_rate,
        batch,
        delta: !args.whole_file,
    }
}

/// Where notices (resuming, retrying) go: stderr, above the progress bar;
/// nowhere with `--quiet` or `--json`.
fn notifier(args: &GetArgs, progress: &ProgressBar) -> Notify {
    let quiet = args.quiet || args.json;
    let progress = progress.clone();
    Arc::new(move |line: &str| {
        if !quiet {
            progress.suspend(|| eprintln!("fetchd: {line}"));
        }
    })
}

/// One file, with the single-PATH `-o` rules.
async fn run_single(args: &GetArgs, client: &Client, remote: &str) -> Result<u8> {
    let dest = destination(remote, args.output.as_deref())?;
    let progress = progress_bar(
        args,
        "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    );
    progress.set_message(remote.to_string());
    let options = download_options(args, progress, false);
    let (result, dest_shown) = match &dest {
        Destination::Stdout => (
            download::download_to_stdout(client, remote, &options).await,
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
                download::download_file(client, remote, path, None, &options).await,
                path.display().to_string(),
            )
        }
    };
    if args.json {
        let mut out = Output::default();
        out.line(&json_line(verb(args), remote, &dest_shown, &result).to_string())?;
        out.flush()?;
    } else if !args.quiet
        && let Ok(report) = &result
        && report.reused > 0
    {
        eprintln!("fetchd: {remote}: {}", reuse_line(report));
    }
    match result {
        Ok(_) => Ok(EXIT_OK),
        Err(err) if matches!(err, Error::Usage(_)) => Err(err),
        Err(err) => {
            report(verb(args), &err);
            Ok(EXIT_FAILURE)
        }
    }
}

/// A `-r DIR` whose listing went out with the `Stat` that told DIR is a
/// folder.
struct ListedTree {
    /// Where the tree goes ([`tree_out`]).
    out: PathBuf,
    /// Whether the listing carries digests (OUT holds something to check).
    with_digests: bool,
    /// The listing, under way.
    listing: Result<ListStream>,
}

/// `-r DIR`: the tree below DIR into OUT (default ./BASENAME-of-DIR).
async fn run_tree(args: &GetArgs, client: &Client, dir: &str, tree: ListedTree) -> Result<u8> {
    let ListedTree {
        out,
        with_digests,
        listing,
    } = tree;
    std::fs::create_dir_all(&out).map_err(|err| Error::io(&out, err))?;
    let mut checks = LocalChecks::default();
    let notify = notifier(args, &ProgressBar::hidden());
    let items = bulk::plan_tree(
        client,
        dir,
        &out,
        with_digests,
        &mut checks,
        &*notify,
        Some(listing),
    )
    .await?;
    run_items(args, client, &out, items, checks).await
}

/// Where `-r DIR` puts the tree: `-o`, else ./BASENAME-of-DIR.
fn tree_out(args: &GetArgs, dir: &str) -> Result<PathBuf> {
    Ok(match &args.output {
        Some(out) => PathBuf::from(out),
        None => match RequestPath::parse(dir)?.display().rsplit('/').next() {
            Some(name) if !name.is_empty() && name != ".." => PathBuf::from(name),
            _ => PathBuf::from("."),
        },
    })
}

/// Several paths (and/or `--from-file`): each at OUT/PATH; with -r, folders
/// are expanded in place.
async fn run_many(args: &GetArgs, client: &Client, paths: &[String]) -> Result<u8> {
    let out = PathBuf::from(args.output.as_deref().unwrap_or("."));
    std::fs::create_dir_all(&out).map_err(|err| Error::io(&out, err))?;
    let mut items = Vec::new();
    let mut checks = LocalChecks::default();
    let notify = notifier(args, &ProgressBar::hidden());
    let mut failed = 0;
    for path in paths {
        let planned = match RequestPath::parse(path) {
            Ok(parsed) if args.recursive => {
                let display = parsed.display().to_string();
                let stat = client
                    .retrying(&download::shown(path), &*notify, || {
                        client.stat(path, false)
                    })
                    .await;
                match stat {
                    Ok(stat) if stat.entry.kind == EntryKind::Dir => {
                        let sub = if display.is_empty() {
                            Ok(out.clone())
                        } else {
                            bulk::confine(&out, &display)
                        };
                        match sub {
                            Ok(sub) => {
                                let with_digests = !args.force && has_entries(&sub);
                                bulk::plan_tree(
                                    client,
                                    path,
                                    &sub,
                                    with_digests,
                                    &mut checks,
                                    &*notify,
                                    None,
                                )
                                .await
                            }
                            Err(err) => Err(err),
                        }
                    }
                    _ => bulk::confine(&out, &display).map(|dest| {
                        vec![Item {
                            remote: path.clone(),
                            dest,
                            known: None,
                        }]
                    }),
                }
            }
            Ok(parsed) => bulk::confine(&out, parsed.display()).map(|dest| {
                vec![Item {
                    remote: path.clone(),
                    dest,
                    known: None,
                }]
            }),
            Err(err) => Err(err),
        };
        match planned {
            Ok(planned) => items.extend(planned),
            Err(err) => {
                failed += 1;
                print_failure(args, path, &out.join(path.trim_start_matches('/')), err)?;
            }
        }
    }
    let code = run_items(args, client, &out, items, checks).await?;
    Ok(if failed > 0 { EXIT_FAILURE } else { code })
}

/// True when `dir` exists and holds something: a rerun is likely, and a
/// listing with digests saves a call per file.
fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// Fetches planned items, printing a JSON line per file and a summary.
async fn run_items(
    args: &GetArgs,
    client: &Client,
    out: &Path,
    items: Vec<Item>,
    checks: LocalChecks,
) -> Result<u8> {
    let total_files = items.len();
    let total_bytes: u64 = items
        .iter()
        .filter_map(|item| item.known.map(|k| k.size))
        .sum();
    let progress = progress_bar(
        args,
        "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    );
    progress.set_length(total_bytes);
    progress.set_message(format!("0/{total_files} files"));
    let options = download_options(args, progress.clone(), true);
    let mut output = Output::default();
    let mut finished = 0;
    let mut write_error = None;
    let summary = bulk::fetch_all(
        client,
        out,
        items,
        checks,
        args.jobs,
        &options,
        |item, result| {
            finished += 1;
            progress.set_message(format!("{finished}/{total_files} files"));
            if args.json {
                let line = json_line(
                    verb(args),
                    &item.remote,
                    &item.dest.display().to_string(),
                    result,
                );
                if let Err(err) = output.line(&line.to_string()).and_then(|_| output.flush()) {
                    write_error.get_or_insert(err);
                }
            }
            if let Err(err) = result {
                progress.suspend(|| report(verb(args), err));
            }
        },
    )
    .await;
    progress.finish_and_clear();
    if let Some(err) = write_error {
        return Err(err);
    }
    if !args.quiet {
        eprintln!("fetchd: {}", summary.line());
    }
    Ok(if summary.failed > 0 {
        EXIT_FAILURE
    } else {
        EXIT_OK
    })
}

/// `get` from several servers, as replicas of one tree: connects to all at
/// once (those that cannot be reached are left out, with a notice), then
/// one file, a tree or a list as with one server, each file from the
/// replicas that agree on it.
async fn run_fleet(
    args: &GetArgs,
    client_args: &ClientArgs,
    targets: &[Target],
    paths: &[String],
    single: bool,
) -> Result<u8> {
    let options = client_args.options_with(args.compress);
    let notify = notifier(args, &ProgressBar::hidden());
    let connected = fleet::connect_all(targets, &options, client_args.max_connecting()).await;
    let mut replicas = Vec::new();
    let mut first_error = None;
    for (target, connected) in targets.iter().zip(connected) {
        match connected {
            Ok(client) => replicas.push(Replica {
                label: target.label().to_string(),
                client,
            }),
            Err(err) => {
                notify(&format!("{}: {err}; left out", target.label()));
                first_error.get_or_insert(err);
            }
        }
    }
    if replicas.is_empty() {
        return Err(first_error.unwrap_or_else(|| Error::Usage("no server to talk to".into())));
    }
    let lead = &replicas[0].client;
    let is_dir = |remote: &str| {
        let (remote, notify) = (remote.to_string(), Arc::clone(&notify));
        async move {
            let stat = lead
                .retrying(&download::shown(&remote), &*notify, || {
                    lead.stat(&remote, false)
                })
                .await;
            matches!(stat, Ok(stat) if stat.entry.kind == EntryKind::Dir)
        }
    };
    if single && !(args.recursive && is_dir(&paths[0]).await) {
        return run_fleet_single(args, &replicas, &paths[0]).await;
    }
    let (out, mut failed) = match single {
        true => (tree_out(args, &paths[0])?, 0),
        false => (PathBuf::from(args.output.as_deref().unwrap_or(".")), 0),
    };
    std::fs::create_dir_all(&out).map_err(|err| Error::io(&out, err))?;
    let mut placed = Vec::new();
    let mut checks = LocalChecks::default();
    for path in paths {
        let planned = match RequestPath::parse(path) {
            Ok(parsed) if args.recursive && is_dir(path).await => {
                let display = parsed.display().to_string();
                let sub = match single || display.is_empty() {
                    true => Ok(out.clone()),
                    false => bulk::confine(&out, &display),
                };
                match sub {
                    Ok(sub) => bulk::plan_tree(lead, path, &sub, true, &mut checks, &*notify, None)
                        .await
                        .map(|items| (items, true)),
                    Err(err) => Err(err),
                }
            }
            Ok(parsed) => match bulk::confine(&out, parsed.display()) {
                Ok(dest) => agree::agree(&replicas, path, &notify).await.map(|agreed| {
                    let item = Item {
                        remote: path.clone(),
                        dest,
                        known: Some(Known {
                            size: agreed.size,
                            sha256: Some(agreed.sha256),
                        }),
                    };
                    checks.submit(&item);
                    let members = agreed.members.iter().map(|m| m.replica).collect();
                    placed.push(spread::Placed { item, members });
                    (Vec::new(), false)
                }),
                Err(err) => Err(err),
            },
            Err(err) => Err(err),
        };
        match planned {
            Ok((items, true)) => {
                placed.extend(spread::agree_tree(&replicas, 0, path, items, &notify).await);
            }
            Ok((_, false)) => {}
            Err(err) => {
                failed += 1;
                print_failure(args, path, &out.join(path.trim_start_matches('/')), err)?;
            }
        }
    }
    let code = run_fleet_items(args, &replicas, &out, placed, checks).await?;
    Ok(if failed > 0 { EXIT_FAILURE } else { code })
}

/// One file from the replicas, with the single-PATH `-o` rules; `-o -`
/// streams it from the first agreeing replica.
async fn run_fleet_single(args: &GetArgs, replicas: &[Replica], remote: &str) -> Result<u8> {
    let dest = destination(remote, args.output.as_deref())?;
    let progress = progress_bar(
        args,
        "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    );
    progress.set_message(remote.to_string());
    let options = download_options(args, progress, false);
    let (result, dest_shown) = match &dest {
        Destination::Stdout => {
            let result = match agree::agree(replicas, remote, &options.notify).await {
                Ok(agreed) => {
                    let replica = &replicas[agreed.members[0].replica];
                    download::download_to_stdout(&replica.client, remote, &options)
                        .await
                        .map(|report| fleet::Delivered {
                            report,
                            servers: vec![replica.label.clone()],
                        })
                }
                Err(err) => Err(err),
            };
            (result, "-".to_string())
        }
        Destination::File {
            path,
            create_parent,
        } => {
            if *create_parent && let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|err| Error::io(parent, err))?;
            }
            (
                fleet::download_one(replicas, remote, path, &options).await,
                path.display().to_string(),
            )
        }
    };
    let (result, servers) = match result {
        Ok(delivered) => (Ok(delivered.report), delivered.servers),
        Err(err) => (Err(err), Vec::new()),
    };
    if args.json {
        let mut out = Output::default();
        let mut line = json_line(verb(args), remote, &dest_shown, &result);
        line["servers"] = json!(servers);
        out.line(&line.to_string())?;
        out.flush()?;
    }
    match result {
        Ok(_) => Ok(EXIT_OK),
        Err(err) if matches!(err, Error::Usage(_)) => Err(err),
        Err(err) => {
            report(verb(args), &err);
            Ok(EXIT_FAILURE)
        }
    }
}

/// Fetches placed files spread over the replicas, printing a JSON line
/// per file (with `servers`) and a summary.
async fn run_fleet_items(
    args: &GetArgs,
    replicas: &[Replica],
    out: &Path,
    placed: Vec<spread::Placed>,
    checks: LocalChecks,
) -> Result<u8> {
    let total_files = placed.len();
    let total_bytes: u64 = placed
        .iter()
        .filter_map(|placed| placed.item.known.map(|k| k.size))
        .sum();
    let progress = progress_bar(
        args,
        "{msg} {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    );
    progress.set_length(total_bytes);
    progress.set_message(format!("0/{total_files} files"));
    let options = download_options(args, progress.clone(), true);
    let mut output = Output::default();
    let mut finished = 0;
    let mut write_error = None;
    let summary = spread::fetch_spread(
        replicas,
        out,
        placed,
        checks,
        args.jobs,
        &options,
        |item, result, servers| {
            finished += 1;
            progress.set_message(format!("{finished}/{total_files} files"));
            if args.json {
                let mut line = json_line(
                    verb(args),
                    &item.remote,
                    &item.dest.display().to_string(),
                    result,
                );
                line["servers"] = json!(servers);
                if let Err(err) = output.line(&line.to_string()).and_then(|_| output.flush()) {
                    write_error.get_or_insert(err);
                }
            }
            if let Err(err) = result {
                progress.suspend(|| report(verb(args), err));
            }
        },
    )
    .await;
    progress.finish_and_clear();
    if let Some(err) = write_error {
        return Err(err);
    }
    if !args.quiet {
        eprintln!("fetchd: {}", summary.line());
    }
    Ok(if summary.failed > 0 {
        EXIT_FAILURE
    } else {
        EXIT_OK
    })
}

/// Reports a file that failed before its transfer began.
fn print_failure(args: &GetArgs, remote: &str, dest: &Path, err: Error) -> Result<()> {
    if args.json {
        let mut out = Output::default();
        out.line(
            &json_line(
                verb(args),
                remote,
                &dest.display().to_string(),
                &Err(err.clone_message()),
            )
            .to_string(),
        )?;
        out.flush()?;
    }
    report(verb(args), &err);
    Ok(())
}

/// The verb errors of this run are printed for (its hints).
fn verb(args: &GetArgs) -> Verb {
    Verb::Get {
        recursive: args.recursive,
    }
}

/// `reused 98.7 % of 1.0 GiB (13.3 MiB received)`: what a delta saved.
pub(crate) fn reuse_line(report: &Report) -> String {
    let share = 100.0 * report.reused as f64 / report.bytes.max(1) as f64;
    format!(
        "reused {share:.1} % of {} ({} received)",
        bulk::human_bytes(report.bytes),
        bulk::human_bytes(report.transferred)
    )
}

/// The `--json` object for one file.
pub(crate) fn json_line(
    verb: Verb,
    remote: &str,
    dest: &str,
    result: &Result<Report>,
) -> serde_json::Value {
    let path = remote.trim_start_matches('/');
    match result {
        Ok(report) => json!({
            "path": path,
            "dest": dest,
            "bytes": report.bytes,
            "received": report.transferred,
            "reused": report.reused,
            "sha256": report.sha256.to_hex(),
            "status": match report.outcome {
                Outcome::Downloaded => "ok",
                Outcome::Skipped => "skipped",
            },
        }),
        Err(err) => json_error(verb, path, ("dest", dest), err),
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
