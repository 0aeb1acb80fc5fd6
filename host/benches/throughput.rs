//! `cargo bench`: end-to-end figures on SQLite with the real stub component.
//!
//! 1. Throughput of 20,000 no-op executions with a generous limit.
//! 2. Achieved vs ideal throughput of three latency-bound lanes (limits 2, 3, 3; 20 ms each;
//!    ideal = the sum of limit / latency).
//! 3. p50 and p99 of the time from submit to start, for submissions that arrive one at a time
//!    at a lane with free slots.
//! 4. Restart-to-first-dispatch: from `Daemon::start` to a queued execution starting, with a
//!    cold compile cache and with a warm one.
//! 5. The no-op throughput on PostgreSQL with 1 worker and with 3 (in one process, each with
//!    its own engine and connections), in a schema of its own. `LANES_TEST_PG` names the
//!    server (default postgres://postgres@127.0.0.1:5432/test); skipped with a line when
//!    none answers.
//!
//! `cargo bench -- --quick` runs a smaller version (CI uses it to prove the benchmark runs).
//! The machines are shared and noisy: compare ratios within one run, not across runs.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanes::config::{ConfigValue, ProviderConfig};
use lanes::model::{ChatInput, NewExecution, Status};
use lanes::report::{max_overlap, percentile};
use lanes::{Config, Daemon, Queue, SqliteQueue};

fn plugins_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("LANES_TEST_PLUGINS") {
            return PathBuf::from(dir);
        }
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let status = Command::new("bash")
            .arg(root.join("scripts/build-plugins"))
            .status()
            .expect("running scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed");
        root.join("target/plugins")
    })
    .clone()
}

fn stub(limit: u32, latency_ms: u32) -> ProviderConfig {
    let mut values = std::collections::BTreeMap::new();
    values.insert(
        "latency_ms".to_string(),
        ConfigValue::Integer(latency_ms.into()),
    );
    ProviderConfig {
        component: Some("stub.wasm".into()),
        limit: Some(limit),
        config: values,
        ..ProviderConfig::default()
    }
}

fn config(dir: &tempfile::TempDir, providers: &[(&str, ProviderConfig)]) -> Config {
    let mut config = Config {
        database_url: format!("sqlite://{}", dir.path().join("bench.db").display()),
        plugins_dir: plugins_dir(),
        cache: lanes::config::CacheConfig {
            enabled: true,
            dir: Some(dir.path().join("cache")),
            ..lanes::config::CacheConfig::default()
        },
        ..Config::default()
    };
    for (name, p) in providers {
        config.providers.insert(name.to_string(), p.clone());
    }
    config
}

fn jobs(provider: &str, n: usize) -> Vec<NewExecution> {
    (0..n)
        .map(|i| NewExecution {
            provider: provider.to_string(),
            input: ChatInput::prompt(format!("bench {i}")),
            priority: 0,
            max_attempts: 1,
        })
        .collect()
}

