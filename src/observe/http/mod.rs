//! The daemon's HTTP listener: `/metrics`, `/healthz`, `/readyz` and `POST /v1/query`.
//!
//! The accept loop and each connection's timeouts ([`conn`]) are separate
//! from the per-request handler here (as in mini-redis); the limits they
//! enforce are in [`limits`]; shutdown is a token passed in. SQL runs on the
//! query engine's own runtime, so a heavy query never takes a thread from
//! ingestion.

mod conn;
pub mod limits;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    AUTHORIZATION, CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::Observed;
use crate::query::{QueryEngine, QueryError};
pub use conn::serve;
pub use limits::Limits;

/// Largest query request body.
const MAX_QUERY_BODY: usize = 64 * 1024;
/// Queries running at once; more get 429.
const MAX_CONCURRENT_QUERIES: usize = 2;

/// The SQL endpoint's engine and the digest of its bearer token.
pub struct QueryEndpoint {
    pub engine: QueryEngine,
    token_digest: [u8; 32],
    /// Permits go with the query tasks, so a query whose client left still
    /// counts until it has really stopped.
    running: Arc<Semaphore>,
}

impl QueryEndpoint {
    pub fn new(engine: QueryEngine, token: &str) -> Self {
        QueryEndpoint {
            engine,
            token_digest: Sha256::digest(token.as_bytes()).into(),
            running: Arc::new(Semaphore::new(MAX_CONCURRENT_QUERIES)),
        }
    }
}

/// Whether an `Authorization` header carries the token whose SHA-256 is
/// `expected`. Digests are compared in constant time, so neither the token's
/// content nor its length leaks through timing.
fn bearer_matches(expected: &[u8; 32], header: Option<&str>) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let digest: [u8; 32] = Sha256::digest(given.trim().as_bytes()).into();
    digest
        .iter()
        .zip(expected.iter())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// Counters of the listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections being served now.
    pub connections: AtomicU64,
    /// Requests whose bearer token was wrong (answered 401).
    pub bearer_failures: AtomicU64,
    /// Requests carrying a token while wrong tokens were throttled (answered 429).
    pub bearer_throttled: AtomicU64,
}

/// What the handler serves.
pub struct App {
    pub observed: Arc<Observed>,
    /// `None` when `query.token` or `history.path` is unset: the endpoint answers 404.
    pub query: Option<QueryEndpoint>,
    limits: Limits,
    /// Wrong bearer tokens drain it; while it is empty no token is compared.
    bearer: Mutex<limits::TokenBucket>,
}

/// What a request's `Authorization` header amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bearer {
    /// The query token.
    Granted,
    /// No `Authorization` header (or no query token configured).
    Missing,
    /// A header that does not carry the token.
    Wrong,
    /// Too many wrong tokens lately: not even compared.
    Throttled { retry_after_secs: u64 },
}

impl App {
    pub fn new(observed: Arc<Observed>, query: Option<QueryEndpoint>, limits: Limits) -> Self {
        let bearer = limits::TokenBucket::new(
            limits.bearer_burst,
            limits.bearer_refill_per_sec,
            Instant::now(),
        );
        App {
            observed,
            query,
            limits,
            bearer: Mutex::new(bearer),
        }
    }

