//! Signing in to the dashboard: a session cookie signed with the API token, and the CSRF token
//! every form carries.
//!
//! Nothing is kept on the master: a cookie is `<expiry>.<HMAC(token, expiry)>`, so any master
//! sharing the token accepts it, and changing the token signs everyone out. A form's CSRF token
//! is an HMAC of the session cookie, which a page of another site can neither read nor make.
//! Without an API token (a master on loopback only) nobody signs in, and the CSRF key is random
//! per process.

use ring::{hmac, rand::SecureRandom};

/// The cookie's name.
pub const COOKIE: &str = "shadow_session";
/// How long a sign-in lasts.
pub const SESSION_S: u64 = 12 * 3600;

pub struct Sessions {
    key: hmac::Key,
    /// The API token's own HMAC, to compare a typed token in constant time.
    token_tag: Option<hmac::Tag>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Sessions {
    pub fn new(api_token: Option<&str>) -> Self {
        match api_token {
            Some(t) => {
                let key = hmac::Key::new(hmac::HMAC_SHA256, t.as_bytes());
                let token_tag = Some(hmac::sign(&key, b"login"));
                Self { key, token_tag }
            }
            None => {
                let mut secret = [0u8; 32];
                // A failed draw leaves zeros: CSRF then only holds within SameSite cookies,
                // and there are no sessions to steal without a token.
                let _ = ring::rand::SystemRandom::new().fill(&mut secret);
                Self {
                    key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
                    token_tag: None,
                }
            }
        }
    }

    /// Whether signing in is needed at all.
    pub fn required(&self) -> bool {
        self.token_tag.is_some()
    }

    /// Whether `typed` is the API token (constant time).
    pub fn token_matches(&self, typed: &str) -> bool {
        let Some(tag) = &self.token_tag else {
            return true;
        };
        let typed_key = hmac::Key::new(hmac::HMAC_SHA256, typed.as_bytes());
        hmac::verify(&typed_key, b"login", tag.as_ref()).is_ok()
    }

    /// A new session's cookie value, valid until `now_s + SESSION_S`.
    pub fn issue(&self, now_s: u64) -> String {
        let expiry = now_s + SESSION_S;
        let tag = hmac::sign(&self.key, format!("session:{expiry}").as_bytes());
        format!("{expiry}.{}", hex(tag.as_ref()))
    }

    /// Whether a cookie value is a session this token signed that has not expired.
    pub fn valid(&self, cookie: Option<&str>, now_s: u64) -> bool {
        if !self.required() {
            return true;
        }
        let Some((expiry, sig)) = cookie.and_then(|c| c.split_once('.')) else {
            return false;
        };
        let (Ok(at), Some(sig)) = (expiry.parse::<u64>(), unhex(sig)) else {
            return false;
        };
        at > now_s && hmac::verify(&self.key, format!("session:{expiry}").as_bytes(), &sig).is_ok()
    }

    /// The CSRF token of forms shown within session `cookie`.
    pub fn csrf(&self, cookie: Option<&str>) -> String {
        let tag = hmac::sign(
            &self.key,
            format!("csrf:{}", cookie.unwrap_or("")).as_bytes(),
        );
        hex(tag.as_ref())
    }

    /// Whether a form's CSRF token belongs to session `cookie`.
    pub fn csrf_ok(&self, cookie: Option<&str>, sent: Option<&str>) -> bool {
        let Some(sig) = sent.and_then(unhex) else {
            return false;
        };
        hmac::verify(
            &self.key,
            format!("csrf:{}", cookie.unwrap_or("")).as_bytes(),
            &sig,
        )
        .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_holds_until_it_expires_and_only_under_its_token() {
        let s = Sessions::new(Some("secret-token"));
        let c = s.issue(1000);
        assert!(s.valid(Some(&c), 1000));
        assert!(!s.valid(Some(&c), 1000 + SESSION_S), "expired");
        assert!(
            !Sessions::new(Some("other")).valid(Some(&c), 1000),
            "another token"
        );
        let forged = format!(
            "{}{}",
            &c[..c.len() - 1],
            if c.ends_with('0') { '1' } else { '0' }
        );
        assert!(!s.valid(Some(&forged), 1000));
        let later = c.replacen(
            &(1000 + SESSION_S).to_string(),
            &(9000 + SESSION_S).to_string(),
            1,
        );
        assert!(!s.valid(Some(&later), 1000), "an expiry pushed out");
        assert!(!s.valid(None, 1000));
        assert!(s.token_matches("secret-token") && !s.token_matches("secret-tokem"));
    }

    #[test]
    fn a_csrf_token_belongs_to_its_session() {
        let s = Sessions::new(Some("t"));
        let (a, b) = (s.issue(1), s.issue(2));
        let t = s.csrf(Some(&a));
        assert!(s.csrf_ok(Some(&a), Some(&t)));
        assert!(!s.csrf_ok(Some(&b), Some(&t)));
        assert!(!s.csrf_ok(Some(&a), None));
        assert!(!s.csrf_ok(Some(&a), Some("zz")));
    }
}
