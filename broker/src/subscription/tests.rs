//! Properties of the delivery core, driven without I/O by random sequences of attach,
//! detach, flow, publish, reads (begun and finished apart, so rewinds race with them), ack
//! (whole entries, batch indexes, cumulative), negative ack and ack timeout (redelivery of
//! listed ids), redeliver-all, seek, cursor persist and crash-restart, over all four
//! subscription types. A model of what each client received and acknowledged is checked at
//! every send:
//!
//! 1. no acknowledged message (batch index) is delivered again, also after a crash once its
//!    ack was persisted;
//! 2. every unacknowledged message is eventually delivered (a final drain acks everything);
//! 3. Exclusive and Failover deliver first sends in log order;
//! 4. Key_Shared never sends a newly read message of a key to one consumer while another
//!    consumer still holds an unacknowledged message of that key (the recently-joined rule,
//!    consumers joining and leaving);
//! 5. Shared and Key_Shared never give one message to two consumers at once.
//!
//! `PROPTEST_CASES=N` runs more cases; a failure prints the shrunk sequence to replay.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::delivery::{Delivery, Dispatched, EntryMeta, Next};
use crate::dispatcher::key_shared::sticky_key_hash;
use crate::dispatcher::{Consumer, KeySharedOptions, SubscribeOptions, SubscriptionType};
use crate::managed_ledger::{CursorState, LedgerPositions, Position, PositionView};

const KEYS: u8 = 4;
const SLOTS: u64 = 3;

#[derive(Debug, Clone)]
enum Op {
    Attach { slot: u64, priority: i32 },
    Detach { slot: u64 },
    Flow { slot: u64, permits: u32 },
    Publish { key: u8, batch: bool },
    Roll,
    BeginRead,
    EndRead,
    Ack { slot: u64, pick: usize },
    AckIndex { slot: u64, pick: usize, index: u32 },
    AckCumulative { slot: u64, pick: usize },
    Nack { slot: u64, pick: usize },
    RedeliverAll { slot: u64 },
    Seek { pick: Option<usize> },
    Persist,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..SLOTS, 0..2i32).prop_map(|(slot, priority)| Op::Attach { slot, priority }),
        1 => (0..SLOTS).prop_map(|slot| Op::Detach { slot }),
        3 => (0..SLOTS, 1..6u32).prop_map(|(slot, permits)| Op::Flow { slot, permits }),
        5 => (0..KEYS, any::<bool>()).prop_map(|(key, batch)| Op::Publish { key, batch }),
        1 => Just(Op::Roll),
        5 => Just(Op::BeginRead),
        5 => Just(Op::EndRead),
        4 => (0..SLOTS, any::<usize>()).prop_map(|(slot, pick)| Op::Ack { slot, pick }),
        2 => (0..SLOTS, any::<usize>(), 0..3u32).prop_map(|(slot, pick, index)| Op::AckIndex { slot, pick, index }),
        1 => (0..SLOTS, any::<usize>()).prop_map(|(slot, pick)| Op::AckCumulative { slot, pick }),
        2 => (0..SLOTS, any::<usize>()).prop_map(|(slot, pick)| Op::Nack { slot, pick }),
        1 => (0..SLOTS).prop_map(|slot| Op::RedeliverAll { slot }),
        1 => proptest::option::of(any::<usize>()).prop_map(|pick| Op::Seek { pick }),
        2 => Just(Op::Persist),
        1 => Just(Op::Crash),
    ]
}

fn sub_type() -> impl Strategy<Value = SubscriptionType> {
    prop_oneof![
        Just(SubscriptionType::Exclusive),
        Just(SubscriptionType::Failover),
        Just(SubscriptionType::Shared),
        Just(SubscriptionType::KeyShared),
    ]
}

/// A read begun and not yet given back.
struct PendingRead {
    entries: Vec<(Position, EntryMeta)>,
    epoch: u64,
    from_replay: bool,
}

/// The subscription under test and a model of its clients.
struct Harness {
    sub_type: SubscriptionType,
    delivery: Delivery,
    ledgers: LedgerPositions,
    /// Every entry published: its metadata and its key.
    entries: BTreeMap<Position, (EntryMeta, u8)>,
    /// Attached consumers (by the model): what each holds unacknowledged, with the batch
    /// indexes it was given.
    inboxes: BTreeMap<u64, BTreeMap<Position, BTreeSet<u32>>>,
    /// Batch indexes acknowledged (as the model counts them) and as last persisted.
    acked: BTreeMap<Position, BTreeSet<u32>>,
    persisted_acked: BTreeMap<Position, BTreeSet<u32>>,
    persisted: CursorState,
    /// Single-active types: the last position first sent (redelivery count 0).
    last_first_send: Option<Position>,
    pending: Option<PendingRead>,
}

