//! The history tables' Arrow schemas, and events and alerts turned into record batches.
//!
//! `events` columns follow the normalized event (one column per field, flat,
//! so Athena, Trino, Spark and DuckDB read them without help). The partition
//! columns (`source`, `day`, `hour`) are not in the files: they are the hive
//! folders a file sits in.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{
    ArrayRef, Float64Builder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::error::ArrowError;

use crate::detect::{Alert, Flag};
use crate::event::{NormalizedEvent, Origin, Outcome};

fn time_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

fn list_of_strings() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, true)))
}

/// Partition columns of `events`, in folder order.
pub fn event_partition_cols() -> Vec<(String, DataType)> {
    vec![
        ("source".into(), DataType::Utf8),
        ("day".into(), DataType::Utf8),
        ("hour".into(), DataType::Int32),
    ]
}

/// Partition columns of `alerts`, in folder order (of the window end).
pub fn alert_partition_cols() -> Vec<(String, DataType)> {
    vec![
        ("day".into(), DataType::Utf8),
        ("hour".into(), DataType::Int32),
    ]
}

/// The columns stored in an `events` file.
pub static EVENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("time", time_type(), false),
        Field::new("observed_time", time_type(), false),
        Field::new("product", DataType::Utf8, false),
        Field::new("source_kind", DataType::Utf8, false),
        Field::new("category", DataType::Utf8, false),
        Field::new("class_uid", DataType::Int32, false),
        Field::new("activity", DataType::Utf8, false),
        Field::new("identity_key", DataType::Utf8, false),
        Field::new("identity_status", DataType::Utf8, false),
        s("app_id"),
        Field::new("actor_raw", DataType::Utf8, false),
        s("actor_kind"),
        Field::new("actor_type", DataType::Utf8, false),
        s("token_id"),
        s("issued_token_id"),
        s("session_id"),
        s("src_ip"),
        s("src_country"),
        s("src_region"),
        s("cloud_region"),
        s("cloud_account"),
        s("dst_host"),
        Field::new("dst_port", DataType::Int32, true),
        s("resource"),
        Field::new("resources", list_of_strings(), true),
        s("target_principal"),
        s("http_method"),
        Field::new("outcome", DataType::Utf8, false),
        s("status_code"),
        Field::new("bytes_in", DataType::Int64, true),
        Field::new("bytes_out", DataType::Int64, true),
        s("vendor_event_id"),
        s("kafka_topic"),
        Field::new("kafka_partition", DataType::Int32, true),
        Field::new("kafka_offset", DataType::Int64, true),
        s("file_path"),
        Field::new("file_line", DataType::Int64, true),
        Field::new("findings", list_of_strings(), true),
        Field::new("alert_ids", list_of_strings(), true),
        s("raw_data"),
    ]))
});

/// The columns stored in an `alerts` file.
pub static ALERTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = |name: &str| Field::new(name, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("detector", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("identity_key", DataType::Utf8, false),
        s("app_id"),
        s("app_name"),
        s("owner"),
        s("risk_tier"),
        Field::new("severity", DataType::Utf8, false),
        Field::new("score", DataType::Float64, false),
        Field::new("window_start", time_type(), false),
        Field::new("window_end", time_type(), false),
        Field::new("summary", DataType::Utf8, false),
        Field::new("sql", DataType::Utf8, false),
        Field::new("evidence", DataType::Utf8, false),
        s("group_id"),
        Field::new("group_count", DataType::Int32, true),
        s("actions"),
    ]))
});

/// An event with the findings it raised, as the writer buffers it.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub event: Arc<NormalizedEvent>,
    pub flags: Vec<Flag>,
}

/// Bytes a row of fixed-width text columns (product, category, outcome…) adds at most.
const FIXED_TEXT_BYTES: usize = 96;

