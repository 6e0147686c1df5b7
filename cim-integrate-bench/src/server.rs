//! A throwaway nats-server for one benchmark (the runtime's harness is behind its `testing`
//! feature, which a normal dependency would switch on for the whole workspace).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private nats-server with JetStream (file storage) on a free port.
pub struct Server {
    child: Child,
    dir: PathBuf,
    /// `nats://127.0.0.1:<port>`.
    pub url: String,
}

impl Server {
    /// Starts one from `NATS_SERVER_BIN`, else `nats-server` on the `PATH`.
    pub fn start(tag: &str) -> Result<Self, crate::BoxError> {
        let bin = std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into());
        let dir = std::env::temp_dir().join(format!("cim-bench-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "--store_dir"])
            .arg(dir.join("store"))
            .arg("--ports_file_dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let ports = dir.join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut server = Self {
            child,
            dir,
            url: String::new(),
        };
        server.url = loop {
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(u) = v["nats"][0].as_str()
            {
                break u.to_owned();
            }
            if Instant::now() > deadline {
                return Err("nats-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(server)
    }

    /// The server's version, from `nats-server --version`.
    pub fn version() -> String {
        let bin = std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into());
        Command::new(bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
