//! The `lanes` command line. Every read command takes `--json` and prints one JSON document;
//! a failing command exits non-zero with the reason on stderr.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::config::Config;
use crate::daemon::Daemon;
use crate::limits::LimitView;
use crate::logging::{self, LogFormat};
use crate::model::{ChatInput, Execution, MAX_COUNT, NewExecution, validate_provider_name};
use crate::plugin::PluginHost;
use crate::store::{Queue, StatusCounts};

/// Runs LLM calls from a database queue, with one lane and one concurrency limit per provider.
#[derive(Debug, Parser)]
#[command(name = "lanes", version, about)]
pub struct Cli {
    /// Config file (default: lanes.toml when it exists).
    #[arg(long, global = true, env = "LANES_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "LANES_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// A `lanes` subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGINT or SIGTERM, with the HTTP API, metrics and dashboard.
    Serve {
        /// Do not serve the HTTP API, metrics or dashboard (as `[api] enabled = false`).
        #[arg(long)]
        no_api: bool,
    },
    /// Queue an execution and print its id, or every line of a JSON Lines file (`--file`).
    Submit(SubmitArgs),
    /// Write executions as JSON Lines on stdout, newest first, in lanes' shape or OpenAI
    /// Batch's output shape (`--format openai`).
    Export(crate::jsonl::ExportArgs),
    /// Usage and cost of the executions completed in a time range, by provider, model or
    /// tenant.
    Usage {
        /// What to group by.
        #[arg(long, value_enum, default_value = "provider")]
        by: UsageByArg,
        /// From: RFC 3339 (`2026-05-01T00:00:00Z`) or a duration back from now (`90s`,
        /// `30m`, `1h`, `2d`).
        #[arg(long, default_value = "24h")]
        since: String,
        /// Until (not included), in the same forms; default now.
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The provider batches of the batch lanes, newest first: state, counts, times, cost.
    Batches {
        /// The most to show.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Show one execution; `--follow` prints its streamed answer as it comes, then shows it.
    Get {
        id: i64,
        #[arg(long)]
        json: bool,
        /// Print the answer's text as it streams (a retried attempt starts over, said on
        /// stderr), then the execution once it has ended.
        #[arg(long)]
        follow: bool,
    },
    /// Cancel a pending or running execution (a running one's result is discarded; on
    /// PostgreSQL its worker stops the attempt at once, on SQLite it runs to its end).
    Cancel { id: i64 },
    /// Wait until an execution completes (exit 0), fails (exit 1) or the timeout passes (exit 2).
    Wait {
        id: i64,
        /// Seconds to wait.
        #[arg(long, default_value_t = 300.0)]
        timeout: f64,
        #[arg(long)]
        json: bool,
    },
    /// Limit, running, pending, completed and failed counts of every provider.
    Status {
        #[arg(long)]
        json: bool,
        /// Redraw every interval, with a bar of running out of the limit per provider
        /// (plain lines when stdout is not a terminal); Ctrl-C stops it.
        #[arg(long)]
        watch: bool,
        /// How often `--watch` redraws, in ms.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
        interval_ms: u64,
        /// Show the tenants instead: each one's running, pending, completed and failed
        /// executions across providers.
        #[arg(long, conflicts_with = "watch")]
        tenant: bool,
    },
    /// Show every provider's default, configured and effective limit, or change one.
    Limits {
        #[command(subcommand)]
        action: Option<LimitsAction>,
        #[arg(long)]
        json: bool,
    },
    /// Inspect provider components.
    Plugins {
        #[command(subcommand)]
        action: PluginsAction,
    },
    /// A one-minute tour: three stub providers, a few hundred executions, live lanes.
    Demo(crate::demo::DemoArgs),
    /// Make the running daemon re-read its config and key files (SIGHUP to the pid in the
    /// SQLite lock file; on PostgreSQL, signal each worker: `systemctl reload lanes`).
    Reload,
    /// Check a config without touching the database, or print the config in effect.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Print a shell completion script: `lanes completions bash > /etc/bash_completion.d/lanes`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages into DIR (`scripts/man` runs it).
    #[command(hide = true)]
    Man { dir: PathBuf },
}

/// `lanes submit`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["input", "file"])))]
pub struct SubmitArgs {
    /// The provider, or a route (`[routes.NAME]`), which picks one of its members; with
    /// `--file`, that of every line that names none.
    #[arg(long, required_unless_present = "file")]
    pub provider: Option<String>,
    /// Chat input JSON, `@FILE`, or `@-` for stdin.
    #[arg(long)]
    pub input: Option<String>,
    /// A JSON Lines file, one execution a line: lanes lines or OpenAI Batch input lines
    /// (see `docs/jsonl.md`). Queued a transaction per 1,000 lines; a file with a bad line
    /// queues nothing unless `--skip-bad`.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The batch name that scopes the file's `custom_id`s (default: the file's name): a
    /// `custom_id` already queued under it is not queued again.
    #[arg(long, requires = "file")]
    pub name: Option<String>,
    /// Queue the good lines of a file with bad ones (the bad ones are still listed).
    #[arg(long, requires = "file")]
    pub skip_bad: bool,
    /// Higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Attempts before failing (default: `default_max_attempts`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT)))]
    pub max_attempts: Option<u32>,
    /// Queue it even though no component or config knows the provider yet; it stays
    /// pending until one does.
    #[arg(long)]
    pub allow_unknown: bool,
    /// The tenant it runs for (1 to 64 of `a-z A-Z 0-9 _ - . : @`); with `--file`, that of
    /// every line that names none. Tenants share each lane fairly.
    #[arg(long, value_parser = parse_tenant)]
    pub tenant: Option<String>,
    /// Whether the provider's response cache may answer it: `true` or `false` (default:
    /// only a `temperature` of 0 is cached, when the provider has a cache).
    #[arg(long)]
    pub cache: Option<bool>,
    /// It can wait for a provider batch (`[providers.NAME] batch`): about half the price,
    /// results within the batch window. A provider without a batch lane runs it live.
    #[arg(long)]
    pub deferrable: bool,
    /// When it must have ended: RFC 3339 or a duration from now (`90s`, `30m`, `26h`). A
    /// deferrable execution whose deadline comes before a batch could end runs live.
    #[arg(long, value_parser = parse_deadline)]
    pub deadline: Option<i64>,
    #[arg(long)]
    pub json: bool,
}

/// `--deadline`: RFC 3339, a duration from now, or Unix ms, as Unix ms.
fn parse_deadline(s: &str) -> Result<i64, String> {
    let now = crate::model::now_ms();
    let text = s.trim();
    match crate::jsonl::parse_ago(text) {
        Some(ahead) => ahead
            .map_err(|e| e.replace("--since", "--deadline").replace("ago", "ahead"))
            .and_then(|ms| {
                now.checked_add(ms)
                    .ok_or_else(|| format!("--deadline `{s}` is too far ahead"))
            }),
        None => crate::jsonl::parse_since(text, now).map_err(|e| {
            e.replace("--since", "--deadline")
                .replace("a duration (90s", "a duration ahead (90s")
        }),
    }
}

fn parse_tenant(s: &str) -> Result<String, String> {
    crate::model::check_tenant(s).map(|()| s.to_string())
}

/// `lanes config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Validate the config (`--config FILE`, `lanes.toml`, and `LANES_*`) and report every
    /// problem with its key; exits non-zero on any. The database is not opened.
    Check,
    /// Print the config in effect after defaults, the file and `LANES_*`, with the database
    /// password hidden.
    Show {
        #[arg(long)]
        json: bool,
    },
}

/// `lanes limits ...`.
#[derive(Debug, Subcommand)]
pub enum LimitsAction {
    /// Set a provider's limit at run time; the running daemon applies it within a second and
    /// it survives restarts.
    Set {
        name: String,
        #[arg(value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT)))]
        limit: u32,
    },
    /// Remove a run-time limit, going back to config or the component's default.
    Clear { name: String },
}

/// `lanes plugins ...`.
#[derive(Debug, Subcommand)]
pub enum PluginsAction {
    /// Load every component in the plugins folder and report each one.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Validate one component for its author: world, WIT version and `info()`, then
    /// optionally one dry `execute`. Exits non-zero with the reason when it would not load.
    Check(CheckArgs),
    /// Write a new provider project (Rust, Python or JavaScript) that builds with one
    /// command and passes `plugins check` and `plugins test` as written.
    New(NewArgs),
    /// Run the conformance suite against a component: info, a success, every error class,
    /// a stalled body, a refused connection, hosts, secrets, and the cost of a call.
    /// Prints a table; exits non-zero when a check fails.
    Test(TestArgs),
}

/// `lanes plugins new`.
#[derive(Debug, Args)]
pub struct NewArgs {
    /// The provider name (lowercase letters, digits, `-` and `_`).
    pub name: String,
    #[arg(long, value_enum)]
    pub lang: crate::kit::templates::Lang,
    /// Where to write the project (default: ./NAME). It must not exist or be empty.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `lanes plugins test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// The `.wasm` file.
    pub file: PathBuf,
    /// A config value the component sees, as `KEY=VALUE` (repeatable); `{server}` in a
    /// value stands for the scripted server's URL. `base_url` points at it already.
    #[arg(long = "provider-config", value_parser = parse_key_value)]
    pub values: Vec<(String, String)>,
    /// A secret, as `NAME=VALUE` (repeatable). `api-key` is set to a canary already.
    #[arg(long = "secret", value_parser = parse_key_value)]
    pub secrets: Vec<(String, String)>,
    /// The API's success reply and what the component must make of it, as JSON:
    /// `{"body": {...}, "expect": {"text", "input_tokens", "output_tokens",
    /// "finish_reason"}}`. Needed only for an API the suite does not know (it knows
    /// OpenAI's chat completions, Anthropic's messages and Ollama's chat).
    #[arg(long)]
    pub reply: Option<PathBuf>,
    /// How many successful calls to time.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub calls: u16,
    #[arg(long)]
    pub json: bool,
}

/// `lanes plugins check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The `.wasm` file.
    pub file: PathBuf,
    /// Chat input JSON (or `@FILE`) for a dry `execute`.
    #[arg(long)]
    pub request: Option<String>,
    /// A config value the component sees, as `KEY=VALUE` (repeatable).
    #[arg(long = "value", value_parser = parse_key_value)]
    pub values: Vec<(String, String)>,
    #[arg(long)]
    pub json: bool,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// Worker threads of the daemon's runtime: one more than the cores. Guests run on these
/// threads too, and a guest spinning in a loop yields only at each epoch tick (1 ms); with
/// as many spinning guests as cores, the extra thread keeps the lanes' claims, result writes
/// and well-behaved guests moving (measured: `cargo bench -p lanes -- isolation`).
pub fn runtime_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) + 1
}

