//! The deployment's key: AES-256-GCM for what is stored at rest (scans, heat-maps, file names,
//! comments), and an HMAC key derived from it that signs the audit trail's head.
//!
//! The key lives outside the database: in a key file beside it (`oncolens.db.key`, created
//! with mode 0600 on first start), in a file given with `--key-file`, or given in base64 (the
//! command line reads `$ONCOLENS_KEY`). A key file may hold several keys, newest first: data is sealed with the
//! first and opened with whichever key its header names, which lets `oncolens key rotate`
//! re-encrypt without a moment where stored data cannot be read.
//!
//! Sealed format: `OLENC1` (6 bytes), key id (8 bytes: SHA-256 of the key, truncated), nonce
//! (12 random bytes), ciphertext and tag. The caller's associated data (the row and column a
//! value belongs to) is authenticated, so a value copied to another row fails to open.

use std::io::Write;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key as AesKey, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::core::error::KeyError;

const MAGIC: &[u8] = b"OLENC1";
const LINE_PREFIX: &str = "oncolens-key-v1 ";
const HEADER: usize = 6 + 8 + 12;

/// Where the key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A key file, created (mode 0600) if it does not exist.
    File(PathBuf),
    /// A key given in base64 (`ONCOLENS_KEY`); cannot be rotated in place.
    Inline(String),
    /// A fresh key held in memory only (an in-memory database's).
    Ephemeral,
    /// None was given for a database server (PostgreSQL), which has no file to keep one beside:
    /// every replica must be given the same key.
    NotGiven,
}

impl KeySource {
    /// The key for a database: the given file, else the given key (base64, from
    /// `$ONCOLENS_KEY`), else `<database file>.key`, else (in-memory database) an ephemeral key;
    /// a database server's key must be given.
    pub fn for_database(url: &str, key_file: Option<&Path>, inline: Option<&str>) -> Self {
        if let Some(path) = key_file {
            return Self::File(path.to_path_buf());
        }
        if let Some(key) = inline.filter(|k| !k.trim().is_empty()) {
            return Self::Inline(key.to_string());
        }
        match database_file(url) {
            Some(path) => {
                let mut name = path.into_os_string();
                name.push(".key");
                Self::File(PathBuf::from(name))
            }
            None if url.starts_with("sqlite:") => Self::Ephemeral,
            None => Self::NotGiven,
        }
    }
}

pub use crate::database::sqlite_file as database_file;

struct Key {
    id: [u8; 8],
    raw: [u8; 32],
    cipher: Aes256Gcm,
}

impl Key {
    fn new(raw: [u8; 32]) -> Self {
        let digest = Sha256::digest(raw);
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        Self {
            id,
            raw,
            cipher: Aes256Gcm::new(AesKey::<Aes256Gcm>::from_slice(&raw)),
        }
    }

    fn generate() -> Self {
        Self::new(Aes256Gcm::generate_key(OsRng).into())
    }

    fn mac_key(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"oncolens audit head signing key\0");
        h.update(self.raw);
        h.finalize().into()
    }
}

impl Drop for Key {
    fn drop(&mut self) {
        // Best effort: do not leave the key in freed memory.
        self.raw.iter_mut().for_each(|b| *b = 0);
    }
}

/// The keys of a deployment, the first sealing, all opening.
pub struct KeyRing {
    keys: Vec<Key>,
    source: KeySource,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field(
                "keys",
                &self
                    .keys
                    .iter()
                    .map(|k| hex::encode(k.id))
                    .collect::<Vec<_>>(),
            )
            .field("source", &self.source)
            .finish()
    }
}

fn parse_key(text: &str) -> Option<[u8; 32]> {
    BASE64.decode(text.trim()).ok()?.try_into().ok()
}

