//! Namespace policies (`/admin/v2/namespaces/{tenant}/{namespace}/<policy>`) and each topic's
//! own (`/admin/v2/persistent/{tenant}/{namespace}/{topic}/<policy>`), in Pulsar's paths:
//! GET answers what is set (`null` when nothing is), POST sets it (the body as Pulsar's admin
//! sends it; a topic's `messageTTL` also as `?messageTTL=N`), DELETE removes it. A value out of
//! range or a body that does not parse is a 400 naming the field and changes nothing.
//!
//! Each write goes to the metadata store by compare-and-set; this broker applies it to its
//! topics before answering, every other broker within its watch's delay.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, MethodRouter};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{existing_namespace_topic, json_body, ApiError, AppState};
use crate::error::BrokerError;
use crate::partitions;
use crate::service::BrokerService;
use crate::tenancy::cache::Change;
use crate::tenancy::model::{
    AutoSubscriptionCreationOverride, AutoTopicCreationOverride, BacklogQuota, BacklogQuotaType, DispatchRate,
    InactiveTopicPolicies, PersistencePolicies, Policies, PublishRate, RetentionPolicies, TopicPolicies,
};
use crate::tenancy::store;
use crate::tenancy::PolicyDefaults;
use crate::topic_name::TopicName;

/// How a namespace policy is read from and written to `Policies` (the cluster names the
/// entry of per-cluster maps).
struct NamespaceField<T> {
    what: &'static str,
    get: fn(&Policies, &str) -> Option<T>,
    set: fn(&mut Policies, &str, Option<T>),
    /// What GET answers when the namespace sets nothing (the broker's default), where Pulsar
    /// answers that rather than `null`.
    default: Option<fn(&PolicyDefaults) -> T>,
}

/// How a topic policy is read from and written to `TopicPolicies`, and the query parameter
/// Pulsar's admin may send the value in instead of a body.
struct TopicField<T> {
    what: &'static str,
    query: Option<&'static str>,
    get: fn(&TopicPolicies) -> Option<T>,
    set: fn(&mut TopicPolicies, Option<T>),
}

fn cluster_entry<V: Clone>(map: &BTreeMap<String, V>, cluster: &str) -> Option<V> {
    map.get(cluster).cloned()
}

fn set_cluster_entry<V>(map: &mut BTreeMap<String, V>, cluster: &str, value: Option<V>) {
    match value {
        Some(value) => map.insert(cluster.to_owned(), value),
        None => map.remove(cluster),
    };
}

