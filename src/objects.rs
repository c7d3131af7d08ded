//! Layer 3: the object store of a deployment, where the large values live: the scans and
//! heat-maps of analyses (the database keeps their rows and names their objects).
//!
//! Three places behind one interface ([`Objects`], over the `object_store` crate):
//! - a folder (`PATH` or `file:///PATH`): the default of the one-command start, beside the
//!   SQLite file (`<file>.objects`);
//! - an S3 bucket (`s3://BUCKET[/PREFIX]?endpoint=URL&region=NAME`, with an access key the
//!   command line takes from `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`): the scale option,
//!   which several replicas share (tested against Garage);
//! - `memory:`: gone with the process, for an in-memory database.
//!
//! This layer moves bytes only: what it is given is sealed already (the store seals each
//! object under the deployment's key, bound to its analysis), so encryption at rest is the same
//! on every backend and neither a folder nor a bucket ever holds a scan in the clear.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path as ObjectPath;

use crate::core::error::{Error, ObjectsError, Result};

/// Where a deployment's objects are, as `--objects` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectsLocation {
    Folder(PathBuf),
    S3(S3Location),
    Memory,
}

/// An S3 bucket (and a key prefix inside it), with the endpoint of a non-AWS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Keys are written under this prefix (empty: the bucket's root).
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible server (Garage, MinIO...); `None`: AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// The access key (a URL never carries it, and it is never shown); `None`: anonymous, or
    /// the instance's role on AWS.
    pub credentials: Option<S3Credentials>,
}

/// An S3 access key and its secret.
#[derive(Clone, PartialEq, Eq)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

impl ObjectsLocation {
    /// This location with `credentials` when it is an S3 bucket.
    pub fn with_credentials(self, credentials: Option<S3Credentials>) -> Self {
        match self {
            Self::S3(s3) => Self::S3(S3Location {
                credentials: credentials.or(s3.credentials),
                ..s3
            }),
            other => other,
        }
    }

    /// Reads `PATH`, `file:///PATH`, `s3://BUCKET[/PREFIX][?endpoint=URL&region=NAME]` or
    /// `memory:`.
    pub fn parse(text: &str) -> Result<Self> {
        let unknown = || Error::Objects(ObjectsError::UnknownUrl(text.to_string()));
        if text == "memory:" {
            return Ok(Self::Memory);
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
            if bucket.is_empty() {
                return Err(unknown());
            }
            let mut location = S3Location {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
                endpoint: None,
                region: None,
                credentials: None,
            };
            for (name, value) in form_urlencoded::parse(query.as_bytes()) {
                match name.as_ref() {
                    "endpoint" => location.endpoint = Some(value.into_owned()),
                    "region" => location.region = Some(value.into_owned()),
                    _ => return Err(unknown()),
                }
            }
            return Ok(Self::S3(location));
        }
        if let Some(path) = text.strip_prefix("file://") {
            return Ok(Self::Folder(PathBuf::from(path)));
        }
        if text.is_empty() || text.contains("://") {
            return Err(unknown());
        }
        Ok(Self::Folder(PathBuf::from(text)))
    }

    /// The store of the database at `database_url` when none is given: a folder beside a
    /// SQLite file, memory beside an in-memory database; a database server has no default (a
    /// folder of one machine would hide the scans from the other replicas).
    pub fn default_for(database_url: &str) -> Result<Self> {
        if let Some(file) = crate::database::sqlite_file(database_url) {
            let mut name = file.into_os_string();
            name.push(".objects");
            return Ok(Self::Folder(PathBuf::from(name)));
        }
        if database_url.starts_with("sqlite:") {
            return Ok(Self::Memory);
        }
        Err(Error::Objects(ObjectsError::NotGiven))
    }
}

