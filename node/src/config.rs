//! Node configuration: one struct, defaults, `BX3_*` environment variables and flags (clap
//! reads both), an optional YAML file (`--config FILE`), then `validate()` turns it into the
//! `Config` the node runs with.
//!
//! Precedence, highest first: a flag, its `BX3_*` variable, the config file, the built-in
//! default. The config file is not a second list of options: its keys *are* the long flags of
//! `bx3-node run` (`max-executors: 4`, or `max_executors: 4`), found by looking at the clap
//! command itself ([`apply_file`]), so a flag added to [`RunArgs`] is a config key the moment it
//! exists, and a key that is not a flag is refused, naming it.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{ArgAction, Args};
use libp2p::Multiaddr;

/// Defaults kept from the original system: 128 MB per executor, 512 MB of RAM left free.
pub const DEFAULT_RAM_PER_EXECUTOR_MB: u64 = 128;
pub const DEFAULT_MIN_FREE_RAM_MB: u64 = 512;
pub const DEFAULT_API: &str = "127.0.0.1:7420";

/// Flags of `bx3-node run` (also accepted by a bare `bx3-node`).
#[derive(Debug, Clone, Args, Default)]
pub struct RunArgs {
    /// Where the node keeps its identity, database, modules and compiled-module cache
    /// [default: the platform data dir, e.g. ~/.local/share/bx3].
    #[arg(long, env = "BX3_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Address of the HTTP API (port 0 picks a free port; the URL is written to
    /// <data-dir>/api.addr). An `http://` prefix is accepted.
    #[arg(long, env = "BX3_API", value_name = "ADDR", default_value = DEFAULT_API)]
    pub api: String,

    /// libp2p listen address (repeatable) [default: /ip4/0.0.0.0/tcp/0].
    #[arg(
        long,
        env = "BX3_LISTEN",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,

    /// Static peer to dial and keep redialling (repeatable), with or without /p2p/<id>.
    #[arg(
        long,
        env = "BX3_PEER",
        value_name = "MULTIADDR",
        value_delimiter = ','
    )]
    pub peer: Vec<String>,

    /// Do not use mDNS discovery (use --peer instead).
    #[arg(long, env = "BX3_NO_MDNS")]
    pub no_mdns: bool,

    /// Private mesh: only nodes holding this key (a swarm.key file, see `bx3-node keygen`)
    /// can connect [default: an open mesh].
    #[arg(long, env = "BX3_MESH_KEY", value_name = "FILE")]
    pub mesh_key: Option<PathBuf>,

    /// RAM reserved for one executor, MB; also the default per-task memory limit.
    #[arg(long, env = "BX3_RAM_PER_EXECUTOR", value_name = "MB", default_value_t = DEFAULT_RAM_PER_EXECUTOR_MB)]
    pub ram_per_executor: u64,

    /// RAM left free for everything else on the device, MB.
    #[arg(long, env = "BX3_MIN_FREE_RAM", value_name = "MB", default_value_t = DEFAULT_MIN_FREE_RAM_MB)]
    pub min_free_ram: u64,

    /// Upper bound on the number of executors, whatever the RAM allows.
    #[arg(long, env = "BX3_MAX_EXECUTORS", value_name = "N")]
    pub max_executors: Option<usize>,

    /// Testing only: serve /v1/debug/* on the API (cut this node off from a peer and back, as
    /// `testnet.sh partition` does). Anyone who can reach the API can then isolate the node.
    #[arg(long, env = "BX3_DEBUG_API")]
    pub debug_api: bool,

    /// Require `Authorization: Bearer <token>` on every API request, the token read from
    /// this file (surrounding whitespace ignored). The CLI sends it with --api-token-file or
    /// BX3_API_TOKEN. Required for an --api address that is not loopback.
    #[arg(long, env = "BX3_API_TOKEN_FILE", value_name = "FILE")]
    pub api_token_file: Option<PathBuf>,

    /// The API token itself (prefer the BX3_API_TOKEN variable or --api-token-file: a flag
    /// is visible to every user of the machine in the process list).
    #[arg(
        long,
        env = "BX3_API_TOKEN",
        value_name = "TOKEN",
        hide = true,
        hide_env_values = true
    )]
    pub api_token: Option<String>,

    /// Serve the API on a non-loopback --api address without a token: anyone who can reach
    /// that address can then submit and run DAGs on the mesh.
    #[arg(long, env = "BX3_API_INSECURE")]
    pub api_insecure: bool,

    /// Test hook: read "available RAM" (MB) from this file instead of the OS.
    #[arg(long, hide = true, value_name = "PATH")]
    pub ram_file: Option<PathBuf>,

    /// Porting hook: start executor processes through this command (split on spaces), e.g.
    /// "qemu-aarch64-static -L /usr/aarch64-linux-gnu" for a node that itself runs under
    /// qemu-user where no binfmt handler is registered (scripts/arm-smoke.sh).
    #[arg(long, hide = true, value_name = "CMD")]
    pub executor_wrapper: Option<String>,
}

