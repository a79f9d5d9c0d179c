//! Early refusals over HTTP/1.1 (issue 19). The service often answers before it has read the
//! request body: the auth interceptor refuses a call without a token, tonic's decoder refuses a
//! message over the size limit after its frame header. On HTTP/2 a stream ends on its own; on
//! HTTP/1.1 hyper then closes the connection with the rest of the body unread, the kernel
//! resets it, and a client still writing (a browser, connect-node's grpc-web transport) gets a
//! broken pipe instead of the status.
//!
//! This layer keeps hold of an HTTP/1.x request body the service drops unfinished. When the
//! response is ready it reads and discards the rest, up to a bound, before the response goes
//! out: the client finishes writing, reads its status, and the connection stays open for the
//! next request. A body beyond the bound (or one that trickles too slowly) gets the response
//! with `Connection: close`, and the rest is still read and discarded in the background for a
//! while, so the client can finish writing and read the reply before the connection ends.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::{BoxFuture, Either};
use http::{HeaderValue, Request, Response, Version, header};
use http_body::{Body as _, Frame, SizeHint};
use tokio::sync::oneshot;
use tonic::body::Body;
use tower::{Layer, Service};

/// Longest wait for the rest of a body before the response goes out anyway (with
/// `Connection: close`); well under the request timeout.
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// After a `Connection: close` reply, how long more is read so the client can finish
/// writing; then the connection is cut.
const LINGER_WAIT: Duration = Duration::from_secs(10);

/// See the module documentation.
#[derive(Debug, Clone, Copy)]
pub struct Http1DrainLayer {
    budget: usize,
    linger: usize,
}

impl Http1DrainLayer {
    /// `max_message` is the largest request message accepted. Up to twice that is drained
    /// before a reply (room for framing and grpc-web-text's base64), so any refused request
    /// within the limit, and a modestly oversized one, leaves the connection reusable. After
    /// a `Connection: close` reply up to sixteen times the limit more is read and dropped.
    pub fn new(max_message: usize) -> Self {
        Self { budget: max_message.saturating_mul(2), linger: max_message.saturating_mul(16) }
    }
}

impl<S> Layer<S> for Http1DrainLayer {
    type Service = Http1Drain<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Http1Drain { inner, budget: self.budget, linger: self.linger }
    }
}

#[derive(Debug, Clone)]
pub struct Http1Drain<S> {
    inner: S,
    budget: usize,
    linger: usize,
}

impl<S, RB> Service<Request<Body>> for Http1Drain<S>
where
    S: Service<Request<Body>, Response = Response<RB>>,
    S::Future: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, BoxFuture<'static, Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.version() >= Version::HTTP_2 || request.body().is_end_stream() {
            return Either::Left(self.inner.call(request));
        }
        // A client that waits for `100 Continue` has sent nothing yet: if the body was never
        // asked for, it is not fetched just to be thrown away.
        let expects_continue =
            request.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let (home, mut left_over) = oneshot::channel();
        let request = request.map(|body| Body::new(Tracked { body: Some(body), home: Some(home), polled: false }));
        let future = self.inner.call(request);
        let (budget, linger) = (self.budget, self.linger);
        Either::Right(Box::pin(async move {
            let mut response = future.await?;
            // Nothing came back: the body was read to its end, or is still held (a streaming
            // call reading it as it goes).
            let Ok(LeftOver { mut body, polled }) = left_over.try_recv() else {
                return Ok(response);
            };
            if expects_continue && !polled {
                close(&mut response);
                return Ok(response);
            }
            match tokio::time::timeout(DRAIN_WAIT, discard(&mut body, budget)).await {
                Ok(Drained::All) => {}
                Ok(Drained::Broken) => close(&mut response),
                Ok(Drained::OverBudget) | Err(_) => {
                    close(&mut response);
                    tracing::debug!("request body beyond what is drained: replying with Connection: close");
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(LINGER_WAIT, discard(&mut body, linger)).await;
                    });
                }
            }
            Ok(response)
        }))
    }
}

fn close<B>(response: &mut Response<B>) {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
}

enum Drained {
    /// Read to its end: the connection can carry the next request.
    All,
    OverBudget,
    /// The client broke off or sent something malformed.
    Broken,
}

async fn discard(body: &mut Body, mut budget: usize) -> Drained {
    loop {
        match std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            None => return Drained::All,
            Some(Err(_)) => return Drained::Broken,
            Some(Ok(frame)) => {
                let size = frame.data_ref().map_or(0, |data| data.len());
                match budget.checked_sub(size) {
                    Some(rest) => budget = rest,
                    None => return Drained::OverBudget,
                }
            }
        }
    }
}

/// What is sent back when the service drops a body before its end.
struct LeftOver {
    body: Body,
    polled: bool,
}

/// The request body as the service sees it; if dropped unfinished, it goes back to the layer.
struct Tracked {
    body: Option<Body>,
    home: Option<oneshot::Sender<LeftOver>>,
    polled: bool,
}

impl http_body::Body for Tracked {
    type Data = <Body as http_body::Body>::Data;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        this.polled = true;
        let Some(body) = this.body.as_mut() else { return Poll::Ready(None) };
        let polled = Pin::new(body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            // Finished (or failed, and there is nothing sensible left to read).
            this.body = None;
            this.home = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(http_body::Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body.as_ref().map_or_else(|| SizeHint::with_exact(0), http_body::Body::size_hint)
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let (Some(body), Some(home)) = (self.body.take(), self.home.take())
            && !body.is_end_stream()
        {
            let _ = home.send(LeftOver { body, polled: self.polled });
        }
    }
}