/// Parses arguments, runs the command and turns errors into a message and exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Serve { .. } => "info",
        // The demo draws its own live view; only errors should interrupt it.
        Command::Demo(_) => "error",
        _ => "warn",
    };
    logging::init(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(runtime_threads())
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", crate::errors::say_once(e.chain()));
            ExitCode::FAILURE
        }
    }
}

async fn open_queue(config: &Config) -> anyhow::Result<Arc<dyn Queue>> {
    crate::store::open(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "opening {}",
                crate::config::redact_url(&config.database_url)
            )
        })
}

/// SIGHUP: the config file, the `LANES_*` variables the daemon started with, and the key
/// files, read again and applied; a config that fails validation changes nothing.
async fn reload_config(daemon: &Daemon, path: Option<&std::path::Path>) {
    tracing::info!("SIGHUP: reloading the config");
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("config reload refused, the running config keeps serving: {e}");
            return;
        }
    };
    match daemon.reload_config(config).await {
        Ok(kept) if kept.is_empty() => tracing::info!("config reloaded"),
        Ok(kept) => tracing::warn!(
            "config reloaded, except {}: these cannot change while running and keep their \
             values until a restart",
            kept.join(", ")
        ),
        Err(e) => tracing::error!("config reload: {e}"),
    }
}

/// `lanes reload`: SIGHUP to the daemon that holds the SQLite file's lock.
fn signal_reload(config: &Config) -> anyhow::Result<ExitCode> {
    let Some(db) = config.sqlite_path() else {
        bail!(
            "on PostgreSQL several workers may serve the queue: send SIGHUP to each \
             (`systemctl reload lanes`, or `kill -HUP PID`)"
        );
    };
    let lock = crate::daemon::DatabaseLock::path(&db);
    // A pid in a lock file nobody holds is stale: it may name another process by now.
    let held = std::fs::File::open(&lock)
        .map(|file| fs2::FileExt::try_lock_shared(&file).is_err())
        .unwrap_or(false);
    if !held {
        bail!("no running `lanes serve` for {}", db.display());
    }
    let pid = std::fs::read_to_string(&lock)
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no running `lanes serve` for {} (no pid in {})",
                db.display(),
                lock.display()
            )
        })?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!(
            "no running `lanes serve` with pid {pid} (from {})",
            lock.display()
        );
    }
    println!("asked lanes serve (pid {pid}) to reload its config");
    Ok(ExitCode::SUCCESS)
}

/// `lanes config check`: every problem on its own line, then a count.
fn config_check(path: Option<&std::path::Path>) -> ExitCode {
    let source = match path {
        Some(path) => path.display().to_string(),
        None if std::path::Path::new(crate::config::DEFAULT_CONFIG_FILE).exists() => {
            crate::config::DEFAULT_CONFIG_FILE.to_string()
        }
        None => "the defaults and LANES_* variables".to_string(),
    };
    let problems = match Config::check(path) {
        Ok(checked) if checked.problems.is_empty() => {
            println!(
                "{source}: OK, {} provider(s) configured",
                checked.config.providers.len()
            );
            return ExitCode::SUCCESS;
        }
        Ok(checked) => checked.problems,
        Err(e) => e.into_list(),
    };
    for problem in &problems {
        eprintln!("error: {problem}");
    }
    eprintln!("{source}: {} problem(s)", problems.len());
    ExitCode::FAILURE
}