impl std::fmt::Display for ObjectsLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Folder(path) => write!(f, "folder {}", path.display()),
            Self::S3(s3) => {
                write!(f, "s3://{}", s3.bucket)?;
                if !s3.prefix.is_empty() {
                    write!(f, "/{}", s3.prefix)?;
                }
                if let Some(endpoint) = &s3.endpoint {
                    write!(f, " at {endpoint}")?;
                }
                Ok(())
            }
            Self::Memory => f.write_str("memory"),
        }
    }
}

/// A deployment's object store: put, get, list and delete sealed values by key.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    name: String,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects").field("name", &self.name).finish()
    }
}

impl Objects {
    /// Opens the store at `location` (a folder is created, mode 0700) and checks that it takes
    /// writes, so that a wrong bucket or key fails at start, not at the first upload.
    pub async fn open(location: &ObjectsLocation) -> Result<Self> {
        let name = location.to_string();
        let open_err = |source: crate::core::error::Cause| {
            Error::Objects(ObjectsError::Open {
                store: name.clone(),
                source,
            })
        };
        let store: Arc<dyn ObjectStore> = match location {
            ObjectsLocation::Memory => Arc::new(object_store::memory::InMemory::new()),
            ObjectsLocation::Folder(path) => {
                create_private_dir(path).map_err(|e| open_err(e.into()))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(path)
                    .map_err(|e| open_err(e.into()))?
                    // Deleting an analysis's last object removes its emptied folders.
                    .with_automatic_cleanup(true);
                Arc::new(local)
            }
            ObjectsLocation::S3(s3) => {
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&s3.bucket)
                    // Path-style requests: what S3-compatible servers on one host name take.
                    .with_virtual_hosted_style_request(false);
                if let Some(endpoint) = &s3.endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"));
                }
                if let Some(region) = &s3.region {
                    builder = builder.with_region(region);
                }
                if let Some(c) = &s3.credentials {
                    builder = builder
                        .with_access_key_id(&c.access_key_id)
                        .with_secret_access_key(&c.secret_access_key);
                }
                let bucket: Arc<dyn ObjectStore> =
                    Arc::new(builder.build().map_err(|e| open_err(e.into()))?);
                if s3.prefix.is_empty() {
                    bucket
                } else {
                    Arc::new(object_store::prefix::PrefixStore::new(
                        bucket,
                        s3.prefix.as_str(),
                    ))
                }
            }
        };
        let objects = Self { store, name };
        let probe = format!("oncolens-probe/{:016x}", rand::random::<u64>());
        objects.put(&probe, b"probe".to_vec()).await?;
        objects.delete(&probe).await?;
        Ok(objects)
    }

    /// A store in memory (tests; in-memory databases).
    pub fn in_memory() -> Self {
        Self {
            store: Arc::new(object_store::memory::InMemory::new()),
            name: ObjectsLocation::Memory.to_string(),
        }
    }

    /// What the store is, for logs and messages (no credentials).
    pub fn name(&self) -> &str {
        &self.name
    }

    fn fail(&self, operation: &'static str, key: &str, source: object_store::Error) -> Error {
        Error::Objects(ObjectsError::Operation {
            store: self.name.clone(),
            operation,
            key: key.to_string(),
            source: Box::new(source),
        })
    }

    /// Writes `bytes` under `key` (replacing what was there); whole or not at all.
    pub async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<()> {
        self.store
            .put(&ObjectPath::from(key), bytes.into())
            .await
            .map_err(|e| self.fail("write", key, e))?;
        Ok(())
    }

    /// The bytes under `key`; `None` when there are none.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let found = match self.store.get(&ObjectPath::from(key)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.fail("read", key, e)),
        };
        let bytes = found.bytes().await.map_err(|e| self.fail("read", key, e))?;
        Ok(Some(bytes.to_vec()))
    }

    /// The bytes under `key`, which the database says are there.
    pub async fn get_named(&self, key: &str) -> Result<Vec<u8>> {
        self.get(key).await?.ok_or_else(|| {
            Error::Objects(ObjectsError::Missing {
                store: self.name.clone(),
                key: key.to_string(),
            })
        })
    }

    /// Deletes `key`; deleting what is not there is no error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.fail("delete", key, e)),
        }
    }

    /// The keys under `prefix` (a folder-like prefix: `a/b` lists `a/b/...`), sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix_path = ObjectPath::from(prefix);
        let mut keys: Vec<String> = self
            .store
            .list(Some(&prefix_path))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await
            .map_err(|e| self.fail("list", prefix, e))?;
        keys.sort();
        Ok(keys)
    }

    /// Deletes every key under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let keys = self.list(prefix).await?;
        for key in &keys {
            self.delete(key).await?;
        }
        Ok(keys.len())
    }
}