impl Harness {
    fn new(sub_type: SubscriptionType) -> Self {
        Harness {
            sub_type,
            delivery: Delivery::new("persistent://t/n/topic", "sub", sub_type, None, CursorState::default()),
            ledgers: LedgerPositions { ledgers: vec![(1, 0)] },
            entries: BTreeMap::new(),
            inboxes: BTreeMap::new(),
            acked: BTreeMap::new(),
            persisted_acked: BTreeMap::new(),
            persisted: CursorState::default(),
            last_first_send: None,
            pending: None,
        }
    }

    fn options(&self) -> SubscribeOptions {
        let key_shared = (self.sub_type == SubscriptionType::KeyShared).then(|| KeySharedOptions {
            sticky: false,
            ranges: Vec::new(),
            allow_out_of_order: false,
        });
        SubscribeOptions { sub_type: self.sub_type, key_shared }
    }

    fn messages(&self, position: Position) -> u32 {
        self.entries[&position].0.messages as u32
    }

    fn fully_acked(&self, position: Position) -> bool {
        self.acked.get(&position).is_some_and(|set| set.len() as u32 == self.messages(position))
    }

    fn ack_indexes(&mut self, position: Position, indexes: impl IntoIterator<Item = u32>) {
        self.acked.entry(position).or_default().extend(indexes);
        for inbox in self.inboxes.values_mut() {
            if let Some(held) = inbox.get_mut(&position) {
                let acked = &self.acked[&position];
                held.retain(|i| !acked.contains(i));
                if held.is_empty() {
                    inbox.remove(&position);
                }
            }
        }
    }

