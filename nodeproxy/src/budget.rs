//! The node's memory budget: the memory limits of the apps running here may not add up to more
//! than it, so one more start cannot push the machine into swap or the kernel's OOM killer.

use std::sync::{Arc, Mutex};

/// What the running apps' memory limits may add up to.
#[derive(Debug)]
pub struct MemoryBudget {
    total_mb: u64,
    /// A std mutex: held only to add or subtract, never across an await.
    used_mb: Mutex<u64>,
}

/// A start refused because the budget is used up.
#[derive(Debug, Clone, thiserror::Error)]
#[error("this node's memory budget is used up: the app's limit is {want_mb} MiB and running apps hold {used_mb} of {total_mb} MiB; the next request may go to another node, or lower the task's resources.memory_mb, or raise SHADOW_MEMORY_BUDGET_MB")]
pub struct OverBudget {
    pub want_mb: u64,
    pub used_mb: u64,
    pub total_mb: u64,
}

/// Memory held for one app until it is dropped (when the app has stopped).
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<MemoryBudget>,
    mb: u64,
}

impl MemoryBudget {
    pub fn new(total_mb: u64) -> Arc<Self> {
        Arc::new(Self {
            total_mb,
            used_mb: Mutex::new(0),
        })
    }

    /// Holds `mb` for an app, or says why not.
    pub fn reserve(self: &Arc<Self>, mb: u64) -> Result<Reservation, OverBudget> {
        let mut used = self.used_mb.lock().unwrap_or_else(|e| e.into_inner());
        if *used + mb > self.total_mb {
            return Err(OverBudget {
                want_mb: mb,
                used_mb: *used,
                total_mb: self.total_mb,
            });
        }
        *used += mb;
        Ok(Reservation {
            budget: self.clone(),
            mb,
        })
    }

    /// MiB held by running (and starting) apps.
    pub fn used_mb(&self) -> u64 {
        *self.used_mb.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reservation {
    /// The MiB held.
    pub fn mb(&self) -> u64 {
        self.mb
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut used = self
            .budget
            .used_mb
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *used = used.saturating_sub(self.mb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_past_the_budget_are_refused_until_memory_is_given_back() {
        let b = MemoryBudget::new(1000);
        let first = b.reserve(512).expect("fits");
        let refused = b.reserve(512).expect_err("over");
        assert_eq!((refused.used_mb, refused.total_mb), (512, 1000));
        assert!(refused.to_string().contains("SHADOW_MEMORY_BUDGET_MB"));
        let small = b.reserve(488).expect("exactly fits");
        drop(first);
        assert_eq!(b.used_mb(), 488);
        let _again = b.reserve(512).expect("fits after the first stopped");
        drop(small);
        assert_eq!(b.used_mb(), 512);
    }
}
