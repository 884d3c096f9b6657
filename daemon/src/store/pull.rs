//! Pulling a model into the store, reporting progress as Ollama does ("pulling manifest",
//! "pulling <id>" with completed/total per layer, "verifying sha256 digest", "writing manifest",
//! "success"). The manifest is fetched and checked, the size limit and free space are checked
//! before any byte is downloaded, missing blobs are fetched (one flight per blob however many
//! pulls want it), the model file is checked as GGUF, and only then is the model registered, in
//! one transaction. On any error nothing is registered and no partial blob is visible.

use std::sync::Arc;
use std::time::Duration;

use super::blobs::Layout;
use super::catalog::{self, BlobInfo, NewModel};
use super::config::StoreConfig;
use super::digest::Digest;
use super::manifest::{self, Layer, Manifest, ModelConfig};
use super::{Progress, ProgressSink, Requester, Store};
use crate::error::{Error, Result};
use crate::gguf;
use crate::registry::download::{self, BlobRequest};
use crate::registry::source::PullSource;
use crate::registry::{Http, hf, ollama};

/// How often per-layer progress is sent.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// A blob this pull needs, and where to get it.
#[derive(Debug, Clone)]
struct Wanted {
    digest: Digest,
    size: u64,
    url: reqwest::Url,
}

/// What the source said the model is.
struct Plan {
    /// The manifest as received (registry pulls); `None` when it is made here (HF, URL).
    manifest: Option<(Vec<u8>, Manifest)>,
    wanted: Vec<Wanted>,
    source: String,
}

/// Pulls `model` for `who` under `config`, sending progress to `progress`.
pub async fn pull(
    store: &Arc<Store>,
    config: &StoreConfig,
    model: &str,
    insecure: bool,
    who: &Requester,
    progress: &ProgressSink,
) -> Result<()> {
    let source = PullSource::parse(model, store.default_host())?;
    let name = source.name().clone();
    let shown = name.display(store.default_host());
    let outcome = pull_source(store, config, &source, &shown, insecure, who, progress).await;
    if let Err(e) = &outcome {
        let _ =
            catalog::record(store.db(), "pull", &name.canonical(), who.uid, &who.user, None, &e.to_string())
                .await;
        tracing::info!(model = %name, by = %who.user, error = %e, "pull failed");
    }
    outcome
}

async fn pull_source(
    store: &Arc<Store>,
    config: &StoreConfig,
    source: &PullSource,
    shown: &str,
    insecure: bool,
    who: &Requester,
    progress: &ProgressSink,
) -> Result<()> {
    let http = Arc::new(Http::new(config, insecure)?);
    send(progress, Progress::status("pulling manifest")).await;
    let plan = plan(&http, config, source, shown).await?;
    let layout = store.layout().clone();
    let missing: Vec<&Wanted> = plan.wanted.iter().filter(|w| !layout.has_blob(&w.digest, w.size)).collect();
    check_room(store, config, missing.iter().map(|w| w.size).sum(), shown).await?;

    let mut pins = store.pins();
    for w in &plan.wanted {
        pins.add(w.digest);
    }
    let request = |w: &Wanted| BlobRequest {
        url: w.url.clone(),
        digest: w.digest,
        size: w.size,
        part_size: config.download_part_size.0,
        parallel: usize::try_from(config.parallel_downloads).unwrap_or(4),
    };
    let mut tickets = Vec::new();
    for w in &plan.wanted {
        let (http, layout, request) = (Arc::clone(&http), layout.clone(), request(w));
        let ticket = store
            .downloads()
            .join_or_start(w.digest, w.size, move |flight| download::download(http, layout, request, flight));
        tickets.push((w.digest, ticket));
    }
    // Report each layer as Ollama does until every download ended.
    let mut last: Vec<Option<u64>> = vec![None; tickets.len()];
    loop {
        let mut all_done = true;
        for (i, (digest, ticket)) in tickets.iter().enumerate() {
            let state = ticket.state.borrow().clone();
            all_done &= state.outcome.is_some();
            if last[i] != Some(state.completed) {
                last[i] = Some(state.completed);
                let status = format!("pulling {}", digest.short());
                send(
                    progress,
                    Progress {
                        status,
                        digest: digest.to_string(),
                        total: state.total,
                        completed: state.completed,
                    },
                )
                .await;
            }
        }
        if all_done {
            break;
        }
        tokio::time::sleep(PROGRESS_EVERY).await;
    }
    let mut failure = None;
    for (_, ticket) in &mut tickets {
        if let Err(e) = ticket.finished().await {
            failure.get_or_insert(e);
        }
    }
    drop(tickets);
    if let Some(e) = failure {
        return Err(e);
    }
    send(progress, Progress::status("verifying sha256 digest")).await;
    let registered = register(store, &plan, source, shown, who).await;
    if registered.is_err() {
        let fetched: Vec<Digest> = plan.wanted.iter().map(|w| w.digest).collect();
        drop(pins);
        store.discard_unregistered(&fetched).await;
        return registered;
    }
    drop(pins);
    send(progress, Progress::status("writing manifest")).await;
    send(progress, Progress::status("success")).await;
    tracing::info!(model = %source.name(), by = %who.user, "pulled");
    Ok(())
}

