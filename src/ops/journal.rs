//! The page journal: before a page that holds bytes the user did not supply is erased, its
//! original content and the content it is meant to end up with are saved to a file on the host
//! (written to a temporary file, fsynced, renamed, and the directory fsynced). If power or the
//! link dies between the erase and the end of the write, the journal still has every byte:
//! `recover` (or the next write to the same chip) finishes the page, or restores it.
//!
//! One file per chip, named by its 96-bit unique ID (parts without one fall back to their
//! product ID). JSON, with page contents in hex: small enough for pages up to an F4's 128 KB
//! sector, and readable by a person in an emergency.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

const VERSION: u32 = 1;

/// The journal directory used when none is given: `$STM32BOOT_STATE_DIR/journal`, else
/// `$XDG_STATE_HOME/stm32boot/journal`, else `~/.local/state/stm32boot/journal`.
pub fn default_dir() -> Option<PathBuf> {
    state_root().map(|d| d.join("journal"))
}

/// The tool's state directory, which holds the page journal (`journal/`) and the progress of
/// job files (`jobs/`): `$STM32BOOT_STATE_DIR`, else `$XDG_STATE_HOME/stm32boot`, else
/// `~/.local/state/stm32boot`.
pub fn state_root() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("STM32BOOT_STATE_DIR").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d).join("stm32boot"));
    }
    let home = std::env::var_os("HOME").filter(|d| !d.is_empty())?;
    Some(
        PathBuf::from(home)
            .join(".local")
            .join("state")
            .join("stm32boot"),
    )
}

/// Which chip a journal belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipKey {
    /// The unique device ID in hex, if the part has one.
    pub uid: Option<String>,
    /// Product ID.
    pub pid: u16,
    /// Part name, for people reading the file.
    pub part: String,
}

impl ChipKey {
    /// A key from the chip's identity.
    pub fn new(uid: Option<[u8; 12]>, pid: u16, part: &str) -> ChipKey {
        ChipKey {
            uid: uid.map(|u| hex(&u)),
            pid,
            part: part.to_string(),
        }
    }

    /// The journal file name for this chip.
    pub fn file_name(&self) -> String {
        match &self.uid {
            Some(uid) => format!("{uid}.json"),
            None => format!("pid-{:03x}.json", self.pid),
        }
    }
}

/// One page: where it is, what it held, and what it is to hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageEntry {
    /// Page address.
    pub address: u32,
    /// What the page held before the write, in hex.
    original: String,
    /// What the page is to hold after the write, in hex.
    target: String,
}

impl PageEntry {
    /// An entry for a page of `original.len()` bytes at `address`.
    pub fn new(address: u32, original: &[u8], target: &[u8]) -> PageEntry {
        PageEntry {
            address,
            original: hex(original),
            target: hex(target),
        }
    }

    /// The page's size.
    pub fn size(&self) -> usize {
        self.original.len() / 2
    }

    /// What the page held before the write.
    pub fn original(&self) -> Result<Vec<u8>> {
        unhex(&self.original)
    }

    /// What the page is to hold.
    pub fn target(&self) -> Result<Vec<u8>> {
        unhex(&self.target)
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct File {
    version: u32,
    chip: ChipKey,
    pages: Vec<PageEntry>,
}

/// The journal of one chip.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    chip: ChipKey,
    pages: Vec<PageEntry>,
}

impl Journal {
    /// Open the journal of `chip` in `dir`, reading pending entries if there are any.
    pub fn open(dir: &Path, chip: ChipKey) -> Result<Journal> {
        let path = dir.join(chip.file_name());
        let pages = if path.exists() {
            let text = std::fs::read(&path)
                .map_err(|e| Error::io(format!("reading the journal {}", path.display()), e))?;
            let file: File = serde_json::from_slice(&text).map_err(|e| {
                Error::InvalidRequest(format!(
                    "the journal {} is damaged ({e}); it holds pages saved before an erase: \
                     keep a copy, and remove it only once the chip is known to be good",
                    path.display()
                ))
            })?;
            if file.version != VERSION || file.chip.pid != chip.pid {
                return Err(Error::InvalidRequest(format!(
                    "the journal {} is for another chip or version (PID 0x{:03X}, version {})",
                    path.display(),
                    file.chip.pid,
                    file.version
                )));
            }
            for p in &file.pages {
                if p.original.len() != p.target.len() || p.original.len() % 2 != 0 {
                    return Err(Error::InvalidRequest(format!(
                        "the journal {} has a malformed entry at 0x{:08X}",
                        path.display(),
                        p.address
                    )));
                }
            }
            file.pages
        } else {
            Vec::new()
        };
        Ok(Journal { path, chip, pages })
    }

