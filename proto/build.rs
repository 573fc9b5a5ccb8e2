//! Generates the wire types into OUT_DIR. protoc comes from the PROTOC variable that
//! .cargo/config.toml sets for the whole workspace, or else from the protoc-bin-vendored crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // tonic-prost-build reads PROTOC; only this build script's process sees the change.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto");
    // BaseCommand holds every command inline; the commands Magnetar added for the current
    // PulsarApi.proto (transactions, watchers, scalable topics) are boxed so that the envelope
    // every frame is decoded into stays small (inline, it tripled in size and overflowed
    // the stack of debug builds).
    let mut config = tonic_prost_build::configure().bytes(".magnetar.bookie");
    for field in BOXED_COMMANDS {
        config = config.boxed(format!(".magnetar.pulsar.BaseCommand.{field}"));
    }
    config.compile_protos(&["proto/pulsar.proto", "proto/bookie.proto", "proto/records.proto"], &["proto"])?;
    Ok(())
}

/// BaseCommand fields 50 to 81.
const BOXED_COMMANDS: &[&str] = &[
    "new_txn",
    "new_txn_response",
    "add_partition_to_txn",
    "add_partition_to_txn_response",
    "add_subscription_to_txn",
    "add_subscription_to_txn_response",
    "end_txn",
    "end_txn_response",
    "end_txn_on_partition",
    "end_txn_on_partition_response",
    "end_txn_on_subscription",
    "end_txn_on_subscription_response",
    "tc_client_connect_request",
    "tc_client_connect_response",
    "watch_topic_list",
    "watch_topic_list_success",
    "watch_topic_update",
    "watch_topic_list_close",
    "topic_migrated",
    "scalable_topic_lookup",
    "scalable_topic_update",
    "scalable_topic_close",
    "scalable_topic_subscribe",
    "scalable_topic_subscribe_response",
    "scalable_topic_assignment_update",
    "watch_scalable_topics",
    "watch_scalable_topics_update",
    "watch_scalable_topics_close",
    "watch_tc_assignments",
    "watch_tc_assignments_update",
    "watch_tc_assignments_close",
];
