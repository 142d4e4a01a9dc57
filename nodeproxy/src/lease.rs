//! The node's leases: taken at a stateful app's start, renewed together in one call per period
//! (the node's session), each with a local deadline by which its app must be dead.
//!
//! A deadline is counted from when a renewal was *sent*. The master counts the expiry from when
//! it *received* the renewal, which is later, so the node's deadline is never after the master's.
//! The app must be dead a stop margin before its deadline ([`Held::must_stop`] fires then), and
//! the master waits a further grace after the expiry before it grants the lease to anyone else.
//! A renewal call is bounded by the time left, so a blackholed link cannot hold a decision back.
//! `docs/leases.md` has the arithmetic.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use shadow_common::{
    client::{ClientError, MasterClient},
    lease::{HeldLease, LeaseGrant, SessionRenewal, SessionRenewed},
};
use tokio::{sync::watch, time::Instant};

use crate::volume::{FenceCheck, FenceError};

/// The calls the session makes; the master client in production, a scripted fake in tests.
#[async_trait]
pub trait LeaseApi: Send + Sync {
    async fn acquire(
        &self,
        task_id: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<LeaseGrant, ClientError>;
    async fn renew_session(
        &self,
        node: &str,
        req: &SessionRenewal,
    ) -> Result<SessionRenewed, ClientError>;
    async fn release(&self, task_id: &str, token: u64) -> Result<(), ClientError>;
}

#[async_trait]
impl LeaseApi for MasterClient {
    async fn acquire(
        &self,
        task_id: &str,
        node: &str,
        ttl: Duration,
    ) -> Result<LeaseGrant, ClientError> {
        self.acquire_lease(task_id, node, ttl).await
    }
    async fn renew_session(
        &self,
        node: &str,
        req: &SessionRenewal,
    ) -> Result<SessionRenewed, ClientError> {
        MasterClient::renew_session(self, node, req).await
    }
    async fn release(&self, task_id: &str, token: u64) -> Result<(), ClientError> {
        self.release_lease(task_id, token).await
    }
}

/// The three durations a node's leases run on.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTiming {
    /// How long a lease lives after each renewal was sent.
    pub ttl: Duration,
    /// How often the session renews (a quarter of the TTL).
    pub renew_every: Duration,
    /// How long before its deadline an app is killed: the time a kill may take.
    pub stop_margin: Duration,
}

impl LeaseTiming {
    pub fn new(ttl: Duration, stop_margin: Duration) -> Self {
        Self {
            ttl,
            renew_every: ttl / 4,
            stop_margin,
        }
    }
}

/// Where a held lease stands, as far as this node can know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Held until at least `until` (the master cannot have re-granted it before then).
    Valid { until: Instant },
    /// The master said it is gone: the app must stop at once.
    Lost,
}

struct Entry {
    token: u64,
    standing: watch::Sender<Standing>,
}

/// Every lease this node holds, renewed together.
pub struct LeaseSession {
    api: Arc<dyn LeaseApi>,
    node_id: String,
    timing: LeaseTiming,
    /// A std mutex: held only to read or update the map, never across an await.
    held: Mutex<HashMap<String, Entry>>,
}

/// Why a lease could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    #[error(transparent)]
    Master(#[from] ClientError),
    #[error("the master did not answer the lease request within {0:?}")]
    TimedOut(Duration),
}

impl LeaseSession {
    pub fn new(api: Arc<dyn LeaseApi>, node_id: String, timing: LeaseTiming) -> Arc<Self> {
        Arc::new(Self {
            api,
            node_id,
            timing,
            held: Mutex::new(HashMap::new()),
        })
    }

    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the task's lease and renews it with the others from now on.
    pub async fn acquire(self: &Arc<Self>, task_id: &str) -> Result<Held, AcquireError> {
        let sent = Instant::now();
        // A grant that arrives after its own deadline less the margin is of no use.
        let bound = self.timing.ttl.saturating_sub(self.timing.stop_margin);
        let grant = tokio::time::timeout(
            bound,
            self.api.acquire(task_id, &self.node_id, self.timing.ttl),
        )
        .await
        .map_err(|_| AcquireError::TimedOut(bound))??;
        let (tx, rx) = watch::channel(Standing::Valid {
            until: sent + self.timing.ttl,
        });
        self.entries().insert(
            task_id.to_string(),
            Entry {
                token: grant.token,
                standing: tx,
            },
        );
        Ok(Held {
            task_id: task_id.to_string(),
            token: grant.token,
            standing: rx,
            session: self.clone(),
        })
    }

