//! The same server on PostgreSQL: a real PostgreSQL (Debian's `postgresql`, initdb into a temp
//! folder, loopback) against the embedded SQLite.
//! - One scenario over every stored table (analyses, batches, feedback, key rotation,
//!   accounts, sessions, tokens, the audit chain, the model registry, the PACS state) runs on
//!   both engines and must tell the same story, line by line.
//! - The two migration folders make the same tables and columns.
//! - Concurrent writers on two pools (two replicas) keep the audit chain whole.
//! - The web app on PostgreSQL: an upload through one server is read back through another.
//! - The scans go to the object store: a folder beside SQLite, an S3 bucket (a real Garage)
//!   beside PostgreSQL, sealed in both.

mod common;

use std::collections::BTreeMap;

use common::garage::Garage;
use common::postgres::Postgres;
use oncolens::database::{self, Dialect, Pool};
use oncolens::modelfile::PresenceFinding;
use oncolens::objects::{Objects, ObjectsLocation};
use oncolens::security::audit_log::{self, Event, Filter};
use oncolens::security::keys::{KeyRing, KeySource};
use oncolens::security::sessions::SessionPolicy;
use oncolens::security::{Role, accounts, sessions, tokens};
use oncolens::store::registry::{self, ModelVersion};
use oncolens::store::{self, AnalysisRecord, BatchRecord, StoredImages};
use oncolens::workflows::pacs::state as pacs;

fn record(id: &str, created: i64, class: &str, probabilities: Vec<f32>) -> AnalysisRecord {
    AnalysisRecord {
        id: id.to_string(),
        created_unix: created,
        filename: format!("scan {id} (ü).png"),
        model_name: "oncolens-test".into(),
        model_version: "0123456789ab".into(),
        class_id: class.to_string(),
        class_name: class.replace('_', " "),
        confidence: f64::from(probabilities.iter().cloned().fold(0.0, f32::max)),
        uncertain: class == "glioma",
        verdict: if class == "glioma" {
            "uncertain".into()
        } else {
            "answer".into()
        },
        input_reasons: vec![],
        gate: None,
        // One class carries the presence rule's finding, so that its column round-trips too.
        presence: (class == "glioma").then_some(PresenceFinding {
            tumour_probability: 0.4,
            min_no_tumour_probability: 0.8,
            no_tumour_withheld: true,
        }),
        probabilities,
        width: 64,
        height: 48,
    }
}

fn images(seed: u8) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    (
        vec![seed; 100],
        vec![seed.wrapping_add(1); 80],
        vec![seed.wrapping_add(2); 60],
    )
}

/// Everything the scenario observed, one line per step, engine-independent.
struct Story(Vec<String>);

impl Story {
    fn say(&mut self, what: &str, value: impl std::fmt::Debug) {
        self.0.push(format!("{what}: {value:?}"));
    }
}

