//! The cookie: what makes a bookie started on wiped or swapped disks refuse to join, instead
//! of answering reads for entries it once acknowledged with "no such entry" (serving holes).
//!
//! A [`Cookie`] names one incarnation of one bookie: its id, a random instance id made when
//! the bookie first started on empty directories, and the directories it was made for. It is
//! kept three times, as `cookie.json` in the data dir and in the journal dir, and in metadata
//! at `/magnetar/bookies/cookies/<bookie id>` (a persistent key). [`verify_or_create`] runs
//! before storage opens and compares the three:
//!
//! | metadata | data dir | journal dir | outcome |
//! |---|---|---|---|
//! | - | - | - | new bookie if both dirs are empty of data: write all three |
//! | C | C | C | same bookie, same disks: start (if the configured dirs are the ones in C) |
//! | C | missing or other | any | refuse: a disk was wiped or swapped |
//! | - | C | C or - | refuse, unless no dir holds data yet: then a first start crashed between writing the files and the metadata, and creation completes |
//!
//! Creation writes the files before the metadata key, the key with a compare-and-set on its
//! absence, so two processes started with one bookie id cannot both win. Recovery from a
//! refusal is an operator's decision and each refusal says which: mount the right disk, or
//! decommission the bookie (delete the metadata cookie, after its ledgers were re-replicated)
//! so that it rejoins as a new, empty bookie.
//!
//! Files are read and written on blocking threads; a cookie file is written to a temporary
//! name, fsync'd, renamed into place, and the directory fsync'd, so a crash leaves either the
//! old file or the new one.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use magnetar_meta::{Expected, MetaError, MetadataStore};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::config::BookieConfig;
use crate::error::BookieError;

/// Metadata directory of the cookies, one persistent key per bookie id.
pub const COOKIES_PATH: &str = "/magnetar/bookies/cookies";
/// File name of the cookie in the data dir and in the journal dir.
pub const COOKIE_FILE: &str = "cookie.json";
/// A cookie being written; renamed to [`COOKIE_FILE`] once synced.
const COOKIE_TEMP_FILE: &str = "cookie.json.tmp";
/// Entries of a directory that are not data: the cookie itself and a file system's
/// `lost+found` at the root of a mount.
const NOT_DATA: [&str; 3] = [COOKIE_FILE, COOKIE_TEMP_FILE, "lost+found"];

/// One incarnation of one bookie on one set of directories.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cookie {
    pub bookie_id: String,
    /// Random, made once when the bookie first starts on empty directories (32 hex digits).
    pub instance_id: String,
    /// Absolute path of the data dir the cookie was made for.
    pub data_dir: PathBuf,
    /// Absolute path of the journal dir the cookie was made for.
    pub journal_dir: PathBuf,
}

impl Cookie {
    /// A new incarnation of the bookie `config` describes.
    fn new(bookie_id: &str, dirs: &Dirs) -> Cookie {
        Cookie {
            bookie_id: bookie_id.to_owned(),
            instance_id: format!("{:032x}", rand::random::<u128>()),
            data_dir: dirs.data.clone(),
            journal_dir: dirs.journal.clone(),
        }
    }

    fn encode(&self) -> Result<Vec<u8>, BookieError> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|error| BookieError::Corrupt { what: "cookie".to_owned(), reason: error.to_string() })?;
        bytes.push(b'\n');
        Ok(bytes)
    }

    fn decode(what: &str, bytes: &[u8]) -> Result<Cookie, BookieError> {
        serde_json::from_slice(bytes).map_err(|error| BookieError::Corrupt {
            what: format!("cookie {what}"),
            reason: format!("{error} (fix or remove the file only if you know this disk belongs to this bookie)"),
        })
    }

    /// A one-line description for error messages.
    fn describe(&self) -> String {
        format!(
            "bookie {} instance {} (data dir {}, journal dir {})",
            self.bookie_id,
            self.instance_id,
            self.data_dir.display(),
            self.journal_dir.display()
        )
    }
}

