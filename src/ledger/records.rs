//! Plain records read from and written to the ledger, and the vocabulary
//! they are written in: every status, step name and outcome is an enum
//! whose stored spelling lives only in its own `as_str`/`parse`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Defines a stored enum: its variants, their spellings, `as_str`, `parse`,
/// `ALL`, `Display` and serde in the same spelling.
macro_rules! stored_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored spelling.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// Parses the stored spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

stored_enum!(
    /// What the ledger knows about a deployment's health.
    Verdict {
        /// Recorded, not yet proven.
        Unproven = "unproven",
        /// Baked without a critical alert, or marked good by a person.
        Good = "good",
        /// Rolled back from, or marked bad by a person. Never a target.
        Bad = "bad",
        /// A person undid the rollback from it: put back by hand, neither
        /// good nor bad. Never a target.
        Overridden = "overridden",
    }
);

stored_enum!(
    /// Where a run is.
    RunStatus {
        /// Waiting for a worker.
        Pending = "pending",
        /// Claimed by a worker.
        Running = "running",
        /// Watching production recover after its rollback: it looks again
        /// at its next `not_before`, holding no worker in between.
        Watching = "watching",
        /// Every step finished (or none was needed).
        Done = "done",
        /// A step failed for good.
        Failed = "failed",
    }
);

stored_enum!(
    /// Where a step is.
    StepStatus {
        /// Not finished yet.
        Pending = "pending",
        /// Finished successfully.
        Succeeded = "succeeded",
        /// Gave up (fatal error or deadline).
        Failed = "failed",
    }
);

stored_enum!(
    /// How one attempt of a step ended.
    AttemptOutcome {
        /// It did what it was for.
        Ok = "ok",
        /// It failed; another attempt may succeed.
        Retryable = "retryable",
        /// It failed; no retry will help.
        Fatal = "fatal",
    }
);

stored_enum!(
    /// The steps a run can have. Which ones a decision calls for is
    /// `policy::plan`; how each runs is its own file under `engine/`; when
    /// it runs relative to the others is [`StepName::phase`].
    StepName {
        /// Gather the facts and apply the policy.
        Decide = "decide",
        /// Move production to the known-good deployment and verify it.
        Rollback = "rollback",
        /// Production changed under the ledger: import it again.
        Resync = "resync",
        /// Open (or resolve) the PagerDuty incident.
        Page = "page",
        /// Post the decision card (or a reply) in Slack.
        Announce = "announce",
        /// Say in the card's thread that paging failed.
        Followup = "followup",
        /// Record the rollback where people look: a Sentry deploy of the
        /// restored release, a PagerDuty change event.
        Record = "record",
        /// Watch production recover after a rollback; page again and
        /// freeze the service when it does not.
        Watch = "watch",
        /// A person pressed Undo: production back on the deployment the
        /// rollback moved away from, the service held.
        Undo = "undo",
        /// A person pressed Hold: the service paused.
        Hold = "hold",
        /// A person pressed Resume: the service's pause or freeze lifted.
        Resume = "resume",
        /// The brief agent: what probably broke, for the on-call.
        Brief = "brief",
        /// The recap agent: a timeline draft once the run ends.
        Recap = "recap",
    }
);

impl StepName {
    /// Steps run in phases, in order; the steps of one phase run side by
    /// side. Phases 0 and 1 hold the service's claim (one run per service
    /// decides and moves production at a time); later ones do not.
    pub fn phase(self) -> Phase {
        match self {
            StepName::Decide => Phase::Decide,
            StepName::Rollback | StepName::Resync => Phase::Act,
            StepName::Page | StepName::Announce => Phase::Tell,
            StepName::Followup | StepName::Record | StepName::Brief => Phase::FollowUp,
            StepName::Watch => Phase::Watch,
            StepName::Recap => Phase::Recap,
            // A person's word comes before anything the run still had to
            // tell; it changes what the service may do, so it holds the
            // service (undoing moves production).
            StepName::Undo | StepName::Hold | StepName::Resume => Phase::Act,
        }
    }
}

