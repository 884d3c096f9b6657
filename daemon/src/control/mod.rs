//! The gRPC control plane (`hyperllama.v1.Control`) served on the control unix socket. A thin
//! adapter: each call is identified from SO_PEERCRED, authorized by [`crate::policy`], admitted by
//! the lifecycle, then handed to the module that owns the work; errors become gRPC codes in one
//! place ([`crate::error`]).

mod server;
pub(crate) mod store_rpc;

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use hyperllama_proto::v1 as pb;
use hyperllama_proto::v1::control_server::Control;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status, Streaming};

pub use server::{adopt as adopt_listener, bind as bind_listener, serve};

use crate::accounts;
use crate::error::Error;
use crate::identity::PeerIdentity;
use crate::inference;
use crate::inventory;
use crate::lifecycle::WorkGuard;
use crate::policy::{Action, authorize};
use crate::state::Shared;

/// A boxed server stream.
pub type RpcStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The control service.
#[derive(Debug, Clone)]
pub struct ControlService {
    shared: Arc<Shared>,
}

impl ControlService {
    /// A service over the daemon's shared state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The caller, from the kernel's credentials for the connection.
    fn caller<T>(&self, request: &Request<T>) -> Result<PeerIdentity, Error> {
        let cred = request
            .extensions()
            .get::<UdsConnectInfo>()
            .and_then(|info| info.peer_cred)
            .ok_or_else(|| Error::Unauthenticated("no peer credentials on this connection".into()))?;
        Ok(self.shared.authority.identify(cred.uid(), cred.gid(), cred.pid()))
    }

    /// Identifies, authorizes and admits a call.
    fn admit<T>(&self, request: &Request<T>, action: Action) -> Result<(PeerIdentity, WorkGuard), Error> {
        let who = self.caller(request)?;
        authorize(&who, action, self.shared.authority.admin_group())?;
        let guard = self.shared.lifecycle.begin()?;
        Ok((who, guard))
    }

    /// The uid a request names (`user` field), defaulting to the caller; naming someone else needs
    /// an administrator.
    fn target_uid(&self, who: &PeerIdentity, named: &str) -> Result<u32, Error> {
        if named.is_empty() {
            return Ok(who.uid);
        }
        let (uid, _) = accounts::resolve_user(named)?;
        if uid != who.uid {
            authorize(who, Action::ManageOthers, self.shared.authority.admin_group())?;
        }
        Ok(uid)
    }

    async fn status(&self, who: PeerIdentity) -> pb::StatusResponse {
        let shared = &self.shared;
        let (gpus, gpu_probe_error) = tokio::task::spawn_blocking(inventory::gpus)
            .await
            .unwrap_or_else(|e| (Vec::new(), format!("GPU probe failed: {e}")));
        let engines = inventory::engines(&gpu_probe_error, gpus.len(), &shared.config().engines);
        pb::StatusResponse {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_seconds: shared.started.elapsed().as_secs(),
            mode: shared.config().daemon.mode.to_string(),
            pid: std::process::id(),
            engines,
            gpus,
            gpu_probe_error,
            huge_pages: Some(inventory::huge_pages()),
            loaded_models: shared.residency.list().iter().map(|m| m.describe()).collect(),
            requests_in_flight: shared.lifecycle.in_flight(),
            accepting: shared.lifecycle.accepting(),
            caller: Some(pb::Caller { uid: who.uid, user: who.user, admin: who.admin }),
            state_dir: shared.dirs.state.display().to_string(),
            control_socket: shared.dirs.control_socket.display().to_string(),
            capabilities: shared.capabilities.clone(),
            service_user: shared.service_user.clone(),
            broken_models: store_rpc::broken_models(shared).await,
        }
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        // Status stays answerable while draining, so operators can watch the drain.
        let who = self.caller(&request)?;
        authorize(&who, Action::Inspect, self.shared.authority.admin_group())?;
        Ok(Response::new(self.status(who).await))
    }

    type PullStream = RpcStream<pb::Progress>;
    async fn pull(&self, request: Request<pb::PullRequest>) -> Result<Response<Self::PullStream>, Status> {
        store_rpc::pull(self, request).await
    }

    type CreateStream = RpcStream<pb::Progress>;
    async fn create(
        &self,
        request: Request<Streaming<pb::CreateRequest>>,
    ) -> Result<Response<Self::CreateStream>, Status> {
        store_rpc::create(self, request).await
    }

    async fn list(&self, request: Request<pb::ListRequest>) -> Result<Response<pb::ListResponse>, Status> {
        store_rpc::list(self, request).await
    }

    async fn show(&self, request: Request<pb::ShowRequest>) -> Result<Response<pb::ShowResponse>, Status> {
        store_rpc::show(self, request).await
    }

    async fn copy(&self, request: Request<pb::CopyRequest>) -> Result<Response<pb::CopyResponse>, Status> {
        store_rpc::copy(self, request).await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        store_rpc::delete(self, request).await
    }

    async fn load(&self, request: Request<pb::LoadRequest>) -> Result<Response<pb::LoadResponse>, Status> {
        let _admitted = self.admit(&request, Action::Load)?;
        Ok(Response::new(inference::load(&self.shared, request.into_inner()).await?))
    }

