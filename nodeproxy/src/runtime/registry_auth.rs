//! Registry credentials for pulls, from a Docker `config.json`-style file
//! (`SHADOW_REGISTRY_AUTH_FILE`): `{"auths": {"<registry>": {"auth": "<base64 user:pass>"}}}`
//! or `{"username": .., "password": ..}` per registry, as `docker login` writes it.
//!
//! The file is read at each pull, so rotated credentials need no restart.

use std::{collections::HashMap, path::Path};

use base64::Engine;
use bollard::auth::DockerCredentials;
use serde::Deserialize;

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    auths: HashMap<String, Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// The registry an image reference names: its first component when that looks like a host
/// (has a dot or a port, or is `localhost`), else Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// How Docker Hub may be written as a key.
fn same_registry(key: &str, registry: &str) -> bool {
    let key = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let key = key.split('/').next().unwrap_or(key);
    let hub = |r: &str| matches!(r, "docker.io" | "index.docker.io" | "registry-1.docker.io");
    key == registry || (hub(key) && hub(registry))
}

/// The credentials for `image`'s registry in `file`, if it has some.
pub fn credentials(file: &Path, image: &str) -> Result<Option<DockerCredentials>, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read the registry auth file {}: {e}", file.display()))?;
    let parsed: File = serde_json::from_str(&text).map_err(|e| {
        format!(
            "the registry auth file {} is not a Docker config.json ({{\"auths\": {{...}}}}): {e}",
            file.display()
        )
    })?;
    let registry = registry_of(image);
    let Some((key, entry)) = parsed
        .auths
        .iter()
        .find(|(k, _)| same_registry(k, registry))
    else {
        return Ok(None);
    };
    let (username, password) = match (&entry.username, &entry.password, &entry.auth) {
        (Some(u), Some(p), _) => (u.clone(), p.clone()),
        (_, _, Some(auth)) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    format!(
                        "the auth of {key} in {} is not base64 of user:password",
                        file.display()
                    )
                })?;
            let (u, p) = decoded.split_once(':').ok_or_else(|| {
                format!(
                    "the auth of {key} in {} is not user:password",
                    file.display()
                )
            })?;
            (u.to_owned(), p.to_owned())
        }
        _ => {
            return Err(format!(
                "the entry for {key} in {} has neither auth nor username and password",
                file.display()
            ))
        }
    };
    Ok(Some(DockerCredentials {
        username: Some(username),
        password: Some(password),
        serveraddress: Some(key.clone()),
        ..Default::default()
    }))
}

/// What kind of pull failure Docker's message describes, for a message that says what to do.
pub fn classify(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("unauthorized")
        || m.contains("authentication required")
        || m.contains("no basic auth credentials")
        || m.contains("denied")
    {
        "the registry refused the credentials (or none were given): check SHADOW_REGISTRY_AUTH_FILE on the node"
    } else if m.contains("not found") || m.contains("manifest unknown") || m.contains("unknown") {
        "the registry has no such image or tag: check the name and tag"
    } else {
        "the registry could not be reached: check the node's network and the registry's address"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_is_the_first_component_when_it_is_a_host() {
        assert_eq!(registry_of("nginx:1"), "docker.io");
        assert_eq!(registry_of("me/app"), "docker.io");
        assert_eq!(registry_of("ghcr.io/me/app:1"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/app"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/app"), "localhost");
    }

    #[test]
    fn credentials_come_from_auth_or_username_and_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"ghcr.io": {"auth": "dXNlcjpwYXNz"},
                "https://index.docker.io/v1/": {"username": "hub", "password": "pw"}}}"#,
        )
        .unwrap();
        let c = credentials(&path, "ghcr.io/me/app:1").unwrap().unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("user"), Some("pass"))
        );
        let hub = credentials(&path, "me/app").unwrap().unwrap();
        assert_eq!(hub.username.as_deref(), Some("hub"));
        assert!(credentials(&path, "quay.io/x/y").unwrap().is_none());
        std::fs::write(&path, "not json").unwrap();
        assert!(credentials(&path, "ghcr.io/a")
            .unwrap_err()
            .contains("config.json"));
    }
}
