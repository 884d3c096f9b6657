//! The store's RPCs (Pull, Create, List, Show, Copy, Delete and the broken-model count in
//! Status): authorization and admission, then the work in [`crate::store`], with progress
//! streamed back. A pull or create holds its [`WorkGuard`] for its whole stream and stops when
//! the drain times out (`lifecycle.cancelled()`) or the client goes away.

use std::ffi::CString;
use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use hyperllama_proto::v1 as pb;
use nix::unistd::{Gid, Group, User};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

use super::{ControlService, RpcStream};
use crate::error::Error;
use crate::identity::PeerIdentity;
use crate::lifecycle::WorkGuard;
use crate::policy::Action;
use crate::state::Shared;
use crate::store::create::Upload;
use crate::store::{self, Progress, ProgressSink, Requester, manifest};

fn requester(who: &PeerIdentity) -> Requester {
    Requester { uid: who.uid, user: who.user.clone() }
}

fn to_pb(p: Progress) -> pb::Progress {
    pb::Progress { status: p.status, digest: p.digest, total: p.total, completed: p.completed }
}

/// Runs `work` on its own task, streaming its progress; the task holds `guard`, and stops at the
/// drain's cancellation or when the client has gone.
fn drive<F>(
    shared: &Shared,
    guard: WorkGuard,
    work: impl FnOnce(ProgressSink) -> F,
) -> RpcStream<pb::Progress>
where
    F: Future<Output = Result<(), Error>> + Send + 'static,
{
    let (out_tx, out_rx) = mpsc::channel::<Result<pb::Progress, Status>>(64);
    let (progress_tx, mut progress_rx) = mpsc::channel::<Progress>(64);
    let work = work(progress_tx);
    let cancelled = shared.lifecycle.cancelled();
    tokio::spawn(async move {
        let _guard = guard;
        let forward_tx = out_tx.clone();
        let forward = async move {
            while let Some(p) = progress_rx.recv().await {
                if forward_tx.send(Ok(to_pb(p))).await.is_err() {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            (outcome, ()) = async { tokio::join!(work, forward) } => Some(outcome),
            () = cancelled.cancelled() => Some(Err(Error::ShuttingDown)),
            () = out_tx.closed() => None,
        };
        if let Some(Err(e)) = outcome {
            let _ = out_tx.send(Err(e.into())).await;
        }
    });
    Box::pin(ReceiverStream::new(out_rx))
}

/// Whether the caller may pull: administrators, and members of `store.pull_groups`.
fn authorize_pull<T>(
    svc: &ControlService,
    request: &Request<T>,
    who: &PeerIdentity,
    model: &str,
) -> Result<(), Error> {
    if who.admin {
        return Ok(());
    }
    let groups = &svc.shared.config().store.pull_groups;
    let gid = request.extensions().get::<UdsConnectInfo>().and_then(|i| i.peer_cred).map(|c| c.gid());
    if groups.iter().any(|g| in_group(who.uid, gid, g)) {
        return Ok(());
    }
    let admin_group = svc.shared.authority.admin_group();
    let mut allowed = format!("`{admin_group}`");
    for g in groups {
        allowed.push_str(&format!(", `{g}`"));
    }
    let shown = store::name::shorten(model);
    tracing::info!(uid = who.uid, user = %who.user, model = %shown, "pull denied");
    Err(Error::PullDenied(format!(
        "permission denied: pulling models needs root or membership in {} {allowed}; ask an administrator to run \
         `hyperctl pull {shown}`",
        if groups.is_empty() { "the group" } else { "one of the groups" }
    )))
}

/// Whether `uid` (whose connection's gid is `gid`) belongs to `group` now.
pub(crate) fn in_group(uid: u32, gid: Option<u32>, group: &str) -> bool {
    let Ok(Some(group)) = Group::from_name(group) else { return false };
    if gid == Some(group.gid.as_raw()) {
        return true;
    }
    let Ok(Some(user)) = User::from_uid(nix::unistd::Uid::from_raw(uid)) else { return false };
    if user.gid == group.gid || group.mem.contains(&user.name) {
        return true;
    }
    let Ok(name) = CString::new(user.name.as_bytes()) else { return false };
    nix::unistd::getgrouplist(&name, user.gid).is_ok_and(|gs: Vec<Gid>| gs.contains(&group.gid))
}

/// `Pull`.
pub async fn pull(
    svc: &ControlService,
    request: Request<pb::PullRequest>,
) -> Result<Response<RpcStream<pb::Progress>>, Status> {
    let who = svc.caller(&request)?;
    authorize_pull(svc, &request, &who, &request.get_ref().model)?;
    let guard = svc.shared.lifecycle.begin()?;
    let pb::PullRequest { model, insecure } = request.into_inner();
    let store = Arc::clone(&svc.shared.store);
    let config = svc.shared.config();
    let who = requester(&who);
    Ok(Response::new(drive(&svc.shared, guard, move |progress| async move {
        store::pull::pull(&store, &config.store, &model, insecure, &who, &progress).await
    })))
}

/// `Create`: the header is checked before the response starts, so a bad Modelfile or `-q` is
/// refused before the client sends any file.
pub async fn create(
    svc: &ControlService,
    request: Request<Streaming<pb::CreateRequest>>,
) -> Result<Response<RpcStream<pb::Progress>>, Status> {
    let (who, guard) = svc.admit(&request, Action::Create)?;
    let mut items = request.into_inner();
    let header = match items.message().await? {
        Some(pb::CreateRequest { item: Some(pb::create_request::Item::Header(h)) }) => h,
        _ => return Err(Error::InvalidArgument("a Create stream must begin with its header".into()).into()),
    };
    let store = Arc::clone(&svc.shared.store);
    let prepared = store::create::prepare(&store, &header.model, &header.modelfile, &header.quantize).await?;
    let uploads = items.map(|item| match item {
        Ok(pb::CreateRequest { item: Some(pb::create_request::Item::FileStart(f)) }) => {
            Ok(Upload::Start { index: f.index, size: f.size, display_name: f.display_name })
        }
        Ok(pb::CreateRequest { item: Some(pb::create_request::Item::Chunk(bytes)) }) => {
            Ok(Upload::Chunk(bytes))
        }
        Ok(_) => Err(Error::InvalidArgument("a Create stream has one header, then files".into())),
        Err(status) => Err(Error::InvalidArgument(format!("the upload broke off: {}", status.message()))),
    });
    let config = svc.shared.config();
    let who = requester(&who);
    Ok(Response::new(drive(&svc.shared, guard, move |progress| async move {
        store::create::create(&store, &config.store, prepared, uploads, &who, &progress).await
    })))
}

/// `List`.
pub async fn list(
    svc: &ControlService,
    request: Request<pb::ListRequest>,
) -> Result<Response<pb::ListResponse>, Status> {
    let _admitted = svc.admit(&request, Action::Inspect)?;
    let store = &svc.shared.store;
    let models = store
        .list()
        .await?
        .into_iter()
        .map(|m| {
            let info = m.weights_layer().and_then(|l| l.info.clone()).unwrap_or_default();
            pb::ModelSummary {
                name: store.display(&m.name),
                digest: m.manifest.to_string(),
                size_bytes: m.size,
                modified_at: m.modified_at,
                family: info.architecture,
                parameter_size: manifest::parameter_size(info.parameter_count),
                quantization: info.quantization,
                broken: m.broken(),
                format: "gguf".into(),
            }
        })
        .collect();
    Ok(Response::new(pb::ListResponse { models }))
}

/// `Show`.
pub async fn show(
    svc: &ControlService,
    request: Request<pb::ShowRequest>,
) -> Result<Response<pb::ShowResponse>, Status> {
    let _admitted = svc.admit(&request, Action::Inspect)?;
    let d = svc.shared.store.details(&request.get_ref().model, request.get_ref().verbose).await?;
    Ok(Response::new(pb::ShowResponse {
        name: d.name,
        architecture: d.architecture,
        parameter_count: d.parameter_count,
        context_length: d.context_length,
        embedding_length: d.embedding_length,
        quantization: d.quantization,
        template: d.template,
        system: d.system,
        parameters: d.parameters,
        license: d.license,
        modelfile: d.modelfile,
        metadata: d.metadata.into_iter().collect(),
        capabilities: d.capabilities,
        digest: d.digest,
        modified_at: d.modified_at,
    }))
}

/// `Copy`.
pub async fn copy(
    svc: &ControlService,
    request: Request<pb::CopyRequest>,
) -> Result<Response<pb::CopyResponse>, Status> {
    let (who, _guard) = svc.admit(&request, Action::Copy)?;
    let r = request.get_ref();
    svc.shared.store.copy(&r.source, &r.destination, &requester(&who)).await?;
    Ok(Response::new(pb::CopyResponse {}))
}

/// `Delete`.
pub async fn delete(
    svc: &ControlService,
    request: Request<pb::DeleteRequest>,
) -> Result<Response<pb::DeleteResponse>, Status> {
    let (who, _guard) = svc.admit(&request, Action::Delete)?;
    let freed_bytes = svc.shared.store.delete(&request.get_ref().model, &requester(&who)).await?;
    Ok(Response::new(pb::DeleteResponse { freed_bytes }))
}

/// Models with a missing file, for `Status`.
pub async fn broken_models(shared: &Shared) -> u32 {
    match shared.store.broken_count().await {
        Ok(n) => n,
        Err(error) => {
            tracing::warn!(%error, "cannot count broken models");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_in_its_own_group_and_not_in_a_missing_one() {
        assert!(in_group(0, Some(0), "root"));
        assert!(!in_group(0, Some(0), "no-such-group-hyperllama-test"));
    }
}
