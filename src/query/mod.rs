//! SQL over the history with DataFusion: the `events` and `alerts` tables, read-only, with limits.
//!
//! Both tables are listing tables over the hive folders the history writer
//! makes, so `WHERE day = … AND hour = …` (and `source = …` on events) prune
//! whole folders before any file is opened. Queries run on a runtime of their
//! own, with a memory pool, a time limit and a row limit, so a heavy query
//! never stalls ingestion.

pub mod guard;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use crate::history::{HistorySettings, Store, schema};
use crate::settings::SecretRef;

/// Stack of each query runtime thread. DataFusion's planner and optimizer
/// recurse over the syntax and plan trees; this holds [`guard::MAX_NESTING`]
/// levels with room to spare even unoptimized (about 25 KiB a level), and it
/// is only address space until a deep query touches it.
const QUERY_THREAD_STACK_BYTES: usize = 16 * 1024 * 1024;

/// `[query]` settings: limits of `appwarden query` and of `POST /v1/query`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuerySettings {
    /// Bearer token of `POST /v1/query`, as `{ env = "VAR" }` or `{ file = "PATH" }`.
    /// Unset: the endpoint is off (the CLI needs no token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
    /// A query running longer than this is cancelled.
    pub timeout_secs: u64,
    /// At most this many rows are returned; the answer says when it was cut.
    pub max_rows: usize,
    /// Memory a query may hold for sorts, joins and aggregates, in MiB.
    pub memory_limit_mib: usize,
    /// Threads of the query runtime (apart from ingestion's).
    pub threads: usize,
}

impl QuerySettings {
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, m: &str| Err((format!("query.{k}"), m.to_string()));
        if self.timeout_secs == 0 || self.timeout_secs > 3600 {
            return err("timeout_secs", "must be between 1 and 3600");
        }
        if self.max_rows == 0 {
            return err("max_rows", "must be at least 1");
        }
        if self.memory_limit_mib < 16 {
            return err("memory_limit_mib", "must be at least 16");
        }
        if self.threads == 0 || self.threads > 64 {
            return err("threads", "must be between 1 and 64");
        }
        if let Some(token) = &self.token
            && let Err(msg) = token.validate()
        {
            return err("token", &msg);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Refused(#[from] guard::Refused),
    #[error("no history configured: set history.path")]
    NoHistory,
    #[error("opening the history: {0}")]
    Open(String),
    #[error("query failed: {0}")]
    Failed(String),
    #[error("query took longer than {0} s and was cancelled")]
    Timeout(u64),
}

impl QueryError {
    /// Whether the caller sent a query that can never run (HTTP 400), rather than one that failed.
    pub fn is_client_error(&self) -> bool {
        matches!(self, QueryError::Refused(_) | QueryError::Failed(_))
    }
}

/// A query's answer.
#[derive(Debug)]
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: usize,
    /// More rows matched than `max_rows`; the rest were not read.
    pub truncated: bool,
}

/// The SQL engine over one history root.
pub struct QueryEngine {
    ctx: SessionContext,
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    timeout: Duration,
    timeout_secs: u64,
    max_rows: usize,
}

fn listing_table(
    ctx: &SessionContext,
    url: &str,
    file_schema: SchemaRef,
    partitions: Vec<(String, datafusion::arrow::datatypes::DataType)>,
) -> Result<Arc<ListingTable>, QueryError> {
    let url = ListingTableUrl::parse(url).map_err(|e| QueryError::Open(e.to_string()))?;
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(partitions);
    let _ = ctx;
    let config = ListingTableConfig::new(url)
        .with_listing_options(options)
        .with_schema(file_schema);
    ListingTable::try_new(config)
        .map(Arc::new)
        .map_err(|e| QueryError::Open(e.to_string()))
}

impl QueryEngine {
    /// Opens the history the settings name and registers `events` and `alerts`.
    pub fn open(
        history: &HistorySettings,
        query: &QuerySettings,
    ) -> Result<QueryEngine, QueryError> {
        if !history.enabled() {
            return Err(QueryError::NoHistory);
        }
        let store = Store::open(&history.path, &history.s3())
            .map_err(|e| QueryError::Open(e.to_string()))?;
        Self::over(&store, query)
    }

    /// Registers the tables over an opened store.
    pub fn over(store: &Store, query: &QuerySettings) -> Result<QueryEngine, QueryError> {
        let runtime_env = RuntimeEnvBuilder::new()
            .with_memory_limit(query.memory_limit_mib * 1024 * 1024, 1.0)
            .build_arc()
            .map_err(|e| QueryError::Open(e.to_string()))?;
        if let Some((url, object_store)) = store.object_store() {
            let url = ObjectStoreUrl::parse(&url).map_err(|e| QueryError::Open(e.to_string()))?;
            runtime_env.register_object_store(url.as_ref(), object_store);
        }
        let config = SessionConfig::new()
            .with_target_partitions(query.threads.max(1))
            .with_information_schema(true);
        let ctx = SessionContext::new_with_config_rt(config, runtime_env);
        let events = listing_table(
            &ctx,
            &store.table_url("events"),
            schema::EVENTS.clone(),
            schema::event_partition_cols(),
        )?;
        let alerts = listing_table(
            &ctx,
            &store.table_url("alerts"),
            schema::ALERTS.clone(),
            schema::alert_partition_cols(),
        )?;
        ctx.register_table("events", events)
            .map_err(|e| QueryError::Open(e.to_string()))?;
        ctx.register_table("alerts", alerts)
            .map_err(|e| QueryError::Open(e.to_string()))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(query.threads.max(1))
            .thread_name("query")
            .thread_stack_size(QUERY_THREAD_STACK_BYTES)
            .enable_all()
            .build()
            .map_err(|e| QueryError::Open(e.to_string()))?;
        Ok(QueryEngine {
            ctx,
            runtime: Some(runtime),
            timeout: Duration::from_secs(query.timeout_secs),
            timeout_secs: query.timeout_secs,
            max_rows: query.max_rows,
        })
    }

