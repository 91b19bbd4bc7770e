//! A response body that holds something — a connection's open-call guard,
//! a caller's in-flight permit — until the body ends or is dropped, so a
//! server stream counts as in flight for as long as it is open.
//! Contracts: C15 (nothing outlives its call).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Status, body::Body};

/// `inner`, holding `held` until it is dropped.
pub struct Holding<T> {
    inner: Body,
    _held: T,
}

impl<T> Holding<T> {
    /// Holds `held` for as long as `inner` lives.
    pub fn new(inner: Body, held: T) -> Self {
        Self { inner, _held: held }
    }
}

impl<T: Send + Unpin + 'static> http_body::Body for Holding<T> {
    type Data = tonic::codegen::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