/// One man page for `lanes` and one for each of its commands, as `DIR/lanes[-CMD].1`.
fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let root = Cli::command();
    let mut pages = vec![("lanes".to_string(), root.clone())];
    for sub in root.get_subcommands().filter(|c| !c.is_hide_set()) {
        pages.push((format!("lanes-{}", sub.get_name()), sub.clone()));
    }
    for (name, command) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(command.name(name.clone())).render(&mut out)?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Commands that must work with a broken config, or need none.
    match &cli.command {
        Command::Config {
            action: ConfigAction::Check,
        } => return Ok(config_check(cli.config.as_deref())),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(*shell, &mut Cli::command(), "lanes", &mut std::io::stdout());
            return Ok(ExitCode::SUCCESS);
        }
        Command::Man { dir } => {
            write_man_pages(dir)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Plugins {
            action: PluginsAction::New(args),
        } => {
            plugins_new(args)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    // First of all: a SIGTERM while the daemon starts must stop it gracefully, not kill it.
    let signals =
        matches!(cli.command, Command::Serve { .. }).then(crate::daemon::StopSignals::install);
    // SIGHUP's default action ends the process: catch it as early too.
    #[cfg(unix)]
    let mut hangups = match cli.command {
        Command::Serve { .. } => {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| tracing::warn!("cannot listen for SIGHUP ({e}); no reloads"))
                .ok()
        }
        _ => None,
    };
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { no_api } => {
            let grace = Duration::from_secs(config.shutdown_grace_secs);
            #[cfg(unix)]
            let notifier = crate::systemd::Notifier::from_env();
            // The SQLite file's lock first: a second serve on the file must hear that another
            // holds it, not that the API's port is taken or whatever else it tried first.
            let lock = crate::daemon::DatabaseLock::take(&config)?;
            // One descriptor per running call: as many as the hard limit allows.
            crate::daemon::fds::raise();
            let api = match config.api.enabled && !no_api {
                true => Some(crate::api::bind(&config.api).await?),
                false => None,
            };
            let queue = open_queue(&config).await?;
            let daemon = Daemon::start_locked(config, queue, lock).await?;
            let api = api.map(|bound| bound.serve(daemon.control()));
            #[cfg(unix)]
            if let Some(notifier) = &notifier {
                notifier.send(&format!(
                    "READY=1\nSTATUS=serving {} provider(s)",
                    daemon.lanes().len()
                ));
            }
            let mut signals = signals.unwrap_or_else(crate::daemon::StopSignals::install);
            loop {
                #[cfg(unix)]
                let hangup = async {
                    match hangups.as_mut() {
                        Some(h) => {
                            h.recv().await;
                        }
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let hangup = std::future::pending::<()>();
                tokio::select! {
                    _ = signals.recv() => break,
                    _ = hangup => {
                        #[cfg(unix)]
                        if let Some(notifier) = &notifier {
                            notifier.send("RELOADING=1\nSTATUS=reloading the config");
                        }
                        reload_config(&daemon, cli.config.as_deref()).await;
                        #[cfg(unix)]
                        if let Some(notifier) = &notifier {
                            notifier.send(&format!(
                                "READY=1\nSTATUS=serving {} provider(s)",
                                daemon.lanes().len()
                            ));
                        }
                    }
                }
            }
            #[cfg(unix)]
            if let Some(notifier) = &notifier {
                notifier.send("STOPPING=1\nSTATUS=shutting down");
            }
            // No new requests while the lanes drain.
            if let Some(api) = api {
                api.shutdown().await;
            }
            daemon.shutdown(grace).await;
        }
        Command::Submit(args) => submit(&config, args).await?,
        Command::Batches { limit, json } => batches(&config, limit, json).await?,
        Command::Usage {
            by,
            since,
            until,
            json,
        } => usage(&config, by.into(), &since, until.as_deref(), json).await?,
        Command::Export(args) => {
            let filter = args.filter()?;
            let queue = open_queue(&config).await?;
            let mut out = std::io::BufWriter::new(std::io::stdout());
            let report =
                crate::jsonl::export(queue.as_ref(), filter, args.format, &mut out).await?;
            if report.not_ended > 0 {
                eprintln!(
                    "{} execution(s) that have not ended were left out (OpenAI's shape has \
                     no line for them)",
                    report.not_ended
                );
            }
            eprintln!("exported {} execution(s)", report.written);
        }
        Command::Get { id, json, follow } => {
            let queue = open_queue(&config).await?;
            let mut execution = queue
                .get(id)
                .await?
                .with_context(|| format!("no execution with id {id}"))?;
            if follow {
                execution = follow_stream(queue.as_ref(), id, json).await?;
            }
            print_execution(&execution, json)?;
        }
        Command::Cancel { id } => {
            let queue = open_queue(&config).await?;
            match queue.cancel(id).await? {
                crate::store::Cancelled::Pending => println!("execution {id} cancelled"),
                crate::store::Cancelled::Running { owner } => println!(
                    "execution {id} cancelled while running on {}; its result will be discarded",
                    owner.as_deref().unwrap_or("a worker")
                ),
                crate::store::Cancelled::Terminal(status) => {
                    bail!(
                        "execution {id} is {status}: only pending or running ones can be cancelled"
                    )
                }
                crate::store::Cancelled::NotFound => bail!("no execution with id {id}"),
            }
        }
        Command::Wait { id, timeout, json } => {
            let queue = open_queue(&config).await?;
            if !(timeout.is_finite() && timeout >= 0.0) {
                bail!("--timeout must be a number of seconds, not {timeout}");
            }
            let deadline = Instant::now() + Duration::from_secs_f64(timeout);
            loop {
                let execution = queue
                    .get(id)
                    .await?
                    .with_context(|| format!("no execution with id {id}"))?;
                if execution.status.is_terminal() {
                    print_execution(&execution, json)?;
                    if execution.status == crate::model::Status::Completed {
                        return Ok(ExitCode::SUCCESS);
                    }
                    eprintln!(
                        "execution {id} {}: {}",
                        execution.status,
                        execution.error.as_deref().unwrap_or("no error recorded")
                    );
                    return Ok(ExitCode::FAILURE);
                }
                if Instant::now() >= deadline {
                    eprintln!(
                        "execution {id} is still {} after {timeout} s",
                        execution.status
                    );
                    return Ok(ExitCode::from(2));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Command::Status {
            json, tenant: true, ..
        } => tenant_status(&config, json).await?,
        Command::Status {
            json, watch: false, ..
        } => status(&config, json).await?,
        Command::Status {
            json,
            watch: true,
            interval_ms,
            ..
        } => status_watch(&config, json, Duration::from_millis(interval_ms)).await?,
        Command::Limits { action, json } => limits(&config, action, json).await?,
        Command::Plugins {
            action: PluginsAction::List { json },
        } => plugins_list(&config, json).await?,
        Command::Plugins {
            action: PluginsAction::Check(args),
        } => return plugins_check(&config, args).await,
        Command::Plugins {
            action: PluginsAction::Test(args),
        } => return plugins_test(&config, args).await,
        Command::Demo(args) => crate::demo::run(&config, args).await?,
        Command::Config {
            action: ConfigAction::Show { json },
        } => {
            let shown = config.redacted();
            if json {
                print_json(&shown)?;
            } else {
                print!("{}", toml::to_string(&shown)?);
            }
        }
        Command::Reload => return signal_reload(&config),
        // Handled before the config is loaded.
        Command::Config {
            action: ConfigAction::Check,
        }
        | Command::Completions { .. }
        | Command::Plugins {
            action: PluginsAction::New(_),
        }
        | Command::Man { .. } => {}
    }
    Ok(ExitCode::SUCCESS)
}

fn read_input(arg: &str) -> anyhow::Result<String> {
    match arg.strip_prefix('@') {
        Some("-") => std::io::read_to_string(std::io::stdin()).context("reading input from stdin"),
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading input file {path}"))
        }
        None => Ok(arg.to_string()),
    }
}

/// Providers that a component or the config describes.
/// Prints the text deltas of `id` as they are stored (at most a flush behind the worker
/// that runs it), until it ends; gives it then. With `json`, each delta is a line of JSON.
async fn follow_stream(
    queue: &dyn Queue,
    id: crate::model::ExecutionId,
    json: bool,
) -> anyhow::Result<crate::model::Execution> {
    use std::io::Write;
    let mut at = crate::store::StreamPosition::default();
    let mut out = std::io::stdout().lock();
    loop {
        // The end first: the chunks read after it are all there are.
        let execution = queue
            .get(id)
            .await?
            .with_context(|| format!("no execution with id {id}"))?;
        for chunk in queue.read_stream(id, at).await? {
            if chunk.attempt != at.attempt {
                if at.attempt != 0 {
                    eprintln!("\n(attempt {} starts over)", chunk.attempt);
                }
                at = crate::store::StreamPosition {
                    attempt: chunk.attempt,
                    index: 0,
                };
            }
            if chunk.first > at.index {
                break;
            }
            let deltas: Vec<crate::model::Delta> = serde_json::from_str(&chunk.deltas)
                .with_context(|| format!("execution {id}: a stored chunk is not deltas"))?;
            for (i, delta) in deltas.iter().enumerate() {
                let index = chunk.first + i64::try_from(i).unwrap_or(i64::MAX);
                if index < at.index {
                    continue;
                }
                at.index = index + 1;
                if json {
                    writeln!(out, "{}", serde_json::to_string(delta)?)?;
                } else if let crate::model::Delta::Text { text } = delta {
                    write!(out, "{text}")?;
                }
            }
            out.flush()?;
        }
        if execution.status.is_terminal() {
            if !json && at.index > 0 {
                writeln!(out)?;
            }
            return Ok(execution);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn known_providers(config: &Config, queue: &dyn Queue) -> anyhow::Result<BTreeSet<String>> {
    let mut known: BTreeSet<String> = config.providers.keys().cloned().collect();
    known.extend(config.routes.keys().cloned());
    known.extend(queue.providers().await?.into_iter().map(|p| p.name));
    Ok(known)
}

async fn submit(config: &Config, args: SubmitArgs) -> anyhow::Result<()> {
    if args.file.is_some() {
        return submit_file(config, args).await;
    }
    let (Some(provider), Some(input)) = (args.provider, args.input) else {
        bail!("give --provider and --input, or --file");
    };
    validate_provider_name(&provider).map_err(anyhow::Error::msg)?;
    let input = ChatInput::parse_capped(&read_input(&input)?, config.api.image_cap())?;
    // Held to what the components of this host's plugins folder take, as the API holds
    // it to the daemon's; loaded only for an input that needs more than text.
    let members = config.routes.get(&provider).map(|r| r.providers.as_slice());
    let declared = if input.needs().is_empty() {
        crate::plugin::Declared::default()
    } else {
        let declared = crate::plugin::Declared::scan(config).await?;
        crate::model::check_capabilities(&input, &provider, members, |name| declared.of(name))?;
        declared
    };
    let queue = open_queue(config).await?;
    let known = known_providers(config, queue.as_ref()).await?;
    if !args.allow_unknown && !known.contains(&provider) {
        let list = if known.is_empty() {
            "none yet: run `lanes serve` or add [providers.NAME] to the config".to_string()
        } else {
            known.into_iter().collect::<Vec<_>>().join(", ")
        };
        bail!(
            "unknown provider `{}` (known: {list}); pass --allow-unknown to queue it until a \
             component provides it",
            provider
        );
    }
    let max_attempts = max_attempts(config, args.max_attempts)?;
    let mut new = [NewExecution {
        provider,
        input,
        priority: args.priority,
        max_attempts,
        route: None,
        tenant: args.tenant,
        cache: None,
        defer: crate::model::Defer {
            deferrable: args.deferrable,
            deadline: args.deadline,
            hold: false,
        },
    }];
    new[0].cache = crate::responses::plan(config, &new[0], args.cache);
    crate::daemon::routing::assign(queue.as_ref(), config, &mut new, |new, member| {
        declared.takes(&new.input, member)
    })
    .await?;
    crate::daemon::batches::hold(config, new.iter_mut());
    let id = queue.submit(&new[0]).await?;
    if args.json {
        print_json(&serde_json::json!({ "id": id }))?;
    } else {
        println!("{id}");
    }
    Ok(())
}

/// `--max-attempts`, or the config's default, as stored.
fn max_attempts(config: &Config, given: Option<u32>) -> anyhow::Result<i32> {
    let max_attempts = given.unwrap_or(config.default_max_attempts);
    // The CLI and the config cap both sources at MAX_COUNT, which an i32 holds.
    i32::try_from(max_attempts)
        .map_err(|_| anyhow::anyhow!("max attempts {max_attempts}: the most is {MAX_COUNT}"))
}

/// `lanes submit --file`: every line checked, then queued in batches; a summary at the end.
async fn submit_file(config: &Config, args: SubmitArgs) -> anyhow::Result<()> {
    let (Some(path), provider) = (args.file, args.provider) else {
        bail!("give --file");
    };
    if let Some(provider) = &provider {
        validate_provider_name(provider).map_err(anyhow::Error::msg)?;
    }
    // A file that cannot be read is said before the database is opened.
    std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let queue = open_queue(config).await?;
    let known = known_providers(config, queue.as_ref()).await?;
    let options = crate::jsonl::LoadOptions {
        path,
        name: args.name,
        provider,
        priority: args.priority,
        max_attempts: max_attempts(config, args.max_attempts)?,
        allow_unknown: args.allow_unknown,
        skip_bad: args.skip_bad,
        deferrable: args.deferrable,
        deadline: args.deadline,
        tenant: args.tenant.clone(),
        cache: args.cache,
    };
    let declared = crate::plugin::Declared::scan(config).await?;
    let report = crate::jsonl::load(config, queue.as_ref(), &known, &declared, &options).await?;
    if args.json {
        return print_json(&report);
    }
    let mut summary = format!(
        "queued {} execution(s) from {} (batch `{}`), {} already queued by an earlier load",
        report.queued,
        options.path.display(),
        report.name,
        report.already_queued
    );
    if !report.bad_lines.is_empty() {
        summary.push_str(&format!(", {} bad line(s) skipped", report.bad_lines.len()));
    }
    println!("{summary}");
    Ok(())
}

fn print_execution(e: &Execution, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(e);
    }
    println!("id:        {}", e.id);
    match &e.route {
        Some(route) => println!("provider:  {} (route {route})", e.provider),
        None => println!("provider:  {}", e.provider),
    }
    println!("status:    {}", e.status);
    if e.aged > 0 {
        println!("priority:  {} ({} from aging)", e.priority, e.aged);
    } else {
        println!("priority:  {}", e.priority);
    }
    if e.rate_limited > 0 {
        println!(
            "attempts:  {} of {} (and {} rate-limited, not counted)",
            e.attempts, e.max_attempts, e.rate_limited
        );
    } else {
        println!("attempts:  {} of {}", e.attempts, e.max_attempts);
    }
    if let Some(output) = &e.output {
        match output.get("text").and_then(|t| t.as_str()) {
            Some(text) => println!("text:      {text}"),
            None => println!("output:    {output}"),
        }
    }
    if let Some(error) = &e.error {
        println!(
            "error:     [{}] {error}",
            e.error_kind.as_deref().unwrap_or("unknown")
        );
    }
    if !e.history.is_empty() {
        println!("history:");
        println!(
            "  {:>7}  {:<11}  {:>9}  {:>10}  {:<24}  error",
            "attempt", "outcome", "ran (ms)", "retry (ms)", "worker"
        );
        for a in &e.history {
            let ran = match (a.started_at, a.finished_at) {
                (Some(s), Some(f)) => (f - s).to_string(),
                _ => "-".to_string(),
            };
            let retry = a.retry_delay_ms.map_or("-".to_string(), |d| d.to_string());
            let error = match (&a.error_kind, &a.error) {
                (Some(kind), Some(error)) => format!("[{kind}] {error}"),
                (None, Some(error)) => error.clone(),
                _ => String::new(),
            };
            // A routed execution's attempts say where each ran.
            let error = match &a.provider {
                Some(provider) => format!("on {provider}: {error}"),
                None => error,
            };
            println!(
                "  {:>7}  {:<11}  {:>9}  {:>10}  {:<24}  {error}",
                a.attempt,
                a.outcome,
                ran,
                retry,
                a.worker.as_deref().unwrap_or("-")
            );
        }
    }
    Ok(())
}

/// `lanes usage --by`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum UsageByArg {
    Provider,
    Model,
    Tenant,
}

impl From<UsageByArg> for crate::store::UsageBy {
    fn from(by: UsageByArg) -> Self {
        match by {
            UsageByArg::Provider => crate::store::UsageBy::Provider,
            UsageByArg::Model => crate::store::UsageBy::Model,
            UsageByArg::Tenant => crate::store::UsageBy::Tenant,
        }
    }
}

/// `lanes usage`'s answer.
#[derive(Debug, Serialize)]
pub struct UsageReport {
    pub by: crate::store::UsageBy,
    /// Unix ms, included.
    pub since: i64,
    /// Unix ms, not included.
    pub until: i64,
    pub rows: Vec<crate::store::UsageRow>,
    /// Every row added up (`key` is empty).
    pub total: crate::store::UsageRow,
}

/// `lanes batches`.
async fn batches(config: &Config, limit: u32, json: bool) -> anyhow::Result<()> {
    let queue = open_queue(config).await?;
    let batches = queue.batches(limit).await?;
    if json {
        return print_json(&batches);
    }
    if batches.is_empty() {
        println!("no batches");
        return Ok(());
    }
    println!(
        "{:>6}  {:<16} {:<10} {:<12} {:>7} {:>9} {:>7} {:>10} {:>10} {:>10}",
        "id",
        "provider",
        "state",
        "at provider",
        "items",
        "succeeded",
        "failed",
        "sent",
        "cost",
        "saved"
    );
    let now = crate::model::now_ms();
    let usd = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    for b in &batches {
        println!(
            "{:>6}  {:<16} {:<10} {:<12} {:>7} {:>9} {:>7} {:>10} {:>10} {:>10}",
            b.id,
            b.provider,
            b.state,
            b.provider_status.as_deref().unwrap_or("-"),
            b.items,
            b.succeeded,
            b.failed,
            b.submitted_at
                .map(|at| format!("{}s ago", (now - at).max(0) / 1000))
                .unwrap_or_else(|| "-".into()),
            usd(b.cost_usd),
            usd(b.saved_usd),
        );
        if let Some(error) = &b.error {
            println!("        {error}");
        }
    }
    Ok(())
}

async fn usage(
    config: &Config,
    by: crate::store::UsageBy,
    since: &str,
    until: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let now = crate::model::now_ms();
    let since = crate::jsonl::parse_since(since, now).map_err(anyhow::Error::msg)?;
    let until = match until {
        None => now,
        Some(t) => crate::jsonl::parse_since(t, now)
            .map_err(|e| anyhow::anyhow!(e.replace("--since", "--until")))?,
    };
    let queue = open_queue(config).await?;
    let rows = queue.usage(by, since, until).await?;
    let total = crate::store::UsageRow::total(&rows);
    if json {
        return print_json(&UsageReport {
            by,
            since,
            until,
            rows,
            total,
        });
    }
    let label = match by {
        crate::store::UsageBy::Provider => "provider",
        crate::store::UsageBy::Model => "model",
        crate::store::UsageBy::Tenant => "tenant",
    };
    println!(
        "{label:<28} {:>10} {:>12} {:>12} {:>11} {:>11} {:>12} {:>11}  unpriced",
        "executions", "input", "output", "cache read", "cache write", "cost (USD)", "saved"
    );
    let line = |key: &str, r: &crate::store::UsageRow| {
        println!(
            "{key:<28} {:>10} {:>12} {:>12} {:>11} {:>11} {:>12.4} {:>11.4}  {}",
            r.executions,
            r.input_tokens,
            r.output_tokens,
            r.cache_read_tokens,
            r.cache_write_tokens,
            r.cost_usd,
            r.saved_usd,
            r.unpriced
        )
    };
    for r in &rows {
        line(if r.key.is_empty() { "(none)" } else { &r.key }, r);
    }
    line("total", &total);
    if total.unpriced > 0 {
        println!(
            "{} completed execution(s) have no price (a model the price table lacks, or \
             completed before lanes priced answers): their cost is not in the figures",
            total.unpriced
        );
    }
    Ok(())
}

/// One tenant's line of `lanes status --tenant`.
#[derive(Debug, Serialize)]
pub struct TenantStatus {
    /// `null` for the executions without a tenant.
    pub tenant: Option<String>,
    pub running: u64,
    pub pending: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
    /// Its `[tenants.NAME] daily_usd`, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    /// What it spent today (UTC), when it has a cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spent_today_usd: Option<f64>,
    /// `serving`, or `capped` (its cap is spent or reserved: its work waits).
    pub state: &'static str,
}

/// Today's spent and reserved USD by name in `scope`, read only when a cap is set there
/// (`capped`): nothing is recorded otherwise.
async fn spent_today(
    queue: &dyn Queue,
    scope: crate::store::SpendScope,
    capped: bool,
) -> anyhow::Result<BTreeMap<String, (f64, f64)>> {
    if !capped {
        return Ok(BTreeMap::new());
    }
    Ok(queue
        .spend(crate::clock::day())
        .await?
        .into_iter()
        .filter(|r| r.scope == scope)
        .map(|r| (r.name, (r.spent_usd, r.reserved_usd)))
        .collect())
}

async fn tenant_status(config: &Config, json: bool) -> anyhow::Result<()> {
    let queue = open_queue(config).await?;
    let mut counts = queue.tenant_counts().await?;
    for name in config.tenants.keys() {
        counts.entry(name.clone()).or_default();
    }
    let capped = config.tenants.values().any(|t| t.daily_usd.is_some());
    let today = spent_today(queue.as_ref(), crate::store::SpendScope::Tenant, capped).await?;
    let rows: Vec<TenantStatus> = counts
        .into_iter()
        .map(|(tenant, c)| {
            let cap = config.tenants.get(&tenant).and_then(|t| t.daily_usd);
            let (spent, reserved) = today.get(&tenant).copied().unwrap_or_default();
            TenantStatus {
                running: c.running,
                pending: c.pending,
                completed: c.completed,
                failed: c.failed,
                cancelled: c.cancelled,
                daily_usd: cap,
                spent_today_usd: cap.map(|_| spent),
                state: if cap.is_some_and(|cap| crate::store::spend::reaches(spent + reserved, cap))
                {
                    "capped"
                } else {
                    "serving"
                },
                tenant: (!tenant.is_empty()).then_some(tenant),
            }
        })
        .collect();
    if json {
        return print_json(&rows);
    }
    println!(
        "{:<24} {:>8} {:>8} {:>10} {:>8} {:>9} {:>17} {:>8}",
        "tenant",
        "running",
        "pending",
        "completed",
        "failed",
        "cancelled",
        "today/daily_usd",
        "state"
    );
    for r in rows {
        let spend = match (r.spent_today_usd, r.daily_usd) {
            (Some(spent), Some(cap)) => format!("{spent:.2}/{cap:.2}"),
            _ => "-".to_string(),
        };
        println!(
            "{:<24} {:>8} {:>8} {:>10} {:>8} {:>9} {:>17} {:>8}",
            r.tenant.as_deref().unwrap_or("(none)"),
            r.running,
            r.pending,
            r.completed,
            r.failed,
            r.cancelled,
            spend,
            r.state
        );
    }
    Ok(())
}

/// One provider's line of `lanes status`.
#[derive(Debug, Serialize)]
pub struct ProviderStatus {
    pub provider: String,
    /// The component file serving it, when the daemon loaded one.
    pub component: Option<String>,
    pub limit: u32,
    /// `serving`, `paused`, `open`, `half_open` or `capped` (see `docs/policies.md`).
    pub state: String,
    /// Until when (Unix ms) it is paused or open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    /// Why it is paused or open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(flatten)]
    pub counts: StatusCounts,
    /// Its `rpm`/`tpm` budget and the last minute's use, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetStatus>,
    /// Its `daily_usd` and today's (UTC) use, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spend: Option<SpendStatus>,
    /// On a shared queue: the live workers that serve it, each running at most an even
    /// share of the limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
}

/// A provider's budget per minute and the last minute's use of it.
#[derive(Debug, Serialize)]
pub struct BudgetStatus {
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    pub requests: i64,
    pub tokens: i64,
}

impl std::fmt::Display for BudgetStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(rpm) = self.rpm {
            parts.push(format!("{}/{rpm} requests", self.requests));
        }
        if let Some(tpm) = self.tpm {
            parts.push(format!("{}/{tpm} tokens", self.tokens));
        }
        write!(f, "budget this minute: {}", parts.join(", "))
    }
}

/// A daily spend cap and today's (UTC) use of it, fleet-wide.
#[derive(Debug, Serialize)]
pub struct SpendStatus {
    pub daily_usd: f64,
    pub spent_usd: f64,
    pub reserved_usd: f64,
}

impl std::fmt::Display for SpendStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "spend today (UTC): {:.2} of {:.2} USD, {:.2} reserved by running attempts",
            self.spent_usd, self.daily_usd, self.reserved_usd
        )
    }
}