pub(super) fn routes() -> Router<AppState> {
    let ns = |policy: &str| format!("/admin/v2/namespaces/{{tenant}}/{{namespace}}/{policy}");
    let topic = |policy: &str| format!("/admin/v2/persistent/{{tenant}}/{{namespace}}/{{topic}}/{policy}");
    let int = "an integer";
    Router::new()
        .route(
            &ns("messageTTL"),
            namespace_policy(NamespaceField {
                what: int,
                get: |p, _| p.message_ttl_in_seconds,
                set: |p, _, v| p.message_ttl_in_seconds = v,
                default: None,
            }),
        )
        .route(
            &ns("retention"),
            namespace_policy(NamespaceField::<RetentionPolicies> {
                what: "a RetentionPolicies object",
                get: |p, _| p.retention_policies.clone(),
                set: |p, _, v| p.retention_policies = v,
                default: None,
            }),
        )
        .route(
            &ns("maxProducersPerTopic"),
            namespace_policy(NamespaceField {
                what: int,
                get: |p, _| p.max_producers_per_topic,
                set: |p, _, v| p.max_producers_per_topic = v,
                default: None,
            }),
        )
        .route(
            &ns("maxConsumersPerTopic"),
            namespace_policy(NamespaceField {
                what: int,
                get: |p, _| p.max_consumers_per_topic,
                set: |p, _, v| p.max_consumers_per_topic = v,
                default: None,
            }),
        )
        .route(
            &ns("maxConsumersPerSubscription"),
            namespace_policy(NamespaceField {
                what: int,
                get: |p, _| p.max_consumers_per_subscription,
                set: |p, _, v| p.max_consumers_per_subscription = v,
                default: None,
            }),
        )
        .route(
            &ns("maxUnackedMessagesPerConsumer"),
            namespace_policy(NamespaceField {
                what: int,
                get: |p, _| p.max_unacked_messages_per_consumer,
                set: |p, _, v| p.max_unacked_messages_per_consumer = v,
                default: None,
            }),
        )
        .route(
            &ns("maxUnackedMessagesPerSubscription"),
            namespace_policy(NamespaceField {
                what: int,
                get: |p, _| p.max_unacked_messages_per_subscription,
                set: |p, _, v| p.max_unacked_messages_per_subscription = v,
                default: None,
            }),
        )
        .route(
            &ns("maxSubscriptionsPerTopic"),
            namespace_policy(NamespaceField {
                what: int,
                get: |p, _| p.max_subscriptions_per_topic,
                set: |p, _, v| p.max_subscriptions_per_topic = v,
                default: None,
            }),
        )
        .route(
            &ns("maxTopicsPerNamespace"),
            namespace_policy(NamespaceField {
                what: int,
                get: |p, _| p.max_topics_per_namespace,
                set: |p, _, v| p.max_topics_per_namespace = v,
                default: None,
            }),
        )
        .route(
            &ns("subscriptionExpirationTime"),
            namespace_policy(NamespaceField {
                what: "an integer (minutes)",
                get: |p, _| p.subscription_expiration_time_minutes,
                set: |p, _, v| p.subscription_expiration_time_minutes = v,
                default: None,
            }),
        )
        .route(
            &ns("publishRate"),
            namespace_policy(NamespaceField::<PublishRate> {
                what: "a PublishRate object",
                get: |p, c| cluster_entry(&p.publish_max_message_rate, c),
                set: |p, c, v| set_cluster_entry(&mut p.publish_max_message_rate, c, v),
                default: None,
            }),
        )
        .route(
            &ns("dispatchRate"),
            namespace_policy(NamespaceField::<DispatchRate> {
                what: "a DispatchRate object",
                get: |p, c| cluster_entry(&p.topic_dispatch_rate, c),
                set: |p, c, v| set_cluster_entry(&mut p.topic_dispatch_rate, c, v),
                default: None,
            }),
        )
        .route(
            &ns("subscriptionDispatchRate"),
            namespace_policy(NamespaceField::<DispatchRate> {
                what: "a DispatchRate object",
                get: |p, c| cluster_entry(&p.subscription_dispatch_rate, c),
                set: |p, c, v| set_cluster_entry(&mut p.subscription_dispatch_rate, c, v),
                default: None,
            }),
        )
        .route(
            &ns("inactiveTopicPolicies"),
            namespace_policy(NamespaceField::<InactiveTopicPolicies> {
                what: "an InactiveTopicPolicies object",
                get: |p, _| p.inactive_topic_policies.clone(),
                set: |p, _, v| p.inactive_topic_policies = v,
                default: None,
            }),
        )
        .route(
            &ns("autoTopicCreation"),
            namespace_policy(NamespaceField::<AutoTopicCreationOverride> {
                what: "an AutoTopicCreationOverride object",
                get: |p, _| p.auto_topic_creation_override.clone(),
                set: |p, _, v| p.auto_topic_creation_override = v,
                default: None,
            }),
        )
        .route(
            &ns("autoSubscriptionCreation"),
            namespace_policy(NamespaceField::<AutoSubscriptionCreationOverride> {
                what: "an AutoSubscriptionCreationOverride object",
                get: |p, _| p.auto_subscription_creation_override.clone(),
                set: |p, _, v| p.auto_subscription_creation_override = v,
                default: None,
            }),
        )
        .route(
            &ns("subscriptionAuthMode"),
            namespace_policy(NamespaceField::<String> {
                what: "\"None\" or \"Prefix\"",
                get: |p, _| p.subscription_auth_mode.clone(),
                set: |p, _, v| p.subscription_auth_mode = v,
                default: Some(|_| "None".to_owned()),
            }),
        )
        .route(
            &ns("deduplication"),
            namespace_policy(NamespaceField {
                what: "true or false",
                get: |p, _| p.deduplication_enabled,
                set: |p, _, v| p.deduplication_enabled = v,
                default: Some(|d| d.deduplication_enabled),
            }),
        )
        .route(
            &ns("persistence"),
            namespace_policy(NamespaceField::<PersistencePolicies> {
                what: "a PersistencePolicies object",
                get: |p, _| p.persistence.clone(),
                set: |p, _, v| p.persistence = v,
                default: None,
            }),
        )
        .route(
            &ns("backlogQuota"),
            axum::routing::post(set_namespace_backlog_quota).delete(remove_namespace_backlog_quota),
        )
        .route(&ns("backlogQuotaMap"), get(namespace_backlog_quotas))
        .route(
            &topic("messageTTL"),
            topic_policy(TopicField {
                what: int,
                query: Some("messageTTL"),
                get: |p| p.message_ttl_in_seconds,
                set: |p, v| p.message_ttl_in_seconds = v,
            }),
        )
        .route(
            &topic("retention"),
            topic_policy(TopicField::<RetentionPolicies> {
                what: "a RetentionPolicies object",
                query: None,
                get: |p| p.retention_policies.clone(),
                set: |p, v| p.retention_policies = v,
            }),
        )
        .route(
            &ns("compactionThreshold"),
            namespace_policy(NamespaceField {
                what: int,
                get: |p, _| p.compaction_threshold,
                set: |p, _, v| p.compaction_threshold = v,
                default: None,
            }),
        )
        .route(
            &topic("compactionThreshold"),
            topic_policy(TopicField {
                what: int,
                query: None,
                get: |p| p.compaction_threshold,
                set: |p, v| p.compaction_threshold = v,
            }),
        )
        .route(
            &topic("maxProducers"),
            topic_policy(TopicField {
                what: int,
                query: None,
                get: |p| p.max_producer_per_topic,
                set: |p, v| p.max_producer_per_topic = v,
            }),
        )
        .route(
            &topic("maxConsumers"),
            topic_policy(TopicField {
                what: int,
                query: None,
                get: |p| p.max_consumer_per_topic,
                set: |p, v| p.max_consumer_per_topic = v,
            }),
        )
        .route(
            &topic("maxConsumersPerSubscription"),
            topic_policy(TopicField {
                what: int,
                query: None,
                get: |p| p.max_consumers_per_subscription,
                set: |p, v| p.max_consumers_per_subscription = v,
            }),
        )
        .route(
            &topic("maxUnackedMessagesOnConsumer"),
            topic_policy(TopicField {
                what: int,
                query: None,
                get: |p| p.max_unacked_messages_on_consumer,
                set: |p, v| p.max_unacked_messages_on_consumer = v,
            }),
        )
        .route(
            &topic("maxUnackedMessagesOnSubscription"),
            topic_policy(TopicField {
                what: int,
                query: None,
                get: |p| p.max_unacked_messages_on_subscription,
                set: |p, v| p.max_unacked_messages_on_subscription = v,
            }),
        )
        .route(
            &topic("maxSubscriptionsPerTopic"),
            topic_policy(TopicField {
                what: int,
                query: None,
                get: |p| p.max_subscriptions_per_topic,
                set: |p, v| p.max_subscriptions_per_topic = v,
            }),
        )
        .route(
            &topic("maxMessageSize"),
            topic_policy(TopicField {
                what: int,
                query: None,
                get: |p| p.max_message_size,
                set: |p, v| p.max_message_size = v,
            }),
        )
        .route(
            &topic("publishRate"),
            topic_policy(TopicField::<PublishRate> {
                what: "a PublishRate object",
                query: None,
                get: |p| p.publish_rate.clone(),
                set: |p, v| p.publish_rate = v,
            }),
        )
        .route(
            &topic("dispatchRate"),
            topic_policy(TopicField::<DispatchRate> {
                what: "a DispatchRate object",
                query: None,
                get: |p| p.dispatch_rate.clone(),
                set: |p, v| p.dispatch_rate = v,
            }),
        )
        .route(
            &topic("subscriptionDispatchRate"),
            topic_policy(TopicField::<DispatchRate> {
                what: "a DispatchRate object",
                query: None,
                get: |p| p.subscription_dispatch_rate.clone(),
                set: |p, v| p.subscription_dispatch_rate = v,
            }),
        )
        .route(
            &topic("deduplicationEnabled"),
            topic_policy(TopicField {
                what: "true or false",
                query: None,
                get: |p| p.deduplication_enabled,
                set: |p, v| p.deduplication_enabled = v,
            }),
        )
        .route(
            &topic("inactiveTopicPolicies"),
            topic_policy(TopicField::<InactiveTopicPolicies> {
                what: "an InactiveTopicPolicies object",
                query: None,
                get: |p| p.inactive_topic_policies.clone(),
                set: |p, v| p.inactive_topic_policies = v,
            }),
        )
        .route(&topic("backlogQuota"), axum::routing::post(set_topic_backlog_quota).delete(remove_topic_backlog_quota))
        .route(&topic("backlogQuotaMap"), get(topic_backlog_quotas))
        .route(
            &ns("schemaCompatibilityStrategy"),
            namespace_policy(NamespaceField::<StrategyName> {
                what: "a schema compatibility strategy name",
                get: |p, _| p.schema_compatibility_strategy.clone().map(StrategyName),
                set: |p, _, v| p.schema_compatibility_strategy = v.map(|name| name.0),
                default: Some(|d| StrategyName(d.schema_compatibility_strategy.name().to_owned())),
            }),
        )
        .route(
            &ns("schemaAutoUpdateCompatibilityStrategy"),
            namespace_policy(NamespaceField::<String> {
                what: "an auto-update strategy name",
                get: |p, _| p.schema_auto_update_compatibility_strategy.clone(),
                set: |p, _, v| p.schema_auto_update_compatibility_strategy = v,
                default: None,
            }),
        )
        .route(
            &ns("isAllowAutoUpdateSchema"),
            namespace_policy(NamespaceField {
                what: "true or false",
                get: |p, _| p.is_allow_auto_update_schema,
                set: |p, _, v| p.is_allow_auto_update_schema = v,
                default: Some(|d| d.allow_auto_update_schema),
            }),
        )
        .route(
            &ns("schemaValidationEnforced"),
            namespace_policy(NamespaceField {
                what: "true or false",
                get: |p, _| Some(p.schema_validation_enforced),
                set: |p, _, v| p.schema_validation_enforced = v.unwrap_or(false),
                default: None,
            }),
        )
        .route(
            &topic("schemaCompatibilityStrategy"),
            topic_policy(TopicField::<StrategyName> {
                what: "a schema compatibility strategy name",
                query: None,
                get: |p| p.schema_compatibility_strategy.clone().map(StrategyName),
                set: |p, v| p.schema_compatibility_strategy = v.map(|name| name.0),
            }),
        )
}

