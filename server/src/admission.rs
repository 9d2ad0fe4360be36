//! Admission of pushes: how many one user may have in progress at once.
//!
//! Every push in progress holds a database connection (PostgreSQL) or a place in the
//! writer's queue (SQLite) and its body in memory, so one user firing pushes in
//! parallel could crowd out every other team. A user past the bound gets 429 with
//! `Retry-After`, which the device's engine already waits out. A device sends one push
//! at a time; the default leaves room for several devices sharing one login. Counted
//! per server process, like the rate limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The pushes in progress, per user.
#[derive(Debug)]
pub struct PushSlots {
    max: usize,
    held: Mutex<HashMap<String, usize>>,
}

/// One push in progress; its place is given back when this is dropped.
#[derive(Debug)]
pub struct PushSlot {
    slots: Arc<PushSlots>,
    user: String,
}

impl PushSlots {
    pub fn new(max: usize) -> Arc<PushSlots> {
        Arc::new(PushSlots {
            max,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more push of `user`, unless they already have `max`.
    pub fn try_take(self: &Arc<Self>, user: &str) -> Option<PushSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(user.to_owned()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PushSlot {
            slots: Arc::clone(self),
            user: user.to_owned(),
        })
    }

    fn give_back(&self, user: &str) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(user);
            }
        }
    }
}

impl Drop for PushSlot {
    fn drop(&mut self) {
        self.slots.give_back(&self.user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_their_own_places() {
        let slots = PushSlots::new(2);
        let a1 = slots.try_take("amina").unwrap();
        let _a2 = slots.try_take("amina").unwrap();
        assert!(slots.try_take("amina").is_none());
        let _b = slots.try_take("ben").unwrap();
        drop(a1);
        assert!(slots.try_take("amina").is_some());
        drop(_b);
        assert!(!slots.held.lock().unwrap().contains_key("ben"));
    }
}
