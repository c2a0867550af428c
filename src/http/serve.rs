//! Serving a router on a listener that anyone on the internet can reach.
//! hyper's HTTP/1 server with its header-read timer on (a connection with no
//! complete request head `header_timeout` after it opened, or after its last
//! response, is closed: slow headers and idle keep-alives alike), and a
//! connection budget: at `max_connections`, the oldest connection that is
//! not in the middle of a request is shed to make room, so a real webhook
//! always gets a connection however many slow clients hold them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tower::ServiceExt;

/// What a listener allows.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Close a connection without a complete request head by then.
    pub header_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long requests in flight may take to finish once the server
    /// stops; what is left then is dropped.
    pub drain: Duration,
}

/// One open connection.
struct Conn {
    opened: Instant,
    /// A request is being served on it.
    busy: bool,
    /// It has carried a complete request (a kept-alive connection of a
    /// real sender, not a client that never finished its headers).
    served: bool,
    /// Since when its request's body is being read (a handler waiting on
    /// the client, not working): sheddable like an idle connection.
    reading_since: Option<Instant>,
    /// Tells its task to close it.
    shed: Arc<Notify>,
}

/// The open connections, to shed the oldest idle one when full.
#[derive(Default)]
struct Conns {
    open: Mutex<BTreeMap<u64, Conn>>,
    next: AtomicU64,
    shed: AtomicU64,
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Conn>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, shedding the oldest idle one when the
    /// budget is spent; `None` when every connection is mid-request.
    fn admit(&self, max: usize) -> Option<(u64, Arc<Notify>)> {
        let mut open = self.lock();
        if open.len() >= max {
            let oldest = sheddable(&open)?;
            if let Some(c) = open.remove(&oldest) {
                c.shed.notify_one();
                self.shed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let shed = Arc::new(Notify::new());
        open.insert(
            id,
            Conn {
                opened: Instant::now(),
                busy: false,
                served: false,
                reading_since: None,
                shed: shed.clone(),
            },
        );
        Some((id, shed))
    }

    /// Sheds the oldest idle connection (out of file descriptors).
    fn shed_oldest(&self) {
        let mut open = self.lock();
        let oldest = sheddable(&open);
        if let Some(c) = oldest.and_then(|id| open.remove(&id)) {
            c.shed.notify_one();
            self.shed.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn set_busy(&self, id: u64, busy: bool) {
        if let Some(c) = self.lock().get_mut(&id) {
            c.busy = busy;
            c.served = true;
            c.reading_since = None;
        }
    }

    fn set_reading(&self, id: u64, reading: bool) {
        if let Some(c) = self.lock().get_mut(&id) {
            c.reading_since = reading.then(Instant::now);
        }
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }
}

/// The connection to shed when the budget is spent, in this order: the
/// oldest idle one that never carried a complete request (a slow or silent
/// client); the one that has been sending its request body the longest (a
/// slow body holds a place without any work being done); the oldest idle
/// kept-alive one (a real sender's, shed last: a request racing its close
/// fails in transit). A connection whose handler is working is never shed.
fn sheddable(open: &BTreeMap<u64, Conn>) -> Option<u64> {
    let idle = |served: bool| {
        open.iter()
            .filter(|(_, c)| !c.busy && c.served == served)
            .min_by_key(|(_, c)| c.opened)
            .map(|(id, _)| *id)
    };
    idle(false)
        .or_else(|| {
            open.iter()
                .filter_map(|(id, c)| Some((*id, c.reading_since?)))
                .min_by_key(|(_, since)| *since)
                .map(|(id, _)| id)
        })
        .or_else(|| idle(true))
}

/// Put on each request: the handler says while it waits for the body.
#[derive(Clone)]
pub struct BodyWatch {
    conns: Arc<Conns>,
    id: u64,
}

impl BodyWatch {
    /// The handler is (or no longer is) waiting for the request's body.
    pub fn reading(&self, reading: bool) {
        self.conns.set_reading(self.id, reading);
    }
}

/// How often a failing `accept` is logged at `warn`.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` resolves, then stops
/// accepting, lets requests in flight finish, and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let conns = Arc::new(Conns::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let (mut last_warn, mut unlogged) = (None, 0u64);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (EMFILE/ENFILE) or a connection
                // reset before it was accepted: make room, and go on.
                // Logged at `warn` once per window, not once per try.
                if last_warn.is_none_or(|at: Instant| at.elapsed() >= ACCEPT_LOG_EVERY) {
                    let suppressed = std::mem::take(&mut unlogged);
                    tracing::warn!(error = %e, suppressed, "cannot accept a connection; shedding the oldest idle one");
                    last_warn = Some(Instant::now());
                } else {
                    unlogged += 1;
                    tracing::debug!(error = %e, "cannot accept a connection");
                }
                conns.shed_oldest();
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Some((id, shed)) = conns.admit(limits.max_connections) else {
            // Every connection is mid-request: refuse this one at once.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(
            stream,
            app.clone(),
            limits,
            conns.clone(),
            (id, shed),
            stop_rx.clone(),
        ));
        // Reap finished connection tasks as we go.
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.drain, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "requests still in flight after the drain time; dropping them"
        );
        tasks.abort_all();
    }
    Ok(())
}

/// Serves one connection until it closes, is shed, or the server stops.
async fn connection(
    stream: tokio::net::TcpStream,
    app: Router,
    limits: Limits,
    conns: Arc<Conns>,
    (id, shed): (u64, Arc<Notify>),
    mut stop: watch::Receiver<bool>,
) {
    let tracked = conns.clone();
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
        let (app, conns) = (app.clone(), tracked.clone());
        async move {
            conns.set_busy(id, true);
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(BodyWatch {
                conns: conns.clone(),
                id,
            });
            let response = app.oneshot(req).await;
            conns.set_busy(id, false);
            response
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        _ = shed.notified() => tracing::debug!("connection shed to make room"),
        changed = stop.changed() => {
            if changed.is_ok() && *stop.borrow() {
                conn.as_mut().graceful_shutdown();
            }
            // Keep serving what is in flight until it finishes.
            let _ = conn.as_mut().await;
        }
    }
    conns.remove(id);
}

/// Makes sure the process may open the files it needs: raises the soft
/// open-files limit to the hard one (logging both), and fails, naming the
/// setting, when even that is too few for `need`.
pub fn ensure_open_files(need: u64) -> Result<(), String> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map_err(|e| format!("cannot read the open-files limit: {e}"))?;
    let raised = if soft < hard {
        rlimit::increase_nofile_limit(hard).unwrap_or(soft)
    } else {
        soft
    };
    tracing::info!(
        soft_before = soft,
        soft = raised,
        hard,
        need,
        "open-files limit"
    );
    if raised < need {
        return Err(format!(
            "the open-files limit is {raised} (hard {hard}), but server.max_connections, the admin listener and the database pool need about {need}: lower server.max_connections or raise the limit (systemd: LimitNOFILE=)"
        ));
    }
    Ok(())
}
