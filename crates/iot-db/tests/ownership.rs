//! Table ownership, held: every relation the migrations create has an
//! owner in `iot_db::ownership`, and each service's SQL names only its own
//! relations and the views published for it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use iot_db::ownership::{RELATIONS, relation};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs" || e == "sql") {
            out.push(path);
        }
    }
}

/// Lower-case identifier tokens of `text`, comments left out (`--` in
/// SQL, `//` in Rust); a name formatted in at run time (`%I`) is the token
/// `dynamic_name`.
fn tokens(text: &str) -> Vec<String> {
    let code: String = text
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            !(l.starts_with("--") || l.starts_with("//"))
        })
        .collect::<Vec<_>>()
        .join("\n")
        .replace("%I", " dynamic_name ");
    code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| !t.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The relations `text` names after an SQL keyword that reads or writes one.
fn named_relations(text: &str) -> Vec<String> {
    const KEYWORDS: [&str; 6] = ["from", "join", "into", "update", "table", "truncate"];
    let t = tokens(text);
    t.windows(2)
        .filter(|w| KEYWORDS.contains(&w[0].as_str()))
        .map(|w| w[1].clone())
        .filter(|name| relation(name).is_some())
        .collect()
}

#[test]
fn every_relation_the_migrations_create_has_an_owner() {
    let mut created = Vec::new();
    let mut sql = Vec::new();
    files(&root().join("migrations"), &mut sql);
    for path in sql {
        let t = tokens(&std::fs::read_to_string(&path).unwrap());
        for (i, w) in t.iter().enumerate() {
            if w != "create" {
                continue;
            }
            // CREATE [OR REPLACE] [MATERIALIZED] TABLE|VIEW [IF NOT EXISTS] name
            let rest: Vec<&str> = t[i + 1..]
                .iter()
                .map(String::as_str)
                .filter(|w| !["or", "replace", "materialized", "if", "not", "exists"].contains(w))
                .take(2)
                .collect();
            if let [kind, name] = rest[..]
                && (kind == "table" || kind == "view")
            {
                created.push((name.to_owned(), path.clone()));
            }
        }
    }
    assert!(created.len() >= RELATIONS.len() - 1, "{created:?}");
    for (name, path) in created {
        // Tables built under a temporary name and renamed in place.
        let name = name.strip_suffix("_new").unwrap_or(&name);
        if name == "dynamic_name" {
            continue;
        }
        assert!(
            relation(name).is_some(),
            "{} creates {name}, which iot_db::ownership does not list",
            path.display()
        );
    }
}

#[test]
fn services_name_only_their_own_relations_and_views_published_for_them() {
    for service in [
        "device-registry",
        "ingest-writer",
        "alert-engine",
        "mqtt-gateway",
        "graphql-gateway",
        "iotctl",
    ] {
        let mut sources = Vec::new();
        files(
            &root().join("crates").join(service).join("src"),
            &mut sources,
        );
        for path in sources {
            let text = std::fs::read_to_string(&path).unwrap();
            for name in named_relations(&text) {
                let r = relation(&name).unwrap();
                assert!(
                    r.owner == service || r.readers.contains(&service),
                    "{} names {name}, which belongs to {} and is not published to {service}",
                    path.display(),
                    r.owner
                );
            }
        }
    }
}

#[test]
fn the_check_sees_a_foreign_read() {
    assert_eq!(
        named_relations("SELECT owner_id FROM devices WHERE id = $1"),
        vec!["devices"]
    );
    assert!(named_relations("SELECT 1 FROM device_owners_x").is_empty());
}
