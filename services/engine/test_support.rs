//! Test doubles shared by the layers' unit tests.
//! Contracts: the unit tests of C2, C4, C5, C7, C11, C15 use them.

use tower::{ServiceBuilder, util::MapErr};
use tower_test::mock;

use super::{
    Error,
    intent::{Admission, StackRequest, Stage},
};
use crate::domain::Trigger;

/// A request keyed by a small integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestRequest {
    pub(crate) key: u32,
    pub(crate) trigger: Trigger,
    pub(crate) file: bool,
    pub(crate) stage: Stage,
    /// Tells requests apart in assertions.
    pub(crate) tag: usize,
}

impl TestRequest {
    pub(crate) fn new(key: u32, trigger: Trigger) -> Self {
        Self {
            key,
            trigger,
            file: false,
            stage: Stage::New,
            tag: 0,
        }
    }

    pub(crate) fn tagged(mut self, tag: usize) -> Self {
        self.tag = tag;
        self
    }

    pub(crate) fn at(mut self, stage: Stage) -> Self {
        self.stage = stage;
        self
    }
}

impl StackRequest for TestRequest {
    type Key = u32;

    fn key(&self) -> u32 {
        self.key
    }

    fn trigger(&self) -> Trigger {
        self.trigger
    }

    fn is_file_write(&self) -> bool {
        self.file
    }

    fn stage(&self) -> Stage {
        self.stage
    }

    fn set_stage(&mut self, stage: Stage) {
        self.stage = stage;
    }
}

fn to_engine(err: Box<dyn std::error::Error + Send + Sync>) -> Error {
    Error::Internal(err.to_string())
}

/// tower_test's mock, speaking `Error`.
pub(crate) type MockInner = MapErr<
    mock::Mock<TestRequest, Admission>,
    fn(Box<dyn std::error::Error + Send + Sync>) -> Error,
>;
/// The test's end of [`MockInner`].
pub(crate) type MockHandle = mock::Handle<TestRequest, Admission>;

/// A mock inner service and its handle.
pub(crate) fn mock_inner() -> (MockInner, MockHandle) {
    let (inner, handle) = mock::pair::<TestRequest, Admission>();
    let inner = ServiceBuilder::new()
        .map_err(to_engine as fn(_) -> _)
        .service(inner);
    (inner, handle)
}
