//! The last good cluster config on local disk, so a node restarted while etcd is
//! down serves what it served before. Written atomically (temp file, fsync, rename);
//! the documents are stored as etcd held them, so upstream keys stay sealed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// File name inside the state directory.
pub const FILE_NAME: &str = "cluster-snapshot.json";

/// The raw documents under `/strait/config/` at one revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotFile {
    pub format: u32,
    pub revision: i64,
    /// RFC 3339 time of writing.
    pub written_at: String,
    /// etcd key → the JSON document stored under it.
    pub kvs: BTreeMap<String, String>,
}

pub fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(FILE_NAME)
}

/// Writes the snapshot atomically: readers see the old file or the new one, never a
/// torn one, even after a crash.
pub fn write(
    state_dir: &Path,
    revision: i64,
    kvs: &BTreeMap<String, Vec<u8>>,
) -> std::io::Result<()> {
    let doc = SnapshotFile {
        format: 1,
        revision,
        written_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        kvs: kvs
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect(),
    };
    let bytes = serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?;
    let final_path = path(state_dir);
    let tmp = state_dir.join(format!("{FILE_NAME}.tmp"));
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // Only sealed keys and hashes inside, but nobody else needs to read it.
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &final_path)?;
    // The rename is durable only once the directory entry is.
    if let Ok(dir) = std::fs::File::open(state_dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Reads the snapshot; `Ok(None)` when there is none yet.
pub fn read(state_dir: &Path) -> Result<Option<SnapshotFile>, String> {
    let p = path(state_dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", p.display())),
    };
    let doc: SnapshotFile =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
    if doc.format != 1 {
        return Err(format!("{}: unknown format {}", p.display(), doc.format));
    }
    Ok(Some(doc))
}

impl SnapshotFile {
    pub fn into_kvs(self) -> BTreeMap<String, Vec<u8>> {
        self.kvs
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing() {
        let dir = std::env::temp_dir().join(format!("strait-snap-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read(&dir).unwrap(), None);
        let mut kvs = BTreeMap::new();
        kvs.insert(
            "/strait/config/regions/eu".to_string(),
            b"{\"draining\":false}".to_vec(),
        );
        write(&dir, 42, &kvs).unwrap();
        let back = read(&dir).unwrap().unwrap();
        assert_eq!(back.revision, 42);
        assert_eq!(back.into_kvs(), kvs);
        assert!(!dir.join("cluster-snapshot.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
