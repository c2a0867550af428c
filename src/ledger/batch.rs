//! Group commit for incoming alerts. Webhook handlers hand their alert to
//! one writer task, which takes every alert waiting at that moment (up to
//! [`MAX_BATCH`]) and stores them, with their runs, in one transaction of a
//! few multi-row statements. Each caller is answered only after that
//! transaction commits, so `202` still means stored. Deduplication is the
//! same as one at a time: the first delivery of a key in (or before) the
//! batch makes the run, every other one names it.

use std::collections::{HashMap, HashSet};

use sqlx::{AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::dialect::Sql;
use super::{Ingested, NewAlert, RunId, RunStatus, StepName, StepStatus, StoreError};

/// Most alerts stored in one transaction.
pub const MAX_BATCH: usize = 256;

pub(super) struct Job {
    pub alert: NewAlert,
    pub reply: oneshot::Sender<Result<Ingested, StoreError>>,
}

/// Starts the writer task; it ends when every sender is dropped.
/// `sqlite`: the connection runs at `synchronous = NORMAL`; each batch raises it to FULL.
pub(super) fn spawn(pool: AnyPool, sqlite: bool) -> mpsc::Sender<Job> {
    let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
    tokio::spawn(writer(pool, sqlite, rx));
    tx
}

async fn writer(pool: AnyPool, sqlite: bool, mut rx: mpsc::Receiver<Job>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let alerts: Vec<&NewAlert> = jobs.iter().map(|j| &j.alert).collect();
        match write(&pool, sqlite, &alerts).await {
            Ok(answers) => {
                for (job, answer) in jobs.into_iter().zip(answers) {
                    let _ = job.reply.send(Ok(answer));
                }
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.reply.send(Err(e.replicate()));
                }
            }
        }
    }
}

/// Stores a batch in one transaction; one answer per alert, in order.
async fn write(
    pool: &AnyPool,
    sqlite: bool,
    alerts: &[&NewAlert],
) -> Result<Vec<Ingested>, StoreError> {
    let mut conn = pool.acquire().await?;
    if sqlite {
        // A 202 must survive power loss: this commit syncs fully. (The
        // engine's own bookkeeping commits at NORMAL; see the README.)
        sqlx::Executor::execute(&mut *conn, "PRAGMA synchronous = FULL").await?;
    }
    let result = write_in(&mut conn, alerts).await;
    if sqlite {
        // Best effort: a connection left at FULL is only slower.
        let _ = sqlx::Executor::execute(&mut *conn, "PRAGMA synchronous = NORMAL").await;
    }
    result
}

