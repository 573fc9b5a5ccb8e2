//! Authorization as Pulsar's default provider decides it.
//!
//! - `superUserRoles` may do anything;
//! - a tenant's `adminRoles` may administer that tenant (its namespaces, topics, policies and
//!   permissions) and produce and consume in it;
//! - other roles produce or consume where a namespace grants it (`namespace_auth`) or a topic
//!   does (`destination_auth`, kept in the namespace's policies as Pulsar keeps it; a
//!   partition takes its partitioned topic's grants); lookups need either;
//! - a subscription may be reserved to roles (`subscription_auth_roles`), and with
//!   `subscription_auth_mode` `Prefix` a subscription's name must start with the role.
//!
//! With authorization off every authenticated role may do everything.

use std::collections::BTreeSet;

use crate::error::BrokerError;
use crate::tenancy::model::Policies;
use crate::tenancy::PolicyCache;
use crate::topic_name::TopicName;

use super::Identity;

/// What a client wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicAction {
    Produce,
    /// Consume on a subscription.
    Consume,
    /// Look up or read metadata: produce or consume permission will do.
    Lookup,
}

pub use crate::tenancy::model::ACTIONS;

#[derive(Debug, Clone, Default)]
pub struct Authorizer {
    enabled: bool,
    super_users: BTreeSet<String>,
}

fn denied(role: &str, what: String) -> BrokerError {
    BrokerError::Unauthorized { what: format!("Client with role {role} is not authorized to {what}") }
}

