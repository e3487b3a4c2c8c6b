//! The durable outbox: alerts are appended to a log on disk (and synced) before
//! the input offsets that produced them are stored; each sink keeps a cursor
//! of what it has delivered. After a crash every undelivered alert is still
//! there, and delivered ones are not sent again (beyond an attempt in flight
//! at the moment of the crash, which receivers dedup by alert id / dedup key).
//! Each start, and a running outbox once thousands of delivered entries outnumber
//! the pending ones, rewrites the log with what is still pending, behind a header
//! that keeps what the dropped entries told: the next sequence number and the ids
//! lately delivered.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::detect::Alert;

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("outbox {path}: line {line} is not an outbox entry: {message}")]
    Corrupt {
        path: String,
        line: usize,
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OutboxError + '_ {
    move |source| OutboxError::Io {
        path: path.display().to_string(),
        source,
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    seq: u64,
    alert: Alert,
}

/// The first line of a compacted log.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Header {
    /// The next alert's sequence number: compaction may drop every entry while
    /// the cursors still count their numbers as delivered.
    next_seq: u64,
    /// Ids of alerts lately delivered to every sink, oldest first.
    #[serde(default)]
    delivered: VecDeque<String>,
}

/// One line of the log.
enum Line {
    Header(Header),
    Entry(Box<Entry>),
}

impl Line {
    /// Parses a line; on failure, the error is the one of parsing it as an entry.
    fn parse(line: &[u8]) -> Result<Line, serde_json::Error> {
        match serde_json::from_slice(line) {
            Ok(entry) => Ok(Line::Entry(Box::new(entry))),
            Err(e) => serde_json::from_slice(line)
                .map(Line::Header)
                .map_err(|_| e),
        }
    }
}

/// Whether the bytes hold nothing: blanks, or the zeros a power loss can leave
/// where data was not yet on the disk.
fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| *b == 0 || b.is_ascii_whitespace())
}

/// The header and entries of the log (none if there is no log yet).
fn read_log(path: &Path) -> Result<(Header, Vec<Entry>), OutboxError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Default::default()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let lines: Vec<(usize, &[u8])> = bytes
        .split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .collect();
    let mut header = Header::default();
    let mut entries = Vec::new();
    for (n, &(i, line)) in lines.iter().enumerate() {
        match Line::parse(line) {
            Ok(Line::Entry(entry)) => entries.push(*entry),
            Ok(Line::Header(h)) => header = h,
            // A torn last line (cut short, or zeros after a power loss): it was
            // never synced, so never acknowledged, and its alert will be produced again.
            Err(e) if n + 1 == lines.len() => {
                tracing::warn!(
                    path = %path.display(),
                    line = i + 1,
                    error = %e,
                    "dropping the torn last line of the outbox"
                );
            }
            Err(e) => {
                return Err(OutboxError::Corrupt {
                    path: path.display().to_string(),
                    line: i + 1,
                    message: e.to_string(),
                });
            }
        }
    }
    Ok((header, entries))
}

