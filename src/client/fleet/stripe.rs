//! One large file from every agreeing replica at once, as byte ranges.
//!
//! The file is cut into ranges ([`range_bytes`]) that
//! [`WORKERS_PER_REPLICA`] workers per replica take from one shared plan,
//! so a fast replica simply takes more of them. A worker with nothing left
//! to take steals the back half of the running range with the most bytes
//! still to come (the owner stops at the new end), so the last ranges of a
//! slow replica do not hold the file up. Each range is a `Read` with
//! `range_only` (the server hashes only what it sends) that must start on
//! the version the replica agreed on.
//!
//! The chunks go to one writer thread, which writes each at its offset in
//! `DEST.part` and tracks how far the file is whole from byte 0; a hashing
//! thread reads that whole prefix back (from the page cache) and hashes it
//! in order. The whole-file sha256 against the agreed one decides, as in
//! every download; on a mismatch the file is fetched again from one
//! replica through the single-server path.
//!
//! A replica that fails hands its running range back at once (whoever is
//! free takes it) and its workers come back after the retry policy's
//! backoff; one whose retries run out, or that served another version, is
//! left out of this file. The file fails only when every replica is out
//! with bytes still missing: the part file is then cut to its whole prefix,
//! which any later `get` resumes.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{Notify as Wakeup, mpsc};
use tokio::task::JoinSet;

use crate::checksum::{self, Hasher};
use crate::client::Client;
use crate::client::download::{self, DownloadOptions, Outcome, Report, shown};
use crate::client::fleet::agree::Agreement;
use crate::client::fleet::replica::{Delivered, Replica};
use crate::client::retry::Cause;
use crate::error::{Error, Result};
use crate::partfile::PartFile;
use crate::read_stream::ReadEvent;

/// Files at least this large are striped over the agreeing replicas;
/// smaller ones come from one replica (a range costs a call and a hash
/// on the server, worth it only for a file that takes a while).
pub(crate) const STRIPE_MIN_BYTES: u64 = 16 << 20;
/// Ranges in flight per replica: one streams while the next one starts.
const WORKERS_PER_REPLICA: usize = 2;
/// The smallest and largest range handed out.
const MIN_RANGE_BYTES: u64 = 4 << 20;
const MAX_RANGE_BYTES: u64 = 64 << 20;
/// A running range is split for an idle worker only when at least twice
/// this much of it is still to come.
const MIN_STEAL_BYTES: u64 = 1 << 20;
/// Chunks queued for the writer thread (each at most 1 MiB).
const WRITE_QUEUE: usize = 32;

/// The range size for a file of `size` bytes over `workers` workers: about
/// four ranges each, so the plan can still balance, within 4 and 64 MiB.
pub(crate) fn range_bytes(size: u64, workers: usize) -> u64 {
    (size / (workers.max(1) as u64 * 4)).clamp(MIN_RANGE_BYTES, MAX_RANGE_BYTES)
}

/// A range a worker is streaming: bytes `pos..end` are still to come.
#[derive(Clone, Copy, Debug)]
struct Running {
    replica: usize,
    pos: u64,
    end: u64,
}

/// Which bytes are still to be fetched, and by whom.
#[derive(Debug)]
pub(crate) struct Plan {
    size: u64,
    range: u64,
    /// Bytes from here to the end have not been handed out.
    next: u64,
    /// Ranges handed back by a failed worker, for anyone.
    returned: Vec<(u64, u64)>,
    running: HashMap<u64, Running>,
    next_id: u64,
    /// Bytes not yet delivered.
    left: u64,
    /// Bytes delivered but not yet handed to the writer.
    in_transit: u64,
    /// Bytes delivered by each replica.
    delivered: Vec<u64>,
}

impl Plan {
    /// A plan for bytes `from..size`, in ranges of `range` bytes, over
    /// `replicas` replicas.
    pub(crate) fn new(from: u64, size: u64, range: u64, replicas: usize) -> Plan {
        Plan {
            size,
            range: range.max(1),
            next: from,
            returned: Vec::new(),
            running: HashMap::new(),
            next_id: 0,
            left: size - from.min(size),
            in_transit: 0,
            delivered: vec![0; replicas],
        }
    }

