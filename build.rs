//! Build script: puts the git revision the tool is built from into `STM32BOOT_GIT_REV`, which
//! `stm32boot --version` shows ("0.1.0 (git abc1234)", "abc1234-dirty" with uncommitted
//! changes to tracked files).
//!
//! It never fails the build: without git, or outside a checkout (a crates.io download, a
//! vendored copy inside some other repository), the revision is `unknown`. Packagers building
//! from a tarball can set `STM32BOOT_GIT_REV` themselves.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=STM32BOOT_GIT_REV");
    let rev = match std::env::var("STM32BOOT_GIT_REV") {
        // Control characters would end the cargo instruction below.
        Ok(rev) if !rev.trim().is_empty() => rev.trim().replace(char::is_control, " "),
        _ => {
            let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            git_rev(&root).unwrap_or_else(|| "unknown".to_string())
        }
    };
    println!("cargo:rustc-env=STM32BOOT_GIT_REV={rev}");
}

/// The short hash of HEAD, with `-dirty` when tracked files differ from it; `None` when the
/// package is not the top of a git checkout or git cannot tell.
fn git_rev(root: &Path) -> Option<String> {
    // Only the package's own checkout counts: `git` would otherwise find an enclosing
    // repository (a vendored copy) and report its revision.
    let git_dir = git_dir(root)?;
    watch(&git_dir);
    let hash = git(root, &["rev-parse", "--short=7", "HEAD"])?;
    if hash.is_empty() {
        return None;
    }
    // --no-optional-locks: a status check must not rewrite the index that a concurrent git
    // command may be using.
    let status = git(
        root,
        &[
            "--no-optional-locks",
            "status",
            "--porcelain",
            "--untracked-files=no",
        ],
    )?;
    Some(if status.is_empty() {
        hash
    } else {
        format!("{hash}-dirty")
    })
}

/// `root/.git`, or where a `.git` file (worktree, submodule) points.
fn git_dir(root: &Path) -> Option<PathBuf> {
    let dot_git = root.join(".git");
    if dot_git.is_dir() {
        return Some(dot_git);
    }
    let text = std::fs::read_to_string(&dot_git).ok()?;
    let target = text.trim().strip_prefix("gitdir:")?.trim();
    Some(root.join(target))
}

/// Rerun when HEAD moves (a checkout, a commit on the current branch). Not on every edit or
/// index change: that would rebuild the whole crate at each `git add`; so `-dirty` reflects the
/// tree as it was when HEAD last moved (or at a clean build), which is what a release build
/// from a checkout sees.
fn watch(git_dir: &Path) {
    let head = git_dir.join("HEAD");
    println!("cargo:rerun-if-changed={}", head.display());
    if let Ok(text) = std::fs::read_to_string(&head) {
        if let Some(reference) = text.trim().strip_prefix("ref:") {
            let reference = reference.trim();
            // Branches live in the common directory of a worktree.
            let common = std::fs::read_to_string(git_dir.join("commondir"))
                .map(|c| git_dir.join(c.trim()))
                .unwrap_or_else(|_| git_dir.to_path_buf());
            let mut dirs = vec![git_dir.to_path_buf()];
            if common != git_dir {
                dirs.push(common.clone());
            }
            for dir in dirs {
                let path = dir.join(reference);
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            // A path that does not exist would rerun this script on every build.
            let packed = common.join("packed-refs");
            if packed.exists() {
                println!("cargo:rerun-if-changed={}", packed.display());
            }
        }
    }
}

/// Run git in `root`; its trimmed stdout if it ran and succeeded.
fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
