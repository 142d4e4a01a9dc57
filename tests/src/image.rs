//! The test app's Docker image, built from this workspace for tests that run real containers.
//!
//! [`counter_image`] builds `contrib/apps/counter` as a static binary and the image
//! `shadow-test/counter:latest` from it (`FROM scratch`, the Dockerfile beside the app), and returns
//! the tag. Nothing is pulled: the machines that run the tests have no registry.
//!
//! It is safe to call from every test: within a process the work is done once, and across test
//! processes a file lock serializes the builds. A repeated build is cheap, since cargo and Docker's
//! layer cache both see that nothing changed, and it picks up a changed app.
//!
//! Set `SHADOW_TEST_COUNTER_IMAGE` to use an image built beforehand instead (it is returned as is).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tokio::sync::OnceCell;

/// The tag of the image [`counter_image`] builds.
pub const COUNTER_IMAGE: &str = "shadow-test/counter:latest";

/// The target the static binary is built for: this machine's (x86_64 or aarch64). Naming it
/// keeps the static RUSTFLAGS away from the host build's cache, which they would otherwise
/// invalidate.
fn target() -> String {
    format!("{}-unknown-linux-gnu", std::env::consts::ARCH)
}

/// Why the image could not be built, with the output of the command that failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the test image {COUNTER_IMAGE}: {0}")]
pub struct ImageError(String);

/// Builds (or rebuilds, cheaply) `shadow-test/counter:latest` and returns its tag.
pub async fn counter_image() -> Result<String, ImageError> {
    // A tokio OnceCell rather than std's: callers wait without blocking their runtime's thread,
    // and a failed build is not cached, so a later caller tries again.
    static BUILT: OnceCell<String> = OnceCell::const_new();
    BUILT
        .get_or_try_init(|| async {
            if let Ok(image) = std::env::var("SHADOW_TEST_COUNTER_IMAGE") {
                return Ok(image);
            }
            tokio::task::spawn_blocking(build_counter_image)
                .await
                .map_err(|e| ImageError(format!("the build task failed: {e}")))?
        })
        .await
        .cloned()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies inside the workspace")
        .to_path_buf()
}

/// Builds the binary and the image, holding a lock that other test processes wait on.
fn build_counter_image() -> Result<String, ImageError> {
    let lock_path = std::env::temp_dir().join("shadow-test-counter-image.lock");
    let lock = File::create(&lock_path)
        .map_err(|e| ImageError(format!("cannot open {}: {e}", lock_path.display())))?;
    // Called through the trait: std's own `File::lock` is newer than the workspace's rust-version.
    fs4::FileExt::lock(&lock)
        .map_err(|e| ImageError(format!("cannot lock {}: {e}", lock_path.display())))?;
    let binary = build_binary("shadow-counter", "counter")?;
    build_image(&binary)?;
    // Closing `lock` releases it.
    drop(lock);
    Ok(COUNTER_IMAGE.to_owned())
}

/// Builds the static `shadow-pause` (the sandboxes' process, which the node makes its own image
/// from) and returns its path, for nodes' `pause_binary`.
pub async fn pause_binary() -> Result<PathBuf, ImageError> {
    static BUILT: OnceCell<PathBuf> = OnceCell::const_new();
    BUILT
        .get_or_try_init(|| async {
            tokio::task::spawn_blocking(|| {
                let lock_path = std::env::temp_dir().join("shadow-test-pause.lock");
                let lock = File::create(&lock_path)
                    .map_err(|e| ImageError(format!("cannot open {}: {e}", lock_path.display())))?;
                fs4::FileExt::lock(&lock)
                    .map_err(|e| ImageError(format!("cannot lock {}: {e}", lock_path.display())))?;
                build_binary("shadow-pause", "shadow-pause")
            })
            .await
            .map_err(|e| ImageError(format!("the build task failed: {e}")))?
        })
        .await
        .cloned()
}

/// Runs cargo for a static binary and returns its path, as cargo reports it.
fn build_binary(package: &str, bin: &str) -> Result<PathBuf, ImageError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace_root())
        .args(["build", "--release", "-p", package, "--target", &target()])
        .arg("--message-format=json-render-diagnostics")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        // Takes precedence over RUSTFLAGS, and `cargo test` may have set it for us.
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    let output = run(&mut command, &format!("cargo build -p {package}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == bin
        })
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| ImageError(format!("cargo built no `{bin}` executable")))
}

/// Builds the image from a directory holding only the binary and the app's Dockerfile.
fn build_image(binary: &Path) -> Result<(), ImageError> {
    let context = tempfile::tempdir()
        .map_err(|e| ImageError(format!("cannot make a build directory: {e}")))?;
    let dockerfile = workspace_root().join("contrib/apps/counter/Dockerfile");
    let copy =
        |from: &Path, to: &str| -> io::Result<u64> { std::fs::copy(from, context.path().join(to)) };
    copy(binary, "counter")
        .and_then(|_| copy(&dockerfile, "Dockerfile"))
        .map_err(|e| ImageError(format!("cannot fill the build directory: {e}")))?;
    let mut command = Command::new("docker");
    command
        .args(["build", "--quiet", "--tag", COUNTER_IMAGE])
        .arg(context.path())
        // The classic builder: buildx may be missing, and this image needs nothing BuildKit adds.
        .env("DOCKER_BUILDKIT", "0");
    run(&mut command, "docker build")?;
    Ok(())
}

fn run(command: &mut Command, what: &str) -> Result<Output, ImageError> {
    let output = command
        .output()
        .map_err(|e| ImageError(format!("cannot run `{what}`: {e}")))?;
    if !output.status.success() {
        // Both tools put their errors on stderr (cargo's stdout holds JSON messages here).
        return Err(ImageError(format!(
            "`{what}` failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn concurrent_callers_get_one_runnable_image() {
        let (a, b) = tokio::join!(counter_image(), counter_image());
        assert_eq!(a.unwrap(), COUNTER_IMAGE);
        assert_eq!(b.unwrap(), COUNTER_IMAGE);
        let inspect = Command::new("docker")
            .args([
                "image",
                "inspect",
                "--format",
                "{{json .Config.Entrypoint}}",
                COUNTER_IMAGE,
            ])
            .output()
            .unwrap();
        assert!(inspect.status.success());
        assert_eq!(
            String::from_utf8_lossy(&inspect.stdout).trim(),
            r#"["/counter"]"#
        );
    }
}
