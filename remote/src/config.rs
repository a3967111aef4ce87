//! Which object store `pageserver.remote_storage` names, checked without I/O
//! ([`RemoteStorageConfig::parse`], at start) and opened later
//! ([`RemoteStorageConfig::open`], in the backup worker).
//!
//! The URL picks the backend and the prefix every object name goes under:
//!
//! | URL | backend |
//! |---|---|
//! | `file:///absolute/dir` | a local directory (created if missing) |
//! | `s3://bucket/prefix` | AWS S3 and S3-compatible servers |
//! | `az://container/prefix` | Azure Blob Storage |
//! | `gs://bucket/prefix` | Google Cloud Storage |
//!
//! The cloud backends read the provider's standard environment variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, `AWS_REGION`,
//! `AZURE_STORAGE_ACCOUNT_NAME`, `GOOGLE_SERVICE_ACCOUNT`, …), then the
//! options: comma-separated `key=value` pairs with `object_store`'s key names
//! for that backend (`endpoint`, `region`, `access_key_id`,
//! `secret_access_key`, `virtual_hosted_style_request`, `allow_http`, …).
//! An `http://` S3 endpoint allows plain HTTP by itself. Option values are
//! never printed: `Debug` and `Display` show the keys only.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::error::{RemoteError, Result};
use crate::RemoteStorage;

/// How long one request may take, and how long connecting may take, before
/// it counts as failed (and is retried, see [`RETRIES`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of one request inside `object_store` (exponential backoff with
/// jitter, from 100 ms), for idempotent requests and for errors the server
/// says are transient. The backup worker retries whole operations on top.
pub const RETRIES: usize = 3;

/// Applies `key=value` options to a cloud builder (each builder has its own
/// key type and no common trait).
macro_rules! with_options {
    ($builder:expr, $key:ty, $options:expr, $bad:expr) => {{
        let mut builder = $builder;
        for (key, value) in &$options {
            builder = builder.with_config(<$key>::from_str(key).map_err(|e| $bad(e.to_string()))?, value);
        }
        builder
    }};
}

/// Adds the client options and retries every backend gets, and builds.
macro_rules! finish {
    ($builder:expr, $allow_http:expr, $bad:expr) => {
        $builder.with_client_options(client_options($allow_http)).with_retry(retry_config()).build().map_err(|e| $bad(e.to_string()))?
    };
}

/// The backend a URL names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    LocalDirectory(PathBuf),
    S3 { bucket: String },
    Azure { container: String },
    Gcs { bucket: String },
}

/// A checked `pageserver.remote_storage` URL with its options.
#[derive(Clone, PartialEq, Eq)]
pub struct RemoteStorageConfig {
    url: String,
    backend: Backend,
    /// Object names go under this prefix (no leading or trailing `/`).
    prefix: String,
    options: Vec<(String, String)>,
}

