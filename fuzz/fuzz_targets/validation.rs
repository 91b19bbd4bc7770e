//! Fuzzes the request validators (`services/domain/validate.rs`): none
//! panics on any input, and whatever one accepts keeps its promise — a
//! path stays below its root in portable characters with segments of at
//! most 255 bytes, an environment name is of the allowed shape and no
//! hook, a workspace name is a DNS label.
#![no_main]

use libfuzzer_sys::{arbitrary::Arbitrary, fuzz_target};
use workspace_lifecycle::domain::{WorkspaceSpec, validate};

#[derive(Arbitrary, Debug)]
struct Input {
    name: String,
    path: String,
    env_name: String,
    value: String,
    content_len: u16,
    spec_env: Vec<(String, String)>,
    command: Vec<String>,
    image: String,
}

fuzz_target!(|input: Input| {
    if validate::workspace_name(&input.name).is_ok() {
        assert!((1..=validate::MAX_NAME_LEN).contains(&input.name.len()));
        assert!(
            input
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
        assert!(!input.name.ends_with('-'));
    }

    if validate::file_path(&input.path).is_ok() {
        assert!(input.path.len() <= validate::MAX_PATH_LEN);
        assert!(!input.path.starts_with('/'));
        for segment in input.path.split('/') {
            assert!(!segment.is_empty() && segment != "." && segment != "..");
            assert!(segment.len() <= validate::MAX_SEGMENT_LEN);
            assert!(!segment.starts_with('-'));
            assert!(
                segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            );
        }
        // Joined under a root, it resolves below it.
        let root = std::path::Path::new("/root-dir");
        let joined = root.join(&input.path);
        assert!(
            joined
                .strip_prefix(root)
                .unwrap()
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        );
    }

    check_env_name("name", &input.env_name);
    let _ = validate::secret_value(&input.value);
    let _ = validate::secret_name_to_delete(&input.env_name);
    let _ = validate::file_content(&vec![0; usize::from(input.content_len)]);
    let _ = validate::reason("reason", &input.value);

    let spec = WorkspaceSpec {
        image: input.image,
        command: input.command,
        env: input.spec_env.into_iter().collect(),
        ..WorkspaceSpec::default()
    };
    if validate::spec(&spec).is_ok() {
        for name in spec.env.keys() {
            check_env_name("spec.env", name);
            assert!(validate::env_name("spec.env", name).is_ok());
        }
    }
});

fn check_env_name(field: &str, name: &str) {
    match validate::env_name(field, name) {
        Ok(()) => {
            assert!(name.len() <= validate::MAX_SECRET_NAME_LEN);
            assert!(name.starts_with(|c: char| c.is_ascii_uppercase()));
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            );
            assert!(validate::reserved_env(name).is_none());
            assert!(!name.starts_with("LD_") && !name.starts_with("WL_"));
        }
        Err(err) => assert_eq!(err.field, field),
    }
}