async fn write_in(
    conn: &mut sqlx::AnyConnection,
    alerts: &[&NewAlert],
) -> Result<Vec<Ingested>, StoreError> {
    // The first delivery of each key in the batch is the one that may insert.
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, a) in alerts.iter().enumerate() {
        first.entry(a.dedup_key.as_str()).or_insert(i);
    }
    let mut leaders: Vec<usize> = first.values().copied().collect();
    // Key order, so two instances inserting the same keys lock them in the
    // same order and cannot deadlock.
    leaders.sort_unstable_by(|a, b| alerts[*a].dedup_key.cmp(&alerts[*b].dedup_key));
    let alert_ids: Vec<String> = leaders
        .iter()
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let mut sql =
        Sql::new("INSERT INTO alerts (id, dedup_key, resource, action, received_at, body) VALUES ");
    sql.push_values(leaders.iter().zip(&alert_ids), |row, (i, id)| {
        let a = alerts[*i];
        row.bind(id.clone())
            .bind(a.dedup_key.clone())
            .bind(a.resource.clone())
            .bind(a.action.clone())
            .bind(a.received_at_ms)
            .bind(a.body.clone());
    });
    sql.push(" ON CONFLICT (dedup_key) DO NOTHING RETURNING id");
    let (text, args) = sql.build()?;
    let inserted: HashSet<String> = sqlx::query_with(&text, args)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?;

    let mut runs: HashMap<&str, (RunId, bool)> = HashMap::new();
    let new: Vec<(usize, &String, RunId)> = leaders
        .iter()
        .zip(&alert_ids)
        .filter(|(_, id)| inserted.contains(*id))
        .map(|(i, id)| (*i, id, RunId::generate()))
        .collect();
    if !new.is_empty() {
        insert_runs(&mut tx, alerts, &new).await?;
        for (i, _, run) in &new {
            runs.insert(alerts[*i].dedup_key.as_str(), (run.clone(), true));
        }
    }
    let seen: Vec<&str> = leaders
        .iter()
        .map(|i| alerts[*i].dedup_key.as_str())
        .filter(|k| !runs.contains_key(k))
        .collect();
    if !seen.is_empty() {
        let mut sql = Sql::new(
            "SELECT r.id, a.dedup_key FROM runs r JOIN alerts a ON a.id = r.alert_id WHERE a.dedup_key IN ",
        );
        sql.push_values([&seen], |row, keys| {
            for k in keys.iter() {
                row.bind(k.to_string());
            }
        });
        let (text, args) = sql.build()?;
        for row in sqlx::query_with(&text, args).fetch_all(&mut *tx).await? {
            let key: String = row.try_get("dedup_key")?;
            if let Some(k) = seen.iter().find(|k| **k == key) {
                runs.insert(k, (RunId(row.try_get("id")?), false));
            }
        }
    }
    tx.commit().await?;
    alerts
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let (run, created) = runs
                .get(a.dedup_key.as_str())
                .cloned()
                .ok_or_else(|| StoreError::NotFound(format!("run of alert {}", a.dedup_key)))?;
            Ok(if created && first.get(a.dedup_key.as_str()) == Some(&i) {
                Ingested::Stored(run)
            } else {
                Ingested::Duplicate(run)
            })
        })
        .collect()
}

/// The runs of newly stored alerts, and their first step: `decide`, still
/// to do, or done already when the alert alone decided it. A new run may
/// be claimed at once (`not_before` 0): no host's clock is compared with
/// the database's.
async fn insert_runs(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    alerts: &[&NewAlert],
    new: &[(usize, &String, RunId)],
) -> Result<(), StoreError> {
    let mut sql = Sql::new(
        "INSERT INTO runs (id, alert_id, service, status, outcome, reason, decision, created_at, decided_at, finished_at, not_before) VALUES ",
    );
    sql.push_values(new, |row, (i, alert_id, run)| {
        let a = alerts[*i];
        let at = a.received_at_ms;
        let d = a.decided.as_ref();
        let done = d.map(|_| at);
        let status = if d.is_some() {
            RunStatus::Done
        } else {
            RunStatus::Pending
        };
        row.bind(run.0.clone())
            .bind((*alert_id).clone())
            .bind(d.map_or(&a.service, |d| &d.service).clone())
            .bind(status.as_str().to_string())
            .bind(d.map(|d| d.outcome.as_str().to_string()))
            .bind(d.map(|d| d.reason.clone()))
            .bind(d.map(|d| d.detail.to_string()))
            .bind(at)
            .bind(done)
            .bind(done)
            .bind(0i64);
    });
    let (text, args) = sql.build()?;
    sqlx::query_with(&text, args).execute(&mut **tx).await?;
    let mut sql =
        Sql::new("INSERT INTO steps (run_id, name, seq, status, output, finished_at) VALUES ");
    sql.push_values(new, |row, (i, _, run)| {
        let a = alerts[*i];
        let d = a.decided.as_ref();
        let status = if d.is_some() {
            StepStatus::Succeeded
        } else {
            StepStatus::Pending
        };
        row.bind(run.0.clone())
            .bind(StepName::Decide.as_str().to_string())
            .bind(0i64)
            .bind(status.as_str().to_string())
            .bind(
                d.map(|d| {
                    serde_json::json!({"outcome": d.outcome, "reason": d.reason}).to_string()
                }),
            )
            .bind(d.map(|_| a.received_at_ms));
    });
    let (text, args) = sql.build()?;
    sqlx::query_with(&text, args).execute(&mut **tx).await?;
    Ok(())
}
