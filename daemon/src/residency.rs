//! Which models are loaded, where, and for how long. Loads on demand (one runner process per
//! model), keeps each for its keep_alive (default from config, per model or per request; 0 unloads
//! after the request, negative pins it), bounds the number of loaded models and their memory
//! (LRU eviction of idle models when a new one does not fit; a clear needed-vs-available error when
//! it never can), restarts crashed runners with backoff, and unloads everything at shutdown.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyperllama_proto::v1 as pb;
use tokio::sync::Mutex as AsyncMutex;

use crate::admission::{GlobalQueue, ModelQueue};
use crate::config::RunnersConfig;
use crate::engine::served::{EnginesConfig, ServedKind};
use crate::error::{Error, Result};
use crate::runner::process::{RunnerProcess, RunnerSpec};

/// What to load: a model file and how to run it.
#[derive(Debug, Clone)]
pub struct LoadRequest {
    /// Display name.
    pub name: String,
    /// Manifest digest (identity of the model).
    pub digest: String,
    /// The GGUF blob.
    pub model_path: PathBuf,
    /// Size of its files.
    pub size_bytes: u64,
    /// GPUs to pin to (admins); empty lets residency choose.
    pub gpus: Vec<u32>,
    /// Engine name ("" = default).
    pub engine: String,
    /// Context per sequence (0 = configured default).
    pub context_length: u32,
    /// Keep-alive seconds for this use (`None` = the model's or the configured default).
    pub keep_alive: Option<i64>,
    /// KV bytes one token of context costs, when the model's metadata tells (0 = unknown).
    pub kv_bytes_per_token: u64,
    /// The files of a model stored as a Hugging Face folder (name, blob); empty for a GGUF.
    pub folder: Vec<(String, PathBuf)>,
}

/// A loaded model.
#[derive(Debug)]
pub struct Loaded {
    /// Display name.
    pub name: String,
    /// Manifest digest.
    pub digest: String,
    /// How its runner is started (kept to restart it).
    pub spec: RunnerSpec,
    /// Fair queue in front of it.
    pub queue: Arc<ModelQueue>,
    /// Memory it is accounted for.
    pub memory_bytes: u64,
    /// The folder of symlinks to its blobs that a served engine reads (removed on unload).
    pub model_dir: Option<PathBuf>,
    runner: Mutex<Arc<RunnerProcess>>,
    restarts: AtomicU32,
    active: AtomicU32,
    /// Unix seconds when it may be unloaded; 0 = never; u64::MAX = after the current requests.
    expires_at: AtomicU64,
    last_used: Mutex<Instant>,
    restarting: AsyncMutex<()>,
}

