//! `RemoteError`: what can go wrong between the page server and its object
//! storage, made where it happens. Callers turn it into a SQLSTATE or a
//! status line; `is_transient` tells a retry loop whether trying again can
//! help.

use std::path::PathBuf;

pub type Result<T, E = RemoteError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// `pageserver.remote_storage` (or its options) cannot name a store.
    #[error("invalid remote storage setting {setting:?}: {reason}")]
    BadConfig { setting: String, reason: String },

    /// The store answered, or could not be reached, with an error.
    #[error("object storage {op} of {path:?} failed: {source}")]
    Store {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// The object does not exist.
    #[error("object {path:?} does not exist in object storage")]
    NotFound { path: String },

    /// The object exists but is not what the index says it is.
    #[error("object {path:?} is corrupt: {what}")]
    Corrupt { path: String, what: String },

    /// A remote index cannot be read.
    #[error("remote index {path:?} is unreadable: {reason}")]
    BadIndex { path: String, reason: String },

    /// A local file could not be read or written.
    #[error("{op} {path:?}: {source}")]
    Local {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RemoteError {
    pub(crate) fn store(op: &'static str, path: &object_store::path::Path, source: object_store::Error) -> RemoteError {
        match source {
            object_store::Error::NotFound { .. } => RemoteError::NotFound { path: path.to_string() },
            source => RemoteError::Store { op, path: path.to_string(), source },
        }
    }

    pub(crate) fn local<'a>(op: &'static str, path: &'a std::path::Path) -> impl FnOnce(std::io::Error) -> RemoteError + 'a {
        move |source| RemoteError::Local { op, path: path.to_path_buf(), source }
    }

    /// Whether the same request may succeed later: the store failed or could
    /// not be reached, or a download came back damaged. A bad setting, a
    /// missing object, an unreadable index or a local I/O error needs someone
    /// to act first.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Store { source, .. } => !matches!(
                source,
                object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
            RemoteError::Corrupt { .. } => true,
            RemoteError::BadConfig { .. } | RemoteError::NotFound { .. } | RemoteError::BadIndex { .. } | RemoteError::Local { .. } => {
                false
            }
        }
    }
}
