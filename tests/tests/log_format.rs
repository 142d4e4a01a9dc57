//! The programs' own logs as an operator's log shipper gets them: `SHADOW_LOG_FORMAT=json` gives
//! one JSON object per line; text written to a pipe carries no terminal colour codes; a wrong
//! format is named.

use std::{process::Stdio, time::Duration};

use shadow_tests::procs;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Starts the master binary with `format` (unset when `None`), its output piped, and answers
/// its lines up to and including the "master listening" one (20 s at most).
async fn master_lines(format: Option<&str>) -> Vec<String> {
    let dir = tempfile::tempdir().expect("data dir");
    let mut cmd = tokio::process::Command::new(procs::binaries().await.join("shadow-master"));
    cmd.env_clear()
        .env("SHADOW_MASTER_LISTEN", procs::free_addr().to_string())
        .env("SHADOW_DATA_DIR", dir.path())
        .env("SHADOW_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(f) = format {
        cmd.env("SHADOW_LOG_FORMAT", f);
    }
    let mut child = cmd.spawn().expect("shadow-master starts");
    let mut out = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut lines = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = out.next_line().await.expect("read") {
            let done = line.contains("master listening");
            lines.push(line);
            if done {
                return;
            }
        }
        panic!("the master ended before listening: {lines:?}");
    })
    .await
    .expect("the master listened within 20 s");
    lines
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_text_to_a_pipe_has_no_colour_codes() {
    let json = master_lines(Some("json")).await;
    for line in &json {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
    }
    let listening: serde_json::Value =
        serde_json::from_str(json.last().expect("a line")).expect("JSON");
    assert_eq!(listening["fields"]["message"], "master listening");

    let text = master_lines(None).await;
    assert!(
        text.iter().all(|l| !l.contains('\u{1b}')),
        "escape codes in a pipe: {text:?}"
    );

    let wrong = master_lines(Some("yaml")).await;
    assert!(
        wrong
            .iter()
            .any(|l| l.contains("SHADOW_LOG_FORMAT is \"yaml\"; use text or json")),
        "{wrong:?}"
    );
}
