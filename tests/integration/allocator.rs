//! The server binary runs with the allocator settings the memory figures
//! were measured with (services/allocator.rs, C15): jemalloc says which
//! options it took as it starts, when asked to.

use workspace_lifecycle::allocator::JEMALLOC_CONF;

#[test]
fn the_server_binary_runs_jemalloc_with_the_servers_slab_sizes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_workspace-lifecycle"))
        .arg("--help")
        .env("_RJEM_MALLOC_CONF", "confirm_conf:true")
        .output()
        .expect("the server binary runs");
    assert!(out.status.success(), "{out:?}");
    let conf = std::str::from_utf8(JEMALLOC_CONF.strip_suffix(b"\0").expect("NUL-terminated"))
        .expect("ASCII");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for option in conf.split(',') {
        assert!(
            stderr.contains(&format!("Set conf value: {option}")),
            "jemalloc did not take {option:?} from the binary:\n{stderr}"
        );
    }
}