    /// Runs one read-only query on the query runtime; awaitable from any runtime.
    ///
    /// Even the guard runs there: its passes over the syntax tree recurse, and
    /// the query runtime's threads have the stack for it.
    pub async fn run(&self, sql: &str) -> Result<Answer, QueryError> {
        let ctx = self.ctx.clone();
        let sql = sql.to_string();
        let max_rows = self.max_rows;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| QueryError::Failed("the query runtime is gone".into()))?;
        let task = runtime.spawn(async move { execute(ctx, &sql, max_rows).await });
        let abort = task.abort_handle();
        match tokio::time::timeout(self.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(QueryError::Failed(format!("query task ended: {join}"))),
            Err(_) => {
                // Dropping the task's stream stops its operators and frees their memory.
                abort.abort();
                Err(QueryError::Timeout(self.timeout_secs))
            }
        }
    }
}

impl Drop for QueryEngine {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

async fn execute(ctx: SessionContext, sql: &str, max_rows: usize) -> Result<Answer, QueryError> {
    guard::check(sql)?;
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = ctx
        .sql_with_options(sql, options)
        .await
        .map_err(|e| QueryError::Failed(e.to_string()))?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|e| QueryError::Failed(e.to_string()))?;
    let mut batches = Vec::new();
    let mut rows = 0;
    let mut truncated = false;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| QueryError::Failed(e.to_string()))?;
        if rows + batch.num_rows() > max_rows {
            let keep = max_rows - rows;
            if keep > 0 {
                batches.push(batch.slice(0, keep));
            }
            rows = max_rows;
            truncated = true;
            break;
        }
        rows += batch.num_rows();
        batches.push(batch);
    }
    Ok(Answer {
        schema,
        batches,
        rows,
        truncated,
    })
}

/// An answer as the HTTP endpoint returns it:
/// `{"columns": [...], "rows": [{...}, ...], "row_count": N, "truncated": bool}`.
pub fn answer_json(answer: &Answer) -> Result<Vec<u8>, QueryError> {
    let failed = |e: &dyn std::fmt::Display| QueryError::Failed(format!("encoding: {e}"));
    let mut rows = Vec::new();
    {
        let mut writer = datafusion::arrow::json::ArrayWriter::new(&mut rows);
        for batch in &answer.batches {
            writer.write(batch).map_err(|e| failed(&e))?;
        }
        writer.finish().map_err(|e| failed(&e))?;
    }
    if rows.is_empty() {
        rows.extend_from_slice(b"[]");
    }
    let columns = serde_json::to_string(&column_names(answer)).map_err(|e| failed(&e))?;
    let mut out = Vec::with_capacity(rows.len() + columns.len() + 64);
    out.extend_from_slice(b"{\"columns\":");
    out.extend_from_slice(columns.as_bytes());
    out.extend_from_slice(b",\"rows\":");
    out.extend_from_slice(&rows);
    out.extend_from_slice(
        format!(
            ",\"row_count\":{},\"truncated\":{}}}",
            answer.rows, answer.truncated
        )
        .as_bytes(),
    );
    Ok(out)
}

/// How `appwarden query` prints an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row (NDJSON).
    Json,
}

fn column_names(answer: &Answer) -> Vec<String> {
    answer
        .schema
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect()
}

/// Writes an answer in `format`.
pub fn write_answer(
    answer: &Answer,
    format: OutputFormat,
    out: &mut dyn std::io::Write,
) -> Result<(), QueryError> {
    let failed = |e: &dyn std::fmt::Display| QueryError::Failed(format!("printing: {e}"));
    match format {
        OutputFormat::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(&answer.batches)
                .map_err(|e| failed(&e))?;
            if answer.batches.is_empty() {
                writeln!(out, "{}", column_names(answer).join(" | ")).map_err(|e| failed(&e))?;
            } else {
                writeln!(out, "{table}").map_err(|e| failed(&e))?;
            }
        }
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if answer.batches.is_empty() {
                drop(writer);
                writeln!(out, "{}", column_names(answer).join(",")).map_err(|e| failed(&e))?;
            } else {
                for batch in &answer.batches {
                    writer.write(batch).map_err(|e| failed(&e))?;
                }
            }
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(&mut *out);
            for batch in &answer.batches {
                writer.write(batch).map_err(|e| failed(&e))?;
            }
            writer.finish().map_err(|e| failed(&e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> QuerySettings {
        QuerySettings {
            token: None,
            timeout_secs: 60,
            max_rows: 100,
            memory_limit_mib: 64,
            threads: 1,
        }
    }

    /// An engine over an empty history in `dir`.
    fn engine(dir: &tempfile::TempDir, settings: &QuerySettings) -> QueryEngine {
        let root = dir.path().to_str().expect("a UTF-8 temp path");
        let store = Store::open(root, &Default::default()).expect("open the store");
        QueryEngine::over(&store, settings).expect("open the engine")
    }

    #[tokio::test]
    async fn the_deepest_query_the_guard_allows_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = engine(&dir, &settings());
        let sql = format!("SELECT 1{}", " + 1".repeat(guard::MAX_NESTING - 1));
        let answer = engine
            .run(&sql)
            .await
            .expect("the deepest allowed query runs");
        assert_eq!(answer.rows, 1);
        let deeper = format!("{sql} + 1");
        let refused = engine
            .run(&deeper)
            .await
            .expect_err("one level deeper is refused");
        assert!(refused.is_client_error(), "{refused}");
    }
}
