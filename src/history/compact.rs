//! Compaction: the many small files of a closed hour partition merged into few.
//!
//! Each flush of the writer adds one file to every hour partition it holds rows
//! for, so a busy day makes thousands of files, and every query opens them all.
//! Once an hour is closed (see [`super::upkeep`]), its files are rewritten as
//! files of at most `history.flush_max_mib` of data and the originals deleted.
//!
//! A compaction is crash-safe through a journal, `.compaction/<partition>.json`
//! under the root, that names the inputs and the prefix of the outputs:
//! 1. the journal is created (exclusively: a partition another process is
//!    compacting is left alone);
//! 2. the outputs are written (whole files, as every history write);
//! 3. the journal is marked complete with the outputs' names;
//! 4. the inputs are deleted, then the journal.
//!
//! A crash before 3 leaves outputs nobody lists as complete: recovery deletes
//! every file with the journal's output prefix and keeps the inputs. A crash
//! after 3 leaves inputs that are already copied: recovery deletes them. Either
//! way no row is lost and none stays twice. Readers may see an hour's rows
//! twice for the moment between 2 and 4 (or a query may find a listed input
//! gone), as they may see a file appear while they run.

use chrono::{DateTime, Utc};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::HistoryError;
use super::store::{Listed, Runtime, Store, Version};

/// Folder of the journals, under the root (beside `events/` and `alerts/`, so
/// no table reads it).
pub const JOURNALS: &str = ".compaction";

/// Files at least this large are left as they are: they were compacted
/// already, or written by a large flush, and rewriting them gains little.
pub const LARGE_FILE_BYTES: u64 = 64 * 1024 * 1024;

/// What a compaction is doing, as its journal records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Journal {
    /// The partition folder, relative to the root.
    partition: String,
    /// Names of the files being merged (in `partition`).
    inputs: Vec<String>,
    /// Every output's name starts with this.
    output_prefix: String,
    /// The outputs, once all are written.
    #[serde(default)]
    outputs: Vec<String>,
    /// Whether every output is written: the inputs may go.
    #[serde(default)]
    complete: bool,
}

/// What compacting one partition did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Files merged and deleted.
    pub inputs: usize,
    /// Files written in their place.
    pub outputs: usize,
}

/// Outcome of [`Compactor::compact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done(Compacted),
    /// Fewer than two files to merge.
    Nothing,
    /// Another compaction of the partition holds its journal.
    Busy,
}

/// Merges the files of hour partitions.
pub struct Compactor {
    pub store: Store,
    pub properties: WriterProperties,
    /// Data bytes (Arrow memory) of one output at most.
    pub max_bytes: usize,
    sequence: u64,
    /// This process's compactions a failure left midway, settled by [`Compactor::settle_unfinished`] at the next pass.
    unfinished: Vec<Journal>,
}

/// Whether a file name is a compaction's output (`part-…-c00001-000.parquet`);
/// flush files are `part-<time>-<pid>-<sequence>.parquet`.
pub fn is_compaction_output(name: &str) -> bool {
    name.split('-').any(|part| {
        part.len() > 1 && part.starts_with('c') && part[1..].bytes().all(|b| b.is_ascii_digit())
    })
}

/// The journal of a partition: `events/source=okta/day=…/hour=10` →
/// `.compaction/events+source=okta+day=…+hour=10.json`.
fn journal_path(partition: &str) -> String {
    format!("{JOURNALS}/{}.json", partition.replace('/', "+"))
}

/// One output being written.
struct Output {
    writer: ArrowWriter<Vec<u8>>,
    bytes: usize,
}

impl Compactor {
    pub fn new(store: Store, properties: WriterProperties, max_bytes: usize) -> Self {
        Compactor {
            store,
            properties,
            max_bytes,
            sequence: 0,
            unfinished: Vec::new(),
        }
    }

