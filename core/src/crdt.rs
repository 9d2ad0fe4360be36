//! Placeholder: replaced by the CRDT module.
