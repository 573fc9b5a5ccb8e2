//! Generates the wire types into OUT_DIR. protoc comes from the PROTOC variable that
//! .cargo/config.toml sets for the whole workspace, or else from the protoc-bin-vendored crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("PROTOC").is_none() {
        // tonic-prost-build reads PROTOC; only this build script's process sees the change.
        std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?);
    }
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .bytes(".magnetar.bookie")
        .compile_protos(&["proto/pulsar.proto", "proto/bookie.proto", "proto/records.proto"], &["proto"])?;
    Ok(())
}
