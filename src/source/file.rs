//! File source for `replay`: NDJSON, JSON arrays, whole JSON documents (CloudTrail
//! envelopes), Squid text lines; `.gz` files and `-` for standard input.
//!
//! How a file is split into records is decided from its first bytes:
//! `[` → each array element is a record; `{` whose first line is a whole JSON
//! value, or followed by lines that are → one record per line (a bad first line
//! is one dead letter); `{` spanning lines → the document is one record;
//! anything else → one record per line.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use std::sync::Arc;

use crate::decode::{DecodeOptions, Format};
use crate::detect::Engine;
use crate::detect::engine::EngineError;
use crate::event::{NormalizedEvent, Origin};
use crate::pipeline::Pipeline;
use crate::sinks::{Outputs, SinkError};

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
}

/// Opens an input, decompressing `.gz`; `-` is standard input. Returns the reader and its size when known.
fn open(path: &str) -> Result<(Box<dyn BufRead + Send>, Option<u64>), FileSourceError> {
    let read_err = |source| FileSourceError::Read {
        path: path.to_string(),
        source,
    };
    if path == "-" {
        return Ok((Box::new(BufReader::new(std::io::stdin())), None));
    }
    let file = File::open(path).map_err(read_err)?;
    let size = file.metadata().ok().map(|m| m.len());
    if Path::new(path).extension().is_some_and(|e| e == "gz") {
        let decoder = flate2::read::MultiGzDecoder::new(file);
        return Ok((
            Box::new(BufReader::with_capacity(256 * 1024, decoder)),
            None,
        ));
    }
    Ok((Box::new(BufReader::with_capacity(256 * 1024, file)), size))
}

/// How an input is split into records (decided from its first bytes).
enum Shape {
    /// Elements of a JSON array, already split.
    Items(std::vec::IntoIter<Box<RawValue>>),
    /// One record: the whole input (a multi-line JSON document or a broken array).
    Whole(Option<Vec<u8>>),
    /// One record per line; `pending` holds a first line already read.
    Lines { pending: Option<Vec<u8>> },
}

/// Pulls the records of one input, one at a time.
pub struct RecordReader {
    path: String,
    reader: Box<dyn BufRead + Send>,
    shape: Shape,
    line: Vec<u8>,
    number: u64,
    progress: ProgressBar,
}

impl RecordReader {
    pub fn open(path: &str, progress: &ProgressBar) -> Result<Self, FileSourceError> {
        let read_err = |source| FileSourceError::Read {
            path: path.to_string(),
            source,
        };
        let (mut reader, size) = open(path)?;
        if let Some(size) = size {
            progress.inc_length(size);
        }
        let mut first = None;
        loop {
            let buf = reader.fill_buf().map_err(read_err)?;
            if buf.is_empty() {
                break;
            }
            match buf.iter().position(|b| !b.is_ascii_whitespace()) {
                Some(i) => {
                    first = Some(buf[i]);
                    reader.consume(i);
                    progress.inc(i as u64);
                    break;
                }
                None => {
                    let n = buf.len();
                    reader.consume(n);
                    progress.inc(n as u64);
                }
            }
        }
        let shape = match first {
            Some(b'[') => {
                let mut all = Vec::new();
                reader.read_to_end(&mut all).map_err(read_err)?;
                match serde_json::from_slice::<Vec<Box<RawValue>>>(&all) {
                    Ok(items) => {
                        progress.inc(all.len() as u64);
                        Shape::Items(items.into_iter())
                    }
                    // Envoy text lines (`[2026-…] "GET …`) are read line by line.
                    Err(_) if crate::decode::envoy_text::looks_like_line(&all) => {
                        reader = Box::new(std::io::Cursor::new(all));
                        Shape::Lines { pending: None }
                    }
                    // Not a valid array: the whole input is one (bad) record, dead-lettered as such.
                    Err(_) => {
                        progress.inc(all.len() as u64);
                        Shape::Whole(Some(all))
                    }
                }
            }
            Some(b'{') => {
                let mut line = Vec::new();
                reader.read_until(b'\n', &mut line).map_err(read_err)?;
                progress.inc(line.len() as u64);
                if serde_json::from_slice::<IgnoredAny>(&line).is_ok() {
                    Shape::Lines {
                        pending: Some(line),
                    }
                } else {
                    let mut rest = Vec::new();
                    reader.read_to_end(&mut rest).map_err(read_err)?;
                    if rest.split(|b| *b == b'\n').any(is_json_object_line) {
                        // NDJSON whose first line is bad (truncated, say): read on line by
                        // line, so only that line is dead-lettered and the rest is processed.
                        reader = Box::new(std::io::Cursor::new(rest));
                        Shape::Lines {
                            pending: Some(line),
                        }
                    } else {
                        // A JSON document over several lines (a pretty-printed CloudTrail file): one record.
                        progress.inc(rest.len() as u64);
                        line.extend_from_slice(&rest);
                        Shape::Whole(Some(line))
                    }
                }
            }
            Some(_) => Shape::Lines { pending: None },
            None => Shape::Whole(None),
        };
        Ok(RecordReader {
            path: path.to_string(),
            reader,
            shape,
            line: Vec::with_capacity(4096),
            number: 0,
            progress: progress.clone(),
        })
    }

