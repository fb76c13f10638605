//! An in-memory replica of monitored tables, in the spirit of ovs' Python IDL:
//! the monitor's initial contents plus every later update, with a change
//! counter (`seqno`) so a caller can wait for "anything newer than what I read".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use serde_json::{json, Map, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::OvsdbClient;
use crate::error::OvsdbError;
use crate::value;

/// Rows of one table by uuid; each row holds the monitored columns.
pub type TableRows = BTreeMap<String, Map<String, Value>>;

#[derive(Default)]
struct Replica {
    tables: HashMap<String, TableRows>,
}

impl Replica {
    /// RFC 7047 4.1.6: `new` holds every monitored column of the row's current
    /// state (initial, insert, modify); no `new` means the row was deleted.
    fn apply(&mut self, updates: &Value) -> Result<(), OvsdbError> {
        let tables = updates.as_object().ok_or_else(|| {
            OvsdbError::Protocol(format!("table-updates is not an object: {updates}"))
        })?;
        // Checked before anything changes: a malformed update must not leave the
        // replica with some of its tables applied.
        let tables = tables
            .iter()
            .map(|(table, rows)| {
                rows.as_object().map(|rows| (table, rows)).ok_or_else(|| {
                    OvsdbError::Protocol(format!("table-update of {table} is not an object"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        for (table, rows) in tables {
            let replica = self.tables.entry(table.clone()).or_default();
            for (uuid, change) in rows {
                match change.get("new").and_then(Value::as_object) {
                    Some(new) => {
                        replica.insert(uuid.clone(), new.clone());
                    }
                    None => {
                        replica.remove(uuid);
                    }
                }
            }
        }
        Ok(())
    }
}

/// Applies one `update` notification's table-updates to `tables` as the monitor cache
/// does; the row count after it.
pub fn apply_table_updates(
    tables: &mut HashMap<String, TableRows>,
    updates: &Value,
) -> Result<usize, OvsdbError> {
    let mut replica = Replica {
        tables: std::mem::take(tables),
    };
    let outcome = replica.apply(updates);
    *tables = replica.tables;
    outcome.map(|()| tables.values().map(BTreeMap::len).sum())
}

/// A live replica of some tables of one database, fed by an OVSDB monitor.
/// Dropping it stops the feeding task (the server-side monitor ends with the
/// session).
pub struct MonitorCache {
    replica: Arc<Mutex<Replica>>,
    seqno: watch::Receiver<u64>,
    feeder: JoinHandle<()>,
}

impl std::fmt::Debug for MonitorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorCache")
            .field("seqno", &*self.seqno.borrow())
            .finish()
    }
}

impl Drop for MonitorCache {
    fn drop(&mut self) {
        self.feeder.abort();
    }
}

impl MonitorCache {
    /// Monitor `tables` (name and columns; empty columns means all) of `db`.
    pub async fn start(
        client: &OvsdbClient,
        db: &str,
        tables: &[(&str, &[&str])],
    ) -> Result<Self, OvsdbError> {
        let mut requests = Map::new();
        for (table, columns) in tables {
            let request = if columns.is_empty() {
                json!({})
            } else {
                json!({"columns": columns})
            };
            requests.insert(table.to_string(), request);
        }
        let monitor_id = value::fresh_uuid_name("cache");
        let (initial, mut stream) = client
            .monitor(db, &monitor_id, Value::Object(requests))
            .await?;
        let mut replica = Replica::default();
        for (table, _) in tables {
            replica.tables.entry(table.to_string()).or_default();
        }
        replica.apply(&initial)?;
        let replica = Arc::new(Mutex::new(replica));
        let (seqno_tx, seqno) = watch::channel(1u64);
        let feeding = replica.clone();
        let feeder = tokio::spawn(async move {
            while let Some(updates) = stream.next().await {
                let applied = lock(&feeding).apply(&updates);
                if let Err(err) = applied {
                    tracing::warn!(cause = %err, "ignoring malformed monitor update");
                    continue;
                }
                seqno_tx.send_modify(|n| *n += 1);
            }
        });
        Ok(MonitorCache {
            replica,
            seqno,
            feeder,
        })
    }

    /// Goes up by one on every applied update.
    pub fn seqno(&self) -> u64 {
        *self.seqno.borrow()
    }

    /// Wait until the replica is newer than `seqno`; fails if the session ended.
    pub async fn wait_newer_than(&mut self, seqno: u64) -> Result<u64, OvsdbError> {
        let current = self
            .seqno
            .wait_for(|n| *n > seqno)
            .await
            .map_err(|_| OvsdbError::Disconnected("monitor stream ended".to_string()))?;
        Ok(*current)
    }

    /// A copy of one table's rows (empty if the table is not monitored).
    pub fn table(&self, table: &str) -> TableRows {
        lock(&self.replica)
            .tables
            .get(table)
            .cloned()
            .unwrap_or_default()
    }
}

fn lock(replica: &Mutex<Replica>) -> std::sync::MutexGuard<'_, Replica> {
    replica
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_applies_insert_modify_delete() {
        let mut replica = Replica::default();
        replica
            .apply(&json!({"Port": {"u1": {"new": {"name": "p1", "tag": 10}}}}))
            .unwrap();
        replica
            .apply(
                &json!({"Port": {"u1": {"old": {"tag": 10}, "new": {"name": "p1", "tag": 20}},
                                     "u2": {"new": {"name": "p2", "tag": 30}}}}),
            )
            .unwrap();
        assert_eq!(replica.tables["Port"]["u1"]["tag"], json!(20));
        replica
            .apply(&json!({"Port": {"u2": {"old": {"name": "p2", "tag": 30}}}}))
            .unwrap();
        assert_eq!(replica.tables["Port"].len(), 1);
        assert!(replica.apply(&json!([1])).is_err());
    }

    #[test]
    fn a_refused_update_changes_nothing() {
        let mut replica = Replica::default();
        // "Bridge" sorts first, so a row-by-row apply would have inserted it
        // before reaching the malformed "Port".
        let update = json!({"Bridge": {"b1": {"new": {"name": "br0"}}}, "Port": 7});
        assert!(replica.apply(&update).is_err());
        assert!(replica.tables.is_empty(), "{:?}", replica.tables.keys());
    }
}