/// A sink's cursor; none or an empty one (a power loss before its data reached
/// the disk) means nothing delivered yet.
fn read_cursor(path: &Path) -> Result<Cursor, OutboxError> {
    match std::fs::read(path) {
        Ok(bytes) if is_blank(&bytes) => {
            tracing::warn!(
                path = %path.display(),
                "empty outbox cursor; its sink gets every pending alert again"
            );
            Ok(Cursor::default())
        }
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| OutboxError::Corrupt {
            path: path.display().to_string(),
            line: 1,
            message: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Replaces `dir/name` with `bytes`, whole or not at all and durably: a synced
/// temporary file renamed into place, then the folder synced so that the
/// rename itself survives a power loss.
fn replace_durably(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), OutboxError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = File::create(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).map_err(io_err(&tmp))?;
    file.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
    File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(io_err(dir))
}

/// `value` as one line of JSON.
fn json_line(value: &impl Serialize, path: &Path) -> Result<Vec<u8>, OutboxError> {
    let mut line = serde_json::to_vec(value).map_err(|e| io_err(path)(std::io::Error::other(e)))?;
    line.push(b'\n');
    Ok(line)
}

/// What one sink has delivered: everything up to `through`, plus `above` beyond it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Cursor {
    through: u64,
    above: BTreeSet<u64>,
}

impl Cursor {
    fn done(&self, seq: u64) -> bool {
        seq <= self.through || self.above.contains(&seq)
    }

    /// The highest sequence number marked done.
    fn last(&self) -> u64 {
        self.above.last().copied().unwrap_or(self.through)
    }

    fn mark(&mut self, seq: u64) {
        if seq <= self.through {
            return;
        }
        self.above.insert(seq);
        while self.above.remove(&(self.through + 1)) {
            self.through += 1;
        }
    }
}

struct Inner {
    dir: PathBuf,
    log: File,
    next_seq: u64,
    /// Alerts not yet delivered to every sink, by sequence number.
    pending: BTreeMap<u64, Arc<Alert>>,
    cursors: BTreeMap<String, Cursor>,
    /// Entries in flight per sink (taken, not yet finished).
    in_flight: BTreeMap<String, BTreeSet<u64>>,
    /// Ids of alerts lately delivered to every sink, oldest first (bounded), so an
    /// alert detected again after a restart re-read its input is not sent twice.
    /// Kept across restarts by the log: its entries until the next start, then its header.
    delivered: VecDeque<String>,
    /// The same ids, for lookups in constant time (an alert storm appends many).
    delivered_ids: HashSet<String>,
    /// The sequence number of each pending alert, by id.
    pending_ids: HashMap<String, u64>,
    /// Entries in the log file as it is now: pending ones and those delivered
    /// since the last compaction.
    log_entries: usize,
    unsynced: bool,
}

/// The outbox, shared by the pipeline (append) and the sink workers (take, finish).
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Mutex<Inner>>,
}

const LOG: &str = "alerts.log";
/// How many delivered alert ids are remembered against re-detection.
const RECENTLY_DELIVERED: usize = 10_000;
/// The log is compacted while running once it holds this many delivered entries
/// (and more than it holds pending ones), so a long life never grows it without bound.
const COMPACT_AFTER_DELIVERED: usize = 4_096;