/// Stores a namespace change, then applies it to this broker's topics before answering.
pub(super) async fn change_namespace(
    service: &BrokerService,
    namespace: &str,
    change: impl Fn(&mut Policies) -> Result<(), BrokerError>,
) -> Result<StatusCode, ApiError> {
    store::update_policies(service.meta.as_ref(), namespace, change).await?;
    service.policies.refresh(&store::namespace_path(namespace)).await?;
    service.apply_policy_change(&Change::Namespace(namespace.to_owned())).await;
    Ok(StatusCode::NO_CONTENT)
}

fn namespace_policy<T>(field: NamespaceField<T>) -> MethodRouter<AppState>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let NamespaceField { what, get: read, set, default } = field;
    // Pulsar's admin POSTs most policies and PUTs a few (schemaCompatibilityStrategy): both.
    let write = move |State(service): State<AppState>, Path((tenant, ns)): Path<(String, String)>, body: String| async move {
        let value: T = json_body(&body, what)?;
        let namespace = format!("{tenant}/{ns}");
        let cluster = service.config.cluster_name.clone();
        let answer = change_namespace(&service, &namespace, |policies| {
            set(policies, &cluster, Some(value.clone()));
            Ok(())
        })
        .await?;
        info!(%namespace, "namespace policy set");
        Ok::<_, ApiError>(answer)
    };
    get(move |State(service): State<AppState>, Path((tenant, ns)): Path<(String, String)>| async move {
        let policies = store::policies(service.meta.as_ref(), &format!("{tenant}/{ns}")).await?;
        let value =
            read(&policies, &service.config.cluster_name).or_else(|| default.map(|d| d(&service.config.policies)));
        Ok::<_, ApiError>(Json(value))
    })
    .post(write)
    .put(write)
    .delete(move |State(service): State<AppState>, Path((tenant, ns)): Path<(String, String)>| async move {
        let namespace = format!("{tenant}/{ns}");
        let cluster = service.config.cluster_name.clone();
        change_namespace(&service, &namespace, |policies| {
            set(policies, &cluster, None);
            Ok(())
        })
        .await
    })
}

