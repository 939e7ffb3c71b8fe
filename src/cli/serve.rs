//! `fetchd serve`: export one directory tree.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cli::output::EXIT_OK;
use crate::error::{Error, Result};
use crate::server::auth::Tokens;
use crate::server::{
    self, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_STREAMS_PER_CONNECTION,
    DEFAULT_MAX_TAILS, DEFAULT_MAX_TRANSFERS, ServerConfig, metrics,
};
use crate::tls::ServerTls;

/// Arguments of `fetchd serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
When ready, prints `listening on IP:PORT` (the real port, also for port 0) on stdout,
and with --metrics-listen a second line `metrics on IP:PORT`.
With --allow-upload, temporary files of uploads an earlier run left unfinished
(.NAME.fetchd-upload-XXXXXXXXXXXXXXXX) are removed before the first call is served.
Serves grpc.health.v1.Health and server reflection (v1 and v1alpha) beside fetchd.v1.
Compression: an answer is gzip- or zstd-compressed exactly when its request is
(clients ask by compressing their request: `fetchd get --compress zstd`).
Logs go to stderr, one event per call at info; filter with RUST_LOG (e.g.
RUST_LOG=warn, RUST_LOG=fetchd=debug).
SIGINT/SIGTERM (handled from before `listening on` is printed): health turns
NOT_SERVING, the listener closes, new calls get UNAVAILABLE with a retry pushback
(clients retry), open tail streams end at once, running transfers get --grace
seconds to finish, then the server exits 0. Limits answer RESOURCE_EXHAUSTED with
a retry pushback too. SIGHUP re-reads --token-file (the old tokens stay if it is bad).")]
pub struct ServeArgs {
    /// The directory tree to serve; nothing outside it is ever read. Or
    /// s3://BUCKET[/PREFIX]: the objects of an S3-compatible store, with the
    /// AWS_* variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION,
    /// AWS_ENDPOINT_URL, AWS_ALLOW_HTTP=true); tail then needs a directory.
    #[arg(long, default_value = ".", value_name = "DIR|s3://BUCKET[/PREFIX]")]
    pub root: PathBuf,

    /// Address to listen on; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR")]
    pub listen: SocketAddr,

    /// Seconds running transfers may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub grace: u64,

    /// Transfers (reads and uploads) served at once over all clients; more get
    /// RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_MAX_TRANSFERS, value_name = "N")]
    pub max_transfers: usize,

    /// Tail streams open at once over all clients; more get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_MAX_TAILS, value_name = "N")]
    pub max_tails: usize,

    /// An idle tail stream carries a heartbeat at least every SECS seconds,
    /// so that a proxy's read timeout (nginx grpc_read_timeout, 60 s by
    /// default) never cuts it; clients show nothing for it.
    #[arg(long, default_value_t = 15, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub tail_heartbeat: u64,

    /// Threads that run the network side (HTTP/2, TLS, compression); file
    /// reads run on threads of their own. Default: half the CPUs, at least
    /// one.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub workers: Option<u16>,

    /// Serve TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "F", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "F", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this CA (PEM): mutual TLS.
    #[arg(long, value_name = "F", requires = "tls_cert")]
    pub client_ca: Option<PathBuf>,

    /// Require `authorization: Bearer <token>` on every call but health, with
    /// a token from this file (one a line); re-read on SIGHUP.
    #[arg(long, value_name = "F")]
    pub token_file: Option<PathBuf>,

    /// Connections open at once; more wait in the listen backlog until one
    /// closes.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,

    /// Calls open at once on one connection; more get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION, value_name = "N")]
    pub max_streams_per_connection: usize,

    /// Largest request message in bytes; larger get RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = DEFAULT_MAX_REQUEST_BYTES, value_name = "BYTES")]
    pub max_request_bytes: usize,

    /// Close a connection that has had no call for this long.
    #[arg(long, default_value = "300", value_name = "SECS", value_parser = parse_seconds)]
    pub idle_timeout: Duration,

    /// Close a connection that has not made its first call (TLS handshake
    /// included) within this time.
    #[arg(long, default_value = "10", value_name = "SECS", value_parser = parse_seconds)]
    pub handshake_timeout: Duration,

