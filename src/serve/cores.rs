//! One serving loop per core: shared-nothing per-core shards.
//!
//! [`run_cores`] starts a thread per listed core, pins it there, builds that shard's service
//! on it (its own device queue, its own [`Stack`](crate::stack::Stack) and socket memory,
//! allocated by the thread that uses it), and turns it with a copy of the [`ServeLoop`]. The
//! shards share only what the caller gives them (a `Sync` store, say) and the stop flag: a
//! signal, a [`StopHandle`](super::StopHandle), or one shard failing to start stops them all.

use std::fmt;

use crate::metrics::{Hub, HubFanIn};
use crate::sys::cpu;

use super::{Ended, Event, ServeLoop, Service};

/// A shard's run: its core, its service as the loop left it, and how the loop ended.
pub struct CoreRun<S> {
    /// The core it ran on.
    pub core: usize,
    /// The service, after the shutdown (for final reports).
    pub service: S,
    /// How its loop ended.
    pub ended: Ended,
}

/// Why [`run_cores`] could not run every shard.
#[derive(Debug, thiserror::Error)]
pub enum CoresError {
    /// The list of cores is empty or names a core twice.
    #[error("cores {cores:?}: {why}")]
    BadList {
        /// The list given.
        cores: Vec<usize>,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A core this process may not run on (it does not exist, or a cgroup or `taskset` keeps
    /// the process off it).
    #[error(
        "core {core} is not available to this process; it may run on cores {allowed}, so at \
         most {count} shards (one per core)"
    )]
    NotAllowed {
        /// The core asked for.
        core: usize,
        /// The cores allowed, as a list (`0-3,8`).
        allowed: CoreList,
        /// How many that is.
        count: usize,
    },
    /// Pinning a thread failed.
    #[error("pinning shard {shard} to core {core}: {source}")]
    Pin {
        /// The shard.
        shard: usize,
        /// Its core.
        core: usize,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A shard's service could not be built.
    #[error("shard {shard} (core {core}): {why}")]
    Build {
        /// The shard.
        shard: usize,
        /// Its core.
        core: usize,
        /// The builder's error.
        why: String,
    },
    /// The thread that answers the loop's hub for every shard could not start.
    #[error("starting the thread that sums the shards' counters for operators: {0}")]
    FanIn(#[source] std::io::Error),
    /// A shard's thread panicked.
    #[error("shard {shard} (core {core}) panicked")]
    Panicked {
        /// The shard.
        shard: usize,
        /// Its core.
        core: usize,
    },
}

/// Stops every shard when dropped: held by each shard's thread for its whole life.
struct StopOnExit(super::StopHandle);

impl Drop for StopOnExit {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// A set of cores, shown as ranges (`0-3,8`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreList(pub Vec<usize>);

impl fmt::Display for CoreList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        let c = &self.0;
        while i < c.len() {
            let mut j = i;
            while j + 1 < c.len() && c[j + 1] == c[j] + 1 {
                j += 1;
            }
            let sep = if i == 0 { "" } else { "," };
            if j == i {
                write!(f, "{sep}{}", c[i])?;
            } else {
                write!(f, "{sep}{}-{}", c[i], c[j])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// Checks a list of cores against those this process may run on. With `oversubscribe`, a
/// core may be named more than once (several shards then take turns on it: for tests on
/// machines with few cores, never for serving).
pub fn check_cores(cores: &[usize], oversubscribe: bool) -> Result<(), CoresError> {
    if cores.is_empty() {
        return Err(CoresError::BadList {
            cores: cores.to_vec(),
            why: "name at least one core",
        });
    }
    let mut sorted = cores.to_vec();
    sorted.sort_unstable();
    if !oversubscribe && sorted.windows(2).any(|w| w[0] == w[1]) {
        return Err(CoresError::BadList {
            cores: cores.to_vec(),
            why: "a core named twice (one shard per core)",
        });
    }
    // If affinity cannot be read, pinning will tell.
    if let Ok(allowed) = cpu::allowed() {
        if let Some(&core) = cores.iter().find(|c| !allowed.contains(c)) {
            return Err(CoresError::NotAllowed {
                core,
                count: allowed.len(),
                allowed: CoreList(allowed),
            });
        }
    }
    Ok(())
}

/// Runs shard `i` on `cores[i]`: pins a thread there, calls `build(i)` on it, and serves what
/// it returns with a copy of `serve` until the loop stops (see the module docs). `on_event`
/// hears each shard's events, with the shard's index. Returns the shards' runs in order.
/// `oversubscribe` lets a core be named twice (see [`check_cores`]).
///
/// When `serve` has a [`Hub`] (the metrics endpoint's and the admin socket's), each shard's
/// loop answers a hub of its own and a [`HubFanIn`] answers `serve`'s from them all: the
/// operators see the shards' counters summed and their connections together.
pub fn run_cores<S, B, E>(
    serve: &ServeLoop,
    cores: &[usize],
    oversubscribe: bool,
    build: B,
    on_event: E,
) -> Result<Vec<CoreRun<S>>, CoresError>
where
    S: Service + Send,
    B: Fn(usize) -> Result<S, String> + Sync,
    E: Fn(usize, Event, &mut S) + Sync,
{
    check_cores(cores, oversubscribe)?;
    let stop = serve.stop_handle();
    let (loops, _fan_in) = match &serve.hub {
        Some(front) => {
            let hubs: Vec<Hub> = cores.iter().map(|_| Hub::new()).collect();
            let fan_in = HubFanIn::start(front.clone(), hubs.clone()).map_err(CoresError::FanIn)?;
            let loops: Vec<ServeLoop> = hubs.into_iter().map(|h| serve.clone().hub(h)).collect();
            (loops, Some(fan_in))
        }
        None => (cores.iter().map(|_| serve.clone()).collect(), None),
    };
    let (build, on_event) = (&build, &on_event);
    let results: Vec<Result<CoreRun<S>, CoresError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = cores
            .iter()
            .enumerate()
            .zip(loops)
            .map(|((shard, &core), serve)| {
                let stop = stop.clone();
                let h = std::thread::Builder::new()
                    .name(format!("ustack-core{core}"))
                    .spawn_scoped(scope, move || {
                        // However this thread ends (a failed start, the loop's end, a panic),
                        // the other shards stop too.
                        let _stop_all = StopOnExit(stop);
                        let started = cpu::pin_current_thread(core)
                            .map_err(|source| CoresError::Pin {
                                shard,
                                core,
                                source,
                            })
                            .and_then(|()| {
                                build(shard).map_err(|why| CoresError::Build { shard, core, why })
                            });
                        let mut service = started?;
                        let ended = serve.run(&mut service, |e, s| on_event(shard, e, s));
                        Ok(CoreRun {
                            core,
                            service,
                            ended,
                        })
                    })
                    .expect("spawning a shard thread");
                (shard, core, h)
            })
            .collect();
        handles
            .into_iter()
            .map(|(shard, core, h)| {
                h.join()
                    .unwrap_or(Err(CoresError::Panicked { shard, core }))
            })
            .collect()
    });
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shard that panics while another serves stops the other too, and the run reports
    /// which one panicked (it would otherwise serve on with one shard gone).
    #[test]
    fn a_panicking_shard_stops_the_others() {
        use crate::chunk::{MemStore, ServerConfig};
        use crate::net::KernelServer;
        let core = cpu::allowed().unwrap()[0];
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let serve = ServeLoop::new().spin_polls(10);
            let r = run_cores(
                &serve,
                &[core, core],
                true,
                |shard| {
                    if shard == 1 {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        panic!("shard 1 fails after shard 0 started serving");
                    }
                    let store = MemStore::new(1 << 20);
                    KernelServer::bind(
                        "127.0.0.1:0".parse().unwrap(),
                        store,
                        ServerConfig::default(),
                    )
                    .map_err(|e| e.to_string())
                },
                |_, _, _| {},
            );
            let _ = tx.send(r.err().map(|e| e.to_string()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the other shard went on serving after one panicked");
        assert_eq!(got, Some(format!("shard 1 (core {core}) panicked")));
    }

    #[test]
    fn core_lists_show_as_ranges() {
        assert_eq!(CoreList(vec![0, 1, 2, 3, 8]).to_string(), "0-3,8");
        assert_eq!(CoreList(vec![1]).to_string(), "1");
        assert_eq!(CoreList(vec![0, 2, 3]).to_string(), "0,2-3");
    }

    #[test]
    fn bad_lists_are_refused_naming_the_limit() {
        assert!(matches!(
            check_cores(&[], true),
            Err(CoresError::BadList { .. })
        ));
        let allowed = cpu::allowed().unwrap();
        let twice = [allowed[0], allowed[0]];
        assert!(matches!(
            check_cores(&twice, false),
            Err(CoresError::BadList { .. })
        ));
        assert!(check_cores(&twice, true).is_ok());
        let e = check_cores(&[100_000], true).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("so at most {} shards", allowed.len())),
            "{e}"
        );
        assert!(check_cores(&allowed, false).is_ok());
    }
}