    /// Merges the flush files of `partition` (files of one schema together,
    /// with the hour's compacted file when it has just one), as the module
    /// documentation describes.
    pub fn compact(
        &mut self,
        partition: &str,
        rt: Option<&Runtime>,
    ) -> Result<Outcome, HistoryError> {
        let listed = self.store.list_files(partition, rt)?;
        let parquet = |f: &&Listed| f.name.ends_with(".parquet") && f.size < LARGE_FILE_BYTES;
        let compacted: Vec<&Listed> = listed
            .iter()
            .filter(|f| is_compaction_output(&f.name))
            .collect();
        // An hour compacted into several files keeps them: only what came
        // later is merged (so a large hour is not rewritten for each late event).
        let files: Vec<&Listed> = listed
            .iter()
            .filter(parquet)
            .filter(|f| !is_compaction_output(&f.name) || compacted.len() == 1)
            .collect();
        if files.iter().all(|f| is_compaction_output(&f.name)) || files.len() < 2 {
            return Ok(Outcome::Nothing);
        }
        // Files of one schema go together (a file written by an older version
        // may have other columns); a file whose footer is unreadable stays.
        let mut groups: Vec<(SchemaRef, Vec<String>)> = Vec::new();
        for file in files {
            let name = &file.name;
            let schema = match self.store.parquet_schema(
                &format!("{partition}/{name}"),
                file.size,
                rt,
            ) {
                Ok(schema) => schema,
                Err(error) => {
                    tracing::warn!(%error, partition, file = %name, "history file left out of compaction: unreadable");
                    continue;
                }
            };
            match groups.iter_mut().find(|(s, _)| *s == schema) {
                Some((_, names)) => names.push(name.clone()),
                None => groups.push((schema, vec![name.clone()])),
            }
        }
        groups.retain(|(_, names)| {
            names.len() >= 2 && names.iter().any(|n| !is_compaction_output(n))
        });
        if groups.is_empty() {
            return Ok(Outcome::Nothing);
        }
        self.sequence += 1;
        let mut journal = Journal {
            partition: partition.to_string(),
            inputs: groups.iter().flat_map(|(_, n)| n.iter().cloned()).collect(),
            output_prefix: format!(
                "part-{}-{}-c{:05}-",
                Utc::now().format("%Y%m%dT%H%M%S%3f"),
                std::process::id(),
                self.sequence
            ),
            outputs: Vec::new(),
            complete: false,
        };
        let journal_at = journal_path(partition);
        let Some(version) = self.store.create_new(&journal_at, to_json(&journal)?, rt)? else {
            return Ok(Outcome::Busy);
        };
        match self.write_outputs(&groups, &journal, rt) {
            Ok(outputs) => journal.outputs = outputs,
            Err(error) => {
                // Nothing is deleted yet: take back the outputs and the journal.
                if let Err(undo) = self.abandon(&journal, rt) {
                    tracing::warn!(error = %undo, partition, "compaction left to settle later");
                    self.unfinished.push(journal);
                }
                return Err(error);
            }
        }
        self.finish(journal, &version, rt)
    }

    /// Marks the journal complete, if it is still the `version` this
    /// compaction wrote, and deletes the inputs.
    fn finish(
        &mut self,
        mut journal: Journal,
        version: &Version,
        rt: Option<&Runtime>,
    ) -> Result<Outcome, HistoryError> {
        journal.complete = true;
        let journal_at = journal_path(&journal.partition);
        // Only if the journal is still ours: a recovery that took it for a
        // stopped process's (and deleted some outputs) must not be followed
        // by deleting the inputs.
        match self
            .store
            .replace_if_unchanged(&journal_at, to_json(&journal)?, version, rt)
        {
            Ok(Some(_)) => {}
            Ok(None) => {
                self.delete_outputs(&journal, rt)?;
                return Err(HistoryError::Compaction(format!(
                    "{}: the journal was taken over while the outputs were written; the inputs stay",
                    journal.partition
                )));
            }
            Err(error) => {
                // Whether the journal now says complete is not known: the next
                // pass reads it and finishes or undoes accordingly.
                self.unfinished.push(journal);
                return Err(error);
            }
        }
        // From here on the outputs hold every row: finishing is deleting.
        if let Err(error) = self.roll_forward(&journal, rt) {
            self.unfinished.push(journal);
            return Err(error);
        }
        Ok(Outcome::Done(Compacted {
            inputs: journal.inputs.len(),
            outputs: journal.outputs.len(),
        }))
    }

