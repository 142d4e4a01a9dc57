//! Host firewall rules that fence apps from the node itself and from cloud metadata services.
//!
//! Docker's network (inter-container traffic off) keeps apps from each other, but a container can
//! still open connections to any address of its host (the bridge's gateway, the host's public IP:
//! the node proxy, the node's SSH, anything listening) and to the link-local metadata service
//! (169.254.169.254 on AWS, DigitalOcean and others), which hands out the instance's credentials.
//! Two rule pairs on the app network's bridge close both, and leave the apps' outbound internet
//! and the node's own connections to them (published ports, answered as ESTABLISHED) alone:
//!
//! - `INPUT -i <bridge> -m conntrack --ctstate NEW`: rejected (TCP with a reset, so the app sees
//!   "connection refused" at once);
//! - `DOCKER-USER -i <bridge> -d 169.254.0.0/16`: rejected (Docker's chain for operators' rules,
//!   evaluated before its own forwarding rules).
//!
//! Rules are checked with `iptables -C` and inserted only when missing, so restarts and several
//! nodes on one host add each once. They stay when the node stops: the apps they fence may
//! outlive it until the next start removes them.

use std::str::FromStr;

/// What the node does about the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Install them; a node that cannot (not root, no iptables) warns and runs unfenced.
    Auto,
    /// Install them or refuse to start.
    On,
    /// Leave the host firewall alone (the operator fences apps another way).
    Off,
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Mode::Auto),
            "on" => Ok(Mode::On),
            "off" => Ok(Mode::Off),
            other => Err(format!(
                "SHADOW_APP_FIREWALL is {other:?}; use auto, on or off"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot fence the apps from the node with iptables ({message}); run the node as root with iptables installed, or set SHADOW_APP_FIREWALL=off and fence the app network's bridge {bridge} yourself")]
pub struct FirewallError {
    pub bridge: String,
    pub message: String,
}

/// The metadata services' range: IPv4 link-local.
pub const LINK_LOCAL: &str = "169.254.0.0/16";

/// Every rule, as `(chain, match and target)`, in the order they should be evaluated.
pub fn rules(bridge: &str) -> Vec<(&'static str, Vec<String>)> {
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    let new_from_apps = ["-i", bridge, "-m", "conntrack", "--ctstate", "NEW"];
    let to_metadata = ["-i", bridge, "-d", LINK_LOCAL];
    let tcp_reset = ["-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"];
    let reject = ["-j", "REJECT"];
    let comment = [
        "-m",
        "comment",
        "--comment",
        "shadow: apps may not reach the node or metadata",
    ];
    let rule = |m: &[&str], t: &[&str]| [s(m), s(&comment), s(t)].concat();
    vec![
        ("INPUT", rule(&new_from_apps, &tcp_reset)),
        ("INPUT", rule(&new_from_apps, &reject)),
        ("DOCKER-USER", rule(&to_metadata, &tcp_reset)),
        ("DOCKER-USER", rule(&to_metadata, &reject)),
    ]
}

async fn iptables(args: &[String]) -> Result<std::process::Output, std::io::Error> {
    tokio::process::Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .await
}

/// Installs the missing rules for `bridge`.
pub async fn fence(bridge: &str) -> Result<(), FirewallError> {
    let fail = |message: String| FirewallError {
        bridge: bridge.to_owned(),
        message,
    };
    // Inserted at the top in reverse, so they end up in `rules` order ahead of anything else.
    for (chain, spec) in rules(bridge).into_iter().rev() {
        let check = [vec!["-C".to_owned(), chain.to_owned()], spec.clone()].concat();
        let present = iptables(&check)
            .await
            .map_err(|e| fail(format!("cannot run iptables: {e}")))?;
        if present.status.success() {
            continue;
        }
        let insert = [
            vec!["-I".to_owned(), chain.to_owned(), "1".to_owned()],
            spec,
        ]
        .concat();
        let out = iptables(&insert)
            .await
            .map_err(|e| fail(format!("cannot run iptables: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!(
                "iptables -I {chain} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// Applies `mode`: the rules, a warning, or nothing.
pub async fn apply(mode: Mode, bridge: &str) -> Result<(), FirewallError> {
    match mode {
        Mode::Off => {
            tracing::info!(
                bridge,
                "SHADOW_APP_FIREWALL=off: the host firewall is left to `shadow-nodeproxy firewall` (run as root) or the operator"
            );
            Ok(())
        }
        Mode::On => fence(bridge).await,
        Mode::Auto => {
            if let Err(e) = fence(bridge).await {
                tracing::warn!(error = %e, "apps can reach this node's services and the cloud metadata service");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_reject_new_connections_to_the_host_and_metadata_from_the_bridge_only() {
        let r = rules("br-abc");
        assert_eq!(r.len(), 4);
        for (chain, spec) in &r {
            let line = spec.join(" ");
            assert!(line.starts_with("-i br-abc "), "{chain}: {line}");
            match *chain {
                "INPUT" => assert!(line.contains("--ctstate NEW"), "{line}"),
                "DOCKER-USER" => assert!(line.contains("-d 169.254.0.0/16"), "{line}"),
                other => panic!("unexpected chain {other}"),
            }
            assert!(line.contains("-j REJECT"), "{line}");
        }
        assert_eq!("on".parse::<Mode>(), Ok(Mode::On));
        assert!("yes"
            .parse::<Mode>()
            .unwrap_err()
            .contains("auto, on or off"));
    }
}