impl EventRow {
    /// Bytes of text this row adds to an `events` batch (`raw_data` counted when kept).
    /// Arrow string columns have 32-bit offsets: one column of one batch holds at
    /// most 2 GiB, so the writer cuts its files by this count, not only by rows.
    pub fn text_bytes(&self, raw_data: bool) -> usize {
        let e = &self.event;
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        let identity = e.identity.as_ref().map_or(0, |i| {
            i.key.len() + i.app_id.as_ref().map_or(0, String::len)
        });
        let origin = match &e.origin {
            Some(Origin::Kafka { topic, .. }) => topic.len(),
            Some(Origin::File { path, .. }) => path.len(),
            None => 0,
        };
        let flags: usize = self
            .flags
            .iter()
            .map(|f| f.detector.len() + f.alert_id.len())
            .sum();
        let raw = if raw_data {
            e.raw_data.as_ref().map_or(0, |r| r.len())
        } else {
            0
        };
        FIXED_TEXT_BYTES
            + e.activity.len()
            + identity
            + e.actor.raw.len()
            + [
                &e.token_id,
                &e.issued_token_id,
                &e.session_id,
                &e.src_ip,
                &e.src_country,
                &e.src_region,
                &e.cloud_region,
                &e.cloud_account,
                &e.dst_host,
                &e.resource,
                &e.target_principal,
                &e.http_method,
                &e.status_code,
                &e.vendor_event_id,
            ]
            .into_iter()
            .map(opt)
            .sum::<usize>()
            + e.resources.iter().map(String::len).sum::<usize>()
            + origin
            + flags
            + raw
    }
}

/// Counts the bytes written through it (the length of a JSON form, without building it).
#[derive(Default)]
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn json_len(value: &impl serde::Serialize) -> usize {
    let mut counter = Counter::default();
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Bytes of text an alert adds to an `alerts` batch (see [`EventRow::text_bytes`]).
pub fn alert_text_bytes(a: &Alert) -> usize {
    let app = a.app.as_ref().map_or(0, |app| {
        app.id.len() + app.name.len() + app.owner.len() + app.risk_tier.as_str().len()
    });
    let actions = if a.actions.is_empty() {
        0
    } else {
        json_len(&a.actions)
    };
    FIXED_TEXT_BYTES
        + a.id.len()
        + a.detector.len()
        + a.kind.len()
        + a.identity.len()
        + app
        + a.summary.len()
        + a.sql.len()
        + json_len(&a.evidence)
        + a.group.as_ref().map_or(0, |g| g.id.len())
        + actions
}

fn outcome(o: Outcome) -> &'static str {
    match o {
        Outcome::Success => "success",
        Outcome::Failure => "failure",
        Outcome::Unknown => "unknown",
    }
}