/// When a step runs; see [`StepName::phase`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Deciding.
    Decide,
    /// Acting on production (under the service claim).
    Act,
    /// Paging and announcing, side by side.
    Tell,
    /// What the telling left to say, and recording the change.
    FollowUp,
    /// Watching the rollback recover (it may take many looks).
    Watch,
    /// Writing the recap, once everything else is done.
    Recap,
}

impl Phase {
    /// True while the run must hold its service's claim.
    pub fn holds_service(self) -> bool {
        self <= Phase::Act
    }
}

stored_enum!(
    /// What a decision decided.
    Outcome {
        /// A `resolved` alert: reply in the thread, maybe resolve the page.
        Resolution = "resolution",
        /// Nothing to do.
        Skip = "skip",
        /// Page a human instead of acting.
        Escalate = "escalate",
        /// Announce what would have happened; change nothing.
        DryRun = "dry-run",
        /// Roll production back from the live deployment to the target.
        Rollback = "rollback",
    }
);

/// A run's id (a time-ordered UUID).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RunId(pub String);

impl RunId {
    /// A new, time-ordered id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A worker's hold on a run. Every write that belongs to the run carries
/// it: the `fence` grows with every claim, so a write by a worker whose
/// claim was taken over matches no row and fails as `LostClaim`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The run.
    pub run: RunId,
    /// The worker holding it (for people reading the database).
    pub worker: Arc<str>,
    /// The claim's number: higher than every earlier claim of this run.
    pub fence: i64,
}

/// The stored error envelope of an attempt or step: `{code, message,
/// retryable}`. Messages never carry secrets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Another attempt may succeed.
    pub retryable: bool,
    /// Provider-requested wait (not stored).
    #[serde(skip)]
    pub retry_after: Option<std::time::Duration>,
}

impl StepError {
    /// An error no retry will fix.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
            retry_after: None,
        }
    }

    /// An error worth another attempt.
    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
            retry_after: None,
        }
    }
}

/// One deployment row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// Vercel deployment id.
    pub id: String,
    /// Configured service name.
    pub service: String,
    /// `*.vercel.app` URL.
    pub url: Option<String>,
    /// Sentry release (by default the git commit sha).
    pub release: Option<String>,
    /// When Vercel created it, Unix ms.
    pub created_at_ms: Option<i64>,
    /// When it last went live, Unix ms.
    pub promoted_at_ms: Option<i64>,
    /// When another deployment replaced it, Unix ms.
    pub superseded_at_ms: Option<i64>,
    /// Serving production now.
    pub live: bool,
    /// Stored verdict.
    pub verdict: Verdict,
    /// Why it has that verdict.
    pub verdict_reason: Option<String>,
    /// When a fresh critical alert arrived while it was live, Unix ms.
    pub alerted_at_ms: Option<i64>,
}

/// A deployment to record (from a webhook, `sync` or the CLI).
#[derive(Debug, Clone, Default)]
pub struct NewDeployment {
    /// Vercel deployment id.
    pub id: String,
    /// Configured service name.
    pub service: String,
    /// `*.vercel.app` URL.
    pub url: Option<String>,
    /// Sentry release.
    pub release: Option<String>,
    /// Vercel's `createdAt`, Unix ms.
    pub created_at_ms: Option<i64>,
}

/// What became of a promotion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promotion {
    /// It is live now; `superseded` names what it replaced.
    Live { superseded: Option<String> },
    /// It was live already.
    AlreadyLive,
    /// A later promotion is already recorded; history updated only.
    Older,
}

/// What became of an incoming alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    /// Stored with a new run.
    Stored(RunId),
    /// Seen before; this is its run.
    Duplicate(RunId),
}

/// An alert as received.
#[derive(Debug, Clone)]
pub struct NewAlert {
    /// `(resource, rule, identifier, action)` key.
    pub dedup_key: String,
    /// `metric_alert` or `event_alert`.
    pub resource: String,
    /// `critical`, `resolved`, ...
    pub action: String,
    /// Service the alert maps to, if any (serialises its runs).
    pub service: Option<String>,
    /// The verified raw body.
    pub body: String,
    /// Unix ms.
    pub received_at_ms: i64,
    /// The decision, when the alert alone decides it (not critical,
    /// unmapped, not a crash alert): the run is stored finished.
    pub decided: Option<DecisionRecord>,
}

