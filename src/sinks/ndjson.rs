//! NDJSON file sink: one JSON value per line, appended; `-` is standard output.
//! A flush syncs the file to disk, so lines whose input offsets are stored
//! after it survive a power loss.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
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
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| SinkError::io(&name, e))?;
            sync = Some(file.try_clone().map_err(|e| SinkError::io(&name, e))?);
            Box::new(file)
        };
        Ok(NdjsonWriter {
            name,
            out: BufWriter::with_capacity(256 * 1024, out),
            file: sync,
            unsynced: false,
        })
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(&self.name)
    }

    pub fn write<T: Serialize>(&mut self, value: &T) -> Result<(), SinkError> {
        self.unsynced = true;
        serde_json::to_writer(&mut self.out, value)
            .map_err(|e| SinkError::io(&self.name, std::io::Error::other(e)))?;
        self.out
            .write_all(b"\n")
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
