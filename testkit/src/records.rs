//! Realistic records for tests and figures about bytes on the wire.
//!
//! How well a page compresses depends on what it holds: a record of one repeated string
//! compresses to nothing and flatters any encoding. A patient register is names from a
//! local list, birth dates, villages, phone numbers and short notes, about 210 bytes of
//! JSON each, with as much randomness as real data has; each record is decided by its
//! number alone, so every run and every test sees the same ones.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const GIVEN: [&str; 24] = [
    "Amina", "Grace", "Joseph", "Sarah", "Moses", "Esther", "Peter", "Ruth", "David", "Mary",
    "John", "Florence", "Samuel", "Agnes", "Isaac", "Harriet", "Daniel", "Janet", "Paul", "Betty",
    "Simon", "Lydia", "James", "Rose",
];
const FAMILY: [&str; 20] = [
    "Okello",
    "Nakato",
    "Mugisha",
    "Atim",
    "Ochieng",
    "Namukasa",
    "Kato",
    "Akello",
    "Ssempa",
    "Auma",
    "Tumusiime",
    "Nabirye",
    "Odongo",
    "Apio",
    "Byaruhanga",
    "Nansubuga",
    "Opio",
    "Achieng",
    "Wasswa",
    "Adong",
];
const VILLAGES: [&str; 16] = [
    "Kole",
    "Alito",
    "Aboke",
    "Bala",
    "Ayer",
    "Inomo",
    "Akalo",
    "Abongomola",
    "Otwal",
    "Ngai",
    "Loro",
    "Apala",
    "Aduku",
    "Chawente",
    "Ibuje",
    "Agwata",
];
const RISK: [&str; 3] = ["low", "medium", "high"];
const NOTES: [&str; 12] = [
    "no complaints",
    "fever 3 days, RDT negative",
    "cough, referred",
    "BP high, recheck",
    "ANC visit 2",
    "immunisation due",
    "malnutrition screen ok",
    "wound dressing",
    "family planning",
    "follow-up in 2 weeks",
    "missed last visit",
    "TB contact screen",
];

/// Patient `i` of a district register: about 210 bytes of JSON.
pub fn patient(i: u64) -> Value {
    let mut r = StdRng::seed_from_u64(0x5eed_0000 ^ i);
    json!({
        "name": format!("{} {}", GIVEN[r.random_range(0..GIVEN.len())], FAMILY[r.random_range(0..FAMILY.len())]),
        "sex": if r.random_bool(0.55) { "F" } else { "M" },
        "born": format!("{}-{:02}-{:02}", r.random_range(1940..2024), r.random_range(1..13), r.random_range(1..29)),
        "village": VILLAGES[r.random_range(0..VILLAGES.len())],
        "household": format!("hh-{:04}", r.random_range(0..4000)),
        "phone": format!("+2567{:08}", r.random_range(0..100_000_000u64)),
        "visits": r.random_range(1..30),
        "last_visit": format!("2025-{:02}-{:02}", r.random_range(1..13), r.random_range(1..29)),
        "weight_kg": f64::from(r.random_range(300..950)) / 10.0,
        "risk": RISK[r.random_range(0..RISK.len())],
        "notes": NOTES[r.random_range(0..NOTES.len())],
    })
}

/// The id of patient `i`.
pub fn patient_id(i: u64) -> String {
    format!("p-{i:05}")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn patients_are_about_210_bytes_and_the_same_every_time() {
        let total: usize = (0..3000)
            .map(|i| serde_json::to_string(&patient(i)).unwrap().len())
            .sum();
        let mean = total / 3000;
        assert!((195..=225).contains(&mean), "{mean} bytes on average");
        assert_eq!(patient(17), patient(17));
        assert_ne!(patient(17), patient(18));
    }
}
