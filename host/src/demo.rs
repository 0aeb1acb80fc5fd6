//! `lanes demo`: the product in under a minute, with no API keys. Stub components play
//! ollama, claude and openai (limits 2, 3 and 3, realistic latencies, a few transient
//! failures), a few hundred executions run on a fresh SQLite file, and each lane is shown
//! live, then summed up with the concurrency each provider really reached.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::{Config, ConfigValue, ProviderConfig};
use crate::daemon::Daemon;
use crate::model::{ChatInput, NewExecution, Status};
use crate::report;
use crate::store::Queue;
use crate::store::sqlite::SqliteQueue;

/// `lanes demo` options.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How many executions to run, spread over the three providers.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(3..=100_000))]
    pub executions: u32,
    /// The folder holding `stub.wasm` (default: the config's plugins_dir).
    #[arg(long)]
    pub plugins: Option<PathBuf>,
}

/// One simulated provider: name, limit, latency and jitter (ms), share of the executions.
struct Simulated {
    name: &'static str,
    limit: u32,
    latency_ms: u32,
    jitter_ms: u32,
    share: u32,
}

const PROVIDERS: [Simulated; 3] = [
    Simulated {
        name: "ollama",
        limit: 2,
        latency_ms: 450,
        jitter_ms: 200,
        share: 20,
    },
    Simulated {
        name: "claude",
        limit: 3,
        latency_ms: 300,
        jitter_ms: 150,
        share: 40,
    },
    Simulated {
        name: "openai",
        limit: 3,
        latency_ms: 250,
        jitter_ms: 120,
        share: 40,
    },
];

fn demo_config(base: &Config, plugins: PathBuf, db: &std::path::Path) -> Config {
    let mut config = base.clone();
    config.database_url = format!("sqlite://{}", db.display());
    config.plugins_dir = plugins;
    config.retry.base_ms = 200;
    config.retry.max_ms = 2000;
    config.providers.clear();
    for p in &PROVIDERS {
        let mut values = BTreeMap::new();
        values.insert("default_limit".into(), ConfigValue::Integer(p.limit.into()));
        values.insert(
            "latency_ms".into(),
            ConfigValue::Integer(p.latency_ms.into()),
        );
        values.insert("jitter_ms".into(), ConfigValue::Integer(p.jitter_ms.into()));
        values.insert("fail_rate".into(), ConfigValue::Float(0.03));
        values.insert(
            "model".into(),
            ConfigValue::String(format!("{}-sim", p.name)),
        );
        config.providers.insert(
            p.name.to_string(),
            ProviderConfig {
                component: Some("stub.wasm".into()),
                limit: None,
                config: values,
                ..ProviderConfig::default()
            },
        );
    }
    config
}

