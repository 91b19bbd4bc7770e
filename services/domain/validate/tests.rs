//! The input rules as tables, plus properties over generated input.

use super::*;
use proptest::prelude::*;

#[test]
fn names() {
    for good in ["a", "dev-1", "x0-y", &"a".repeat(63)] {
        assert!(workspace_name(good).is_ok(), "{good}");
    }
    for bad in ["", "1abc", "Abc", "a_b", "a-", "a b", "ä", &"a".repeat(64)] {
        assert_eq!(workspace_name(bad).unwrap_err().field, "name", "{bad}");
    }
}

#[test]
fn paths() {
    let longest = "s".repeat(MAX_SEGMENT_LEN);
    let good_deep = format!("a/{longest}/b");
    for good in [
        "a",
        "a/b.txt",
        "dir/.hidden",
        "x..y",
        "conf/app-1_2.toml",
        "A.B",
        &longest,
        &good_deep,
    ] {
        assert!(file_path(good).is_ok(), "{good}");
    }
    let too_long_segment = "s".repeat(MAX_SEGMENT_LEN + 1);
    let too_long_path = ["abc"; 300].join("/");
    for bad in [
        "",
        "/etc/passwd",
        "../x",
        "a/../b",
        "a//b",
        "./a",
        "a/",
        "a\0b",
        "a\\b",
        "a b",
        "a\nb",
        "a$(id)",
        "a`id`",
        "a;b",
        "a'b",
        "a\"b",
        "a*",
        "~/x",
        "a:b",
        "é",
        "a\u{202e}b",
        "-rf",
        "dir/--help",
        &too_long_segment,
        &too_long_path,
    ] {
        let err = file_path(bad).unwrap_err();
        assert_eq!(err.field, "path", "{bad:?}");
    }
}

/// Every loader and interpreter hook the issue names, and friends: each is
/// refused, with the reason in the message.
#[test]
fn hooks_are_refused_as_environment_names() {
    let table = [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
        "DYLD_INSERT_LIBRARIES",
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "MALLOC_CHECK_",
        "LOCPATH",
        "NLSPATH",
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONHOME",
        "PERL5LIB",
        "PERL5OPT",
        "RUBYOPT",
        "NODE_OPTIONS",
        "JAVA_TOOL_OPTIONS",
        "LUA_INIT",
        "BASH_ENV",
        "ENV",
        "PATH",
        "HOME",
        "IFS",
        "SHELLOPTS",
        "PS4",
        "GIT_SSH_COMMAND",
        "WL_AGENT_TOKEN",
        "WL_ANYTHING",
    ];
    for name in table {
        let err = env_name("name", name).unwrap_err();
        assert_eq!(err.field, "name");
        assert!(err.message.contains("reserved"), "{name}: {}", err.message);
        let err = env_name("spec.env", name).unwrap_err();
        assert_eq!(err.field, "spec.env");
    }
}

#[test]
fn environment_names_are_an_allow_list() {
    for good in [
        "API_KEY",
        "X",
        "A1",
        "MODEL_NAME_2",
        "PATHS",
        "HOMEPAGE",
        "ENVIRONMENT",
    ] {
        assert!(env_name("name", good).is_ok(), "{good}");
    }
    let long = "A".repeat(MAX_SECRET_NAME_LEN + 1);
    for bad in [
        "",
        "1A",
        "A-B",
        "A B",
        "a",
        "ld_preload",
        "Ld_Preload",
        "_X",
        "A=B",
        "A\0",
        "É",
        &long,
    ] {
        assert!(env_name("name", bad).is_err(), "{bad:?}");
    }
    assert!(
        RESERVED_ENV
            .iter()
            .any(|(entry, how, _)| *entry == RESERVED_PREFIX && *how == Match::Prefix),
        "the agent's prefix is reserved"
    );
}