/// Metadata key of a bookie's cookie.
pub fn cookie_path(bookie_id: &str) -> String {
    format!("{COOKIES_PATH}/{bookie_id}")
}

/// Checks that this bookie's directories are the ones it had before, or makes a new cookie
/// for a new bookie on empty directories. Call before storage opens; an error means the
/// bookie must not start. Refusals are [`BookieError::CookieMismatch`], whose reason says
/// what differs and how to recover.
pub async fn verify_or_create(store: &dyn MetadataStore, config: &BookieConfig) -> Result<Cookie, BookieError> {
    let dirs = Dirs::of(config)?;
    let key = cookie_path(&config.bookie_id);
    let metadata = match store.get(&key).await? {
        Some(found) => Some(Cookie::decode(&format!("in metadata at {key}"), &found.value)?),
        None => None,
    };
    let local_dirs = dirs.clone();
    let (data, journal) =
        blocking(move || Ok((local_dirs.read(&local_dirs.data)?, local_dirs.read(&local_dirs.journal)?))).await?;

    match decide(&config.bookie_id, &dirs, metadata, data, journal) {
        Decision::Verified(cookie) => {
            info!(bookie_id = %cookie.bookie_id, instance_id = %cookie.instance_id, "cookie verified");
            Ok(cookie)
        }
        Decision::Refuse(reason) => Err(BookieError::CookieMismatch { reason }),
        Decision::Create { cookie, fresh } => {
            let (files_dirs, files_cookie) = (dirs.clone(), cookie.clone());
            blocking(move || {
                for dir in files_dirs.unique() {
                    write_cookie_file(dir, &files_cookie)?;
                }
                Ok(())
            })
            .await?;
            match store.put(&key, cookie.encode()?, Expected::Absent).await {
                Ok(_) => {}
                Err(MetaError::BadVersion { .. }) => {
                    if fresh {
                        // Our files name an incarnation that lost the race; leaving them would
                        // make this bookie's next start look like a swapped disk.
                        let cleanup_dirs = dirs.clone();
                        if let Err(error) = blocking(move || remove_cookie_files(&cleanup_dirs)).await {
                            warn!(%error, "removing the cookie files of a lost creation race");
                        }
                    }
                    return Err(BookieError::CookieMismatch {
                        reason: format!(
                            "another process created the metadata cookie {key} for bookie {} while this one \
                             started: two bookies are configured with the same bookie id; give each bookie its \
                             own --bookie-id",
                            config.bookie_id
                        ),
                    });
                }
                Err(error) => return Err(error.into()),
            }
            if fresh {
                info!(bookie_id = %cookie.bookie_id, instance_id = %cookie.instance_id, "new bookie: cookie created");
            } else {
                warn!(
                    bookie_id = %cookie.bookie_id,
                    instance_id = %cookie.instance_id,
                    "completed the cookie of a first start that stopped before writing it to metadata"
                );
            }
            Ok(cookie)
        }
    }
}

/// Deletes a bookie's metadata cookie, so that the id can rejoin as a new, empty bookie.
/// For decommissioning, once the bookie's ledgers have been re-replicated elsewhere.
pub async fn delete(store: &dyn MetadataStore, bookie_id: &str) -> Result<(), BookieError> {
    store.delete(&cookie_path(bookie_id), Expected::Any).await?;
    Ok(())
}

/// The two directories, as absolute paths.
#[derive(Debug, Clone)]
struct Dirs {
    data: PathBuf,
    journal: PathBuf,
}

impl Dirs {
    fn of(config: &BookieConfig) -> Result<Dirs, BookieError> {
        let absolute = |path: &Path| {
            std::path::absolute(path).map_err(|source| BookieError::Io { path: path.display().to_string(), source })
        };
        Ok(Dirs { data: absolute(&config.data_dir)?, journal: absolute(&config.journal_dir())? })
    }