    /// Finishes or undoes this process's compactions that a failure left
    /// midway, as their stored journal says (a journal that is gone, or now
    /// another compaction's, was settled by someone else).
    pub fn settle_unfinished(&mut self, rt: Option<&Runtime>) {
        for journal in std::mem::take(&mut self.unfinished) {
            let settled = match self.stored_journal(&journal.partition, rt) {
                Ok(Some(stored)) if stored.output_prefix == journal.output_prefix => {
                    if stored.complete {
                        self.roll_forward(&stored, rt)
                    } else {
                        self.roll_back(&stored, rt)
                    }
                }
                Ok(_) => Ok(()),
                Err(error) => Err(error),
            };
            if let Err(error) = settled {
                tracing::warn!(%error, partition = %journal.partition, "an unfinished compaction is settled at a later pass");
                self.unfinished.push(journal);
            }
        }
    }

    /// Deletes this compaction's outputs, then its journal if that is still
    /// this compaction's.
    fn abandon(&self, journal: &Journal, rt: Option<&Runtime>) -> Result<(), HistoryError> {
        self.delete_outputs(journal, rt)?;
        match self.stored_journal(&journal.partition, rt)? {
            Some(stored) if stored.output_prefix == journal.output_prefix => {
                self.store.delete(&journal_path(&journal.partition), rt)
            }
            _ => Ok(()),
        }
    }

    /// The journal stored for `partition`, if any and readable.
    fn stored_journal(
        &self,
        partition: &str,
        rt: Option<&Runtime>,
    ) -> Result<Option<Journal>, HistoryError> {
        let at = journal_path(partition);
        let listed = self.store.list_files(JOURNALS, rt)?;
        if !listed
            .iter()
            .any(|f| Some(f.name.as_str()) == at.rsplit('/').next())
        {
            return Ok(None);
        }
        Ok(serde_json::from_slice(&self.store.get(&at, rt)?).ok())
    }

    /// Writes the merged files of each group; returns their names.
    fn write_outputs(
        &self,
        groups: &[(SchemaRef, Vec<String>)],
        journal: &Journal,
        rt: Option<&Runtime>,
    ) -> Result<Vec<String>, HistoryError> {
        let mut names = Vec::new();
        for (schema, inputs) in groups {
            let mut output: Option<Output> = None;
            for input in inputs {
                self.store.read_parquet(
                    &format!("{}/{input}", journal.partition),
                    rt,
                    |batch| {
                        let out = match output.as_mut() {
                            Some(out) => out,
                            None => output.insert(self.open_output(schema)?),
                        };
                        self.append(out, &batch)?;
                        if out.bytes >= self.max_bytes
                            && let Some(full) = output.take()
                        {
                            names.push(self.close_output(full, journal, names.len(), rt)?);
                        }
                        Ok(())
                    },
                )?;
            }
            if let Some(last) = output.take() {
                names.push(self.close_output(last, journal, names.len(), rt)?);
            }
        }
        Ok(names)
    }