/// `?backlogQuotaType=destination_storage|message_age` (the first when absent).
#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct QuotaQuery {
    backlog_quota_type: Option<BacklogQuotaType>,
}

impl QuotaQuery {
    fn kind(&self) -> BacklogQuotaType {
        self.backlog_quota_type.unwrap_or(BacklogQuotaType::DestinationStorage)
    }
}

async fn set_namespace_backlog_quota(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
    Query(query): Query<QuotaQuery>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let quota: BacklogQuota = json_body(&body, "a BacklogQuota object")?;
    let kind = query.kind();
    change_namespace(&service, &format!("{tenant}/{ns}"), |policies| {
        policies.backlog_quota_map.insert(kind, quota.clone());
        Ok(())
    })
    .await
}

async fn remove_namespace_backlog_quota(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
    Query(query): Query<QuotaQuery>,
) -> Result<StatusCode, ApiError> {
    let kind = query.kind();
    change_namespace(&service, &format!("{tenant}/{ns}"), |policies| {
        policies.backlog_quota_map.remove(&kind);
        Ok(())
    })
    .await
}

async fn namespace_backlog_quotas(
    State(service): State<AppState>,
    Path((tenant, ns)): Path<(String, String)>,
) -> Result<Json<BTreeMap<BacklogQuotaType, BacklogQuota>>, ApiError> {
    let policies = store::policies(service.meta.as_ref(), &format!("{tenant}/{ns}")).await?;
    Ok(Json(policies.backlog_quota_map))
}