    async fn unload(
        &self,
        request: Request<pb::UnloadRequest>,
    ) -> Result<Response<pb::UnloadResponse>, Status> {
        let _admitted = self.admit(&request, Action::Unload)?;
        Ok(Response::new(inference::unload(&self.shared, request.into_inner()).await?))
    }

    async fn ps(&self, request: Request<pb::PsRequest>) -> Result<Response<pb::PsResponse>, Status> {
        let _admitted = self.admit(&request, Action::Inspect)?;
        Ok(Response::new(inference::ps(&self.shared)))
    }

    type GenerateStream = RpcStream<pb::GenerateResponse>;
    async fn generate(
        &self,
        request: Request<pb::GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        let (who, guard) = self.admit(&request, Action::Infer)?;
        let stream = inference::generate(Arc::clone(&self.shared), who, guard, request.into_inner());
        Ok(Response::new(stream))
    }

    type ChatStream = RpcStream<pb::ChatResponse>;
    async fn chat(&self, request: Request<pb::ChatRequest>) -> Result<Response<Self::ChatStream>, Status> {
        let (who, guard) = self.admit(&request, Action::Infer)?;
        Ok(Response::new(inference::chat(Arc::clone(&self.shared), who, guard, request.into_inner())))
    }

    async fn embed(&self, request: Request<pb::EmbedRequest>) -> Result<Response<pb::EmbedResponse>, Status> {
        let (who, _guard) = self.admit(&request, Action::Infer)?;
        Ok(Response::new(inference::embed(&self.shared, &who, request.into_inner()).await?))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let (who, _guard) = self.admit(&request, Action::ManageOwn)?;
        let uid = self.target_uid(&who, &request.get_ref().user)?;
        let made = accounts::create_token(&self.shared.db, uid, request.get_ref()).await?;
        tracing::info!(by = %who.user, for_uid = uid, token = %made.id, "token created");
        Ok(Response::new(made))
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let (who, _guard) = self.admit(&request, Action::ManageOwn)?;
        let named = &request.get_ref().user;
        // Admins with no user named see every token; everyone else sees their own.
        let uid = if named.is_empty() && who.admin { None } else { Some(self.target_uid(&who, named)?) };
        let tokens = accounts::list_tokens(&self.shared.db, uid).await?;
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let (who, _guard) = self.admit(&request, Action::ManageOwn)?;
        let owner = if who.admin { None } else { Some(who.uid) };
        accounts::revoke_token(&self.shared.db, &request.get_ref().id, owner).await?;
        tracing::info!(by = %who.user, token = %request.get_ref().id, "token revoked");
        Ok(Response::new(pb::RevokeTokenResponse {}))
    }

    async fn get_quota(&self, request: Request<pb::GetQuotaRequest>) -> Result<Response<pb::Quota>, Status> {
        let (who, _guard) = self.admit(&request, Action::ManageOwn)?;
        let uid = self.target_uid(&who, &request.get_ref().user)?;
        let quota = accounts::quota(&self.shared.db, &self.shared.config().quota, uid).await?;
        Ok(Response::new(quota))
    }

    async fn set_quota(&self, request: Request<pb::SetQuotaRequest>) -> Result<Response<pb::Quota>, Status> {
        let (who, _guard) = self.admit(&request, Action::SetQuota)?;
        let named = &request.get_ref().user;
        if named.is_empty() {
            return Err(Error::InvalidArgument("name the user whose quota to set".into()).into());
        }
        let (uid, _) = accounts::resolve_user(named)?;
        accounts::set_quota(&self.shared.db, uid, request.get_ref()).await?;
        tracing::info!(by = %who.user, for_uid = uid, "quota changed");
        let quota = accounts::quota(&self.shared.db, &self.shared.config().quota, uid).await?;
        Ok(Response::new(quota))
    }

    async fn users(&self, request: Request<pb::UsersRequest>) -> Result<Response<pb::UsersResponse>, Status> {
        let (who, _guard) = self.admit(&request, Action::ManageOwn)?;
        let only = if who.admin { None } else { Some(who.uid) };
        let users = accounts::usage(&self.shared.db, only).await?;
        Ok(Response::new(pb::UsersResponse { users }))
    }

    async fn endpoint(
        &self,
        request: Request<pb::EndpointRequest>,
    ) -> Result<Response<pb::EndpointResponse>, Status> {
        let (who, _guard) = self.admit(&request, Action::ManageOwn)?;
        let server = crate::api::server().ok_or(Error::NotImplemented("the HTTP API (not started)"))?;
        let remove = request.get_ref().remove;
        let path = server.user_endpoint(who.uid, remove)?;
        let mut environment = Vec::new();
        if !remove {
            // Clients take OLLAMA_HOST and OPENAI_BASE_URL as host:port URLs, not socket paths: name
            // the loopback listener (where the kernel identifies the caller too) and the socket.
            if let Some(addr) = server.tcp_addrs().iter().find(|a| a.ip().is_loopback()) {
                environment.push(format!("OLLAMA_HOST={addr}"));
                environment.push(format!("OPENAI_BASE_URL=http://{addr}/v1"));
            }
            environment.push(format!("HYPERLLAMA_SOCKET={}", path.display()));
        }
        tracing::info!(user = %who.user, remove, socket = %path.display(), "endpoint");
        Ok(Response::new(pb::EndpointResponse { socket_path: path.display().to_string(), environment }))
    }
}
