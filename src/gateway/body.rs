//! Body plumbing for the proxy: the boxed body type every gateway response uses, and the
//! metering wrappers that count, hash and limit bytes as they stream through.
//!
//! Invariants: bodies are never buffered whole or written anywhere; a wrapper sees each chunk
//! once, on its way through, and keeps only counters and hash states.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use sha2::{Digest, Sha256};

/// Errors a streamed body may end with.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(u64),
    #[error("request body does not match its Content-Digest")]
    DigestMismatch,
    #[error("body stream failed: {0}")]
    Stream(String),
}

pub type GwBody = UnsyncBoxBody<Bytes, BodyError>;

pub fn full(b: Bytes) -> GwBody {
    Full::new(b).map_err(|never| match never {}).boxed_unsync()
}

pub fn empty() -> GwBody {
    full(Bytes::new())
}

/// What a metered body saw, shared with whoever writes the audit record.
#[derive(Debug, Default, Clone)]
pub struct Meter {
    pub bytes: u64,
    pub sha256: Option<[u8; 32]>,
    pub error: Option<&'static str>,
    pub complete: bool,
}

/// Checks a streamed body against an expected digest (RFC 9530) as it passes.
pub trait StreamCheck: Send {
    fn update(&mut self, chunk: &[u8]);
    /// `Ok` when the whole body matched.
    fn finish(self: Box<Self>) -> bool;
}

/// Where a metered body reports when it ends.
pub enum Sink {
    /// Stored for someone else to read (the request body, read by the response's audit).
    Shared(Arc<std::sync::Mutex<Meter>>),
    /// Called once (the response body: writes the audit record).
    Call(Box<dyn FnOnce(Meter) + Send>),
}

/// Counts, hashes and limits a body; optionally verifies a digest; reports to its [`Sink`] at
/// the end of the stream, on error, or when dropped early.
pub struct Metered<B: Body> {
    inner: B,
    limit: Option<u64>,
    count: u64,
    hasher: Option<Sha256>,
    check: Option<Box<dyn StreamCheck>>,
    sink: Option<Sink>,
}

impl<B: Body> Metered<B> {
    pub fn new(inner: B, limit: Option<u64>, check: Option<Box<dyn StreamCheck>>, sink: Sink) -> Self {
        Metered { inner, limit, count: 0, hasher: Some(Sha256::new()), check, sink: Some(sink) }
    }

    fn finish(&mut self, error: Option<&'static str>) {
        let Some(sink) = self.sink.take() else { return };
        let m = Meter { bytes: self.count, sha256: self.hasher.take().map(|h| h.finalize().into()), error, complete: error.is_none() };
        match sink {
            Sink::Shared(s) => *s.lock().unwrap_or_else(|e| e.into_inner()) = m,
            Sink::Call(f) => f(m),
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                if let Some(check) = this.check.take() {
                    if !check.finish() {
                        this.finish(Some("CONTENT_DIGEST_MISMATCH"));
                        return Poll::Ready(Some(Err(BodyError::DigestMismatch)));
                    }
                }
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                this.finish(Some("BODY_STREAM_FAILED"));
                Poll::Ready(Some(Err(BodyError::Stream(e.to_string()))))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count += data.len() as u64;
                    if let Some(limit) = this.limit {
                        if this.count > limit {
                            this.finish(Some("PAYLOAD_TOO_LARGE"));
                            return Poll::Ready(Some(Err(BodyError::TooLarge(limit))));
                        }
                    }
                    if let Some(h) = this.hasher.as_mut() {
                        h.update(data);
                    }
                    if let Some(c) = this.check.as_mut() {
                        c.update(data);
                    }
                }
                // Readers stop polling once the body says it has ended, so the last frame is
                // where the end is recorded (and a digest mismatch replaces that frame).
                if this.inner.is_end_stream() {
                    if let Some(check) = this.check.take() {
                        if !check.finish() {
                            this.finish(Some("CONTENT_DIGEST_MISMATCH"));
                            return Poll::Ready(Some(Err(BodyError::DigestMismatch)));
                        }
                    }
                    this.finish(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body> Drop for Metered<B> {
    fn drop(&mut self) {
        // An empty body may never be polled: it ended complete. Any other body dropped before
        // its end (client went away, upstream failed) still reports, as aborted.
        if self.count == 0 && self.inner.is_end_stream() && self.check.is_none() {
            self.finish(None);
        } else {
            self.finish(Some("ABORTED"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn meters_and_limits() {
        let meter = Arc::new(std::sync::Mutex::new(Meter::default()));
        let b = Metered::new(Full::new(Bytes::from_static(b"hello")), Some(10), None, Sink::Shared(meter.clone()));
        let out = b.collect().await.unwrap().to_bytes();
        assert_eq!(&out[..], b"hello");
        let m = meter.lock().unwrap().clone();
        assert_eq!(m.bytes, 5);
        assert!(m.complete);
        assert_eq!(hex::encode(m.sha256.unwrap()), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        let meter = Arc::new(std::sync::Mutex::new(Meter::default()));
        let b = Metered::new(Full::new(Bytes::from_static(b"hello world")), Some(10), None, Sink::Shared(meter.clone()));
        assert!(matches!(b.collect().await, Err(BodyError::TooLarge(10))));
        assert_eq!(meter.lock().unwrap().error, Some("PAYLOAD_TOO_LARGE"));
    }
}