impl RemoteStorageConfig {
    /// Checks the URL and the options (`key=value, …`) without any I/O.
    pub fn parse(url_text: &str, options: &str) -> Result<RemoteStorageConfig> {
        let bad = |reason: String| RemoteError::BadConfig { setting: url_text.to_string(), reason };
        let url = url::Url::parse(url_text.trim()).map_err(|e| {
            bad(format!("not a URL ({e}); expected file:///dir, s3://bucket/prefix, az://container/prefix or gs://bucket/prefix"))
        })?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("a query or fragment has no meaning here; put settings in pageserver.remote_storage_options".into()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "credentials do not belong in the URL; put them in pageserver.remote_storage_options or the environment".into()
            ));
        }
        let host = url.host_str().unwrap_or("");
        let path = url.path().trim_matches('/');
        let (backend, prefix) = match url.scheme() {
            "file" => {
                if !host.is_empty() {
                    return Err(bad(format!("a file URL names a directory on this host, not on {host:?}: use file:///absolute/dir")));
                }
                if path.is_empty() {
                    return Err(bad("a file URL needs a directory other than /".into()));
                }
                let dir = url.to_file_path().map_err(|()| bad("not an absolute local path".into()))?;
                (Backend::LocalDirectory(dir), String::new())
            }
            "s3" | "az" | "gs" if host.is_empty() => return Err(bad("the bucket (container) name is missing".into())),
            "s3" => (Backend::S3 { bucket: host.to_string() }, path.to_string()),
            "az" => (Backend::Azure { container: host.to_string() }, path.to_string()),
            "gs" => (Backend::Gcs { bucket: host.to_string() }, path.to_string()),
            other => return Err(bad(format!("unsupported scheme {other:?}: use file, s3, az or gs"))),
        };
        let options = parse_options(options)
            .map_err(|reason| RemoteError::BadConfig { setting: "pageserver.remote_storage_options".into(), reason })?;
        let config = RemoteStorageConfig { url: url_text.trim().to_string(), backend, prefix, options };
        config.check_option_keys()?;
        Ok(config)
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Builds the store (for a local directory: creates it). Reaches no
    /// server: unreachable storage or wrong credentials show on first use.
    pub fn open(&self) -> Result<RemoteStorage> {
        Ok(RemoteStorage::new(self.open_store()?, self.to_string()))
    }

    /// The plain `object_store` client [`open`](Self::open) wraps, under
    /// the prefix (benchmarks use it as their floor).
    pub fn open_store(&self) -> Result<Arc<dyn ObjectStore>> {
        let bad = |reason: String| RemoteError::BadConfig { setting: self.url.clone(), reason };
        let store: Arc<dyn ObjectStore> = match &self.backend {
            Backend::LocalDirectory(dir) => {
                std::fs::create_dir_all(dir).map_err(RemoteError::local("creating the storage directory", dir))?;
                let store = LocalFileSystem::new_with_prefix(dir).map_err(|e| bad(e.to_string()))?.with_automatic_cleanup(true);
                Arc::new(store)
            }
            Backend::S3 { bucket } => {
                let builder = with_options!(AmazonS3Builder::from_env().with_bucket_name(bucket), AmazonS3ConfigKey, self.options, bad);
                let http = builder.get_config_value(&AmazonS3ConfigKey::Endpoint).is_some_and(|e| e.starts_with("http://"));
                Arc::new(finish!(builder, http, bad))
            }
            Backend::Azure { container } => {
                let builder =
                    with_options!(MicrosoftAzureBuilder::from_env().with_container_name(container), AzureConfigKey, self.options, bad);
                Arc::new(finish!(builder, false, bad))
            }
            Backend::Gcs { bucket } => {
                let builder =
                    with_options!(GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket), GoogleConfigKey, self.options, bad);
                Arc::new(finish!(builder, false, bad))
            }
        };
        Ok(if self.prefix.is_empty() { store } else { Arc::new(PrefixStore::new(store, self.prefix.as_str())) })
    }

    fn check_option_keys(&self) -> Result<()> {
        for (key, _) in &self.options {
            let known = match self.backend {
                Backend::LocalDirectory(_) => false,
                Backend::S3 { .. } => AmazonS3ConfigKey::from_str(key).is_ok(),
                Backend::Azure { .. } => AzureConfigKey::from_str(key).is_ok(),
                Backend::Gcs { .. } => GoogleConfigKey::from_str(key).is_ok(),
            };
            if !known {
                return Err(RemoteError::BadConfig {
                    setting: "pageserver.remote_storage_options".into(),
                    reason: format!("{key:?} is not an option of the {} backend", self.backend_name()),
                });
            }
        }
        Ok(())
    }

    fn backend_name(&self) -> &'static str {
        match self.backend {
            Backend::LocalDirectory(_) => "local directory",
            Backend::S3 { .. } => "S3",
            Backend::Azure { .. } => "Azure",
            Backend::Gcs { .. } => "Google Cloud Storage",
        }
    }
}

