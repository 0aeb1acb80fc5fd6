//! Shared test harness: real components built from `plugins/`, a real SQLite file per test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use lanes::Queue;
use lanes::config::{ApiConfig, CacheConfig, ConfigValue, ProviderConfig};
use lanes::model::{ChatInput, Execution, NewExecution, Status};
use lanes::{Config, Daemon, SqliteQueue};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// The folder of built provider components. `scripts/test` builds them once per run and
/// sets `LANES_TEST_PLUGINS`; without it, the first test of each process runs the build
/// (a no-op when nothing changed).
pub fn plugins_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        if let Some(dir) = std::env::var_os("LANES_TEST_PLUGINS") {
            return PathBuf::from(dir);
        }
        let root = repo_root();
        let status = Command::new("bash")
            .arg(root.join("scripts/build-plugins"))
            .status()
            .expect("running scripts/build-plugins");
        assert!(status.success(), "scripts/build-plugins failed");
        root.join("target/plugins")
    })
}

/// A built component file.
pub fn component(name: &str) -> PathBuf {
    let path = plugins_dir().join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// A built test fixture (a component that is not a provider).
pub fn fixture(name: &str) -> PathBuf {
    plugins_dir(); // builds fixtures too
    let path = plugins_dir()
        .parent()
        .expect("plugins dir has a parent")
        .join("fixtures")
        .join(name);
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// One test's world: a temp folder with a plugins folder holding `stub.wasm`, a SQLite file
/// and a config whose intervals suit tests.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub config: Config,
}

impl TestEnv {
    pub fn new() -> Self {
        // Warnings and errors go to the test's captured output; RUST_LOG shows more.
        lanes::logging::init(lanes::logging::LogFormat::Text, "warn");
        let dir = tempfile::tempdir().expect("temp dir");
        let plugins = dir.path().join("plugins");
        std::fs::create_dir(&plugins).unwrap();
        std::fs::copy(component("stub.wasm"), plugins.join("stub.wasm")).unwrap();
        let config = Config {
            database_url: format!("sqlite://{}", dir.path().join("lanes.db").display()),
            plugins_dir: plugins,
            poll_interval_ms: 200,
            limits_refresh_ms: 100,
            plugins_rescan_ms: 200,
            cache: CacheConfig {
                enabled: true,
                dir: Some(repo_root().join("target/test-cache")),
                ..CacheConfig::default()
            },
            // Tests run side by side: each API on a free port.
            api: ApiConfig {
                addr: "127.0.0.1:0".into(),
                ..ApiConfig::default()
            },
            ..Config::default()
        };
        TestEnv { dir, config }
    }

    /// Copies the built component `file` into this env's plugins folder.
    pub fn add_component(&mut self, file: &str) -> &mut Self {
        std::fs::copy(component(file), self.plugins().join(file)).unwrap();
        self
    }

    /// Configures provider `name` (served by `file`) with a base URL and a model.
    pub fn adapter(
        &mut self,
        name: &str,
        file: &str,
        base_url: &str,
        model: &str,
    ) -> &mut ProviderConfig {
        self.config.providers.insert(
            name.to_string(),
            ProviderConfig {
                component: Some(file.to_string()),
                base_url: Some(base_url.to_string()),
                model: Some(model.to_string()),
                ..ProviderConfig::default()
            },
        );
        self.config.providers.get_mut(name).unwrap()
    }

    pub fn plugins(&self) -> &Path {
        &self.config.plugins_dir
    }

    /// Registers the text-only echo component built against lanes:provider 0.1.2 (the
    /// fixture `wit-0-1-2.wasm`) under `name`: it answers `wit-0-1-2 echoes: LAST MESSAGE`.
    pub fn text_only(&mut self, name: &str, limit: Option<u32>) -> &mut Self {
        let file = "wit-0-1-2.wasm";
        let to = self.plugins().join(file);
        if !to.exists() {
            std::fs::copy(fixture(file), &to).unwrap();
        }
        self.config.providers.insert(
            name.to_string(),
            ProviderConfig {
                component: Some(file.into()),
                limit,
                ..ProviderConfig::default()
            },
        );
        self
    }

    /// Registers `stub.wasm` under `name` with `limit` and config values.
    pub fn stub(&mut self, name: &str, limit: Option<u32>, values: &[(&str, &str)]) -> &mut Self {
        let config: BTreeMap<String, ConfigValue> = values
            .iter()
            .map(|(k, v)| (k.to_string(), ConfigValue::String(v.to_string())))
            .collect();
        self.config.providers.insert(
            name.to_string(),
            ProviderConfig {
                component: Some("stub.wasm".into()),
                limit,
                config,
                ..ProviderConfig::default()
            },
        );
        self
    }

    pub async fn queue(&self) -> Arc<SqliteQueue> {
        Arc::new(SqliteQueue::open(&self.config.database_url).await.unwrap())
    }

    /// The queue behind `database_url`, whichever backend it is.
    pub async fn any_queue(&self) -> Arc<dyn Queue> {
        lanes::store::open(&self.config.database_url).await.unwrap()
    }

    pub async fn start(&self) -> (Daemon, Arc<SqliteQueue>) {
        let queue = self.queue().await;
        let daemon = Daemon::start(self.config.clone(), queue.clone())
            .await
            .expect("daemon starts");
        (daemon, queue)
    }

    /// Writes the config as TOML for the `lanes` binary, and returns its path.
    ///
    /// A temporary file and a rename: a worker started a moment ago may be reading the
    /// file, and a truncated one is a valid, empty config that points at the defaults.
    pub fn write_config(&self) -> PathBuf {
        let path = self.dir.path().join("lanes.toml");
        let tmp = tempfile::NamedTempFile::new_in(self.dir.path()).unwrap();
        std::fs::write(tmp.path(), toml::to_string(&self.config).unwrap()).unwrap();
        tmp.persist(&path).unwrap();
        path
    }

    /// Runs the `lanes` binary with this env's config.
    pub fn lanes(&self, args: &[&str]) -> Output {
        let config = self.write_config();
        Command::new(env!("CARGO_BIN_EXE_lanes"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .expect("running lanes")
    }

    /// A `lanes serve` child process with this env's config, logging to `serve.log`.
    pub fn spawn_serve(&self) -> std::process::Child {
        self.spawn_worker("serve")
    }

    /// A `lanes serve ARGS` child process logging to `serve.log`.
    pub fn spawn_serve_with(&self, args: &[&str]) -> std::process::Child {
        self.spawn_worker_with("serve", args)
    }

    /// A `lanes serve` child process logging to `NAME.log`.
    pub fn spawn_worker(&self, name: &str) -> std::process::Child {
        self.spawn_worker_with(name, &[])
    }

    /// A `lanes serve ARGS` child process logging to `NAME.log`.
    pub fn spawn_worker_with(&self, name: &str, args: &[&str]) -> std::process::Child {
        let config = self.write_config();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{name}.log")))
            .unwrap();
        Command::new(env!("CARGO_BIN_EXE_lanes"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning lanes serve")
    }

    pub fn serve_log(&self) -> String {
        self.log("serve")
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// The same world on PostgreSQL, in a schema of its own; `None` (with one line saying
    /// how to enable the test) where no server answers, except under CI, where that fails.
    pub async fn postgres() -> Option<(TestEnv, PgSchema)> {
        let schema = PgSchema::create().await?;
        let mut env = TestEnv::new();
        env.config.database_url = schema.url.clone();
        Some((env, schema))
    }
}

/// A one-message execution for `provider` whose stub behaviour is `extra`.
pub fn job(provider: &str, extra: serde_json::Value) -> NewExecution {
    NewExecution {
        tenant: None,
        cache: None,
        provider: provider.to_string(),
        input: ChatInput::prompt("hello").with_extra(extra),
        priority: 0,
        max_attempts: 3,
        route: None,
        defer: Default::default(),
    }
}

/// `n` jobs for `provider` that sleep `ms`.
pub fn sleepers(provider: &str, n: usize, ms: u64) -> Vec<NewExecution> {
    (0..n)
        .map(|_| job(provider, serde_json::json!({ "sleep_ms": ms })))
        .collect()
}

/// Waits until every execution of `provider` (or all) is terminal; panics after `timeout`.
pub async fn wait_terminal(
    queue: &dyn Queue,
    provider: Option<&str>,
    timeout: Duration,
) -> Vec<Execution> {
    match try_wait_terminal(queue, provider, timeout).await {
        Ok(rows) => rows,
        Err(open) => panic!("{open}"),
    }
}

/// Waits until every execution of `provider` (or all) is terminal; after `timeout`, says
/// which are still open.
pub async fn try_wait_terminal(
    queue: &dyn Queue,
    provider: Option<&str>,
    timeout: Duration,
) -> Result<Vec<Execution>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = queue.list(provider).await.unwrap();
        if rows.iter().all(|e| e.status.is_terminal()) {
            return Ok(rows);
        }
        if Instant::now() > deadline {
            let open: Vec<_> = rows
                .iter()
                .filter(|e| !e.status.is_terminal())
                .map(|e| (e.id, e.status, e.attempts, e.worker.clone()))
                .collect();
            return Err(format!("not terminal after {timeout:?}: {open:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `check` holds for the rows of `provider`.
pub async fn wait_until(
    queue: &dyn Queue,
    provider: Option<&str>,
    timeout: Duration,
    what: &str,
    check: impl Fn(&[Execution]) -> bool,
) -> Vec<Execution> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = queue.list(provider).await.unwrap();
        if check(&rows) {
            return rows;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Counts of each status.
pub fn count(rows: &[Execution], status: Status) -> usize {
    rows.iter().filter(|e| e.status == status).count()
}

/// How many executions overlapped the start of `e` (itself included).
pub fn running_at_start(rows: &[Execution], start: i64) -> usize {
    rows.iter()
        .filter(|o| {
            o.started_at.is_some_and(|s| s <= start) && o.finished_at.is_none_or(|f| f > start)
        })
        .count()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A schema of its own in the test PostgreSQL database, dropped when the test ends.
pub struct PgSchema {
    pub url: String,
    base: String,
    name: String,
}

/// The PostgreSQL server the tests use.
pub fn pg_base_url() -> String {
    std::env::var("LANES_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

impl PgSchema {
    pub async fn create() -> Option<PgSchema> {
        let base = pg_base_url();
        let pool = match sqlx::PgPool::connect(&base).await {
            Ok(pool) => pool,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("PostgreSQL tests could not run in CI: cannot connect to {base}: {e}")
            }
            Err(e) => {
                eprintln!(
                    "skipping PostgreSQL test: cannot connect to {base} ({e}); start PostgreSQL \
                     or set LANES_TEST_PG=postgres://USER@HOST:PORT/DB to enable it"
                );
                return None;
            }
        };
        let name = format!("lanes_test_{}_{:08x}", std::process::id(), rand_u32());
        sqlx::query(&format!("CREATE SCHEMA {name}"))
            .execute(&pool)
            .await
            .expect("creating a test schema");
        pool.close().await;
        let separator = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{separator}options[search_path]={name}");
        Some(PgSchema { url, base, name })
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    );
    h.finish() as u32
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // A runtime of its own: this may run inside (or after) the test's runtime.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let pool = sqlx::PgPool::connect(&base).await.ok()?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"))
                    .execute(&pool)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// Waits until `NAME.log` of `env` holds `text`; panics with the log after `timeout`.
pub async fn wait_for_log(env: &TestEnv, name: &str, text: &str, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let log = env.log(name);
        if log.contains(text) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no `{text}` in {name}.log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The API address a `lanes serve` logged.
pub async fn api_addr(env: &TestEnv, name: &str) -> std::net::SocketAddr {
    let log = wait_for_log(
        env,
        name,
        "API listening on http://",
        Duration::from_secs(60),
    )
    .await;
    let rest = &log[log.find("API listening on http://").unwrap() + 24..];
    let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
    addr.trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .unwrap_or_else(|e| panic!("address `{addr}` in the log: {e}"))
}

/// SIGTERM, then waits for the child to exit (killing it after 30 s).
pub fn terminate(child: &mut std::process::Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("lanes serve did not exit within 30 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