    /// The next range for a worker of `replica`: one handed back, else a
    /// fresh one, else the back half of the running range with the most
    /// left. `None` when there is nothing worth taking.
    pub(crate) fn take(&mut self, replica: usize) -> Option<(u64, u64, u64)> {
        let (start, end) = if let Some(range) = self.returned.pop() {
            range
        } else if self.next < self.size {
            let start = self.next;
            self.next = (start + self.range).min(self.size);
            (start, self.next)
        } else {
            let victim = self
                .running
                .values_mut()
                .filter(|job| job.end - job.pos >= 2 * MIN_STEAL_BYTES)
                .max_by_key(|job| job.end - job.pos)?;
            let middle = victim.pos + (victim.end - victim.pos) / 2;
            let end = victim.end;
            victim.end = middle;
            (middle, end)
        };
        let id = self.next_id;
        self.next_id += 1;
        self.running.insert(
            id,
            Running {
                replica,
                pos: start,
                end,
            },
        );
        Some((id, start, end))
    }

    /// Records `len` bytes that arrived for range `id`: how many of them
    /// to keep (the range may have been cut short by a steal), the offset
    /// they go to, and whether the range is done.
    pub(crate) fn deliver(&mut self, id: u64, len: u64) -> (u64, u64, bool) {
        let Some(job) = self.running.get_mut(&id) else {
            return (0, 0, true);
        };
        let keep = len.min(job.end - job.pos);
        let at = job.pos;
        job.pos += keep;
        self.left -= keep;
        self.in_transit += keep;
        self.delivered[job.replica] += keep;
        let done = job.pos == job.end;
        if done {
            self.running.remove(&id);
        }
        (keep, at, done)
    }

    /// Hands the rest of range `id` back for anyone to take.
    pub(crate) fn give_back(&mut self, id: u64) {
        if let Some(job) = self.running.remove(&id)
            && job.pos < job.end
        {
            self.returned.push((job.pos, job.end));
        }
    }

    /// `len` delivered bytes are with the writer now.
    pub(crate) fn handed_over(&mut self, len: u64) {
        self.in_transit -= len;
    }

    /// Every byte is with the writer: no worker is needed any more.
    pub(crate) fn complete(&self) -> bool {
        self.left == 0 && self.in_transit == 0
    }
}

/// What the workers share.
struct Shared {
    replicas: Vec<Replica>,
    remote: String,
    agreed: Agreement,
    plan: Mutex<Plan>,
    /// Woken when a range is handed back or the file is complete.
    changed: Wakeup,
    /// Per agreeing member: left out of this file.
    out: Vec<AtomicBool>,
    options: DownloadOptions,
    started: Instant,
    /// Bytes delivered in this run, for `--limit-rate`.
    paced: Mutex<u64>,
}

impl Shared {
    fn plan(&self) -> MutexGuard<'_, Plan> {
        self.plan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sleeps as long as `--limit-rate` asks after `bytes` more arrived.
    async fn pace(&self, bytes: u64) {
        let Some(rate) = self.options.limit_rate else {
            return;
        };
        let total = {
            let mut paced = self.paced.lock().unwrap_or_else(|p| p.into_inner());
            *paced += bytes;
            *paced
        };
        let due = Duration::from_secs_f64(total as f64 / rate as f64);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(ahead).await;
        }
    }
}

/// How one range ended badly.
enum Stopped {
    /// The replica failed (the error says how).
    Failed(Error),
    /// The writer thread is gone; its own error says why.
    WriterGone,
}

