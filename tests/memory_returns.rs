//! The server's allocator gives freed memory back to the OS once its
//! runtime's workers go idle (services/allocator.rs; serves C15): what a
//! crowd of requests allocated on the workers and freed there does not stay
//! resident. A binary of its own, so that it runs under the server's global
//! allocator and runtime.

use std::time::Duration;

use test_support::rss_bytes;
use tokio::time::Instant;

workspace_lifecycle::server_allocator!();

const CROWD: usize = 400_000;
const OBJECT: usize = 512;

#[test]
fn memory_a_crowd_freed_on_the_workers_goes_back_once_they_park() {
    let runtime = workspace_lifecycle::allocator::runtime().expect("runtime");
    runtime.block_on(async {
        let start = rss_bytes();
        // ~200 MB in small objects, allocated on the workers as parked
        // requests are, held at once (one task per 1,000), then freed there.
        let (release, released) = tokio::sync::watch::channel(false);
        let (allocated, mut all_allocated) = tokio::sync::mpsc::channel(CROWD / 1_000);
        let mut tasks = Vec::new();
        for _ in 0..CROWD / 1_000 {
            let (mut released, allocated) = (released.clone(), allocated.clone());
            tasks.push(tokio::spawn(async move {
                let held: Vec<Box<[u8; OBJECT]>> =
                    (0..1_000).map(|_| Box::new([7u8; OBJECT])).collect();
                allocated.send(()).await.expect("the test waits");
                released
                    .wait_for(|go| *go)
                    .await
                    .expect("the test releases");
                held.len()
            }));
        }
        for _ in 0..CROWD / 1_000 {
            all_allocated.recv().await.expect("every task allocates");
        }
        let peak = rss_bytes();
        assert!(
            peak.saturating_sub(start) >= (CROWD * OBJECT / 2) as u64,
            "the crowd did not take memory: {peak} vs {start}"
        );
        release.send(true).expect("tasks wait");
        let mut held = 0;
        for task in tasks {
            held += task.await.expect("task");
        }
        assert_eq!(held, CROWD);
        // Bounded wait: each worker collects as it parks, which it does as
        // soon as the crowd's tasks are done; 10 s is far beyond it. This
        // loop's timer wakes at most the worker that serves the timers, so
        // it does not rescue a worker that went idle without collecting.
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut rss = rss_bytes();
        while rss.saturating_sub(start) > 20_000_000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            rss = rss_bytes();
        }
        assert!(
            rss.saturating_sub(start) <= 20_000_000,
            "RSS stayed {:.1} MB above the start after ~{} MB were freed",
            rss.saturating_sub(start) as f64 / 1e6,
            CROWD * OBJECT / 1_000_000
        );
    });
}