async fn send(progress: &ProgressSink, p: Progress) {
    let _ = progress.send(p).await;
}

/// Asks the source what to fetch.
async fn plan(http: &Http, config: &StoreConfig, source: &PullSource, shown: &str) -> Result<Plan> {
    match source {
        PullSource::Registry(name) => {
            let base = ollama::base_url(http, name)?;
            let (bytes, manifest) = ollama::fetch_manifest(http, &base, name, shown).await?;
            let mut wanted: Vec<Wanted> = Vec::new();
            for layer in manifest.all_layers() {
                if wanted.iter().any(|w| w.digest == layer.digest) {
                    continue;
                }
                wanted.push(Wanted {
                    digest: layer.digest,
                    size: layer.size,
                    url: ollama::blob_url(&base, name, &layer.digest)?,
                });
            }
            Ok(Plan { manifest: Some((bytes, manifest)), wanted, source: name.host.clone() })
        }
        PullSource::HuggingFace { repo, selector, .. } => {
            let file = hf::resolve(http, &config.hf_endpoint, repo, selector).await?;
            let wanted = vec![Wanted { digest: file.digest, size: file.size, url: file.url }];
            Ok(Plan { manifest: None, wanted, source: format!("hf.co/{repo}/{}", file.path) })
        }
        PullSource::Url { url, digest, .. } => {
            http.check_url(url)?;
            let size = content_length(http, url).await?;
            Ok(Plan {
                manifest: None,
                wanted: vec![Wanted { digest: *digest, size, url: url.clone() }],
                source: url.to_string(),
            })
        }
    }
}

/// The size of a file at a URL, from a HEAD request (following redirects).
async fn content_length(http: &Http, url: &reqwest::Url) -> Result<u64> {
    let response = http.send(http.head(url), url).await?;
    if !response.status().is_success() {
        return Err(crate::registry::status_error(response.status(), url, &format!("{url}"), b""));
    }
    response
        .headers()
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            Error::Registry(format!(
                "{} did not say how large {} is",
                crate::registry::host_port(url),
                url.path()
            ))
        })
}

/// Refuses a pull whose new blobs pass `store.max_size` or would leave less than
/// `store.min_free_space` free.
pub async fn check_room(store: &Store, config: &StoreConfig, needed: u64, shown: &str) -> Result<()> {
    if needed == 0 {
        return Ok(());
    }
    let used = catalog::total_size(store.db()).await?;
    let limit = config.max_size.0;
    if limit > 0 && used.saturating_add(needed) > limit {
        return Err(Error::StoreFull(format!(
            "'{shown}' needs {} more but the store holds {} of its {} limit (store.max_size); remove models with \
             `hyperctl rm` or raise store.max_size",
            human(needed),
            human(used),
            human(limit)
        )));
    }
    let free = free_space(store.layout())?;
    if free < needed.saturating_add(config.min_free_space.0) {
        return Err(Error::StoreFull(format!(
            "'{shown}' needs {} but only {} is free on the store's file system, and store.min_free_space keeps {} free",
            human(needed),
            human(free),
            human(config.min_free_space.0)
        )));
    }
    Ok(())
}