/// Builds an `events` batch. `raw_data` says whether to keep the vendor record.
pub fn events_batch(rows: &[EventRow], raw_data: bool) -> Result<RecordBatch, ArrowError> {
    let n = rows.len();
    let strings = || StringBuilder::with_capacity(n, n * 16);
    let times = || TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let lists = || ListBuilder::new(StringBuilder::new());
    let (mut time, mut observed) = (times(), times());
    let [
        mut product,
        mut source_kind,
        mut category,
        mut activity,
        mut identity_key,
        mut identity_status,
        mut app_id,
        mut actor_raw,
        mut actor_kind,
        mut actor_type,
        mut token_id,
        mut issued_token_id,
        mut session_id,
        mut src_ip,
        mut src_country,
        mut src_region,
        mut cloud_region,
        mut cloud_account,
        mut dst_host,
        mut resource,
        mut target_principal,
        mut http_method,
        mut outcome_col,
        mut status_code,
        mut vendor_event_id,
        mut kafka_topic,
        mut file_path,
        mut raw,
    ] = std::array::from_fn(|_| strings());
    let mut class_uid = Int32Builder::with_capacity(n);
    let mut dst_port = Int32Builder::with_capacity(n);
    let mut kafka_partition = Int32Builder::with_capacity(n);
    let [mut bytes_in, mut bytes_out, mut kafka_offset, mut file_line] =
        std::array::from_fn(|_| Int64Builder::with_capacity(n));
    let (mut resources, mut findings, mut alert_ids) = (lists(), lists(), lists());
    for row in rows {
        let e = &row.event;
        time.append_value(e.time.timestamp_millis());
        observed.append_value(e.observed_time.timestamp_millis());
        product.append_value(e.product.as_str());
        source_kind.append_value(match e.source_kind {
            crate::event::SourceKind::Sso => "sso",
            crate::event::SourceKind::Gateway => "gateway",
            crate::event::SourceKind::Secrets => "secrets",
        });
        category.append_value(e.category.as_str());
        class_uid.append_value(e.class_uid as i32);
        activity.append_value(&e.activity);
        let identity = e.identity.as_ref();
        identity_key.append_value(identity.map_or("anonymous", |i| i.key.as_str()));
        identity_status.append_value(match identity.map(|i| i.status) {
            Some(crate::event::IdentityStatus::Registered) => "registered",
            Some(crate::event::IdentityStatus::Unregistered) => "unregistered",
            Some(crate::event::IdentityStatus::Anonymous) | None => "anonymous",
        });
        app_id.append_option(identity.and_then(|i| i.app_id.as_deref()));
        actor_raw.append_value(&e.actor.raw);
        actor_kind.append_option(e.actor.refs.first().map(|r| r.kind.as_str()));
        actor_type.append_value(e.actor.actor_type.as_str());
        token_id.append_option(e.token_id.as_deref());
        issued_token_id.append_option(e.issued_token_id.as_deref());
        session_id.append_option(e.session_id.as_deref());
        src_ip.append_option(e.src_ip.as_deref());
        src_country.append_option(e.src_country.as_deref());
        src_region.append_option(e.src_region.as_deref());
        cloud_region.append_option(e.cloud_region.as_deref());
        cloud_account.append_option(e.cloud_account.as_deref());
        dst_host.append_option(e.dst_host.as_deref());
        dst_port.append_option(e.dst_port.map(i32::from));
        resource.append_option(e.resource.as_deref());
        if e.resources.is_empty() {
            resources.append_null();
        } else {
            for r in &e.resources {
                resources.values().append_value(r);
            }
            resources.append(true);
        }
        target_principal.append_option(e.target_principal.as_deref());
        http_method.append_option(e.http_method.as_deref());
        outcome_col.append_value(outcome(e.outcome));
        status_code.append_option(e.status_code.as_deref());
        bytes_in.append_option(e.bytes_in.map(|b| b.min(i64::MAX as u64) as i64));
        bytes_out.append_option(e.bytes_out.map(|b| b.min(i64::MAX as u64) as i64));
        vendor_event_id.append_option(e.vendor_event_id.as_deref());
        match &e.origin {
            Some(Origin::Kafka {
                topic,
                partition,
                offset,
            }) => {
                kafka_topic.append_value(topic);
                kafka_partition.append_value(*partition);
                kafka_offset.append_value(*offset);
                file_path.append_null();
                file_line.append_null();
            }
            Some(Origin::File { path, line }) => {
                kafka_topic.append_null();
                kafka_partition.append_null();
                kafka_offset.append_null();
                file_path.append_value(path);
                file_line.append_value(*line as i64);
            }
            None => {
                kafka_topic.append_null();
                kafka_partition.append_null();
                kafka_offset.append_null();
                file_path.append_null();
                file_line.append_null();
            }
        }
        if row.flags.is_empty() {
            findings.append_null();
            alert_ids.append_null();
        } else {
            for flag in &row.flags {
                findings.values().append_value(&flag.detector);
                alert_ids.values().append_value(&flag.alert_id);
            }
            findings.append(true);
            alert_ids.append(true);
        }
        raw.append_option(e.raw_data.as_deref().filter(|_| raw_data));
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(time.finish()),
        Arc::new(observed.finish()),
        Arc::new(product.finish()),
        Arc::new(source_kind.finish()),
        Arc::new(category.finish()),
        Arc::new(class_uid.finish()),
        Arc::new(activity.finish()),
        Arc::new(identity_key.finish()),
        Arc::new(identity_status.finish()),
        Arc::new(app_id.finish()),
        Arc::new(actor_raw.finish()),
        Arc::new(actor_kind.finish()),
        Arc::new(actor_type.finish()),
        Arc::new(token_id.finish()),
        Arc::new(issued_token_id.finish()),
        Arc::new(session_id.finish()),
        Arc::new(src_ip.finish()),
        Arc::new(src_country.finish()),
        Arc::new(src_region.finish()),
        Arc::new(cloud_region.finish()),
        Arc::new(cloud_account.finish()),
        Arc::new(dst_host.finish()),
        Arc::new(dst_port.finish()),
        Arc::new(resource.finish()),
        Arc::new(resources.finish()),
        Arc::new(target_principal.finish()),
        Arc::new(http_method.finish()),
        Arc::new(outcome_col.finish()),
        Arc::new(status_code.finish()),
        Arc::new(bytes_in.finish()),
        Arc::new(bytes_out.finish()),
        Arc::new(vendor_event_id.finish()),
        Arc::new(kafka_topic.finish()),
        Arc::new(kafka_partition.finish()),
        Arc::new(kafka_offset.finish()),
        Arc::new(file_path.finish()),
        Arc::new(file_line.finish()),
        Arc::new(findings.finish()),
        Arc::new(alert_ids.finish()),
        Arc::new(raw.finish()),
    ];
    RecordBatch::try_new(EVENTS.clone(), columns)
}