/// One run row.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    /// Run id.
    pub id: RunId,
    /// Alert id.
    pub alert_id: String,
    /// Service, once known.
    pub service: Option<String>,
    /// Where it is.
    pub status: RunStatus,
    /// What was decided.
    pub outcome: Option<Outcome>,
    /// One-line reason for the outcome.
    pub reason: Option<String>,
    /// The full decision with its facts.
    pub decision: Option<serde_json::Value>,
    /// Deployment rolled back from.
    pub rollback_from: Option<String>,
    /// Deployment rolled back to.
    pub rollback_to: Option<String>,
    /// Unix ms.
    pub created_at_ms: i64,
    /// Unix ms.
    pub decided_at_ms: Option<i64>,
    /// Unix ms.
    pub finished_at_ms: Option<i64>,
}

/// A run claimed by a worker, with the alert it acts on.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    /// The worker's hold on the run; every write passes it.
    pub claim: Claim,
    /// The run as claimed.
    pub run: Run,
    /// Alert resource (`metric_alert`, `event_alert`).
    pub resource: String,
    /// The stored raw alert body.
    pub body: String,
    /// When the alert was received, Unix ms.
    pub received_at_ms: i64,
}

/// One step of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Which step.
    pub name: StepName,
    /// Order of creation.
    pub seq: i64,
    /// Where it is.
    pub status: StepStatus,
    /// Attempts made.
    pub attempts: i64,
    /// What the step produced.
    pub output: Option<serde_json::Value>,
    /// Last error.
    pub error: Option<StepError>,
    /// Unix ms of the first attempt.
    pub started_at_ms: Option<i64>,
    /// Unix ms.
    pub finished_at_ms: Option<i64>,
}

/// One attempt of a step.
#[derive(Debug, Clone, Serialize)]
pub struct Attempt {
    /// Step name.
    pub step: StepName,
    /// 1-based attempt number.
    pub attempt: i64,
    /// Unix ms.
    pub started_at_ms: i64,
    /// Unix ms; `None` while in flight (or if the process died).
    pub finished_at_ms: Option<i64>,
    /// How it ended; `None` while in flight.
    pub outcome: Option<AttemptOutcome>,
    /// Its error.
    pub error: Option<StepError>,
}

/// A run with everything it did.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The run.
    pub run: Run,
    /// Alert action.
    pub action: String,
    /// Alert dedup key.
    pub dedup_key: String,
    /// The stored alert body.
    pub alert: serde_json::Value,
    /// Steps in order.
    pub steps: Vec<Step>,
    /// Every attempt, in order.
    pub attempts: Vec<Attempt>,
    /// What else happened to the run, in order.
    pub notes: Vec<RunNote>,
    /// The run's service is paused or frozen now: by whom and why.
    pub pause: Option<Pause>,
}

impl RunDetail {
    /// The step called `name`, if the run has it.
    pub fn step(&self, name: StepName) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The output of step `name` when it succeeded.
    pub fn output_of(&self, name: StepName) -> Option<&serde_json::Value> {
        self.step(name)
            .filter(|s| s.status == StepStatus::Succeeded)
            .and_then(|s| s.output.as_ref())
    }

    /// When a person's undo put production back (the `undo` step carried
    /// out, not refused), Unix ms.
    pub fn undone_at_ms(&self) -> Option<i64> {
        self.output_of(StepName::Undo)
            .filter(|o| o["undone"] == true)
            .and(self.step(StepName::Undo)?.finished_at_ms)
    }
}

