//! Authentication and authorization of every HTTP route, and the HTTPS listener.
//!
//! Each request is authenticated first (`Authorization: Bearer <token>` or `Basic ...`, else
//! the TLS client certificate, else `anonymousUserRole`): 401 when that fails. Then what the
//! route needs is read off its path ([`required`]) and checked against the role: 403 when the
//! role lacks it. The identity is left in the request's extensions for the handlers.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::connect_info::Connected;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::IncomingStream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use super::{ApiError, AppState};
use crate::metrics::Metrics;
use crate::security::{Identity, TlsAcceptor, TopicAction};
use crate::topic_name::TopicName;

/// Who is at the other end of an HTTP connection.
#[derive(Debug, Clone)]
pub struct HttpPeer {
    pub address: SocketAddr,
    /// The common name of the TLS client certificate, on HTTPS with one.
    pub client_common_name: Option<String>,
}

impl Connected<IncomingStream<'_, TcpListener>> for HttpPeer {
    fn connect_info(stream: IncomingStream<'_, TcpListener>) -> Self {
        HttpPeer { address: *stream.remote_addr(), client_common_name: None }
    }
}

impl Connected<IncomingStream<'_, TlsListener>> for HttpPeer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// HTTPS connections, each handshaken in its own task (a slow client holds up nobody).
pub struct TlsListener {
    accepted: mpsc::Receiver<(tokio_rustls::server::TlsStream<TcpStream>, HttpPeer)>,
    local: SocketAddr,
}

impl TlsListener {
    pub fn spawn(
        listener: TcpListener,
        acceptor: Arc<TlsAcceptor>,
        cancel: CancellationToken,
    ) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (sender, accepted) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, address) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            debug!(%error, "HTTPS accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = cancel.cancelled() => return,
                };
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                tokio::spawn(async move {
                    match acceptor.accept(stream).await {
                        Ok(accepted) => {
                            let peer = HttpPeer { address, client_common_name: accepted.client_common_name };
                            let _ = sender.send((accepted.stream, peer)).await;
                        }
                        Err(error) => debug!(peer = %address, %error, "HTTPS handshake failed"),
                    }
                });
            }
        });
        Ok(TlsListener { accepted, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = HttpPeer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept task ended (shutdown): wait for the server's own shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(HttpPeer { address: self.local, client_common_name: None })
    }
}

/// What a route needs of the caller's role.
#[derive(Debug, PartialEq, Eq)]
pub enum Required {
    /// Open to anyone (`/metrics`, the console's files).
    Nothing,
    /// Any authenticated role.
    Authenticated,
    SuperUser,
    TenantAdmin(String),
    /// Produce or consume on the topic.
    TopicLookup(String),
    /// Produce or consume on the namespace (listing its topics).
    NamespaceRead(String),
}

/// What the route at `path` needs, as Pulsar's admin resources check it.
pub fn required(method: &Method, path: &str) -> Required {
    let parts: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    let read = method == Method::GET || method == Method::HEAD;
    match parts.as_slice() {
        ["metrics"] => Required::Nothing,
        // The console's files; what they show comes from the admin API, checked there.
        ["console", ..] => Required::Nothing,
        ["lookup", "v2", "topic", domain, tenant, ns, topic] => {
            Required::TopicLookup(format!("{domain}://{tenant}/{ns}/{topic}"))
        }
        ["admin", "v2", "clusters", ..] if read => Required::Authenticated,
        ["admin", "v2", "clusters", ..] => Required::SuperUser,
        ["admin", "v2", "tenants", tenant] if read => Required::TenantAdmin((*tenant).to_owned()),
        ["admin", "v2", "tenants", ..] => Required::SuperUser,
        ["admin", "v2", "namespaces", tenant, ns, "topics"] if read => {
            Required::NamespaceRead(format!("{tenant}/{ns}"))
        }
        ["admin", "v2", "namespaces", tenant, ..] => Required::TenantAdmin((*tenant).to_owned()),
        ["admin", "v2", "persistent" | "non-persistent", tenant, ns] if read => {
            Required::NamespaceRead(format!("{tenant}/{ns}"))
        }
        ["admin", "v2", domain @ ("persistent" | "non-persistent"), tenant, ns, topic, "partitions"] if read => {
            Required::TopicLookup(format!("{domain}://{tenant}/{ns}/{topic}"))
        }
        ["admin", "v2", "persistent" | "non-persistent", tenant, ..] => Required::TenantAdmin((*tenant).to_owned()),
        ["admin", "v2", "schemas", tenant, ns, topic, ..] if read => {
            Required::TopicLookup(format!("persistent://{tenant}/{ns}/{topic}"))
        }
        ["admin", "v2", "schemas", tenant, ..] => Required::TenantAdmin((*tenant).to_owned()),
        _ => Required::SuperUser,
    }
}