/// Downloads `remote` to `dest` from every member of `agreed` at once.
pub(crate) async fn download_striped(
    replicas: &[Replica],
    remote: &str,
    dest: &Path,
    agreed: &Agreement,
    options: &DownloadOptions,
) -> Result<Delivered> {
    if dest.is_dir() {
        return Err(Error::Usage(format!(
            "{}: is a directory; name a file with -o",
            dest.display()
        )));
    }
    let first = &replicas[agreed.members[0].replica].client;
    if !options.force && local_copy_matches(first, remote, dest, agreed).await {
        return Ok(Delivered {
            report: Report {
                bytes: agreed.size,
                transferred: 0,
                reused: 0,
                sha256: agreed.sha256,
                outcome: Outcome::Skipped,
            },
            servers: Vec::new(),
        });
    }
    let dest_owned = dest.to_path_buf();
    let mut part = blocking(move || PartFile::open(&dest_owned)).await?;
    let prefix = resume_point(replicas, remote, agreed, &mut part, options).await?;
    let from = prefix.bytes();
    options.progress_start(agreed.size, from);

    let members: Vec<Replica> = agreed
        .members
        .iter()
        .map(|member| replicas[member.replica].clone())
        .collect();
    let workers = members.len() * WORKERS_PER_REPLICA;
    let shared = Arc::new(Shared {
        plan: Mutex::new(Plan::new(
            from,
            agreed.size,
            range_bytes(agreed.size - from, workers),
            members.len(),
        )),
        out: members.iter().map(|_| AtomicBool::new(false)).collect(),
        replicas: members,
        remote: remote.to_string(),
        agreed: agreed.clone(),
        changed: Wakeup::new(),
        options: options.clone(),
        started: Instant::now(),
        paced: Mutex::new(0),
    });

    let (writes, queue) = mpsc::channel::<(u64, Bytes)>(WRITE_QUEUE);
    let writer = tokio::task::spawn_blocking(move || write_ranges(part, queue, prefix));
    let mut running = JoinSet::new();
    for member in 0..shared.replicas.len() {
        for slot in 0..WORKERS_PER_REPLICA {
            let (shared, writes) = (Arc::clone(&shared), writes.clone());
            running.spawn(work(shared, member, slot == 0, writes));
        }
    }
    drop(writes);
    let mut last_error = None;
    while let Some(joined) = running.join_next().await {
        if let Ok(Some(err)) = joined {
            last_error.get_or_insert(err);
        }
        if shared.plan().complete() {
            // Workers backing off after a failure are not needed any more.
            running.abort_all();
        }
    }
    let written = writer
        .await
        .map_err(|err| Error::io(dest, io::Error::other(err)))?;
    let Written {
        mut part,
        whole,
        hashed,
        failed: write_failed,
    } = written;
    let (complete, delivered) = {
        let plan = shared.plan();
        (plan.complete(), plan.delivered.clone())
    };
    let servers: Vec<String> = shared
        .replicas
        .iter()
        .zip(&delivered)
        .filter(|(_, bytes)| **bytes > 0)
        .map(|(replica, _)| replica.label.clone())
        .collect();
    let transferred: u64 = delivered.iter().sum();
    let failure = match (write_failed, hashed) {
        (Some(err), _) | (None, Err(err)) => Err(err),
        (None, Ok(_)) if !complete => Err(last_error.unwrap_or_else(|| Error::Unreachable {
            server: shown(remote),
            reason: "no replica could deliver the rest of the file".into(),
        })),
        (None, Ok(hasher)) => Ok(hasher),
    };
    let actual = match failure {
        Ok(hasher) => hasher.finalize(),
        Err(err) => {
            options.progress_abandon();
            // Keep what is whole from byte 0: a later run resumes from it.
            blocking(move || {
                part.truncate(whole)?;
                if part.is_empty() {
                    part.discard()
                } else {
                    Ok(())
                }
            })
            .await?;
            return Err(err);
        }
    };
    if actual == agreed.sha256 {
        blocking(move || part.commit()).await?;
        options.progress_done();
        return Ok(Delivered {
            report: Report {
                bytes: agreed.size,
                transferred,
                reused: 0,
                sha256: actual,
                outcome: Outcome::Downloaded,
            },
            servers,
        });
    }
    // Some replica sent bytes that are not the agreed file: fetch it whole
    // from one replica, which verifies against that replica's own digest.
    blocking(move || part.discard()).await?;
    let first = &replicas[agreed.members[0].replica];
    (options.notify)(&format!(
        "{}: the bytes from {} do not add up to the agreed sha256; fetching it again from {}",
        shown(remote),
        servers.join(", "),
        first.label
    ));
    let report = download::download_file(&first.client, remote, dest, None, options).await?;
    Ok(Delivered {
        report: Report {
            transferred: report.transferred + transferred,
            reused: report.reused,
            ..report
        },
        servers: vec![first.label.clone()],
    })
}

