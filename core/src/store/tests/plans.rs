//! The planner uses the declared indexes: an indexed filter, count and order never
//! scan the collection or sort it in a temporary B-tree.

use rusqlite::params_from_iter;
use rusqlite::types::Value as Sql;
use serde_json::json;

use crate::query::sql;
use crate::{CollectionConfig, ConflictStrategy, Filter, Query, Store, StoreConfig};

fn store(dir: &tempfile::TempDir) -> Store {
    let patients = CollectionConfig::new("patients", ConflictStrategy::FieldMerge)
        .with_index(&["village", "name"])
        .with_index(&["name"])
        .with_index(&["age"]);
    let config = StoreConfig::default().with(patients);
    let store = Store::open(dir.path().join("p.db"), config).unwrap();
    store
        .batch(|tx| {
            for i in 0..50 {
                let data =
                    json!({"village": format!("v{}", i % 5), "name": format!("n{i}"), "age": i});
                tx.put("patients", Some(&format!("p{i}")), data)?;
            }
            Ok(())
        })
        .unwrap();
    store
}

fn plan(store: &Store, select: &str, q: &sql::QuerySql, tail: &str) -> String {
    let text = format!("EXPLAIN QUERY PLAN SELECT {select} {}{tail}", q.from_where);
    let mut args: Vec<Sql> = q.args.clone();
    if !tail.is_empty() {
        args.extend(q.page.iter().map(|n| Sql::Integer(*n)));
    }
    store
        .read(|c| {
            let mut stmt = c.prepare(&text)?;
            let rows = stmt.query_map(params_from_iter(args), |r| r.get::<_, String>(3))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?.join("; "))
        })
        .unwrap()
}

#[test]
fn indexed_filters_counts_and_orders_use_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let page = Query::new()
        .filter("village", "v1")
        .order_by("name", false)
        .limit(10);
    let q = sql::select("patients", false, &page).unwrap();
    let p = plan(&s, "id, data", &q, &q.tail);
    assert!(
        p.contains("USING INDEX ix_patients[\"village\",\"name\"]"),
        "{p}"
    );
    assert!(!p.contains("TEMP B-TREE"), "{p}");
    let q = sql::count("patients", false, Some(&Filter::eq("village", "v1"))).unwrap();
    let p = plan(&s, "count(*)", &q, "");
    assert!(
        p.contains("COVERING INDEX ix_patients[\"village\",\"name\"]"),
        "{p}"
    );
    let q = sql::count("patients", false, Some(&Filter::gte("age", 40))).unwrap();
    let p = plan(&s, "count(*)", &q, "");
    assert!(p.contains("INDEX ix_patients[\"age\"] (<expr>>?)"), "{p}");
    let prefix = Query::new()
        .matching(Filter::prefix("name", "n4"))
        .order_by("name", true);
    let q = sql::select("patients", false, &prefix).unwrap();
    let p = plan(&s, "id, data", &q, &q.tail);
    assert!(p.contains("USING INDEX ix_patients[\"name\"]"), "{p}");
    assert!(!p.contains("TEMP B-TREE"), "{p}");
    assert_eq!(s.query("patients", &prefix).unwrap().len(), 11);
}

#[test]
fn an_observers_probe_looks_up_the_touched_records_by_primary_key() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(&dir);
    let page = Query::new()
        .filter("village", "v1")
        .order_by("name", false)
        .limit(5);
    let q = sql::select("patients", false, &page).unwrap();
    let last = vec![Sql::Text("n21".into()), Sql::Text("p21".into())];
    for q in [q.clone(), sql::up_to(&q, &last)] {
        let text = format!("EXPLAIN QUERY PLAN {}", sql::probe(&q));
        let mut args = vec![Sql::Text(json!(["p1", "p6", "p7"]).to_string())];
        args.extend(q.args.iter().cloned());
        let (p, hits) = s
            .read(|c| {
                let mut stmt = c.prepare(&text)?;
                let rows = stmt.query_map(params_from_iter(&args), |r| r.get::<_, String>(3))?;
                let p = rows.collect::<rusqlite::Result<Vec<_>>>()?.join("; ");
                let hits = [&["p7"][..], &["p7", "p6"], &["p2", "p11"]]
                    .map(|ids| crate::db::records::selects_any(c, &q, ids).unwrap());
                Ok((p, hits))
            })
            .unwrap();
        assert!(
            p.contains("USING PRIMARY KEY (collection=? AND id=?)"),
            "{p}"
        );
        assert!(!p.contains("ix_patients"), "{p}");
        // Village v1 holds p1, p6 and p11; by name, only n1 and n11 sort before n21.
        let narrowed = q.args.len() > 1;
        assert_eq!(hits, [false, !narrowed, true]);
    }
}