/// The middleware in front of every route.
pub async fn guard(
    State(service): State<AppState>,
    ConnectInfo(peer): ConnectInfo<HttpPeer>,
    mut request: Request,
    next: Next,
) -> Response {
    let security = &service.security;
    let header = request.headers().get(axum::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok());
    let required = required(request.method(), request.uri().path());
    let identity = match security.authenticator.authenticate_http(header, peer.client_common_name.as_deref()) {
        Ok(identity) => identity,
        Err(_) if required == Required::Nothing => Identity::unauthenticated(),
        Err(error) => {
            Metrics::add(&service.metrics.authentication_failures, 1);
            info!(peer = %peer.address, path = %request.uri().path(), %error, "HTTP request refused");
            return ApiError(StatusCode::UNAUTHORIZED, error.0).into_response();
        }
    };
    let policies = &service.policies;
    let authorizer = &security.authorizer;
    let allowed = match &required {
        Required::Nothing | Required::Authenticated => Ok(()),
        Required::SuperUser => authorizer.check_super_user(&identity, "use this admin resource"),
        Required::TenantAdmin(tenant) => authorizer.check_tenant_admin(policies, &identity, tenant).await,
        Required::NamespaceRead(namespace) => authorizer.check_namespace_read(policies, &identity, namespace).await,
        Required::TopicLookup(topic) => match TopicName::parse(topic) {
            Ok(name) => authorizer.check_topic(policies, &identity, &name, TopicAction::Lookup, None).await,
            // A malformed name is the handler's to answer (412 naming it).
            Err(_) => Ok(()),
        },
    };
    if let Err(error) = allowed {
        return ApiError::from(error).into_response();
    }
    request.extensions_mut().insert(identity);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_pulsar_needs() {
        let get = Method::GET;
        let put = Method::PUT;
        assert_eq!(required(&get, "/metrics"), Required::Nothing);
        assert_eq!(required(&get, "/admin/v2/clusters"), Required::Authenticated);
        assert_eq!(required(&put, "/admin/v2/clusters/c"), Required::SuperUser);
        assert_eq!(required(&get, "/admin/v2/tenants"), Required::SuperUser);
        assert_eq!(required(&get, "/admin/v2/tenants/t"), Required::TenantAdmin("t".into()));
        assert_eq!(required(&put, "/admin/v2/tenants/t"), Required::SuperUser);
        assert_eq!(required(&put, "/admin/v2/namespaces/t/ns"), Required::TenantAdmin("t".into()));
        assert_eq!(required(&get, "/admin/v2/namespaces/t/ns/topics"), Required::NamespaceRead("t/ns".into()));
        assert_eq!(required(&get, "/admin/v2/persistent/t/ns"), Required::NamespaceRead("t/ns".into()));
        assert_eq!(
            required(&get, "/admin/v2/persistent/t/ns/x/partitions"),
            Required::TopicLookup("persistent://t/ns/x".into())
        );
        assert_eq!(required(&put, "/admin/v2/persistent/t/ns/x/partitions"), Required::TenantAdmin("t".into()));
        assert_eq!(required(&Method::DELETE, "/admin/v2/persistent/t/ns/x"), Required::TenantAdmin("t".into()));
        assert_eq!(
            required(&get, "/lookup/v2/topic/persistent/t/ns/x"),
            Required::TopicLookup("persistent://t/ns/x".into())
        );
        assert_eq!(required(&get, "/admin/v2/brokers/standalone"), Required::SuperUser);
        assert_eq!(required(&get, "/something/else"), Required::SuperUser);
    }
}
