//! The user-data builder: what the agent finds, what is refused, and the
//! size bound admission relies on (a property over random launches).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::{AgentToken, ConfigVersion, Generation, Secret, WorkspaceId, WorkspaceSpec};

fn launch() -> Launch {
    Launch {
        workspace: WorkspaceId::new(),
        generation: Generation(7),
        config_version: ConfigVersion(3),
        spec: WorkspaceSpec::default(),
        secrets: [(
            "API_KEY".to_owned(),
            Secret::new("it's \"quoted\" $(rm -rf /)\n"),
        )]
        .into(),
        files: BTreeMap::from([("etc/app.conf".to_owned(), b"a=1\n".to_vec())]),
        token: AgentToken::new("wla_token"),
        service_url: "http://10.0.0.1:50051".into(),
    }
}

#[test]
fn the_agent_finds_its_token_config_version_and_secrets_intact() {
    let env: BTreeMap<_, _> = environment(&encode(&launch()).unwrap())
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(env["WL_AGENT_TOKEN"], "wla_token");
    assert_eq!(env["WL_CONFIG_VERSION"], "3");
    assert_eq!(env["WL_SERVICE_URL"], "http://10.0.0.1:50051");
    assert_eq!(env["API_KEY"], "it's \"quoted\" $(rm -rf /)\n");
}

#[test]
fn no_input_byte_appears_raw_in_the_script() {
    let mut l = launch();
    l.files
        .insert("we'ird $(touch x)/`p`".into(), b"'; touch y #".to_vec());
    l.spec.env.insert("PLAIN".into(), "\"$HOME\"".into());
    let script = script(&l, &PRODUCTION).unwrap();
    assert!(only_encoded_data(&script), "{script}");
    assert!(!only_encoded_data(
        &script.replace("set --\n", "set --\ntouch x\n")
    ));
    assert!(!only_encoded_data(&script.replacen("'", "'$(x)", 2)));
    for raw in [
        "quoted",
        "rm -rf",
        "we'ird",
        "touch",
        "$HOME",
        "/workspace",
        "PLAIN",
        "API_KEY",
    ] {
        assert!(!script.contains(raw), "{raw:?} appears raw in:\n{script}");
    }
}

#[test]
fn a_config_too_large_for_user_data_is_refused_by_name() {
    let mut big = launch();
    big.files.insert("big".into(), vec![b'x'; MAX_USER_DATA]);
    let err = encode(&big).unwrap_err();
    assert!(
        matches!(&err, BackendError::Limit(l) if l.limit == LIMIT_NAME && l.max == 16384),
        "{err}"
    );
    assert!(admits(&big.footprint()).is_err());
}

#[test]
fn what_no_environment_or_path_can_carry_is_refused_and_never_shown() {
    let mut l = launch();
    l.secrets
        .insert("TOKEN".into(), Secret::new("hunter2\0tail"));
    let err = encode(&l).unwrap_err().to_string();
    assert!(err.contains("NUL") && !err.contains("hunter2"), "{err}");
    for name in ["", "A=B", "A\0B"] {
        let mut l = launch();
        l.spec.env.insert(name.into(), "v".into());
        assert!(encode(&l).is_err(), "{name:?} accepted");
    }
    for path in ["a\0b", "../x", "a//b", "/abs", "."] {
        let mut l = launch();
        l.files.insert(path.into(), vec![]);
        assert!(encode(&l).is_err(), "{path:?} accepted");
    }
}

/// A byte string for names, values and paths: any byte class the builder
/// must carry (quotes, `$`, backticks, newlines, unicode), never NUL.
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just('\''),
            Just('"'),
            Just('$'),
            Just('`'),
            Just('\n'),
            Just('\\'),
            Just('é'),
            Just('漢'),
            any::<char>().prop_filter("no NUL", |c| *c != '\0'),
        ],
        1..max,
    )
    .prop_map(|chars| chars.into_iter().collect())
}

fn name() -> impl Strategy<Value = String> {
    text(12).prop_map(|n| n.replace('=', "_"))
}

fn path() -> impl Strategy<Value = String> {
    proptest::collection::vec(name().prop_map(|n| n.replace('/', "_")), 1..4).prop_map(|parts| {
        parts
            .into_iter()
            .map(|p| {
                if p == "." || p == ".." {
                    format!("{p}x")
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join("/")
    })
}

prop_compose! {
    fn launches()(
        files in proptest::collection::btree_map(path(), proptest::collection::vec(any::<u8>(), 0..300), 0..6),
        secrets in proptest::collection::btree_map(name(), text(40), 0..6),
        env in proptest::collection::btree_map(name(), text(40), 0..6),
        url_len in 1..=MAX_SERVICE_URL,
        token_len in 1..=MAX_TOKEN,
        generation in any::<u64>(),
        config_version in any::<u64>(),
    ) -> Launch {
        Launch {
            workspace: WorkspaceId::new(),
            generation: Generation(generation),
            config_version: ConfigVersion(config_version),
            spec: WorkspaceSpec { env, ..WorkspaceSpec::default() },
            secrets: secrets.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
            files,
            token: AgentToken::new("t".repeat(token_len)),
            service_url: "u".repeat(url_len),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256)
    ))]

    /// Admission's bound holds for every launch: if it admits, the start
    /// never fails for size.
    #[test]
    fn the_bound_is_never_below_the_real_size(l in launches()) {
        let script = script(&l, &PRODUCTION).unwrap();
        prop_assert!(only_encoded_data(&script));
        let real = script.len();
        prop_assert!(real <= bound(&l.footprint()), "real {} > bound {}", real, bound(&l.footprint()));
        if admits(&l.footprint()).is_ok() {
            prop_assert!(encode(&l).is_ok());
        }
    }

    /// …and tight: with the agent's own values at their largest, it exceeds
    /// the real size by at most 3 bytes per file and variable.
    #[test]
    fn the_bound_exceeds_the_real_size_by_at_most_three_bytes_per_item(mut l in launches()) {
        l.service_url = "u".repeat(MAX_SERVICE_URL);
        l.token = AgentToken::new("t".repeat(MAX_TOKEN));
        l.generation = Generation(u64::MAX);
        l.config_version = ConfigVersion(u64::MAX);
        // Distinct names, so none shadows another.
        l.secrets = l.secrets.into_iter().map(|(k, v)| (format!("S{k}"), v)).collect();
        l.spec.env = l.spec.env.into_iter().map(|(k, v)| (format!("E{k}"), v)).collect();
        let real = script(&l, &PRODUCTION).unwrap().len();
        let fp = l.footprint();
        let items = 2 * fp.files + fp.secrets + fp.env + 7;
        prop_assert!(bound(&fp) - real <= 3 * items, "bound {} real {}", bound(&fp), real);
    }
}