    /// The `pick`th message a consumer holds.
    fn held(&self, slot: u64, pick: usize) -> Option<Position> {
        let inbox = self.inboxes.get(&slot)?;
        inbox.keys().nth(pick % inbox.len().max(1)).copied()
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op.clone() {
            Op::Attach { slot, priority } => {
                if self.inboxes.contains_key(&slot) {
                    return Ok(());
                }
                let consumer = Consumer {
                    id: slot,
                    name: format!("c{slot}"),
                    priority_level: priority,
                    permits: 0,
                    blocked: false,
                };
                if self.delivery.attach(consumer, &self.options()).is_ok() {
                    self.inboxes.insert(slot, BTreeMap::new());
                } else {
                    prop_assert!(
                        self.sub_type == SubscriptionType::Exclusive && !self.inboxes.is_empty(),
                        "only a second Exclusive consumer is refused"
                    );
                }
            }
            Op::Detach { slot } => {
                prop_assert_eq!(self.delivery.detach(slot), self.inboxes.remove(&slot).is_some());
            }
            Op::Flow { slot, permits } => self.delivery.flow(slot, permits),
            Op::Publish { key, batch } => {
                let (ledger_id, entries) = self.ledgers.ledgers.last_mut().expect("a ledger");
                let position = Position::new(*ledger_id, *entries);
                *entries += 1;
                let meta = EntryMeta {
                    messages: if batch { 3 } else { 1 },
                    deliver_at_ms: None,
                    hash: sticky_key_hash(format!("key-{key}").as_bytes()),
                };
                self.entries.insert(position, (meta, key));
            }
            Op::Roll => {
                let next = self.ledgers.ledgers.last().expect("a ledger").0 + 2;
                self.ledgers.ledgers.push((next, 0));
            }
            Op::BeginRead => {
                if self.pending.is_none() {
                    self.pending = self.begin_read();
                }
            }
            Op::EndRead => {
                if let Some(read) = self.pending.take() {
                    self.end_read(read)?;
                }
            }
            Op::Ack { slot, pick } => {
                if let Some(position) = self.held(slot, pick) {
                    self.delivery.ack(&[(position, Vec::new())], false, &self.ledgers)?;
                    self.ack_indexes(position, 0..self.messages(position));
                }
            }
            Op::AckIndex { slot, pick, index } => {
                let Some(position) = self.held(slot, pick) else { return Ok(()) };
                let messages = self.messages(position);
                if messages == 1 {
                    return Ok(());
                }
                let index = index % messages;
                // As a client acknowledging one batch index: every other index's bit set.
                let unacked = ((1i64 << messages) - 1) & !(1i64 << index);
                self.delivery.ack(&[(position, vec![unacked])], false, &self.ledgers)?;
                self.ack_indexes(position, [index]);
            }
            Op::AckCumulative { slot, pick } => {
                let Some(position) = self.held(slot, pick) else { return Ok(()) };
                let result = self.delivery.ack(&[(position, Vec::new())], true, &self.ledgers);
                if self.sub_type.individual_ack_only() {
                    prop_assert!(result.is_err(), "cumulative ack refused on {:?}", self.sub_type);
                } else {
                    result?;
                    let through: Vec<Position> = self.entries.range(..=position).map(|(p, _)| *p).collect();
                    for acked in through {
                        self.ack_indexes(acked, 0..self.messages(acked));
                    }
                }
            }
            Op::Nack { slot, pick } => {
                if let Some(position) = self.held(slot, pick) {
                    self.delivery.redeliver(slot, &[position]);
                    self.inboxes.get_mut(&slot).map(|inbox| inbox.remove(&position));
                }
            }
            Op::RedeliverAll { slot } => {
                if let Some(inbox) = self.inboxes.get_mut(&slot) {
                    self.delivery.redeliver(slot, &[]);
                    // The client clears what it holds: it comes again.
                    inbox.clear();
                }
            }
            Op::Seek { pick } => {
                let target = pick.and_then(|pick| self.entries.keys().nth(pick % self.entries.len().max(1)).copied());
                let closed = self.delivery.seek(target);
                prop_assert_eq!(closed.len(), self.inboxes.len());
                self.inboxes.clear();
                self.acked.clear();
                for position in
                    self.entries.keys().copied().filter(|p| target.is_some_and(|t| *p <= t)).collect::<Vec<_>>()
                {
                    self.acked.insert(position, (0..self.messages(position)).collect());
                }
                self.last_first_send = None;
            }
            Op::Persist => {
                // Through the record form, as the cursor's persister writes and reads it.
                let record = self.delivery.cursor().to_record();
                self.persisted = CursorState::from_record(&record).map_err(TestCaseError::fail)?;
                self.persisted_acked = self.acked.clone();
            }
            Op::Crash => {
                self.delivery =
                    Delivery::new("persistent://t/n/topic", "sub", self.sub_type, None, self.persisted.clone());
                self.inboxes.clear();
                self.acked = self.persisted_acked.clone();
                self.last_first_send = None;
                self.pending = None;
            }
        }
        self.check_cursor()
    }

    /// The core's cursor agrees with the model on which entries are acknowledged.
    fn check_cursor(&self) -> Result<(), TestCaseError> {
        for position in self.entries.keys() {
            prop_assert_eq!(
                self.delivery.cursor().is_acked(*position),
                self.fully_acked(*position),
                "cursor and model disagree on {}",
                position
            );
        }
        Ok(())
    }

    fn begin_read(&mut self) -> Option<PendingRead> {
        match self.delivery.next(0, &self.ledgers) {
            Next::Wait { .. } => None,
            Next::Replay { positions, epoch } => {
                let entries = positions.iter().map(|p| (*p, self.entries[p].0)).collect();
                Some(PendingRead { entries, epoch, from_replay: true })
            }
            Next::Read { from, max, epoch, .. } => {
                let mut entries = Vec::new();
                let mut at = Some(from);
                while let Some(position) = at.filter(|_| entries.len() < max as usize) {
                    entries.push((position, self.entries[&position].0));
                    at = self.ledgers.next_position(Some(position));
                }
                Some(PendingRead { entries, epoch, from_replay: false })
            }
        }
    }

    fn end_read(&mut self, read: PendingRead) -> Result<(), TestCaseError> {
        let sends = self.delivery.dispatch(&read.entries, read.epoch, read.from_replay, 0);
        for send in sends {
            let position = read.entries[send.index].0;
            self.check_send(&send, position, read.from_replay)?;
            let indexes = self.delivered_indexes(&send, position);
            self.inboxes.get_mut(&send.consumer_id).expect("checked").insert(position, indexes);
        }
        Ok(())
    }

