//! Shell injection through EC2 user data: every input class, in every
//! place an operator controls (file paths and contents, secret names and
//! values, the spec's environment), must come out of the boot script as
//! inert data. Shown by running the generated script under `sh` in a
//! sandbox (a temporary directory standing in for the machine image's
//! files directory and agent): no marker file appears, and the files and
//! the agent's environment come out byte-identical. What a path or an
//! environment variable cannot carry (NUL) is refused, never cut.

use std::{
    collections::BTreeMap,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt},
    path::{Path, PathBuf},
    time::Duration,
};

use workspace_backends::{
    AgentToken, BackendError, ConfigVersion, Generation, Launch, Secret, WorkspaceId,
    WorkspaceSpec,
    ec2::user_data::{self, Paths},
};

/// The marker an injected command would create (the script runs in the
/// sandbox, so a relative `touch` lands there).
const MARKER: &str = "pwned";

/// One payload per input class.
fn payloads() -> Vec<(&'static str, String)> {
    vec![
        ("single quote", format!("a'; touch {MARKER}; '")),
        ("double quote", format!("a\"; touch {MARKER}; \"")),
        ("command substitution", format!("$(touch {MARKER})")),
        ("backticks", format!("`touch {MARKER}`")),
        ("variable", "${HOME}$PATH$1$@".to_owned()),
        ("newline", format!("a\ntouch {MARKER}\n")),
        ("trailing newlines", "value\n\n".to_owned()),
        ("dash", format!("-rf --help -{MARKER}")),
        ("glob", "* ? [a-z]".to_owned()),
        ("unicode", "é漢字🙂\u{202e}".to_owned()),
        ("very long", format!("$(touch {MARKER})").repeat(600)),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    FilePath,
    FileContent,
    SecretName,
    SecretValue,
    EnvName,
    EnvValue,
}

const PLACES: [Place; 6] = [
    Place::FilePath,
    Place::FileContent,
    Place::SecretName,
    Place::SecretValue,
    Place::EnvName,
    Place::EnvValue,
];

fn launch_with(place: Place, payload: &str) -> Launch {
    let mut launch = Launch {
        workspace: WorkspaceId::new(),
        generation: Generation(3),
        config_version: ConfigVersion(9),
        spec: WorkspaceSpec::default(),
        secrets: [("API_KEY".to_owned(), Secret::new("plain"))].into(),
        files: BTreeMap::from([("conf/app.toml".to_owned(), b"x = 1\n".to_vec())]),
        token: AgentToken::new("wla_token"),
        service_url: "http://127.0.0.1:1".into(),
    };
    match place {
        // A path component may not hold `/` or be longer than NAME_MAX,
        // and the whole path fits PATH_MAX.
        Place::FilePath => {
            let mut payload = payload.replace('/', "_");
            while payload.len() > 3000 {
                payload.pop();
            }
            let parts: Vec<String> = payload
                .as_bytes()
                .chunks(200)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect();
            launch
                .files
                .insert(format!("dir/{}", parts.join("/")), b"content".to_vec());
        }
        Place::FileContent => {
            launch.files.insert("f".into(), payload.as_bytes().to_vec());
        }
        Place::SecretName => {
            launch
                .secrets
                .insert(payload.replace('=', "_"), Secret::new("v"));
        }
        Place::SecretValue => {
            launch.secrets.insert("S".into(), Secret::new(payload));
        }
        Place::EnvName => {
            launch
                .spec
                .env
                .insert(payload.replace('=', "_"), "v".into());
        }
        Place::EnvValue => {
            launch.spec.env.insert("E".into(), payload.into());
        }
    }
    launch
}

/// A sandbox: `files/` for the files, `agent` (a program that dumps its
/// environment, NUL-separated, into `env.out`; Python, since a POSIX shell
/// drops variables whose names are not shell names), and the boot script.
struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        let out = dir.path().join("env.out");
        let dump = format!(
            "#!/usr/bin/python3\nimport os\n\
             with open({:?}, 'wb') as f:\n\
             \x20   f.write(b''.join(k + b'=' + v + b'\\0' for k, v in os.environb.items()))\n",
            out.display().to_string()
        );
        std::fs::write(&agent, dump).unwrap();
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The files directory, as the script names it.
    fn files_dir(&self) -> String {
        self.path("files").to_string_lossy().into_owned()
    }

    /// The user-data script of `launch`, on this sandbox's paths.
    fn script(&self, launch: &Launch) -> Result<String, BackendError> {
        let files_dir = self.files_dir();
        let agent = self.path("agent").to_string_lossy().into_owned();
        let paths = Paths {
            files_dir: &files_dir,
            agent: &agent,
        };
        user_data::script(launch, &paths)
    }

    /// Runs the script under `sh` with the sandbox as working directory.
    async fn boot(&self, script: &str) -> std::process::Output {
        let boot = self.path("boot.sh");
        std::fs::write(&boot, script).unwrap();
        let run = tokio::process::Command::new("sh")
            .arg(&boot)
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("the boot script ends")
            .unwrap()
    }

    /// The environment the agent saw.
    fn agent_env(&self) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let raw = std::fs::read(self.path("env.out")).expect("the agent ran");
        raw.split(|b| *b == 0)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                let at = entry.iter().position(|b| *b == b'=').unwrap();
                (entry[..at].to_vec(), entry[at + 1..].to_vec())
            })
            .collect()
    }
}