    fn open_output(&self, schema: &SchemaRef) -> Result<Output, HistoryError> {
        let writer =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(self.properties.clone()))
                .map_err(|e| HistoryError::Encode(e.to_string()))?;
        Ok(Output { writer, bytes: 0 })
    }

    fn append(&self, out: &mut Output, batch: &RecordBatch) -> Result<(), HistoryError> {
        out.writer
            .write(batch)
            .map_err(|e| HistoryError::Encode(e.to_string()))?;
        out.bytes = out.bytes.saturating_add(batch.get_array_memory_size());
        Ok(())
    }

    fn close_output(
        &self,
        out: Output,
        journal: &Journal,
        index: usize,
        rt: Option<&Runtime>,
    ) -> Result<String, HistoryError> {
        let bytes = out
            .writer
            .into_inner()
            .map_err(|e| HistoryError::Encode(e.to_string()))?;
        let name = format!("{}{index:03}.parquet", journal.output_prefix);
        self.store
            .put(&format!("{}/{name}", journal.partition), bytes, rt)?;
        Ok(name)
    }

    /// Undoes an unfinished compaction: deletes every file carrying its output
    /// prefix, then the journal. The inputs are untouched.
    fn roll_back(&self, journal: &Journal, rt: Option<&Runtime>) -> Result<(), HistoryError> {
        self.delete_outputs(journal, rt)?;
        self.store.delete(&journal_path(&journal.partition), rt)
    }

    /// Deletes every file of the partition carrying the journal's output prefix.
    fn delete_outputs(&self, journal: &Journal, rt: Option<&Runtime>) -> Result<(), HistoryError> {
        for file in self.store.list_files(&journal.partition, rt)? {
            if file.name.starts_with(&journal.output_prefix) {
                self.store
                    .delete(&format!("{}/{}", journal.partition, file.name), rt)?;
            }
        }
        Ok(())
    }

    /// Finishes a complete compaction: deletes the inputs, then the journal.
    fn roll_forward(&self, journal: &Journal, rt: Option<&Runtime>) -> Result<(), HistoryError> {
        for input in &journal.inputs {
            self.store
                .delete(&format!("{}/{input}", journal.partition), rt)?;
        }
        self.store.delete(&journal_path(&journal.partition), rt)
    }

    /// Finishes or undoes the compactions whose journal was last written before
    /// `before` (their process stopped midway); returns how many.
    pub fn recover(
        &self,
        before: DateTime<Utc>,
        rt: Option<&Runtime>,
    ) -> Result<usize, HistoryError> {
        let mut recovered = 0;
        for file in self.store.list_files(JOURNALS, rt)? {
            if !file.name.ends_with(".json") || file.modified.is_none_or(|m| m >= before) {
                continue;
            }
            let at = format!("{JOURNALS}/{}", file.name);
            let bytes = self.store.get(&at, rt)?;
            match serde_json::from_slice::<Journal>(&bytes) {
                Ok(journal) if journal.complete => {
                    self.roll_forward(&journal, rt)?;
                    tracing::info!(partition = %journal.partition, "finished a compaction a stop interrupted");
                }
                Ok(journal) => {
                    self.roll_back(&journal, rt)?;
                    tracing::info!(partition = %journal.partition, "undid a compaction a stop interrupted");
                }
                // A journal is synced before any output is written: a torn
                // one stands for a compaction that wrote nothing.
                Err(error) => {
                    tracing::warn!(%error, journal = %at, "removing an unreadable compaction journal");
                    self.store.delete(&at, rt)?;
                }
            }
            recovered += 1;
        }
        Ok(recovered)
    }
}

