//! Health `Watch` streams that end at shutdown.
//!
//! tonic-health keeps a `Watch` stream open for as long as the client
//! wants, and graceful shutdown waits for open streams: a gRPC client that
//! uses health checking (most load-balancing clients do, with `Watch`)
//! would hold every shutdown for the whole grace period. [`EndWatches`]
//! wraps the health service so that, once shutdown has begun, each `Watch`
//! stream delivers the NOT_SERVING update and then ends with UNAVAILABLE
//! ("shutting down"); a client then reconnects elsewhere. A stream whose
//! last update was not SERVING (e.g. SERVICE_UNKNOWN) ends at once.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Frame;
use prost::Message;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, http};
use tonic::server::NamedService;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;

/// The HTTP/2 path of the health service's `Watch` method.
pub(crate) const WATCH_PATH: &str = "/grpc.health.v1.Health/Watch";

/// The health service with its `Watch` streams ended at shutdown.
#[derive(Clone, Debug)]
pub(crate) struct EndWatches<S> {
    inner: S,
    stopping: CancellationToken,
}

impl<S> EndWatches<S> {
    /// Wraps the health service `inner`; `stopping` is cancelled when
    /// shutdown begins (before the statuses turn NOT_SERVING).
    pub(crate) fn new(inner: S, stopping: CancellationToken) -> EndWatches<S> {
        EndWatches { inner, stopping }
    }
}

impl<S: NamedService> NamedService for EndWatches<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for EndWatches<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<http::Response<Body>, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let watch = request.uri().path() == WATCH_PATH;
        let response = self.inner.call(request);
        if !watch {
            return Box::pin(response);
        }
        let stopping = self.stopping.clone();
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| {
                Body::new(WatchBody {
                    inner,
                    stop: Box::pin(stopping.clone().cancelled_owned()),
                    stopping,
                    last_serving: true,
                    state: WatchState::Open,
                })
            }))
        })
    }
}

/// Where a watch stream is on its way to the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WatchState {
    /// Forwarding updates.
    Open,
    /// The last update is out; the closing trailers are next.
    Ending,
    /// Trailers sent.
    Done,
}

/// A `Watch` response body that ends after the first update that is not
/// SERVING once shutdown has begun.
struct WatchBody {
    inner: Body,
    stop: Pin<Box<WaitForCancellationFutureOwned>>,
    stopping: CancellationToken,
    /// The last status sent was SERVING (or nothing was sent yet).
    last_serving: bool,
    state: WatchState,
}

impl WatchBody {
    /// The status of the last whole `HealthCheckResponse` in `data`, if any.
    fn last_status(mut data: &[u8]) -> Option<i32> {
        let mut status = None;
        while data.len() >= 5 {
            let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
            let message = data.get(5..5 + len)?;
            if data[0] == 0 {
                status = HealthCheckResponse::decode(message)
                    .ok()
                    .map(|response| response.status);
            }
            data.advance(5 + len);
        }
        status
    }
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = &mut *self;
        if this.state == WatchState::Open {
            // Registers for the wake-up at shutdown; ready once it has begun.
            let stopped = this.stop.as_mut().poll(cx).is_ready();
            if stopped && !this.last_serving {
                // Nothing more will change for this watch.
                this.state = WatchState::Ending;
            }
        }
        match this.state {
            WatchState::Done => return Poll::Ready(None),
            WatchState::Ending => {
                this.state = WatchState::Done;
                let mut trailers = http::HeaderMap::new();
                let _ = Status::unavailable("the server is shutting down; try another")
                    .add_header(&mut trailers);
                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
            }
            WatchState::Open => {}
        }
        let polled = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &polled
            && let Some(data) = frame.data_ref()
            && let Some(status) = WatchBody::last_status(data)
        {
            this.last_serving = status == ServingStatus::Serving as i32;
            // NOT_SERVING is set only after `stopping` is cancelled, so this
            // sees the cancellation even before the wake-up arrives.
            if !this.last_serving && this.stopping.is_cancelled() {
                this.state = WatchState::Ending;
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.state == WatchState::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(status: ServingStatus) -> Vec<u8> {
        let message = HealthCheckResponse {
            status: status as i32,
        }
        .encode_to_vec();
        let mut frame = vec![0];
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        frame
    }

    /// The last whole message of a chunk gives the status.
    #[test]
    fn statuses_are_read_from_frames() {
        let serving = frame(ServingStatus::Serving);
        let not_serving = frame(ServingStatus::NotServing);
        assert_eq!(
            WatchBody::last_status(&serving),
            Some(ServingStatus::Serving as i32)
        );
        let both = [serving.clone(), not_serving].concat();
        assert_eq!(
            WatchBody::last_status(&both),
            Some(ServingStatus::NotServing as i32)
        );
        assert_eq!(WatchBody::last_status(&serving[..4]), None);
    }
}