/// The validated configuration a node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
    /// Key file of a private mesh (read when the node starts).
    pub mesh_key: Option<PathBuf>,
    pub ram_per_executor_mb: u64,
    pub min_free_ram_mb: u64,
    pub max_executors: Option<usize>,
    pub ram_file: Option<PathBuf>,
    /// Executor processes are started through this command (empty: directly).
    pub executor_wrapper: Vec<String>,
    /// Serve the debug endpoints (`--debug-api`).
    pub debug_api: bool,
    /// Bearer token every API request must carry (`None`: no token).
    pub api_token: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--api {value:?} is not an address like 127.0.0.1:7420: {reason}")]
    Api { value: String, reason: String },
    #[error("--{flag} {value:?} is not a multiaddr like /ip4/127.0.0.1/tcp/4001: {reason}")]
    Multiaddr {
        flag: &'static str,
        value: String,
        reason: String,
    },
    #[error(
        "--ram-per-executor must be at least 1 MB and at most 4096 MB (wasm32 memory), got {0}"
    )]
    RamPerExecutor(u64),
    #[error("--max-executors must be at least 1")]
    MaxExecutors,
    #[error("no data dir given and the platform has no data directory; pass --data-dir DIR")]
    NoDataDir,
    #[error("cannot read the API token file {path}: {reason}")]
    TokenFile { path: PathBuf, reason: String },
    #[error("{0}")]
    Token(#[from] crate::api::security::TokenError),
    #[error(
        "--api {0} is reachable from other machines, and without a token anyone who can reach \
         it can run code on this mesh; set BX3_API_TOKEN or --api-token-file FILE (or pass \
         --api-insecure if that is really what you want)"
    )]
    InsecureApi(SocketAddr),
}

/// The platform data dir (`~/.local/share/bx3` on Linux and Termux).
pub fn default_data_dir() -> Option<PathBuf> {
    dirs::data_dir().map(|d| d.join("bx3"))
}

/// Accepts `host:port` or `http://host:port[/]`, so one `BX3_API` value serves the node and
/// its clients.
pub fn parse_api_addr(value: &str) -> Result<SocketAddr, ConfigError> {
    let trimmed = value
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let trimmed = trimmed.replace("localhost", "127.0.0.1");
    trimmed
        .parse()
        .map_err(|e: std::net::AddrParseError| ConfigError::Api {
            value: value.to_string(),
            reason: e.to_string(),
        })
}