/// One provider's limits as `lanes limits` and `lanes status` show them: every source and
/// the effective limit, as the limit's owner resolves them, and what may be claimed now.
#[derive(Debug, Clone, Serialize)]
struct LimitRow {
    #[serde(flatten)]
    view: LimitView,
    /// The most that may run now, fleet-wide: 0 while paused, 1 while an open circuit
    /// probes (see `limits::claim_cap`).
    claimable: u32,
}

async fn limit_views(config: &Config, queue: &dyn Queue) -> anyhow::Result<Vec<LimitRow>> {
    let stored = crate::limits::Stored::read(queue).await?;
    let counts = queue.counts().await?;
    let names: BTreeSet<&String> = stored
        .defaults
        .keys()
        .chain(config.providers.keys())
        .chain(stored.runtime.keys())
        .chain(counts.keys())
        .collect();
    Ok(names
        .into_iter()
        .map(|name| {
            let (view, claimable) = stored.limit_of(name, config);
            LimitRow { view, claimable }
        })
        .collect())
}

async fn status(config: &Config, json: bool) -> anyhow::Result<()> {
    let queue = open_queue(config).await?;
    let rows = status_rows(config, queue.as_ref()).await?;
    if json {
        return print_json(&rows);
    }
    let pool = pool_line(config, &rows);
    println!(
        "{:<20} {:>5} {:>8} {:>8} {:>10} {:>8}  {:<14} component",
        "provider", "limit", "running", "pending", "completed", "failed", "state"
    );
    let now = crate::model::now_ms();
    for r in rows {
        let state = match r.until {
            Some(until) => format!("{} {}s", r.state, ((until - now).max(0) + 999) / 1000),
            None => r.state.clone(),
        };
        println!(
            "{:<20} {:>5} {:>8} {:>8} {:>10} {:>8}  {:<14} {}",
            r.provider,
            r.limit,
            r.counts.running,
            r.counts.pending,
            r.counts.completed,
            r.counts.failed,
            state,
            r.component
                .as_deref()
                .unwrap_or("(none: pending work waits)")
        );
        if let Some(reason) = &r.reason {
            println!("{:<20} {reason}", "");
        }
        if let Some(budget) = &r.budget {
            println!("{:<20} {budget}", "");
        }
        if r.counts.batched > 0 {
            println!(
                "{:<20} {} batched: waiting for or inside a provider batch (`lanes batches`)",
                "", r.counts.batched
            );
        }
        if let Some(spend) = &r.spend {
            println!("{:<20} {spend}", "");
        }
        if let Some(workers) = r.workers.filter(|w| *w > 1) {
            println!(
                "{:<20} {workers} workers share the limit: at most {} each",
                "",
                crate::daemon::lane::share(r.limit, workers)
            );
        }
    }
    if let Some(line) = pool {
        println!("{line}");
    }
    for (name, route) in &config.routes {
        let strategy = match route.strategy {
            crate::routes::Strategy::Capacity => "capacity",
            crate::routes::Strategy::Ordered => "ordered",
        };
        println!("route {name} ({strategy}): {}", route.providers.join(", "));
    }
    Ok(())
}