    /// Renews every held lease each period, forever (abort the task to stop).
    pub async fn run(self: Arc<Self>) {
        // A fresh grant needs no renewal: the first is one period after the session starts.
        let mut every = tokio::time::interval_at(
            Instant::now() + self.timing.renew_every,
            self.timing.renew_every,
        );
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            every.tick().await;
            self.renew_once(&mut failing).await;
        }
    }

    /// One renewal of all held leases; `failing` remembers whether the last one failed, so a
    /// failure and a recovery are each logged once, not once per period.
    pub async fn renew_once(&self, failing: &mut bool) {
        let now = Instant::now();
        let margin = self.timing.stop_margin;
        let mut last_kill = None;
        let leases: Vec<HeldLease> = self
            .entries()
            .iter()
            .filter_map(|(task_id, e)| match *e.standing.borrow() {
                Standing::Valid { until } if until > now + margin => {
                    let kill = until - margin;
                    last_kill = Some(last_kill.map_or(kill, |k: Instant| k.max(kill)));
                    Some(HeldLease {
                        task_id: task_id.clone(),
                        token: e.token,
                    })
                }
                _ => None,
            })
            .collect();
        let Some(last_kill) = last_kill else {
            return;
        };
        let req = SessionRenewal {
            ttl_ms: self.timing.ttl.as_millis() as u64,
            leases,
        };
        // An answer after the last app's kill time changes nothing: wait no longer than that.
        let sent = Instant::now();
        let answer =
            tokio::time::timeout_at(last_kill, self.api.renew_session(&self.node_id, &req)).await;
        let resp = match answer {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                if !*failing {
                    tracing::warn!(error = %e, leases = req.leases.len(), "cannot renew this node's leases; each app is killed at its deadline unless a renewal gets through");
                }
                *failing = true;
                return;
            }
            Err(_) => {
                if !*failing {
                    tracing::warn!(leases = req.leases.len(), "the master did not answer a lease renewal in time; each app is killed at its deadline unless a renewal gets through");
                }
                *failing = true;
                return;
            }
        };
        if *failing {
            tracing::info!("lease renewals get through again");
            *failing = false;
        }
        let until = sent + self.timing.ttl;
        let held = self.entries();
        for r in resp.renewed {
            if let Some(e) = held.get(&r.task_id).filter(|e| e.token == r.token) {
                e.standing.send_if_modified(|s| match s {
                    Standing::Valid { until: u } if *u < until => {
                        *u = until;
                        true
                    }
                    _ => false,
                });
            }
        }
        for l in resp.lost {
            if let Some(e) = held.get(&l.task_id).filter(|e| e.token == l.token) {
                tracing::error!(task = %l.task_id, token = l.token, error = %l.error, "lease lost; the app is killed at once");
                e.standing.send_replace(Standing::Lost);
            }
        }
    }
}

/// One held lease. Leaves the session when released or dropped.
pub struct Held {
    task_id: String,
    token: u64,
    standing: watch::Receiver<Standing>,
    session: Arc<LeaseSession>,
}

impl Held {
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether the app may still run: not lost, and before its kill time.
    pub fn is_valid(&self) -> bool {
        match *self.standing.borrow() {
            Standing::Lost => false,
            Standing::Valid { until } => Instant::now() + self.session.timing.stop_margin < until,
        }
    }

    /// Resolves when the app must be killed: the lease was lost, or its local deadline less the
    /// stop margin has come without a renewal getting through.
    pub async fn must_stop(&self) {
        let mut rx = self.standing.clone();
        loop {
            let standing = *rx.borrow_and_update();
            let Standing::Valid { until } = standing else {
                return;
            };
            let kill_at = until
                .checked_sub(self.session.timing.stop_margin)
                .unwrap_or_else(Instant::now);
            tokio::select! {
                _ = tokio::time::sleep_until(kill_at) => return,
                changed = rx.changed() => if changed.is_err() {
                    // Released: nothing runs under it any more.
                    return;
                }
            }
        }
    }