/// The topic of a topic-policy path: its namespace and the topic (or partitioned topic) must
/// exist.
async fn policy_topic(service: &BrokerService, tenant: &str, ns: &str, topic: &str) -> Result<TopicName, ApiError> {
    let name = existing_namespace_topic(service, tenant, ns, topic).await?;
    if !service.topic_exists(&name).await? && partitions::get(service.meta.as_ref(), &name).await?.is_none() {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("topic {name} not found")));
    }
    Ok(name)
}

/// Stores a topic's policy change, then applies it to this broker's topics before answering.
async fn change_topic(
    service: &BrokerService,
    name: &TopicName,
    change: impl Fn(&mut TopicPolicies) -> Result<(), BrokerError>,
) -> Result<StatusCode, ApiError> {
    store::update_topic_policies(service.meta.as_ref(), name, change).await?;
    service.policies.refresh(&store::topic_policies_path(name)).await?;
    service.apply_policy_change(&Change::Topic { namespace: name.namespace_name(), topic: name.to_string() }).await;
    Ok(StatusCode::NO_CONTENT)
}

type TopicPath = Path<(String, String, String)>;

fn topic_policy<T>(field: TopicField<T>) -> MethodRouter<AppState>
where
    T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static,
{
    let TopicField { what, query: parameter, get: read, set } = field;
    let write = move |State(service): State<AppState>,
                      Path((tenant, ns, topic)): TopicPath,
                      Query(query): Query<HashMap<String, String>>,
                      body: String| async move {
        let name = policy_topic(&service, &tenant, &ns, &topic).await?;
        let text = match parameter.and_then(|parameter| query.get(parameter)) {
            Some(value) if body.trim().is_empty() => value.clone(),
            _ => body,
        };
        let value: T = json_body(&text, what)?;
        let answer = change_topic(&service, &name, |policies| {
            set(policies, Some(value.clone()));
            Ok(())
        })
        .await?;
        info!(topic = %name, "topic policy set");
        Ok::<_, ApiError>(answer)
    };
    get(move |State(service): State<AppState>, Path((tenant, ns, topic)): TopicPath| async move {
        let name = policy_topic(&service, &tenant, &ns, &topic).await?;
        let policies = store::topic_policies(service.meta.as_ref(), &name).await?;
        Ok::<_, ApiError>(Json(read(&policies)))
    })
    .post(write)
    .put(write)
    .delete(move |State(service): State<AppState>, Path((tenant, ns, topic)): TopicPath| async move {
        let name = policy_topic(&service, &tenant, &ns, &topic).await?;
        change_topic(&service, &name, |policies| {
            set(policies, None);
            Ok(())
        })
        .await
    })
}