impl Loaded {
    /// The current runner.
    pub fn runner(&self) -> Arc<RunnerProcess> {
        Arc::clone(&self.runner.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Requests using it now.
    pub fn active(&self) -> u32 {
        self.active.load(Ordering::SeqCst)
    }

    /// Marks one request as using it until the guard drops; the guard then applies keep_alive.
    pub fn use_guard(self: &Arc<Self>, keep_alive_secs: i64) -> UseGuard {
        self.active.fetch_add(1, Ordering::SeqCst);
        UseGuard { loaded: Arc::clone(self), keep_alive_secs }
    }

    fn set_keep_alive(&self, secs: i64) {
        let expires = if secs < 0 { 0 } else { now_unix().saturating_add(secs.unsigned_abs()).max(1) };
        self.expires_at.store(expires, Ordering::SeqCst);
    }

    /// As `hyperctl ps` shows it.
    pub fn describe(&self) -> pb::RunningModel {
        let runner = self.runner();
        let expires = self.expires_at.load(Ordering::SeqCst);
        pb::RunningModel {
            name: self.name.clone(),
            digest: self.digest.clone(),
            engine: runner.health.engine.clone(),
            gpus: self.spec.gpus.clone(),
            cpus: self.spec.cpus.clone(),
            size_bytes: self.memory_bytes,
            vram_bytes: 0,
            kv_bytes: runner.health.kv_bytes,
            kv_huge_page_bytes: anon_huge_page_bytes(runner.pid),
            context_length: runner.health.context_length,
            expires_at: i64::try_from(expires).unwrap_or(i64::MAX),
            active_requests: self.active(),
            runner_pid: runner.pid,
        }
    }
}

/// Huge-page backed anonymous memory of a process (`AnonHugePages` + `Private_Hugetlb` in
/// `/proc/<pid>/smaps_rollup`).
pub fn anon_huge_page_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("AnonHugePages:") || l.starts_with("Private_Hugetlb:"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum::<u64>()
        * 1024
}

/// KV bytes one token of context costs (f16 keys and values in every layer), from the GGUF's
/// attention metadata; `None` when the file does not say.
pub fn kv_bytes_per_token(model: &std::path::Path) -> Option<u64> {
    let file = crate::gguf::read_file(model, &crate::gguf::Limits::default()).ok()?;
    let count = |key: &str| file.get(key).and_then(crate::gguf::Value::as_u64);
    let arch = file.model_info().ok()?.architecture;
    let layers = count(&format!("{arch}.block_count"))?;
    let heads = count(&format!("{arch}.attention.head_count"))?.max(1);
    let kv_heads = count(&format!("{arch}.attention.head_count_kv")).unwrap_or(heads);
    let embedding = count(&format!("{arch}.embedding_length")).unwrap_or(0);
    let key_len = count(&format!("{arch}.attention.key_length")).unwrap_or(embedding / heads);
    let value_len = count(&format!("{arch}.attention.value_length")).unwrap_or(key_len);
    Some(layers * kv_heads * (key_len + value_len) * 2)
}

/// Where a served engine runs: its folder of links, its GPUs and its cache.
#[derive(Debug)]
struct ServedPlace<'a> {
    dir: &'a std::path::Path,
    gpus: &'a [u32],
    cache: &'a std::path::Path,
}

/// What a served engine's runner is started with.
#[derive(Debug)]
struct ServedLaunch {
    /// Runner flags for the engine.
    args: Vec<String>,
    /// Context per sequence (the configured one, at most the model's).
    context_length: u32,
    /// KV cache bytes for all sequences.
    kv_bytes: u64,
}

/// Memory a served engine's server needs besides weights and KV cache.
const SERVED_ENGINE_MARGIN: u64 = 2 << 30;

/// Kills what is left of a served engine's process group once its runner is gone (the runner
/// normally stops it; a runner killed with SIGKILL cannot).
fn reap_engine_group(runner: &RunnerProcess) {
    if let Ok(pgid) = i32::try_from(runner.health.engine_pgid)
        && pgid > 1
    {
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
    }
}

/// Held while a request uses a model.
#[derive(Debug)]
pub struct UseGuard {
    loaded: Arc<Loaded>,
    keep_alive_secs: i64,
}

impl Drop for UseGuard {
    fn drop(&mut self) {
        *self.loaded.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.loaded.set_keep_alive(self.keep_alive_secs);
        self.loaded.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Bytes as people read them.
pub fn human_bytes(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    if b >= 1e9 { format!("{:.1} GB", b / 1e9) } else { format!("{:.0} MB", (b / 1e6).max(1.0)) }
}

/// The residency manager.
#[derive(Debug)]
pub struct Residency {
    config: Mutex<RunnersConfig>,
    engines: Mutex<(EnginesConfig, PathBuf)>,
    runners_dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<Loaded>>>,
    load_lock: AsyncMutex<()>,
    global: Arc<GlobalQueue>,
    next_socket: AtomicU32,
    kernel_cache: Mutex<Option<PathBuf>>,
}

/// The GPU a native-engine load that names none runs on: the one with the most free memory.
fn native_default_gpu(found: &[hyperllama_proto::v1::GpuInfo]) -> Option<Vec<u32>> {
    found.iter().max_by_key(|g| g.free_bytes).map(|g| vec![g.index])
}

impl Residency {
    /// A manager starting runners with sockets under `runners_dir` (created 0700).
    pub fn new(config: RunnersConfig, runners_dir: PathBuf, global: Arc<GlobalQueue>) -> Result<Arc<Self>> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&runners_dir)
            .map_err(Error::io(format!("create {}", runners_dir.display())))?;
        std::fs::set_permissions(&runners_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::io(format!("set mode of {}", runners_dir.display())))?;
        Ok(Arc::new(Self {
            config: Mutex::new(config),
            engines: Mutex::new((EnginesConfig::default(), runners_dir.join("engines-cache"))),
            runners_dir,
            loaded: Mutex::new(HashMap::new()),
            load_lock: AsyncMutex::new(()),
            global,
            next_socket: AtomicU32::new(0),
            kernel_cache: Mutex::new(None),
        }))
    }

