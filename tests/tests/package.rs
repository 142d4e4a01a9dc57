//! `contrib/package.sh`: the four `.deb` packages carry their program, unit, env file and
//! completions for this machine's architecture, and their units pass `systemd-analyze verify`.
//! (CI also installs them for real: `contrib/ci/check-packages.sh`.)

use std::{path::Path, process::Command};

use shadow_tests::procs;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_packages_hold_each_program_with_its_unit_and_the_units_verify() {
    let bins = procs::binaries().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root");
    let out = tempfile::tempdir().expect("out");
    let built = run(Command::new("bash")
        .arg(root.join("contrib/package.sh"))
        .arg("--bin-dir")
        .arg(&bins)
        .arg("--out")
        .arg(out.path()));
    let debs: Vec<&str> = built.lines().collect();
    assert_eq!(debs.len(), 4, "{built}");
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    let arch = arch.trim();
    let version = env!("CARGO_PKG_VERSION");

    for (name, program) in [
        ("shadow-master", Some("master")),
        ("shadow-nodeproxy", Some("nodeproxy")),
        ("shadow-edgeproxy", Some("edgeproxy")),
        ("shadow-cli", None),
    ] {
        let deb = out.path().join(format!("{name}_{version}_{arch}.deb"));
        assert!(deb.exists(), "{} missing: {built}", deb.display());
        let field = |f: &str| {
            run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f))
                .trim()
                .to_owned()
        };
        assert_eq!(field("Package"), name);
        assert_eq!(field("Architecture"), arch);
        let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
        let bin = program.map_or("shadow".to_owned(), |p| format!("shadow-{p}"));
        assert!(contents.contains(&format!("./usr/bin/{bin}")), "{contents}");
        if name == "shadow-nodeproxy" {
            // The sandbox's process, static: the node makes its image FROM scratch.
            assert!(
                contents.contains("./usr/lib/shadow/shadow-pause"),
                "{contents}"
            );
        }
        let dir = tempfile::tempdir().expect("extract");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.path()));
        let help = run(Command::new(dir.path().join("usr/bin").join(&bin)).arg("--help"));
        assert!(!help.is_empty());
        let Some(p) = program else {
            let completion = std::fs::read_to_string(
                dir.path()
                    .join("usr/share/bash-completion/completions/shadow"),
            )
            .expect("bash completion");
            assert!(completion.contains("wake"), "{completion}");
            continue;
        };
        let env = dir.path().join(format!("etc/shadowd/{p}.env"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&env).expect("env").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "the env file holds the token");
        let conffiles = run(Command::new("dpkg-deb")
            .args(["-I"])
            .arg(&deb)
            .arg("conffiles"));
        assert_eq!(
            conffiles.trim(),
            format!("/etc/shadowd/{p}.env"),
            "edits survive upgrades"
        );

        // The unit as packaged, its programs pointed at the extracted ones (verify checks that
        // they are executable, every directive, and the units it needs).
        let unit = dir
            .path()
            .join(format!("lib/systemd/system/shadow-{p}.service"));
        let text = std::fs::read_to_string(&unit).expect("unit");
        assert!(
            text.contains(&format!("ExecStart=/usr/bin/{bin}")),
            "{text}"
        );
        assert!(!text.contains("/usr/local/"), "{text}");
        let check = tempfile::tempdir().expect("verify dir");
        let copy = check.path().join(format!("shadow-{p}.service"));
        let bin_dir = format!("{}/", dir.path().join("usr/bin").display());
        std::fs::write(&copy, text.replace("/usr/bin/", &bin_dir)).expect("copy");
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&copy)
            .output()
            .expect("systemd-analyze (Debian's systemd)");
        assert!(
            verify.status.success() && verify.stderr.is_empty(),
            "shadow-{p}.service: {}",
            String::from_utf8_lossy(&verify.stderr)
        );
    }
}
