//! The Prometheus endpoint: `GET /metrics` over kernel TCP on an admin address, served by its
//! own threads (never the serving loop).
//!
//! Each request is read with a timeout into a bounded buffer ([`REQUEST_MAX`]), parsed with
//! `httparse`, answered, and the connection closed (`Connection: close`; Prometheus opens a
//! new one per scrape without complaint). [`SERVING_THREADS`] threads take connections from
//! the same listener, so one client that connects and says nothing delays others by at most
//! [`IO_TIMEOUT`]; the serving loop is never delayed at all.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use super::acceptors::Acceptors;
use super::{encode_openmetrics, openmetrics_to_text, Hub, SNAPSHOT_WAIT};

/// The largest request head taken (request line and headers); larger ones get 431.
pub const REQUEST_MAX: usize = 8 * 1024;
/// Read and write timeout of each connection.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Threads accepting scrapes.
pub const SERVING_THREADS: usize = 2;
/// Headers parsed at most (more: 431).
const HEADERS_MAX: usize = 32;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen for metrics scrapes on {addr}: {source}; pick a free port (or port 0 for any) on an address of this host")]
    Bind {
        /// The address tried.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A thread could not be started.
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] io::Error),
}

/// A running Prometheus endpoint. Dropping it stops its threads.
pub struct MetricsEndpoint {
    addr: SocketAddr,
    threads: Acceptors,
}

impl std::fmt::Debug for MetricsEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsEndpoint")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsEndpoint {
    /// Listens on `addr` (port 0: any free port, see [`MetricsEndpoint::local_addr`]) and
    /// serves scrapes of `hub`'s snapshots.
    pub fn start(addr: SocketAddr, hub: Hub) -> Result<MetricsEndpoint, MetricsError> {
        let listener =
            TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
        let local = listener
            .local_addr()
            .map_err(|source| MetricsError::Bind { addr, source })?;
        let threads = Acceptors::start(
            &listener,
            SERVING_THREADS,
            "ustack-metrics",
            "metrics scrape",
            &hub,
            serve,
        )
        .map_err(MetricsError::Thread)?;
        Ok(MetricsEndpoint {
            addr: local,
            threads,
        })
    }

    /// The address scrapes go to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        let addr = self.addr;
        self.threads.stop(|| {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        });
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `openmetrics`: the client accepts the OpenMetrics format (Prometheus does).
    Metrics {
        head: bool,
        openmetrics: bool,
    },
    Index {
        head: bool,
    },
    NotFound,
    BadMethod,
}

/// Reads one request head; `Err` carries the status line to answer with.
fn read_request(stream: &mut TcpStream) -> Result<Route, &'static str> {
    let mut buf = [0u8; REQUEST_MAX];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err("431 Request Header Fields Too Large");
        }
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Err(""),
            Ok(n) => n,
            Err(_) => return Err(""),
        };
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let head = match req.method {
                    Some("GET") => false,
                    Some("HEAD") => true,
                    _ => return Ok(Route::BadMethod),
                };
                let openmetrics = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("accept")
                        && String::from_utf8_lossy(h.value).contains("application/openmetrics-text")
                });
                let path = req.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path);
                return Ok(match path {
                    "/metrics" => Route::Metrics { head, openmetrics },
                    "/" => Route::Index { head },
                    _ => Route::NotFound,
                });
            }
            Ok(httparse::Status::Partial) => continue,
            Err(httparse::Error::TooManyHeaders) => {
                return Err("431 Request Header Fields Too Large")
            }
            Err(_) => return Err("400 Bad Request"),
        }
    }
}

fn serve(mut stream: TcpStream, hub: &Hub) -> io::Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let route = match read_request(&mut stream) {
        Ok(r) => r,
        Err("") => return Ok(()),
        Err(status) => {
            respond(&mut stream, status, "text/plain", status.as_bytes(), false)?;
            // Read (a little of) what the client still sends before closing, so the close
            // is not a reset that could destroy the answer before the client reads it.
            stream.set_read_timeout(Some(Duration::from_millis(200)))?;
            let _ = io::copy(&mut (&stream).take(64 * 1024), &mut io::sink());
            return Ok(());
        }
    };
    match route {
        Route::Metrics { head, openmetrics } => {
            let body = scrape(hub);
            if openmetrics {
                respond(
                    &mut stream,
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body.as_bytes(),
                    head,
                )
            } else {
                let text = openmetrics_to_text(&body);
                respond(
                    &mut stream,
                    "200 OK",
                    "text/plain; version=0.0.4; charset=utf-8",
                    text.as_bytes(),
                    head,
                )
            }
        }
        Route::Index { head } => respond(
            &mut stream,
            "200 OK",
            "text/plain; charset=utf-8",
            b"ustack metrics: GET /metrics\n",
            head,
        ),
        Route::NotFound => respond(
            &mut stream,
            "404 Not Found",
            "text/plain; charset=utf-8",
            b"not found: the metrics are at /metrics\n",
            false,
        ),
        Route::BadMethod => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            b"only GET and HEAD\n",
            false,
        ),
    }
}

/// The exposition of a fresh snapshot, or of the last one if the loop does not answer in time.
pub(crate) fn scrape(hub: &Hub) -> String {
    let fresh = hub.ask(super::Ask::Snapshot, SNAPSHOT_WAIT);
    let (snap, age) = match fresh {
        Ok(super::Answer::Snapshot(s)) => (Some(s), Duration::ZERO),
        _ => match hub.latest() {
            Some(s) => {
                let age = hub.uptime().saturating_sub(s.uptime);
                (Some(s), age)
            }
            None => (None, Duration::ZERO),
        },
    };
    match snap {
        Some(s) => encode_openmetrics(&s.with_process(), age),
        None => "# the serving loop has not answered yet\n# EOF\n".to_string(),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if !head_only {
        stream.write_all(body)?;
    }
    stream.flush()?;
    let _ = stream.shutdown(std::net::Shutdown::Write);
    Ok(())
}