    fn delivered_indexes(&self, send: &Dispatched, position: Position) -> BTreeSet<u32> {
        (0..self.messages(position))
            .filter(|i| {
                send.ack_set.is_empty() || send.ack_set.get(*i as usize / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
            })
            .collect()
    }

    fn check_send(&mut self, send: &Dispatched, position: Position, from_replay: bool) -> Result<(), TestCaseError> {
        prop_assert!(self.inboxes.contains_key(&send.consumer_id), "sent to a consumer that is not attached");
        // 1. Nothing acknowledged goes out again.
        let indexes = self.delivered_indexes(send, position);
        prop_assert!(!indexes.is_empty(), "{} sent with every index acknowledged", position);
        if let Some(acked) = self.acked.get(&position) {
            prop_assert!(indexes.is_disjoint(acked), "{} indexes {:?} sent again after their ack", position, acked);
        }
        let others_hold = |h: &Harness, which: &dyn Fn(&Position) -> bool| {
            h.inboxes.iter().any(|(id, inbox)| *id != send.consumer_id && inbox.keys().any(which))
        };
        match self.sub_type {
            // 3. First sends in log order.
            SubscriptionType::Exclusive | SubscriptionType::Failover => {
                if send.redelivery_count == 0 {
                    prop_assert!(
                        self.last_first_send.is_none_or(|last| position > last),
                        "{} first sent after {:?}",
                        position,
                        self.last_first_send
                    );
                    self.last_first_send = Some(position);
                }
            }
            SubscriptionType::Shared | SubscriptionType::KeyShared => {
                // 5. One consumer at a time.
                prop_assert!(!others_hold(self, &|p| *p == position), "{} held by two consumers", position);
                // 4. Key order: a new message of a key waits for the key's messages held elsewhere.
                if self.sub_type == SubscriptionType::KeyShared && !from_replay {
                    let key = self.entries[&position].1;
                    let same_key = |p: &Position| self.entries[p].1 == key;
                    prop_assert!(
                        !others_hold(self, &same_key),
                        "{} of key {} sent to {} while another consumer holds that key",
                        position,
                        key,
                        send.consumer_id
                    );
                }
            }
        }
        Ok(())
    }

    /// 2. With a consumer attached that acknowledges everything, every message is delivered.
    fn drain(&mut self) -> Result<(), TestCaseError> {
        self.pending = None;
        if self.inboxes.is_empty() {
            self.apply(&Op::Attach { slot: 0, priority: 0 })?;
        }
        for _ in 0..10_000 {
            if self.entries.keys().all(|p| self.fully_acked(*p)) {
                return Ok(());
            }
            let slots: Vec<u64> = self.inboxes.keys().copied().collect();
            for slot in slots {
                self.delivery.flow(slot, 10);
                while self.inboxes.get(&slot).is_some_and(|inbox| !inbox.is_empty()) {
                    self.apply(&Op::Ack { slot, pick: 0 })?;
                }
            }
            if let Some(read) = self.begin_read() {
                self.end_read(read)?;
            }
        }
        let missing: Vec<Position> = self.entries.keys().copied().filter(|p| !self.fully_acked(*p)).collect();
        Err(TestCaseError::fail(format!("never delivered and acknowledged: {missing:?}")))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn delivery_keeps_its_guarantees(sub_type in sub_type(), ops in proptest::collection::vec(op(), 0..120)) {
        let mut harness = Harness::new(sub_type);
        for op in &ops {
            harness.apply(op)?;
        }
        harness.drain()?;
    }
}

#[test]
fn batch_index_acks_survive_a_restart() {
    let mut harness = Harness::new(SubscriptionType::Shared);
    let ops = [
        Op::Publish { key: 0, batch: true },
        Op::Attach { slot: 0, priority: 0 },
        Op::Flow { slot: 0, permits: 10 },
        Op::BeginRead,
        Op::EndRead,
        Op::AckIndex { slot: 0, pick: 0, index: 1 },
        Op::Persist,
        Op::Crash,
        Op::Attach { slot: 0, priority: 0 },
        Op::Flow { slot: 0, permits: 10 },
        Op::BeginRead,
    ];
    for op in &ops {
        harness.apply(op).expect("op");
    }
    let read = harness.pending.take().expect("the batch is read again");
    let sends = harness.delivery.dispatch(&read.entries, read.epoch, read.from_replay, 0);
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].ack_set, vec![0b101], "index 1 was acknowledged before the restart");
}