impl Outbox {
    /// Opens (or creates) the outbox in `dir` for the named sinks, replaying the
    /// log and the cursors so undelivered alerts are pending again.
    pub fn open(dir: &Path, sinks: &[String]) -> Result<Outbox, OutboxError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let (header, entries) = read_log(&dir.join(LOG))?;
        let mut cursors = BTreeMap::new();
        for sink in sinks {
            let cursor = read_cursor(&dir.join(format!("{sink}.cursor")))?;
            cursors.insert(sink.clone(), cursor);
        }
        // Past every number in use; the cursors count too, for a log compacted
        // (to nothing) before it had a header.
        let next_seq = entries
            .iter()
            .map(|e| e.seq)
            .chain(cursors.values().map(Cursor::last))
            .max()
            .map_or(1, |seq| seq + 1)
            .max(header.next_seq);
        let mut inner = Inner {
            log: File::create(dir.join("alerts.log.tmp")).map_err(io_err(dir))?,
            dir: dir.to_path_buf(),
            next_seq,
            pending: BTreeMap::new(),
            cursors,
            in_flight: BTreeMap::new(),
            delivered: VecDeque::new(),
            delivered_ids: HashSet::new(),
            pending_ids: HashMap::new(),
            log_entries: 0,
            unsynced: false,
        };
        for id in header.delivered {
            inner.remember_delivered(id);
        }
        for entry in entries {
            if inner.cursors.values().any(|c| !c.done(entry.seq)) {
                inner.pending_ids.insert(entry.alert.id.clone(), entry.seq);
                inner.pending.insert(entry.seq, Arc::new(entry.alert));
            } else {
                inner.remember_delivered(entry.alert.id);
            }
        }
        // Rewrite the log with only what is still pending, so it never grows without bound.
        inner.compact()?;
        Ok(Outbox {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Appends an alert; it is durable after the next [`Outbox::sync`]. An alert
    /// whose id is already pending (detected again after a restart re-read its
    /// input) is not queued twice.
    pub fn append(&self, alert: &Alert) -> Result<u64, OutboxError> {
        let mut inner = self.lock();
        if let Some(seq) = inner.pending_ids.get(&alert.id) {
            return Ok(*seq);
        }
        if inner.delivered_ids.contains(&alert.id) {
            return Ok(0);
        }
        let seq = inner.next_seq;
        let path = inner.dir.join(LOG);
        let line = json_line(
            &Entry {
                seq,
                alert: alert.clone(),
            },
            &path,
        )?;
        inner.log.write_all(&line).map_err(io_err(&path))?;
        inner.next_seq += 1;
        inner.unsynced = true;
        inner.log_entries += 1;
        inner.pending_ids.insert(alert.id.clone(), seq);
        inner.pending.insert(seq, Arc::new(alert.clone()));
        Ok(seq)
    }

    /// Makes every appended alert durable (fsync). Called before input offsets are stored.
    pub fn sync(&self) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        if !inner.unsynced {
            return Ok(());
        }
        let path = inner.dir.join(LOG);
        inner.log.sync_data().map_err(io_err(&path))?;
        inner.unsynced = false;
        Ok(())
    }

    /// Up to `max` alerts the sink has neither delivered nor in flight, oldest first.
    pub fn take(&self, sink: &str, max: usize) -> Vec<(u64, Arc<Alert>)> {
        let mut inner = self.lock();
        let Inner {
            pending,
            cursors,
            in_flight,
            ..
        } = &mut *inner;
        let Some(cursor) = cursors.get(sink) else {
            return Vec::new();
        };
        let flying = in_flight.entry(sink.to_string()).or_default();
        if flying.len() >= max {
            return Vec::new();
        }
        let room = max - flying.len();
        let taken: Vec<(u64, Arc<Alert>)> = pending
            .range(cursor.through + 1..)
            .filter(|(seq, _)| !cursor.above.contains(seq) && !flying.contains(seq))
            .take(room)
            .map(|(seq, alert)| (*seq, alert.clone()))
            .collect();
        flying.extend(taken.iter().map(|(seq, _)| *seq));
        taken
    }

    /// Gives an entry back after a failed attempt, to be taken again later.
    pub fn release(&self, sink: &str, seq: u64) {
        let mut inner = self.lock();
        if let Some(flying) = inner.in_flight.get_mut(sink) {
            flying.remove(&seq);
        }
    }

    /// Marks an entry delivered (or given up) for a sink and persists its cursor.
    pub fn finish(&self, sink: &str, seq: u64) -> Result<(), OutboxError> {
        let mut inner = self.lock();
        if let Some(flying) = inner.in_flight.get_mut(sink) {
            flying.remove(&seq);
        }
        let dir = inner.dir.clone();
        let Some(cursor) = inner.cursors.get_mut(sink) else {
            return Ok(());
        };
        cursor.mark(seq);
        let bytes =
            serde_json::to_vec(&*cursor).map_err(|e| io_err(&dir)(std::io::Error::other(e)))?;
        replace_durably(&dir, &format!("{sink}.cursor"), &bytes)?;
        if inner.cursors.values().all(|c| c.done(seq))
            && let Some(alert) = inner.pending.remove(&seq)
        {
            inner.pending_ids.remove(&alert.id);
            inner.remember_delivered(alert.id.clone());
            let delivered_in_log = inner.log_entries.saturating_sub(inner.pending.len());
            if delivered_in_log >= COMPACT_AFTER_DELIVERED && delivered_in_log > inner.pending.len()
            {
                inner.compact()?;
            }
        }
        Ok(())
    }

    /// Alerts not yet delivered to every sink.
    pub fn depth(&self) -> usize {
        self.lock().pending.len()
    }

    /// Alerts the sink still has to deliver.
    pub fn backlog(&self, sink: &str) -> usize {
        let inner = self.lock();
        match inner.cursors.get(sink) {
            Some(cursor) => inner.pending.keys().filter(|s| !cursor.done(**s)).count(),
            None => 0,
        }
    }
}

impl Inner {
    fn remember_delivered(&mut self, id: String) {
        if !self.delivered_ids.insert(id.clone()) {
            return;
        }
        if self.delivered.len() >= RECENTLY_DELIVERED
            && let Some(oldest) = self.delivered.pop_front()
        {
            self.delivered_ids.remove(&oldest);
        }
        self.delivered.push_back(id);
    }

