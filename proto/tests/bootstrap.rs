//! Regenerates the gRPC code from `proto/` and fails when the committed copy
//! in `src/gen/` differs, so a board never needs `protoc` to build.

use std::path::PathBuf;

#[test]
fn generated_code_is_fresh() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let protos = [
        "proto/fleet/v1/types.proto",
        "proto/fleet/v1/agent.proto",
        "proto/fleet/v1/controller.proto",
    ]
    .map(|p| root.join(p));
    let out = root.join("src/gen");
    let tmp = tempfile::tempdir().unwrap();
    std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path().unwrap());
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(tmp.path().join("fleet_descriptor.bin"))
        .out_dir(tmp.path())
        .compile_protos(&protos, &[root.join("proto")])
        .expect("protoc failed");

    let mut stale = Vec::new();
    for name in ["fleet.v1.rs", "fleet_descriptor.bin"] {
        let fresh = std::fs::read(tmp.path().join(name)).unwrap();
        let committed = std::fs::read(out.join(name)).unwrap_or_default();
        if fresh != committed {
            if std::env::var_os("FLEET_BLESS").is_some() {
                std::fs::create_dir_all(&out).unwrap();
                std::fs::write(out.join(name), &fresh).unwrap();
            } else {
                stale.push(name);
            }
        }
    }
    assert!(
        stale.is_empty(),
        "generated code in proto/src/gen is stale ({stale:?}); run `FLEET_BLESS=1 cargo test -p fleet-proto --test bootstrap` and commit the result"
    );
}
