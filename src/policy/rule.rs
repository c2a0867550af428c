//! The rules of the decision table, in order, and what each implies for the
//! rest of the run. Rule numbers are for people (the README's table); code
//! asks a rule what it means instead of comparing numbers.

use serde::{Deserialize, Deserializer, Serialize};

/// One row of the README's decision table. Its check passes when the flow
/// goes on past it; the first that does not pass decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// 1: the alert is not a resolution.
    NotResolved,
    /// 2: the alert is critical.
    Critical,
    /// 3: a service maps the alert's projects and environment.
    Mapped,
    /// 4: the rule is a crash-free rate (or the service accepts others).
    CrashRate,
    /// 5: the ledger knows the live deployment (and its facts were readable).
    LiveKnown,
    /// 6: the alert started after the live deployment went live.
    Fresh,
    /// 7: Vercel still serves the live deployment on every domain.
    ProductionUnchanged,
    /// 8: the live deployment was not rolled back from already.
    NotHandled,
    /// 9: no rollback of this service is watching the live deployment
    /// recover (an alert about it joins that watch).
    NotWatched,
    /// 10: the service's mode is not `off`.
    Enabled,
    /// 11: no person paused the service, and Backstop did not freeze it.
    NotPaused,
    /// 12: Sentry's release health could be read (or confirmation is off).
    Confirmed,
    /// 13: the live release has enough sessions to believe the alert.
    EnoughData,
    /// 14: the live release is still below the threshold.
    StillCrashing,
    /// 15: it is the release: the known-good one was healthy, and not every
    /// release dropped together.
    TheRelease,
    /// 16: the live deployment served at least `min_live_before_alert`
    /// before the alert was detected (release health decides when read).
    LiveLongEnough,
    /// 17: no automatic rollback of the service within the cooldown.
    OutsideCooldown,
    /// 18: the daily budget of rollbacks is not spent.
    BudgetLeft,
    /// 19: a known-good deployment older than the live one exists.
    Target,
    /// 20: dry run: announce what would have happened.
    DryRun,
    /// 21: roll back.
    Act,
}

impl Rule {
    /// Every rule, in the order they are applied.
    pub const ALL: [Rule; 21] = [
        Rule::NotResolved,
        Rule::Critical,
        Rule::Mapped,
        Rule::CrashRate,
        Rule::LiveKnown,
        Rule::Fresh,
        Rule::ProductionUnchanged,
        Rule::NotHandled,
        Rule::NotWatched,
        Rule::Enabled,
        Rule::NotPaused,
        Rule::Confirmed,
        Rule::EnoughData,
        Rule::StillCrashing,
        Rule::TheRelease,
        Rule::LiveLongEnough,
        Rule::OutsideCooldown,
        Rule::BudgetLeft,
        Rule::Target,
        Rule::DryRun,
        Rule::Act,
    ];

    /// Its row in the README's decision table.
    pub fn number(self) -> u8 {
        Rule::ALL.iter().position(|r| *r == self).unwrap_or(0) as u8 + 1
    }

    /// The check's short name, as cards and `runs show` print it.
    pub fn check_name(self) -> &'static str {
        match self {
            Rule::NotResolved => "not resolved",
            Rule::Critical => "critical",
            Rule::Mapped => "mapped",
            Rule::CrashRate => "crash-free rate",
            Rule::LiveKnown => "live known",
            Rule::Fresh => "fresh",
            Rule::ProductionUnchanged => "production unchanged",
            Rule::NotHandled => "not handled",
            Rule::NotWatched => "not watched",
            Rule::Enabled => "enabled",
            Rule::NotPaused => "not paused",
            Rule::Confirmed => "release health read",
            Rule::EnoughData => "enough data",
            Rule::StillCrashing => "still crashing",
            Rule::TheRelease => "the release",
            Rule::LiveLongEnough => "live long enough",
            Rule::OutsideCooldown => "outside cooldown",
            Rule::BudgetLeft => "budget left",
            Rule::Target => "target",
            Rule::DryRun => "dry run",
            Rule::Act => "roll back",
        }
    }

    /// A skip by this rule is settled by the alert alone (stored finished
    /// at ingest, no worker needed).
    pub fn settles_at_ingest(self) -> bool {
        matches!(self, Rule::Critical | Rule::Mapped | Rule::CrashRate)
    }

    /// A skip by this rule concerns a fresh-looking critical alert for a
    /// mapped service, so people get a short note (unless turned off).
    pub fn announces_skip(self) -> bool {
        matches!(
            self,
            Rule::Fresh
                | Rule::ProductionUnchanged
                | Rule::NotHandled
                | Rule::NotWatched
                | Rule::StillCrashing
        )
    }

    /// A skip by this rule means the ledger is behind production: import
    /// it again.
    pub fn needs_resync(self) -> bool {
        self == Rule::ProductionUnchanged
    }
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.number(), self.check_name())
    }
}

/// The first table's rules, by their number then: decisions stored before
/// rules had names carry those numbers.
const FIRST_TABLE: [Rule; 15] = [
    Rule::NotResolved,
    Rule::Critical,
    Rule::Mapped,
    Rule::CrashRate,
    Rule::LiveKnown,
    Rule::Fresh,
    Rule::ProductionUnchanged,
    Rule::NotHandled,
    Rule::Enabled,
    Rule::NotPaused,
    Rule::OutsideCooldown,
    Rule::BudgetLeft,
    Rule::Target,
    Rule::DryRun,
    Rule::Act,
];

/// Stored decisions name rules by their kebab-case name; decisions stored
/// before rules had names carry their number in the first table.
impl<'de> Deserialize<'de> for Rule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Stored {
            Number(u8),
            Name(String),
        }
        let by_name = |name: &str| {
            Rule::ALL.into_iter().find(|r| {
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    == Some(name.to_string())
            })
        };
        match Stored::deserialize(d)? {
            Stored::Number(n) => FIRST_TABLE.get(usize::from(n).wrapping_sub(1)).copied(),
            Stored::Name(name) => by_name(&name),
        }
        .ok_or_else(|| serde::de::Error::custom("unknown rule"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_numbered_in_table_order_and_round_trip() {
        assert_eq!(Rule::NotResolved.number(), 1);
        assert_eq!(Rule::ProductionUnchanged.number(), 7);
        assert_eq!(Rule::Act.number(), 21);
        for r in Rule::ALL {
            let v = serde_json::to_value(r).unwrap();
            assert_eq!(serde_json::from_value::<Rule>(v).unwrap(), r);
        }
        for (i, r) in FIRST_TABLE.into_iter().enumerate() {
            let n = serde_json::json!(i + 1);
            assert_eq!(
                serde_json::from_value::<Rule>(n).unwrap(),
                r,
                "stored as {i}+1"
            );
        }
        assert!(serde_json::from_value::<Rule>(serde_json::json!(99)).is_err());
    }

    #[test]
    fn only_the_alert_settles_rules_two_to_four() {
        let settled: Vec<u8> = Rule::ALL
            .into_iter()
            .filter(|r| r.settles_at_ingest())
            .map(Rule::number)
            .collect();
        assert_eq!(settled, vec![2, 3, 4]);
        let noted: Vec<u8> = Rule::ALL
            .into_iter()
            .filter(|r| r.announces_skip())
            .map(Rule::number)
            .collect();
        assert_eq!(noted, vec![6, 7, 8, 9, 14]);
    }
}