/// The decision as stored on the run.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    /// Service the alert mapped to.
    pub service: Option<String>,
    /// What was decided.
    pub outcome: Outcome,
    /// One-line reason.
    pub reason: String,
    /// The full decision (serialised).
    pub detail: serde_json::Value,
    /// Deployment to roll back from.
    pub rollback_from: Option<String>,
    /// Deployment to roll back to.
    pub rollback_to: Option<String>,
    /// Live deployment that took a fresh critical alert (no longer bakes to good).
    pub alerted_live: Option<String>,
    /// Steps to run next, in order.
    pub steps: Vec<StepName>,
    /// The `decide` attempt that made it, recorded as ended with it.
    pub attempt: Option<i64>,
    /// A note the decision leaves on another run (an alert joining a
    /// watch), stored in the same transaction so it is there exactly when
    /// the decision is.
    pub note: Option<NoteRecord>,
}

/// A note for another run, written with the decision that causes it.
#[derive(Debug, Clone)]
pub struct NoteRecord {
    /// The run it is about.
    pub run: RunId,
    /// `joined`, ...
    pub kind: String,
    /// For people.
    pub text: String,
    /// Details.
    pub data: Option<serde_json::Value>,
}

/// What the ledger says about a service when an alert is decided.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    /// Deployments of the service, newest promotion first.
    pub deployments: Vec<Deployment>,
    /// The live deployment already had a rollback run.
    pub live_rolled_back: bool,
    /// When the last automatic rollback of this service was verified, Unix ms.
    pub last_rollback_at_ms: Option<i64>,
    /// Verified automatic rollbacks in the last 24 hours.
    pub rollbacks_last_day: u32,
    /// Why the service is paused (by a person) or frozen (by Backstop
    /// after a rollback that did not help), if it is.
    pub paused: Option<String>,
    /// The pause is Backstop's freeze.
    pub frozen: bool,
    /// A run of this service is watching its rollback recover: `(run, the
    /// deployment it restored)`.
    pub watching: Option<(RunId, String)>,
}

/// A service held back from automatic rollbacks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Pause {
    /// Service.
    pub service: String,
    /// Why.
    pub reason: String,
    /// When, Unix ms.
    pub at_ms: i64,
    /// The person (or `cli`) who paused it.
    pub by: Option<String>,
    /// Set when Backstop froze it: the run whose rollback did not help.
    pub frozen_by_run: Option<RunId>,
}

/// A service held, resumed or frozen, as the pause log keeps it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PauseEvent {
    /// Service.
    pub service: String,
    /// When, Unix ms.
    pub at_ms: i64,
    /// `pause`, `resume` or `freeze`.
    pub action: String,
    /// Who: a Slack user (`<@U123>`), `cli:<user>`, or Backstop's run.
    pub by: Option<String>,
    /// Why (pauses and freezes).
    pub reason: Option<String>,
}

/// Something that happened to a run besides its steps.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunNote {
    /// When, Unix ms.
    pub at_ms: i64,
    /// `joined`, `ack`, ...
    pub kind: String,
    /// For people.
    pub text: String,
    /// Details.
    pub data: Option<serde_json::Value>,
}

/// A verified rollback, as the `rollback` step hands it to the ledger.
#[derive(Debug, Clone, Copy)]
pub struct RollbackDone<'a> {
    /// The run's claim, which must still hold.
    pub claim: &'a Claim,
    /// Service.
    pub service: &'a str,
    /// Deployment rolled back from (becomes bad).
    pub from: &'a str,
    /// Deployment rolled back to (becomes live and good).
    pub to: &'a str,
    /// The step's output.
    pub output: &'a serde_json::Value,
    /// The successful attempt, ended with this write.
    pub attempt: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stored_spelling_parses_back() {
        for s in StepName::ALL {
            assert_eq!(StepName::parse(s.as_str()), Some(*s));
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
        }
        for o in Outcome::ALL {
            assert_eq!(Outcome::parse(o.as_str()), Some(*o));
        }
        assert_eq!(RunStatus::parse("nope"), None);
    }

    #[test]
    fn only_deciding_and_acting_hold_the_service() {
        assert!(StepName::Decide.phase().holds_service());
        assert!(StepName::Rollback.phase().holds_service());
        assert!(!StepName::Page.phase().holds_service());
        assert!(StepName::Page.phase() == StepName::Announce.phase());
        assert!(StepName::Followup.phase() > StepName::Announce.phase());
    }
}
