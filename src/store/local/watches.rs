//! Folder watches shared by every tail: one inotify watch per folder, however
//! many streams follow files in it.
//!
//! The server has one notify watcher (one inotify instance: Linux allows
//! only 128 per user by default) and one watch per folder that any tail is
//! in, keyed by the folder's device and inode. The watch is made on
//! `/proc/self/fd/N` of the folder's handle as the sandbox resolved it: the
//! kernel turns that into exactly the folder the handle holds, so no path
//! string from a request ever reaches inotify. The watch sticks to the
//! folder's inode, also when the folder is renamed.
//!
//! notify's callback never queues anything: it bumps counters in
//! `tokio::sync::watch` channels, one per followed name and one for the whole
//! folder. A burst of a million writes costs a waiting stream one wake-up,
//! and memory does not grow with the number of events. The counters also say
//! whether an event may have changed which file a name refers to (create,
//! delete, rename, the folder itself moved) or only its data.
//!
//! When the watcher or a watch cannot be made (inotify limits, no `/proc`),
//! the folder's streams poll every [`TAIL_POLL_INTERVAL`] instead; the first
//! such failure is logged once.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use cap_std::fs::Dir;
use notify::event::{EventKind, ModifyKind};
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::watch;

/// How often a stream re-checks its file when its folder cannot be watched
/// (or does not exist yet).
pub(crate) const TAIL_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Device and inode of a folder.
pub(crate) type FolderId = (u64, u64);

/// Counters of the events that touched one name (or a whole folder).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Stamp {
    /// Every event (data written, truncation, creation, ...).
    changes: u64,
    /// Events that may have changed which file the name refers to.
    renames: u64,
}

/// What woke a waiting stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Wake {
    /// The name may refer to another file now: resolve the path again.
    pub renamed: bool,
}

/// The registry of folder watches; cheap to clone (clones share it).
#[derive(Clone, Debug, Default)]
pub(crate) struct Watches {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// The one watcher, made when the first folder is watched.
    watcher: Mutex<Option<RecommendedWatcher>>,
    /// Watched folders. Lock order: `folders`, then `watcher` or `routes`.
    folders: Mutex<HashMap<FolderId, Registered>>,
    /// Where the callback sends events; it only ever takes this lock.
    routes: Arc<Routes>,
    /// A failure to watch was logged.
    warned: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("folders", &lock(&self.folders).len())
            .finish_non_exhaustive()
    }
}

struct Registered {
    folder: Weak<FolderWatch>,
    /// The `/proc/self/fd/N` path the watch was made on; `None` if polling.
    watched: Option<PathBuf>,
}

/// Watched path -> the folder's signals.
#[derive(Default)]
struct Routes(Mutex<HashMap<PathBuf, Arc<Signals>>>);

/// The counters of one folder.
#[derive(Debug)]
struct Signals {
    names: Mutex<HashMap<OsString, watch::Sender<Stamp>>>,
    any: watch::Sender<Stamp>,
}

/// One watched folder, alive while a subscription holds it; dropping the
/// last one removes the inotify watch.
#[derive(Debug)]
pub(crate) struct FolderWatch {
    id: FolderId,
    signals: Arc<Signals>,
    polling: bool,
    /// Kept open so that `/proc/self/fd/N` keeps naming this folder.
    _handle: Dir,
    shared: Weak<Shared>,
}

/// A stream's interest in one name in one folder.
#[derive(Debug)]
pub(crate) struct Subscription {
    folder: Arc<FolderWatch>,
    name: OsString,
    own: watch::Receiver<Stamp>,
    /// Every event of the folder. Subscribed from the start (not when
    /// widening), so an event that comes while the stream decides to widen
    /// still wakes it.
    any: watch::Receiver<Stamp>,
    widened: bool,
    seen_renames: u64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Watches {
    /// Subscribes to events for `name` in `folder` (a sandbox-resolved
    /// handle whose device and inode are `id`), watching the folder if no
    /// one does yet. Blocking: it talks to the watcher thread.
    pub(crate) fn subscribe(&self, folder: Dir, id: FolderId, name: &str) -> Subscription {
        let folder_watch = {
            let mut folders = lock(&self.shared.folders);
            match folders.get(&id).and_then(|known| known.folder.upgrade()) {
                Some(existing) => existing,
                None => {
                    // A watch whose last subscriber is being dropped right
                    // now: remove it here, before watching the same inode
                    // again (inotify would hand out the same descriptor).
                    if let Some(stale) = folders.remove(&id) {
                        self.shared.forget(stale.watched.as_deref());
                    }
                    let (created, watched) = self.watch_folder(folder, id);
                    folders.insert(
                        id,
                        Registered {
                            folder: Arc::downgrade(&created),
                            watched,
                        },
                    );
                    created
                }
            }
        };
        FolderWatch::subscribe(folder_watch, name)
    }

    /// Folders watched now (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn watched_folders(&self) -> usize {
        lock(&self.shared.folders)
            .values()
            .filter(|known| known.watched.is_some() && known.folder.strong_count() > 0)
            .count()
    }

