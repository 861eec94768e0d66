//! Node configuration: one struct, defaults, `BX3_*` environment variables and flags (clap
//! reads both), then `validate()` turns it into the `Config` the node runs with.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
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

    /// RAM reserved for one executor, MB; also the default per-task memory limit.
    #[arg(long, env = "BX3_RAM_PER_EXECUTOR", value_name = "MB", default_value_t = DEFAULT_RAM_PER_EXECUTOR_MB)]
    pub ram_per_executor: u64,

    /// RAM left free for everything else on the device, MB.
    #[arg(long, env = "BX3_MIN_FREE_RAM", value_name = "MB", default_value_t = DEFAULT_MIN_FREE_RAM_MB)]
    pub min_free_ram: u64,

    /// Upper bound on the number of executors, whatever the RAM allows.
    #[arg(long, env = "BX3_MAX_EXECUTORS", value_name = "N")]
    pub max_executors: Option<usize>,

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
}

/// The validated configuration a node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub listen: Vec<Multiaddr>,
    pub peers: Vec<Multiaddr>,
    pub mdns: bool,
    pub ram_per_executor_mb: u64,
    pub min_free_ram_mb: u64,
    pub max_executors: Option<usize>,
    pub ram_file: Option<PathBuf>,
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
            ram_per_executor_mb: self.ram_per_executor,
            min_free_ram_mb: self.min_free_ram,
            max_executors: self.max_executors,
            ram_file: self.ram_file.clone(),
            api_token,
        })
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
