//! The administrative commands: accounts, tokens, the audit trail, the data key, retention.
//! Each opens the server's database and key, does one thing through the library, records it in
//! the audit trail as `cli:<login>`, and prints.

use std::io::BufRead;

use anyhow::{Context, Result, bail};
use oncolens::database::Pool;

use super::args::{AuditLogCommand, KeyCommand, PurgeArgs, StoreArgs, TokenCommand, UserCommand};
use oncolens::security::audit_log::{self, Event, Filter};
use oncolens::security::keys::KeyRing;
use oncolens::security::{Role, accounts, tokens};
use oncolens::store;

struct Opened {
    db: Pool,
    keys: KeyRing,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Who runs the command, for the audit trail.
fn actor() -> String {
    let login = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{login}")
}

async fn open(store: &StoreArgs) -> Result<Opened> {
    let db = oncolens::database::open(&store.database)
        .await
        .with_context(|| format!("opening {}", store.database))?;
    let keys = KeyRing::load_or_create(&store.key.source(&store.database))?;
    Ok(Opened { db, keys })
}

impl Opened {
    async fn audit(&self, event: Event) -> Result<()> {
        audit_log::record(&self.db, &self.keys, &event, now())
            .await
            .context("recording the change in the audit trail")?;
        Ok(())
    }
}

fn block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(f)
}