fn to_json(journal: &Journal) -> Result<Vec<u8>, HistoryError> {
    serde_json::to_vec(journal)
        .map_err(|e| HistoryError::Encode(format!("compaction journal: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::store::S3Options;
    use datafusion::arrow::array::{Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    const HOUR: &str = "events/source=kong/day=2026-11-20/hour=10";

    /// A batch of `n` numbers from `from`, in one column `n`.
    fn numbers(from: i64, n: i64) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("n", DataType::Int64, false)]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
        )
        .expect("batch")
    }

    /// The same numbers with a second column: another schema.
    fn labelled(from: i64, n: i64) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("label", DataType::Utf8, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(from..from + n)),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("l{i}")),
                )),
            ],
        )
        .expect("batch")
    }

    fn encode(batch: &RecordBatch) -> Vec<u8> {
        let mut writer = ArrowWriter::try_new(Vec::new(), batch.schema(), None).expect("writer");
        writer.write(batch).expect("write");
        writer.into_inner().expect("close")
    }

    /// Writes each batch as one file of the hour, `part-000.parquet` onwards.
    fn put_files(store: &Store, rt: Option<&Runtime>, batches: &[RecordBatch]) -> Vec<String> {
        batches
            .iter()
            .enumerate()
            .map(|(i, batch)| {
                let name = format!("part-{i:03}.parquet");
                store
                    .put(&format!("{HOUR}/{name}"), encode(batch), rt)
                    .expect("put");
                name
            })
            .collect()
    }

    fn names(store: &Store, rt: Option<&Runtime>, folder: &str) -> Vec<String> {
        store
            .list_files(folder, rt)
            .expect("list")
            .into_iter()
            .map(|f| f.name)
            .collect()
    }

    /// Every value of column `n` in the hour's files, sorted.
    fn numbers_in(store: &Store, rt: Option<&Runtime>) -> Vec<i64> {
        let mut all = Vec::new();
        for name in names(store, rt, HOUR) {
            store
                .read_parquet(&format!("{HOUR}/{name}"), rt, |batch| {
                    let column = batch
                        .column_by_name("n")
                        .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
                        .expect("column n");
                    all.extend(column.iter().flatten());
                    Ok(())
                })
                .expect("readable");
        }
        all.sort();
        all
    }

    fn local() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            Store::open(&dir.path().display().to_string(), &S3Options::default()).expect("store");
        (dir, store)
    }

    fn compactor(store: &Store) -> Compactor {
        Compactor::new(store.clone(), WriterProperties::default(), 1 << 30)
    }

    fn far_future() -> DateTime<Utc> {
        Utc::now() + chrono::Duration::days(1)
    }

    #[test]
    fn the_files_of_an_hour_become_one_with_every_row_in_order() {
        let (_dir, store) = local();
        put_files(
            &store,
            None,
            &[numbers(0, 10), numbers(10, 5), numbers(15, 7)],
        );
        let outcome = compactor(&store).compact(HOUR, None).expect("compacted");
        assert_eq!(
            outcome,
            Outcome::Done(Compacted {
                inputs: 3,
                outputs: 1
            })
        );
        let left = names(&store, None, HOUR);
        assert_eq!(left.len(), 1, "{left:?}");
        // Read in file order, the rows keep the order the files had.
        let mut read = Vec::new();
        store
            .read_parquet(&format!("{HOUR}/{}", left[0]), None, |batch| {
                let column = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("n");
                read.extend(column.iter().flatten());
                Ok(())
            })
            .expect("readable");
        assert_eq!(read, (0..22).collect::<Vec<_>>());
        assert!(
            names(&store, None, JOURNALS).is_empty(),
            "the journal is gone"
        );
        assert_eq!(
            compactor(&store).compact(HOUR, None).expect("again"),
            Outcome::Nothing,
            "one file is left as it is"
        );
    }

    #[test]
    fn outputs_are_cut_at_the_data_bound() {
        let (_dir, store) = local();
        put_files(
            &store,
            None,
            &[numbers(0, 1000), numbers(1000, 1000), numbers(2000, 1000)],
        );
        let one = numbers(0, 1000).get_array_memory_size();
        let mut compactor = Compactor::new(store.clone(), WriterProperties::default(), one);
        let outcome = compactor.compact(HOUR, None).expect("compacted");
        // Each input's data reaches the bound alone: three outputs, the same rows.
        assert_eq!(
            outcome,
            Outcome::Done(Compacted {
                inputs: 3,
                outputs: 3
            })
        );
        assert_eq!(numbers_in(&store, None), (0..3000).collect::<Vec<_>>());
    }

    #[test]
    fn files_of_another_schema_are_merged_only_among_themselves() {
        let (_dir, store) = local();
        put_files(
            &store,
            None,
            &[
                numbers(0, 3),
                labelled(3, 3),
                numbers(6, 3),
                labelled(9, 3),
                numbers(12, 1),
            ],
        );
        store
            .put(
                &format!("{HOUR}/zz-corrupt.parquet"),
                b"not parquet".to_vec(),
                None,
            )
            .expect("put");
        let outcome = compactor(&store).compact(HOUR, None).expect("compacted");
        assert_eq!(
            outcome,
            Outcome::Done(Compacted {
                inputs: 5,
                outputs: 2
            })
        );
        let left = names(&store, None, HOUR);
        assert_eq!(
            left.len(),
            3,
            "two merged files and the unreadable one: {left:?}"
        );
        assert!(left.contains(&"zz-corrupt.parquet".to_string()));
        for name in left.iter().filter(|n| n.starts_with("part-")) {
            let schema = store
                .parquet_schema(&format!("{HOUR}/{name}"), 0, None)
                .expect("schema");
            assert!([1, 2].contains(&schema.fields().len()));
        }
    }

    #[test]
    fn a_partition_whose_journal_is_held_is_left_alone() {
        let (_dir, store) = local();
        let inputs = put_files(&store, None, &[numbers(0, 3), numbers(3, 3)]);
        assert!(
            store
                .create_new(&journal_path(HOUR), b"{}".to_vec(), None)
                .expect("create")
                .is_some()
        );
        assert!(
            store
                .create_new(&journal_path(HOUR), b"{}".to_vec(), None)
                .expect("create")
                .is_none(),
            "a journal is created once"
        );
        assert_eq!(
            compactor(&store).compact(HOUR, None).expect("compact"),
            Outcome::Busy
        );
        assert_eq!(names(&store, None, HOUR), inputs);
    }

    /// Sets up a compaction of three files stopped after writing its outputs:
    /// the journal, complete or not as asked.
    fn stopped_compaction(store: &Store, complete: bool) -> (Journal, Vec<String>) {
        let (journal, inputs, _) = compaction_midway(store, complete);
        (journal, inputs)
    }

    /// [`stopped_compaction`], with the version of the journal it wrote.
    fn compaction_midway(store: &Store, complete: bool) -> (Journal, Vec<String>, Version) {
        let inputs = put_files(store, None, &[numbers(0, 4), numbers(4, 4), numbers(8, 4)]);
        let compactor = compactor(store);
        let groups = vec![(numbers(0, 1).schema(), inputs.clone())];
        let mut journal = Journal {
            partition: HOUR.to_string(),
            inputs: inputs.clone(),
            output_prefix: "part-20261120T120000000-1-c00001-".to_string(),
            outputs: Vec::new(),
            complete: false,
        };
        let version = store
            .create_new(&journal_path(HOUR), to_json(&journal).expect("json"), None)
            .expect("journal")
            .expect("created");
        journal.outputs = compactor
            .write_outputs(&groups, &journal, None)
            .expect("outputs");
        if complete {
            journal.complete = true;
            store
                .put(&journal_path(HOUR), to_json(&journal).expect("json"), None)
                .expect("journal");
        }
        (journal, inputs, version)
    }

    #[test]
    fn a_compaction_whose_journal_a_recovery_took_undoes_itself_and_keeps_the_inputs() {
        let (_dir, store) = local();
        // A slow compaction has written its outputs; meanwhile another process
        // took its journal for a stopped one's and undid it.
        let (journal, inputs, version) = compaction_midway(&store, false);
        assert_eq!(
            compactor(&store)
                .recover(far_future(), None)
                .expect("recover"),
            1
        );
        let mut slow = compactor(&store);
        let finished = slow.finish(journal, &version, None);
        assert!(
            matches!(finished, Err(HistoryError::Compaction(_))),
            "{finished:?}"
        );
        assert_eq!(names(&store, None, HOUR), inputs, "the inputs stay, alone");
        assert_eq!(numbers_in(&store, None), (0..12).collect::<Vec<_>>());
        assert!(names(&store, None, JOURNALS).is_empty());
    }

    #[test]
    fn late_files_join_the_hours_one_compacted_file_and_a_large_hour_keeps_its_files() {
        let (_dir, store) = local();
        let late = |store: &Store, name: &str, from: i64| {
            store
                .put(&format!("{HOUR}/{name}"), encode(&numbers(from, 5)), None)
                .expect("put");
        };
        put_files(&store, None, &[numbers(0, 5), numbers(5, 5)]);
        let mut compactor = compactor(&store);
        compactor.compact(HOUR, None).expect("compacted");
        late(&store, "part-late-1.parquet", 10);
        assert_eq!(
            compactor.compact(HOUR, None).expect("compacted"),
            Outcome::Done(Compacted {
                inputs: 2,
                outputs: 1
            }),
            "the late file and the compacted one"
        );
        assert_eq!(names(&store, None, HOUR).len(), 1);
        assert_eq!(numbers_in(&store, None), (0..15).collect::<Vec<_>>());

        // An hour compacted into two files is not rewritten for late files.
        let (_dir, store) = local();
        put_files(&store, None, &[numbers(0, 1000), numbers(1000, 1000)]);
        let one = numbers(0, 1000).get_array_memory_size();
        let mut compactor = Compactor::new(store.clone(), WriterProperties::default(), one);
        compactor.compact(HOUR, None).expect("compacted");
        let outputs = names(&store, None, HOUR);
        assert_eq!(outputs.len(), 2);
        late(&store, "part-late-1.parquet", 2000);
        assert_eq!(
            compactor.compact(HOUR, None).expect("compact"),
            Outcome::Nothing,
            "one late file alone stays"
        );
        late(&store, "part-late-2.parquet", 2005);
        assert_eq!(
            compactor.compact(HOUR, None).expect("compacted"),
            Outcome::Done(Compacted {
                inputs: 2,
                outputs: 1
            }),
            "the two late files only"
        );
        let now = names(&store, None, HOUR);
        assert!(outputs.iter().all(|o| now.contains(o)), "{now:?}");
        assert_eq!(now.len(), 3);
        assert_eq!(numbers_in(&store, None), (0..2010).collect::<Vec<_>>());
        assert_eq!(
            compactor.compact(HOUR, None).expect("compact"),
            Outcome::Nothing
        );
    }

    #[test]
    fn compaction_outputs_are_told_from_flush_files_by_name() {
        assert!(is_compaction_output(
            "part-20261120T120000000-7-c00001-000.parquet"
        ));
        assert!(!is_compaction_output(
            "part-20261120T120000000-7-00001.parquet"
        ));
        assert!(!is_compaction_output("zz-corrupt.parquet"));
    }

    #[test]
    fn a_compaction_stopped_before_its_journal_was_complete_is_undone() {
        let (_dir, store) = local();
        let (_, inputs) = stopped_compaction(&store, false);
        assert_eq!(names(&store, None, HOUR).len(), 4, "inputs and the output");
        let compactor = compactor(&store);
        assert_eq!(
            compactor
                .recover(Utc::now() - chrono::Duration::hours(1), None)
                .expect("recover"),
            0,
            "a fresh journal may be a live compaction"
        );
        assert_eq!(compactor.recover(far_future(), None).expect("recover"), 1);
        assert_eq!(
            names(&store, None, HOUR),
            inputs,
            "the inputs, and only them"
        );
        assert_eq!(numbers_in(&store, None), (0..12).collect::<Vec<_>>());
        assert!(names(&store, None, JOURNALS).is_empty());
    }

    #[test]
    fn a_compaction_stopped_after_its_journal_was_complete_is_finished() {
        let (_dir, store) = local();
        let (journal, inputs) = stopped_compaction(&store, true);
        // It had deleted one input when it stopped.
        store
            .delete(&format!("{HOUR}/{}", inputs[0]), None)
            .expect("delete");
        assert_eq!(
            numbers_in(&store, None).len(),
            12 + 8,
            "rows twice until finished"
        );
        assert_eq!(
            compactor(&store)
                .recover(far_future(), None)
                .expect("recover"),
            1
        );
        assert_eq!(names(&store, None, HOUR), journal.outputs);
        assert_eq!(numbers_in(&store, None), (0..12).collect::<Vec<_>>());
        assert!(names(&store, None, JOURNALS).is_empty());
    }

    #[test]
    fn a_torn_journal_is_removed_and_the_inputs_kept() {
        let (_dir, store) = local();
        let inputs = put_files(&store, None, &[numbers(0, 2), numbers(2, 2)]);
        store
            .create_new(&journal_path(HOUR), b"{\"partition\":\"ev".to_vec(), None)
            .expect("journal");
        assert_eq!(
            compactor(&store)
                .recover(far_future(), None)
                .expect("recover"),
            1
        );
        assert_eq!(names(&store, None, HOUR), inputs);
        assert!(names(&store, None, JOURNALS).is_empty());
    }

    #[test]
    fn an_object_store_history_is_compacted_the_same_way() {
        let (store, runtime) = crate::history::store::tests::memory_store();
        let rt = Some(&runtime);
        put_files(
            &store,
            rt,
            &[
                numbers(0, 10),
                labelled(10, 2),
                numbers(12, 10),
                labelled(22, 2),
            ],
        );
        let mut compactor = compactor(&store);
        let outcome = compactor.compact(HOUR, rt).expect("compacted");
        assert_eq!(
            outcome,
            Outcome::Done(Compacted {
                inputs: 4,
                outputs: 2
            })
        );
        assert_eq!(names(&store, rt, HOUR).len(), 2);
        assert_eq!(numbers_in(&store, rt), (0..24).collect::<Vec<_>>());
        assert!(
            names(&store, rt, JOURNALS).is_empty(),
            "the journal is gone"
        );
        // The journal is exclusive on an object store too, and replaced only
        // while it is still the version its writer holds.
        let at = journal_path(HOUR);
        let first = store
            .create_new(&at, b"{}".to_vec(), rt)
            .expect("create")
            .expect("created");
        assert!(
            store
                .create_new(&at, b"{}".to_vec(), rt)
                .expect("create")
                .is_none()
        );
        let second = store
            .replace_if_unchanged(&at, b"{ }".to_vec(), &first, rt)
            .expect("replace");
        assert!(second.is_some(), "the holder replaces its own journal");
        assert!(
            store
                .replace_if_unchanged(&at, b"{  }".to_vec(), &first, rt)
                .expect("replace")
                .is_none(),
            "an outdated version replaces nothing"
        );
        assert_eq!(compactor.recover(far_future(), rt).expect("recover"), 1);
        assert!(
            store
                .replace_if_unchanged(&at, b"{}".to_vec(), &second.expect("version"), rt)
                .expect("replace")
                .is_none(),
            "nor does any version once the journal is gone"
        );
    }
}