    /// Where the journal lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pages saved by a run that did not finish.
    pub fn pending(&self) -> &[PageEntry] {
        &self.pages
    }

    /// Save `pages` durably before anything is erased.
    pub fn record(&mut self, pages: Vec<PageEntry>) -> Result<()> {
        self.pages = pages;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(
                format!("creating the journal directory {}", dir.display()),
                e,
            )
        })?;
        let file = File {
            version: VERSION,
            chip: self.chip.clone(),
            pages: self.pages.clone(),
        };
        let json = serde_json::to_vec(&file)
            .map_err(|e| Error::InvalidRequest(format!("encoding the journal: {e}")))?;
        write_durably(&self.path, &json, "the journal")
    }

    /// Forget the entries: the pages are as they should be.
    pub fn clear(&mut self) -> Result<()> {
        self.pages.clear();
        if self.path.exists() {
            std::fs::remove_file(&self.path).map_err(|e| {
                Error::io(format!("removing the journal {}", self.path.display()), e)
            })?;
            sync_dir(self.path.parent().unwrap_or(Path::new(".")))?;
        }
        Ok(())
    }
}

/// Replace `path` with `bytes` so that a crash leaves the old or the new content, never a mix:
/// write a temporary file beside it, fsync it, rename it into place and fsync the directory.
/// `what` names the file in errors ("the journal").
pub(crate) fn write_durably(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    let ctx = |verb: &str| format!("{verb} {what} {}", path.display());
    let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(ctx("creating"), e))?;
    f.write_all(bytes)
        .map_err(|e| Error::io(ctx("writing"), e))?;
    f.sync_all().map_err(|e| Error::io(ctx("syncing"), e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| Error::io(ctx("renaming"), e))?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing the directory {}", dir.display()), e))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| Error::InvalidRequest("the journal holds a malformed page".into()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_open_and_clear() {
        let dir = tempfile::tempdir().expect("test setup");
        let key = ChipKey::new(Some([1; 12]), 0x431, "STM32F411");
        let mut j = Journal::open(dir.path(), key.clone()).expect("test setup");
        assert!(j.pending().is_empty());
        j.record(vec![PageEntry::new(0x0800_4000, &[1, 2, 3], &[1, 9, 3])])
            .expect("test setup");
        let again = Journal::open(dir.path(), key.clone()).expect("test setup");
        assert_eq!(again.pending().len(), 1);
        assert_eq!(again.pending()[0].target().expect("test setup"), [1, 9, 3]);
        assert_eq!(again.pending()[0].size(), 3);
        j.clear().expect("test setup");
        assert!(Journal::open(dir.path(), key)
            .expect("test setup")
            .pending()
            .is_empty());
    }

    #[test]
    fn damaged_or_foreign_journals_are_refused() {
        let dir = tempfile::tempdir().expect("test setup");
        let key = ChipKey::new(None, 0x415, "STM32L476");
        std::fs::write(dir.path().join(key.file_name()), "{not json").expect("test setup");
        let e = Journal::open(dir.path(), key.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("damaged") && e.contains("keep a copy"), "{e}");
        let mut other =
            Journal::open(dir.path(), ChipKey::new(None, 0x431, "STM32F411")).expect("test setup");
        other
            .record(vec![PageEntry::new(0, &[0], &[1])])
            .expect("test setup");
        std::fs::rename(
            dir.path().join("pid-431.json"),
            dir.path().join(key.file_name()),
        )
        .expect("test setup");
        let e = Journal::open(dir.path(), key).unwrap_err().to_string();
        assert!(e.contains("another chip"), "{e}");
    }
}