/// The first line of standard input, without its line ending.
fn password_from_stdin(flag: bool) -> Result<String> {
    if !flag {
        bail!(
            "give the password on standard input with --password-stdin (never on the command \
             line, where other users of this computer can see it)"
        );
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']).to_string();
    if password.is_empty() {
        bail!("standard input held no password");
    }
    Ok(password)
}

fn date(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn user(command: UserCommand) -> Result<()> {
    block_on(async move {
        match command {
            UserCommand::Add {
                name,
                role,
                password_stdin,
                store,
            } => {
                let role: Role = role.parse()?;
                let password = password_from_stdin(password_stdin)?;
                let o = open(&store).await?;
                let user = accounts::add(&o.db, &name, role, &password, now()).await?;
                o.audit(Event::new(actor(), "user.add", &user.name).detail(format!("role {role}")))
                    .await?;
                println!("added {} ({})", user.name, user.role);
            }
            UserCommand::List { store } => {
                let o = open(&store).await?;
                let t = now();
                for u in accounts::list(&o.db).await? {
                    let state = if u.disabled {
                        "disabled"
                    } else if u.locked_until_unix > t {
                        "locked"
                    } else {
                        "active"
                    };
                    println!(
                        "{}\t{}\t{state}\tsince {}",
                        u.name,
                        u.role,
                        date(u.created_unix)
                    );
                }
            }
            UserCommand::Disable { name, store } => set_disabled(&store, &name, true).await?,
            UserCommand::Enable { name, store } => set_disabled(&store, &name, false).await?,
            UserCommand::ResetPassword {
                name,
                password_stdin,
                store,
            } => {
                let password = password_from_stdin(password_stdin)?;
                let o = open(&store).await?;
                accounts::reset_password(&o.db, &name, &password, now()).await?;
                o.audit(Event::new(actor(), "user.reset_password", &name).detail("sessions ended"))
                    .await?;
                println!("new password set for {name}; its sessions have ended");
            }
        }
        Ok(())
    })
}

async fn set_disabled(store: &StoreArgs, name: &str, disabled: bool) -> Result<()> {
    let o = open(store).await?;
    accounts::set_disabled(&o.db, name, disabled).await?;
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    o.audit(Event::new(actor(), action, name)).await?;
    println!(
        "{name} {}",
        if disabled {
            "disabled: its sessions have ended and its tokens no longer work"
        } else {
            "enabled"
        }
    );
    Ok(())
}

pub fn token(command: TokenCommand) -> Result<()> {
    block_on(async move {
        match command {
            TokenCommand::Create {
                user,
                expires,
                label,
                store,
            } => {
                let o = open(&store).await?;
                let (info, token) = tokens::create(&o.db, &user, expires, &label, now()).await?;
                o.audit(
                    Event::new(actor(), "token.create", &info.id).detail(format!(
                        "for {user}, {}",
                        expires.map_or("no expiry".into(), |d| format!("expires in {d} days"))
                    )),
                )
                .await?;
                eprintln!(
                    "token {} for {user}{}: shown once, keep it secret",
                    info.id,
                    info.expires_unix
                        .map_or(String::new(), |t| format!(", expires {}", date(t)))
                );
                println!("{token}");
            }
            TokenCommand::List { store } => {
                let o = open(&store).await?;
                for t in tokens::list(&o.db).await? {
                    let state = if t.revoked_unix.is_some() {
                        "revoked".to_string()
                    } else if t.expires_unix.is_some_and(|e| e <= now()) {
                        "expired".to_string()
                    } else {
                        "valid".to_string()
                    };
                    println!(
                        "{}\t{}\t{state}\texpires {}\t{}",
                        t.id,
                        t.user,
                        t.expires_unix.map_or("never".into(), date),
                        t.label
                    );
                }
            }
            TokenCommand::Revoke { token, store } => {
                let o = open(&store).await?;
                let id = tokens::revoke(&o.db, &token, now()).await?;
                o.audit(Event::new(actor(), "token.revoke", &id)).await?;
                println!("token {id} revoked");
            }
        }
        Ok(())
    })
}

pub fn audit_log(command: AuditLogCommand) -> Result<()> {
    block_on(async move {
        match command {
            AuditLogCommand::Verify { store } => {
                let o = open(&store).await?;
                let verified = audit_log::verify(&o.db, &o.keys)
                    .await
                    .context("the audit trail does not verify")?;
                println!(
                    "the audit trail verifies: {} entries, head {}",
                    verified.entries, verified.head_hash
                );
            }
            AuditLogCommand::Export {
                actor: who,
                action,
                store,
            } => {
                let o = open(&store).await?;
                let entries = audit_log::list(
                    &o.db,
                    &Filter {
                        actor: who,
                        action,
                        ..Default::default()
                    },
                )
                .await?;
                o.audit(
                    Event::new(actor(), "audit.export", "")
                        .detail(format!("{} entries", entries.len())),
                )
                .await?;
                use std::io::Write;
                std::io::stdout()
                    .write_all(&audit_log::to_csv(&entries))
                    .context("writing the export")?;
            }
        }
        Ok(())
    })
}

pub fn key(command: KeyCommand) -> Result<()> {
    let store = match command {
        KeyCommand::New { out } => {
            let keys = KeyRing::create_file(&out)
                .with_context(|| format!("making the key file {}", out.display()))?;
            println!(
                "key {} written to {} (mode 0600)",
                keys.primary_id(),
                out.display()
            );
            return Ok(());
        }
        KeyCommand::Rotate { store } => store,
    };
    block_on(async move {
        let mut o = open(&store).await?;
        let objects = store.objects.open(&store.database).await?;
        let old = o.keys.primary_id();
        // The new key is added first, everything is re-sealed with it in one transaction, the
        // audit head is signed again, and only then is the old key dropped: a crash at any
        // point leaves every value readable.
        o.keys.begin_rotation()?;
        let changed = store::reseal(&o.db, &objects, &o.keys, store::Reseal::OlderKeys).await?;
        audit_log::resign_head(&o.db, &o.keys).await?;
        o.keys.finish_rotation()?;
        let new = o.keys.primary_id();
        o.audit(
            Event::new(actor(), "key.rotate", &new)
                .detail(format!("key {old} replaced; {changed} values re-encrypted")),
        )
        .await?;
        println!("key {old} replaced by {new}: {changed} stored values re-encrypted");
        Ok(())
    })
}

pub fn purge(a: PurgeArgs) -> Result<()> {
    block_on(async move {
        let o = open(&a.store).await?;
        let objects = a.store.objects.open(&a.store.database).await?;
        let cutoff = now() - (a.older_than_days * 86_400) as i64;
        // "0 days" means everything made until now, this second included.
        let cutoff = if a.older_than_days == 0 {
            cutoff + 1
        } else {
            cutoff
        };
        let n = store::purge_older_than(&o.db, &objects, cutoff).await?;
        o.audit(Event::new(actor(), "retention.purge", "").detail(format!(
            "{n} analyses older than {} days deleted",
            a.older_than_days
        )))
        .await?;
        println!("{n} analyses older than {} days deleted", a.older_than_days);
        Ok(())
    })
}
