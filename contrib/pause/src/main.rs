//! The only process of a sandbox: a container made ahead of a cold start to hold a fresh network
//! namespace and the published app port, which the app's container then joins
//! (`NetworkMode: container:<sandbox>`). It does nothing but wait; the node removes the sandbox
//! with the app's run.
//!
//! Built static (`RUSTFLAGS="-C target-feature=+crt-static"`) so the node can make its image
//! `FROM scratch` without a registry; the Debian package ships it as
//! `/usr/lib/shadow/shadow-pause`.
#![forbid(unsafe_code)]

fn main() {
    loop {
        // Parks the thread for good: no CPU, no wake-ups. A spurious unpark just parks again.
        std::thread::park();
    }
}