#[test]
fn a_hook_stored_by_an_older_version_can_still_be_deleted() {
    for name in ["LD_PRELOAD", "api_key", "_x"] {
        assert!(secret_name_to_delete(name).is_ok(), "{name}");
    }
    for bad in ["", "no pe", "1A", "A=B"] {
        assert_eq!(
            secret_name_to_delete(bad).unwrap_err().field,
            "name",
            "{bad:?}"
        );
    }
}

#[test]
fn a_spec_env_name_is_checked_like_a_secret_name() {
    let mut spec = WorkspaceSpec::default();
    spec.env.insert("API_URL".into(), "x".into());
    assert!(super::spec(&spec).is_ok());
    spec.env.insert("LD_PRELOAD".into(), "/tmp/x.so".into());
    assert_eq!(super::spec(&spec).unwrap_err().field, "spec.env");
}

proptest! {
    #[test]
    fn accepted_paths_never_escape(path in "[a-z./\\\\\0 -]{0,12}") {
        if file_path(&path).is_ok() {
            prop_assert!(!path.starts_with('/'));
            prop_assert!(path.split('/').all(|s| s != ".." && s != "." && !s.is_empty()));
            prop_assert!(path.bytes().all(|b| b == b'/' || portable(b)));
        }
    }

    #[test]
    fn accepted_names_are_dns_safe(name in "[a-zA-Z0-9_ -]{0,70}") {
        if workspace_name(&name).is_ok() {
            prop_assert!(name.len() <= 63);
            prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }
    }

    #[test]
    fn accepted_paths_stay_under_their_root(
        segments in proptest::collection::vec(
            prop_oneof!["\\.\\.", "\\.", "", "[a-z]{1,4}", "\\PC{1,4}"],
            1..6,
        ),
        absolute in any::<bool>(),
    ) {
        let path = format!("{}{}", if absolute { "/" } else { "" }, segments.join("/"));
        if file_path(&path).is_ok() {
            // Joined under a root, the path resolves below it.
            let root = std::path::Path::new("/root-dir");
            let mut depth = 0usize;
            for part in root.join(&path).strip_prefix(root).unwrap().components() {
                match part {
                    std::path::Component::Normal(_) => depth += 1,
                    other => prop_assert!(false, "{path:?} has {other:?}"),
                }
            }
            prop_assert!(depth >= 1);
            prop_assert!(!path.contains('\0') && !path.starts_with('/'));
        }
    }

    #[test]
    fn any_text_is_checked_without_panicking(text in "\\PC{0,80}") {
        let _ = workspace_name(&text);
        let _ = file_path(&text);
        let _ = env_name("name", &text);
        let _ = secret_value(&text);
        if workspace_name(&text).is_ok() {
            prop_assert!(text.is_ascii() && !text.is_empty());
        }
        if file_path(&text).is_ok() {
            prop_assert!(text.is_ascii());
        }
    }

    #[test]
    fn workspace_ids_are_uuids_and_round_trip(text in "\\PC{0,40}", bytes in any::<[u8; 16]>()) {
        use crate::domain::WorkspaceId;
        if let Ok(id) = text.parse::<WorkspaceId>() {
            prop_assert!(uuid::Uuid::parse_str(&text).is_ok());
            prop_assert_eq!(id.to_string().parse::<WorkspaceId>().unwrap(), id);
        }
        let uuid = uuid::Uuid::from_bytes(bytes).to_string();
        prop_assert!(uuid.parse::<WorkspaceId>().is_ok());
    }

    #[test]
    fn accepted_env_names_are_portable_and_no_hook(name in "[A-Za-z0-9_=.$-]{0,12}") {
        if env_name("name", &name).is_ok() {
            prop_assert!(!name.contains('='));
            prop_assert!(name.starts_with(|c: char| c.is_ascii_uppercase()));
            prop_assert!(reserved_env(&name).is_none());
            prop_assert!(!name.starts_with("LD_") && !name.starts_with(RESERVED_PREFIX));
        }
    }
}
