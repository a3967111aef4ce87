//! The password of a replication connection from a libpq password file,
//! found and read as libpq does: the file `PGPASSFILE` names, else
//! `~/.pgpass` of the user the host runs as. Each line is
//! `hostname:port:database:username:password`; `*` in the first four
//! fields matches anything; `\:` and `\\` stand for `:` and `\`; lines
//! starting with `#` are comments; the first matching line wins. A
//! replication connection matches the database `replication`, and the
//! default socket directory (`/var/run/postgresql`) matches `localhost`;
//! other hosts match as written. A file that its group or others
//! may read is ignored, as libpq ignores it.
//!
//! This is how a connection string without a password (the one a remote
//! index keeps, or one a DBA would rather not store) authenticates.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Debian's and libpq's default Unix socket directory.
pub const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

/// What a password file gave.
#[derive(Debug, PartialEq, Eq)]
pub enum PassfileLookup {
    Found(Vec<u8>),
    /// No file, or no line for this connection.
    NotFound(PathBuf),
    /// The file exists but was not used (why, for the error message).
    Ignored(PathBuf, String),
    /// Neither `PGPASSFILE` nor `HOME` is set.
    NoFile,
}

/// `PGPASSFILE`, else `$HOME/.pgpass`.
pub fn default_path() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PGPASSFILE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|home| PathBuf::from(home).join(".pgpass"))
}

/// The password for `user` at `host`:`port` (a replication connection)
/// from the file at `path`.
pub fn lookup(path: &Path, host: &str, port: u16, user: &str) -> PassfileLookup {
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(_) => return PassfileLookup::NotFound(path.to_path_buf()),
    };
    if !meta.is_file() {
        return PassfileLookup::Ignored(path.to_path_buf(), "it is not a plain file".into());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        return PassfileLookup::Ignored(
            path.to_path_buf(),
            "its group or others may read it; it should have permissions u=rw (0600) or less".into(),
        );
    }
    match std::fs::read_to_string(path) {
        Ok(text) => match find(&text, host, port, user) {
            Some(password) => PassfileLookup::Found(password.into_bytes()),
            None => PassfileLookup::NotFound(path.to_path_buf()),
        },
        Err(e) => PassfileLookup::Ignored(path.to_path_buf(), format!("it cannot be read: {e}")),
    }
}

/// The first line of a password file's `text` that matches.
pub fn find(text: &str, host: &str, port: u16, user: &str) -> Option<String> {
    let host = if host == DEFAULT_SOCKET_DIR { "localhost" } else { host };
    let port = port.to_string();
    let wanted = [host, port.as_str(), "replication", user];
    text.lines().filter(|line| !line.trim_start().starts_with('#')).find_map(|line| {
        let fields = split_fields(line);
        if fields.len() < 5 {
            return None;
        }
        let matches = fields.iter().zip(wanted).all(|(field, want)| field == "*" || field == want);
        // The password is the rest of the line, colons included.
        matches.then(|| fields[4..].join(":"))
    })
}

/// The fields of one line: split at unescaped `:`, with `\:` and `\\`
/// unescaped.
fn split_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("never empty").push(next);
                }
            }
            ':' => fields.push(String::new()),
            c => fields.last_mut().expect("never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "\
# comments and lines of too few fields are skipped
db.example:5432:postgres:repl:not for replication
short:line
127.0.0.1:5433:replication:repl:first\\:match
127.0.0.1:5433:replication:repl:second
*:*:*:other:w\\\\ild:card
localhost:6000:replication:socket:via socket
/tmp/sockets:6000:replication:socket:named socket
";

    #[test]
    fn the_first_matching_line_wins_with_wildcards_and_escapes() {
        assert_eq!(find(FILE, "127.0.0.1", 5433, "repl").as_deref(), Some("first:match"));
        assert_eq!(find(FILE, "10.0.0.9", 1, "other").as_deref(), Some("w\\ild:card"));
        assert_eq!(find(FILE, "/var/run/postgresql", 6000, "socket").as_deref(), Some("via socket"));
        assert_eq!(find(FILE, "/tmp/sockets", 6000, "socket").as_deref(), Some("named socket"));
        assert_eq!(find(FILE, "db.example", 5432, "repl"), None, "replication connections match database replication only");
        assert_eq!(find(FILE, "127.0.0.1", 5434, "repl"), None);
        assert_eq!(find("", "h", 1, "u"), None);
    }

    #[test]
    fn a_file_others_may_read_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pgpass");
        assert_eq!(lookup(&path, "127.0.0.1", 5433, "repl"), PassfileLookup::NotFound(path.clone()));
        std::fs::write(&path, FILE).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(lookup(&path, "127.0.0.1", 5433, "repl"), PassfileLookup::Ignored(_, why) if why.contains("0600")));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(lookup(&path, "127.0.0.1", 5433, "repl"), PassfileLookup::Found(b"first:match".to_vec()));
        assert_eq!(lookup(&path, "127.0.0.1", 9, "repl"), PassfileLookup::NotFound(path.clone()));
        assert!(matches!(lookup(dir.path(), "h", 1, "u"), PassfileLookup::Ignored(_, why) if why.contains("plain file")));
    }
}
