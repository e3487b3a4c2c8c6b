//! The daemon's HTTP listener: `/metrics`, `/healthz`, `/readyz` and `POST /v1/query`.
//!
//! The accept loop is separate from the per-request handler (as in
//! mini-redis); shutdown is a token passed in. SQL runs on the query engine's
//! own runtime, so a heavy query never takes a thread from ingestion.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Observed;
use crate::query::{QueryEngine, QueryError};

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

    fn authorized(&self, header: Option<&str>) -> bool {
        bearer_matches(&self.token_digest, header)
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

/// What the handler serves.
pub struct App {
    pub observed: Arc<Observed>,
    /// `None` when `query.token` or `history.path` is unset: the endpoint answers 404.
    pub query: Option<QueryEndpoint>,
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

/// Serves `app` on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!(%error, "http listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let app = app.clone();
                async move { Ok::<_, Infallible>(handle(&app, request).await) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                result = connection => if let Err(error) = result {
                    tracing::debug!(%error, %peer, "http connection ended with an error");
                },
            }
        });
    }
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
        (&Method::GET, "/readyz") => {
            let checks = app.observed.readiness();
            let ready = checks.iter().all(|c| c.ok);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json_reply(status, json!({ "ready": ready, "checks": checks }))
        }
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

/// `POST /v1/query` with `{"sql": "..."}` and `Authorization: Bearer TOKEN`.
async fn query(app: &App, request: Request<Incoming>) -> Reply {
    let Some(endpoint) = &app.query else {
        return error_reply(
            StatusCode::NOT_FOUND,
            "the query endpoint is off: set query.token and history.path",
        );
    };
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if !endpoint.authorized(header) {
        let mut response = error_reply(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer TOKEN)",
        );
        if let Ok(value) = "Bearer".parse() {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        return response;
    }
    let body = match Limited::new(request.into_body(), MAX_QUERY_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return error_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the request body is over {MAX_QUERY_BODY} bytes or broken"),
            );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_token_must_match_exactly() {
        let expected: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(bearer_matches(&expected, Some("Bearer s3cret")));
        assert!(!bearer_matches(&expected, Some("Bearer s3cre")));
        assert!(!bearer_matches(&expected, Some("Bearer s3cret2")));
        assert!(!bearer_matches(&expected, Some("Basic s3cret")));
        assert!(!bearer_matches(&expected, Some("s3cret")));
        assert!(!bearer_matches(&expected, None));
    }
}
