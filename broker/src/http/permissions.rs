//! Permissions in Pulsar's admin paths: what each role may do in a namespace
//! (`/admin/v2/namespaces/{t}/{ns}/permissions[/{role}]`), on one topic
//! (`/admin/v2/persistent/{t}/{ns}/{topic}/permissions[/{role}]`), and which roles may use a
//! subscription (`.../permissions/subscription/{sub}`, revoked at
//! `.../permissions/{sub}/{role}`). A grant's body is the actions as a JSON array
//! (`["produce","consume"]`); it replaces what the role had there. Grants are stored in the
//! namespace's policies (`auth_policies`), as Pulsar stores them, by compare-and-set.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use tracing::info;

use super::policies::change_namespace;
use super::{existing_namespace, existing_namespace_topic, json_body, ApiError, AppState};
use crate::error::BrokerError;
use crate::security::authz::ACTIONS;
use crate::tenancy::store;

pub(super) fn routes() -> Router<AppState> {
    let ns = "/admin/v2/namespaces/{tenant}/{namespace}/permissions";
    let topic = "/admin/v2/persistent/{tenant}/{namespace}/{topic}/permissions";
    Router::new()
        .route(ns, get(namespace_permissions))
        .route(&format!("{ns}/subscription"), get(subscription_permissions))
        .route(&format!("{ns}/subscription/{{subscription}}"), post(grant_subscription))
        .route(&format!("{ns}/{{role}}"), post(grant_namespace).delete(revoke_namespace))
        .route(&format!("{ns}/{{subscription}}/{{role}}"), axum::routing::delete(revoke_subscription))
        .route(topic, get(topic_permissions))
        .route(&format!("{topic}/{{role}}"), post(grant_topic).delete(revoke_topic))
}

/// The actions of a grant's body, each one Pulsar knows (400 naming one that is not).
fn actions(body: &str) -> Result<BTreeSet<String>, ApiError> {
    let actions: BTreeSet<String> = json_body(body, "a JSON array of actions, like [\"produce\",\"consume\"]")?;
    if let Some(unknown) = actions.iter().find(|action| !ACTIONS.contains(&action.as_str())) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("unknown action {unknown:?} (known: {})", ACTIONS.join(", ")),
        ));
    }
    Ok(actions)
}

async fn namespace_permissions(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Json<BTreeMap<String, BTreeSet<String>>>, ApiError> {
    let policies = store::policies(service.meta.as_ref(), &format!("{tenant}/{ns}")).await?;
    Ok(Json(policies.auth_policies.namespace_auth))
}

async fn grant_namespace(
    State(service): State<AppState>,
    Path((tenant, ns, role)): Path<(String, String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let actions = actions(&body)?;
    let namespace = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
    let answer = change_namespace(&service, &namespace, |policies| {
        policies.auth_policies.namespace_auth.insert(role.clone(), actions.clone());
        Ok(())
    })
    .await?;
    info!(%namespace, %role, ?actions, "namespace permission granted");
    Ok(answer)
}

async fn revoke_namespace(
    State(service): State<AppState>,
    Path((tenant, ns, role)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let namespace = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
    let answer = change_namespace(&service, &namespace, |policies| {
        policies.auth_policies.namespace_auth.remove(&role);
        Ok(())
    })
    .await?;
    info!(%namespace, %role, "namespace permission revoked");
    Ok(answer)
}

async fn subscription_permissions(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Json<BTreeMap<String, BTreeSet<String>>>, ApiError> {
    let policies = store::policies(service.meta.as_ref(), &format!("{tenant}/{ns}")).await?;
    Ok(Json(policies.auth_policies.subscription_auth_roles))
}

/// Reserves a subscription to roles (added to those it had, as Pulsar does).
async fn grant_subscription(
    State(service): State<AppState>,
    Path((tenant, ns, subscription)): Path<(String, String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let roles: BTreeSet<String> = json_body(&body, "a JSON array of roles")?;
    let namespace = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
    let answer = change_namespace(&service, &namespace, |policies| {
        policies.auth_policies.subscription_auth_roles.entry(subscription.clone()).or_default().extend(roles.clone());
        Ok(())
    })
    .await?;
    info!(%namespace, %subscription, ?roles, "subscription permission granted");
    Ok(answer)
}

async fn revoke_subscription(
    State(service): State<AppState>,
    Path((tenant, ns, subscription, role)): Path<(String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let namespace = existing_namespace(&service, format!("{tenant}/{ns}")).await?;
    change_namespace(&service, &namespace, |policies| {
        let reserved = &mut policies.auth_policies.subscription_auth_roles;
        let Some(roles) = reserved.get_mut(&subscription) else {
            return Err(BrokerError::NotFound { what: format!("subscription {subscription} has no permissions set") });
        };
        roles.remove(&role);
        if roles.is_empty() {
            reserved.remove(&subscription);
        }
        Ok(())
    })
    .await
}

/// What each role may do on the topic: the namespace's grants and the topic's own.
async fn topic_permissions(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): Path<(String, String, String)>,
) -> Result<Json<BTreeMap<String, BTreeSet<String>>>, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    let policies = store::policies(service.meta.as_ref(), &name.namespace_name()).await?;
    let auth = policies.auth_policies;
    let mut permissions = auth.namespace_auth;
    for (role, actions) in auth.destination_auth.get(&name.to_string()).into_iter().flatten() {
        permissions.entry(role.clone()).or_default().extend(actions.iter().cloned());
    }
    Ok(Json(permissions))
}

async fn grant_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic, role)): Path<(String, String, String, String)>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let actions = actions(&body)?;
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    let key = name.to_string();
    let answer = change_namespace(&service, &name.namespace_name(), |policies| {
        policies.auth_policies.destination_auth.entry(key.clone()).or_default().insert(role.clone(), actions.clone());
        Ok(())
    })
    .await?;
    info!(topic = %name, %role, ?actions, "topic permission granted");
    Ok(answer)
}

/// Revokes what the role was granted on the topic itself; a grant made on the namespace is
/// revoked there (412, as Pulsar).
async fn revoke_topic(
    State(service): State<AppState>,
    Path((tenant, ns, topic, role)): Path<(String, String, String, String)>,
) -> Result<StatusCode, ApiError> {
    let name = existing_namespace_topic(&service, &tenant, &ns, &topic).await?;
    let key = name.to_string();
    let answer = change_namespace(&service, &name.namespace_name(), |policies| {
        let topics = &mut policies.auth_policies.destination_auth;
        let removed = topics.get_mut(&key).and_then(|roles| roles.remove(&role));
        if removed.is_none() {
            return Err(BrokerError::NotAllowed {
                what: format!("Permissions are not set at the topic level for role {role} on {key}"),
            });
        }
        if topics.get(&key).is_some_and(BTreeMap::is_empty) {
            topics.remove(&key);
        }
        Ok(())
    })
    .await?;
    info!(topic = %name, %role, "topic permission revoked");
    Ok(answer)
}