/// `key=value` pairs separated by commas; blanks around either are ignored.
fn parse_options(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
    let mut options: Vec<(String, String)> = Vec::new();
    for item in text.split(',').map(str::trim).filter(|item| !item.is_empty()) {
        let (key, value) = item.split_once('=').ok_or_else(|| format!("{:?} is not key=value", item.split('=').next().unwrap_or("")))?;
        let key = key.trim().to_ascii_lowercase();
        if key.is_empty() {
            return Err("an option has an empty key".into());
        }
        if options.iter().any(|(k, _)| *k == key) {
            return Err(format!("option {key:?} is given twice"));
        }
        options.push((key, value.trim().to_string()));
    }
    Ok(options)
}

fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new().with_timeout(REQUEST_TIMEOUT).with_connect_timeout(CONNECT_TIMEOUT).with_allow_http(allow_http)
}

fn retry_config() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5), base: 2.0 },
        max_retries: RETRIES,
        retry_timeout: Duration::from_secs(60),
    }
}

/// The URL and the option keys; never the option values (secrets).
impl fmt::Display for RemoteStorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)?;
        if !self.options.is_empty() {
            let keys: Vec<&str> = self.options.iter().map(|(k, _)| k.as_str()).collect();
            write!(f, " (options: {})", keys.join(", "))?;
        }
        Ok(())
    }
}

impl fmt::Debug for RemoteStorageConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RemoteStorageConfig({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(url: &str, options: &str) -> String {
        match RemoteStorageConfig::parse(url, options) {
            Err(RemoteError::BadConfig { reason, .. }) => reason,
            other => panic!("{url} {options}: expected BadConfig, got {other:?}"),
        }
    }

    #[test]
    fn urls_name_backends_and_prefixes() {
        let c = RemoteStorageConfig::parse("file:///var/lib/ps-remote/", "").unwrap();
        assert_eq!(c.backend(), &Backend::LocalDirectory("/var/lib/ps-remote".into()));
        let c = RemoteStorageConfig::parse("s3://bucket/some/prefix/", "endpoint=http://127.0.0.1:9000, region = us-east-1").unwrap();
        assert_eq!(c.backend(), &Backend::S3 { bucket: "bucket".into() });
        assert_eq!(c.prefix(), "some/prefix");
        assert_eq!(RemoteStorageConfig::parse("az://container", "").unwrap().backend(), &Backend::Azure { container: "container".into() });
        assert_eq!(RemoteStorageConfig::parse("gs://b/p", "").unwrap().prefix(), "p");
    }

    #[test]
    fn malformed_settings_are_refused_with_reasons() {
        assert!(reason("not a url", "").contains("not a URL"));
        assert!(reason("ftp://host/x", "").contains("unsupported scheme \"ftp\""));
        assert!(reason("file://otherhost/x", "").contains("on this host"));
        assert!(reason("file:///", "").contains("other than /"));
        assert!(reason("s3:///prefix", "").contains("bucket"));
        assert!(reason("s3://key:secret@bucket/p", "").contains("credentials do not belong in the URL"));
        assert!(reason("s3://bucket/p?region=x", "").contains("query"));
        assert!(reason("s3://bucket", "region").contains("not key=value"));
        assert!(reason("s3://bucket", "region=a,region=b").contains("twice"));
        assert!(reason("s3://bucket", "no_such_option=1").contains("not an option of the S3 backend"));
        assert!(reason("file:///tmp/x", "region=a").contains("local directory"));
    }

    #[test]
    fn option_values_are_never_printed() {
        let c = RemoteStorageConfig::parse("s3://bucket/p", "access_key_id=AKIAXXXX,secret_access_key=hunter2").unwrap();
        for text in [c.to_string(), format!("{c:?}")] {
            assert!(!text.contains("hunter2") && !text.contains("AKIAXXXX"), "{text}");
            assert!(text.contains("secret_access_key"), "{text}");
        }
    }
}
