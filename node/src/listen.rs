//! Bounds on the node's local listeners (console, metrics, control socket), so a local client
//! that connects and never finishes a request, or thousands of them, holds neither the runtime
//! nor the node's descriptors: a connection cap per listener (excess clients wait in the
//! kernel's backlog, holding no descriptor of ours), a deadline for the request's headers and
//! one for the whole connection, and a backoff when accept fails (at the descriptor limit it
//! fails at once, again and again).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, watch};

/// Bounds of one HTTP listener.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers.
    pub header_read: Duration,
    /// Time a connection may last, request and response together.
    pub connection: Duration,
}

/// The console's and the metrics endpoint's bounds: a scrape or a page takes well under a
/// second on a healthy node.
pub const HTTP: HttpLimits =
    HttpLimits { max_connections: 64, header_read: Duration::from_secs(10), connection: Duration::from_secs(60) };

/// Serves `app` on `listener` within `limits` until `shutdown` turns true. One request per
/// connection (no keep-alive: a browser or Prometheus opens another).
pub async fn serve_http(
    what: &'static str,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: HttpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper::server::conn::http1;
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            _ = stopped(&mut shutdown) => break,
            c = listener.accept() => c,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                accept_failed(what, &e).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(app.clone());
        connections.spawn(async move {
            let _permit = permit;
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("{what}: connection: {e}"),
                Err(_) => tracing::debug!("{what}: connection cut after {} s", limits.connection.as_secs()),
            }
        });
        while connections.try_join_next().is_some() {}
    }
}

/// Returns once `shutdown` turns true.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|v| *v).await;
}

/// After a failed accept: a pause, so a listener at the descriptor limit does not spin (accept
/// fails at once while no descriptor is free), and a warning at most every 10 s.
pub async fn accept_failed(what: &str, e: &std::io::Error) {
    static LAST_WARNED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let last = LAST_WARNED.load(Ordering::Relaxed);
    if last + 10 <= now && LAST_WARNED.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        tracing::warn!("{what}: accept failed: {e} (pausing; further failures in the next 10 s are not logged)");
    }
    let out_of_descriptors = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    tokio::time::sleep(if out_of_descriptors { Duration::from_millis(250) } else { Duration::from_millis(20) }).await;
}

/// Raises this process's soft descriptor limit to its hard limit (systemd's default soft limit
/// is 1024, the hard one far higher). Returns the limit in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return Some(hard);
    }
    Some(soft)
}
