//! `bx3-node`: run a node (the default) or talk to one.
//!
//! Exit codes: 0 success; 1 a DAG failed or was cancelled (or could not be cancelled because
//! it had finished); 2 invalid input, usage error, or an unreachable node; 3 the node itself
//! failed to start or stopped on an error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bx3_node::client::{self, Client, ClientError};
use bx3_node::config::RunArgs;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "bx3-node",
    version,
    about = "Zero-config peer-to-peer mesh that runs DAGs of WebAssembly tasks",
    args_conflicts_with_subcommands = true,
    after_help = "With no subcommand, runs a node (same as `bx3-node run`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default).
    Run(RunArgs),
    /// Submit a DAG file; prints its id once it is durably accepted.
    Submit(SubmitArgs),
    /// Show one DAG and its tasks.
    Dag(DagArgs),
    /// List DAGs, newest first.
    Dags(ListArgs),
    /// Cancel a DAG: running tasks are abandoned, pending ones cancelled.
    Cancel(CancelArgs),
    /// Show the node, the controller, executors and peers.
    Status(StatusArgs),
    /// Internal: an executor process (started by the node).
    #[command(name = "__executor", hide = true)]
    Executor(ExecutorArgs),
    /// Internal: a module compile process (started by the node).
    #[command(name = "__compile", hide = true)]
    Compile(CompileArgs),
}

/// How a client finds its node.
#[derive(Args, Clone)]
struct Target {
    /// The node's API URL [env: BX3_API; default: <data-dir>/api.addr, else http://127.0.0.1:7420].
    #[arg(long, env = "BX3_API", value_name = "URL")]
    api: Option<String>,
    /// Data dir of the node to talk to (its api.addr names the URL).
    #[arg(long, env = "BX3_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// File holding the node's API token [default: the BX3_API_TOKEN variable].
    #[arg(long, env = "BX3_API_TOKEN_FILE", value_name = "FILE")]
    api_token_file: Option<PathBuf>,
}

#[derive(Args)]
struct SubmitArgs {
    /// DAG file (YAML).
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

#[derive(Args)]
struct DagArgs {
    id: String,
    #[arg(long)]
    json: bool,
    /// Wait for the DAG to finish first; exit 0 if it succeeded, 1 if not.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct ListArgs {
    #[arg(long)]
    json: bool,
    /// At most this many DAGs.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct CancelArgs {
    id: String,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    target: Target,
}

#[derive(Args)]
struct ExecutorArgs {
    #[arg(long)]
    data_dir: PathBuf,
}

#[derive(Args)]
struct CompileArgs {
    #[arg(long)]
    cache_dir: PathBuf,
    #[arg(long)]
    hash: String,
    #[arg(long)]
    cpu_secs: u64,
    #[arg(long)]
    address_space: u64,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => run_node(cli.run),
        Some(Command::Run(args)) => run_node(args),
        Some(Command::Executor(args)) => {
            init_tracing("warn");
            match bx3_node::executor::child::serve(&args.data_dir) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("bx3-node executor: {e}");
                    ExitCode::from(3)
                }
            }
        }
        Some(Command::Compile(a)) => {
            let code = bx3_node::executor::compile::serve_child(
                &a.cache_dir,
                &a.hash,
                a.cpu_secs,
                a.address_space,
            );
            ExitCode::from(u8::try_from(code).unwrap_or(3))
        }
        Some(cmd) => {
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
            match rt.block_on(client_command(cmd)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    if !matches!(e, ClientError::DagDidNotSucceed { .. }) {
                        eprintln!("bx3-node: {e}");
                    }
                    ExitCode::from(e.exit_code())
                }
            }
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
            eprintln!("bx3-node: {e:#}");
            ExitCode::from(3)
        }
    }
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

fn print_json<T: serde::Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("bx3-node: cannot print JSON: {e}"),
    }
}

async fn client_command(cmd: Command) -> Result<(), ClientError> {
    let target = match &cmd {
        Command::Submit(a) => a.target.clone(),
        Command::Dag(a) => a.target.clone(),
        Command::Dags(a) => a.target.clone(),
        Command::Cancel(a) => a.target.clone(),
        Command::Status(a) => a.target.clone(),
        Command::Run(_) | Command::Executor(_) | Command::Compile(_) => {
            unreachable!("handled in main")
        }
    };
    let client = Client::with_token(
        client::resolve_api(target.api.as_deref(), target.data_dir.as_deref())?,
        client::api_token(target.api_token_file.as_deref())?,
    );
    match cmd {
        Command::Submit(a) => {
            let id = client.submit_file(&a.file, a.modules.as_deref()).await?;
            if !a.wait {
                if a.json {
                    print_json(&serde_json::json!({ "id": id }));
                } else {
                    println!("{id}");
                }
                return Ok(());
            }
            if !a.json {
                eprintln!("submitted {} as {id}", a.file.display());
            }
            let view = client.wait(&id, false).await?;
            if a.json {
                print_json(&view);
            } else {
                print!("{}", client::render_dag(&view));
            }
            client::outcome(&view)
        }
        Command::Dag(a) => {
            let view = if a.wait {
                client.wait(&a.id, a.json).await?
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
        Command::Dags(a) => {
            let list = client.dags(a.limit).await?;
            if a.json {
                print_json(&list);
            } else {
                print!("{}", client::render_dags(&list));
            }
            Ok(())
        }
        Command::Cancel(a) => match client.cancel(&a.id).await {
            Ok(view) => {
                if a.json {
                    print_json(&view);
                } else {
                    println!("cancelled {} ({})", view.id, view.name);
                }
                Ok(())
            }
            Err(ClientError::Api(m)) if m.contains("already finished") => {
                eprintln!("bx3-node: {m}");
                Err(ClientError::DagDidNotSucceed {
                    id: a.id,
                    state: "could not be cancelled",
                })
            }
            Err(e) => Err(e),
        },
        Command::Status(a) => {
            let status = client.status().await?;
            if a.json {
                print_json(&status);
            } else {
                print!("{}", client::render_status(&status));
            }
            Ok(())
        }
        Command::Run(_) | Command::Executor(_) | Command::Compile(_) => {
            unreachable!("handled in main")
        }
    }
}
