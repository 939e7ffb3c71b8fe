//! Fault-injecting TCP relay for benchmarks: forwards every connection on
//! `--listen` to `--upstream`, optionally adding one-way delay or cutting each
//! connection after a number of server->client bytes.
//!
//! ```console
//! $ relay --listen 127.0.0.1:0 --upstream 127.0.0.1:PORT [--delay-ms N] [--cut-every-down BYTES] [--rate-down B/S] [--rate-up B/S]
//! relay on 127.0.0.1:PORT
//! ```
//!
//! Prints that one line on stdout once it accepts connections, runs until
//! SIGTERM or SIGINT, then prints `bytes_up N bytes_down M` on stderr.

#[path = "../tests/common/relay.rs"]
mod relay;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

/// Command-line options.
#[derive(Parser)]
#[command(about = "Fault-injecting TCP relay for benchmarks")]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address to forward every connection to.
    #[arg(long)]
    upstream: SocketAddr,
    /// One-way delay in milliseconds, added in each direction.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Cut each connection once it has forwarded this many server->client bytes.
    #[arg(long)]
    cut_every_down: Option<u64>,
    /// Most server->client bytes per second over all connections (a link of that rate).
    #[arg(long)]
    rate_down: Option<u64>,
    /// Most client->server bytes per second over all connections.
    #[arg(long)]
    rate_up: Option<u64>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let faults = relay::Faults {
        cut_every_down: args.cut_every_down,
        cut_every_up: None,
        delay: Duration::from_millis(args.delay_ms),
        rate_down: args.rate_down,
        rate_up: args.rate_up,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let relay = relay::Relay::start_on(args.listen, args.upstream, faults).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "relay on {}", relay.addr())?;
    out.flush()?;
    drop(out);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!(
        "bytes_up {} bytes_down {}",
        relay.bytes_up(),
        relay.bytes_down()
    );
    Ok(())
}
