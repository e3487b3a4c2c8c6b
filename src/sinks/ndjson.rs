//! NDJSON file sink: one JSON value per line, appended; `-` is standard output.
//! A flush syncs the file to disk, so lines whose input offsets are stored
//! after it survive a power loss.
//!
//! Each line reaches the buffer in one piece, so the buffer only ever writes
//! whole lines to the file. A process killed while a line was being written
//! can still leave a torn last line; opening the file again ends that line,
//! so the next one starts on a line of its own instead of being glued to the
//! fragment (which would make both unreadable).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SinkError;

/// Appends JSON lines to a file (created with its parent folders) or stdout.
pub struct NdjsonWriter {
    name: String,
    out: BufWriter<Box<dyn Write + Send>>,
    /// The file again, to sync it (none for standard output).
    file: Option<File>,
    /// Lines written since the last sync.
    unsynced: bool,
    /// One line being serialized, written to `out` whole.
    line: Vec<u8>,
}

/// Whether a file ends in the middle of a line (a write torn by a crash).
fn ends_mid_line(file: &mut File) -> std::io::Result<bool> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::Start(len - 1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

impl NdjsonWriter {
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let name = path.display().to_string();
        let mut sync = None;
        let out: Box<dyn Write + Send> = if name == "-" {
            Box::new(std::io::stdout())
        } else {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| SinkError::io(&name, e))?;
            }
            let mut file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)
                .map_err(|e| SinkError::io(&name, e))?;
            if ends_mid_line(&mut file).map_err(|e| SinkError::io(&name, e))? {
                tracing::warn!(
                    path = %name,
                    "the file ends in a line torn by an earlier crash; ending it so new lines stay readable"
                );
                file.write_all(b"\n").map_err(|e| SinkError::io(&name, e))?;
            }
            sync = Some(file.try_clone().map_err(|e| SinkError::io(&name, e))?);
            Box::new(file)
        };
        Ok(NdjsonWriter {
            name,
            out: BufWriter::with_capacity(256 * 1024, out),
            file: sync,
            unsynced: false,
            line: Vec::new(),
        })
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.name)
    }

    pub fn write<T: Serialize>(&mut self, value: &T) -> Result<(), SinkError> {
        self.unsynced = true;
        self.line.clear();
        serde_json::to_writer(&mut self.line, value)
            .map_err(|e| SinkError::io(&self.name, std::io::Error::other(e)))?;
        self.line.push(b'\n');
        // One call per line: a full buffer is written out before the line, not
        // through the middle of it.
        self.out
            .write_all(&self.line)
            .map_err(|e| SinkError::io(&self.name, e))
    }

    /// Writes buffered lines through to the file and syncs it.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| SinkError::io(&self.name, e))?;
        if let Some(file) = self.file.as_ref().filter(|_| self.unsynced) {
            file.sync_data().map_err(|e| SinkError::io(&self.name, e))?;
        }
        self.unsynced = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_torn_by_a_crash_is_ended_before_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let mut writer = NdjsonWriter::open(&path).unwrap();
        writer.write(&serde_json::json!({"c": 3})).unwrap();
        writer.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"b\":\n{\"c\":3}\n");
        // A file that ends cleanly is left as it is.
        drop(NdjsonWriter::open(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }

    #[test]
    fn a_full_buffer_writes_whole_lines_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.ndjson");
        let mut writer = NdjsonWriter::open(&path).unwrap();
        let padding = "x".repeat(999);
        // About 1.2 MB through a 256 KiB buffer, never flushed: what reached the
        // file is what a kill -9 now would leave.
        for i in 0..1200 {
            writer
                .write(&serde_json::json!({"i": i, "padding": padding}))
                .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.len() > 512 * 1024,
            "the buffer wrote {} bytes",
            text.len()
        );
        assert!(text.ends_with('\n'), "the file ends mid-line");
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        );
    }
}