/// The instance pool's line of `lanes status`, when the limits of the providers that have a
/// component add up to more than one worker's pool: the work beyond it waits as pending.
fn pool_line(config: &Config, rows: &[ProviderStatus]) -> Option<String> {
    if !config.engine.pooling {
        return None;
    }
    let size = config.engine.max_instances;
    let served = rows.iter().filter(|r| r.component.is_some());
    // On a fleet each worker has a pool of its own, for its share of each limit.
    let slots: u64 = served
        .clone()
        .map(|r| {
            let workers = r.workers.unwrap_or(1).max(1);
            u64::from(crate::daemon::lane::share(r.limit, workers))
        })
        .sum();
    if slots <= u64::from(size) {
        return None;
    }
    let running: u64 = served.map(|r| r.counts.running).sum();
    Some(format!(
        "instance pool: the limits add up to {slots} per worker, more than the {size} \
         instances executions may hold ([engine] max_instances): work beyond the pool \
         waits as pending ({running} running now)"
    ))
}

/// `lanes status --watch`: bars in a terminal, a plain line per provider and tick
/// otherwise, and a JSON array per tick with `--json`.
async fn status_watch(config: &Config, json: bool, every: Duration) -> anyhow::Result<()> {
    use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
    use std::io::IsTerminal;
    let queue = open_queue(config).await?;
    let terminal = !json && std::io::stdout().is_terminal();
    let multi = MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::stdout());
    let style = ProgressStyle::with_template(
        "{prefix:<20} [{bar:30.cyan/blue}] {pos:>4}/{len:<4} running  {msg}",
    )?
    .progress_chars("█▉ ");
    let mut bars: BTreeMap<String, ProgressBar> = BTreeMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let rows = status_rows(config, queue.as_ref()).await?;
        if json {
            println!("{}", serde_json::to_string(&rows)?);
            continue;
        }
        for r in &rows {
            let msg = format!(
                "pending {:<6} completed {:<8} failed {}",
                r.counts.pending, r.counts.completed, r.counts.failed
            );
            if terminal {
                let bar = bars.entry(r.provider.clone()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(1).with_style(style.clone()));
                    bar.set_prefix(r.provider.clone());
                    bar
                });
                bar.set_length(u64::from(r.limit));
                bar.set_position(r.counts.running.min(u64::from(r.limit)));
                bar.set_message(msg);
            } else {
                let limit = u64::from(r.limit.max(1));
                let filled = usize::try_from(r.counts.running.min(limit) * 20 / limit).unwrap_or(0);
                println!(
                    "{:<20} [{:<20}] {:>4}/{:<4} running  {msg}",
                    r.provider,
                    "#".repeat(filled),
                    r.counts.running,
                    r.limit
                );
            }
        }
        if !terminal {
            println!();
        }
    }
    for bar in bars.values() {
        bar.abandon();
    }
    Ok(())
}