/// True when `dest` already holds the agreed file (the single-server
/// check, with the agreed digest as the known one: no call is made).
async fn local_copy_matches(
    client: &Client,
    remote: &str,
    dest: &Path,
    agreed: &Agreement,
) -> bool {
    match std::fs::metadata(dest) {
        Ok(meta) if meta.is_file() && meta.len() == agreed.size => {}
        _ => return false,
    }
    let local = download::matching_local_copy(client, remote, dest, Some(agreed.sha256)).await;
    matches!(local, Ok(Some(_)))
}

/// How much of `part` is a valid prefix of the agreed file, hashed: the
/// first agreeing replica that answers compares its prefix digest with
/// the part's (a `Read` of no bytes at the part's length). A part that
/// does not match starts again from 0.
async fn resume_point(
    replicas: &[Replica],
    remote: &str,
    agreed: &Agreement,
    part: &mut PartFile,
    options: &DownloadOptions,
) -> Result<Hasher> {
    let have = part.len();
    if have == 0 {
        return Ok(Hasher::new());
    }
    let reader = part.reader()?;
    let path = part.path().to_path_buf();
    let local = blocking(move || {
        checksum::hash_prefix(reader, Some(have)).map_err(|err| Error::io(&path, err))
    });
    let remote_prefix = async {
        let mut last = None;
        if have > agreed.size {
            return Ok(None);
        }
        for member in &agreed.members {
            let client = &replicas[member.replica].client;
            let started = async {
                let mut stream = client.read(remote, have, Some(0)).await?;
                match stream.next().await? {
                    Some(ReadEvent::Start(start)) if Some(start.version) == member.version => {
                        Ok(start.prefix_sha256)
                    }
                    _ => Ok(None),
                }
            };
            match started.await {
                Ok(prefix) => return Ok(prefix),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| Error::Usage("no replica to resume from".into())))
    };
    let (local, remote_prefix) = tokio::join!(local, remote_prefix);
    let local = local?;
    if remote_prefix? == Some(local.snapshot()) {
        (options.notify)(&format!(
            "{}: resuming at byte {have} from {}",
            shown(remote),
            part.path().display()
        ));
        return Ok(local);
    }
    (options.notify)(&format!(
        "{}: the partial download does not match the replicas' file; starting again from byte 0",
        shown(remote)
    ));
    part.truncate(0)?;
    Ok(Hasher::new())
}

/// One worker of `member`: takes ranges until the file is complete or the
/// replica is left out. Returns the error that left it out.
async fn work(
    shared: Arc<Shared>,
    member: usize,
    speaks: bool,
    writes: mpsc::Sender<(u64, Bytes)>,
) -> Option<Error> {
    let replica = &shared.replicas[member];
    let mut streak = replica.client.retry_policy().streak();
    let subject = format!("{}: {}", replica.label, shown(&shared.remote));
    let quiet: &(dyn Fn(&str) + Sync) = &|_| {};
    loop {
        let wakeup = shared.changed.notified();
        tokio::pin!(wakeup);
        wakeup.as_mut().enable();
        let taken = {
            let mut plan = shared.plan();
            if plan.complete() || shared.out[member].load(Ordering::Relaxed) {
                return None;
            }
            plan.take(member)
        };
        let Some((id, start, end)) = taken else {
            wakeup.await;
            continue;
        };
        let before = shared.plan().delivered[member];
        let result = fetch_range(&shared, member, id, start, end, &writes).await;
        let progressed = shared.plan().delivered[member] > before;
        match result {
            Ok(()) => streak.progressed(),
            Err(Stopped::WriterGone) => {
                shared.plan().give_back(id);
                return None;
            }
            Err(Stopped::Failed(err)) => {
                shared.plan().give_back(id);
                shared.changed.notify_waiters();
                if progressed {
                    streak.progressed();
                }
                let notify: &(dyn Fn(&str) + Sync) = if speaks {
                    &*shared.options.notify
                } else {
                    quiet
                };
                if Cause::of(&err).is_some() && streak.wait(&subject, &err, notify).await {
                    continue;
                }
                if !shared.out[member].swap(true, Ordering::Relaxed) {
                    (shared.options.notify)(&format!(
                        "{}: {err}; its ranges go to the other replicas",
                        replica.label
                    ));
                }
                shared.changed.notify_waiters();
                return Some(err);
            }
        }
    }
}