/// Every file under `root`, as (relative path bytes, content).
fn files_under(root: &Path) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let relative = path
                    .strip_prefix(root)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec();
                found.insert(relative, std::fs::read(&path).unwrap());
            }
        }
    }
    found
}

/// Any file or directory named like the marker, anywhere under `root`.
fn markers_under(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.file_name().is_some_and(|n| n == MARKER) {
                found.push(path.clone());
            }
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found
}

#[tokio::test]
async fn every_input_class_in_every_place_boots_as_inert_data() {
    for (class, payload) in payloads() {
        for place in PLACES {
            let launch = launch_with(place, &payload);
            let sandbox = Sandbox::new();
            let files_dir = sandbox.files_dir();
            let script = sandbox.script(&launch).unwrap();
            assert!(
                user_data::only_encoded_data(&script),
                "{class} in {place:?}"
            );
            let output = sandbox.boot(&script).await;
            let context = format!(
                "{class} in {place:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            assert!(output.status.success(), "{context}");
            assert_eq!(
                markers_under(sandbox.dir.path()),
                Vec::<PathBuf>::new(),
                "{context}"
            );

            // The files, byte for byte, and nothing else.
            let expected: BTreeMap<Vec<u8>, Vec<u8>> = launch
                .files
                .iter()
                .map(|(p, c)| (p.as_bytes().to_vec(), c.clone()))
                .collect();
            assert_eq!(files_under(Path::new(&files_dir)), expected, "{context}");

            // Every variable the launch hands the agent, byte for byte.
            let seen = sandbox.agent_env();
            for (name, value) in launch.environment(&files_dir) {
                assert_eq!(
                    seen.get(name.as_bytes()).map(Vec::as_slice),
                    Some(value.as_bytes()),
                    "{context}: variable {name:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn nul_round_trips_in_file_contents_and_is_refused_where_it_cannot() {
    let payload = format!("a\0$(touch {MARKER})\0");
    for place in PLACES {
        let launch = launch_with(place, &payload);
        let sandbox = Sandbox::new();
        let files_dir = sandbox.files_dir();
        match (place, sandbox.script(&launch)) {
            (Place::FileContent, Ok(script)) => {
                let output = sandbox.boot(&script).await;
                assert!(output.status.success());
                assert_eq!(
                    std::fs::read(Path::new(&files_dir).join("f")).unwrap(),
                    payload.as_bytes()
                );
                assert!(markers_under(sandbox.dir.path()).is_empty());
            }
            (Place::FileContent, Err(err)) => panic!("NUL in contents refused: {err}"),
            (_, Ok(_)) => panic!("NUL in {place:?} accepted: it would be cut"),
            (_, Err(err)) => {
                assert!(matches!(err, BackendError::Rejected(_)), "{err}");
                // A refusal never shows a value (names and paths it may).
                if matches!(place, Place::SecretValue | Place::EnvValue) {
                    assert!(!err.to_string().contains(MARKER), "{place:?}: {err}");
                }
            }
        }
    }
}