/// Every provider's line of `lanes status`.
async fn status_rows(config: &Config, queue: &dyn Queue) -> anyhow::Result<Vec<ProviderStatus>> {
    let components: BTreeMap<String, String> = queue
        .providers()
        .await?
        .into_iter()
        .map(|p| (p.name, p.component))
        .collect();
    let counts = queue.counts().await?;
    let (now, states) = queue.provider_states().await?;
    let used = queue.budget_usage().await?;
    let workers = queue.workers().await?;
    let capped = config.providers.values().any(|p| p.daily_usd.is_some());
    let spent = spent_today(queue, crate::store::SpendScope::Provider, capped).await?;
    let rows: Vec<ProviderStatus> = limit_views(config, queue)
        .await?
        .into_iter()
        .map(|LimitRow { view, .. }| {
            let state = crate::policy::PolicyState::of(states.get(&view.provider), now);
            let cap = config
                .providers
                .get(&view.provider)
                .and_then(|p| p.daily_usd);
            let (spent_usd, reserved_usd) = spent.get(&view.provider).copied().unwrap_or_default();
            let capped_today = cap
                .filter(|cap| crate::store::spend::reaches(spent_usd + reserved_usd, *cap))
                .map(|cap| {
                    format!(
                        "daily_usd {cap:.2}: {spent_usd:.2} USD spent and {reserved_usd:.2} \
                         reserved today (UTC): claims take nothing until the next day"
                    )
                });
            ProviderStatus {
                component: components.get(&view.provider).cloned(),
                counts: counts.get(&view.provider).cloned().unwrap_or_default(),
                limit: view.effective,
                state: if capped_today.is_some() && state.kind == "serving" {
                    "capped".to_string()
                } else {
                    state.kind.to_string()
                },
                until: state.until,
                reason: match capped_today {
                    Some(why) if state.kind == "serving" => Some(why),
                    _ => state.reason,
                },
                budget: config.policy_for(&view.provider).budget.map(|b| {
                    let (requests, tokens) = used.get(&view.provider).copied().unwrap_or_default();
                    BudgetStatus {
                        rpm: b.rpm,
                        tpm: b.tpm,
                        requests,
                        tokens,
                    }
                }),
                spend: config
                    .providers
                    .get(&view.provider)
                    .and_then(|p| p.daily_usd)
                    .map(|daily_usd| {
                        let (spent_usd, reserved_usd) =
                            spent.get(&view.provider).copied().unwrap_or_default();
                        SpendStatus {
                            daily_usd,
                            spent_usd,
                            reserved_usd,
                        }
                    }),
                workers: workers
                    .as_ref()
                    .map(|w| w.get(&view.provider).copied().unwrap_or(0)),
                provider: view.provider,
            }
        })
        .collect();
    Ok(rows)
}

