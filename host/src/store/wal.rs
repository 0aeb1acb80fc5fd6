//! Checkpoints of SQLite's write-ahead log, made beside the writes instead of inside one.
//!
//! SQLite checkpoints by itself in the connection whose commit takes the log past 1,000
//! pages: that commit (a claim, a batch of results or a submission) then copies the log
//! into the database file and syncs it before it returns, and every write queued for the
//! one write connection waits behind it. On this project's machines a sync takes
//! milliseconds, so those commits made the write path's tail: in the `cache` benchmark
//! (release, 4 runs each), a hit's p99 was 1.2-3.3 ms and a queued submission's 2.7-5.2 ms
//! with the commits checkpointing, and 1.2-1.7 ms and 1.6-2.1 ms without.
//!
//! Here each connection's commit only signals (a WAL hook, [`install`]), and [`run`], a task
//! with a connection of its own, makes a `PASSIVE` checkpoint: it copies what no reader
//! still needs, waits for no one, and holds no lock a write needs. A log that still grows
//! past [`HARD_PAGES`] (the task fell behind, or cannot run) is checkpointed by the
//! committing connection, as SQLite's own hook does, so the log stays bounded.

use std::os::raw::{c_char, c_int, c_void};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::sqlite::SqliteConnectOptions;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Log pages after which a commit asks for a checkpoint: SQLite's own default.
const SOFT_PAGES: c_int = 1000;

/// Log pages after which a commit checkpoints the log itself (about 80 MB of 4 KiB pages).
const HARD_PAGES: c_int = 20_000;

/// The least time between two checkpoints of the task: after a complete checkpoint the log
/// restarts only at the next write, and the commits in between still ask for one.
const PAUSE: Duration = Duration::from_millis(50);

/// What the connections' hooks and the checkpoint task share.
#[derive(Debug, Default)]
pub struct Checkpoints {
    /// Signalled by a commit that left the log past [`SOFT_PAGES`].
    wanted: Notify,
    /// Checkpoints of the task that copied pages into the database file.
    made: AtomicU64,
}

impl Checkpoints {
    /// How many of the task's checkpoints copied pages into the database file.
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }
}

/// Replaces SQLite's automatic checkpoint on `db` with a signal to `checkpoints`' task (and
/// a checkpoint in place past [`HARD_PAGES`]).
///
/// The hook keeps a pointer to `checkpoints` for as long as the connection lives, and SQLite
/// has no call to release it: each connection takes one count of the `Arc` and never gives
/// it back, so a queue's `Checkpoints` (a few dozen bytes) outlives it.
pub fn install(db: NonNull<libsqlite3_sys::sqlite3>, checkpoints: &Arc<Checkpoints>) {
    unsafe extern "C" fn hook(
        arg: *mut c_void,
        db: *mut libsqlite3_sys::sqlite3,
        name: *const c_char,
        pages: c_int,
    ) -> c_int {
        if pages >= HARD_PAGES {
            // SAFETY: SQLite calls the hook with its open connection and the name of the
            // database written, outside any transaction; its own hook does the same call.
            unsafe {
                libsqlite3_sys::sqlite3_wal_checkpoint_v2(
                    db,
                    name,
                    libsqlite3_sys::SQLITE_CHECKPOINT_PASSIVE,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
            }
        } else if pages >= SOFT_PAGES {
            // SAFETY: `arg` is the count of the `Arc` that `install` gave the connection,
            // never released, so it points to a live `Checkpoints`.
            let checkpoints = unsafe { &*arg.cast::<Checkpoints>() };
            checkpoints.wanted.notify_one();
        }
        libsqlite3_sys::SQLITE_OK
    }
    let arg = Arc::into_raw(checkpoints.clone())
        .cast_mut()
        .cast::<c_void>();
    // SAFETY: `db` is an open connection that the caller holds locked; `hook` has the
    // signature SQLite expects, and `arg` stays valid for the connection's life (above).
    unsafe {
        libsqlite3_sys::sqlite3_wal_hook(db.as_ptr(), Some(hook), arg);
    }
}

/// The checkpoint task: until `closed`, a `PASSIVE` checkpoint whenever a commit asks for
/// one, at most one per [`PAUSE`], on a connection of its own to the database of `options`.
pub async fn run(
    options: SqliteConnectOptions,
    checkpoints: Arc<Checkpoints>,
    closed: CancellationToken,
) {
    let mut conn = None;
    // Told once for each run of failures, and again when checkpoints work again.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = checkpoints.wanted.notified() => {}
            _ = closed.cancelled() => break,
        }
        if conn.is_none() {
            match options.connect().await {
                Ok(c) => conn = Some(c),
                Err(e) if !failing => {
                    failing = true;
                    warn!(
                        "checkpointing the database's log: cannot connect ({e}); the writes \
                         will checkpoint it themselves past {HARD_PAGES} pages"
                    );
                }
                Err(_) => {}
            }
        }
        if let Some(c) = conn.as_mut() {
            // `(busy, pages in the log, pages copied)`.
            let done: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut *c)
                .await;
            match done {
                Ok((_, _, copied)) => {
                    if failing {
                        failing = false;
                        info!("checkpointing the database's log again");
                    }
                    if copied > 0 {
                        checkpoints.made.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(e) => {
                    if !failing {
                        failing = true;
                        warn!("checkpointing the database's log: {e}");
                    }
                    conn = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(PAUSE) => {}
            _ = closed.cancelled() => break,
        }
    }
    if let Some(c) = conn {
        let _ = sqlx::Connection::close(c).await;
    }
}