impl Authorizer {
    pub fn new(enabled: bool, super_users: BTreeSet<String>) -> Self {
        Authorizer { enabled, super_users }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// True if checks apply to `identity` at all (authorization on, and not a super-user).
    fn restricted<'a>(&self, identity: &'a Identity) -> Option<&'a str> {
        if !self.enabled {
            return None;
        }
        match identity.role.as_deref() {
            Some(role) if self.super_users.contains(role) => None,
            Some(role) => Some(role),
            // Authorization needs authentication (checked at start); no role means none applies.
            None => None,
        }
    }

    pub fn is_super_user(&self, identity: &Identity) -> bool {
        self.restricted(identity).is_none()
    }

    /// Super-users only (clusters, tenants, brokers).
    pub fn check_super_user(&self, identity: &Identity, what: &str) -> Result<(), BrokerError> {
        match self.restricted(identity) {
            None => Ok(()),
            Some(role) => Err(denied(role, what.to_owned())),
        }
    }

    /// True if `identity` may administer `tenant`.
    pub async fn is_tenant_admin(
        &self,
        cache: &PolicyCache,
        identity: &Identity,
        tenant: &str,
    ) -> Result<bool, BrokerError> {
        let Some(role) = self.restricted(identity) else { return Ok(true) };
        match cache.existing_tenant(tenant).await {
            Ok(info) => Ok(info.admin_roles.contains(role)),
            // A tenant that does not exist has no admins; the route answers 404 for super-users.
            Err(BrokerError::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Administering `tenant`: its admins and super-users.
    pub async fn check_tenant_admin(
        &self,
        cache: &PolicyCache,
        identity: &Identity,
        tenant: &str,
    ) -> Result<(), BrokerError> {
        if self.is_tenant_admin(cache, identity, tenant).await? {
            return Ok(());
        }
        let role = identity.role.as_deref().unwrap_or_default();
        Err(denied(role, format!("administer tenant {tenant}")))
    }

    /// `action` on `topic` (and, to consume, on `subscription`).
    pub async fn check_topic(
        &self,
        cache: &PolicyCache,
        identity: &Identity,
        topic: &TopicName,
        action: TopicAction,
        subscription: Option<&str>,
    ) -> Result<(), BrokerError> {
        let Some(role) = self.restricted(identity) else { return Ok(()) };
        if self.is_tenant_admin(cache, identity, topic.tenant()).await? {
            return Ok(());
        }
        let policies = match cache.existing_namespace(&topic.namespace_name()).await {
            Ok(policies) => policies,
            Err(BrokerError::NamespaceNotFound { .. }) => return Err(denied(role, format!("access {topic}"))),
            Err(error) => return Err(error),
        };
        let base = topic.partition_of().map_or_else(|| topic.to_string(), |(parent, _)| parent.to_string());
        let granted = granted_actions(&policies, &base, role);
        let allowed = match action {
            TopicAction::Produce => granted.contains("produce"),
            TopicAction::Consume => granted.contains("consume"),
            TopicAction::Lookup => granted.contains("produce") || granted.contains("consume"),
        };
        if !allowed {
            let what = match action {
                TopicAction::Produce => "produce on",
                TopicAction::Consume => "consume from",
                TopicAction::Lookup => "look up",
            };
            return Err(denied(role, format!("{what} topic {topic}")));
        }
        if let (TopicAction::Consume, Some(subscription)) = (action, subscription) {
            check_subscription(&policies, role, subscription)?;
        }
        Ok(())
    }

    /// Listing a namespace's topics: produce or consume granted on the namespace, or its
    /// tenant's admins.
    pub async fn check_namespace_read(
        &self,
        cache: &PolicyCache,
        identity: &Identity,
        namespace: &str,
    ) -> Result<(), BrokerError> {
        let Some(role) = self.restricted(identity) else { return Ok(()) };
        let tenant = namespace.split('/').next().unwrap_or_default();
        if self.is_tenant_admin(cache, identity, tenant).await? {
            return Ok(());
        }
        let granted = match cache.existing_namespace(namespace).await {
            Ok(policies) => policies.auth_policies.namespace_auth.get(role).cloned().unwrap_or_default(),
            Err(BrokerError::NamespaceNotFound { .. }) => BTreeSet::new(),
            Err(error) => return Err(error),
        };
        if granted.contains("produce") || granted.contains("consume") {
            Ok(())
        } else {
            Err(denied(role, format!("list the topics of {namespace}")))
        }
    }
}

/// What `role` may do on `topic` (a partitioned topic's name for a partition): the
/// namespace's grants and the topic's.
pub fn granted_actions(policies: &Policies, topic: &str, role: &str) -> BTreeSet<String> {
    let auth = &policies.auth_policies;
    let mut granted = auth.namespace_auth.get(role).cloned().unwrap_or_default();
    if let Some(roles) = auth.destination_auth.get(topic) {
        granted.extend(roles.get(role).into_iter().flatten().cloned());
    }
    granted
}

fn check_subscription(policies: &Policies, role: &str, subscription: &str) -> Result<(), BrokerError> {
    let auth = &policies.auth_policies;
    if let Some(roles) = auth.subscription_auth_roles.get(subscription) {
        if !roles.is_empty() && !roles.contains(role) {
            return Err(denied(role, format!("consume from subscription {subscription}")));
        }
    }
    if policies.subscription_auth_mode.as_deref() == Some("Prefix") && !subscription.starts_with(role) {
        return Err(BrokerError::Unauthorized {
            what: format!(
                "Failed to create consumer - The subscription name needs to be prefixed by the authentication role, \
                 like {role}-xxxx for topic"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies() -> Policies {
        let mut policies = Policies::default();
        let auth = &mut policies.auth_policies;
        auth.namespace_auth.insert("reader".into(), ["consume".to_owned()].into());
        auth.destination_auth
            .insert("persistent://t/ns/orders".into(), [("writer".to_owned(), ["produce".to_owned()].into())].into());
        auth.subscription_auth_roles.insert("billing".into(), ["finance".to_owned()].into());
        policies
    }

    #[test]
    fn grants_of_namespace_and_topic_add_up() {
        let policies = policies();
        assert!(granted_actions(&policies, "persistent://t/ns/orders", "writer").contains("produce"));
        assert!(granted_actions(&policies, "persistent://t/ns/other", "writer").is_empty());
        assert!(granted_actions(&policies, "persistent://t/ns/orders", "reader").contains("consume"));
    }

    #[test]
    fn subscriptions_reserved_to_roles_and_the_prefix_mode() {
        let mut policies = policies();
        assert!(check_subscription(&policies, "reader", "billing").is_err());
        assert!(check_subscription(&policies, "finance", "billing").is_ok());
        assert!(check_subscription(&policies, "reader", "anything").is_ok());
        policies.subscription_auth_mode = Some("Prefix".into());
        assert!(check_subscription(&policies, "reader", "anything").is_err());
        assert!(check_subscription(&policies, "reader", "reader-sub").is_ok());
    }

    #[test]
    fn super_users_and_disabled_authorization_pass() {
        let identity = |role: &str| Identity { role: Some(role.into()), method: "token", expires: None };
        let authorizer = Authorizer::new(true, ["admin".to_owned()].into());
        assert!(authorizer.check_super_user(&identity("admin"), "x").is_ok());
        let error = authorizer.check_super_user(&identity("bob"), "create clusters").expect_err("denied");
        assert!(matches!(error, BrokerError::Unauthorized { .. }));
        assert!(Authorizer::new(false, BTreeSet::new()).check_super_user(&identity("bob"), "x").is_ok());
    }
}
