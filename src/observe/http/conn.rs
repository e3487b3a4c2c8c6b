//! The accept loop and each connection's life: the connection cap, hyper's
//! header-read timeout, and an idle timeout on the socket.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::{App, HttpStats};

/// Serves `app` on `listener` until `shutdown`, within `app.limits`.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(app.limits.max_connections.max(1)));
    loop {
        // A slot first, then accept: connections over the cap wait in the
        // kernel's backlog (or time out there) and cost this process nothing.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: keep serving the others.
                    tracing::warn!(%error, "http listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let open = Open::new(app.observed.http.clone(), permit);
        let app = app.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(stream, peer, app, shutdown).await;
            drop(open);
        });
    }
}

/// One served connection: holds its slot and counts in `appwarden_http_connections`.
struct Open {
    stats: Arc<HttpStats>,
    _permit: OwnedSemaphorePermit,
}

impl Open {
    fn new(stats: Arc<HttpStats>, permit: OwnedSemaphorePermit) -> Self {
        stats.connections.fetch_add(1, Ordering::Relaxed);
        Open {
            stats,
            _permit: permit,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.stats.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    shutdown: CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let limits = app.limits;
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |request| {
            let app = app.clone();
            let answering = activity.answering();
            async move {
                let reply = super::handle(&app, request).await;
                drop(answering);
                Ok::<_, Infallible>(reply)
            }
        })
    };
    // The timer makes hyper enforce `header_read_timeout`; without one it
    // silently waits for headers forever.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .serve_connection(io, service);
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = activity.idle_for(limits.idle) => {
            tracing::debug!(%peer, idle_secs = limits.idle.as_secs_f64(), "http connection idle: closed");
        }
        result = connection => if let Err(error) = result {
            tracing::debug!(%error, %peer, "http connection ended with an error");
        },
    }
}

/// When a connection last moved a byte, and whether a request is being answered.
struct Activity {
    last: Mutex<Instant>,
    answering: Arc<AtomicUsize>,
}

/// Marks a request as being answered until dropped (also when hyper drops the
/// handler because its client left).
struct Answering(Arc<AtomicUsize>);

impl Drop for Answering {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    fn new() -> Self {
        Activity {
            last: Mutex::new(Instant::now()),
            answering: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn touch(&self) {
        let now = Instant::now();
        match self.last.lock() {
            Ok(mut last) => *last = now,
            Err(poisoned) => *poisoned.into_inner() = now,
        }
    }

    fn quiet_for(&self) -> Duration {
        let last = match self.last.lock() {
            Ok(last) => *last,
            Err(poisoned) => *poisoned.into_inner(),
        };
        last.elapsed()
    }

    fn answering(&self) -> Answering {
        self.answering.fetch_add(1, Ordering::Relaxed);
        Answering(self.answering.clone())
    }

    /// Resolves once no byte moved for `idle` while no request was being
    /// answered. A query that computes for minutes is not idle; a body that
    /// stalls is bounded by the handler's own deadline.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let quiet = self.quiet_for();
            if quiet >= idle && self.answering.load(Ordering::Relaxed) == 0 {
                return;
            }
            let wait = idle.saturating_sub(quiet).max(idle / 4);
            tokio::time::sleep(wait.max(Duration::from_millis(10))).await;
        }
    }
}

/// A socket that notes each read or write that moved a byte.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        result
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
