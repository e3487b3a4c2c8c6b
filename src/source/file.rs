//! File source for `replay`: NDJSON, JSON arrays, whole JSON documents (CloudTrail
//! envelopes), Squid text lines; `.gz` files and `-` for standard input.
//!
//! How a file is split into records is decided from its first bytes:
//! `[` → each array element is a record; `{` whose first line is a whole JSON
//! value → one record per line; `{` spanning lines → the document is one
//! record; anything else → one record per line.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};
use serde::de::IgnoredAny;
use serde_json::value::RawValue;

use crate::decode::{DecodeOptions, Format};
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

/// Calls `each(record, record_number)` for every record of one input.
pub fn for_each_record(
    path: &str,
    progress: &ProgressBar,
    mut each: impl FnMut(&[u8], u64) -> Result<(), FileSourceError>,
) -> Result<(), FileSourceError> {
    let read_err = |source| FileSourceError::Read {
        path: path.to_string(),
        source,
    };
    let (mut reader, size) = open(path)?;
    if let Some(size) = size {
        progress.inc_length(size);
    }
    let first = loop {
        let buf = reader.fill_buf().map_err(read_err)?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(i) => {
                let byte = buf[i];
                reader.consume(i);
                progress.inc(i as u64);
                break byte;
            }
            None => {
                let n = buf.len();
                reader.consume(n);
                progress.inc(n as u64);
            }
        }
    };

    let mut line = Vec::with_capacity(4096);
    if first == b'[' {
        let mut all = Vec::new();
        reader.read_to_end(&mut all).map_err(read_err)?;
        progress.inc(all.len() as u64);
        return match serde_json::from_slice::<Vec<&RawValue>>(&all) {
            Ok(items) => {
                for (i, item) in items.iter().enumerate() {
                    each(item.get().as_bytes(), i as u64 + 1)?;
                }
                Ok(())
            }
            // Not a valid array: the whole input is one (bad) record and is dead-lettered as such.
            Err(_) => each(&all, 1),
        };
    }
    let mut number = 0u64;
    if first == b'{' {
        reader.read_until(b'\n', &mut line).map_err(read_err)?;
        progress.inc(line.len() as u64);
        if serde_json::from_slice::<IgnoredAny>(&line).is_err() {
            // A JSON document over several lines (a pretty-printed CloudTrail file): one record.
            reader.read_to_end(&mut line).map_err(read_err)?;
            return each(&line, 1);
        }
        number = 1;
        each(trim_line(&line), number)?;
    }
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(read_err)?;
        if n == 0 {
            return Ok(());
        }
        progress.inc(n as u64);
        number += 1;
        let record = trim_line(&line);
        if !record.iter().all(u8::is_ascii_whitespace) {
            each(record, number)?;
        }
    }
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

/// Replays files through the pipeline into `outputs`.
pub async fn replay(
    inputs: &[String],
    format: Format,
    options: &DecodeOptions,
    pipeline: &mut Pipeline,
    outputs: &mut Outputs,
) -> Result<(), FileSourceError> {
    let progress = progress_bar();
    let mut events: Vec<NormalizedEvent> = Vec::new();
    let mut pending: Vec<Result<Vec<NormalizedEvent>, Box<crate::pipeline::DeadLetter>>> =
        Vec::new();
    for input in inputs {
        progress.set_message(input.clone());
        // Decoding is synchronous; results are collected per chunk and written asynchronously.
        for_each_record(input, &progress, |record, line| {
            let origin = Origin::File {
                path: input.clone(),
                line,
            };
            events.clear();
            match pipeline.process(format, options, record, origin, &mut events) {
                Ok(_) => pending.push(Ok(std::mem::take(&mut events))),
                Err(letter) => pending.push(Err(letter)),
            }
            Ok(())
        })?;
        for result in pending.drain(..) {
            match result {
                Ok(batch) => {
                    for event in &batch {
                        outputs.event(event).await?;
                    }
                }
                Err(letter) => outputs.dead_letter(&letter).await?,
            }
        }
        outputs.commit().await?;
    }
    progress.finish_and_clear();
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
        for_each_record(path.to_str().unwrap(), &ProgressBar::hidden(), |r, n| {
            got.push((String::from_utf8_lossy(r).into_owned(), n));
            Ok(())
        })
        .unwrap();
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
