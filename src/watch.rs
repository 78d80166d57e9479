//! Hot reload of mounted files: watches the files herald reads while it runs (route scripts,
//! the JWT public key) and tells their owners to reread them. It owns the watching (inotify
//! through notify, an optional polling fallback, SIGHUP); whether a file's content changed, and
//! what a change means, is each owner's business ([`Reloadable`]).
//!
//! Files reach a pod in ways that never touch the file's own path. The kubelet updates a
//! ConfigMap or Secret volume by renaming a `..data` symlink inside the directory (the files are
//! symlinks through it); git-sync swaps a symlink to a whole worktree above it; editors save in
//! place or by renaming a temporary file. So any event in a file's directory counts, and so do
//! events on the directory itself and on each symlinked directory on the way to it (watched from
//! their parents, filtered by name). After each burst of events the watches are set up anew,
//! because the same paths may now lead to other directories; every owner then rereads and
//! compares, so nothing that changed meanwhile is missed.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::supervise::Supervisor;

/// Something that reads files at run time and can reread them.
pub trait Reloadable: Send + Sync {
    /// The files it reads, as configured (not resolved through symlinks).
    fn watched_files(&self) -> Vec<PathBuf>;
    /// Rereads them: applies what changed, keeps the running version of what fails (saying so,
    /// once), does nothing when nothing changed.
    fn reload(&self);
}

/// When to look again.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet time after the last event of a burst (`routes.reload_debounce_ms`).
    pub debounce: Duration,
    /// Reread everything this often whatever the events (`routes.reload_poll_secs`), for
    /// filesystems that report none.
    pub poll: Option<Duration>,
}

/// How soon to try again when a directory could not be watched (it may be mid-swap).
const REARM_RETRY: Duration = Duration::from_secs(1);

/// Starts watching the owners' files, until the supervisor's stop. An error if a directory that
/// holds one of the files cannot be watched now.
pub fn spawn(owners: Vec<Arc<dyn Reloadable>>, timing: Timing, supervisor: &Supervisor) -> anyhow::Result<()> {
    let files = all_files(&owners);
    let changed = Arc::new(Notify::new());
    let (mut watch, failures) = arm(&files, &changed)?;
    if let Some((dir, e)) = failures.into_iter().find(|(dir, _)| files.iter().any(|f| f.parent() == Some(dir))) {
        anyhow::bail!("cannot watch {}: {e}", dir.display());
    }
    if !files.is_empty() {
        info!(files = ?files, poll_secs = timing.poll.map(|p| p.as_secs()), "Watching files for changes.");
    }
    let cancel = supervisor.stop_token();
    supervisor.spawn("file watcher", async move {
        let mut hangups = hangup_signals();
        let mut poll = timing.poll.map(tokio::time::interval);
        // Set up again (and everything reread) once a burst of events has been quiet this long.
        let mut due: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    drop(watch); // stops the watches
                    return;
                }
                _ = changed.notified() => due = Some(Instant::now() + timing.debounce),
                _ = sleep_until(due), if due.is_some() => {
                    due = None;
                    let files = all_files(&owners);
                    match arm(&files, &changed) {
                        Ok((rearmed, failures)) => {
                            watch = rearmed;
                            if !failures.is_empty() {
                                for (dir, e) in &failures {
                                    debug!(dir = %dir.display(), error = %e, "Cannot watch yet; trying again.");
                                }
                                due = Some(Instant::now() + REARM_RETRY);
                            }
                        }
                        Err(e) => {
                            warn!(error = %e, "Cannot set up file watching again; keeping the previous watches.");
                            due = Some(Instant::now() + REARM_RETRY);
                        }
                    }
                    reload_all(&owners);
                }
                _ = tick(&mut poll) => reload_all(&owners),
                Some(()) = recv_hangup(&mut hangups) => {
                    info!("SIGHUP: rereading watched files.");
                    reload_all(&owners);
                }
            }
        }
    });
    Ok(())
}

fn all_files(owners: &[Arc<dyn Reloadable>]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = owners.iter().flat_map(|o| o.watched_files()).filter_map(|f| std::path::absolute(f).ok()).collect();
    files.sort();
    files.dedup();
    files
}

fn reload_all(owners: &[Arc<dyn Reloadable>]) {
    for owner in owners {
        owner.reload();
    }
}

/// The directories to watch, each with the entries in it whose events matter (`None`: all).
type Plan = BTreeMap<PathBuf, Option<BTreeSet<OsString>>>;

