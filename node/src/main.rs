//! `bx3-node`: run a node (the default) or talk to one.
//!
//! The commands come in three kinds, each its own enum, so every `match` is exhaustive:
//! [`Command::Run`] (the node itself), [`ClientCommand`] (talk to a running node over its HTTP
//! API) and [`InternalCommand`] (processes the node starts itself; hidden).
//!
//! `--config FILE` (or `BX3_CONFIG`) gives defaults for the flags from a YAML file whose keys
//! are the long flags of `run` (see `config::apply_file`).
//!
//! Exit codes: 0 success; 1 a DAG failed or was cancelled (or could not be cancelled because
//! it had finished); 2 invalid input, usage error, or an unreachable node; 3 the node itself
//! failed to start or stopped on an error.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bx3_node::client::{self, Client, ClientError};
use bx3_node::config::{self, RunArgs};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(
    name = "bx3-node",
    version,
    about = "Zero-config peer-to-peer mesh that runs DAGs of WebAssembly tasks",
    after_help = "With no subcommand, runs a node (same as `bx3-node run`)."
)]
struct Cli {
    /// YAML file of defaults for the flags: its keys are the long flags of `run`
    /// (`max-executors: 4`); flags and BX3_* variables override it.
    #[arg(long, global = true, env = "BX3_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node (the default).
    Run(RunArgs),
    #[command(flatten)]
    Client(ClientCommand),
    #[command(flatten)]
    Tool(ToolCommand),
    #[command(flatten)]
    Internal(InternalCommand),
}

/// Commands that talk to a running node through its HTTP API.
#[derive(Subcommand, Debug)]
enum ClientCommand {
    /// Submit a DAG file (`-`: standard input); prints its id once it is durably accepted.
    Submit(SubmitArgs),
    /// Show one DAG and its tasks.
    Dag(DagArgs),
    /// List DAGs, newest first.
    Dags(ListArgs),
    /// Cancel a DAG: running tasks are abandoned, pending ones cancelled.
    Cancel(CancelArgs),
    /// Show the node, the controller, executors and peers.
    Status(StatusArgs),
    /// Print a task's stderr, every attempt under its own header.
    Logs(LogsArgs),
    /// Testing only: cut a node started with --debug-api off from a peer (or --unblock).
    #[command(name = "debug-block", hide = true)]
    DebugBlock(DebugBlockArgs),
}

#[derive(Args, Debug)]
struct DebugBlockArgs {
    /// The peer id to cut this node off from.
    peer: String,
    /// Connect them again instead.
    #[arg(long)]
    unblock: bool,
    #[command(flatten)]
    target: Target,
}

