//! The threads that take operator connections (metrics scrapes, admin commands): a few of
//! them share one listener, each serves one connection at a time, and they stop when told.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::Hub;

/// A listening socket several threads accept from.
pub(crate) trait Listener: Send + Sized + 'static {
    /// An accepted connection.
    type Conn;
    /// Another handle on the same socket.
    fn clone_handle(&self) -> io::Result<Self>;
    /// Waits for the next connection.
    fn accept_one(&self) -> io::Result<Self::Conn>;
}

impl Listener for TcpListener {
    type Conn = TcpStream;
    fn clone_handle(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn accept_one(&self) -> io::Result<TcpStream> {
        self.accept().map(|(s, _)| s)
    }
}

impl Listener for UnixListener {
    type Conn = UnixStream;
    fn clone_handle(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn accept_one(&self) -> io::Result<UnixStream> {
        self.accept().map(|(s, _)| s)
    }
}

/// Threads accepting from one listener; [`Acceptors::stop`] ends them.
pub(crate) struct Acceptors {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Acceptors {
    /// Starts `count` threads named `name-N`, each taking connections from `listener` and
    /// handing them to `serve` (whose errors are logged as `what`).
    pub(crate) fn start<L: Listener>(
        listener: &L,
        count: usize,
        name: &str,
        what: &'static str,
        hub: &Hub,
        serve: fn(L::Conn, &Hub) -> io::Result<()>,
    ) -> io::Result<Acceptors> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(count);
        for i in 0..count {
            let l = listener.clone_handle()?;
            let (hub, stop) = (hub.clone(), stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let conn = l.accept_one();
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match conn {
                        Ok(c) => {
                            if let Err(e) = serve(c, &hub) {
                                tracing::debug!("{what}: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::warn!("{what}: accept failed: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                })?;
            threads.push(t);
        }
        Ok(Acceptors { stop, threads })
    }

    /// Stops the threads: `wake` is called once per thread to get it out of `accept` (it
    /// connects to the listener), then each is joined.
    pub(crate) fn stop(&mut self, wake: impl Fn()) {
        self.stop.store(true, Ordering::Relaxed);
        for _ in &self.threads {
            wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