/// Runs the demo.
pub async fn run(base: &Config, args: DemoArgs) -> anyhow::Result<()> {
    let plugins = args.plugins.unwrap_or_else(|| base.plugins_dir.clone());
    if !plugins.join("stub.wasm").is_file() {
        anyhow::bail!(
            "the demo needs {}; build it with `scripts/build-plugins` (or pass --plugins DIR)",
            plugins.join("stub.wasm").display()
        );
    }
    let dir = tempfile::tempdir().context("creating a folder for the demo database")?;
    let db = dir.path().join("demo.db");
    // Only the stub: the real adapters in the same folder would claim the same names.
    let demo_plugins = dir.path().join("plugins");
    std::fs::create_dir(&demo_plugins).context("creating the demo plugins folder")?;
    std::fs::copy(plugins.join("stub.wasm"), demo_plugins.join("stub.wasm"))
        .context("copying stub.wasm")?;
    let config = demo_config(base, demo_plugins, &db);
    let queue = Arc::new(SqliteQueue::open_path(&db).await?);
    println!("lanes demo: a fresh queue at {}", db.display());
    println!(
        "providers (stub components): {}",
        PROVIDERS
            .iter()
            .map(|p| format!("{} limit {} ~{} ms", p.name, p.limit, p.latency_ms))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let daemon = Daemon::start(config, queue.clone()).await?;

    let total_share: u32 = PROVIDERS.iter().map(|p| p.share).sum();
    let mut batch = Vec::new();
    let mut per_provider = BTreeMap::new();
    for p in &PROVIDERS {
        let n = (args.executions * p.share / total_share).max(1);
        per_provider.insert(p.name, u64::from(n));
        for i in 0..n {
            batch.push(NewExecution {
                tenant: None,
                cache: None,
                provider: p.name.to_string(),
                input: ChatInput::prompt(format!("question {i} for {}", p.name)),
                priority: 0,
                max_attempts: 3,
                route: None,
                defer: Default::default(),
            });
        }
    }
    let started = Instant::now();
    daemon.submit_many(&batch).await?;
    println!("submitted {} executions\n", batch.len());

    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let style =
        ProgressStyle::with_template("{prefix:>8} [{bar:30.cyan/blue}] {pos:>3}/{len:3} {msg}")?
            .progress_chars("=> ");
    let bars: BTreeMap<&str, ProgressBar> = PROVIDERS
        .iter()
        .map(|p| {
            let bar = multi.add(ProgressBar::new(per_provider[p.name]));
            bar.set_style(style.clone());
            bar.set_prefix(p.name);
            (p.name, bar)
        })
        .collect();
    let mut peak: BTreeMap<String, u32> = BTreeMap::new();
    let mut last_line = Instant::now();
    loop {
        let counts = queue.counts().await?;
        let lanes = daemon.lanes();
        let mut done_all = true;
        for (name, bar) in &bars {
            let c = counts.get(*name).cloned().unwrap_or_default();
            let (limit, running) = lanes.get(*name).copied().unwrap_or((0, 0));
            let p = peak.entry(name.to_string()).or_default();
            *p = (*p).max(running);
            bar.set_position(c.completed + c.failed);
            bar.set_message(format!(
                "running {running}/{limit} {}  failed {}",
                "#".repeat(usize::try_from(running).unwrap_or(0)),
                c.failed
            ));
            done_all &= c.completed + c.failed >= per_provider[name];
        }
        if multi.is_hidden() && last_line.elapsed() >= Duration::from_secs(2) {
            // No terminal: a plain progress line every two seconds instead of bars.
            let line: Vec<String> = bars
                .iter()
                .map(|(name, bar)| format!("{name} {}/{}", bar.position(), per_provider[name]))
                .collect();
            println!("  progress: {}", line.join(", "));
            last_line = Instant::now();
        }
        if done_all {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for bar in bars.values() {
        bar.finish();
    }
    let elapsed = started.elapsed();
    daemon.shutdown(Duration::from_secs(5)).await;

    println!("\nsummary after {:.1} s:", elapsed.as_secs_f64());
    println!(
        "{:>8} {:>5} {:>9} {:>6} {:>8} {:>16}",
        "provider", "limit", "completed", "failed", "retried", "max concurrency"
    );
    for p in &PROVIDERS {
        let rows = queue.list(Some(p.name)).await?;
        let completed = rows
            .iter()
            .filter(|e| e.status == Status::Completed)
            .count();
        let failed = rows.iter().filter(|e| e.status == Status::Failed).count();
        let retried = rows.iter().filter(|e| e.attempts > 1).count();
        let max = report::max_overlap(report::intervals(&rows));
        println!(
            "{:>8} {:>5} {:>9} {:>6} {:>8} {:>16}",
            p.name, p.limit, completed, failed, retried, max
        );
    }
    println!(
        "\nEach lane ran up to its own limit, independently of the others; transient failures\n\
         were retried with backoff. Max concurrency comes from the recorded start and finish\n\
         times of finished executions."
    );
    Ok(())
}
