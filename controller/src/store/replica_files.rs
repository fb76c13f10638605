//! Files of the data directory that every controller replica of one
//! PostgreSQL database must hold alike: the admin and join tokens, and the
//! CA that signs node certificates. A node registered through one replica
//! fails over to another with its certificate, and the provider sends one
//! admin token to every endpoint in its list; both work only if the
//! replicas agree on these files.
//!
//! The database is where they meet: the first replica publishes its files
//! (creating any it lacks), and a replica started later with an empty data
//! directory writes the published ones into it. A replica whose own file
//! differs from the published one refuses to start rather than overwrite
//! either: which one the nodes and operators hold is the operator's call.
//! Everything happens in one transaction under the store's write lock, so
//! replicas started at the same moment cannot publish two CAs.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::codec::rfc3339;
use super::error::StoreError;
use super::sql::{params, Connection, OptionalExtension};
use crate::tls::{read_optional, write_atomically, TlsError};

/// A file to share, relative to the data directory.
#[derive(Debug, Clone, Copy)]
pub struct SharedFile {
    /// Path relative to the data directory (also its key in the database).
    pub name: &'static str,
    /// Mode a replica gives the file when it writes the published copy.
    pub mode: u32,
}

/// What [`share`] did, for the start-up log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Shared {
    /// Files this replica took from the database.
    pub adopted: Vec<&'static str>,
    /// Files this replica published for the others.
    pub published: Vec<&'static str>,
}

/// Why the files could not be shared.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaFilesError<E: std::error::Error + 'static> {
    /// The database could not be read or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be read or written.
    #[error(transparent)]
    File(#[from] TlsError),
    /// This replica's file is not the one the other replicas share.
    #[error("{path} differs from the {name} the other controller replicas of this database share; remove it from this data directory to take theirs, or make theirs match it")]
    Differs {
        /// The local file.
        path: PathBuf,
        /// Its name in the database.
        name: &'static str,
    },
    /// Making the files this replica lacked failed.
    #[error(transparent)]
    Create(E),
    /// The maker returned without making one of the files.
    #[error("{0} was not created")]
    NotCreated(PathBuf),
}

/// Make the `files` of `data_dir` the same as the other replicas' of the
/// database at `postgres_url`: take the published ones, and publish the
/// others after `create_missing` made any that are absent (it is called
/// only when the database lacks one of them, inside the transaction).
///
/// Runs on a thread of its own: PostgreSQL sessions must not block an
/// async worker, and the controller calls this from one at start.
pub fn share<E>(
    postgres_url: &str,
    data_dir: &Path,
    files: &[SharedFile],
    create_missing: impl FnOnce() -> Result<(), E> + Send,
) -> Result<Shared, ReplicaFilesError<E>>
where
    E: std::error::Error + Send + 'static,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut conn = Connection::open_postgres(postgres_url).map_err(StoreError::from)?;
                share_through(&mut conn, data_dir, files, create_missing)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn share_through<E>(
    conn: &mut Connection,
    data_dir: &Path,
    files: &[SharedFile],
    create_missing: impl FnOnce() -> Result<(), E>,
) -> Result<Shared, ReplicaFilesError<E>>
where
    E: std::error::Error + 'static,
{
    let tx = conn.transaction().map_err(StoreError::from)?;
    let mut shared = Shared::default();
    let mut to_adopt = Vec::new();
    let mut unpublished = Vec::new();
    // Every file is checked before any is written: a refused replica leaves
    // its data directory as it found it.
    for file in files {
        let path = data_dir.join(file.name);
        let published: Option<String> = tx
            .query_row(
                "SELECT content FROM replica_files WHERE name = ?1",
                [file.name],
                |row| row.get(0),
            )
            .optional()
            .map_err(StoreError::from)?;
        match (published, read_optional(&path)?) {
            (Some(theirs), Some(ours)) if theirs == ours => {}
            (Some(_), Some(_)) => {
                return Err(ReplicaFilesError::Differs {
                    path,
                    name: file.name,
                })
            }
            (Some(theirs), None) => to_adopt.push((file, path, theirs)),
            (None, _) => unpublished.push((file.name, path)),
        }
    }
    for (file, path, theirs) in to_adopt {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| TlsError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        write_atomically(&path, &theirs, file.mode)?;
        shared.adopted.push(file.name);
    }
    if !unpublished.is_empty() {
        create_missing().map_err(ReplicaFilesError::Create)?;
        let now = rfc3339(OffsetDateTime::now_utc());
        for (name, path) in unpublished {
            let content =
                read_optional(&path)?.ok_or_else(|| ReplicaFilesError::NotCreated(path))?;
            tx.execute(
                "INSERT INTO replica_files (name, content, created_at) VALUES (?1, ?2, ?3)",
                params![name, content, now],
            )
            .map_err(StoreError::from)?;
            shared.published.push(name);
        }
    }
    tx.commit().map_err(StoreError::from)?;
    Ok(shared)
}