async fn limits(config: &Config, action: Option<LimitsAction>, json: bool) -> anyhow::Result<()> {
    let queue = open_queue(config).await?;
    match action {
        Some(LimitsAction::Set { name, limit }) => {
            validate_provider_name(&name).map_err(anyhow::Error::msg)?;
            queue.set_limit(&name, limit).await?;
            println!("limit of {name} set to {limit}");
        }
        Some(LimitsAction::Clear { name }) => {
            if queue.clear_limit(&name).await? {
                println!("run-time limit of {name} cleared");
            } else {
                bail!("provider `{name}` has no run-time limit to clear");
            }
        }
        None => {
            let views = limit_views(config, queue.as_ref()).await?;
            if json {
                return print_json(&views);
            }
            let show = |v: Option<u32>| v.map_or("-".to_string(), |v| v.to_string());
            println!(
                "{:<20} {:>8} {:>10} {:>8} {:>8} {:>9} {:>9}  source",
                "provider",
                "default",
                "configured",
                "runtime",
                "adaptive",
                "effective",
                "claimable"
            );
            for LimitRow { view: v, claimable } in views {
                println!(
                    "{:<20} {:>8} {:>10} {:>8} {:>8} {:>9} {:>9}  {:?}",
                    v.provider,
                    show(v.default),
                    show(v.configured),
                    show(v.runtime),
                    show(v.adaptive),
                    v.effective,
                    claimable,
                    v.source
                );
            }
            // Budgets sit beside the limits: requests and tokens per minute, fleet-wide.
            for (name, provider) in &config.providers {
                let parts: Vec<String> = [
                    provider.rpm.map(|r| format!("{r} requests")),
                    provider.tpm.map(|t| format!("{t} tokens")),
                ]
                .into_iter()
                .flatten()
                .collect();
                if !parts.is_empty() {
                    println!("{name}: a budget of {} per minute", parts.join(" and "));
                }
            }
        }
    }
    Ok(())
}

