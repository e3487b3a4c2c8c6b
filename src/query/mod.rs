//! SQL over the history with DataFusion: the `events` and `alerts` tables, read-only, with limits.
//!
//! Both tables are listing tables over the hive folders the history writer
//! makes, so `WHERE day = … AND hour = …` (and `source = …` on events) prune
//! whole folders before any file is opened. Queries run on a runtime of their
//! own, with a memory pool, a time limit and a row limit, so a heavy query
//! never stalls ingestion.

mod bounded;
pub mod guard;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::execution::cache::cache_manager::CacheManagerConfig;
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
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
    /// An answer holds at most this many MiB (the Arrow size of its rows; the
    /// JSON of `POST /v1/query` adds its syntax); the answer says when it was
    /// cut. `repeat`, `lpad`, `rpad` and `replace` refuse to build more than
    /// this in one call.
    pub max_result_mib: usize,
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
        if self.max_result_mib == 0 || self.max_result_mib > 4096 {
            return err("max_result_mib", "must be between 1 and 4096");
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
    #[error("encoding the answer: {0}")]
    Encode(String),
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
    /// More rows matched than `max_rows` (or than fit in `max_result_mib`); the rest were not read.
    pub truncated: bool,
}

/// How much of a query's result an answer keeps.
#[derive(Debug, Clone, Copy)]
struct AnswerLimits {
    max_rows: usize,
    max_bytes: usize,
}

/// The SQL engine over one history root.
pub struct QueryEngine {
    ctx: SessionContext,
    /// Always `Some` until dropped.
    runtime: Option<tokio::runtime::Runtime>,
    timeout: Duration,
    timeout_secs: u64,
    limits: AnswerLimits,
}

/// Aborts the query task when its caller stops waiting: a client that
/// disconnects drops the request's future, and with it this guard.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        // No spilling: a query over its memory fails rather than writing up
        // to DataFusion's default 100 GiB into the temp folder. No cached file
        // listing: DataFusion keeps a folder's listing forever by default, so the
        // daemon's engine would never see the files its writer adds after the
        // first query (nor miss those retention deletes). Statistics stay cached:
        // history files are never rewritten, and the cache checks their mtime.
        let runtime_env = RuntimeEnvBuilder::new()
            .with_memory_limit(query.memory_limit_mib * 1024 * 1024, 1.0)
            .with_disk_manager_builder(
                DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled),
            )
            .with_cache_manager(CacheManagerConfig::default().with_list_files_cache_limit(0))
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
        let max_result_bytes = query.max_result_mib * 1024 * 1024;
        bounded::register(&ctx, max_result_bytes).map_err(|e| QueryError::Open(e.to_string()))?;
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
            limits: AnswerLimits {
                max_rows: query.max_rows,
                max_bytes: max_result_bytes,
            },
        })
    }

    /// Runs one read-only query on the query runtime; awaitable from any runtime.
    ///
    /// Even the guard runs there: its passes over the syntax tree recurse, and
    /// the query runtime's threads have the stack for it.
    pub async fn run(&self, sql: &str) -> Result<Answer, QueryError> {
        self.on_runtime(sql, (), Ok).await
    }

    /// Runs one query and encodes its answer as [`answer_json`] does, both on
    /// the query runtime. `held` (the endpoint's concurrency permit) is
    /// dropped when the query task ends, not when the caller stops waiting.
    pub async fn run_json(
        &self,
        sql: &str,
        held: impl Send + 'static,
    ) -> Result<Vec<u8>, QueryError> {
        self.on_runtime(sql, held, |answer| answer_json(&answer))
            .await
    }

    /// Runs `sql`, then `finish` on its answer, as one task on the query
    /// runtime. The task is aborted when it times out or when the returned
    /// future is dropped; `held` lives as long as the task.
    async fn on_runtime<T: Send + 'static>(
        &self,
        sql: &str,
        held: impl Send + 'static,
        finish: impl FnOnce(Answer) -> Result<T, QueryError> + Send + 'static,
    ) -> Result<T, QueryError> {
        let ctx = self.ctx.clone();
        let sql = sql.to_string();
        let limits = self.limits;
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| QueryError::Failed("the query runtime is gone".into()))?;
        let mut task = AbortOnDrop(runtime.spawn(async move {
            let _held = held;
            finish(execute(ctx, &sql, limits).await?)
        }));
        // On a timeout `task` is dropped: aborting drops the query's stream,
        // which stops its operators and frees their memory.
        match tokio::time::timeout(self.timeout, &mut task.0).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(QueryError::Failed(format!("query task ended: {join}"))),
            Err(_) => Err(QueryError::Timeout(self.timeout_secs)),
        }
    }

    /// Tasks alive on the query runtime: a query's own and its operators'.
    #[cfg(test)]
    fn tasks_alive(&self) -> usize {
        self.runtime
            .as_ref()
            .map_or(0, |runtime| runtime.metrics().num_alive_tasks())
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

async fn execute(
    ctx: SessionContext,
    sql: &str,
    limits: AnswerLimits,
) -> Result<Answer, QueryError> {
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
    let mut bytes = 0;
    let mut truncated = false;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| QueryError::Failed(e.to_string()))?;
        let fit = rows_that_fit(&batch, limits.max_rows - rows, limits.max_bytes - bytes);
        if fit > 0 {
            let kept = batch.slice(0, fit);
            rows += fit;
            bytes += slice_bytes(&kept);
            batches.push(kept);
        }
        if fit < batch.num_rows() {
            truncated = true;
            break;
        }
    }
    Ok(Answer {
        schema,
        batches,
        rows,
        truncated,
    })
}