    /// Rewrites the log as the header and the pending entries (temporary file, then rename).
    fn compact(&mut self) -> Result<(), OutboxError> {
        let path = self.dir.join(LOG);
        let header = Header {
            next_seq: self.next_seq,
            delivered: self.delivered.clone(),
        };
        let mut bytes = json_line(&header, &path)?;
        for (seq, alert) in &self.pending {
            let entry = Entry {
                seq: *seq,
                alert: (**alert).clone(),
            };
            bytes.extend(json_line(&entry, &path)?);
        }
        replace_durably(&self.dir, LOG, &bytes)?;
        self.log = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        // Everything pending is in the synced new file.
        self.log_entries = self.pending.len();
        self.unsynced = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deliver::test_support::{alert, open_with_alerts, take_summaries};

    fn log_lines(dir: &Path) -> usize {
        std::fs::read_to_string(dir.join(LOG))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    #[test]
    fn a_long_run_compacts_its_log_without_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = vec!["s".to_string()];
        let outbox = Outbox::open(dir.path(), &sinks).unwrap();
        let total = COMPACT_AFTER_DELIVERED as u32 + 500;
        // One alert stays pending throughout: compaction keeps it.
        let waiting = outbox.append(&alert(u32::MAX)).unwrap();
        for n in 0..total {
            let seq = outbox.append(&alert(n)).unwrap();
            outbox.finish("s", seq).unwrap();
            assert!(
                log_lines(dir.path()) <= COMPACT_AFTER_DELIVERED + 2,
                "{} lines in the log after {n} deliveries",
                log_lines(dir.path())
            );
        }
        assert_eq!(outbox.depth(), 1);
        assert_eq!(
            outbox.append(&alert(total - 1)).unwrap(),
            0,
            "still known as delivered"
        );
        drop(outbox);

        let outbox = Outbox::open(dir.path(), &sinks).unwrap();
        let taken = outbox.take("s", 10);
        assert_eq!(taken.len(), 1, "the pending alert survives the compactions");
        assert_eq!(taken[0].0, waiting);
        assert_eq!(
            outbox.append(&alert(total - 1)).unwrap(),
            0,
            "and the ids delivered"
        );
        let next = outbox.append(&alert(total)).unwrap();
        assert_eq!(
            next,
            u64::from(total) + 2,
            "numbers go on past every one used"
        );
    }

    #[test]
    fn undelivered_alerts_survive_a_reopen_and_delivered_ones_do_not_return() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = vec!["webhook".to_string(), "email".to_string()];
        let outbox = open_with_alerts(dir.path(), &sinks, 3);
        let taken = outbox.take("webhook", 10);
        assert_eq!(taken.len(), 3);
        assert!(
            outbox.take("webhook", 10).is_empty(),
            "in flight entries are not taken twice"
        );
        outbox.finish("webhook", taken[0].0).unwrap();
        outbox.finish("webhook", taken[2].0).unwrap();
        outbox.release("webhook", taken[1].0);
        drop(outbox);

        // "Crash" and reopen: webhook still owes #2, email owes all three.
        let outbox = Outbox::open(dir.path(), &sinks).unwrap();
        assert_eq!(take_summaries(&outbox, "webhook"), ["alert 1"]);
        assert_eq!(outbox.backlog("email"), 3);
        for (seq, _) in outbox.take("email", 10) {
            outbox.finish("email", seq).unwrap();
        }
        outbox.finish("webhook", 2).unwrap();
        assert_eq!(outbox.depth(), 0);
        drop(outbox);
        let outbox = Outbox::open(dir.path(), &sinks).unwrap();
        assert_eq!(outbox.depth(), 0, "compaction keeps nothing delivered");
        let log = std::fs::read_to_string(dir.path().join(LOG)).unwrap();
        assert_eq!(log.lines().count(), 1, "only the header is left: {log}");
    }

    /// Delivers everything pending to every sink.
    fn deliver_all(outbox: &Outbox, sinks: &[String]) {
        for sink in sinks {
            for (seq, _) in outbox.take(sink, usize::MAX) {
                outbox.finish(sink, seq).unwrap();
            }
        }
    }

