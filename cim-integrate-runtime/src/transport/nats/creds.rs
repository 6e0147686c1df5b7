//! A `.creds` file read again at every connection attempt, so that credentials rotated on disk
//! (a user JWT re-issued before it expires, a secret remounted) are the ones the next
//! reconnection presents. async-nats's `credentials_file` reads the file once: a host whose user
//! JWT expired, or was replaced, would be refused at every reconnection until restarted.

use crate::transport::TransportError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A user JWT and the seed that signs with it, as a `.creds` file holds them.
#[derive(Clone, PartialEq, Eq)]
struct Creds {
    jwt: String,
    seed: String,
}

/// The text between `-----BEGIN {what}-----` and the line after it that starts with dashes:
/// the first non-empty line in between, trimmed. The format `nsc` writes.
fn decorated<'a>(contents: &'a str, what: &str) -> Option<&'a str> {
    let begin = format!("BEGIN {what}");
    let mut lines = contents
        .lines()
        .skip_while(|l| !(l.starts_with("---") && l.contains(&begin)));
    lines.next()?;
    lines
        .take_while(|l| !l.starts_with("---"))
        .map(str::trim)
        .find(|l| !l.is_empty())
}

impl Creds {
    /// Parses a `.creds` file's contents; the error names what is missing, never the secret.
    fn parse(contents: &str) -> Result<Self, String> {
        let jwt = decorated(contents, "NATS USER JWT").ok_or("no user JWT (`-----BEGIN NATS USER JWT-----`)")?;
        let seed = decorated(contents, "USER NKEY SEED").ok_or("no user seed (`-----BEGIN USER NKEY SEED-----`)")?;
        nkeys::KeyPair::from_seed(seed).map_err(|_| "the user seed is not a valid NKey seed".to_owned())?;
        Ok(Self {
            jwt: jwt.to_owned(),
            seed: seed.to_owned(),
        })
    }

    /// The authentication for a connection whose server sent `nonce`.
    fn auth(&self, nonce: &[u8]) -> Result<async_nats::Auth, async_nats::AuthError> {
        let key = nkeys::KeyPair::from_seed(&self.seed).map_err(async_nats::AuthError::new)?;
        let mut auth = async_nats::Auth::new();
        auth.jwt = Some(self.jwt.clone());
        auth.signature = Some(key.sign(nonce).map_err(async_nats::AuthError::new)?);
        Ok(auth)
    }
}

/// A `.creds` file and the last credentials read from it.
pub(super) struct CredsFile {
    path: PathBuf,
    last: Mutex<Creds>,
}

impl CredsFile {
    /// Reads `path` now: an unreadable or malformed file is an error at once
    /// ([`TransportError::Invalid`], naming the file, never its contents).
    pub(super) fn load(path: &Path) -> Result<Arc<Self>, TransportError> {
        let creds =
            read(path).map_err(|e| TransportError::Invalid(format!("credentials file `{}`: {e}", path.display())))?;
        Ok(Arc::new(Self {
            path: path.to_owned(),
            last: Mutex::new(creds),
        }))
    }

    /// The authentication for `nonce` with the file as it is now; if it cannot be read or parsed
    /// (a rotation half done), with the last credentials read, and a warning.
    pub(super) async fn auth(self: Arc<Self>, nonce: Vec<u8>) -> Result<async_nats::Auth, async_nats::AuthError> {
        let path = self.path.clone();
        let now = tokio::task::spawn_blocking(move || read(&path))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let mut last = self.last.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match now {
            Ok(creds) if creds != *last => {
                tracing::info!(file = %self.path.display(), "the credentials file changed; connecting with its new credentials");
                *last = creds;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(
                file = %self.path.display(), error = %e,
                "cannot read the credentials file again; connecting with the credentials read last"
            ),
        }
        last.auth(&nonce)
    }
}

fn read(path: &Path) -> Result<Creds, String> {
    let contents = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    Creds::parse(&contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds_text(jwt: &str, seed: &str) -> String {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             ************************* IMPORTANT *************************\n\
             NKEY Seed printed below can be used to sign and prove identity.\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
             *************************************************************\n"
        )
    }

    #[test]
    fn parses_what_nsc_writes_and_names_what_is_missing() {
        let key = nkeys::KeyPair::new_user();
        let seed = key.seed().expect("seed");
        let c = Creds::parse(&creds_text("eyJ0.eyJ1.sig", &seed)).expect("parse");
        assert_eq!((c.jwt.as_str(), c.seed.as_str()), ("eyJ0.eyJ1.sig", seed.as_str()));
        let auth = c.auth(b"nonce").expect("auth");
        let signature = auth.signature.expect("signature");
        assert!(key.verify(b"nonce", &signature).is_ok());

        let no_jwt = Creds::parse(&creds_text("", &seed)).map(|_| ()).unwrap_err();
        assert!(no_jwt.contains("no user JWT"), "{no_jwt}");
        let bad_seed = Creds::parse(&creds_text("a.b.c", "SUNOTASEED"))
            .map(|_| ())
            .unwrap_err();
        assert!(
            bad_seed.contains("not a valid NKey seed") && !bad_seed.contains("SUNOTASEED"),
            "{bad_seed}"
        );
        assert!(Creds::parse("").is_err());
    }

    #[tokio::test]
    async fn a_file_rewritten_is_read_again_and_a_broken_one_falls_back() {
        let dir = std::env::temp_dir().join(format!("cim-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("user.creds");
        let (first, second) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
        std::fs::write(&path, creds_text("jwt.one.x", &first.seed().expect("seed"))).expect("write");
        let file = CredsFile::load(&path).expect("load");
        let auth = file.clone().auth(b"n1".to_vec()).await.expect("auth");
        assert_eq!(auth.jwt.as_deref(), Some("jwt.one.x"));
        std::fs::write(&path, creds_text("jwt.two.x", &second.seed().expect("seed"))).expect("write");
        let auth = file.clone().auth(b"n2".to_vec()).await.expect("auth");
        assert_eq!(auth.jwt.as_deref(), Some("jwt.two.x"));
        assert!(second.verify(b"n2", &auth.signature.expect("signature")).is_ok());
        std::fs::write(&path, "half written").expect("write");
        let auth = file
            .clone()
            .auth(b"n3".to_vec())
            .await
            .expect("the last good credentials");
        assert_eq!(auth.jwt.as_deref(), Some("jwt.two.x"));
        std::fs::remove_dir_all(&dir).expect("clean up");
        let missing = CredsFile::load(&path).map(|_| ()).unwrap_err().to_string();
        assert!(
            missing.contains("credentials file") && missing.contains("user.creds"),
            "{missing}"
        );
    }
}