    /// The next record and its number (line, or element for arrays), or `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<(&[u8], u64)>, FileSourceError> {
        match &mut self.shape {
            Shape::Items(items) => {
                let Some(item) = items.next() else {
                    return Ok(None);
                };
                self.number += 1;
                self.line.clear();
                self.line.extend_from_slice(item.get().as_bytes());
                Ok(Some((&self.line, self.number)))
            }
            Shape::Whole(whole) => match whole.take() {
                Some(bytes) => {
                    self.number = 1;
                    self.line = bytes;
                    Ok(Some((&self.line, 1)))
                }
                None => Ok(None),
            },
            Shape::Lines { pending } => loop {
                self.line.clear();
                if let Some(first) = pending.take() {
                    self.line = first;
                } else {
                    let n = self
                        .reader
                        .read_until(b'\n', &mut self.line)
                        .map_err(|source| FileSourceError::Read {
                            path: self.path.clone(),
                            source,
                        })?;
                    if n == 0 {
                        return Ok(None);
                    }
                    self.progress.inc(n as u64);
                }
                self.number += 1;
                let end = trim_line(&self.line).len();
                if !self.line[..end].iter().all(u8::is_ascii_whitespace) {
                    return Ok(Some((&self.line[..end], self.number)));
                }
            },
        }
    }
}