/// Commands that work on this machine alone, no node needed.
#[derive(Subcommand, Debug)]
enum ToolCommand {
    /// Run a task module here, exactly as a node's executor would, and print its output.
    Exec(ExecArgs),
    /// Check that modules fit the task ABI (what a node would refuse, and why).
    Check(CheckArgs),
    /// Print this binary's version (wasm engine, target, protocols).
    Version(VersionArgs),
    /// Write a new mesh key (for --mesh-key) to FILE, mode 0600; never overwrites.
    Keygen(KeygenArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(after_help = "\
Install, for example:
  bash: bx3-node completions bash > ~/.local/share/bash-completion/completions/bx3-node
  zsh:  bx3-node completions zsh > ~/.zfunc/_bx3-node   (with fpath+=~/.zfunc in ~/.zshrc)
  fish: bx3-node completions fish > ~/.config/fish/completions/bx3-node.fish")]
    Completions(CompletionsArgs),
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// Where to write the key (e.g. swarm.key); must not exist yet.
    file: PathBuf,
}

#[derive(Args, Debug)]
struct LogsArgs {
    /// The DAG's id, or a unique prefix of it (at least 4 hex digits).
    id: String,
    /// The task's id, as written in the DAG file.
    task: String,
    /// Print the task as JSON (its attempts, with their stderr, errors and times).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct VersionArgs {
    /// Print the version as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CompletionsArgs {
    /// The shell to complete for.
    shell: clap_complete::Shell,
}

/// Processes the node starts itself.
#[derive(Subcommand, Debug)]
enum InternalCommand {
    /// Internal: an executor process (started by the node).
    #[command(name = "__executor", hide = true)]
    Executor(ExecutorArgs),
    /// Internal: a module compile process (started by the node).
    #[command(name = "__compile", hide = true)]
    Compile(CompileArgs),
}

/// How a client finds its node.
#[derive(Args, Clone, Debug)]
struct Target {
    /// The node's API URL [default: the URL in <data-dir>/api.addr, else
    /// http://127.0.0.1:7420].
    #[arg(long, env = "BX3_API", value_name = "URL")]
    api: Option<String>,
    /// Data dir of the node to talk to (its api.addr names the URL).
    #[arg(long, env = "BX3_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File holding the node's API token [default: the BX3_API_TOKEN variable].
    #[arg(long, env = "BX3_API_TOKEN_FILE", value_name = "FILE")]
    api_token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct SubmitArgs {
    /// DAG file (YAML); `-` reads it from standard input (modules are then looked up from
    /// the current directory).
    file: PathBuf,
    /// Wait for the DAG to finish, showing progress; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    wait: bool,
    /// Print JSON (the id, or with --wait the final DAG).
    #[arg(long)]
    json: bool,
    /// Another folder to look for modules in.
    #[arg(long, env = "BX3_MODULES", value_name = "DIR")]
    modules: Option<PathBuf>,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct DagArgs {
    /// The DAG's id (as `submit` and `dags` print it), or a unique prefix of it (at least 4
    /// hex digits, like a short git hash).
    id: String,
    /// Print the DAG as JSON (every task with its state, output and error).
    #[arg(long)]
    json: bool,
    /// Wait for the DAG to finish first; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct ListArgs {
    /// Print the list as JSON.
    #[arg(long)]
    json: bool,
    /// At most this many DAGs.
    #[arg(long, default_value_t = 100, value_name = "N")]
    limit: usize,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct CancelArgs {
    /// The DAG's id, or a unique prefix of it (at least 4 hex digits).
    id: String,
    /// Print the cancelled DAG as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Print the status as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Exit codes: 0 the task succeeded; 1 it failed (non-zero exit, trap, timeout, memory or output \
limit); 2 the module or an option is refused; 3 no executor could be started.
With --json, stdout holds one JSON object: state, output, error, ended, exit_status, stderr, \
prepare_ms, run_ms, wall_ms.")]
struct ExecArgs {
    /// The module (.wasm); argv[0] is its file name, as `module:` names it in a DAG.
    module: PathBuf,
    /// The task's inputs (argv[1..]); everything after the module is an input, `-5` too.
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "INPUTS"
    )]
    inputs: Vec<String>,
    /// The task's stdin, as the DAG's `stdin:` field [default: empty].
    #[arg(long, value_name = "TEXT", conflicts_with = "stdin_file")]
    stdin: Option<String>,
    /// Read the task's stdin from this file (`-`: this command's own stdin).
    #[arg(long, value_name = "FILE")]
    stdin_file: Option<PathBuf>,
    /// An environment variable of the task, as the DAG's `env:` (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE", value_parser = parse_env_pair)]
    env: Vec<(String, String)>,
    /// The task's memory limit in MB, as the DAG's `memory:`.
    #[arg(long, value_name = "MB", default_value_t = config::DEFAULT_RAM_PER_EXECUTOR_MB,
          value_parser = clap::value_parser!(u64).range(1..=bx3_protocol::dag::MAX_MEMORY_MB))]
    memory: u64,
    /// The task's timeout, as the DAG's `timeout:` ("30s", "2m", "500ms", or seconds).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_timeout)]
    timeout: Duration,
    /// Print the result as JSON on stdout (also when the task fails).
    #[arg(long)]
    json: bool,
    /// Keep the module and its compiled code here between runs [default: the platform cache
    /// dir, e.g. ~/.cache/bx3/exec].
    #[arg(long, env = "BX3_EXEC_CACHE", value_name = "DIR")]
    cache_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(after_help = "\
Errors are what a node would refuse at upload; warnings are what the module may trip over when it \
runs (WASI calls bx3 answers with ENOSYS, an initial memory above the executor size). Exit codes: \
0 every module passes (with --strict: and has no warning); 2 otherwise.")]
struct CheckArgs {
    /// Module files (.wasm).
    #[arg(required = true, value_name = "MODULE")]
    modules: Vec<PathBuf>,
    /// Count warnings as errors (CI uses this for the committed modules).
    #[arg(long)]
    strict: bool,
    /// Executor size (MB) to compare each module's initial memory with.
    #[arg(long, value_name = "MB", default_value_t = config::DEFAULT_RAM_PER_EXECUTOR_MB)]
    memory: u64,
    /// Print one JSON object per module (a JSON array) instead of lines.
    #[arg(long)]
    json: bool,
}

fn parse_env_pair(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{s:?} is not KEY=VALUE")),
    }
}