    /// Each directory once (the journal may be configured as the data dir itself).
    fn unique(&self) -> Vec<&Path> {
        if self.data == self.journal {
            vec![&self.data]
        } else {
            vec![&self.data, &self.journal]
        }
    }

    /// What one of the directories holds. Blocking.
    fn read(&self, dir: &Path) -> Result<Local, BookieError> {
        let file = dir.join(COOKIE_FILE);
        let cookie = match fs::read(&file) {
            Ok(bytes) => Some(Cookie::decode(&file.display().to_string(), &bytes)?),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(BookieError::Io { path: file.display().to_string(), source }),
        };
        let other = if dir == self.data { &self.journal } else { &self.data };
        let data = first_data(dir, other)?;
        Ok(Local { cookie, data })
    }
}

/// What one directory holds.
#[derive(Debug, Clone, Default)]
struct Local {
    cookie: Option<Cookie>,
    /// The first thing found in the directory that is neither the cookie nor the other
    /// directory: proof that something stored data here.
    data: Option<PathBuf>,
}

#[derive(Debug)]
enum Decision {
    Verified(Cookie),
    /// Write the cookie to both directories, then to metadata. `fresh`: a new incarnation,
    /// not the completion of one whose first start stopped half-way.
    Create {
        cookie: Cookie,
        fresh: bool,
    },
    Refuse(String),
}

/// How to recover from a wiped or swapped disk, for refusals.
fn recovery_hint(bookie_id: &str) -> String {
    format!(
        "To recover, mount the original disk at the configured path and start again. To rejoin as a new, empty \
         bookie instead, decommission this one: once its ledgers are re-replicated, delete the metadata cookie \
         {key} (etcd: `etcdctl del {key}`), empty the data and journal dirs, and start again (or start on empty \
         dirs with a new --bookie-id).",
        key = cookie_path(bookie_id)
    )
}