fn parse_addrs(flag: &'static str, values: &[String]) -> Result<Vec<Multiaddr>, ConfigError> {
    values
        .iter()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|e: libp2p::multiaddr::Error| ConfigError::Multiaddr {
                    flag,
                    value: v.clone(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

impl RunArgs {
    pub fn validate(&self) -> Result<Config, ConfigError> {
        let data_dir = match &self.data_dir {
            Some(d) => d.clone(),
            None => default_data_dir().ok_or(ConfigError::NoDataDir)?,
        };
        if self.ram_per_executor == 0 || self.ram_per_executor > 4096 {
            return Err(ConfigError::RamPerExecutor(self.ram_per_executor));
        }
        if self.max_executors == Some(0) {
            return Err(ConfigError::MaxExecutors);
        }
        let mut listen = parse_addrs("listen", &self.listen)?;
        if listen.is_empty() {
            listen.push(
                "/ip4/0.0.0.0/tcp/0"
                    .parse()
                    .expect("constant multiaddr is valid"),
            );
        }
        let api = parse_api_addr(&self.api)?;
        let api_token = match (&self.api_token_file, &self.api_token) {
            (Some(path), _) => {
                let raw = std::fs::read_to_string(path).map_err(|e| ConfigError::TokenFile {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                Some(crate::api::security::parse_token(&raw)?)
            }
            (None, Some(raw)) => Some(crate::api::security::parse_token(raw)?),
            (None, None) => None,
        };
        if !api.ip().is_loopback() && api_token.is_none() && !self.api_insecure {
            return Err(ConfigError::InsecureApi(api));
        }
        Ok(Config {
            data_dir,
            api,
            listen,
            peers: parse_addrs("peer", &self.peer)?,
            mdns: !self.no_mdns,
            mesh_key: self.mesh_key.clone().filter(|p| !p.as_os_str().is_empty()),
            ram_per_executor_mb: self.ram_per_executor,
            min_free_ram_mb: self.min_free_ram,
            max_executors: self.max_executors,
            ram_file: self.ram_file.clone(),
            executor_wrapper: self
                .executor_wrapper
                .as_deref()
                .map(|w| w.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            debug_api: self.debug_api,
            api_token,
        })
    }
}

/// Why a config file was refused. Each message names the file and, where there is one, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path} is not valid YAML: {error}")]
    Yaml { path: PathBuf, error: String },
    #[error("config file {path} must be a mapping of flag names to values (`max-executors: 4`)")]
    NotAMapping { path: PathBuf },
    #[error("config file {path}: {key}: {reason}")]
    Key {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

/// Longest config file read (it is a handful of keys; this keeps a wrong path such as a disk
/// image from being read whole).
const MAX_CONFIG_BYTES: u64 = 1024 * 1024;

/// The subcommand whose flags are the config file's keys.
const NODE_COMMAND: &str = "run";

/// Arguments that are never config keys: clap's own, and `config` itself (files do not nest).
fn is_config_key(arg: &clap::Arg) -> bool {
    !arg.is_hide_set()
        && !matches!(arg.get_id().as_str(), "help" | "version" | "config")
        && arg.get_long().is_some()
}

/// The config keys: the long flags of `bx3-node run`, in the order `--help` shows them.
pub fn config_keys(cmd: &clap::Command) -> Vec<&clap::Arg> {
    cmd.find_subcommand(NODE_COMMAND)
        .map(|run| run.get_arguments().filter(|a| is_config_key(a)).collect())
        .unwrap_or_default()
}

/// Reads a YAML config file and makes its values the defaults of `cmd`'s arguments.
///
/// Every key must be a long flag of `bx3-node run` (`-` and `_` are the same); its value is
/// checked with the flag's own parser. The value becomes the default of that flag on `run`
/// and on a bare `bx3-node`, and of every other subcommand's flag that reads the same `BX3_*`
/// variable (so `bx3-node --config node.yaml status` finds the node through its `api` and
/// `data-dir`). Defaults are what flags and variables override, which gives the precedence
/// flag > variable > file > built-in default without touching the process environment.
pub fn apply_file(cmd: clap::Command, path: &Path) -> Result<clap::Command, ConfigFileError> {
    let text = read_bounded(path).map_err(|error| ConfigFileError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    apply_yaml(cmd, path, &text)
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    let file = std::fs::File::open(path)?;
    file.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} KiB; is this a config file?",
            MAX_CONFIG_BYTES / 1024
        )));
    }
    Ok(text)
}

/// [`apply_file`] on text already read (`path` is for messages).
pub fn apply_yaml(
    mut cmd: clap::Command,
    path: &Path,
    text: &str,
) -> Result<clap::Command, ConfigFileError> {
    let value: serde_yaml::Value =
        serde_yaml::from_str(text).map_err(|e| ConfigFileError::Yaml {
            path: path.to_path_buf(),
            error: e.to_string(),
        })?;
    let map = match value {
        serde_yaml::Value::Mapping(m) => m,
        // An empty file (or one of comments only) sets nothing.
        serde_yaml::Value::Null => return Ok(cmd),
        _ => {
            return Err(ConfigFileError::NotAMapping {
                path: path.to_path_buf(),
            })
        }
    };
    let key_error = |key: &str, reason: String| ConfigFileError::Key {
        path: path.to_path_buf(),
        key: key.to_string(),
        reason,
    };
    // (arg id, env var, values) for each key, checked before anything is applied.
    let mut settings: Vec<(clap::Id, Option<OsString>, Vec<String>)> = Vec::new();
    {
        let keys = config_keys(&cmd);
        for (key, value) in &map {
            let key = match key {
                serde_yaml::Value::String(k) => k.as_str(),
                other => {
                    let shown = serde_yaml::to_string(other).unwrap_or_default();
                    return Err(key_error(
                        shown.trim(),
                        "keys must be flag names (text)".into(),
                    ));
                }
            };
            let long = key.replace('_', "-");
            let Some(arg) = keys.iter().find(|a| a.get_long() == Some(long.as_str())) else {
                return Err(key_error(key, unknown_key_reason(&long, &keys)));
            };
            let values = values_of(arg, value).map_err(|reason| key_error(key, reason))?;
            check_values(arg, &values).map_err(|reason| key_error(key, reason))?;
            let env = arg.get_env().map(ToOwned::to_owned);
            settings.push((arg.get_id().clone(), env, values));
        }
    }
    for (id, env, values) in settings {
        let set = |a: clap::Arg| a.default_values(values.iter().cloned());
        if cmd.get_arguments().any(|a| a.get_id() == &id) {
            cmd = cmd.mut_arg(id.clone(), set);
        }
        cmd = cmd.mut_subcommand(NODE_COMMAND, |run| run.mut_arg(id.clone(), set));
        // Other subcommands share a key when their flag reads the same variable.
        let Some(env) = env else { continue };
        let names: Vec<String> = cmd
            .get_subcommands()
            .filter(|sc| sc.get_name() != NODE_COMMAND)
            .filter(|sc| {
                sc.get_arguments()
                    .any(|a| a.get_env() == Some(env.as_os_str()))
            })
            .map(|sc| sc.get_name().to_string())
            .collect();
        for name in names {
            cmd = cmd.mut_subcommand(name, |sc| {
                let ids: Vec<clap::Id> = sc
                    .get_arguments()
                    .filter(|a| a.get_env() == Some(env.as_os_str()))
                    .map(|a| a.get_id().clone())
                    .collect();
                ids.into_iter().fold(sc, |sc, id| sc.mut_arg(id, set))
            });
        }
    }
    Ok(cmd)
}

fn unknown_key_reason(long: &str, keys: &[&clap::Arg]) -> String {
    let names: Vec<&str> = keys.iter().filter_map(|a| a.get_long()).collect();
    let close = names
        .iter()
        .map(|n| (strsim_distance(long, n), *n))
        .filter(|(d, _)| *d <= 3)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| format!(" (did you mean {n:?}?)"))
        .unwrap_or_default();
    format!(
        "unknown key{close}; the keys are the long flags of `bx3-node run`: {}",
        names.join(", ")
    )
}

/// Levenshtein distance (the key lists are a dozen short names: no crate needed).
fn strsim_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The YAML value as the strings clap would get on the command line.
fn values_of(arg: &clap::Arg, value: &serde_yaml::Value) -> Result<Vec<String>, String> {
    use serde_yaml::Value;
    let flag = matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse);
    let many = matches!(arg.get_action(), ArgAction::Append);
    let scalar = |v: &Value| -> Result<String, String> {
        match v {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            Value::Null => Err("has no value".into()),
            _ => Err("must be a single value, not a list or a mapping".into()),
        }
    };
    match value {
        Value::Bool(_) if flag => scalar(value).map(|v| vec![v]),
        _ if flag => Err("is a switch: write true or false".into()),
        Value::Sequence(items) if many => items.iter().map(scalar).collect(),
        Value::Sequence(_) => Err("takes one value, not a list".into()),
        v => scalar(v).map(|v| vec![v]),
    }
}

/// Runs the flag's own parser on the values, as if they were typed after it.
fn check_values(arg: &clap::Arg, values: &[String]) -> Result<(), String> {
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return Ok(()); // a YAML bool, already checked
    }
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    let probe = clap::Command::new("config")
        .no_binary_name(true)
        .arg(arg.clone().required(false).env(None::<&str>));
    let argv = values.iter().map(|v| format!("--{long}={v}"));
    match probe.try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => {
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid value");
            Err(first.trim_start_matches("error: ").to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> RunArgs {
        RunArgs {
            data_dir: Some(PathBuf::from("/tmp/x")),
            api: DEFAULT_API.into(),
            ram_per_executor: 128,
            min_free_ram: 512,
            ..RunArgs::default()
        }
    }

    #[test]
    fn api_accepts_url_form() {
        assert_eq!(
            parse_api_addr("http://127.0.0.1:41234/")
                .expect("valid")
                .port(),
            41234
        );
        assert_eq!(parse_api_addr("localhost:0").expect("valid").port(), 0);
        assert!(parse_api_addr("nonsense").is_err());
    }

    #[test]
    fn validate_rejects_bad_values_with_the_flag_name() {
        let mut a = args();
        a.peer = vec!["not-a-multiaddr".into()];
        let err = a.validate().expect_err("bad peer").to_string();
        assert!(err.contains("--peer"), "{err}");

        let mut a = args();
        a.ram_per_executor = 0;
        assert!(a.validate().is_err());

        let mut a = args();
        a.max_executors = Some(0);
        assert!(a.validate().is_err());

        let c = args().validate().expect("defaults are valid");
        assert!(c.mdns);
        assert_eq!(c.listen.len(), 1);
    }

    #[test]
    fn a_reachable_api_needs_a_token_or_an_explicit_insecure() {
        let mut a = args();
        a.api = "0.0.0.0:7420".into();
        let err = a.validate().expect_err("open API").to_string();
        assert!(
            err.contains("BX3_API_TOKEN") && err.contains("--api-insecure"),
            "{err}"
        );
        a.api_insecure = true;
        assert!(a.validate().is_ok());

        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "0123456789abcdef0123\n").expect("write");
        let mut a = args();
        a.api = "192.168.1.5:7420".into();
        a.api_token_file = Some(file.clone());
        assert_eq!(
            a.validate().expect("token").api_token.as_deref(),
            Some("0123456789abcdef0123")
        );
        std::fs::write(&file, "short").expect("write");
        assert!(a.validate().is_err(), "a short token is refused");
        a.api_token_file = Some(dir.path().join("missing"));
        let err = a.validate().expect_err("missing").to_string();
        assert!(err.contains("cannot read the API token file"), "{err}");
    }
}
