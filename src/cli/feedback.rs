//! The feedback loop's commands: `feedback export`, `finetune`, and the model registry
//! (`model list|register|promote|rollback`). Each turns its flags into the library's options,
//! runs one workflow and prints what it did.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use oncolens::database::Pool;

use super::args::{
    FeedbackExportArgs, FinetuneArgs, PromoteArgs, RegisterArgs, RegistryArgs, RollbackArgs,
    model_source,
};
use oncolens::core::error::{Error, RegistryError};
use oncolens::modelfile::bundle;
use oncolens::security::keys::KeyRing;
use oncolens::store::registry as rows;
use oncolens::workflows::train::finetune::{FinetuneOptions, finetune as run_finetune};
use oncolens::workflows::{feedback, registry};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

async fn open(database: &str) -> Result<Pool> {
    oncolens::database::open(database)
        .await
        .with_context(|| format!("opening {database}"))
}

fn keys_of(r: &RegistryArgs) -> Result<KeyRing> {
    Ok(KeyRing::load_or_create(&r.key.source(&r.database))?)
}

/// The registry's files: this machine's models folder and the deployment's object store.
async fn model_files(r: &RegistryArgs, keys: Arc<KeyRing>) -> Result<registry::ModelFiles> {
    Ok(registry::ModelFiles {
        objects: r.objects.open(&r.database).await?,
        keys,
        folder: r.models_dir(),
    })
}

pub fn export(a: FeedbackExportArgs) -> Result<()> {
    if !(0.0..1.0).contains(&a.holdout) {
        bail!("--holdout must be at least 0 and below 1");
    }
    let classes = bundle::manifest_of(&model_source(&a.model))?.class_ids();
    let keys = KeyRing::load_or_create(&a.key.source(&a.database))?;
    let report = runtime()?.block_on(async {
        let db = open(&a.database).await?;
        let objects = a.objects.open(&a.database).await?;
        let report =
            feedback::export(&db, &objects, &keys, &a.out, &classes, a.holdout, now()).await?;
        let event = oncolens::security::audit_log::Event::new(
            format!(
                "cli:{}",
                std::env::var("USER").unwrap_or_else(|_| "unknown".into())
            ),
            "feedback.export",
            a.out.display().to_string(),
        )
        .detail(format!(
            "{} to train on, {} held out, {} not assessable",
            report.train, report.holdout, report.not_assessable
        ));
        oncolens::security::audit_log::record(&db, &keys, &event, now())
            .await
            .context("recording the export in the audit trail")?;
        anyhow::Ok(report)
    })?;
    println!("{}", report.describe());
    Ok(())
}

pub fn finetune(a: FinetuneArgs) -> Result<()> {
    let opts = FinetuneOptions {
        model: a.model,
        feedback: a.feedback,
        data: a.data,
        out: a.out,
        epochs: a.epochs,
        learning_rate: a.learning_rate,
        replay_ratio: a.replay_ratio,
        seed: a.seed,
        progress: !a.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\nstopping after this batch; the best weights so far are kept");
        })
        .context("installing the Ctrl-C handler")?;
    }
    let started = std::time::Instant::now();
    let r = run_finetune(&opts, &stop)?;
    let pct = |v: f64| format!("{:.1} %", 100.0 * v);
    let original = |v: Option<f64>| v.map_or_else(|| "-".into(), pct);
    println!(
        "fine-tuned {} on {} feedback images (+{} replayed) in {:.0} s; {} validate, {} held out for promotion",
        r.parent.version,
        r.feedback_train,
        r.replayed,
        started.elapsed().as_secs_f64(),
        r.feedback_validation + r.original_validation,
        r.feedback_held_out
    );
    println!(
        "validation accuracy, feedback: {} -> {}; original: {} -> {} (epoch {} kept)",
        pct(r.before.feedback_accuracy),
        pct(r.after.feedback_accuracy),
        original(r.before.original_accuracy),
        original(r.after.original_accuracy),
        r.best_epoch
    );
    if r.gate_refused_feedback > 0 {
        println!(
            "the input gate refuses {} of the {} feedback images: it is not fine-tuned here (see `oncolens gate train`)",
            r.gate_refused_feedback, r.feedback_train
        );
    }
    let manifest = bundle::read_manifest(&r.model_dir)?;
    println!(
        "new version {} written to {} (register it with `oncolens model register {}`)",
        manifest.version(),
        r.model_dir.display(),
        r.model_dir.display()
    );
    Ok(())
}