/// Streams range `id` (`start..end`) from `member` into the writer.
async fn fetch_range(
    shared: &Shared,
    member: usize,
    id: u64,
    start: u64,
    end: u64,
    writes: &mpsc::Sender<(u64, Bytes)>,
) -> std::result::Result<(), Stopped> {
    let client = &shared.replicas[member].client;
    let remote = &shared.remote;
    let version = shared.agreed.members[member].version;
    let mut stream = client
        .read_range(remote, start, end - start)
        .await
        .map_err(Stopped::Failed)?;
    match stream.next().await.map_err(Stopped::Failed)? {
        Some(ReadEvent::Start(head))
            if head.entry.size == shared.agreed.size
                && (version.is_none() || Some(head.version) == version) => {}
        Some(ReadEvent::Start(_)) => {
            return Err(Stopped::Failed(Error::Changed {
                path: shown(remote),
            }));
        }
        _ => {
            return Err(Stopped::Failed(Error::Protocol {
                path: shown(remote),
                reason: "the stream did not start with a header".into(),
            }));
        }
    }
    loop {
        match stream.next().await.map_err(Stopped::Failed)? {
            Some(ReadEvent::Data(chunk)) => {
                let (keep, at, done) = shared.plan().deliver(id, chunk.len() as u64);
                if keep > 0 {
                    shared.options.progress.inc(keep);
                    shared.pace(keep).await;
                    let sent = writes.send((at, chunk.slice(..keep as usize))).await;
                    let complete = {
                        let mut plan = shared.plan();
                        plan.handed_over(keep);
                        plan.complete()
                    };
                    if sent.is_err() {
                        return Err(Stopped::WriterGone);
                    }
                    if complete {
                        shared.changed.notify_waiters();
                    }
                }
                if done {
                    // Stolen from, or all of it: the rest of the stream (if
                    // any) is someone else's; dropping it cancels the call.
                    return Ok(());
                }
            }
            Some(_) | None => {
                return Err(Stopped::Failed(Error::Protocol {
                    path: shown(remote),
                    reason: "the range ended before its last byte".into(),
                }));
            }
        }
    }
}

/// What the writer thread leaves.
struct Written {
    part: PartFile,
    /// The part is whole (every byte written) up to here.
    whole: u64,
    /// The hash of bytes `0..whole`.
    hashed: Result<Hasher>,
    /// A write that failed.
    failed: Option<Error>,
}

/// Writes every chunk at its offset and hashes the part's whole prefix in
/// order on a second thread, reading it back. Stops at the first failed
/// write (dropping the queue stops the workers).
fn write_ranges(
    mut part: PartFile,
    mut queue: mpsc::Receiver<(u64, Bytes)>,
    prefix: Hasher,
) -> Written {
    let mut whole = Whole::new(prefix.bytes());
    let reader = match part.reader() {
        Ok(reader) => reader,
        Err(err) => {
            return Written {
                part,
                whole: prefix.bytes(),
                hashed: Ok(prefix),
                failed: Some(err),
            };
        }
    };
    let path = part.path().to_path_buf();
    let (marks, marked) = std::sync::mpsc::channel::<u64>();
    let hashing = std::thread::spawn(move || hash_in_order(reader, prefix, &marked, &path));
    let mut failed = None;
    while let Some((at, data)) = queue.blocking_recv() {
        if let Err(err) = part.write_at(at, &data) {
            failed = Some(err);
            break;
        }
        if let Some(mark) = whole.add(at, at + data.len() as u64) {
            let _ = marks.send(mark);
        }
    }
    drop(queue);
    drop(marks);
    let hashed = hashing.join().unwrap_or_else(|_| {
        Err(Error::io(
            part.path(),
            io::Error::other("the hasher failed"),
        ))
    });
    Written {
        part,
        whole: whole.upto,
        hashed,
        failed,
    }
}

