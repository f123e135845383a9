//! Serving the API so that its port cannot starve the fleet: at most [`MAX_CONNECTIONS`]
//! connections at once (the rest wait in the kernel's backlog, holding none of our file
//! descriptors), request headers within [`HEADER_TIMEOUT`], and a connection that moves no
//! byte for [`IDLE_TIMEOUT`] closed. Before, 5,000 idle TCP connections held the port's
//! descriptors for good: under a 1,000-file limit 560 of them stopped users being added.
//!
//! HTTP/1.1 only (hyper's server, driven here rather than by `axum::serve`, which sets no
//! timeouts). Shutdown lets requests in flight finish, for at most [`DRAIN`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

/// Most API connections held at once; well inside [`crate::host::RESERVED_FDS`].
pub const MAX_CONNECTIONS: usize = 256;
/// Time for a client to send a request's headers, from when the connection is ready for one.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no byte read or written for this long is closed; longer than the
/// longest request (a 60 s CPU profile, whose connection is quiet meanwhile).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then drains.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    loop {
        let slot = tokio::select! {
            _ = shutdown.cancelled() => break,
            slot = Arc::clone(&slots).acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors (or a connection reset before accept): the reserve
                    // should prevent the first; either way, try again shortly, not in a spin.
                    tracing::warn!(%err, "the API could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let service = router
            .clone()
            .map_request(move |request: http::Request<Incoming>| {
                let mut request = request.map(axum::body::Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            });
        let connection = http.serve_connection(
            TokioIo::new(Idle::new(tcp, IDLE_TIMEOUT)),
            TowerToHyperService::new(service),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("API connections still open after the shutdown drain; dropped");
    }
}

/// A TCP stream that fails with `TimedOut` once no byte has moved for its timeout.
struct Idle {
    tcp: TcpStream,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Idle {
    fn new(tcp: TcpStream, timeout: Duration) -> Idle {
        Idle {
            tcp,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn moved(&mut self) {
        self.deadline
            .as_mut()
            .reset(crate::clock::later(Instant::now(), self.timeout));
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.deadline.as_mut().poll(cx).is_ready()
    }

    /// A write's outcome: bytes written count as movement; a pending write past the
    /// deadline is a timeout.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        match written {
            Poll::Ready(result) => {
                if result.as_ref().is_ok_and(|&n| n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

fn timed_out() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, "API connection idle too long")
}

impl AsyncRead for Idle {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.tcp).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Idle {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.tcp).poll_write(cx, data);
        self.wrote(cx, written)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        ready!(Pin::new(&mut self.tcp).poll_flush(cx))?;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.wrote(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// On the paused clock: a connection that sends nothing is closed at the idle timeout,
    /// one that keeps talking is not.
    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out_and_a_talking_one_does_not() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut idle = Idle::new(server, Duration::from_secs(5));
        let mut buf = [0u8; 8];
        let mut client = client;
        tokio::time::advance(Duration::from_secs(4)).await;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"x")
            .await
            .expect("write");
        assert_eq!(idle.read(&mut buf).await.expect("a byte"), 1);
        // 4 s more: 8 s since the start, but only 4 since the last byte.
        tokio::time::advance(Duration::from_secs(4)).await;
        tokio::io::AsyncWriteExt::write_all(&mut client, b"y")
            .await
            .expect("write");
        assert_eq!(idle.read(&mut buf).await.expect("a byte"), 1);
        let silent = idle.read(&mut buf).await;
        assert_eq!(
            silent.expect_err("idle").kind(),
            std::io::ErrorKind::TimedOut
        );
    }
}
