//! Generates the tonic/prost code from `proto/xene/v1/*.proto` with a vendored protoc, so no
//! system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc) };
    let files = [
        "proto/xene/v1/raft.proto",
        "proto/xene/v1/kv.proto",
        "proto/xene/v1/cluster.proto",
        "proto/xene/v1/object.proto",
        "proto/xene/v1/agent.proto",
        "proto/xene/v1/run.proto",
        "proto/xene/v1/secret.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    tonic_prost_build::configure().build_client(true).build_server(true).compile_protos(&files, &["proto"])?;
    Ok(())
}