    /// Ping each client over HTTP/2 this often to find dead peers.
    #[arg(long, default_value = "30", value_name = "SECS", value_parser = parse_seconds)]
    pub keepalive_interval: Duration,

    /// A ping unanswered this long closes the connection and ends its calls.
    #[arg(long, default_value = "20", value_name = "SECS", value_parser = parse_seconds)]
    pub keepalive_timeout: Duration,

    /// Serve even when --root is / (the whole filesystem), refused otherwise.
    #[arg(long)]
    pub allow_root_slash: bool,

    /// Accept uploads (`fetchd put`); without it they get PERMISSION_DENIED.
    #[arg(long)]
    pub allow_upload: bool,

    /// Largest upload accepted (suffixes K, M, G, T: powers of 1024); larger
    /// gets RESOURCE_EXHAUSTED as soon as the size is declared or reached.
    #[arg(long, default_value = "16G", value_name = "SIZE", value_parser = parse_size)]
    pub max_upload_size: u64,

    /// Serve Prometheus metrics at http://ADDR/metrics (port 0 picks a free
    /// port; the real one is printed as `metrics on IP:PORT`).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format on stderr: text lines, or one JSON object per line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

/// Parses `16G`, `512M`, `100K` or a plain number of bytes.
pub(crate) fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let scale = match text.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => 1 << 10,
        Some('M') => 1 << 20,
        Some('G') => 1 << 30,
        Some('T') => 1 << 40,
        _ => 1,
    };
    let digits = if scale == 1 {
        text
    } else {
        &text[..text.len() - 1]
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a size such as 16G, 512M or 1048576"))
}

