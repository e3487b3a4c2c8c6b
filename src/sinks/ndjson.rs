//! NDJSON file sink: one JSON value per line, appended; `-` is standard output.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SinkError;

/// Appends JSON lines to a file (created with its parent folders) or stdout.
pub struct NdjsonWriter {
    name: String,
    out: BufWriter<Box<dyn Write + Send>>,
}

impl NdjsonWriter {
    pub fn open(path: &Path) -> Result<Self, SinkError> {
        let name = path.display().to_string();
        let out: Box<dyn Write + Send> = if name == "-" {
            Box::new(std::io::stdout())
        } else {
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| SinkError::io(&name, e))?;
            }
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| SinkError::io(&name, e))?;
            Box::new(file)
        };
        Ok(NdjsonWriter {
            name,
            out: BufWriter::with_capacity(256 * 1024, out),
        })
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.name)
    }

    pub fn write<T: Serialize>(&mut self, value: &T) -> Result<(), SinkError> {
        serde_json::to_writer(&mut self.out, value)
            .map_err(|e| SinkError::io(&self.name, std::io::Error::other(e)))?;
        self.out
            .write_all(b"\n")
            .map_err(|e| SinkError::io(&self.name, e))
    }

    /// Writes buffered lines through to the file.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.out.flush().map_err(|e| SinkError::io(&self.name, e))
    }
}