/// Hashes the file from where `hasher` stands up to each mark as it comes.
fn hash_in_order(
    reader: std::fs::File,
    mut hasher: Hasher,
    marks: &std::sync::mpsc::Receiver<u64>,
    path: &Path,
) -> Result<Hasher> {
    use std::os::unix::fs::FileExt;
    let mut buffer = vec![0u8; 1 << 20];
    for mut mark in marks {
        // Catch up to the newest mark in one go.
        while let Ok(newer) = marks.try_recv() {
            mark = newer;
        }
        while hasher.bytes() < mark {
            let want = (mark - hasher.bytes()).min(buffer.len() as u64) as usize;
            reader
                .read_exact_at(&mut buffer[..want], hasher.bytes())
                .map_err(|err| Error::io(path, err))?;
            hasher.update(&buffer[..want]);
        }
    }
    Ok(hasher)
}

/// How far a file written out of order is whole from byte 0.
#[derive(Debug)]
pub(crate) struct Whole {
    /// Bytes `0..upto` are all written.
    pub upto: u64,
    /// Written pieces past `upto`: start -> end, and end -> start.
    starts: BTreeMap<u64, u64>,
    ends: HashMap<u64, u64>,
}

impl Whole {
    /// Whole up to `upto` so far.
    pub(crate) fn new(upto: u64) -> Whole {
        Whole {
            upto,
            starts: BTreeMap::new(),
            ends: HashMap::new(),
        }
    }

    /// Records bytes `start..end` as written (pieces never overlap); the
    /// new whole length when it grew.
    pub(crate) fn add(&mut self, start: u64, end: u64) -> Option<u64> {
        let (mut start, mut end) = (start, end);
        if let Some(before) = self.ends.remove(&start) {
            self.starts.remove(&before);
            start = before;
        }
        if let Some(after) = self.starts.remove(&end) {
            self.ends.remove(&after);
            end = after;
        }
        if start == self.upto {
            self.upto = end;
            return Some(end);
        }
        self.starts.insert(start, end);
        self.ends.insert(end, start);
        None
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::io("<blocking>", io::Error::other(err)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte is handed out once, steals included, and the plan is
    /// complete exactly when all of them are delivered.
    #[test]
    fn the_plan_hands_out_every_byte_once() {
        let size = 40 << 20;
        let mut plan = Plan::new(3, size, 8 << 20, 2);
        let mut seen = vec![false; size as usize];
        let mut open = Vec::new();
        // Take everything, then steal twice, then deliver all in pieces.
        while let Some(job) = plan.take(0) {
            open.push(job);
            if open.len() > 12 {
                break;
            }
        }
        assert!(plan.running.len() > 5, "fresh ranges and steals");
        while let Some((id, _, _)) = open.pop() {
            loop {
                let (keep, at, done) = plan.deliver(id, 300_001);
                plan.handed_over(keep);
                for byte in &mut seen[at as usize..(at + keep) as usize] {
                    assert!(!*byte, "byte {at} twice");
                    *byte = true;
                }
                if done {
                    break;
                }
            }
        }
        while let Some((id, _, _)) = plan.take(1) {
            loop {
                let (keep, _, done) = plan.deliver(id, 1 << 20);
                plan.handed_over(keep);
                if done {
                    break;
                }
            }
        }
        // What was delivered after the first pass is covered too.
        assert!(plan.complete());
        assert_eq!(plan.delivered.iter().sum::<u64>(), size - 3);
    }

    /// A range handed back goes to the next taker.
    #[test]
    fn a_failed_range_is_taken_again() {
        let mut plan = Plan::new(0, 10 << 20, 4 << 20, 2);
        let (id, start, _) = plan.take(0).expect("a range");
        plan.deliver(id, 1000);
        plan.give_back(id);
        let (_, again, end) = plan.take(1).expect("handed back");
        assert_eq!((again, end), (start + 1000, 4 << 20));
    }

    /// Pieces in any order make the file whole once the gaps close.
    #[test]
    fn whole_grows_when_gaps_close() {
        let mut whole = Whole::new(10);
        assert_eq!(whole.add(30, 40), None);
        assert_eq!(whole.add(20, 30), None);
        assert_eq!(whole.add(10, 20), Some(40));
        assert_eq!(whole.add(50, 60), None);
        assert_eq!(whole.add(40, 50), Some(60));
        assert!(whole.starts.is_empty() && whole.ends.is_empty());
    }
}