impl KeyRing {
    /// Loads the keys from `source`, creating the key file (mode 0600) if it does not exist.
    pub fn load_or_create(source: &KeySource) -> Result<Self, KeyError> {
        let keys = match source {
            KeySource::Ephemeral => vec![Key::generate()],
            KeySource::NotGiven => return Err(KeyError::NotGiven),
            KeySource::Inline(text) => {
                vec![Key::new(
                    parse_key(text).ok_or(KeyError::BadEnvironmentKey)?,
                )]
            }
            KeySource::File(path) => match std::fs::read_to_string(path) {
                Ok(text) => {
                    check_private(path)?;
                    parse_file(path, &text)?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let key = Key::generate();
                    match write_key_file(path, std::slice::from_ref(&key), true) {
                        Ok(()) => {}
                        // Another process (a second watcher or server on the same database)
                        // made it first: its key is the one.
                        Err(KeyError::Write(_, e))
                            if e.kind() == std::io::ErrorKind::AlreadyExists =>
                        {
                            return Self::load_or_create(source);
                        }
                        Err(e) => return Err(e),
                    }
                    tracing::info!("created the key file {} (mode 0600)", path.display());
                    vec![key]
                }
                Err(e) => return Err(KeyError::Read(path.clone(), e)),
            },
        };
        Ok(Self {
            keys,
            source: source.clone(),
        })
    }

    /// Makes a new key file at `path` (mode 0600); refuses to replace one that exists. For a
    /// database server, whose replicas must all be given the same key.
    pub fn create_file(path: &Path) -> Result<Self, KeyError> {
        let key = Key::generate();
        write_key_file(path, std::slice::from_ref(&key), true)?;
        Ok(Self {
            keys: vec![key],
            source: KeySource::File(path.to_path_buf()),
        })
    }

    /// The key file, if the keys come from one.
    pub fn file(&self) -> Option<&Path> {
        match &self.source {
            KeySource::File(p) => Some(p),
            _ => None,
        }
    }

    /// Id of the sealing key, hex.
    pub fn primary_id(&self) -> String {
        hex::encode(self.keys[0].id)
    }

    /// Ids of all keys, sealing key first.
    pub fn ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| hex::encode(k.id)).collect()
    }

    /// Encrypts `plain`, binding it to `context` (e.g. `analyses/<id>/image`).
    pub fn seal(&self, context: &str, plain: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plain,
            aad: context.as_bytes(),
        };
        // Encryption into a Vec cannot fail for inputs below GCM's 64 GiB limit, far above the
        // server's body limit.
        let sealed = key.cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// Whether `bytes` look sealed (they carry the header).
    /// The first bytes of every value sealed with the sealing key: the format's magic, then
    /// the key's id (what [`seal`](Self::seal) writes before the nonce).
    pub fn sealing_prefix(&self) -> Vec<u8> {
        [MAGIC, &self.keys[0].id[..]].concat()
    }

    /// The first bytes of every sealed value, whichever the key.
    pub fn sealed_magic() -> &'static [u8] {
        MAGIC
    }

    pub fn is_sealed(bytes: &[u8]) -> bool {
        bytes.len() >= HEADER + 16 && bytes.starts_with(MAGIC)
    }

    /// Decrypts what [`seal`](Self::seal) made for the same `context`.
    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
        if !Self::is_sealed(sealed) {
            return Err(KeyError::Plaintext(context.to_string()));
        }
        let id = &sealed[6..14];
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| KeyError::UnknownKey(hex::encode(id)))?;
        let nonce = Nonce::from_slice(&sealed[14..26]);
        key.cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[HEADER..],
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| KeyError::Tampered(context.to_string()))
    }

    /// Whether `sealed` is sealed with the current sealing key.
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        Self::is_sealed(sealed) && sealed[6..14] == self.keys[0].id
    }

    /// HMAC-SHA256 of `data` under the sealing key's signing key, hex.
    pub fn sign(&self, data: &[u8]) -> String {
        sign_with(&self.keys[0], data)
    }

    /// Whether `signature` is [`sign`](Self::sign)'s of `data` under any of the keys.
    pub fn verify(&self, data: &[u8], signature: &str) -> bool {
        let Ok(expected) = hex::decode(signature) else {
            return false;
        };
        self.keys.iter().any(|k| {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&k.mac_key())
                .expect("HMAC takes any key length");
            mac.update(data);
            mac.verify_slice(&expected).is_ok()
        })
    }

    /// Starts a rotation: a new key is put first in the key file (the old ones stay, so what is
    /// stored can still be opened). Call [`finish_rotation`](Self::finish_rotation) once
    /// everything is re-sealed.
    pub fn begin_rotation(&mut self) -> Result<(), KeyError> {
        let path = self.rotatable_file()?;
        self.keys.insert(0, Key::generate());
        write_key_file(&path, &self.keys, false)
    }

    /// Ends a rotation: the key file keeps the sealing key only.
    pub fn finish_rotation(&mut self) -> Result<(), KeyError> {
        let path = self.rotatable_file()?;
        self.keys.truncate(1);
        write_key_file(&path, &self.keys, false)
    }

    fn rotatable_file(&self) -> Result<PathBuf, KeyError> {
        match &self.source {
            KeySource::File(p) => Ok(p.clone()),
            KeySource::Inline(_) => Err(KeyError::Malformed(
                PathBuf::from("ONCOLENS_KEY"),
                "a key given in the environment is rotated by giving a new one; \
                 use a key file (--key-file) to rotate in place"
                    .into(),
            )),
            KeySource::NotGiven => Err(KeyError::NotGiven),
            KeySource::Ephemeral => Err(KeyError::Malformed(
                PathBuf::from("(memory)"),
                "an in-memory database's key lives only as long as the process".into(),
            )),
        }
    }
}

