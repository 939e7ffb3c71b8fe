//! Load generator for the tail benchmark (`bench/tail`): N concurrent tail
//! clients, each on its own connection, following one file from its end.
//!
//! ```console
//! $ tail_fanout http://127.0.0.1:PORT app.log 1000 640000 120
//! ```
//!
//! Arguments: server URL, path under the server's root, number of clients,
//! bytes every client must receive, and a deadline in seconds. Once every
//! client's stream is open (the server's `Opened` notice arrived) it prints
//! `ready`; the writer may then append. At the end it prints one JSON line:
//! how many clients received exactly the expected number of bytes, the
//! distinct FNV-1a 64 hashes of what they received (all equal when every
//! client got the same bytes), failures, and the time from `ready` until the
//! last client had everything. Exit status 0 only when every client got
//! every byte.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fetchd::{Client, ConnectOptions, Target};
use fetchd::{TailEvent, TailStart};

/// What one client saw.
struct Outcome {
    bytes: usize,
    hash: u64,
    done_at: Option<Instant>,
    error: Option<String>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, data: &[u8]) -> u64 {
    for byte in data {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

async fn one_client(
    url: String,
    path: String,
    want: usize,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
) -> Outcome {
    let mut outcome = Outcome {
        bytes: 0,
        hash: FNV_OFFSET,
        done_at: None,
        error: None,
    };
    let opened = async {
        let client = Client::connect(&Target::parse(&url)?, &ConnectOptions::default()).await?;
        client.tail(&path, TailStart::LastLines(0), true).await
    };
    let mut stream = match opened.await {
        Ok(stream) => stream,
        Err(err) => {
            let reason = err.to_string();
            let _ = ready.send(Err(reason.clone())).await;
            outcome.error = Some(reason);
            return outcome;
        }
    };
    let mut signalled = false;
    loop {
        let event = match stream.next().await {
            Ok(Some(event)) => event,
            Ok(None) => {
                outcome.error = Some("stream ended".to_string());
                break;
            }
            Err(err) => {
                outcome.error = Some(err.to_string());
                break;
            }
        };
        if let TailEvent::Data { data, .. } = &event {
            outcome.bytes += data.len();
            outcome.hash = fnv1a(outcome.hash, data);
        }
        if !signalled {
            signalled = true;
            let _ = ready.send(Ok(())).await;
        }
        if outcome.bytes >= want {
            outcome.done_at = Some(Instant::now());
            break;
        }
    }
    if !signalled {
        let _ = ready
            .send(Err(outcome.error.clone().unwrap_or_default()))
            .await;
    }
    outcome
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: tail_fanout URL PATH CLIENTS BYTES DEADLINE_SECONDS");
        std::process::exit(2);
    }
    let url = args[1].clone();
    let path = args[2].clone();
    let clients: usize = args[3].parse().unwrap();
    let want: usize = args[4].parse().unwrap();
    let deadline = Duration::from_secs(args[5].parse().unwrap());

    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(clients);
    let mut tasks = Vec::with_capacity(clients);
    for _ in 0..clients {
        tasks.push(tokio::spawn(one_client(
            url.clone(),
            path.clone(),
            want,
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    let mut open_errors = 0usize;
    for _ in 0..clients {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(reason)) => {
                open_errors += 1;
                if open_errors == 1 {
                    eprintln!("tail_fanout: a client could not start: {reason}");
                }
            }
            None => break,
        }
    }
    println!("ready");
    let start = Instant::now();

    let collect = async {
        let mut outcomes = Vec::with_capacity(clients);
        for task in tasks {
            outcomes.push(task.await.unwrap());
        }
        outcomes
    };
    let outcomes = match tokio::time::timeout(deadline, collect).await {
        Ok(outcomes) => outcomes,
        Err(_) => {
            println!("{{\"clients\":{clients},\"complete\":0,\"timed_out\":true}}");
            std::process::exit(1);
        }
    };

    let mut complete = 0usize;
    let mut hashes: BTreeMap<String, usize> = BTreeMap::new();
    let mut errors: BTreeMap<String, usize> = BTreeMap::new();
    let mut last = start;
    for outcome in &outcomes {
        if outcome.bytes == want && outcome.error.is_none() {
            complete += 1;
        }
        *hashes.entry(format!("{:016x}", outcome.hash)).or_default() += 1;
        if let Some(reason) = &outcome.error {
            *errors.entry(reason.clone()).or_default() += 1;
        }
        if let Some(at) = outcome.done_at {
            last = last.max(at);
        }
    }
    let hashes = hashes
        .iter()
        .map(|(hash, count)| format!("\"{hash}\":{count}"))
        .collect::<Vec<_>>()
        .join(",");
    let errors = errors
        .iter()
        .map(|(reason, count)| format!("{reason:?}:{count}"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "{{\"clients\":{clients},\"complete\":{complete},\"bytes_each\":{want},\
         \"hashes\":{{{hashes}}},\"errors\":{{{errors}}},\"last_done_s\":{:.6},\"timed_out\":false}}",
        (last - start).as_secs_f64()
    );
    if complete != clients {
        std::process::exit(1);
    }
}