    /// Stops renewing and gives the lease back (after the volume was let go of).
    pub async fn release(&self) -> Result<(), ClientError> {
        self.leave();
        self.session.api.release(&self.task_id, self.token).await
    }

    fn leave(&self) {
        let mut held = self.session.entries();
        if held
            .get(&self.task_id)
            .is_some_and(|e| e.token == self.token)
        {
            held.remove(&self.task_id);
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.leave();
    }
}

/// Fencing by the master: renewing the lease with our token succeeds only while it is the newest.
pub struct MasterFence {
    pub master: MasterClient,
    pub ttl: Duration,
}

#[async_trait]
impl FenceCheck for MasterFence {
    async fn still_current(&self, task_id: &str, token: u64) -> Result<(), FenceError> {
        match self.master.renew_lease(task_id, token, self.ttl).await {
            Ok(_) => Ok(()),
            Err(e @ ClientError::LeaseConflict { .. }) => {
                Err(FenceError::Superseded(e.to_string()))
            }
            Err(e) => Err(FenceError::Unreachable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use shadow_common::lease::{LostLease, RenewedLease};

    use super::*;

    #[derive(Clone, Copy, PartialEq)]
    enum Renewals {
        /// Answer after this long, renewing everything.
        Answer(Duration),
        /// Never answer (a blackholed link).
        Hang,
        /// Fail at once (a refused link).
        Refuse,
        /// Say every lease is lost.
        Lose,
    }

    struct Fake {
        renewals: Mutex<Renewals>,
        calls: Mutex<Vec<(Instant, Vec<HeldLease>)>>,
        next_token: AtomicU64,
    }

    impl Fake {
        fn new(r: Renewals) -> Arc<Self> {
            Arc::new(Self {
                renewals: Mutex::new(r),
                calls: Mutex::new(vec![]),
                next_token: AtomicU64::new(1),
            })
        }
        fn set(&self, r: Renewals) {
            *self.renewals.lock().unwrap() = r;
        }
        fn calls(&self) -> Vec<(Instant, Vec<HeldLease>)> {
            self.calls.lock().unwrap().clone()
        }
    }

    fn refused() -> ClientError {
        ClientError::Api {
            status: reqwest::StatusCode::BAD_GATEWAY,
            body: shadow_common::error::ErrorBody::new("refused".to_string()),
        }
    }

    #[async_trait]
    impl LeaseApi for Fake {
        async fn acquire(
            &self,
            _task_id: &str,
            _node: &str,
            _ttl: Duration,
        ) -> Result<LeaseGrant, ClientError> {
            Ok(LeaseGrant {
                token: self.next_token.fetch_add(1, Ordering::SeqCst),
                expires_at: 0,
            })
        }
        async fn renew_session(
            &self,
            _node: &str,
            req: &SessionRenewal,
        ) -> Result<SessionRenewed, ClientError> {
            self.calls
                .lock()
                .unwrap()
                .push((Instant::now(), req.leases.clone()));
            let mode = *self.renewals.lock().unwrap();
            match mode {
                Renewals::Answer(after) => {
                    tokio::time::sleep(after).await;
                    Ok(SessionRenewed {
                        renewed: req
                            .leases
                            .iter()
                            .map(|l| RenewedLease {
                                task_id: l.task_id.clone(),
                                token: l.token,
                                expires_at: 0,
                            })
                            .collect(),
                        lost: vec![],
                    })
                }
                Renewals::Hang => std::future::pending().await,
                Renewals::Refuse => Err(refused()),
                Renewals::Lose => Ok(SessionRenewed {
                    renewed: vec![],
                    lost: req
                        .leases
                        .iter()
                        .map(|l| LostLease {
                            task_id: l.task_id.clone(),
                            token: l.token,
                            error: "superseded".into(),
                        })
                        .collect(),
                }),
            }
        }
        async fn release(&self, _task_id: &str, _token: u64) -> Result<(), ClientError> {
            Ok(())
        }
    }

    const TTL: Duration = Duration::from_millis(4_000);
    const MARGIN: Duration = Duration::from_millis(1_000);

    fn session(fake: &Arc<Fake>) -> Arc<LeaseSession> {
        let s = LeaseSession::new(fake.clone(), "n1".into(), LeaseTiming::new(TTL, MARGIN));
        tokio::spawn(s.clone().run());
        s
    }

    /// When `held.must_stop()` resolves, measured from `from`.
    async fn stops_after(held: &Held, from: Instant) -> Duration {
        held.must_stop().await;
        Instant::now() - from
    }

    #[tokio::test(start_paused = true)]
    async fn one_call_per_period_renews_every_lease_and_moves_the_deadline_from_its_send() {
        let fake = Fake::new(Renewals::Answer(Duration::from_millis(300)));
        let s = session(&fake);
        let began = Instant::now();
        let held: Vec<Held> = futures_join(&s, &["a", "b", "c"]).await;
        // Ten periods of answered renewals, each 300 ms slow: the apps keep running.
        tokio::time::sleep(TTL * 10 / 4 - Duration::from_millis(1)).await;
        assert!(held.iter().all(Held::is_valid));
        let calls = fake.calls();
        assert_eq!(
            calls.len(),
            9,
            "one call per period, the first one period in"
        );
        assert!(
            calls.iter().all(|(_, l)| l.len() == 3),
            "each names all three"
        );
        // The link is blackholed right after a renewal was sent: the deadline is that send
        // plus the TTL, not its (never coming) answer; the kill comes the margin before it.
        fake.set(Renewals::Hang);
        let last_answered_send = fake.calls().last().expect("calls").0;
        let took = stops_after(&held[0], began).await;
        let expected = last_answered_send + TTL - MARGIN - began;
        assert_eq!(
            took, expected,
            "killed at the last answered send + TTL - margin"
        );
        assert!(held.iter().all(|h| !h.is_valid()));
    }

    async fn futures_join(s: &Arc<LeaseSession>, tasks: &[&str]) -> Vec<Held> {
        let mut out = vec![];
        for t in tasks {
            out.push(s.acquire(t).await.expect("acquire"));
        }
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_renewal_cannot_hold_the_kill_back() {
        let fake = Fake::new(Renewals::Hang);
        let s = session(&fake);
        let sent = Instant::now();
        let held = s.acquire("a").await.expect("acquire");
        let took = stops_after(&held, sent).await;
        assert_eq!(took, TTL - MARGIN, "the acquire's send + TTL - margin");
        // The hung call was given up at the kill time; later periods send nothing for it.
        let n = fake.calls().len();
        tokio::time::sleep(TTL * 2).await;
        assert_eq!(
            fake.calls().len(),
            n,
            "no renewals for a lease past its kill time"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn refused_renewals_kill_at_the_deadline_and_a_recovery_in_time_keeps_it() {
        let fake = Fake::new(Renewals::Refuse);
        let s = session(&fake);
        let sent = Instant::now();
        let held = s.acquire("a").await.expect("acquire");
        // The first renewal is refused, the next ones answered: the app never stops.
        tokio::time::sleep(TTL / 4 + TTL / 8).await;
        fake.set(Renewals::Answer(Duration::ZERO));
        tokio::select! {
            () = held.must_stop() => panic!("stopped although a renewal got through in time"),
            () = tokio::time::sleep(TTL * 3) => {}
        }
        // Refused for good: killed one margin before the last answered send + TTL.
        fake.set(Renewals::Refuse);
        let last = fake
            .calls()
            .iter()
            .rev()
            .find(|(at, _)| *at < Instant::now())
            .expect("calls")
            .0;
        let took = stops_after(&held, sent).await;
        assert_eq!(took, last + TTL - MARGIN - sent);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_the_master_calls_lost_stops_at_once() {
        let fake = Fake::new(Renewals::Lose);
        let s = session(&fake);
        let sent = Instant::now();
        let held = s.acquire("a").await.expect("acquire");
        let took = stops_after(&held, sent).await;
        assert_eq!(took, TTL / 4, "at the first renewal, not at the deadline");
    }

    #[tokio::test(start_paused = true)]
    async fn a_released_lease_leaves_the_session() {
        let fake = Fake::new(Renewals::Answer(Duration::ZERO));
        let s = session(&fake);
        let a = s.acquire("a").await.expect("a");
        let _b = s.acquire("b").await.expect("b");
        a.release().await.expect("release");
        tokio::time::sleep(TTL / 4 + Duration::from_millis(1)).await;
        let calls = fake.calls();
        let (_, last) = calls.last().expect("a renewal");
        assert_eq!(
            last.iter().map(|l| l.task_id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
    }
}
