//! Where the workspace is and how to run cargo in it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The workspace this xtask belongs to, wherever it was started from.
#[derive(Debug, Clone)]
pub(crate) struct Workspace {
    root: PathBuf,
    cargo: OsString,
}

impl Workspace {
    /// The workspace around this xtask: the parent of its manifest directory.
    /// Cargo is the one in `$CARGO` (set by `cargo run`), else `cargo`.
    pub(crate) fn locate() -> Result<Self> {
        // `cargo run` sets the variable for the program too. Prefer it to the
        // compile-time value: a target directory shared by two checkouts may
        // hold an xtask binary built from the other one.
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .filter(|dir| dir.join("Cargo.toml").is_file())
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let root = manifest_dir
            .parent()
            .with_context(|| format!("{} has no parent", manifest_dir.display()))?
            .to_path_buf();
        if !root.join("Cargo.toml").is_file() {
            bail!(
                "no Cargo.toml in {}, the expected workspace root",
                root.display()
            );
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        Ok(Workspace { root, cargo })
    }

    /// The workspace root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// A `cargo <args>` command that runs in the workspace root.
    pub(crate) fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(&self.cargo);
        command.args(args).current_dir(&self.root);
        // Whole builds from scratch: incremental artifacts only cost time and
        // disk here. Respect an explicit choice of the caller.
        if std::env::var_os("CARGO_INCREMENTAL").is_none() {
            command.env("CARGO_INCREMENTAL", "0");
        }
        command
    }

    /// `cargo metadata --no-deps` of the workspace.
    fn metadata(&self) -> Result<serde_json::Value> {
        let output = self
            .cargo(["metadata", "--format-version", "1", "--no-deps"])
            .stderr(Stdio::inherit())
            .output()
            .context("could not run `cargo metadata`")?;
        if !output.status.success() {
            bail!("`cargo metadata` failed ({})", output.status);
        }
        serde_json::from_slice(&output.stdout).context("`cargo metadata` printed invalid JSON")
    }

    /// Each package of the workspace with its declared `rust-version`.
    pub(crate) fn rust_versions(&self) -> Result<Vec<(String, Option<String>)>> {
        let metadata = self.metadata()?;
        let packages = metadata["packages"]
            .as_array()
            .context("`cargo metadata` gave no packages")?;
        Ok(packages
            .iter()
            .map(|package| {
                (
                    package["name"].as_str().unwrap_or("?").to_owned(),
                    package["rust_version"].as_str().map(str::to_owned),
                )
            })
            .collect())
    }

    /// `rustc --version` of the compiler cargo uses here (`$RUSTC`, else
    /// `rustc`, run in the workspace so a toolchain file would apply).
    pub(crate) fn rustc_version(&self) -> Result<String> {
        let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
        let output = Command::new(&rustc)
            .arg("--version")
            .current_dir(&self.root)
            .output()
            .with_context(|| format!("could not run `{} --version`", rustc.to_string_lossy()))?;
        if !output.status.success() {
            bail!("`rustc --version` failed ({})", output.status);
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// The target directory cargo uses for this workspace (honours
    /// `CARGO_TARGET_DIR` and `.cargo/config.toml`).
    pub(crate) fn target_dir(&self) -> Result<PathBuf> {
        let metadata = self.metadata()?;
        let target = metadata["target_directory"]
            .as_str()
            .context("`cargo metadata` gave no target_directory")?;
        Ok(PathBuf::from(target))
    }
}
