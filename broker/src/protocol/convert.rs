//! Wire to domain: the Pulsar commands' fields as the broker's own types, each checked once
//! here (an unknown enum value is refused with an error naming it).

use magnetar_proto::pulsar as pb;

use crate::dispatcher::{key_shared, KeySharedOptions, SubscriptionType};
use crate::error::BrokerError;
use crate::managed_ledger::{ManagedLedger, Position};
use crate::subscription::start::mark_delete_for_publish_time;
use crate::subscription::{InitialPosition, StartAt};
use crate::topic::AccessMode;

/// CommandSubscribe's `sub_type`.
pub fn sub_type(wire: i32) -> Result<SubscriptionType, BrokerError> {
    use pb::command_subscribe::SubType;
    match SubType::try_from(wire) {
        Ok(SubType::Exclusive) => Ok(SubscriptionType::Exclusive),
        Ok(SubType::Shared) => Ok(SubscriptionType::Shared),
        Ok(SubType::Failover) => Ok(SubscriptionType::Failover),
        Ok(SubType::KeyShared) => Ok(SubscriptionType::KeyShared),
        Err(_) => Err(BrokerError::NotAllowed { what: format!("unknown subscription type {wire}") }),
    }
}

/// CommandSubscribe's `key_shared_meta`, for a Key_Shared subscription (declared hash ranges
/// checked: ConsumerAssignError when out of bounds).
pub fn key_shared_options(
    meta: Option<&pb::KeySharedMeta>,
    sub_type: SubscriptionType,
) -> Result<Option<KeySharedOptions>, BrokerError> {
    let (Some(meta), SubscriptionType::KeyShared) = (meta, sub_type) else { return Ok(None) };
    let sticky = meta.key_shared_mode() == pb::KeySharedMode::Sticky;
    let ranges: Vec<(i32, i32)> = meta.hash_ranges.iter().map(|r| (r.start, r.end)).collect();
    let ranges = key_shared::ranges_from_wire(&ranges)
        .map_err(|error| BrokerError::ConsumerAssign { what: error.to_string() })?;
    Ok(Some(KeySharedOptions { sticky, ranges, allow_out_of_order: meta.allow_out_of_order_delivery() }))
}

pub fn initial_position(wire: pb::command_subscribe::InitialPosition) -> InitialPosition {
    match wire {
        pb::command_subscribe::InitialPosition::Earliest => InitialPosition::Earliest,
        pb::command_subscribe::InitialPosition::Latest => InitialPosition::Latest,
    }
}

/// CommandProducer's `producer_access_mode` (absent: Shared).
pub fn access_mode(wire: Option<i32>) -> Result<AccessMode, BrokerError> {
    match pb::ProducerAccessMode::try_from(wire.unwrap_or(0)) {
        Ok(pb::ProducerAccessMode::Shared) => Ok(AccessMode::Shared),
        Ok(pb::ProducerAccessMode::Exclusive) => Ok(AccessMode::Exclusive),
        Ok(pb::ProducerAccessMode::WaitForExclusive) => Ok(AccessMode::WaitForExclusive),
        Ok(pb::ProducerAccessMode::ExclusiveWithFencing) => Ok(AccessMode::ExclusiveWithFencing),
        Err(_) => Err(BrokerError::NotAllowed { what: format!("unknown producer access mode {wire:?}") }),
    }
}

/// Message ids as positions.
pub fn positions(ids: &[pb::MessageIdData]) -> Vec<Position> {
    ids.iter().map(|id| Position::new(id.ledger_id, id.entry_id)).collect()
}

/// An ACK's ids with their batch ack sets (a batch-index ack carries the bits of the indexes
/// still unacknowledged), and whether it is cumulative.
pub fn ack_ids(ack: &pb::CommandAck) -> (Vec<(Position, Vec<i64>)>, bool) {
    let cumulative = ack.ack_type() == pb::command_ack::AckType::Cumulative;
    let ids = ack.message_id.iter().map(|id| (Position::new(id.ledger_id, id.entry_id), id.ack_set.clone())).collect();
    (ids, cumulative)
}

/// Where a reader (non-durable subscription) starts, as Pulsar's `getNonDurableSubscription`:
/// at the entry of `start_message_id` (-1:-1 = the start; past the end = the end). Pulsar
/// takes every start id as a batch id and steps back one entry, so the whole entry comes
/// and the client drops what it must (everything up to the id unless inclusive). A
/// rollback duration starts at the first message published within it.
pub async fn reader_start(
    ledger: &ManagedLedger,
    request: &pb::CommandSubscribe,
    initial: InitialPosition,
) -> Result<StartAt, BrokerError> {
    if let Some(seconds) = request.start_message_rollback_duration_sec.filter(|s| *s > 0) {
        let since = magnetar_proto::clock::now_ms().saturating_sub(seconds.saturating_mul(1000));
        return Ok(StartAt::After(mark_delete_for_publish_time(ledger, since).await?));
    }
    let Some(id) = &request.start_message_id else { return Ok(StartAt::Initial(initial)) };
    if id.ledger_id == u64::MAX || id.ledger_id as i64 == -1 {
        return Ok(StartAt::After(None));
    }
    let position = Position::new(id.ledger_id, id.entry_id);
    let Some(last) = ledger.last_confirmed() else { return Ok(StartAt::After(None)) };
    if position > last {
        return Ok(StartAt::After(Some(last)));
    }
    Ok(StartAt::After(ledger.position_before(position)))
}