fn parse_timeout(s: &str) -> Result<Duration, String> {
    let t = bx3_protocol::dag::Timeout::parse(s).map_err(|e| e.to_string())?;
    let ms = t.as_millis();
    if ms == 0 || ms > bx3_protocol::dag::MAX_TIMEOUT_MS {
        return Err(format!("{s:?} is not between 1 ms and 24 h"));
    }
    Ok(t.duration())
}

#[derive(Args, Debug)]
struct ExecutorArgs {
    /// The node's data dir (modules and the compiled-module cache).
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Args, Debug)]
struct CompileArgs {
    /// Where the compiled artifact goes.
    #[arg(long)]
    cache_dir: PathBuf,
    /// The module's hash (its bytes come on standard input).
    #[arg(long)]
    hash: String,
    /// CPU seconds the compile may use.
    #[arg(long)]
    cpu_secs: u64,
    /// Address space (bytes) the compile may use.
    #[arg(long)]
    address_space: u64,
}

/// The clap command with the settings derive cannot express.
fn cli_command() -> clap::Command {
    // Values of BX3_* variables are not printed in --help (BX3_API_TOKEN is a secret, and an
    // empty variable shows up as a confusing `[env: BX3_API=]`).
    fn hide_env_values(cmd: clap::Command) -> clap::Command {
        let cmd = cmd.mut_args(|a| a.hide_env_values(true));
        let names: Vec<String> = cmd
            .get_subcommands()
            .map(|s| s.get_name().to_string())
            .collect();
        names
            .into_iter()
            .fold(cmd, |cmd, name| cmd.mut_subcommand(name, hide_env_values))
    }
    hide_env_values(Cli::command())
}

/// Parses the command line. When a config file is given (`--config FILE` anywhere before a
/// `--`, or `BX3_CONFIG`), its values become the defaults of the flags first, so `--help`
/// shows them and flags and variables still override them. Exits on usage errors (code 2).
fn parse_cli() -> Cli {
    let argv: Vec<OsString> = std::env::args_os().collect();
    let mut cmd = cli_command();
    if let Some(path) = config_path(&argv) {
        cmd = match config::apply_file(cmd, &path) {
            Ok(cmd) => cmd,
            Err(e) => {
                eprintln!("bx3-node: {e}");
                std::process::exit(2);
            }
        };
    }
    let json = argv.iter().any(|a| a == "--json");
    let matches = cmd
        .clone()
        .try_get_matches_from(&argv)
        .unwrap_or_else(|e| usage_exit(e, json));
    if let Some(e) = root_flags_with_subcommand(&cmd, &matches) {
        usage_exit(e, json);
    }
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| usage_exit(e, json))
}

