//! Admission of pushes: how many one user may have in progress at once.
//!
//! Every push in progress holds a database connection (PostgreSQL) or a place in the
//! writer's queue (SQLite) and its body in memory, so one user firing pushes in
//! parallel could crowd out every other team. A user past the bound gets 429 with
//! `Retry-After`, which the device's engine already waits out. A device has at most
//! two pushes in flight, and after a 429 to the second goes on one at a time; the
//! default leaves room for four devices sharing one login at full speed. Counted per
//! server process, like the rate limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The pushes in progress, per user.
#[derive(Debug, Default)]
pub struct PushSlots {
    held: Arc<Mutex<HashMap<String, usize>>>,
}

/// One push in progress; its place is given back when this is dropped.
#[derive(Debug)]
pub struct PushSlot {
    held: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl PushSlots {
    /// A place for one more push of `user`, unless they already have `max` (read per
    /// push, so a config reload changes it for the pushes that follow).
    pub fn try_take(&self, user: &str, max: usize) -> Option<PushSlot> {
        let mut held = lock(&self.held);
        let n = held.entry(user.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PushSlot {
            held: Arc::clone(&self.held),
            user: user.to_owned(),
        })
    }
}

fn lock(m: &Mutex<HashMap<String, usize>>) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl PushSlot {
    fn give_back(&self) {
        let mut held = lock(&self.held);
        if let Some(n) = held.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.user);
            }
        }
    }
}

impl Drop for PushSlot {
    fn drop(&mut self) {
        self.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_user_has_their_own_places() {
        let slots = PushSlots::default();
        let a1 = slots.try_take("amina", 2).unwrap();
        let _a2 = slots.try_take("amina", 2).unwrap();
        assert!(slots.try_take("amina", 2).is_none());
        let _b = slots.try_take("ben", 2).unwrap();
        drop(a1);
        assert!(slots.try_take("amina", 2).is_some());
        // A lower cap (a reload) holds at once; a higher one lets more in.
        assert!(slots.try_take("amina", 1).is_none());
        assert!(slots.try_take("amina", 3).is_some());
        drop(_b);
        assert!(!slots.held.lock().unwrap().contains_key("ben"));
    }
}
