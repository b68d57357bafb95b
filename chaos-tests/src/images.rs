//! Images the container tests need, built here from local files (no registry is reachable).

use std::process::Command;

/// Builds `xene/busybox:latest` with `scripts/busybox-image.sh` (quick when it exists).
pub fn busybox_image() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/busybox-image.sh");
    let status = Command::new("bash").arg(script).status().expect("run busybox-image.sh");
    assert!(status.success(), "scripts/busybox-image.sh failed: these tests need Docker and a local image");
}
