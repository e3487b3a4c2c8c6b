//! The listener against real sockets on 127.0.0.1, with short limits so that
//! each test takes about a second.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::identity::{Registry, RegistryHandle};
use crate::query::QuerySettings;
use crate::source::kafka::{ClientView, SourceProgress};

const TOKEN: &str = "t0ken-for-tests-5c1e";

/// Counters of a daemon that is ready: one partition, one broker up.
fn observed(outbox: Option<PathBuf>) -> Arc<Observed> {
    let source = SourceProgress::default();
    source.assigned_partitions.store(1, Ordering::Relaxed);
    if let Ok(mut view) = source.client.lock() {
        *view = ClientView {
            updated: Some(Instant::now()),
            brokers_up: 1,
            brokers_known: 1,
            lag: Vec::new(),
            backlog: Vec::new(),
        };
    }
    Arc::new(Observed::new(
        Default::default(),
        Default::default(),
        Arc::new(source),
        RegistryHandle::new(Registry::default()),
        outbox,
    ))
}

/// A query endpoint over an empty history in `dir`.
fn endpoint(dir: &tempfile::TempDir) -> QueryEndpoint {
    let root = dir.path().to_str().expect("a UTF-8 temp path");
    let store = crate::history::Store::open(root, &Default::default()).expect("open the store");
    let settings = QuerySettings {
        token: None,
        timeout_secs: 10,
        max_rows: 10,
        max_result_mib: 1,
        memory_limit_mib: 64,
        threads: 1,
    };
    let engine = QueryEngine::over(&store, &settings).expect("open the engine");
    QueryEndpoint::new(engine, TOKEN)
}

/// Limits short enough for tests.
fn short() -> Limits {
    Limits {
        header_read: Duration::from_millis(300),
        idle: Duration::from_millis(500),
        ..Limits::default()
    }
}

struct Running {
    address: SocketAddr,
    app: Arc<App>,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(app: App) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let app = Arc::new(app);
    let stop = CancellationToken::new();
    tokio::spawn(serve(listener, app.clone(), stop.clone()));
    Running { address, app, stop }
}

/// Reads until the peer closes; `Err` when it is still open after `limit`.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(got),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client")
}

async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = client().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}