fn sign_with(key: &Key, data: &[u8]) -> String {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&key.mac_key()).expect("HMAC takes any key length");
    mac.update(data);
    hex::encode(mac.finalize().into_bytes())
}

fn parse_file(path: &Path, text: &str) -> Result<Vec<Key>, KeyError> {
    let mut keys = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let raw = line
            .strip_prefix(LINE_PREFIX)
            .and_then(parse_key)
            .ok_or_else(|| {
                KeyError::Malformed(
                    path.to_path_buf(),
                    format!("expected lines '{LINE_PREFIX}<32 bytes in base64>'"),
                )
            })?;
        keys.push(Key::new(raw));
    }
    if keys.is_empty() {
        return Err(KeyError::Malformed(path.to_path_buf(), "no key".into()));
    }
    Ok(keys)
}

#[cfg(unix)]
fn check_private(path: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|e| KeyError::Read(path.to_path_buf(), e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions(path.to_path_buf(), mode & 0o777));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_private(_: &Path) -> Result<(), KeyError> {
    Ok(())
}

/// Writes the key file with mode 0600: a new file (`create_new`, so two starts cannot make two
/// keys), or a replacement written beside it and renamed over it.
fn write_key_file(path: &Path, keys: &[Key], create_new: bool) -> Result<(), KeyError> {
    let mut text = String::from(
        "# oncolens data key (AES-256-GCM). Without it the stored scans cannot be read.\n\
         # Keep a copy apart from the database backups; never commit it.\n",
    );
    for key in keys {
        text.push_str(LINE_PREFIX);
        text.push_str(&BASE64.encode(key.raw));
        text.push('\n');
    }
    let err = |e| KeyError::Write(path.to_path_buf(), e);
    // Written whole beside the file, then moved into place, so that no reader ever sees half
    // a key file. A new file is hard-linked into place, which fails if one exists: two
    // processes creating it at once cannot both win, and the loser reads the winner's.
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(
        ".tmp-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let tmp = PathBuf::from(tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if create_new {
            std::fs::hard_link(&tmp, path)?;
            std::fs::remove_file(&tmp)
        } else {
            std::fs::rename(&tmp, path)
        }
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_only_in_its_own_context() {
        let ring = KeyRing::load_or_create(&KeySource::Ephemeral).unwrap();
        let sealed = ring.seal("analyses/a/image", b"\x89PNG\r\n\x1a\nsecret");
        assert!(KeyRing::is_sealed(&sealed));
        assert!(!sealed.windows(4).any(|w| w == b"\x89PNG"));
        assert_eq!(
            ring.open("analyses/a/image", &sealed).unwrap(),
            b"\x89PNG\r\n\x1a\nsecret"
        );
        assert!(matches!(
            ring.open("analyses/b/image", &sealed),
            Err(KeyError::Tampered(_))
        ));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(ring.open("analyses/a/image", &flipped).is_err());
        assert!(matches!(
            ring.open("x", b"\x89PNG plain"),
            Err(KeyError::Plaintext(_))
        ));
    }

    #[test]
    fn the_key_file_is_private_and_rotation_keeps_old_data_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.key");
        let source = KeySource::File(path.clone());
        let mut ring = KeyRing::load_or_create(&source).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let old = ring.seal("c", b"data");
        let signature = ring.sign(b"head");
        ring.begin_rotation().unwrap();
        let reloaded = KeyRing::load_or_create(&source).unwrap();
        assert_eq!(reloaded.ids().len(), 2);
        assert_eq!(reloaded.open("c", &old).unwrap(), b"data");
        assert!(!reloaded.is_current(&old));
        assert!(reloaded.verify(b"head", &signature));
        ring.finish_rotation().unwrap();
        let after = KeyRing::load_or_create(&source).unwrap();
        assert_eq!(after.ids(), ring.ids());
        assert!(matches!(
            after.open("c", &old),
            Err(KeyError::UnknownKey(_))
        ));
        assert!(!after.verify(b"head", &signature));
    }

    #[cfg(unix)]
    #[test]
    fn processes_creating_the_key_file_at_once_all_end_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("race.key");
        let source = KeySource::File(path.clone());
        let ids: Vec<String> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..8)
                .map(|_| s.spawn(|| KeyRing::load_or_create(&source).unwrap().primary_id()))
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
        assert_eq!(
            KeyRing::load_or_create(&source).unwrap().primary_id(),
            ids[0]
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file is left");
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.key");
        KeyRing::load_or_create(&KeySource::File(path.clone())).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            KeyRing::load_or_create(&KeySource::File(path)),
            Err(KeyError::Permissions(_, 0o644))
        ));
    }

    #[test]
    fn the_default_key_sits_beside_the_database() {
        assert_eq!(
            database_file("sqlite:///data/oncolens.db?mode=rwc"),
            Some(PathBuf::from("/data/oncolens.db"))
        );
        assert_eq!(database_file("sqlite::memory:"), None);
        assert_eq!(
            KeySource::for_database("sqlite://x.db", Some(Path::new("/k")), None),
            KeySource::File("/k".into())
        );
        assert_eq!(
            KeySource::for_database("sqlite://x.db", None, None),
            KeySource::File("x.db.key".into())
        );
        assert_eq!(
            KeySource::for_database("sqlite://x.db", None, Some("a2V5")),
            KeySource::Inline("a2V5".into())
        );
        assert_eq!(
            KeySource::for_database("postgres://o@db/o", None, None),
            KeySource::NotGiven
        );
        assert_eq!(
            KeySource::for_database("sqlite::memory:", None, None),
            KeySource::Ephemeral
        );
        assert!(matches!(
            KeyRing::load_or_create(&KeySource::NotGiven),
            Err(KeyError::NotGiven)
        ));
        assert_eq!(
            KeySource::for_database("postgres://o@db/o", None, Some("a2V5")),
            KeySource::Inline("a2V5".into())
        );
    }
}
