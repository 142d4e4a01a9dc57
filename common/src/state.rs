//! A local copy of the master's state, built from watch events, for lookups on the request path.

use std::sync::Arc;

// Read on every request (host -> task, node records): a fast hasher. Keys are the master's,
// not a client's, so no flooding of one bucket from outside.
use foldhash::HashMap;

use crate::{
    acme::{AcmeRecord, CertStatus, Challenge, StoredCert},
    lease::Lease,
    node::NodeStatus,
    task::Task,
    watch::{WatchEvent, WatchResponse},
};

/// What the master knows, as last seen by this process.
#[derive(Debug, Default, Clone)]
pub struct ClusterState {
    pub revision: u64,
    tasks: HashMap<String, Arc<Task>>,
    /// The task itself rather than its id: one lookup per request, not two.
    by_domain: HashMap<String, Arc<Task>>,
    /// Shared, so a request path can hold one without copying its list of running tasks.
    nodes: HashMap<String, Arc<NodeStatus>>,
    leases: HashMap<String, Lease>,
    /// ACME records by key (`certs/<domain>`, `challenges/<token>`, `status/<domain>`).
    acme: HashMap<String, Arc<AcmeRecord>>,
    /// TLS-ALPN-01 challenges by domain (the CA names the domain, not the token).
    alpn: HashMap<String, String>,
}

impl ClusterState {
    pub fn apply_response(&mut self, resp: &WatchResponse) {
        if resp.reset {
            *self = ClusterState::default();
        }
        for ev in &resp.events {
            self.apply(ev);
        }
        self.revision = resp.revision;
    }

    pub fn apply(&mut self, ev: &WatchEvent) {
        match ev {
            WatchEvent::TaskPut { task } => {
                if let Some(old) = self.tasks.remove(&task.id) {
                    for d in &old.spec.domains {
                        self.by_domain.remove(d);
                    }
                }
                let task = Arc::new((**task).clone());
                for d in &task.spec.domains {
                    self.by_domain.insert(d.clone(), task.clone());
                }
                self.tasks.insert(task.id.clone(), task);
            }
            WatchEvent::TaskDeleted { id } => {
                if let Some(old) = self.tasks.remove(id) {
                    for d in &old.spec.domains {
                        self.by_domain.remove(d);
                    }
                }
            }
            WatchEvent::NodePut { node } => {
                self.nodes.insert(node.id.clone(), Arc::new(node.clone()));
            }
            WatchEvent::NodeDeleted { id } => {
                self.nodes.remove(id);
            }
            WatchEvent::LeasePut { lease } => {
                self.leases.insert(lease.task_id.clone(), lease.clone());
            }
            WatchEvent::LeaseReleased { task_id, token, .. } => {
                if self.leases.get(task_id).is_some_and(|l| l.token == *token) {
                    self.leases.remove(task_id);
                }
            }
            WatchEvent::AcmePut { record } => {
                let key = record.key();
                if let AcmeRecord::Challenge(c) = &**record {
                    self.alpn.insert(c.domain.clone(), key.clone());
                }
                self.acme.insert(key, Arc::new((**record).clone()));
            }
            WatchEvent::AcmeDeleted { key } => {
                if let Some(old) = self.acme.remove(key) {
                    if let AcmeRecord::Challenge(c) = &*old {
                        if self.alpn.get(&c.domain) == Some(key) {
                            self.alpn.remove(&c.domain);
                        }
                    }
                }
            }
        }
    }

    /// The task serving `domain` (already lower-case, without port).
    pub fn task_by_domain(&self, domain: &str) -> Option<Arc<Task>> {
        self.by_domain.get(domain).cloned()
    }
    pub fn task(&self, id: &str) -> Option<Arc<Task>> {
        self.tasks.get(id).cloned()
    }
    pub fn tasks(&self) -> impl Iterator<Item = &Arc<Task>> {
        self.tasks.values()
    }
    pub fn node(&self, id: &str) -> Option<&Arc<NodeStatus>> {
        self.nodes.get(id)
    }
    pub fn nodes(&self) -> impl Iterator<Item = &Arc<NodeStatus>> {
        self.nodes.values()
    }
    pub fn lease(&self, task_id: &str) -> Option<&Lease> {
        self.leases.get(task_id)
    }
    /// The certificate the ACME orderer stored for `domain`.
    pub fn cert(&self, domain: &str) -> Option<&StoredCert> {
        match self.acme.get(&format!("certs/{domain}")).map(|r| &**r) {
            Some(AcmeRecord::Cert(c)) => Some(c),
            _ => None,
        }
    }
    /// The HTTP-01 challenge with this token.
    pub fn challenge(&self, token: &str) -> Option<&Challenge> {
        match self.acme.get(&format!("challenges/{token}")).map(|r| &**r) {
            Some(AcmeRecord::Challenge(c)) => Some(c),
            _ => None,
        }
    }
    /// The TLS-ALPN-01 challenge for `domain`, the newest if several.
    pub fn alpn_challenge(&self, domain: &str) -> Option<&Challenge> {
        let key = self.alpn.get(domain)?;
        match self.acme.get(key).map(|r| &**r) {
            Some(AcmeRecord::Challenge(c)) => Some(c),
            _ => None,
        }
    }
    pub fn cert_status(&self, domain: &str) -> Option<&CertStatus> {
        match self.acme.get(&format!("status/{domain}")).map(|r| &**r) {
            Some(AcmeRecord::Status(s)) => Some(s),
            _ => None,
        }
    }
    /// Every stored certificate.
    pub fn certs(&self) -> impl Iterator<Item = &StoredCert> {
        self.acme.values().filter_map(|r| match &**r {
            AcmeRecord::Cert(c) => Some(c),
            _ => None,
        })
    }
}