/// Builds an `alerts` batch.
pub fn alerts_batch(alerts: &[Alert]) -> Result<RecordBatch, ArrowError> {
    let n = alerts.len();
    let strings = || StringBuilder::with_capacity(n, n * 32);
    let times = || TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let [
        mut id,
        mut detector,
        mut kind,
        mut identity_key,
        mut app_id,
        mut app_name,
        mut owner,
        mut risk_tier,
        mut severity,
        mut summary,
        mut sql,
        mut evidence,
        mut group_id,
        mut actions,
    ] = std::array::from_fn(|_| strings());
    let mut score = Float64Builder::with_capacity(n);
    let (mut window_start, mut window_end) = (times(), times());
    let mut group_count = Int32Builder::with_capacity(n);
    for a in alerts {
        id.append_value(&a.id);
        detector.append_value(&a.detector);
        kind.append_value(&a.kind);
        identity_key.append_value(&a.identity);
        let app = a.app.as_ref();
        app_id.append_option(app.map(|a| a.id.as_str()));
        app_name.append_option(app.map(|a| a.name.as_str()));
        owner.append_option(app.map(|a| a.owner.as_str()));
        risk_tier.append_option(app.map(|a| a.risk_tier.as_str()));
        severity.append_value(a.severity.as_str());
        score.append_value(a.score);
        window_start.append_value(a.window_start.timestamp_millis());
        window_end.append_value(a.window_end.timestamp_millis());
        summary.append_value(&a.summary);
        sql.append_value(&a.sql);
        evidence.append_value(serde_json::to_string(&a.evidence).unwrap_or_default());
        group_id.append_option(a.group.as_ref().map(|g| g.id.as_str()));
        group_count.append_option(a.group.as_ref().map(|g| g.count as i32));
        if a.actions.is_empty() {
            actions.append_null();
        } else {
            actions.append_value(serde_json::to_string(&a.actions).unwrap_or_default());
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(detector.finish()),
        Arc::new(kind.finish()),
        Arc::new(identity_key.finish()),
        Arc::new(app_id.finish()),
        Arc::new(app_name.finish()),
        Arc::new(owner.finish()),
        Arc::new(risk_tier.finish()),
        Arc::new(severity.finish()),
        Arc::new(score.finish()),
        Arc::new(window_start.finish()),
        Arc::new(window_end.finish()),
        Arc::new(summary.finish()),
        Arc::new(sql.finish()),
        Arc::new(evidence.finish()),
        Arc::new(group_id.finish()),
        Arc::new(group_count.finish()),
        Arc::new(actions.finish()),
    ];
    RecordBatch::try_new(ALERTS.clone(), columns)
}