    #[test]
    fn alerts_after_two_restarts_with_nothing_pending_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = vec!["webhook".to_string(), "email".to_string()];
        let outbox = open_with_alerts(dir.path(), &sinks, 3);
        deliver_all(&outbox, &sinks);
        drop(outbox);
        // The second life finds nothing pending: compaction empties the log.
        drop(Outbox::open(dir.path(), &sinks).unwrap());
        let outbox = Outbox::open(dir.path(), &sinks).unwrap();
        outbox.append(&alert(10)).unwrap();
        outbox.sync().unwrap();
        for sink in &sinks {
            assert_eq!(
                take_summaries(&outbox, sink),
                ["alert 10"],
                "{sink} gets the new alert"
            );
        }
    }

    #[test]
    fn a_delivered_alert_detected_again_after_restarts_is_not_queued_again() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = vec!["s".to_string()];
        let outbox = open_with_alerts(dir.path(), &sinks, 1);
        deliver_all(&outbox, &sinks);
        drop(outbox);
        for restart in 1..=2 {
            let outbox = Outbox::open(dir.path(), &sinks).unwrap();
            outbox.append(&alert(0)).unwrap();
            assert_eq!(
                outbox.backlog("s"),
                0,
                "queued again after restart {restart}"
            );
        }
    }

    #[test]
    fn an_alert_already_pending_is_not_queued_twice() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), &["s".to_string()]).unwrap();
        let first = outbox.append(&alert(1)).unwrap();
        assert_eq!(outbox.append(&alert(1)).unwrap(), first);
        assert_eq!(outbox.backlog("s"), 1);
        outbox.finish("s", first).unwrap();
        outbox.append(&alert(1)).unwrap();
        assert_eq!(
            outbox.backlog("s"),
            0,
            "a delivered alert detected again is not resent"
        );
    }

    #[test]
    fn a_torn_or_nul_filled_last_line_is_dropped() {
        let tails: [&[u8]; 4] = [
            b"{\"seq\":2,\"alert\":{\"id\":\"",
            // After a power loss the unsynced end of a file can read back as zeros.
            &[0; 64],
            b"{\"seq\":2,\"alert\":{\"id\":\"\0\0\0\0",
            // Cut inside a multi-byte character.
            b"{\"seq\":2,\"alert\":{\"summary\":\"\xc3",
        ];
        for tail in tails {
            let dir = tempfile::tempdir().unwrap();
            let sinks = vec!["s".to_string()];
            drop(open_with_alerts(dir.path(), &sinks, 1));
            let mut log = OpenOptions::new()
                .append(true)
                .open(dir.path().join(LOG))
                .unwrap();
            log.write_all(tail).unwrap();
            let outbox = Outbox::open(dir.path(), &sinks)
                .unwrap_or_else(|e| panic!("tail {:?}: {e}", String::from_utf8_lossy(tail)));
            assert_eq!(outbox.backlog("s"), 1);
            drop(outbox);
            let outbox = Outbox::open(dir.path(), &sinks).unwrap();
            assert_eq!(outbox.backlog("s"), 1, "compaction removed the torn line");
        }
    }

    #[test]
    fn a_corrupt_line_before_the_last_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = vec!["s".to_string()];
        drop(open_with_alerts(dir.path(), &sinks, 2));
        let path = dir.path().join(LOG);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        let cut = &lines[1][..lines[1].len() / 2];
        lines[1] = cut;
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        match Outbox::open(dir.path(), &sinks) {
            Err(OutboxError::Corrupt { line: 2, .. }) => {}
            Err(e) => panic!("not the corrupt line: {e}"),
            Ok(_) => panic!("a corrupt line in the middle of the outbox was skipped"),
        }
    }

    #[test]
    fn an_empty_cursor_file_means_nothing_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let sinks = vec!["s".to_string()];
        let outbox = open_with_alerts(dir.path(), &sinks, 2);
        deliver_all(&outbox, &sinks);
        drop(outbox);
        // A cursor renamed into place before its data reached the disk.
        std::fs::write(dir.path().join("s.cursor"), b"").unwrap();
        let outbox = Outbox::open(dir.path(), &sinks).unwrap();
        assert_eq!(outbox.backlog("s"), 2, "delivered again (at least once)");
    }

    #[test]
    fn cursor_advances_over_contiguous_deliveries() {
        let mut c = Cursor::default();
        c.mark(2);
        assert_eq!(c.through, 0);
        c.mark(1);
        assert_eq!((c.through, c.above.len()), (2, 0));
        assert!(c.done(2) && !c.done(3));
    }
}