/// clap's exit for help, version and usage errors; with `--json`, a usage error is a JSON
/// document on stdout like any other error (exit 2).
fn usage_exit(e: clap::Error, json: bool) -> ! {
    use clap::error::ErrorKind;
    let informational = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if json && !informational {
        let rendered = e.render().to_string();
        let first = rendered.lines().next().unwrap_or("usage error");
        print_json_error(first.trim_start_matches("error: "), "usage", 2);
        std::process::exit(2);
    }
    e.exit()
}

/// `--config FILE` / `--config=FILE` (the last one wins, as clap would), else `BX3_CONFIG`.
/// Found before clap parses, because the file changes what clap parses with; clap then sees
/// `--config` again as an ordinary (global) flag and checks it.
fn config_path(argv: &[OsString]) -> Option<PathBuf> {
    let mut found = None;
    let mut args = argv.iter().skip(1);
    while let Some(arg) = args.next() {
        let Some(s) = arg.to_str() else { continue };
        if s == "--" {
            break;
        } else if s == "--config" {
            found = args.next().map(PathBuf::from);
        } else if let Some(v) = s.strip_prefix("--config=") {
            found = Some(PathBuf::from(v));
        }
    }
    found.or_else(|| {
        std::env::var_os("BX3_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

/// The node's flags are accepted before any subcommand only for a bare `bx3-node` (which is
/// `run`): `bx3-node --max-executors 2 status` would silently ignore the flag. (clap's
/// `args_conflicts_with_subcommands` would say so too, but it also refuses the global
/// `--config` before a subcommand.)
fn root_flags_with_subcommand(cmd: &clap::Command, m: &clap::ArgMatches) -> Option<clap::Error> {
    let (sub, _) = m.subcommand()?;
    let given = cmd
        .get_arguments()
        .filter(|a| !a.is_global_set())
        .find(|a| {
            m.value_source(a.get_id().as_str()) == Some(clap::parser::ValueSource::CommandLine)
        })?;
    let flag = a_flag(given);
    let mut cmd = cmd.clone();
    Some(cmd.error(
        clap::error::ErrorKind::ArgumentConflict,
        format!("{flag} is a flag of `run`; write it after the subcommand (`bx3-node {sub} {flag} ...`) if `{sub}` has it"),
    ))
}

fn a_flag(arg: &clap::Arg) -> String {
    arg.get_long()
        .map(|l| format!("--{l}"))
        .unwrap_or_else(|| arg.get_id().to_string())
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn keygen(file: &std::path::Path) -> ExitCode {
    match bx3_node::net::psk::generate_file(file) {
        Ok(key) => {
            eprintln!(
                "wrote a new mesh key to {} (fingerprint {}); give it to every node with --mesh-key {}",
                file.display(),
                key.fingerprint(),
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bx3-node: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = parse_cli();
    match cli.command {
        None => run_node(cli.run),
        Some(Command::Run(args)) => run_node(args),
        Some(Command::Client(cmd)) => run_client(cmd),
        Some(Command::Tool(ToolCommand::Exec(args))) => run_exec(args),
        Some(Command::Tool(ToolCommand::Check(args))) => run_check(&args),
        Some(Command::Tool(ToolCommand::Keygen(args))) => keygen(&args.file),
        Some(Command::Tool(ToolCommand::Version(args))) => {
            print_version(args.json);
            ExitCode::SUCCESS
        }
        Some(Command::Tool(ToolCommand::Completions(args))) => {
            clap_complete::generate(
                args.shell,
                &mut cli_command(),
                "bx3-node",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
        Some(Command::Internal(InternalCommand::Executor(args))) => {
            init_tracing("warn");
            match bx3_node::executor::child::serve(&args.data_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bx3-node executor: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Some(Command::Internal(InternalCommand::Compile(a))) => {
            let code = bx3_node::executor::compile::serve_child(
                &a.cache_dir,
                &a.hash,
                a.cpu_secs,
                a.address_space,
            );
            ExitCode::from(u8::try_from(code).unwrap_or(3))
        }
    }
}

fn run_node(args: RunArgs) -> ExitCode {
    init_tracing("info");
    let config = match args.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bx3-node: {e}");
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| {
            rt.block_on(async {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                bx3_node::node::run(config, shutdown)
                    .await
                    .map_err(anyhow::Error::from)
            })
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bx3-node: {}", error_chain(&e));
            ExitCode::from(3)
        }
    }
}

/// The whole cause chain (`{:#}`), skipping a cause whose text the message already holds:
/// errors that print their source in their own message would otherwise say it twice.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

fn run_client(cmd: ClientCommand) -> ExitCode {
    init_tracing("warn");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bx3-node: cannot start the async runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let json = cmd.json();
    match rt.block_on(client_command(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        // The DAG itself was printed (state failed or cancelled): that is the answer.
        Err(e @ ClientError::DagDidNotSucceed { .. }) => ExitCode::from(e.exit_code()),
        Err(e) => {
            if json {
                print_json_error(&e.to_string(), e.kind(), e.exit_code());
            } else {
                eprintln!("bx3-node: {e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// With `--json`, stdout holds exactly one JSON document, also when the command fails:
/// `{"error": "...", "kind": "...", "exit_code": N}` (the exit code is the process's too).
fn print_json_error(message: &str, kind: &str, exit_code: u8) {
    print_json(&serde_json::json!({
        "error": message,
        "kind": kind,
        "exit_code": exit_code,
    }));
}

fn run_exec(args: ExecArgs) -> ExitCode {
    use bx3_node::executor::local;
    init_tracing("warn");
    let fail = |code: u8, message: String| {
        if args.json {
            print_json_error(&message, if code == 2 { "input" } else { "local" }, code);
        } else {
            eprintln!("bx3-node: {message}");
        }
        ExitCode::from(code)
    };
    let wasm = match read_module(&args.module) {
        Ok(b) => b,
        Err(e) => return fail(2, e),
    };
    let stdin = match (&args.stdin, &args.stdin_file) {
        (Some(text), _) => text.clone().into_bytes(),
        (None, Some(path)) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            if let Err(e) = std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf) {
                return fail(2, format!("cannot read stdin: {e}"));
            }
            buf
        }
        (None, Some(path)) => match std::fs::read(path) {
            Ok(b) => b,
            Err(e) => return fail(2, format!("cannot read {}: {e}", path.display())),
        },
        (None, None) => Vec::new(),
    };
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => return fail(3, format!("cannot find the bx3-node executable: {e}")),
    };
    let cache = match args.cache_dir.clone().or_else(local::default_cache_dir) {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("bx3-exec-{}", std::process::id())),
    };
    // Later --env values win, as later keys of a YAML map would.
    let mut env: std::collections::BTreeMap<String, String> = Default::default();
    env.extend(args.env.iter().cloned());
    let task = local::LocalTask {
        name: args
            .module
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "module.wasm".into()),
        wasm,
        inputs: args.inputs.clone(),
        env: env.into_iter().collect(),
        stdin,
        memory_mb: args.memory,
        timeout: args.timeout,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(3, format!("cannot start the async runtime: {e}")),
    };
    let result = match rt.block_on(local::exec(&exe, &cache, task)) {
        Ok(r) => r,
        Err(e) => return fail(e.exit_code(), e.to_string()),
    };
    let code = if result.succeeded() { 0 } else { 1 };
    if args.json {
        print_json(&result);
    } else {
        if let Some(stderr) = &result.stderr {
            eprint!("{stderr}");
            if !stderr.ends_with('\n') {
                eprintln!();
            }
        }
        match (&result.output, &result.error) {
            (Some(output), _) => println!("{output}"),
            (None, Some(error)) => eprintln!("bx3-node: {} failed: {error}", args.module.display()),
            (None, None) => {}
        }
    }
    ExitCode::from(code)
}

fn print_version(json: bool) {
    let version = env!("CARGO_PKG_VERSION");
    let wasmer = bx3_node::executor::runtime::WASMER_VERSION;
    let target = format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS);
    let (rpc, gossip) = (bx3_node::net::RPC_PROTOCOL, bx3_node::net::GOSSIP_TOPIC);
    if json {
        print_json(&serde_json::json!({
            "version": version,
            "wasmer": wasmer,
            "target": target,
            "rpc_protocol": rpc,
            "gossip_topic": gossip,
        }));
    } else {
        println!("bx3-node {version}");
        println!("  wasm engine  wasmer {wasmer} (cranelift)");
        println!("  target       {target}");
        println!("  protocols    {rpc}, gossip {gossip}");
    }
}

/// A module file, refused (without reading it) above the size a node accepts.
fn read_module(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let limit = bx3_node::api::MAX_MODULE_BYTES as u64;
    let file =
        std::fs::File::open(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        return Err(format!(
            "{} is larger than the {} MiB a node accepts for a module",
            path.display(),
            limit >> 20
        ));
    }
    Ok(bytes)
}

fn run_check(args: &CheckArgs) -> ExitCode {
    use bx3_node::executor::local;
    let mut reports = Vec::new();
    for path in &args.modules {
        let file = path.display().to_string();
        let report = match read_module(path) {
            Ok(wasm) => local::check(&file, &wasm, args.memory),
            Err(e) => local::CheckReport {
                file,
                size: 0,
                ok: false,
                errors: vec![e],
                warnings: Vec::new(),
                imports: Vec::new(),
                initial_memory_mb: None,
            },
        };
        reports.push(report);
    }
    let passed = |r: &local::CheckReport| r.ok && (!args.strict || r.warnings.is_empty());
    if args.json {
        print_json(&reports);
    } else {
        let width = reports.iter().map(|r| r.file.len()).max().unwrap_or(0);
        for r in &reports {
            let verdict = if passed(r) { "ok" } else { "FAILED" };
            println!(
                "{:<width$}  {verdict:<6}  {:>9} bytes  {} WASI imports{}",
                r.file,
                r.size,
                r.imports.len(),
                r.initial_memory_mb
                    .map(|m| format!(", {m} MB initial memory"))
                    .unwrap_or_default()
            );
            for e in &r.errors {
                println!("{:<width$}  error: {e}", "");
            }
            for w in &r.warnings {
                println!("{:<width$}  warning: {w}", "");
            }
        }
    }
    if reports.iter().all(passed) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("bx3-node: cannot print JSON: {e}"),
    }
}

impl ClientCommand {
    /// Whether the user asked for JSON (then errors are JSON too).
    fn json(&self) -> bool {
        match self {
            ClientCommand::Submit(a) => a.json,
            ClientCommand::Dag(a) => a.json,
            ClientCommand::Dags(a) => a.json,
            ClientCommand::Cancel(a) => a.json,
            ClientCommand::Status(a) => a.json,
            ClientCommand::Logs(a) => a.json,
            ClientCommand::DebugBlock(_) => false,
        }
    }

    fn target(&self) -> &Target {
        match self {
            ClientCommand::Submit(a) => &a.target,
            ClientCommand::Dag(a) => &a.target,
            ClientCommand::Dags(a) => &a.target,
            ClientCommand::Cancel(a) => &a.target,
            ClientCommand::Status(a) => &a.target,
            ClientCommand::Logs(a) => &a.target,
            ClientCommand::DebugBlock(a) => &a.target,
        }
    }
}

async fn client_command(cmd: ClientCommand) -> Result<(), ClientError> {
    let target = cmd.target();
    let client = Client::with_token(
        client::resolve_api(target.api.as_deref(), target.data_dir.as_deref())?,
        client::api_token(target.api_token_file.as_deref())?,
    );
    match cmd {
        ClientCommand::Submit(a) => {
            let id = client.submit_file(&a.file, a.modules.as_deref()).await?;
            if !a.wait {
                if a.json {
                    print_json(&serde_json::json!({ "id": id }));
                } else {
                    println!("{id}");
                }
                return Ok(());
            }
            let mut interrupt = client::Interrupt::new();
            if !a.json {
                eprintln!("submitted {} as {id}", a.file.display());
            }
            let view = client.wait(&id, false, &mut interrupt).await?;
            if a.json {
                print_json(&view);
            } else {
                print!("{}", client::render_dag(&view));
            }
            client::outcome(&view)
        }
        ClientCommand::Dag(a) => {
            let view = if a.wait {
                client
                    .wait(&a.id, a.json, &mut client::Interrupt::new())
                    .await?
            } else {
                client.dag(&a.id, true, None, Duration::ZERO).await?
            };
            if a.json {
                print_json(&view);
            } else {
                print!("{}", client::render_dag(&view));
            }
            if a.wait {
                client::outcome(&view)
            } else {
                Ok(())
            }
        }
        ClientCommand::Dags(a) => {
            let list = client.dags(a.limit).await?;
            if a.json {
                print_json(&list);
            } else {
                print!("{}", client::render_dags(&list));
            }
            Ok(())
        }
        ClientCommand::Cancel(a) => match client.cancel(&a.id).await {
            Ok(view) => {
                if a.json {
                    print_json(&view);
                } else {
                    println!("cancelled {} ({})", view.id, view.name);
                }
                Ok(())
            }
            Err(ClientError::Api {
                code: Some(code),
                message,
            }) if code == "already_finished" => Err(ClientError::NotCancelled(message)),
            Err(e) => Err(e),
        },
        ClientCommand::Logs(a) => {
            let task = client.task(&a.id, &a.task).await?;
            if a.json {
                print_json(&task);
            } else {
                print!("{}", client::render_logs(&a.id, &a.task, &task));
            }
            Ok(())
        }
        ClientCommand::DebugBlock(a) => client.block(&a.peer, !a.unblock).await,
        ClientCommand::Status(a) => {
            let status = client.status().await?;
            if a.json {
                print_json(&status);
            } else {
                print!("{}", client::render_status(&status));
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every argument and flag of every command says what it is for in `--help`.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                if arg.is_hide_set() || matches!(arg.get_id().as_str(), "help" | "version") {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sc in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
                if sc.get_about().is_none() && sc.get_name() != "help" {
                    missing.push(format!("{path} {} (no about)", sc.get_name()));
                }
                walk(sc, &format!("{path} {}", sc.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&cli_command(), "bx3-node", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:?}");
    }

    /// `run`'s flags are the config file's keys; each must also be settable by a BX3_*
    /// variable (README promises it), so a new flag is all three at once.
    #[test]
    fn every_node_flag_has_a_variable_and_is_a_config_key() {
        let cmd = cli_command();
        let keys = config::config_keys(&cmd);
        assert!(keys.len() >= 8, "{} keys", keys.len());
        for arg in keys {
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or("");
            assert!(
                env.starts_with("BX3_"),
                "--{} has no BX3_* variable",
                arg.get_long().unwrap_or("?")
            );
        }
    }

    #[test]
    fn error_chains_do_not_repeat_themselves() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen: {source}")]
        struct Outer {
            source: std::io::Error,
        }
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        let shown = error_chain(&anyhow::Error::from(Outer { source: io }));
        assert_eq!(shown.matches("in use").count(), 1, "{shown}");
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(error_chain(&plain), "outer: inner");
    }

    #[test]
    fn clap_definition_is_consistent() {
        cli_command().debug_assert();
    }

    fn parse_with(yaml: &str, argv: &[&str]) -> Result<Cli, String> {
        let cmd = config::apply_yaml(cli_command(), std::path::Path::new("t.yaml"), yaml)
            .map_err(|e| e.to_string())?;
        let m = cmd.try_get_matches_from(argv).map_err(|e| e.to_string())?;
        Cli::from_arg_matches(&m).map_err(|e| e.to_string())
    }

    #[test]
    fn config_file_sets_defaults_that_flags_override() {
        let yaml = "max-executors: 3\nno_mdns: true\npeer: [/ip4/127.0.0.1/tcp/1, /ip4/127.0.0.1/tcp/2]\napi: 127.0.0.1:7999\n";
        let cli = parse_with(yaml, &["bx3-node", "run"]).expect("parses");
        let Some(Command::Run(run)) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.max_executors, Some(3));
        assert!(run.no_mdns);
        assert_eq!(run.peer.len(), 2);
        // A bare `bx3-node` is `run` and takes the file too.
        let cli = parse_with(yaml, &["bx3-node"]).expect("parses");
        assert_eq!(cli.run.max_executors, Some(3));
        // A flag wins over the file.
        let cli = parse_with(yaml, &["bx3-node", "run", "--max-executors", "5"]).expect("ok");
        let Some(Command::Run(run)) = cli.command else {
            panic!("run")
        };
        assert_eq!(run.max_executors, Some(5));
        // A client command reading the same variable (BX3_API) shares the key.
        let cli = parse_with(yaml, &["bx3-node", "status"]).expect("parses");
        let Some(Command::Client(ClientCommand::Status(s))) = cli.command else {
            panic!("status")
        };
        assert_eq!(s.target.api.as_deref(), Some("127.0.0.1:7999"));
    }

    /// packaging/node.yaml is a valid config file and shows every key (set or commented out),
    /// so a new flag cannot be missing from it.
    #[test]
    fn the_example_config_names_every_key() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/node.yaml");
        let text = std::fs::read_to_string(path).expect("packaging/node.yaml");
        config::apply_yaml(cli_command(), std::path::Path::new(path), &text).expect("applies");
        let cmd = cli_command();
        for arg in config::config_keys(&cmd) {
            let key = arg.get_long().expect("long");
            let shown = text.lines().any(|l| {
                let l = l.trim_start_matches(['#', ' ']);
                l.starts_with(&format!("{key}:"))
            });
            assert!(shown, "packaging/node.yaml does not show the key {key}");
        }
    }

    #[test]
    fn config_file_refuses_unknown_keys_and_bad_values_naming_them() {
        let err = parse_with("max_executor: 3\n", &["bx3-node"]).expect_err("unknown");
        assert!(
            err.contains("max_executor") && err.contains("did you mean \"max-executors\""),
            "{err}"
        );
        let err = parse_with("max-executors: lots\n", &["bx3-node"]).expect_err("bad value");
        assert!(
            err.contains("max-executors") && err.contains("lots"),
            "{err}"
        );
        let err = parse_with("api: [a, b]\n", &["bx3-node"]).expect_err("list");
        assert!(err.contains("api") && err.contains("one value"), "{err}");
        let err = parse_with("no-mdns: yes please\n", &["bx3-node"]).expect_err("switch");
        assert!(
            err.contains("no-mdns") && err.contains("true or false"),
            "{err}"
        );
        let err = parse_with("config: other.yaml\n", &["bx3-node"]).expect_err("nested");
        assert!(err.contains("unknown key"), "{err}");
        let err = parse_with("- a\n- b\n", &["bx3-node"]).expect_err("not a mapping");
        assert!(err.contains("mapping"), "{err}");
        assert!(parse_with("# nothing here\n", &["bx3-node"]).is_ok());
    }
}