/// Creates `path` (and its parents) readable by this account alone.
fn create_private_dir(path: &std::path::Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_are_read_from_their_urls() {
        assert_eq!(
            ObjectsLocation::parse("/srv/objects").unwrap(),
            ObjectsLocation::Folder("/srv/objects".into())
        );
        assert_eq!(
            ObjectsLocation::parse("file:///srv/o").unwrap(),
            ObjectsLocation::Folder("/srv/o".into())
        );
        assert_eq!(
            ObjectsLocation::parse(
                "s3://scans/site-a/?endpoint=http://127.0.0.1:3900&region=garage"
            )
            .unwrap(),
            ObjectsLocation::S3(S3Location {
                bucket: "scans".into(),
                prefix: "site-a".into(),
                endpoint: Some("http://127.0.0.1:3900".into()),
                region: Some("garage".into()),
                credentials: None,
            })
        );
        assert_eq!(
            ObjectsLocation::parse("memory:").unwrap(),
            ObjectsLocation::Memory
        );
        for bad in ["", "s3://", "s3://b?secret=x", "gs://bucket"] {
            let e = ObjectsLocation::parse(bad).unwrap_err();
            assert!(e.sentence().contains("no object store"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_database_server_has_no_default_store() {
        assert_eq!(
            ObjectsLocation::default_for("sqlite://data/o.db?mode=rwc").unwrap(),
            ObjectsLocation::Folder("data/o.db.objects".into())
        );
        assert_eq!(
            ObjectsLocation::default_for("sqlite::memory:").unwrap(),
            ObjectsLocation::Memory
        );
        let e = ObjectsLocation::default_for("postgres://o@db/o").unwrap_err();
        assert!(e.sentence().contains("--objects"), "{e}");
    }

    #[tokio::test]
    async fn a_folder_keeps_objects_until_they_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("objects");
        let objects = Objects::open(&ObjectsLocation::Folder(root.clone()))
            .await
            .unwrap();
        objects.put("a/1/x", b"one".to_vec()).await.unwrap();
        objects.put("a/1/y", b"two".to_vec()).await.unwrap();
        objects.put("a/10/x", b"ten".to_vec()).await.unwrap();
        assert_eq!(objects.get("a/1/x").await.unwrap(), Some(b"one".to_vec()));
        assert_eq!(objects.get("a/2/x").await.unwrap(), None);
        assert!(objects.get_named("a/2/x").await.is_err());
        // A prefix is a folder: `a/1` does not take in `a/10`.
        assert_eq!(objects.list("a/1").await.unwrap(), ["a/1/x", "a/1/y"]);
        assert_eq!(objects.delete_prefix("a/1").await.unwrap(), 2);
        assert_eq!(objects.list("a").await.unwrap(), ["a/10/x"]);
        assert!(!root.join("a/1").exists(), "emptied folders are removed");
        assert!(root.join("a/10/x").is_file());
        objects.delete("a/1/x").await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&root).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "the folder is private: {mode:o}");
        }
        // The write probe leaves nothing behind.
        assert!(objects.list("oncolens-probe").await.unwrap().is_empty());
    }
}