/// The comparison itself, without I/O.
fn decide(bookie_id: &str, dirs: &Dirs, metadata: Option<Cookie>, data: Local, journal: Local) -> Decision {
    let shared = dirs.data == dirs.journal;
    let dir_name = |is_data: bool| {
        if shared {
            format!("data and journal dir {}", dirs.data.display())
        } else if is_data {
            format!("data dir {}", dirs.data.display())
        } else {
            format!("journal dir {}", dirs.journal.display())
        }
    };
    let locals = [(true, &data), (false, &journal)];
    let locals = if shared { &locals[..1] } else { &locals[..] };

    match metadata {
        Some(registered) => {
            for (is_data, local) in locals {
                match &local.cookie {
                    None => {
                        return Decision::Refuse(format!(
                            "bookie {bookie_id} is registered in metadata ({}) as {}, but the {} has no cookie: the \
                             disk was wiped or replaced, and the entries this bookie acknowledged are not there. {}",
                            cookie_path(bookie_id),
                            registered.describe(),
                            dir_name(*is_data),
                            recovery_hint(bookie_id),
                        ))
                    }
                    Some(found) if *found != registered => {
                        return Decision::Refuse(format!(
                            "the {} holds the cookie of {}, but metadata ({}) registers {}: the disk belongs to \
                             another bookie or another incarnation of this one (swapped or copied disk). {}",
                            dir_name(*is_data),
                            found.describe(),
                            cookie_path(bookie_id),
                            registered.describe(),
                            recovery_hint(bookie_id),
                        ))
                    }
                    Some(_) => {}
                }
            }
            if registered.data_dir != dirs.data || registered.journal_dir != dirs.journal {
                return Decision::Refuse(format!(
                    "the cookie of bookie {bookie_id} was made for data dir {} and journal dir {}, but this start is \
                     configured with data dir {} and journal dir {}: configure the original paths (the cookie does \
                     not follow a directory that was moved)",
                    registered.data_dir.display(),
                    registered.journal_dir.display(),
                    dirs.data.display(),
                    dirs.journal.display(),
                ));
            }
            Decision::Verified(registered)
        }
        None => {
            let found: Vec<&Cookie> = locals.iter().filter_map(|(_, local)| local.cookie.as_ref()).collect();
            let stored = locals.iter().find_map(|(is_data, local)| local.data.as_ref().map(|path| (*is_data, path)));
            match (found.first(), stored) {
                (None, None) => Decision::Create { cookie: Cookie::new(bookie_id, dirs), fresh: true },
                (None, Some((is_data, path))) => Decision::Refuse(format!(
                    "the {} holds data ({}) but no cookie, and metadata has no cookie for bookie {bookie_id}: it \
                     was not made by this bookie. Point the bookie at its own directories, or empty this one to \
                     start a new bookie",
                    dir_name(is_data),
                    path.display(),
                )),
                (Some(first), stored) => {
                    if let Some(other) = found.iter().find(|cookie| **cookie != *first) {
                        return Decision::Refuse(format!(
                            "the data dir holds the cookie of {} but the journal dir holds the cookie of {}: the \
                             disks belong to different bookies. {}",
                            first.describe(),
                            other.describe(),
                            recovery_hint(bookie_id),
                        ));
                    }
                    let ours = first.bookie_id == bookie_id
                        && first.data_dir == dirs.data
                        && first.journal_dir == dirs.journal;
                    match (ours, stored) {
                        (true, None) => Decision::Create { cookie: (*first).clone(), fresh: false },
                        (false, _) => Decision::Refuse(format!(
                            "the directories hold the cookie of {}, which is not bookie {bookie_id} on data dir {} \
                             and journal dir {}, and metadata has no cookie for {bookie_id}: the disk belongs to \
                             another bookie. Point the bookie at its own directories",
                            first.describe(),
                            dirs.data.display(),
                            dirs.journal.display(),
                        )),
                        (true, Some((is_data, path))) => Decision::Refuse(format!(
                            "the {} holds the cookie of {} and data ({}), but metadata has no cookie at {}: the \
                             bookie was decommissioned or the metadata store was reset, so the cluster no longer \
                             counts on this data. To rejoin as a new, empty bookie, empty the data and journal dirs \
                             and start again; to keep the data, restore the metadata store that registered it",
                            dir_name(is_data),
                            first.describe(),
                            path.display(),
                            cookie_path(bookie_id),
                        )),
                    }
                }
            }
        }
    }
}

/// Runs blocking file work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BookieError> + Send + 'static,
) -> Result<T, BookieError> {
    tokio::task::spawn_blocking(work).await.map_err(|_| BookieError::Stopped { what: "cookie file thread" })?
}

/// The first entry of `dir` that is data: not the cookie, not `lost+found`, not `other` (the
/// other bookie directory, when nested) nor a directory on the way to it. `None` for a
/// missing or empty directory. Blocking.
fn first_data(dir: &Path, other: &Path) -> Result<Option<PathBuf>, BookieError> {
    let io = |source| BookieError::Io { path: dir.display().to_string(), source };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io(source)),
    };
    for entry in entries {
        let path = entry.map_err(io)?.path();
        let name = path.file_name().and_then(|name| name.to_str()).unwrap_or_default();
        if NOT_DATA.contains(&name) || path == other {
            continue;
        }
        if other.starts_with(&path) && path.is_dir() {
            if let Some(found) = first_data(&path, other)? {
                return Ok(Some(found));
            }
            continue;
        }
        return Ok(Some(path));
    }
    Ok(None)
}

/// Writes `cookie` to `dir/cookie.json` atomically and durably. Blocking.
fn write_cookie_file(dir: &Path, cookie: &Cookie) -> Result<(), BookieError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| BookieError::Io { path, source }
    };
    fs::create_dir_all(dir).map_err(io(dir))?;
    let temp = dir.join(COOKIE_TEMP_FILE);
    let target = dir.join(COOKIE_FILE);
    let mut file = File::create(&temp).map_err(io(&temp))?;
    file.write_all(&cookie.encode()?).map_err(io(&temp))?;
    file.sync_all().map_err(io(&temp))?;
    drop(file);
    fs::rename(&temp, &target).map_err(io(&target))?;
    // The rename is durable only once the directory is.
    File::open(dir).and_then(|directory| directory.sync_all()).map_err(io(dir))?;
    Ok(())
}

