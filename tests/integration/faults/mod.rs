//! Fault injection (C17–C20): every fault is a defined transition. Each
//! test breaks something in the middle of a cycle — a backend call that
//! fails, an instance that ignores SIGTERM, an owner that is paused past
//! its lease or whose clock runs ahead, a runner whose cycle was taken over
//! — and judges by the backend's own truth (the fake's record, the process
//! backend's journal and the processes alive), not by the service's account.

mod callers;
mod collector;
mod deletes;
mod fencing;
mod postgres;
mod processes;
mod sweep;