    fn watch_folder(&self, folder: Dir, id: FolderId) -> (Arc<FolderWatch>, Option<PathBuf>) {
        let signals = Arc::new(Signals {
            names: Mutex::default(),
            any: watch::channel(Stamp::default()).0,
        });
        let path = PathBuf::from(format!("/proc/self/fd/{}", folder.as_raw_fd()));
        let mut watcher = lock(&self.shared.watcher);
        if watcher.is_none() {
            let routes = Arc::clone(&self.shared.routes);
            match notify::recommended_watcher(move |event| routes.dispatch(event)) {
                Ok(made) => *watcher = Some(made),
                Err(err) => self.shared.warn_once(&err),
            }
        }
        let watched = watcher.as_mut().and_then(|watcher| {
            self.shared
                .routes
                .insert(path.clone(), Arc::clone(&signals));
            match watcher.watch(&path, RecursiveMode::NonRecursive) {
                Ok(()) => Some(path.clone()),
                Err(err) => {
                    self.shared.routes.remove(&path);
                    self.shared.warn_once(&err);
                    None
                }
            }
        });
        let created = Arc::new(FolderWatch {
            id,
            signals,
            polling: watched.is_none(),
            _handle: folder,
            shared: Arc::downgrade(&self.shared),
        });
        (created, watched)
    }
}

impl Shared {
    /// Removes a folder's route and inotify watch.
    fn forget(&self, watched: Option<&Path>) {
        let Some(path) = watched else { return };
        self.routes.remove(path);
        if let Some(watcher) = lock(&self.watcher).as_mut() {
            // Fails when inotify already dropped it (the folder was deleted).
            let _ = watcher.unwatch(path);
        }
    }

    fn warn_once(&self, err: &notify::Error) {
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                %err,
                interval = ?TAIL_POLL_INTERVAL,
                "cannot watch a folder for tail (inotify limit or no /proc?); \
                 tails there check their file at the interval instead"
            );
        }
    }
}

impl Drop for FolderWatch {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut folders = lock(&shared.folders);
        let ours = folders
            .get(&self.id)
            .is_some_and(|known| std::ptr::eq(known.folder.as_ptr(), self));
        if ours && let Some(known) = folders.remove(&self.id) {
            shared.forget(known.watched.as_deref());
        }
    }
}

impl FolderWatch {
    fn subscribe(folder: Arc<FolderWatch>, name: &str) -> Subscription {
        let name = OsString::from(name);
        let own = lock(&folder.signals.names)
            .entry(name.clone())
            .or_insert_with(|| watch::channel(Stamp::default()).0)
            .subscribe();
        let any = folder.signals.any.subscribe();
        let seen_renames = own.borrow().renames;
        Subscription {
            folder,
            name,
            own,
            any,
            widened: false,
            seen_renames,
        }
    }
}

impl Subscription {
    /// The watched folder.
    pub(crate) fn folder_id(&self) -> FolderId {
        self.folder.id
    }

    /// The name events are taken for.
    pub(crate) fn name(&self) -> &OsStr {
        &self.name
    }

    /// True when the folder could not be watched and waits are timed.
    pub(crate) fn is_polling(&self) -> bool {
        self.folder.polling
    }

    /// Wakes for every event in the folder, not only those naming the
    /// file: while the stream still reads a file that left its name (renamed
    /// within the folder), its writes show up under another name.
    pub(crate) fn widen(&mut self) {
        self.widened = true;
    }

    /// Back to the events naming the file.
    pub(crate) fn narrow(&mut self) {
        self.widened = false;
    }

    /// Waits for the next event since the last wait (or since the
    /// subscription was made), or for the poll interval when polling.
    /// Events that arrive while the caller works are not lost: the next wait
    /// returns at once.
    pub(crate) async fn wait(&mut self) -> Wake {
        let polling = self.folder.polling;
        let widened = self.widened;
        let receiver = if widened {
            &mut self.any
        } else {
            &mut self.own
        };
        let changed = if polling {
            tokio::select! {
                changed = receiver.changed() => changed.is_ok(),
                () = tokio::time::sleep(TAIL_POLL_INTERVAL) => return Wake { renamed: true },
            }
        } else {
            receiver.changed().await.is_ok()
        };
        if !changed {
            // Cannot happen while the folder lives; never spin if it does.
            tokio::time::sleep(TAIL_POLL_INTERVAL).await;
            return Wake { renamed: true };
        }
        let stamp = *receiver.borrow_and_update();
        if widened {
            return Wake { renamed: true };
        }
        let renamed = stamp.renames != self.seen_renames;
        self.seen_renames = stamp.renames;
        Wake { renamed }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut names = lock(&self.folder.signals.names);
        if names
            .get(&self.name)
            .is_some_and(|sender| sender.receiver_count() <= 1)
        {
            names.remove(&self.name);
        }
    }
}