/// The scenario: every store and security operation, with its result written down.
async fn scenario(url: &str, key_file: &std::path::Path, store_at: &ObjectsLocation) -> Story {
    let mut story = Story(Vec::new());
    let db = database::open(url).await.unwrap();
    let objects = Objects::open(store_at).await.unwrap();
    let objects = &objects;
    let mut keys = KeyRing::load_or_create(&KeySource::File(key_file.to_path_buf())).unwrap();

    // Analyses: one alone, one with its decoded source image.
    let (a_png, a_heat, a_src) = images(10);
    let a = record("a1", 100, "no_tumor", vec![0.1, 0.1, 0.7, 0.1]);
    let b = record("a2", 200, "glioma", vec![0.4, 0.3, 0.2, 0.1]);
    for (r, source) in [(&a, None), (&b, Some(&a_src[..]))] {
        store::insert_analysis(
            &db,
            objects,
            &keys,
            r,
            StoredImages {
                display_png: &a_png,
                heatmap_png: &a_heat,
                source_png: source,
            },
        )
        .await
        .unwrap();
    }
    let dup = store::insert_analysis(
        &db,
        objects,
        &keys,
        &a,
        StoredImages {
            display_png: &a_png,
            heatmap_png: &a_heat,
            source_png: None,
        },
    )
    .await;
    story.say("the same id twice is refused", dup.is_err());
    // Display and heat-map, and the source where there is one; the refused copy left nothing.
    let objects_of =
        |id: &'static str| async move { objects.list(&format!("analyses/{id}")).await.unwrap() };
    story.say("objects of a1", objects_of("a1").await.len());
    story.say("objects of a2", objects_of("a2").await.len());
    let mut sealed = true;
    for key in objects.list("analyses").await.unwrap() {
        let bytes = objects.get_named(&key).await.unwrap();
        sealed &= bytes.starts_with(KeyRing::sealed_magic())
            && ![&a_png, &a_heat, &a_src].iter().any(|p| {
                bytes
                    .windows(p.len().min(16))
                    .any(|w| w == &p[..p.len().min(16)])
            });
    }
    story.say("every object is sealed", sealed);
    let got = store::get_analysis(&db, &keys, "a2")
        .await
        .unwrap()
        .unwrap();
    story.say("analysis", serde_json::to_string(&got).unwrap());
    story.say(
        "missing analysis",
        store::get_analysis(&db, &keys, "zz")
            .await
            .unwrap()
            .is_none(),
    );
    let listed: Vec<_> = store::list_analyses(&db, &keys, 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    story.say("newest first", listed);
    story.say(
        "image",
        store::get_png(&db, objects, &keys, "a1", false)
            .await
            .unwrap()
            == Some(a_png.clone()),
    );
    story.say(
        "heat-map",
        store::get_png(&db, objects, &keys, "a1", true)
            .await
            .unwrap()
            == Some(a_heat.clone()),
    );

    // A batch of two slices.
    let batch = BatchRecord {
        id: "b1".into(),
        created_unix: 150,
        series: serde_json::json!([{"series": "1.2.3", "slices": 2}]),
        errors: serde_json::json!([{"file": "x.dcm", "error": "not DICOM"}]),
    };
    let (s1, s2) = (
        record("s1", 150, "meningioma", vec![0.1, 0.8, 0.05, 0.05]),
        record("s2", 150, "pituitary", vec![0.1, 0.1, 0.1, 0.7]),
    );
    let imgs = StoredImages {
        display_png: &a_png,
        heatmap_png: &a_heat,
        source_png: None,
    };
    store::insert_batch(&db, objects, &keys, &batch, &[(&s1, imgs), (&s2, imgs)])
        .await
        .unwrap();
    let (got_batch, slices) = store::get_batch(&db, &keys, "b1").await.unwrap().unwrap();
    story.say("batch series", got_batch.series.to_string());
    story.say("batch errors", got_batch.errors.to_string());
    story.say(
        "batch slices",
        slices.iter().map(|s| s.id.clone()).collect::<Vec<_>>(),
    );

    // Feedback and the review queue.
    let fid = store::feedback::insert_feedback(
        &db,
        &keys,
        &store::NewFeedback {
            analysis_id: "a2",
            verdict: store::FeedbackVerdict::Corrected,
            class_id: "meningioma",
            comment: "enhancing, dural tail — ä",
            given_by: "alice",
        },
        300,
    )
    .await
    .unwrap();
    story.say("first feedback id", fid);
    let fb = store::feedback::list_feedback(&db, &keys, "a2")
        .await
        .unwrap();
    story.say("feedback", serde_json::to_string(&fb).unwrap());
    let queue: Vec<_> = store::feedback::review_queue(&db, &keys, 10, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|(r, entropy)| format!("{} {entropy:.4}", r.id))
        .collect();
    story.say("review queue (most uncertain first)", queue);
    story.say(
        "pending review",
        store::feedback::pending_review(&db).await.unwrap(),
    );
    story.say(
        "feedback items",
        store::feedback::feedback_items(&db).await.unwrap().len(),
    );
    story.say(
        "training image is the decoded source",
        store::feedback::training_image(&db, objects, &keys, "a2")
            .await
            .unwrap()
            == Some((a_src.clone(), true)),
    );

    // Key rotation re-seals every sealed value; nothing is plaintext before it.
    story.say(
        "plaintext values",
        store::reseal(&db, objects, &keys, store::Reseal::Plaintext)
            .await
            .unwrap(),
    );
    keys.begin_rotation().unwrap();
    story.say(
        "re-sealed under the new key",
        store::reseal(&db, objects, &keys, store::Reseal::OlderKeys)
            .await
            .unwrap(),
    );
    keys.finish_rotation().unwrap();
    story.say(
        "readable after rotation",
        store::get_analysis(&db, &keys, "a2")
            .await
            .unwrap()
            .unwrap()
            .filename,
    );
    story.say(
        "nothing left under the old key",
        store::reseal(&db, objects, &keys, store::Reseal::OlderKeys)
            .await
            .unwrap(),
    );

    // Deletion cascades; the retention purge takes what is older.
    story.say(
        "delete a2",
        store::delete_analysis(&db, objects, "a2").await.unwrap(),
    );
    story.say(
        "its feedback went with it",
        store::feedback::list_feedback(&db, &keys, "a2")
            .await
            .unwrap()
            .len(),
    );
    story.say(
        "delete a2 again",
        store::delete_analysis(&db, objects, "a2").await.unwrap(),
    );
    story.say("objects of a2 once deleted", objects_of("a2").await.len());
    story.say(
        "delete b1",
        store::delete_batch(&db, objects, "b1").await.unwrap(),
    );
    story.say("objects of its slices", objects_of("s1").await.len());
    story.say(
        "its slices went with it",
        store::get_analysis(&db, &keys, "s1")
            .await
            .unwrap()
            .is_none(),
    );
    story.say(
        "purge before 150",
        store::purge_older_than(&db, objects, 150).await.unwrap(),
    );

    // Accounts, sessions, tokens.
    story.say("objects left", objects.list("analyses").await.unwrap());
    story.say("any account", accounts::any(&db).await.unwrap());
    let alice = accounts::add(&db, "alice", Role::Clinician, "correct horse battery 9", 10)
        .await
        .unwrap();
    story.say(
        "alice",
        (&alice.name, alice.role, alice.disabled, alice.created_unix),
    );
    story.say(
        "alice twice",
        accounts::add(&db, "alice", Role::Viewer, "another good passphrase 7", 11)
            .await
            .map_err(|e| e.to_string()),
    );
    story.say("any account now", accounts::any(&db).await.unwrap());
    story.say(
        "wrong password",
        accounts::sign_in(&db, "alice", "not the password at all", 12)
            .await
            .unwrap(),
    );
    let (cookie, csrf) = sessions::start(&db, &alice, 20).await.unwrap();
    let resumed = sessions::resume(&db, &cookie, 30, SessionPolicy::default())
        .await
        .unwrap()
        .unwrap();
    story.say("session", (resumed.user.name.clone(), resumed.csrf == csrf));
    sessions::end(&db, &cookie).await.unwrap();
    story.say(
        "ended session",
        sessions::resume(&db, &cookie, 31, SessionPolicy::default())
            .await
            .unwrap()
            .is_none(),
    );
    let (info, secret) = tokens::create(&db, "alice", Some(30), "ci", 40)
        .await
        .unwrap();
    story.say(
        "token user",
        tokens::authenticate(&db, &secret, 41)
            .await
            .unwrap()
            .map(|u| u.name),
    );
    tokens::revoke(&db, &info.id, 42).await.unwrap();
    story.say(
        "revoked token",
        tokens::authenticate(&db, &secret, 43)
            .await
            .unwrap()
            .is_none(),
    );
    story.say("tokens", tokens::list(&db).await.unwrap().len());
    let disabled = accounts::set_disabled(&db, "alice", true).await.unwrap();
    story.say("disabled", disabled.disabled);

    // The audit chain and its append-only table.
    for (i, action) in ["analysis.create", "analysis.view", "user.add"]
        .iter()
        .enumerate()
    {
        let seq = audit_log::record(
            &db,
            &keys,
            &Event::new("alice", *action, format!("obj{i}")),
            100 + i as i64,
        )
        .await
        .unwrap();
        story.say("audit seq", seq);
    }
    story.say(
        "audit verified",
        audit_log::verify(&db, &keys).await.map(|v| v.entries),
    );
    let analysis_actions = audit_log::list(
        &db,
        &Filter {
            action: Some("analysis.".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    story.say(
        "analysis actions, newest first",
        analysis_actions
            .iter()
            .map(|e| (e.seq, e.action.clone()))
            .collect::<Vec<_>>(),
    );
    story.say(
        "audit update refused",
        sqlx::query("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2")
            .execute(&db)
            .await
            .is_err(),
    );
    story.say(
        "audit delete refused",
        sqlx::query("DELETE FROM audit_log")
            .execute(&db)
            .await
            .is_err(),
    );

    // The model registry.
    let version = ModelVersion {
        version: "abcdef012345".into(),
        name: "oncolens-test".into(),
        parent: None,
        directory: "/models/abcdef012345".into(),
        data_fingerprint: "f00d".into(),
        feedback_fingerprint: Some("beef".into()),
        metrics: serde_json::json!({"accuracy": 0.9}),
        registered_unix: 500,
    };
    registry::register(&db, &version).await.unwrap();
    story.say(
        "registered twice",
        registry::register(&db, &version).await.is_err(),
    );
    story.say(
        "version",
        registry::get(&db, "abcdef012345").await.unwrap() == Some(version.clone()),
    );
    let first = registry::promote(&db, "abcdef012345", "alice", None, 510)
        .await
        .unwrap();
    let second = registry::promote(
        &db,
        "abcdef012345",
        "bob",
        Some(&serde_json::json!({"delta": -0.01})),
        520,
    )
    .await
    .unwrap();
    story.say("promotion ids", (first, second));
    story.say(
        "rolled back to",
        registry::rollback(&db, 530).await.unwrap().map(|p| p.id),
    );
    story.say(
        "promotions",
        serde_json::to_string(&registry::promotions(&db).await.unwrap()).unwrap(),
    );

    // The PACS watcher's memory.
    let (done, failed) = (
        pacs::series_key("pacs", "1.2", "1.2.1"),
        pacs::series_key("pacs", "1.2", "1.2.2"),
    );
    story.say("new series due", pacs::due(&db, &done, 0).await.unwrap());
    pacs::mark_done(&db, &done, 24, "glioma", 10).await.unwrap();
    story.say("done series due", pacs::due(&db, &done, 20).await.unwrap());
    for t in 0..3 {
        story.say(
            "failure parks",
            pacs::mark_failed(&db, &failed, "timeout", 100 + t)
                .await
                .unwrap(),
        );
    }
    story.say(
        "failures",
        pacs::failures(&db)
            .await
            .unwrap()
            .iter()
            .map(|f| serde_json::to_string(f).unwrap())
            .collect::<Vec<_>>(),
    );
    story.say("release", pacs::release(&db, &failed, 200).await.unwrap());
    story.say("released due", pacs::due(&db, &failed, 200).await.unwrap());
    story.say("done count", pacs::done_count(&db).await.unwrap());
    db.close().await;
    story
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_tells_the_same_story_on_postgresql_as_on_sqlite() {
    let pg = Postgres::start();
    let garage = Garage::start();
    let tmp = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", tmp.path().join("story.db").display());
    let postgres = pg.database("story");
    // The embedded set-up (SQLite, a folder) against the scaled one (PostgreSQL, S3).
    let folder = ObjectsLocation::default_for(&sqlite).unwrap();
    let on_sqlite = scenario(&sqlite, &tmp.path().join("sqlite.key"), &folder).await;
    let on_postgres = scenario(
        &postgres,
        &tmp.path().join("postgres.key"),
        &garage.location("story"),
    )
    .await;
    assert_eq!(
        on_sqlite.0.len(),
        63,
        "the scenario ran to its end:\n{}",
        on_sqlite.0.join("\n")
    );
    for (s, p) in on_sqlite.0.iter().zip(&on_postgres.0) {
        assert_eq!(s, p, "SQLite and PostgreSQL differ");
    }
    assert_eq!(on_sqlite.0.len(), on_postgres.0.len());
    // A few lines that must hold whatever the engine.
    let story = on_postgres.0.join("\n");
    for line in [
        "the same id twice is refused: true",
        "newest first: [\"a2\", \"a1\"]",
        "its feedback went with it: 0",
        "audit update refused: true",
        "audit delete refused: true",
        "audit verified: Ok(3)",
        "revoked token: true",
        "nothing left under the old key: 0",
        "objects of a1: 2",
        "objects of a2: 3",
        "every object is sealed: true",
        "objects of a2 once deleted: 0",
        "objects of its slices: 0",
        "objects left: []",
    ] {
        assert!(story.contains(line), "missing {line:?} in:\n{story}");
    }
    // Reopening migrates nothing twice.
    let again = database::open(&postgres).await.unwrap();
    assert_eq!(Dialect::of(&again), Dialect::Postgres);
}

/// Table -> column -> (type class, nullable) of a database.
type Schema = BTreeMap<String, BTreeMap<String, (String, bool)>>;

fn type_class(declared: &str) -> String {
    let t = declared.to_ascii_lowercase();
    let class = if t.contains("int") {
        "integer"
    } else if t.contains("real") || t.contains("double") {
        "real"
    } else if t.contains("blob") || t.contains("bytea") {
        "bytes"
    } else {
        "text"
    };
    class.to_string()
}

async fn sqlite_schema(pool: &Pool) -> Schema {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' \
         AND name NOT LIKE '_sqlx%'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut schema = Schema::new();
    for table in tables {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(&format!(
            "SELECT name, type, \"notnull\" FROM pragma_table_info('{table}')"
        ))
        .fetch_all(pool)
        .await
        .unwrap();
        schema.insert(
            table,
            rows.into_iter()
                .map(|(name, ty, not_null)| (name, (type_class(&ty), not_null == 0)))
                .collect(),
        );
    }
    schema
}

async fn postgres_schema(pool: &Pool) -> Schema {
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_nullable::text \
         FROM information_schema.columns WHERE table_schema = 'public' \
         AND table_name NOT LIKE '_sqlx%'",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut schema = Schema::new();
    for (table, column, ty, nullable) in rows {
        // The primary keys SQLite declares NOT NULL are NOT NULL in PostgreSQL too.
        schema
            .entry(table)
            .or_default()
            .insert(column, (type_class(&ty), nullable == "YES"));
    }
    schema
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_migration_folders_make_the_same_tables_and_columns() {
    let pg = Postgres::start();
    let tmp = tempfile::tempdir().unwrap();
    let sqlite = database::open(&format!("sqlite://{}", tmp.path().join("s.db").display()))
        .await
        .unwrap();
    let postgres = database::open(&pg.database("schema")).await.unwrap();
    let (s, p) = (
        sqlite_schema(&sqlite).await,
        postgres_schema(&postgres).await,
    );
    assert_eq!(s.len(), 12, "{s:?}");
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        p.keys().collect::<Vec<_>>(),
        "tables differ"
    );
    for (table, columns) in &s {
        for (column, (class, nullable)) in columns {
            let (pg_class, pg_nullable) = &p[table]
                .get(column)
                .unwrap_or_else(|| panic!("{table}.{column} is missing on PostgreSQL"));
            // SQLite keeps sealed values (file names, summaries) in TEXT columns from before
            // encryption; PostgreSQL holds them as BYTEA.
            let sealed = matches!(
                (table.as_str(), column.as_str()),
                ("analyses", "filename") | ("batches", "series") | ("batches", "errors")
            );
            if !sealed {
                assert_eq!(class, pg_class, "{table}.{column}: type");
            }
            // SQLite's INTEGER PRIMARY KEY columns are NOT NULL in effect.
            let sqlite_pk = column == "id" || column == "seq";
            if !sqlite_pk {
                assert_eq!(nullable, pg_nullable, "{table}.{column}: nullable");
            }
        }
        assert_eq!(columns.len(), p[table].len(), "{table}: column count");
    }
    // The same versions were applied on both.
    let versions = |pool: &Pool| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT version FROM _sqlx_migrations ORDER BY version")
                .fetch_all(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(versions(&sqlite).await, versions(&postgres).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_writing_at_once_keep_the_audit_chain_whole() {
    let pg = Postgres::start();
    let url = pg.database("audit");
    let tmp = tempfile::tempdir().unwrap();
    let keys = std::sync::Arc::new(
        KeyRing::load_or_create(&KeySource::File(tmp.path().join("k"))).unwrap(),
    );
    // Two pools: what two replicas of the server hold.
    let replicas = [
        database::open(&url).await.unwrap(),
        database::open(&url).await.unwrap(),
    ];
    let mut writers = Vec::new();
    for (r, pool) in replicas.iter().enumerate() {
        for w in 0..4 {
            let (pool, keys) = (pool.clone(), keys.clone());
            writers.push(tokio::spawn(async move {
                for i in 0..10 {
                    let event =
                        Event::new(format!("replica{r}"), "analysis.view", format!("{w}-{i}"));
                    audit_log::record(&pool, &keys, &event, 1_000 + i)
                        .await
                        .unwrap();
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    let verified = audit_log::verify(&replicas[1], &keys).await.unwrap();
    assert_eq!(verified.entries, 80);
}

#[test]
fn the_web_app_runs_on_postgresql_and_a_second_server_reads_what_the_first_stored() {
    let pg = Postgres::start();
    let url = pg.database("web");
    let tmp = tempfile::tempdir().unwrap();
    let key_file = tmp.path().join("shared.key");
    KeyRing::create_file(&key_file).unwrap();
    let shared = oncolens::objects::ObjectsLocation::Folder(tmp.path().join("objects"));
    let config = || oncolens::serve::ServeConfig {
        bind: "127.0.0.1:0".parse().unwrap(),
        database: url.clone(),
        key_file: Some(key_file.clone()),
        objects: Some(shared.clone()),
        model: oncolens::modelfile::ModelSource::Bundled,
        workers: 1,
        queue: 4,
        max_body_bytes: 4 * 1024 * 1024,
        ..Default::default()
    };
    let first = format!("http://{}", common::start_server_with(config()));
    let second = format!("http://{}", common::start_server_with(config()));
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(7);
    let png = common::png_of(&common::slice(0, 160, &mut rng));
    let client = reqwest::blocking::Client::new();
    let created = client
        .post(format!("{first}/api/v1/analyses"))
        .multipart(reqwest::blocking::multipart::Form::new().part(
            "image",
            reqwest::blocking::multipart::Part::bytes(png).file_name("scan.png"),
        ))
        .send()
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let created: serde_json::Value = created.json().unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let read: serde_json::Value = client
        .get(format!("{second}/api/v1/analyses/{id}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(read["id"], created["id"]);
    assert_eq!(read["class_id"], created["class_id"]);
    let heatmap = client
        .get(format!("{second}/api/v1/analyses/{id}/heatmap"))
        .send()
        .unwrap();
    assert_eq!(heatmap.status(), reqwest::StatusCode::OK);
    assert!(heatmap.bytes().unwrap().starts_with(b"\x89PNG"));
    // The audit trail both servers wrote is one chain.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = database::open(&url).await.unwrap();
        let keys = KeyRing::load_or_create(&KeySource::File(key_file.clone())).unwrap();
        let verified = audit_log::verify(&pool, &keys).await.unwrap();
        assert!(verified.entries >= 2, "{verified:?}");
    });
}

#[test]
fn a_postgresql_server_without_a_key_or_object_store_is_refused_with_what_to_give() {
    let pg = Postgres::start();
    let url = pg.database("nokey");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["serve", "--bind", "127.0.0.1:0", "--database", &url])
        .env_remove("ONCOLENS_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--key-file") && err.contains("ONCOLENS_KEY"),
        "{err}"
    );
    // With a key but no object store: a folder of its own would hide scans from the others.
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k");
    KeyRing::create_file(&key).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_oncolens"))
        .args(["serve", "--bind", "127.0.0.1:0", "--database", &url])
        .arg("--key-file")
        .arg(&key)
        .env_remove("ONCOLENS_OBJECTS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--objects") && err.contains("ONCOLENS_OBJECTS"),
        "{err}"
    );
}