async fn plugins_list(config: &Config, json: bool) -> anyhow::Result<()> {
    let host = PluginHost::new(config)?;
    let catalog = host.scan(config, None).await;
    if json {
        let providers: Vec<_> = catalog
            .providers
            .values()
            .map(|p| {
                serde_json::json!({
                    "provider": p.name.as_ref(),
                    "component": p.component.file,
                    "default_limit": p.default_limit,
                })
            })
            .collect();
        return print_json(&serde_json::json!({
            "plugins_dir": config.plugins_dir,
            "files": catalog.files,
            "providers": providers,
            "missing": catalog.missing.iter()
                .map(|(p, f)| serde_json::json!({"provider": p, "component": f}))
                .collect::<Vec<_>>(),
            "rejected": catalog.rejected.iter()
                .map(|(p, reason)| serde_json::json!({"provider": p, "reason": reason}))
                .collect::<Vec<_>>(),
        }));
    }
    println!("plugins folder: {}", config.plugins_dir.display());
    if catalog.files.is_empty() {
        println!("  (no .wasm files)");
    }
    for f in &catalog.files {
        match (&f.info, &f.reason) {
            (Some(info), None) => println!(
                "  {:<20} loaded    {} {} ({}): {}",
                f.file,
                info.name,
                info.version,
                info.summary(),
                info.description
            ),
            (Some(info), Some(reason)) => println!(
                "  {:<20} rejected  {reason}; its previous version ({} {}) keeps serving",
                f.file, info.name, info.version
            ),
            (None, reason) => println!(
                "  {:<20} rejected  {}",
                f.file,
                reason.as_deref().unwrap_or("")
            ),
        }
    }
    println!("providers:");
    for p in catalog.providers.values() {
        println!(
            "  {:<20} {} (default limit {})",
            p.name, p.component.file, p.default_limit
        );
    }
    for (provider, file) in &catalog.missing {
        println!("  {provider:<20} missing component {file}");
    }
    for (provider, reason) in &catalog.rejected {
        println!("  {provider:<20} rejected  {reason}");
    }
    Ok(())
}

fn plugins_new(args: &NewArgs) -> anyhow::Result<()> {
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    let written = crate::kit::templates::create(&args.name, args.lang, &dir)?;
    println!(
        "wrote {} files for provider `{}` in {}",
        written.len(),
        args.name,
        dir.display()
    );
    println!(
        "next: cd {} && {}",
        dir.display(),
        args.lang.build_hint(&args.name)
    );
    Ok(())
}

async fn plugins_test(config: &Config, args: TestArgs) -> anyhow::Result<ExitCode> {
    let reply = args
        .reply
        .as_deref()
        .map(crate::kit::conformance::read_reply)
        .transpose()?;
    let options = crate::kit::conformance::Options {
        values: args.values,
        secrets: args.secrets,
        reply,
        timed_calls: usize::from(args.calls),
    };
    let report = crate::kit::conformance::run(config, &args.file, options).await?;
    if args.json {
        print_json(&report)?;
    } else {
        print!("{}", report.table());
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn plugins_check(config: &Config, args: CheckArgs) -> anyhow::Result<ExitCode> {
    let host = PluginHost::new(config)?;
    let component = match host.load(&args.file).await {
        Ok(component) => Arc::new(component),
        Err(e) => {
            if args.json {
                print_json(&serde_json::json!({ "loadable": false, "reason": e.to_string() }))?;
            }
            eprintln!("not loadable: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let info = component.info.clone();
    let mut report = serde_json::json!({ "loadable": true, "info": info });
    if !args.json {
        println!(
            "{}: loadable: provider `{}` {} ({}): {}",
            component.file,
            info.name,
            info.version,
            info.summary(),
            info.description
        );
    }
    let Some(request) = args.request else {
        if args.json {
            print_json(&report)?;
        }
        return Ok(ExitCode::SUCCESS);
    };
    let input = ChatInput::parse(&read_input(&request)?)?;
    let mut config = config.clone();
    let values: std::collections::BTreeMap<String, crate::config::ConfigValue> = args
        .values
        .into_iter()
        .map(|(k, v)| (k, crate::config::ConfigValue::String(v)))
        .collect();
    let entry = config.providers.entry(info.name.clone()).or_default();
    // `--value base_url=…` is what an author points at a local mock: allow its host too.
    if let Some(crate::config::ConfigValue::String(url)) = values.get("base_url") {
        entry.base_url = Some(url.clone());
    }
    entry.config = values;
    let provider = host.bind(&config, &info.name, component).await?;
    let request = provider
        .request(&input, false)
        .map_err(anyhow::Error::msg)?;
    let outcome = provider.execute(request, None).await;
    let code = match outcome {
        Ok(output) => {
            if !args.json {
                println!("execute: ok: {}", serde_json::to_string(&output)?);
            }
            report["execute"] = serde_json::json!({ "ok": output });
            ExitCode::SUCCESS
        }
        Err(e) => {
            let (kind, _) = crate::attempt::classify(&e);
            if !args.json {
                eprintln!("execute: {kind}: {e}");
            }
            report["execute"] = serde_json::json!({ "error": e.to_string(), "kind": kind });
            ExitCode::FAILURE
        }
    };
    if args.json {
        print_json(&report)?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use crate::config::redact_url;

    #[test]
    fn database_passwords_never_reach_messages() {
        assert_eq!(
            redact_url("postgres://lanes:s3cret@db:5432/q"),
            "postgres://lanes:***@db:5432/q"
        );
        assert_eq!(redact_url("postgres://lanes@db/q"), "postgres://lanes@db/q");
        assert_eq!(redact_url("sqlite://lanes.db"), "sqlite://lanes.db");
    }
}