#[tokio::test]
async fn silent_half_sent_and_idle_connections_are_closed() {
    let server = start(App::new(observed(None), None, short())).await;
    let started = Instant::now();

    let mut silent = TcpStream::connect(server.address).await.expect("connect");
    let mut half = TcpStream::connect(server.address).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("half a request");
    let mut idle = TcpStream::connect(server.address).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("a request");
    let mut answer = [0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "kept alive after an answer"
    );

    for (name, stream) in [
        ("silent", &mut silent),
        ("half-sent", &mut half),
        ("idle", &mut idle),
    ] {
        let closed = read_to_close(stream, Duration::from_secs(3)).await;
        assert!(closed.is_ok(), "the {name} connection is still open");
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    for _ in 0..100 {
        if server.app.observed.http.connections.load(Ordering::Relaxed) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("closed connections are still counted");
}

#[tokio::test]
async fn the_idle_timeout_closes_what_a_long_header_timeout_leaves_open() {
    let limits = Limits {
        header_read: Duration::from_secs(20),
        idle: Duration::from_millis(300),
        ..Limits::default()
    };
    let server = start(App::new(observed(None), None, limits)).await;
    let mut half = TcpStream::connect(server.address).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .expect("half a request");
    let closed = read_to_close(&mut half, Duration::from_secs(3)).await;
    assert!(
        closed.is_ok(),
        "a connection silent past the idle timeout is still open"
    );
}

#[tokio::test]
async fn a_stalled_query_body_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = start(App::new(observed(None), Some(endpoint(&dir)), short())).await;
    let mut stream = TcpStream::connect(server.address).await.expect("connect");
    let head = format!(
        "POST /v1/query HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sql\": \"SEL"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("headers and a bit of body");
    let answer = read_to_close(&mut stream, Duration::from_secs(3))
        .await
        .expect("the stalled connection is closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}

#[tokio::test]
async fn the_listener_holds_at_most_its_cap_and_still_answers() {
    let limits = Limits {
        max_connections: 3,
        header_read: Duration::from_secs(20),
        idle: Duration::from_secs(20),
        ..Limits::default()
    };
    let server = start(App::new(observed(None), None, limits)).await;
    let connections = &server.app.observed.http.connections;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.address).await.expect("connect"));
    }
    for _ in 0..200 {
        if connections.load(Ordering::Relaxed) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(connections.load(Ordering::Relaxed), 3);

    // The fourth waits in the backlog: connected, but not served.
    let mut waiting = TcpStream::connect(server.address).await.expect("connect");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("a request");
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(400), waiting.read(&mut buf)).await;
    assert!(early.is_err(), "answered beyond the cap");
    assert_eq!(connections.load(Ordering::Relaxed), 3);

    // One closes: the waiting one is served.
    drop(held.pop());
    let answer = read_to_close(&mut waiting, Duration::from_secs(3))
        .await
        .expect("answered once a slot is free");
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_readyz_and_metrics_all_succeed() {
    let outbox = tempfile::tempdir().expect("temp dir");
    let server = start(App::new(
        observed(Some(outbox.path().to_path_buf())),
        None,
        Limits::default(),
    ))
    .await;
    let base = format!("http://{}", server.address);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let client = client();
            let mut failures = Vec::new();
            for i in 0..40 {
                let path = if (worker + i) % 2 == 0 {
                    "/readyz"
                } else {
                    "/metrics"
                };
                let response = client
                    .get(format!("{base}{path}"))
                    .send()
                    .await
                    .expect("answered");
                let status = response.status().as_u16();
                let body = response.text().await.expect("body");
                let ok = match path {
                    "/readyz" => status == 200,
                    _ => status == 200 && body.contains("\nappwarden_ready 1\n"),
                };
                if !ok {
                    failures.push(format!("{path} {status}: {body:.300}"));
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.expect("task"));
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..1]
    );
    let left: Vec<_> = std::fs::read_dir(outbox.path()).expect("outbox").collect();
    assert!(left.is_empty(), "probe files left behind: {left:?}");
}

#[tokio::test]
async fn readyz_shows_the_outbox_path_only_to_the_token_holder() {
    let outbox = tempfile::tempdir().expect("temp dir");
    let history = tempfile::tempdir().expect("temp dir");
    let path = outbox.path().display().to_string();
    let server = start(App::new(
        observed(Some(outbox.path().to_path_buf())),
        Some(endpoint(&history)),
        Limits::default(),
    ))
    .await;
    let url = format!("http://{}/readyz", server.address);
    let (status, body) = get(&url, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"outbox\""), "{body}");
    assert!(
        !body.contains(&path),
        "the path shown without a token: {body}"
    );
    let (status, body) = get(&url, Some("not-the-token")).await;
    assert_eq!(status, 401, "{body}");
    assert!(!body.contains(&path), "{body}");
    let (status, body) = get(&url, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(json["checks"][3]["name"], "outbox");
    assert_eq!(json["checks"][3]["path"], path.as_str(), "{body}");
}

#[tokio::test]
async fn wrong_bearer_tokens_are_answered_429_after_the_burst() {
    let history = tempfile::tempdir().expect("temp dir");
    // The default bucket: 10, then one a second. The burst and the checks
    // after it finish well within the second before a token comes back.
    let server = start(App::new(
        observed(None),
        Some(endpoint(&history)),
        Limits::default(),
    ))
    .await;
    let url = format!("http://{}/v1/query", server.address);
    let client = client();
    let post = |token: &'static str| {
        client
            .post(&url)
            .bearer_auth(token)
            .body(r#"{"sql": "SELECT 1 AS one"}"#)
            .send()
    };
    // Without a header nothing is guessed and nothing is taken.
    let anonymous = client
        .post(&url)
        .body(r#"{"sql": "SELECT 1"}"#)
        .send()
        .await
        .expect("answered");
    assert_eq!(anonymous.status().as_u16(), 401);
    for i in 0..10 {
        let status = post("guess").await.expect("answered").status().as_u16();
        assert_eq!(status, 401, "guess {i} of the burst");
    }
    let throttled = post("guess").await.expect("answered");
    assert_eq!(throttled.status().as_u16(), 429);
    assert!(throttled.headers().contains_key(RETRY_AFTER));
    let holder = post(TOKEN).await.expect("answered").status().as_u16();
    assert_eq!(holder, 429, "not compared while throttled");
    let stats = &server.app.observed.http;
    assert_eq!(stats.bearer_failures.load(Ordering::Relaxed), 10);
    assert_eq!(stats.bearer_throttled.load(Ordering::Relaxed), 2);

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let response = post(TOKEN).await.expect("answered");
    assert_eq!(response.status().as_u16(), 200);
    let metrics = get(&format!("http://{}/metrics", server.address), None)
        .await
        .1;
    assert!(
        metrics.contains("\nappwarden_http_bearer_failures_total 10\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nappwarden_http_bearer_throttled_total 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nappwarden_http_connections "),
        "{metrics}"
    );
}

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