/// The Arrow size of the rows of `batch` (not of buffers it shares with rows cut off).
fn slice_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|column| {
            column
                .to_data()
                .get_slice_memory_size()
                .unwrap_or_else(|_| column.get_array_memory_size())
        })
        .sum()
}

/// How many of the first rows of `batch` fit in `max_rows` and `max_bytes`.
fn rows_that_fit(batch: &RecordBatch, max_rows: usize, max_bytes: usize) -> usize {
    let rows = batch.num_rows().min(max_rows);
    if slice_bytes(&batch.slice(0, rows)) <= max_bytes {
        return rows;
    }
    // The size grows with the rows kept: find the last count that fits.
    let (mut fits, mut over) = (0, rows);
    while over - fits > 1 {
        let mid = fits + (over - fits) / 2;
        if slice_bytes(&batch.slice(0, mid)) <= max_bytes {
            fits = mid;
        } else {
            over = mid;
        }
    }
    fits
}

/// An answer as the HTTP endpoint returns it:
/// `{"columns": [...], "rows": [{...}, ...], "row_count": N, "truncated": bool}`.
pub fn answer_json(answer: &Answer) -> Result<Vec<u8>, QueryError> {
    let failed = |e: &dyn std::fmt::Display| QueryError::Encode(e.to_string());
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
            max_result_mib: 64,
            memory_limit_mib: 64,
            threads: 1,
        }
    }

    /// `rows` rows `(n, pad)`, `pad` being `width` bytes: a recursive query
    /// adds 1 024 rows at each step (`rows` a multiple of 1 024).
    fn rows_of(rows: usize, width: usize) -> String {
        let first: Vec<String> = (0..1024).map(|n| format!("({n})")).collect();
        format!(
            "WITH RECURSIVE r(n) AS (SELECT column1 AS n FROM (VALUES {}) UNION ALL \
             SELECT n + 1024 FROM r WHERE n + 1024 < {rows}) \
             SELECT n, repeat('x', {width}) AS pad FROM r",
            first.join(", ")
        )
    }

    #[tokio::test]
    async fn a_dropped_request_aborts_its_runaway_query() {
        let (_dir, engine) = engine(QuerySettings {
            timeout_secs: 3600,
            ..settings()
        });
        let forever = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) \
                       SELECT count(*) FROM r";
        // hyper drops the handler's future when its client disconnects.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(300), engine.run_json(forever, ())).await;
        assert!(gave_up.is_err(), "the query never ends on its own");
        for _ in 0..100 {
            if engine.tasks_alive() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{} tasks still run 10 s after their request was dropped",
            engine.tasks_alive()
        );
    }

    #[tokio::test]
    async fn repeat_lpad_rpad_and_replace_cannot_build_strings_over_the_result_limit() {
        let (_dir, engine) = engine(QuerySettings {
            max_result_mib: 1,
            ..settings()
        });
        let small = engine
            .run("SELECT repeat('ab', 3), lpad('x', 3, '-'), replace('aa', 'a', 'bc')")
            .await
            .expect("small strings are built");
        assert_eq!(small.rows, 1);
        for sql in [
            "SELECT repeat('x', 2000000)",
            "SELECT lpad('x', 2000000)",
            "SELECT rpad('x', 2000000, 'y')",
            "SELECT replace(repeat('x', 2000), 'x', repeat('y', 1000))",
            // Per row each is small; the call's output is not.
            "SELECT repeat('ab', n) FROM (VALUES (10), (600000), (600000)) t(n)",
            "SELECT lpad(s, 200000) FROM (VALUES ('a'), ('b')) t(s)",
        ] {
            let refused = match engine.run(sql).await {
                Ok(answer) => panic!("{sql}: built {} rows", answer.rows),
                Err(refused) => refused,
            };
            assert!(
                refused.is_client_error() && refused.to_string().contains("max_result_mib"),
                "{sql}: {refused}"
            );
        }
        // Refused before allocating its 2 GiB.
        let refused = engine.run("SELECT repeat('x', 2147483647)").await;
        assert!(refused.is_err(), "repeat('x', 2147483647) was built");
    }

    #[tokio::test]
    async fn a_sort_over_the_memory_limit_fails_instead_of_spilling() {
        let (_dir, engine) = engine(QuerySettings {
            memory_limit_mib: 16,
            ..settings()
        });
        // About 30 MiB to sort with 16 MiB of memory.
        let sql = format!("{} ORDER BY n DESC", rows_of(1 << 18, 100));
        let failed = match engine.run(&sql).await {
            Ok(answer) => panic!("sorted {} rows over the memory limit", answer.rows),
            Err(failed) => failed,
        };
        assert!(
            failed.to_string().contains("Resources exhausted"),
            "{failed}"
        );
    }

    #[tokio::test]
    async fn an_answer_is_cut_at_max_result_mib() {
        let (_dir, engine) = engine(QuerySettings {
            max_rows: 1_000_000,
            max_result_mib: 1,
            ..settings()
        });
        // 16 MiB of rows.
        let answer = engine
            .run(&rows_of(1 << 14, 1024))
            .await
            .expect("the query runs");
        let bytes: usize = answer
            .batches
            .iter()
            .flat_map(|batch| batch.columns())
            .map(|column| column.to_data().get_slice_memory_size().unwrap_or(0))
            .sum();
        assert!(answer.truncated, "{} rows, {bytes} bytes", answer.rows);
        assert!(bytes <= 1024 * 1024, "{} rows, {bytes} bytes", answer.rows);
        assert!(answer.rows > 500, "{} rows, {bytes} bytes", answer.rows);
    }

    #[tokio::test]
    async fn answers_are_encoded_on_the_query_runtime_not_the_callers() {
        let (_dir, engine) = engine(QuerySettings {
            max_rows: 1_000_000,
            max_result_mib: 1024,
            ..settings()
        });
        // This test's runtime has one thread, as if ingestion had one: a tick
        // every 5 ms shows how long it was kept from its other work.
        let worst = Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let ticker = tokio::spawn({
            let worst = worst.clone();
            async move {
                let mut last = std::time::Instant::now();
                loop {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let gap = last.elapsed();
                    last = std::time::Instant::now();
                    if let Ok(mut worst) = worst.lock() {
                        *worst = (*worst).max(gap);
                    }
                }
            }
        });
        let started = std::time::Instant::now();
        let json = engine
            .run_json(&rows_of(1 << 19, 32), ())
            .await
            .expect("the query runs");
        let took = started.elapsed();
        // Let the ticker see the gap up to now.
        tokio::time::sleep(Duration::from_millis(20)).await;
        ticker.abort();
        let worst = worst.lock().map(|w| *w).unwrap_or_default();
        assert!(json.len() > 16 * 1024 * 1024, "{} bytes", json.len());
        assert!(
            worst < Duration::from_millis(250),
            "the caller's runtime stalled {worst:?} (the query took {took:?})"
        );
    }

    /// An engine over an empty history, and the folder it lives in.
    fn engine(settings: QuerySettings) -> (tempfile::TempDir, QueryEngine) {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_str().expect("a UTF-8 temp path");
        let store = Store::open(root, &Default::default()).expect("open the store");
        let engine = QueryEngine::over(&store, &settings).expect("open the engine");
        (dir, engine)
    }

    /// `n` Kong events of 2026-11-20 10:00 onwards, the hour's folder shared by all.
    fn kong_rows(n: u32) -> Vec<crate::history::EventRow> {
        (0..n).map(crate::history::tests::row).collect()
    }

    async fn count_events(engine: &QueryEngine) -> usize {
        let answer = engine
            .run("SELECT * FROM events")
            .await
            .expect("the query runs");
        answer.rows
    }

    #[tokio::test]
    async fn an_open_engine_sees_the_files_written_and_expired_after_its_first_query() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (defaults, _) =
            crate::settings::Settings::load_with_env(None, Vec::new()).expect("defaults");
        let history = HistorySettings {
            path: dir.path().display().to_string(),
            retention_days: 0,
            ..defaults.history
        };
        let mut writer = crate::history::HistoryWriter::start(&history).expect("writer");
        writer.events(kong_rows(3)).expect("buffered");
        writer.flush().await.expect("written");
        let engine = QueryEngine::over(writer.store(), &settings()).expect("open the engine");
        assert_eq!(count_events(&engine).await, 3);

        // The daemon's writer goes on adding files to the same hour's folder.
        writer.events(kong_rows(5)).expect("buffered");
        writer.flush().await.expect("written");
        assert_eq!(count_events(&engine).await, 8, "the second file is read");

        // Retention deletes the hour: the engine neither counts nor opens its files.
        let expiring = HistorySettings {
            retention_days: 1,
            ..history
        };
        let later = crate::history::HistoryWriter::start(&expiring).expect("writer");
        later.upkeep_now().await.expect("upkeep expires the hour");
        assert_eq!(count_events(&engine).await, 0, "expired files are gone");
    }

    #[tokio::test]
    async fn the_deepest_query_the_guard_allows_runs() {
        let (_dir, engine) = engine(settings());
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