    /// Applies a reloaded configuration to future loads.
    pub fn set_config(&self, config: RunnersConfig) {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
    }

    fn config(&self) -> RunnersConfig {
        self.config.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Where runners keep compiled GPU kernels (`<cache_dir>/kernels`): the daemon's cache, not
    /// the `$HOME` of whoever started it.
    pub fn set_kernel_cache(&self, dir: PathBuf) {
        *self.kernel_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(dir);
    }

    /// Applies `[engines]`; `default_cache` is `<cache_dir>/engines`, used unless configured.
    pub fn set_engines(&self, engines: EnginesConfig, default_cache: PathBuf) {
        *self.engines.lock().unwrap_or_else(|e| e.into_inner()) = (engines, default_cache);
    }

    fn engines(&self) -> (EnginesConfig, PathBuf) {
        let (config, default_cache) = self.engines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let cache = config.cache_dir.clone().unwrap_or(default_cache);
        (config, cache)
    }

    /// The service-wide admission bound.
    pub fn global_queue(&self) -> &Arc<GlobalQueue> {
        &self.global
    }

    /// Loaded models.
    pub fn list(&self) -> Vec<Arc<Loaded>> {
        let mut models: Vec<_> =
            self.loaded.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models
    }

    fn find(&self, digest: &str) -> Option<Arc<Loaded>> {
        self.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(digest).cloned()
    }

    /// Default keep-alive seconds.
    pub fn default_keep_alive(&self) -> i64 {
        let secs = self.config().keep_alive.as_secs();
        i64::try_from(secs).unwrap_or(i64::MAX)
    }

    /// The memory budget in bytes (configured, or 90% of MemTotal).
    pub fn memory_budget(&self) -> u64 {
        let configured = self.config().memory_budget_bytes().unwrap_or(0);
        if configured > 0 {
            return configured;
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let total_kb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        total_kb * 1024 / 10 * 9
    }

    async fn estimate(&self, request: &LoadRequest, spec: &RunnerSpec) -> u64 {
        let per_token = if request.kv_bytes_per_token > 0 {
            request.kv_bytes_per_token
        } else {
            let path = request.model_path.clone();
            tokio::task::spawn_blocking(move || kv_bytes_per_token(&path))
                .await
                .ok()
                .flatten()
                .unwrap_or(64 * 1024)
        };
        let kv = u64::from(spec.context_length) * u64::from(spec.parallel) * per_token;
        // Weights are mapped from the file; compute buffers and the runner itself add a margin.
        request.size_bytes + kv + 64 * 1024 * 1024
    }

    /// Returns the loaded model, loading it (and evicting idle models) when needed.
    pub async fn acquire(self: &Arc<Self>, request: &LoadRequest) -> Result<Arc<Loaded>> {
        if let Some(loaded) = self.find(&request.digest)
            && (request.gpus.is_empty() || request.gpus == loaded.spec.gpus)
        {
            return self.ensure_running(loaded).await;
        }
        let _serial = self.load_lock.lock().await;
        if let Some(loaded) = self.find(&request.digest) {
            if request.gpus.is_empty() || request.gpus == loaded.spec.gpus {
                return self.ensure_running(loaded).await;
            }
            self.unload(&loaded.digest).await;
        }
        let config = self.config();
        let (engines, engines_cache) = self.engines();
        let engine = match (request.engine.as_str(), request.folder.is_empty()) {
            ("", true) => "llama.cpp".to_string(),
            ("", false) => engines.folder_default.clone(),
            (named, _) => named.to_string(),
        };
        let number = self.next_socket.fetch_add(1, Ordering::SeqCst);
        let socket = self.runners_dir.join(format!("runner-{number}.sock"));
        // Served engines take `[engines] gpus` unless the load names GPUs; the native engine
        // too, else the GPU with the most free memory (it cannot run without one).
        let gpus = match ServedKind::from_name(&engine) {
            Some(_) if request.gpus.is_empty() => engines.gpus.clone(),
            None if engine == "native" && request.gpus.is_empty() && engines.gpus.is_empty() => {
                let (found, why) =
                    tokio::task::spawn_blocking(crate::inventory::gpus).await.unwrap_or_default();
                native_default_gpu(&found).ok_or_else(|| {
                    let why = if why.is_empty() { "no GPU found".to_string() } else { why };
                    Error::InvalidArgument(format!(
                        "the native engine needs an NVIDIA GPU and none is usable here ({why}); use --engine llama.cpp"
                    ))
                })?
            }
            None if engine == "native" && request.gpus.is_empty() => engines.gpus.clone(),
            _ => request.gpus.clone(),
        };
        let (model_path, model_dir, served) = match ServedKind::from_name(&engine) {
            Some(kind) => {
                let dir = self.runners_dir.join(format!("model-{number}"));
                let place = ServedPlace { dir: &dir, gpus: &gpus, cache: &engines_cache };
                let served = self.prepare_served(kind, request, &place, &engines, &config).await?;
                (dir.clone(), Some(dir), Some(served))
            }
            None if engine == "llama.cpp" && !request.folder.is_empty() => {
                return Err(Error::InvalidArgument(format!(
                    "{} is a Hugging Face folder; llama.cpp serves GGUF models: load it with --engine vllm or --engine max",
                    request.name
                )));
            }
            None if engine == "llama.cpp" => (request.model_path.clone(), None, None),
            None if engine == "native" && !request.folder.is_empty() => {
                return Err(Error::InvalidArgument(format!(
                    "{} is a Hugging Face folder; the native engine serves GGUF models for now",
                    request.name
                )));
            }
            // The runner reports a clear error when no GPU/driver is usable.
            None if engine == "native" => (request.model_path.clone(), None, None),
            None => {
                return Err(Error::InvalidArgument(format!(
                    "engine `{engine}` is not available in this version; use llama.cpp, native, vllm or max"
                )));
            }
        };
        let spec = RunnerSpec {
            name: request.name.clone(),
            model_path,
            engine,
            context_length: match &served {
                Some(served) => served.context_length,
                None if request.context_length > 0 => request.context_length,
                None => config.context_length,
            },
            parallel: config.parallel,
            threads: config.threads,
            // A GPU's runner runs on the cores of that GPU's NUMA node; CPU-only runners on the
            // configured set.
            cpus: gpus
                .first()
                .and_then(|gpu| crate::inventory::gpu_local_cpus(*gpu))
                .unwrap_or_else(|| config.cpus.clone()),
            gpus,
            socket,
            engine_args: served.as_ref().map(|s| s.args.clone()).unwrap_or_default(),
            kernel_cache: self.kernel_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(),
        };
        let start_timeout = if model_dir.is_some() {
            engines.start_timeout.max(config.start_timeout)
        } else {
            config.start_timeout
        };
        let started = async {
            let needed = match &served {
                Some(served) => request.size_bytes + served.kv_bytes + SERVED_ENGINE_MARGIN,
                None => self.estimate(request, &spec).await,
            };
            self.make_room(&request.name, needed, config.max_loaded_models).await?;
            Ok::<_, Error>((needed, RunnerProcess::start(&spec, start_timeout).await?))
        }
        .await;
        let (needed, runner) = match started {
            Ok(started) => started,
            Err(error) => {
                if let Some(dir) = &model_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                return Err(error);
            }
        };
        let capacity = usize::try_from(runner.health.parallel.max(1)).unwrap_or(1);
        // Once loaded, account what the runner reports rather than the estimate.
        let needed = if runner.health.weights_bytes > 0 {
            runner.health.weights_bytes + runner.health.kv_bytes + 64 * 1024 * 1024
        } else {
            needed
        };
        let loaded = Arc::new(Loaded {
            name: request.name.clone(),
            digest: request.digest.clone(),
            queue: ModelQueue::new(capacity, Arc::clone(&self.global)),
            memory_bytes: needed,
            model_dir,
            spec,
            runner: Mutex::new(Arc::new(runner)),
            restarts: AtomicU32::new(0),
            active: AtomicU32::new(0),
            expires_at: AtomicU64::new(0),
            last_used: Mutex::new(Instant::now()),
            restarting: AsyncMutex::new(()),
        });
        loaded.set_keep_alive(request.keep_alive.unwrap_or_else(|| self.default_keep_alive()));
        self.loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(request.digest.clone(), Arc::clone(&loaded));
        self.watch(Arc::clone(&loaded));
        Ok(loaded)
    }

    /// Checks that a served engine is installed and can serve the folder, lays the folder out
    /// as symlinks to its blobs in `dir`, and returns the runner flags for the engine.
    async fn prepare_served(
        &self,
        kind: ServedKind,
        request: &LoadRequest,
        place: &ServedPlace<'_>,
        engines: &EnginesConfig,
        config: &RunnersConfig,
    ) -> Result<ServedLaunch> {
        let (dir, cache) = (place.dir, place.cache);
        let name = &request.name;
        if request.folder.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "the {} engine serves models stored as Hugging Face folders (`hyperctl create` with FROM ./folder); \
                 {name} is a single GGUF file: use llama.cpp",
                kind.name()
            )));
        }
        let install = engines.install(kind);
        let virtualenv = Some(PathBuf::from(&install.virtualenv)).filter(|p| !p.as_os_str().is_empty());
        kind.locate(virtualenv.as_deref()).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        for (file, blob) in &request.folder {
            std::os::unix::fs::symlink(blob, dir.join(file))
                .map_err(Error::io(format!("link {file} into {}", dir.display())))?;
        }
        let owned = dir.to_path_buf();
        let info = tokio::task::spawn_blocking(move || crate::engine::served::hf::inspect_dir(&owned))
            .await
            .map_err(|e| Error::Internal(format!("folder check: {e}")))?;
        let checked = info.map_err(|e| e.to_string()).and_then(|info| {
            kind.check_servable(&info, u32::try_from(place.gpus.len()).unwrap_or(0)).map(|()| info)
        });
        let info = match checked {
            Ok(info) => info,
            Err(why) => {
                let _ = std::fs::remove_dir_all(dir);
                return Err(Error::InvalidArgument(format!(
                    "{name} cannot be served by {}: {why}",
                    kind.name()
                )));
            }
        };
        let context = if request.context_length > 0 { request.context_length } else { config.context_length };
        let context = match u32::try_from(info.context_length) {
            Ok(model_max) if model_max > 0 => context.min(model_max),
            _ => context,
        };
        let kv = u64::from(context) * u64::from(config.parallel) * info.kv_bytes_per_token.max(1);
        let args = vec![
            "--engine-virtualenv".into(),
            install.virtualenv.clone(),
            "--engine-cache-dir".into(),
            cache.join(kind.name()).display().to_string(),
            "--gpu-memory-utilization".into(),
            install.gpu_memory_utilization.to_string(),
            "--kv-cache-bytes".into(),
            kv.to_string(),
            "--engine-start-timeout".into(),
            engines.start_timeout.as_secs().to_string(),
        ];
        Ok(ServedLaunch { args, context_length: context, kv_bytes: kv })
    }

    /// Evicts idle models, least recently used first, until `needed` fits the budget and a slot
    /// is free; errors when that is impossible.
    async fn make_room(&self, name: &str, needed: u64, max_loaded: u32) -> Result<()> {
        let budget = self.memory_budget();
        if needed > budget {
            return Err(Error::DoesNotFit {
                model: name.to_string(),
                needed: human_bytes(needed),
                available: human_bytes(budget),
                hint: " in total (residency.memory_budget); it can never be loaded here".into(),
            });
        }
        loop {
            let models = self.list();
            let used: u64 = models.iter().map(|m| m.memory_bytes).sum();
            let count = u32::try_from(models.len()).unwrap_or(u32::MAX);
            if used + needed <= budget && count < max_loaded.max(1) {
                return Ok(());
            }
            let victim = models
                .iter()
                .filter(|m| m.active() == 0 && m.expires_at.load(Ordering::SeqCst) != 0)
                .min_by_key(|m| *m.last_used.lock().unwrap_or_else(|e| e.into_inner()))
                .cloned();
            match victim {
                Some(victim) => {
                    tracing::info!(evicted = %victim.name, for_model = name, "evicting idle model to make room");
                    self.unload(&victim.digest).await;
                }
                None => {
                    return Err(Error::DoesNotFit {
                        model: name.to_string(),
                        needed: human_bytes(needed),
                        available: human_bytes(budget.saturating_sub(used)),
                        hint: format!(
                            "; {} loaded model(s) are busy or pinned (see `hyperctl ps`)",
                            models.len()
                        ),
                    });
                }
            }
        }
    }

    /// Restarts a crashed runner (with backoff) before handing the model out.
    async fn ensure_running(self: &Arc<Self>, loaded: Arc<Loaded>) -> Result<Arc<Loaded>> {
        if loaded.runner().exited().is_none() {
            return Ok(loaded);
        }
        let lock_owner = Arc::clone(&loaded);
        let _one = lock_owner.restarting.lock().await;
        if loaded.runner().exited().is_none() {
            return Ok(loaded);
        }
        let restarts = loaded.restarts.fetch_add(1, Ordering::SeqCst);
        let backoff =
            Duration::from_millis(250u64.saturating_mul(1 << restarts.min(7))).min(Duration::from_secs(30));
        tokio::time::sleep(backoff).await;
        let timeout = if loaded.model_dir.is_some() {
            self.engines().0.start_timeout.max(self.config().start_timeout)
        } else {
            self.config().start_timeout
        };
        let runner = RunnerProcess::start(&loaded.spec, timeout).await?;
        tracing::info!(model = %loaded.name, pid = runner.pid, restarts = restarts + 1, "runner restarted");
        *loaded.runner.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(runner);
        self.watch(Arc::clone(&loaded));
        Ok(loaded)
    }

    /// Logs a runner's unexpected exit and restarts it in the background, so the next request
    /// finds it ready.
    fn watch(self: &Arc<Self>, loaded: Arc<Loaded>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let runner = loaded.runner();
            let exit = runner.wait_exit().await;
            reap_engine_group(&runner);
            let still_loaded = this.find(&loaded.digest).is_some_and(|l| Arc::ptr_eq(&l, &loaded));
            if still_loaded && Arc::ptr_eq(&loaded.runner(), &runner) {
                tracing::error!(model = %loaded.name, pid = runner.pid, exit = %exit.description, "model runner exited; restarting");
                if let Err(error) = this.ensure_running(Arc::clone(&loaded)).await {
                    tracing::error!(model = %loaded.name, %error, "runner restart failed; the next request retries");
                }
            }
        });
    }

    /// The error for a request whose runner died under it.
    pub fn crash_error(loaded: &Loaded, runner: &RunnerProcess) -> Error {
        let exit = runner.exited().map(|e| e.description).unwrap_or_else(|| "stopped answering".into());
        Error::Runner(format!("model runner for {} {exit}; restarted", loaded.name))
    }

    /// Sets how long a loaded model stays (admins' Load; `hyperctl run --keepalive`).
    pub fn keep(&self, digest: &str, secs: i64) {
        if let Some(loaded) = self.find(digest) {
            loaded.set_keep_alive(secs);
        }
    }

    /// Unloads a model now (its requests in flight are cancelled by the runner's exit).
    pub async fn unload(&self, digest: &str) -> bool {
        let removed = self.loaded.lock().unwrap_or_else(|e| e.into_inner()).remove(digest);
        match removed {
            Some(loaded) => {
                tracing::info!(model = %loaded.name, "unloading");
                let runner = loaded.runner();
                runner.stop(Duration::from_secs(20)).await;
                reap_engine_group(&runner);
                let _ = std::fs::remove_file(&loaded.spec.socket);
                if let Some(dir) = &loaded.model_dir {
                    let _ = std::fs::remove_dir_all(dir);
                }
                true
            }
            None => false,
        }
    }

    /// Unloads models whose keep-alive passed and that serve nothing; run every second.
    pub async fn reap(&self) {
        let now = now_unix();
        for loaded in self.list() {
            let expires = loaded.expires_at.load(Ordering::SeqCst);
            if expires != 0 && expires <= now && loaded.active() == 0 {
                self.unload(&loaded.digest).await;
            }
        }
    }

    /// Stops every runner (shutdown).
    pub async fn unload_all(&self) {
        for loaded in self.list() {
            self.unload(&loaded.digest).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn native_loads_without_gpus_take_the_freest_gpu() {
        use hyperllama_proto::v1::GpuInfo;
        let gpu = |index, free_bytes| GpuInfo { index, free_bytes, ..GpuInfo::default() };
        assert_eq!(super::native_default_gpu(&[gpu(0, 10), gpu(1, 30), gpu(2, 20)]), Some(vec![1]));
        assert_eq!(super::native_default_gpu(&[]), None);
    }

    use super::*;

    #[test]
    fn human_bytes_reads_well() {
        assert_eq!(human_bytes(253_113_024), "253 MB");
        assert_eq!(human_bytes(8_000_000_000), "8.0 GB");
    }

    #[test]
    fn smaps_rollup_of_self_parses() {
        // The field exists on every Linux with THP; the value may be 0.
        let _ = anon_huge_page_bytes(std::process::id());
        assert_eq!(anon_huge_page_bytes(u32::MAX), 0);
    }
}