/// A positive number of seconds, fractions allowed (`0.5`).
fn parse_seconds(text: &str) -> std::result::Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 1e9) {
        return Err(format!("{text}: must be more than 0 seconds"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Runs `fetchd serve` until SIGINT or SIGTERM.
pub(crate) fn run(args: ServeArgs) -> Result<u8> {
    let object_store = args
        .root
        .to_str()
        .filter(|root| root.contains("://"))
        .map(str::to_string);
    if object_store.is_none() {
        match std::fs::metadata(&args.root) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(Error::Usage(format!(
                    "--root {}: not a directory",
                    args.root.display()
                )));
            }
            Err(err) => return Err(Error::io(&args.root, err)),
        }
        // Everything that can be wrong with the arguments is found before
        // the port is bound and `listening on` is printed.
        server::check_root(&args.root, args.allow_root_slash)?;
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(ServerTls::load(cert, key, args.client_ca.as_deref())?),
        _ => None,
    };
    let tokens = args.token_file.as_ref().map(Tokens::load).transpose()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.map_or_else(default_workers, usize::from))
        .enable_all()
        .build()
        .map_err(|err| Error::io("<runtime>", err))?;
    runtime.block_on(async {
        // An object store is reached (and its credentials tried) before the
        // port is bound: one that cannot be used is exit 1 with the reason.
        let store = match &object_store {
            Some(url) => Some(connect_object_store(url).await?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|err| Error::Serve(format!("cannot listen on {}: {}", args.listen, err)))?;
        let local = listener
            .local_addr()
            .map_err(|err| Error::Serve(err.to_string()))?;
        let metrics_listener = match args.metrics_listen {
            Some(addr) => Some(metrics::bind(addr).await?),
            None => None,
        };
        let mut config = ServerConfig::new(args.root);
        config.grace = Duration::from_secs(args.grace);
        config.max_transfers = args.max_transfers.max(1);
        config.max_tails = args.max_tails.max(1);
        config.tail_heartbeat = Duration::from_secs(args.tail_heartbeat);
        config.max_connections = args.max_connections.max(1);
        config.max_streams_per_connection = args.max_streams_per_connection.max(1);
        config.max_request_bytes = args.max_request_bytes;
        config.idle_timeout = args.idle_timeout;
        config.handshake_timeout = args.handshake_timeout;
        config.keepalive_interval = args.keepalive_interval;
        config.keepalive_timeout = args.keepalive_timeout;
        config.allow_root_slash = args.allow_root_slash;
        config.tls = tls;
        if let Some(tokens) = &tokens {
            reload_on_sighup(tokens.clone())?;
        }
        config.tokens = tokens;
        config.allow_upload = args.allow_upload;
        config.max_upload_bytes = args.max_upload_size;
        let mut ready = format!("listening on {local}\n");
        if let Some(metrics_listener) = metrics_listener {
            let metrics_addr = metrics_listener
                .local_addr()
                .map_err(|err| Error::Serve(err.to_string()))?;
            ready.push_str(&format!("metrics on {metrics_addr}\n"));
            // Serves until the process exits, so that the last scrape can
            // still see the drain.
            tokio::spawn(metrics::serve_http(
                metrics_listener,
                config.metrics.clone(),
                std::future::pending(),
            ));
        }
        // The handlers are in place before the line is printed: a script
        // that signals as soon as it reads `listening on` gets a drain and
        // exit 0, never the default action of the signal (death).
        let shutdown = shutdown_signal()?;
        let mut stdout = std::io::stdout();
        stdout
            .write_all(ready.as_bytes())
            .and_then(|()| stdout.flush())
            .map_err(|err| Error::io("<stdout>", err))?;
        match store {
            Some(store) => store.serve(listener, config, shutdown).await?,
            None => server::run(listener, config, shutdown).await?,
        }
        Ok(EXIT_OK)
    })
}

/// A store other than a local directory, by its URL's scheme.
#[derive(Debug)]
enum ObjectRoot {
    #[cfg(feature = "s3")]
    S3(crate::store::s3::S3Store),
}

impl ObjectRoot {
    /// Serves the store like [`server::run`] serves a directory.
    async fn serve(
        self,
        listener: tokio::net::TcpListener,
        config: ServerConfig,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<()> {
        match self {
            #[cfg(feature = "s3")]
            ObjectRoot::S3(store) => {
                server::serve(listener, std::sync::Arc::new(store), config, shutdown).await
            }
        }
    }
}

/// Connects to the object store `url` names.
async fn connect_object_store(url: &str) -> Result<ObjectRoot> {
    #[cfg(feature = "s3")]
    if url.starts_with("s3://") {
        return crate::store::s3::S3Store::connect(url)
            .await
            .map(ObjectRoot::S3);
    }
    Err(Error::Usage(format!(
        "--root {url}: not a directory, and not an object store this build serves \
         (s3://BUCKET[/PREFIX]{})",
        if cfg!(feature = "s3") {
            ""
        } else {
            "; this build has no s3 feature"
        }
    )))
}

/// Re-reads the token file on every SIGHUP; a file that cannot be used is
/// reported and the tokens in force stay.
fn reload_on_sighup(tokens: Tokens) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())
        .map_err(|err| Error::Serve(format!("cannot watch SIGHUP: {err}")))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match tokens.reload() {
                Ok(count) => tracing::info!(
                    file = %tokens.file().display(),
                    tokens = count,
                    "SIGHUP: re-read the token file"
                ),
                Err(err) => tracing::error!(
                    %err,
                    "SIGHUP: cannot re-read the token file; the previous tokens stay in force"
                ),
            }
        }
    });
    Ok(())
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that
/// completes on the first of them.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let watch = |kind: SignalKind, name: &str| {
        signal(kind).map_err(|err| Error::Serve(format!("cannot watch {name}: {err}")))
    };
    let mut interrupt = watch(SignalKind::interrupt(), "SIGINT")?;
    let mut terminate = watch(SignalKind::terminate(), "SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

/// Network threads when `--workers` is not given: half the CPUs (rounded
/// up). A download's server CPU is split about evenly between writing to
/// the socket (on these threads) and reading the file (on the reader
/// threads), and every extra worker costs wake-ups on each event: on 2 CPUs
/// one worker served one client as fast as two and cut tail latency (see
/// bench/README.md).
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |cpus| cpus.get().div_ceil(2))
}

/// `serve --log-format`: how log events are written to stderr.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, message and the
    /// event's fields at the top level), for log shippers.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes take K, M, G and T suffixes (powers of 1024).
    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("100"), Ok(100));
        assert_eq!(parse_size("2k"), Ok(2048));
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert!(parse_size("big").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