async fn set_topic_backlog_quota(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): TopicPath,
    Query(query): Query<QuotaQuery>,
    body: String,
) -> Result<StatusCode, ApiError> {
    let name = policy_topic(&service, &tenant, &ns, &topic).await?;
    let quota: BacklogQuota = json_body(&body, "a BacklogQuota object")?;
    let kind = query.kind();
    change_topic(&service, &name, |policies| {
        policies.back_log_quota_map.insert(kind, quota.clone());
        Ok(())
    })
    .await
}

async fn remove_topic_backlog_quota(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): TopicPath,
    Query(query): Query<QuotaQuery>,
) -> Result<StatusCode, ApiError> {
    let name = policy_topic(&service, &tenant, &ns, &topic).await?;
    let kind = query.kind();
    change_topic(&service, &name, |policies| {
        policies.back_log_quota_map.remove(&kind);
        Ok(())
    })
    .await
}

async fn topic_backlog_quotas(
    State(service): State<AppState>,
    Path((tenant, ns, topic)): TopicPath,
) -> Result<Json<BTreeMap<BacklogQuotaType, BacklogQuota>>, ApiError> {
    let name = policy_topic(&service, &tenant, &ns, &topic).await?;
    Ok(Json(store::topic_policies(service.meta.as_ref(), &name).await?.back_log_quota_map))
}

/// A schema compatibility strategy's name as policies keep it, checked when set (Pulsar's
/// names, `UNDEFINED` included).
#[derive(Clone, Serialize)]
#[serde(transparent)]
struct StrategyName(String);

impl<'de> Deserialize<'de> for StrategyName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        let parsed = crate::schema::Strategy::parse_policy(&name).map_err(serde::de::Error::custom)?;
        Ok(StrategyName(parsed.map_or_else(|| "UNDEFINED".to_owned(), |strategy| strategy.name().to_owned())))
    }
}