async fn wait_done(queue: &dyn Queue, total: u64) {
    loop {
        let counts = queue.counts().await.expect("counts");
        let done: u64 = counts.values().map(|c| c.completed + c.failed).sum();
        if done >= total {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn start(config: Config) -> (Daemon, Arc<SqliteQueue>) {
    let queue = Arc::new(
        SqliteQueue::open(&config.database_url)
            .await
            .expect("queue"),
    );
    let daemon = Daemon::start(config, queue.clone()).await.expect("daemon");
    (daemon, queue)
}

async fn noop_throughput(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, queue) = start(config(&dir, &[("noop", stub(32, 0))])).await;
    let started = Instant::now();
    daemon.submit_many(&jobs("noop", n)).await.unwrap();
    let submitted = started.elapsed();
    wait_done(queue.as_ref(), n as u64).await;
    let elapsed = started.elapsed();
    let rows = queue.list(Some("noop")).await.unwrap();
    let completed = rows
        .iter()
        .filter(|e| e.status == Status::Completed)
        .count();
    assert_eq!(completed, n, "every no-op execution completes");
    println!(
        "noop: {n} executions end to end in {:.2} s = {:.0} executions/s \
         (submit in one transaction: {:.0} ms; limit 32)",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        submitted.as_secs_f64() * 1000.0
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

async fn latency_bound(scale: usize) {
    let lanes = [("ollama", 2u32), ("claude", 3), ("openai", 3)];
    let latency_ms = 20u32;
    let dir = tempfile::tempdir().unwrap();
    let providers: Vec<(&str, ProviderConfig)> = lanes
        .iter()
        .map(|(n, l)| (*n, stub(*l, latency_ms)))
        .collect();
    let (daemon, queue) = start(config(&dir, &providers)).await;
    // Each lane gets work for the same ideal duration: limit * scale executions.
    let mut batch = Vec::new();
    for (name, limit) in lanes {
        batch.extend(jobs(name, limit as usize * scale));
    }
    let total = batch.len();
    let started = Instant::now();
    daemon.submit_many(&batch).await.unwrap();
    wait_done(queue.as_ref(), total as u64).await;
    let elapsed = started.elapsed().as_secs_f64();
    let ideal: f64 = lanes
        .iter()
        .map(|(_, l)| *l as f64 / (latency_ms as f64 / 1000.0))
        .sum();
    let achieved = total as f64 / elapsed;
    println!(
        "latency-bound: {total} executions (limits 2/3/3, {latency_ms} ms each) in {elapsed:.2} s: \
         achieved {achieved:.0}/s, ideal {ideal:.0}/s, ratio {:.3}",
        achieved / ideal
    );
    for (name, limit) in lanes {
        let rows = queue.list(Some(name)).await.unwrap();
        let max = max_overlap(lanes::report::intervals(&rows));
        println!("  {name}: limit {limit}, max concurrency {max}");
    }
    daemon.shutdown(Duration::from_secs(5)).await;
}

async fn submit_to_start(n: usize) {
    let dir = tempfile::tempdir().unwrap();
    let (daemon, queue) = start(config(&dir, &[("idle", stub(8, 0))])).await;
    for i in 0..n {
        daemon.submit(&jobs("idle", 1)[0]).await.unwrap();
        if i % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    wait_done(queue.as_ref(), n as u64).await;
    let rows = queue.list(Some("idle")).await.unwrap();
    let mut waits: Vec<i64> = rows
        .iter()
        .filter_map(|e| Some(e.started_at? - e.created_at))
        .collect();
    println!(
        "submit-to-start: {n} local submissions to a lane with free slots: p50 {} ms, p99 {} ms, max {} ms",
        percentile(&mut waits, 50.0).unwrap_or(-1),
        percentile(&mut waits, 99.0).unwrap_or(-1),
        waits.iter().max().copied().unwrap_or(-1)
    );
    daemon.shutdown(Duration::from_secs(5)).await;
}

async fn restart_to_first_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    // A fresh cache folder: the first start compiles, the second reads the cache.
    let config = config(&dir, &[("first", stub(1, 0))]);
    let queue = Arc::new(
        SqliteQueue::open(&config.database_url)
            .await
            .expect("queue"),
    );
    let mut figures = Vec::new();
    for label in ["cold", "warm"] {
        let id = queue.submit(&jobs("first", 1)[0]).await.unwrap();
        let started = Instant::now();
        let daemon = Daemon::start(config.clone(), queue.clone())
            .await
            .expect("daemon");
        loop {
            let e = queue.get(id).await.unwrap().unwrap();
            if e.status != Status::Pending {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        figures.push(format!(
            "{label} cache {:.0} ms",
            started.elapsed().as_secs_f64() * 1000.0
        ));
        daemon.shutdown(Duration::from_secs(5)).await;
    }
    let components = lanes::plugin::wasm_files(&config.plugins_dir).len();
    println!(
        "restart-to-first-dispatch ({components} components in {}): {}",
        config.plugins_dir.display(),
        figures.join(", ")
    );
}

async fn pg_noop(n: usize, workers: usize) {
    let base = std::env::var("LANES_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let admin = match sqlx::PgPool::connect(&base).await {
        Ok(pool) => pool,
        Err(e) => {
            println!("postgres: skipped, cannot connect to {base} ({e}); set LANES_TEST_PG");
            return;
        }
    };
    let schema = format!("lanes_bench_{}_{workers}", std::process::id());
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&admin)
        .await
        .expect("schema");
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir, &[("noop", stub(32, 0))]);
    config.database_url = format!("{base}?options[search_path]={schema}");
    let mut daemons = Vec::new();
    let mut queues = Vec::new();
    for _ in 0..workers {
        let queue = lanes::store::open(&config.database_url)
            .await
            .expect("queue");
        daemons.push(
            Daemon::start(config.clone(), queue.clone())
                .await
                .expect("daemon"),
        );
        queues.push(queue);
    }
    let started = Instant::now();
    queues[0].submit_many(&jobs("noop", n)).await.unwrap();
    wait_done(queues[0].as_ref(), n as u64).await;
    let elapsed = started.elapsed();
    let rows = queues[0].list(Some("noop")).await.unwrap();
    let completed = rows
        .iter()
        .filter(|e| e.status == Status::Completed)
        .count();
    assert_eq!(completed, n);
    let max = max_overlap(lanes::report::intervals(&rows));
    println!(
        "postgres noop: {n} executions, {workers} worker(s), fleet limit 32: {:.2} s = {:.0} executions/s (max concurrency {max})",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    for daemon in daemons {
        daemon.shutdown(Duration::from_secs(5)).await;
    }
    let _ = sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (noop, scale, probes) = if quick {
            (2_000, 20, 100)
        } else {
            (20_000, 100, 500)
        };
        println!(
            "lanes benchmark ({}), SQLite, stub component",
            if quick { "quick" } else { "full" }
        );
        noop_throughput(noop).await;
        latency_bound(scale).await;
        submit_to_start(probes).await;
        restart_to_first_dispatch().await;
        let pg_n = if quick { 1_000 } else { 20_000 };
        pg_noop(pg_n, 1).await;
        pg_noop(pg_n, 3).await;
    });
}