impl Routes {
    fn insert(&self, path: PathBuf, signals: Arc<Signals>) {
        lock(&self.0).insert(path, signals);
    }

    fn remove(&self, path: &Path) {
        lock(&self.0).remove(path);
    }

    fn get(&self, path: &Path) -> Option<Arc<Signals>> {
        lock(&self.0).get(path).cloned()
    }

    /// notify's callback: turn one event into counter bumps.
    fn dispatch(&self, event: notify::Result<notify::Event>) {
        let event = match event {
            Ok(event) => event,
            Err(err) => {
                tracing::debug!(%err, "watch error; waking every tail");
                self.bump_everything();
                return;
            }
        };
        let renamed = match event.kind {
            // Opens and closes (ours included) and attribute changes say
            // nothing about the data or the name.
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => return,
            EventKind::Modify(ModifyKind::Data(_)) => false,
            _ => true,
        };
        if event.need_rescan() || event.paths.is_empty() {
            self.bump_everything();
            return;
        }
        for path in &event.paths {
            if let Some(signals) = self.get(path) {
                // The folder itself was moved or deleted.
                signals.bump_all();
            } else if let (Some(folder), Some(name)) = (path.parent(), path.file_name())
                && let Some(signals) = self.get(folder)
            {
                signals.bump(name, renamed);
            }
        }
    }

    /// Queue overflow or a watcher error: anything may have happened.
    fn bump_everything(&self) {
        let all: Vec<Arc<Signals>> = lock(&self.0).values().cloned().collect();
        for signals in all {
            signals.bump_all();
        }
    }
}

impl Signals {
    fn bump(&self, name: &OsStr, renamed: bool) {
        let step = |stamp: &mut Stamp| {
            stamp.changes += 1;
            if renamed {
                stamp.renames += 1;
            }
        };
        if let Some(sender) = lock(&self.names).get(name) {
            sender.send_modify(step);
        }
        self.any.send_modify(step);
    }

    fn bump_all(&self) {
        let step = |stamp: &mut Stamp| {
            stamp.changes += 1;
            stamp.renames += 1;
        };
        for sender in lock(&self.names).values() {
            sender.send_modify(step);
        }
        self.any.send_modify(step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cap_std::ambient_authority;
    use cap_std::fs::MetadataExt;

    const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

    fn folder(path: &Path) -> (Dir, FolderId) {
        let dir = Dir::open_ambient_dir(path, ambient_authority()).expect("open dir");
        let meta = dir.dir_metadata().expect("metadata");
        (dir, (meta.dev(), meta.ino()))
    }

    async fn subscribe(watches: &Watches, path: &Path, name: &str) -> Subscription {
        let (dir, id) = folder(path);
        let (watches, name) = (watches.clone(), name.to_string());
        tokio::task::spawn_blocking(move || watches.subscribe(dir, id, &name))
            .await
            .expect("subscribe")
    }

    async fn woken(subscription: &mut Subscription) -> Wake {
        tokio::time::timeout(EVENT_TIMEOUT, subscription.wait())
            .await
            .expect("an event within the timeout")
    }

    /// Two subscriptions in one folder share one watch; creation wakes with
    /// `renamed`, an append without; the watch goes with the last one.
    #[tokio::test]
    async fn one_watch_per_folder_and_events_by_name() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let watches = Watches::default();
        let mut first = subscribe(&watches, tmp.path(), "a.log").await;
        let mut second = subscribe(&watches, tmp.path(), "a.log").await;
        assert_eq!(watches.watched_folders(), 1);
        assert!(!first.is_polling(), "inotify through /proc/self/fd works");

        std::fs::write(tmp.path().join("a.log"), b"x").expect("create");
        assert!(woken(&mut first).await.renamed);
        assert!(woken(&mut second).await.renamed);

        // Let the creation's events settle, then append.
        while tokio::time::timeout(Duration::from_millis(200), first.wait())
            .await
            .is_ok()
        {}
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(tmp.path().join("a.log"))
            .expect("open");
        std::io::Write::write_all(&mut file, b"more").expect("append");
        assert!(!woken(&mut first).await.renamed);

        tokio::task::spawn_blocking(move || drop((first, second)))
            .await
            .expect("drop");
        assert_eq!(watches.watched_folders(), 0);
    }

    /// A widened subscription wakes for other names in the folder (a
    /// rotated file's writes show up under its new name).
    #[tokio::test]
    async fn widened_wakes_for_other_names() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let watches = Watches::default();
        let mut subscription = subscribe(&watches, tmp.path(), "a.log").await;
        subscription.widen();
        std::fs::write(tmp.path().join("a.log.1"), b"x").expect("create");
        assert!(woken(&mut subscription).await.renamed);
        tokio::task::spawn_blocking(move || drop(subscription))
            .await
            .expect("drop");
    }
}