pub fn list(a: RegistryArgs) -> Result<()> {
    runtime()?.block_on(async {
        let db = open(&a.database).await?;
        let served = rows::served(&db).await?;
        let versions = rows::list(&db).await?;
        if versions.is_empty() {
            println!(
                "no model registered in {}; the server serves the model it is started with",
                a.database
            );
            return Ok(());
        }
        println!(
            "{:<3} {:<12} {:<12} {:<20} {:>9} {:>9}  registered",
            "", "version", "parent", "name", "val acc", "feedback"
        );
        for v in versions {
            let is_served = served.as_ref().is_some_and(|p| p.version == v.version);
            let acc = v.metrics["validation"]["accuracy"]
                .as_f64()
                .map_or_else(|| "-".into(), |a| format!("{:.1} %", 100.0 * a));
            let fb = v.metrics["feedback"]["class_counts"]
                .as_array()
                .map_or_else(
                    || "-".into(),
                    |c| c.iter().filter_map(|x| x.as_u64()).sum::<u64>().to_string(),
                );
            println!(
                "{:<3} {:<12} {:<12} {:<20} {:>9} {:>9}  {}",
                if is_served { "*" } else { "" },
                v.version,
                v.parent.as_deref().unwrap_or("-"),
                v.name,
                acc,
                fb,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(v.registered_unix.max(0) as u64)
                )
            );
        }
        match served {
            Some(p) => println!(
                "\n* served: {} (promoted by {} at {})",
                p.version,
                p.promoted_by,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(p.promoted_unix.max(0) as u64)
                )
            ),
            None => println!("\nnone promoted: the server serves the model it is started with"),
        }
        Ok(())
    })
}

pub fn register(a: RegisterArgs) -> Result<()> {
    let keys = keys_of(&a.registry)?;
    runtime()?.block_on(async {
        let db = open(&a.registry.database).await?;
        let files = model_files(&a.registry, Arc::new(keys)).await?;
        let v = registry::register(&db, &files, &a.model, now()).await?;
        println!(
            "registered {} ({}) in {}{}",
            v.version,
            v.name,
            v.directory,
            v.parent
                .as_deref()
                .map_or_else(String::new, |p| format!("; parent {p}"))
        );
        Ok(())
    })
}

pub fn promote(a: PromoteArgs) -> Result<()> {
    if !(0.0..=100.0).contains(&a.margin_points) {
        bail!("--margin-points must be between 0 and 100");
    }
    let keys = Arc::new(keys_of(&a.registry)?);
    runtime()?.block_on(async {
        let db = open(&a.registry.database).await?;
        let opts = registry::PromoteOptions {
            version: a.version.clone(),
            evaluation: a.eval.clone(),
            margin: a.margin_points / 100.0,
            by: format!("cli:{}", a.by),
            fallback: model_source(&a.baseline),
            dry_run: a.dry_run,
            files: Some(model_files(&a.registry, keys.clone()).await?),
        };
        match registry::promote(&db, Some(&keys), &opts, now()).await {
            Ok(comparison) if a.dry_run => {
                print!("{}", comparison.to_text());
                println!("dry run: nothing promoted");
                Ok(())
            }
            Ok(comparison) => {
                print!("{}", comparison.to_text());
                println!(
                    "promoted {}: running servers switch to it within their --registry-poll-s",
                    a.version
                );
                Ok(())
            }
            Err(Error::Registry(RegistryError::Refused(text))) => {
                print!("{text}");
                bail!("promotion of {} refused", a.version)
            }
            Err(e) => Err(e.into()),
        }
    })
}

pub fn rollback(a: RollbackArgs) -> Result<()> {
    let keys = keys_of(&a.registry)?;
    runtime()?.block_on(async {
        let db = open(&a.registry.database).await?;
        let after = registry::rollback(&db, Some(&keys), &format!("cli:{}", a.by), now()).await?;
        match after {
            Some(p) => println!("rolled back: now serving {}", p.version),
            None => println!("rolled back: now serving the model the server is started with"),
        }
        Ok(())
    })
}