/// Each file's directory (every entry: the kubelet's `..data` swap happens beside the file),
/// and, by name in their parents, the directory itself and each symlink on the way to it.
fn plan(files: &[PathBuf]) -> Plan {
    let mut plan = Plan::new();
    for dir in files.iter().filter_map(|f| f.parent()) {
        plan.insert(dir.to_path_buf(), None);
    }
    for dir in files.iter().filter_map(|f| f.parent()) {
        let mut ancestor = Some(dir);
        while let Some(a) = ancestor {
            let swappable = a == dir || a.symlink_metadata().is_ok_and(|m| m.file_type().is_symlink());
            if let (true, Some(parent), Some(name)) = (swappable, a.parent(), a.file_name()) {
                // `None`: already watched for every entry.
                if let Some(names) = plan.entry(parent.to_path_buf()).or_insert_with(|| Some(BTreeSet::new())) {
                    names.insert(name.to_os_string());
                }
            }
            ancestor = a.parent();
        }
    }
    plan
}

/// Whether an event on `path` can change what a watched file reads.
fn matters(plan: &Plan, path: &Path) -> bool {
    if plan.contains_key(path) {
        return true; // a watched directory itself removed or moved
    }
    match (path.parent().and_then(|dir| plan.get(dir)), path.file_name()) {
        (Some(None), _) => true,
        (Some(Some(names)), Some(name)) => names.contains(name),
        _ => false,
    }
}

/// A new watcher over the plan for `files`, signalling `changed`; with the directories that
/// could not be watched (missing mid-swap, say), which the caller retries.
fn arm(files: &[PathBuf], changed: &Arc<Notify>) -> notify::Result<(RecommendedWatcher, Vec<(PathBuf, notify::Error)>)> {
    let plan = Arc::new(plan(files));
    let (signal, filter) = (changed.clone(), plan.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
        // Opens and closes are herald's own reads, among others: never a change.
        Ok(event) if matches!(event.kind, EventKind::Access(_)) => {}
        // A lost-events notice (queue overflow) says nothing about which file: reread all.
        Ok(event) if event.need_rescan() || event.paths.iter().any(|p| matters(&filter, p)) => signal.notify_one(),
        Ok(_) => {}
        Err(e) => {
            warn!(error = %e, "File watcher error; rereading the watched files.");
            signal.notify_one();
        }
    })?;
    let mut failures = Vec::new();
    for dir in plan.keys() {
        if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            failures.push((dir.clone(), e));
        }
    }
    Ok((watcher, failures))
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = Option<()>;

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}
#[cfg(not(unix))]
fn hangup_signals() -> Hangups {
    None
}

#[cfg(unix)]
async fn recv_hangup(signals: &mut Hangups) -> Option<()> {
    match signals {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}
#[cfg(not(unix))]
async fn recv_hangup(_: &mut Hangups) -> Option<()> {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Option<BTreeSet<OsString>> {
        Some(list.iter().map(OsString::from).collect())
    }

    #[test]
    fn a_files_directory_counts_whole_and_the_directory_itself_by_name() {
        let root = tempfile::tempdir().unwrap();
        let routes = root.path().join("routes");
        std::fs::create_dir(&routes).unwrap();
        let plan = plan(&[routes.join("a.rhai"), routes.join("b.rhai")]);
        assert_eq!(plan.get(&routes), Some(&None));
        assert_eq!(plan.get(root.path()), Some(&names(&["routes"])));
        assert!(matters(&plan, &routes.join("..data")), "the kubelet's swap beside the file");
        assert!(matters(&plan, &routes.join("..2026_12_06_v2")));
        assert!(matters(&plan, &routes), "the directory removed or moved");
        assert!(matters(&plan, &root.path().join("routes")));
        assert!(!matters(&plan, &root.path().join("config.yaml")), "other entries of the parent");
    }

    #[test]
    fn a_symlinked_directory_on_the_way_is_watched_from_its_parent() {
        // git-sync: /root/current -> .worktrees/v1, scripts under /root/current/routes.
        let root = tempfile::tempdir().unwrap();
        let worktree = root.path().join(".worktrees/v1/routes");
        std::fs::create_dir_all(&worktree).unwrap();
        std::os::unix::fs::symlink(".worktrees/v1", root.path().join("current")).unwrap();
        let dir = root.path().join("current/routes");
        let plan = plan(&[dir.join("a.rhai")]);
        assert_eq!(plan.get(&dir), Some(&None));
        assert_eq!(plan.get(&root.path().join("current")), Some(&names(&["routes"])));
        assert_eq!(plan.get(root.path()), Some(&names(&["current"])));
        assert!(matters(&plan, &root.path().join("current")), "the worktree link swapped");
        assert!(!matters(&plan, &root.path().join(".worktrees")));
    }

    #[test]
    fn a_directory_watched_whole_stays_whole() {
        // The key in /etc/herald and a script in /etc/herald/routes: /etc/herald is watched for
        // every entry, not only for `routes`.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("routes")).unwrap();
        let plan = plan(&[root.path().join("key.pem"), root.path().join("routes/a.rhai")]);
        assert_eq!(plan.get(root.path()), Some(&None));
    }
}