/// Whether a line is, on its own, a whole JSON object (an NDJSON record).
fn is_json_object_line(line: &[u8]) -> bool {
    let line = trim_line(line);
    line.first() == Some(&b'{') && serde_json::from_slice::<IgnoredAny>(line).is_ok()
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

/// A progress bar on standard error that draws only on a terminal.
pub fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Events per detector batch in a replay. Fixed, so a replay is deterministic.
const REPLAY_BATCH: usize = 1000;

/// Events each input may hold in its reorder buffer by default (see [`replay`]).
pub const DEFAULT_REORDER_EVENTS: usize = 10_000;

/// A decoded event waiting in an input's reorder buffer. Ordered by event time,
/// then by a hash of its vendor record (so that ties do not depend on which file
/// or position a record came from), then by its place within its record.
struct Waiting {
    time: chrono::DateTime<chrono::Utc>,
    record_hash: u64,
    index: u32,
    event: NormalizedEvent,
}

impl Waiting {
    fn key(&self) -> (chrono::DateTime<chrono::Utc>, u64, u32) {
        (self.time, self.record_hash, self.index)
    }
}

impl PartialEq for Waiting {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Waiting {}
impl PartialOrd for Waiting {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiting {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// FNV-1a of a record's bytes: a tie-break that depends on the record alone.
fn record_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// One input of a replay: its reader and a min-heap of decoded events.
struct OrderedInput {
    path: String,
    reader: RecordReader,
    waiting: BinaryHeap<Reverse<Waiting>>,
    exhausted: bool,
}

impl OrderedInput {
    /// Reads records until `capacity` events wait or the input ends; records that
    /// cannot be decoded go to the dead letters at once.
    async fn fill(
        &mut self,
        capacity: usize,
        format: Format,
        options: &DecodeOptions,
        pipeline: &mut Pipeline,
        outputs: &mut Outputs,
        decoded: &mut Vec<NormalizedEvent>,
    ) -> Result<(), FileSourceError> {
        while !self.exhausted && self.waiting.len() < capacity {
            let Some((record, line)) = self.reader.next_record()? else {
                self.exhausted = true;
                break;
            };
            let origin = Origin::File {
                path: self.path.clone(),
                line,
            };
            decoded.clear();
            match pipeline.decode(format, options, record, origin, decoded) {
                Ok(_) => {
                    let hash = record_hash(record);
                    for (index, event) in decoded.drain(..).enumerate() {
                        self.waiting.push(Reverse(Waiting {
                            time: event.time,
                            record_hash: hash,
                            index: index as u32,
                            event,
                        }));
                    }
                }
                Err(letter) => outputs.dead_letter(&letter).await?,
            }
        }
        Ok(())
    }
}

/// How a replay reads its inputs and what it leaves behind besides its outputs.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Record format of every input.
    pub format: Format,
    pub decode: DecodeOptions,
    /// Events each input may hold in its reorder buffer (see [`replay`]).
    pub reorder_events: usize,
    /// Where to write the detectors' state as it stands at the end of the input,
    /// before the last windows are closed: a snapshot `appwarden run` starts from
    /// (the go-live path: baselines learned from past exports, not days of waiting).
    pub state_out: Option<std::path::PathBuf>,
}

/// Replays files through the pipeline and the detectors into `outputs`; at the
/// end every open window is closed.
///
/// The inputs are merged by event time (a k-way merge), each through a reorder
/// buffer of `reorder_events` events, so that the same records give the same
/// alerts however they are split into files and in whatever order the files are
/// named: one export per source is read as one time-ordered stream. Identities
/// are resolved in that merged order, and the engine sees the merged stream as
/// one source. Within an input, an event more than `reorder_events` events out
/// of place arrives late, as it would on a live stream.
pub async fn replay(
    inputs: &[String],
    replay: &ReplayOptions,
    pipeline: &mut Pipeline,
    engine: &mut Engine,
    outputs: &mut Outputs,
) -> Result<(), FileSourceError> {
    let (format, options) = (replay.format, &replay.decode);
    let progress = progress_bar();
    let capacity = replay.reorder_events.max(1);
    engine.read_files_as_one_stream();
    let mut ordered = Vec::with_capacity(inputs.len());
    for input in inputs {
        ordered.push(OrderedInput {
            path: input.clone(),
            reader: RecordReader::open(input, &progress)?,
            waiting: BinaryHeap::new(),
            exhausted: false,
        });
    }
    progress.set_message(match inputs {
        [one] => one.clone(),
        _ => format!("{} inputs, merged by event time", inputs.len()),
    });
    let mut decoded: Vec<NormalizedEvent> = Vec::new();
    let mut batch: Vec<Arc<NormalizedEvent>> = Vec::new();
    loop {
        for input in &mut ordered {
            input
                .fill(capacity, format, options, pipeline, outputs, &mut decoded)
                .await?;
        }
        let next = ordered
            .iter()
            .enumerate()
            .filter_map(|(i, input)| input.waiting.peek().map(|Reverse(w)| (w.key(), i)))
            .min();
        let Some((_, i)) = next else {
            break;
        };
        let Some(Reverse(waiting)) = ordered[i].waiting.pop() else {
            break;
        };
        let mut event = [waiting.event];
        pipeline.resolve(&mut event);
        let [event] = event;
        batch.push(Arc::new(event));
        if batch.len() >= REPLAY_BATCH {
            detect(pipeline, engine, outputs, &mut batch).await?;
        }
    }
    detect(pipeline, engine, outputs, &mut batch).await?;
    if let Some(path) = &replay.state_out {
        write_state(path, pipeline, engine).await?;
    }
    for alert in engine.finish(&pipeline.registry()).await? {
        outputs.alert(&alert).await?;
        pipeline.stats().alert(&alert);
    }
    outputs.commit().await?;
    outputs.flush_history().await?;
    progress.finish_and_clear();
    Ok(())
}

/// Saves the engine and the issued credentials as a snapshot with no input
/// offsets, so that a daemon started from it keeps its group's own positions.
async fn write_state(
    path: &Path,
    pipeline: &Pipeline,
    engine: &mut Engine,
) -> Result<(), FileSourceError> {
    let mut state = engine.save().await?;
    // The replay's merged files are no input of the daemon: its watermark follows its partitions.
    state.sources.clear();
    state.source_clocks.clear();
    let snapshot = crate::state::Snapshot {
        version: crate::state::SNAPSHOT_VERSION,
        offsets: Vec::new(),
        engine: state,
        issued_credentials: pipeline.resolver().issued(),
        kafka: None,
    };
    crate::state::write(path, &snapshot)?;
    Ok(())
}

async fn detect(
    pipeline: &Pipeline,
    engine: &mut Engine,
    outputs: &mut Outputs,
    batch: &mut Vec<Arc<NormalizedEvent>>,
) -> Result<(), FileSourceError> {
    let registry = pipeline.registry();
    let processed = engine.process_flagged(batch, &registry).await?;
    outputs.events(batch, &processed.flags, &registry).await?;
    for alert in &processed.alerts {
        outputs.alert(alert).await?;
        pipeline.stats().alert(alert);
    }
    batch.clear();
    outputs.commit().await?;
    if outputs.history_due() {
        outputs.flush_history().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn records(content: &[u8], name: &str) -> Vec<(String, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        if name.ends_with(".gz") {
            let file = File::create(&path).unwrap();
            let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
            gz.write_all(content).unwrap();
            gz.finish().unwrap();
        } else {
            std::fs::write(&path, content).unwrap();
        }
        let mut got = Vec::new();
        let mut reader =
            RecordReader::open(path.to_str().unwrap(), &ProgressBar::hidden()).unwrap();
        while let Some((r, n)) = reader.next_record().unwrap() {
            got.push((String::from_utf8_lossy(r).into_owned(), n));
        }
        got
    }

    #[test]
    fn splits_each_shape() {
        assert_eq!(
            records(b"{\"a\":1}\r\n\n{\"b\":2}\n", "x.ndjson"),
            vec![("{\"a\":1}".into(), 1), ("{\"b\":2}".into(), 3)]
        );
        assert_eq!(
            records(b" [ {\"a\":1}, {\"b\":2} ]", "x.json"),
            vec![("{\"a\":1}".into(), 1), ("{\"b\":2}".into(), 2)]
        );
        let doc = b"{\n  \"Records\": [\n    {\"a\": 1}\n  ]\n}\n";
        let got = records(doc, "ct.json");
        assert_eq!(got.len(), 1);
        assert!(got[0].0.contains("Records"));
        assert_eq!(
            records(
                b"1700000000.1 5 10.0.0.1 TCP_MISS/200 1 GET http://a/ - DIRECT/1.2.3.4 -\n",
                "access.log"
            )
            .len(),
            1
        );
        assert_eq!(records(b"{\"a\":1}\n{\"b\":2}", "x.ndjson.gz").len(), 2);
        assert!(records(b"  \n ", "empty.log").is_empty());
        assert_eq!(records(b"[1, 2", "broken.json"), vec![("[1, 2".into(), 1)]);
    }
}
