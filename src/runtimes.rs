//! Thread-per-core execution for users: N single-threaded runtimes, one OS thread each. A
//! user's task, socket and timers stay on one thread, so socket events never wake a sibling
//! worker (with tokio's work-stealing runtime those cross-thread wake-ups cost about a third
//! of the CPU per message, measured with bench/run.py).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// One user thread per core but one, at least one. The core left over is the kernel's: most
/// of the CPU per message is its TCP stack and wake-ups (perf), and fewer user threads batch
/// more socket events per wake-up. On this 2-core machine, measured with bench/run.py
/// (2026-11-23): 1 thread spent 2.26 CPU-s per 100k echoed messages where 2 spent 2.72.
pub fn default_threads() -> usize {
    thread::available_parallelism().map_or(1, |n| n.get().saturating_sub(1).max(1))
}

/// The runtimes users are spread over; they stop when this is dropped.
pub struct Runtimes {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Runtimes {
    /// Starts `count` runtimes (at least one).
    pub fn start(count: usize) -> std::io::Result<Runtimes> {
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        for index in 0..count.max(1) {
            let (handle_tx, handle_rx) = std::sync::mpsc::channel();
            let stop = stop.clone();
            thread::Builder::new()
                .name(format!("wsfleet-runtime-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(err) => {
                            let _ = handle_tx.send(Err(err));
                            return;
                        }
                    };
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(stop.cancelled());
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| std::io::Error::other("a shard thread died while starting"))??;
            handles.push(handle);
        }
        Ok(Runtimes {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// `threads` runtimes, or [`default_threads`].
    pub fn start_for(threads: Option<usize>) -> std::io::Result<Runtimes> {
        Runtimes::start(threads.unwrap_or_else(default_threads))
    }

    /// The runtime for the next task, round-robin.
    pub fn next(&self) -> &Handle {
        &self.handles[self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len()]
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    /// Runs `f` once on every runtime thread and waits until all have.
    pub async fn on_each<F>(&self, f: F)
    where
        F: Fn() + Clone + Send + 'static,
    {
        for handle in &self.handles {
            let f = f.clone();
            // A runtime that is gone has nothing left to run it for.
            let _ = handle.spawn(async move { f() }).await;
        }
    }
}

impl Drop for Runtimes {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