/// Removes the cookie files of both directories. Blocking.
fn remove_cookie_files(dirs: &Dirs) -> Result<(), BookieError> {
    for dir in dirs.unique() {
        let file = dir.join(COOKIE_FILE);
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(BookieError::Io { path: file.display().to_string(), source }),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use magnetar_meta::LocalStore;

    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        store: Arc<LocalStore>,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().expect("temp dir");
            let root = dir.path().to_path_buf();
            let store = Arc::new(LocalStore::open(&root.join("meta")).expect("open local store"));
            Fixture { _dir: dir, root, store }
        }

        /// A bookie with its journal on a separate "disk".
        fn config(&self, bookie_id: &str, disk: &str) -> BookieConfig {
            BookieConfig {
                journal_dir: Some(self.root.join(disk).join("journal")),
                ..BookieConfig::new(bookie_id, self.root.join(disk).join("data"))
            }
        }

        async fn verify(&self, config: &BookieConfig) -> Result<Cookie, BookieError> {
            verify_or_create(self.store.as_ref(), config).await
        }
    }

    fn reason(result: Result<Cookie, BookieError>) -> String {
        match result {
            Err(BookieError::CookieMismatch { reason }) => reason,
            other => panic!("expected a cookie mismatch, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn new_bookie_on_empty_dirs_creates_all_three_cookies() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        let cookie = fixture.verify(&config).await.expect("create");
        assert_eq!(cookie.bookie_id, "bookie-1");
        assert_eq!(cookie.instance_id.len(), 32);
        for dir in [&config.data_dir, &config.journal_dir()] {
            let stored: Cookie = serde_json::from_slice(&fs::read(dir.join(COOKIE_FILE)).expect("read")).expect("json");
            assert_eq!(stored, cookie);
            assert!(!dir.join(COOKIE_TEMP_FILE).exists());
        }
        let registered = fixture.store.get(&cookie_path("bookie-1")).await.expect("get").expect("present");
        assert_eq!(Cookie::decode("metadata", &registered.value).expect("decode"), cookie);
    }

    #[tokio::test]
    async fn restart_on_same_dirs_verifies_the_same_cookie() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        let created = fixture.verify(&config).await.expect("create");
        fs::write(config.data_dir.join("entries.log"), b"data").expect("write data");
        let verified = fixture.verify(&config).await.expect("verify");
        assert_eq!(created, verified);
    }

    #[tokio::test]
    async fn default_journal_inside_data_dir_is_not_data() {
        let fixture = Fixture::new();
        let config = BookieConfig::new("bookie-1", fixture.root.join("data"));
        let created = fixture.verify(&config).await.expect("create");
        assert!(config.journal_dir().join(COOKIE_FILE).exists());
        assert_eq!(fixture.verify(&config).await.expect("verify"), created);
    }

    #[tokio::test]
    async fn wiped_data_dir_is_refused() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        fixture.verify(&config).await.expect("create");
        fs::remove_dir_all(&config.data_dir).expect("wipe");
        let reason = reason(fixture.verify(&config).await);
        assert!(reason.contains("has no cookie"), "{reason}");
        assert!(reason.contains("wiped"), "{reason}");
        assert!(reason.contains(&cookie_path("bookie-1")), "{reason}");
    }

    #[tokio::test]
    async fn wiped_journal_dir_is_refused() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        fixture.verify(&config).await.expect("create");
        fs::remove_file(config.journal_dir().join(COOKIE_FILE)).expect("wipe");
        let reason = reason(fixture.verify(&config).await);
        assert!(reason.contains("journal dir"), "{reason}");
    }

    #[tokio::test]
    async fn disk_of_another_bookie_is_refused() {
        let fixture = Fixture::new();
        let first = fixture.config("bookie-1", "disk-a");
        let second = fixture.config("bookie-2", "disk-b");
        fixture.verify(&first).await.expect("create first");
        fixture.verify(&second).await.expect("create second");
        // bookie-2's data disk now sits where bookie-1's was.
        fs::remove_dir_all(&first.data_dir).expect("remove");
        fs::rename(&second.data_dir, &first.data_dir).expect("swap");
        let reason = reason(fixture.verify(&first).await);
        assert!(reason.contains("bookie bookie-2"), "{reason}");
        assert!(reason.contains("swapped"), "{reason}");
    }

    #[tokio::test]
    async fn data_and_journal_of_different_incarnations_are_refused() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        let created = fixture.verify(&config).await.expect("create");
        let other = Cookie { instance_id: "0".repeat(32), ..created };
        write_cookie_file(&config.journal_dir(), &other).expect("overwrite");
        let reason = reason(fixture.verify(&config).await);
        assert!(reason.contains(&"0".repeat(32)), "{reason}");
    }

    #[tokio::test]
    async fn moved_dirs_are_refused() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        fixture.verify(&config).await.expect("create");
        let moved = fixture.config("bookie-1", "disk-moved");
        fs::rename(fixture.root.join("disk-a"), fixture.root.join("disk-moved")).expect("move");
        let reason = reason(fixture.verify(&moved).await);
        assert!(reason.contains("configure the original paths"), "{reason}");
    }

    #[tokio::test]
    async fn data_without_any_cookie_is_refused() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        fs::create_dir_all(&config.data_dir).expect("mkdir");
        fs::write(config.data_dir.join("000001.log"), b"old").expect("write");
        let reason = reason(fixture.verify(&config).await);
        assert!(reason.contains("holds data"), "{reason}");
        assert!(fixture.store.get(&cookie_path("bookie-1")).await.expect("get").is_none());
    }

    #[tokio::test]
    async fn first_start_interrupted_before_metadata_completes() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        let created = fixture.verify(&config).await.expect("create");
        fixture.store.delete(&cookie_path("bookie-1"), Expected::Any).await.expect("delete");
        // No data yet: the files were written, the metadata key was not.
        let completed = fixture.verify(&config).await.expect("complete");
        assert_eq!(completed, created);
        assert!(fixture.store.get(&cookie_path("bookie-1")).await.expect("get").is_some());
    }

    #[tokio::test]
    async fn decommissioned_bookie_with_data_is_refused_until_emptied() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        let created = fixture.verify(&config).await.expect("create");
        fs::write(config.journal_dir().join("0001.journal"), b"entries").expect("write");
        delete(fixture.store.as_ref(), "bookie-1").await.expect("decommission");
        let reason = reason(fixture.verify(&config).await);
        assert!(reason.contains("decommissioned"), "{reason}");
        fs::remove_dir_all(fixture.root.join("disk-a")).expect("empty");
        let rejoined = fixture.verify(&config).await.expect("rejoin");
        assert_ne!(rejoined.instance_id, created.instance_id);
    }

    #[tokio::test]
    async fn corrupt_cookie_file_is_an_error_naming_the_file() {
        let fixture = Fixture::new();
        let config = fixture.config("bookie-1", "disk-a");
        fixture.verify(&config).await.expect("create");
        fs::write(config.data_dir.join(COOKIE_FILE), b"{not json").expect("corrupt");
        match fixture.verify(&config).await {
            Err(BookieError::Corrupt { what, .. }) => assert!(what.contains(COOKIE_FILE), "{what}"),
            other => panic!("expected corrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn second_bookie_with_the_same_id_is_refused() {
        let fixture = Fixture::new();
        fixture.verify(&fixture.config("bookie-1", "disk-a")).await.expect("create");
        let reason = reason(fixture.verify(&fixture.config("bookie-1", "disk-b")).await);
        assert!(reason.contains("has no cookie"), "{reason}");
    }
}