#[test]
fn a_consumer_at_its_unacked_limit_is_sent_nothing_until_acks_bring_it_to_half() {
    use super::delivery::UnackedLimits;
    let positions: Vec<Position> = (0..8).map(|entry| Position::new(1, entry)).collect();
    let view = LedgerPositions { ledgers: vec![(1, 8)] };
    let meta = EntryMeta { messages: 1, deliver_at_ms: None, hash: 0 };
    let mut delivery = Delivery::new("t", "s", SubscriptionType::Shared, None, CursorState::at(None));
    delivery.set_limits(UnackedLimits { per_consumer: Some(4), per_subscription: None, read_batch: None });
    let options = SubscribeOptions { sub_type: SubscriptionType::Shared, key_shared: None };
    let consumer = Consumer { id: 1, name: "c".into(), priority_level: 0, permits: 0, blocked: false };
    delivery.attach(consumer, &options).expect("attach");
    delivery.flow(1, 100);
    let read = |delivery: &mut Delivery, from: usize| {
        let Next::Read { epoch, .. } = delivery.next(0, &view) else { return 0 };
        let entries: Vec<(Position, EntryMeta)> = positions[from..].iter().map(|p| (*p, meta)).collect();
        delivery.dispatch(&entries, epoch, false, 0).len()
    };
    assert_eq!(read(&mut delivery, 0), 4, "four sent, then the consumer is at its limit");
    assert!(matches!(delivery.next(0, &view), Next::Wait { .. }), "blocked: nothing to read for it");
    delivery.ack(&[(positions[0], Vec::new())], false, &view).expect("ack");
    assert!(matches!(delivery.next(0, &view), Next::Wait { .. }), "3 held: still above half the limit");
    delivery.ack(&[(positions[1], Vec::new())], false, &view).expect("ack");
    // The entries read while it was blocked wait in the replay set, sent first.
    assert!(matches!(delivery.next(0, &view), Next::Replay { .. }), "2 held: half the limit, unblocked");
    // The subscription's own limit blocks everyone.
    delivery.set_limits(UnackedLimits { per_consumer: None, per_subscription: Some(2), read_batch: None });
    assert!(matches!(delivery.next(0, &view), Next::Wait { .. }), "the subscription holds 2 of 2");
}

#[test]
fn reads_ask_for_about_as_many_entries_as_the_permits_hold_messages() {
    use super::delivery::UnackedLimits;
    let view = LedgerPositions { ledgers: vec![(1, 10_000)] };
    let mut delivery = Delivery::new("t", "s", SubscriptionType::Exclusive, None, CursorState::at(None));
    let options = SubscribeOptions { sub_type: SubscriptionType::Exclusive, key_shared: None };
    let consumer = Consumer { id: 1, name: "c".into(), priority_level: 0, permits: 0, blocked: false };
    delivery.attach(consumer, &options).expect("attach");
    delivery.flow(1, 1000);
    let max_of = |delivery: &mut Delivery| match delivery.next(0, &view) {
        Next::Read { max, .. } => max,
        other => panic!("expected a read, got {other:?}"),
    };
    assert_eq!(max_of(&mut delivery), 100, "unknown entries: one message each, at most the read batch");
    // Batch entries of 100 messages: the reads shrink to what the permits hold.
    let batch = EntryMeta { messages: 100, deliver_at_ms: None, hash: 0 };
    let mut next_entry = 0;
    for _ in 0..40 {
        delivery.flow(1, 1000);
        let Next::Read { epoch, max, .. } = delivery.next(0, &view) else { panic!("a read") };
        let entries: Vec<(Position, EntryMeta)> =
            (next_entry..next_entry + u64::from(max)).map(|e| (Position::new(1, e), batch)).collect();
        next_entry += u64::from(max);
        delivery.dispatch(&entries, epoch, false, 0);
        let sent: Vec<Position> = entries.iter().map(|(p, _)| *p).collect();
        let acks: Vec<(Position, Vec<i64>)> = sent.iter().map(|p| (*p, Vec::new())).collect();
        delivery.ack(&acks, false, &view).expect("ack");
    }
    // The consumer holds about 1,000 permits again: about 10 entries of 100 messages.
    delivery.flow(1, 1000);
    let max = max_of(&mut delivery);
    assert!((5..=20).contains(&max), "about permits / 100 entries, not {max}");
    // The broker's read batch caps it.
    delivery.set_limits(UnackedLimits { read_batch: Some(3), ..UnackedLimits::default() });
    assert!(max_of(&mut delivery) <= 3);
}