fn free_space(layout: &Layout) -> Result<u64> {
    let stat = nix::sys::statvfs::statvfs(layout.blobs_dir())
        .map_err(|e| Error::io("check free space")(std::io::Error::from(e)))?;
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(stat.blocks_available()).saturating_mul(u64::from(stat.fragment_size())))
}

/// Bytes as Ollama prints them.
pub fn human(bytes: u64) -> String {
    #[allow(clippy::cast_precision_loss)]
    let b = bytes as f64;
    for (unit, scale) in [("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)] {
        if b >= scale {
            return format!("{:.1} {unit}", b / scale);
        }
    }
    format!("{bytes} B")
}

/// Checks the model file (and adapters, projectors) as GGUF and registers the model.
async fn register(
    store: &Store,
    plan: &Plan,
    source: &PullSource,
    shown: &str,
    who: &Requester,
) -> Result<()> {
    let layout = store.layout();
    let inspect = |digest: Digest| {
        let path = layout.blob(&digest);
        let limits = store.gguf_limits().clone();
        async move {
            tokio::task::spawn_blocking(move || gguf::read_file(&path, &limits).and_then(|f| f.model_info()))
                .await
                .map_err(|e| Error::Internal(format!("GGUF check task: {e}")))?
                .map_err(|e| Error::InvalidModel(format!("the model file of '{shown}' is not usable: {e}")))
        }
    };
    let name = source.name();
    let (bytes, manifest, infos) = match &plan.manifest {
        Some((bytes, manifest)) => {
            let mut infos = Vec::new();
            for layer in &manifest.layers {
                if [manifest::MODEL, manifest::ADAPTER, manifest::PROJECTOR]
                    .contains(&layer.media_type.as_str())
                {
                    let info = inspect(layer.digest).await?;
                    infos.push((layer.digest, BlobInfo::from(&info)));
                }
            }
            (bytes.clone(), manifest.clone(), infos)
        }
        None => {
            let w = &plan.wanted[0];
            let info = inspect(w.digest).await?;
            let layers = vec![Layer { media_type: manifest::MODEL.into(), digest: w.digest, size: w.size }];
            let config_bytes = serde_json::to_vec(&ModelConfig::new(&info, &layers))
                .map_err(|e| Error::Internal(format!("model config: {e}")))?;
            let mut pins = store.pins();
            pins.add(Digest::of(&config_bytes));
            let config_digest = layout.write_small(&config_bytes)?;
            let config = Layer {
                media_type: manifest::CONFIG.into(),
                digest: config_digest,
                size: config_bytes.len() as u64,
            };
            let manifest = Manifest::new(config, layers);
            let infos = vec![(w.digest, BlobInfo::from(&info))];
            let bytes = manifest.to_bytes();
            let outcome = register_rows(store, name, &bytes, &manifest, &infos, &plan.source, who).await;
            drop(pins);
            return outcome;
        }
    };
    register_rows(store, name, &bytes, &manifest, &infos, &plan.source, who).await
}

async fn register_rows(
    store: &Store,
    name: &super::name::ModelName,
    bytes: &[u8],
    manifest: &Manifest,
    infos: &[(Digest, BlobInfo)],
    source: &str,
    who: &Requester,
) -> Result<()> {
    let canonical = name.canonical();
    let freed = catalog::register(
        store.db(),
        &NewModel {
            name: &canonical,
            manifest,
            manifest_bytes: bytes,
            infos,
            source,
            uid: who.uid,
            user: &who.user,
            action: "pull",
        },
    )
    .await?;
    store.remove_files(&freed);
    Ok(())
}