    /// Checks a bearer token against the query token. Each wrong one takes a
    /// token from the bucket; once it is empty, every request that carries a
    /// header is refused with 429 *without* comparing, since answering the right
    /// token then would leave guessing unlimited. The token holder is refused
    /// too while a guesser keeps the bucket empty, for at most a second
    /// after the guessing stops.
    fn bearer(&self, header: Option<&str>) -> Bearer {
        let (Some(endpoint), Some(header)) = (&self.query, header) else {
            return Bearer::Missing;
        };
        let now = Instant::now();
        let mut bucket = match self.bearer.lock() {
            Ok(bucket) => bucket,
            Err(poisoned) => poisoned.into_inner(),
        };
        let stats = &self.observed.http;
        if !bucket.has_token(now) {
            stats.bearer_throttled.fetch_add(1, Ordering::Relaxed);
            return Bearer::Throttled {
                retry_after_secs: bucket.retry_after_secs(now),
            };
        }
        if bearer_matches(&endpoint.token_digest, Some(header)) {
            return Bearer::Granted;
        }
        bucket.take(now);
        stats.bearer_failures.fetch_add(1, Ordering::Relaxed);
        Bearer::Wrong
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

fn json_reply(status: StatusCode, value: serde_json::Value) -> Reply {
    reply(status, "application/json", value.to_string())
}

fn error_reply(status: StatusCode, message: &str) -> Reply {
    json_reply(status, json!({ "error": message }))
}

/// Binds `address` (port 0 picks one); the caller learns the port from the listener.
pub fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

async fn handle(app: &App, request: Request<Incoming>) -> Reply {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            super::metrics::render(&app.observed),
        ),
        (&Method::GET, "/healthz") => reply(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/readyz") => readyz(app, &request),
        (&Method::POST, "/v1/query") => query(app, request).await,
        (_, "/metrics" | "/healthz" | "/readyz" | "/v1/query") => {
            error_reply(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
        }
        _ => error_reply(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz, /readyz or POST /v1/query",
        ),
    }
}

fn authorization(request: &Request<Incoming>) -> Option<&str> {
    request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The answer to a request whose bearer token is missing, wrong or throttled.
fn refusal(bearer: Bearer) -> Reply {
    if let Bearer::Throttled { retry_after_secs } = bearer {
        let mut response = error_reply(
            StatusCode::TOO_MANY_REQUESTS,
            "too many wrong bearer tokens lately; try again shortly",
        );
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
        return response;
    }
    let mut response = error_reply(
        StatusCode::UNAUTHORIZED,
        "missing or wrong bearer token (Authorization: Bearer TOKEN)",
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `GET /readyz`: the checks, with the outbox's path only for the holder of
/// the query token (it tells an outsider where the daemon keeps its files).
fn readyz(app: &App, request: &Request<Incoming>) -> Reply {
    let show_paths = match app.bearer(authorization(request)) {
        Bearer::Granted => true,
        Bearer::Missing => false,
        refused => return refusal(refused),
    };
    let mut checks = app.observed.readiness();
    if !show_paths {
        for check in &mut checks {
            check.path = None;
        }
    }
    let ready = checks.iter().all(|c| c.ok);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_reply(status, json!({ "ready": ready, "checks": checks }))
}

/// `POST /v1/query` with `{"sql": "..."}` and `Authorization: Bearer TOKEN`.
async fn query(app: &App, request: Request<Incoming>) -> Reply {
    let Some(endpoint) = &app.query else {
        return error_reply(
            StatusCode::NOT_FOUND,
            "the query endpoint is off: set query.token and history.path",
        );
    };
    match app.bearer(authorization(&request)) {
        Bearer::Granted => {}
        refused => return refusal(refused),
    }
    // hyper bounds the wait for headers, not for a body: a client that stops
    // sending halfway would hold its connection (and a slot) for ever.
    let collect = Limited::new(request.into_body(), MAX_QUERY_BODY).collect();
    let body = match tokio::time::timeout(app.limits.idle, collect).await {
        Ok(Ok(body)) => body.to_bytes(),
        Ok(Err(_)) => {
            return error_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {MAX_QUERY_BODY} bytes or broken"),
            );
        }
        Err(_) => {
            let mut response = error_reply(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "the request body did not arrive within {} s",
                    app.limits.idle.as_secs_f64()
                ),
            );
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct QueryRequest {
        sql: String,
    }
    let sql = match serde_json::from_slice::<QueryRequest>(&body) {
        Ok(request) => request.sql,
        Err(error) => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                &format!("the body must be JSON {{\"sql\": \"SELECT ...\"}}: {error}"),
            );
        }
    };
    let Ok(permit) = endpoint.running.clone().try_acquire_owned() else {
        return error_reply(
            StatusCode::TOO_MANY_REQUESTS,
            "too many queries running; try again shortly",
        );
    };
    match endpoint.engine.run_json(&sql, permit).await {
        Ok(body) => reply(StatusCode::OK, "application/json", body),
        Err(error) => {
            let status = match &error {
                QueryError::Refused(_) | QueryError::Failed(_) => StatusCode::BAD_REQUEST,
                QueryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
                QueryError::NoHistory | QueryError::Open(_) => StatusCode::SERVICE_UNAVAILABLE,
                QueryError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error_reply(status, &error.to_string())
        }
    }
}
