//! Which steps a decision calls for: a pure function of the decision and
//! what is configured, so the whole run can be read off one table.

use super::Decision;
use crate::ledger::{Outcome, StepName};

/// What a plan needs to know besides the decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlanContext {
    /// PagerDuty is configured.
    pub paging: bool,
    /// Slack is configured.
    pub announcing: bool,
    /// The service pages on dry runs too.
    pub page_on_dry_run: bool,
    /// The service resolves the page when Sentry resolves the alert.
    pub resolve_on_recovery: bool,
    /// The service posts a note when a critical alert is skipped.
    pub announce_skips: bool,
    /// A rollback can be recorded (Sentry deploy, PagerDuty change event).
    pub record: bool,
    /// A rollback is watched until it recovers (or the window ends).
    pub watch: bool,
    /// The brief agent writes after a rollback or an escalation.
    pub brief: bool,
    /// The recap agent writes when a rollback's run ends.
    pub recap: bool,
}

/// The steps after `decide`, in order. An alert no service can be found
/// for is only told when it escalates (a person must map it).
pub fn plan(d: &Decision, ctx: &PlanContext) -> Vec<StepName> {
    if d.service.is_none() && d.outcome != Outcome::Escalate {
        return vec![];
    }
    let (page, announce) = match d.outcome {
        Outcome::Rollback | Outcome::Escalate => (true, true),
        Outcome::DryRun => (ctx.page_on_dry_run, true),
        Outcome::Resolution => (ctx.resolve_on_recovery, true),
        // Critical alerts for a mapped service that were not acted on.
        Outcome::Skip => (false, ctx.announce_skips && d.rule.announces_skip()),
    };
    let mut steps = Vec::new();
    if d.outcome == Outcome::Rollback {
        steps.push(StepName::Rollback);
    }
    if d.outcome == Outcome::Skip && d.rule.needs_resync() {
        steps.push(StepName::Resync);
    }
    let page = page && ctx.paging;
    let announce = announce && ctx.announcing;
    if page {
        steps.push(StepName::Page);
    }
    if announce {
        steps.push(StepName::Announce);
    }
    if page && announce {
        // Says in the card's thread when paging failed.
        steps.push(StepName::Followup);
    }
    if d.outcome == Outcome::Rollback {
        if ctx.record {
            steps.push(StepName::Record);
        }
        if ctx.watch {
            steps.push(StepName::Watch);
        }
    }
    // The agents write after everything else, and only add.
    if ctx.brief
        && d.service.is_some()
        && matches!(d.outcome, Outcome::Rollback | Outcome::Escalate)
    {
        steps.push(StepName::Brief);
    }
    if ctx.recap && d.outcome == Outcome::Rollback {
        steps.push(StepName::Recap);
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Rule;

    fn decision(outcome: Outcome, rule: Rule) -> Decision {
        Decision {
            outcome,
            rule,
            reason: String::new(),
            service: Some("storefront".into()),
            live: None,
            target: None,
            alert_started_at_ms: None,
            checks: vec![],
            readings: None,
            joins: None,
        }
    }

    const ALL_ON: PlanContext = PlanContext {
        paging: true,
        announcing: true,
        page_on_dry_run: false,
        resolve_on_recovery: false,
        announce_skips: true,
        record: false,
        watch: false,
        brief: false,
        recap: false,
    };

    #[test]
    fn a_rollback_moves_production_then_pages_announces_and_follows_up() {
        use StepName::*;
        let d = decision(Outcome::Rollback, Rule::Act);
        assert_eq!(plan(&d, &ALL_ON), vec![Rollback, Page, Announce, Followup]);
        let slack_only = PlanContext {
            paging: false,
            ..ALL_ON
        };
        assert_eq!(plan(&d, &slack_only), vec![Rollback, Announce]);
        let closed_loop = PlanContext {
            record: true,
            watch: true,
            ..ALL_ON
        };
        assert_eq!(
            plan(&d, &closed_loop),
            vec![Rollback, Page, Announce, Followup, Record, Watch]
        );
        let agents = PlanContext {
            brief: true,
            recap: true,
            ..closed_loop
        };
        assert_eq!(
            plan(&d, &agents),
            vec![Rollback, Page, Announce, Followup, Record, Watch, Brief, Recap]
        );
        let e = decision(Outcome::Escalate, Rule::OutsideCooldown);
        assert_eq!(plan(&e, &agents), vec![Page, Announce, Followup, Brief]);
        let skip = decision(Outcome::Skip, Rule::Fresh);
        assert_eq!(plan(&skip, &agents), vec![Announce], "no brief for a skip");
        // Only a rollback is recorded and watched.
        let e = decision(Outcome::Escalate, Rule::EnoughData);
        assert_eq!(plan(&e, &closed_loop), vec![Page, Announce, Followup]);
    }

    #[test]
    fn escalations_page_and_announce_without_touching_production() {
        use StepName::*;
        let d = decision(Outcome::Escalate, Rule::OutsideCooldown);
        assert_eq!(plan(&d, &ALL_ON), vec![Page, Announce, Followup]);
    }

    #[test]
    fn a_changed_production_resyncs_and_notes_it_unless_notes_are_off() {
        use StepName::*;
        let d = decision(Outcome::Skip, Rule::ProductionUnchanged);
        assert_eq!(plan(&d, &ALL_ON), vec![Resync, Announce]);
        let quiet = PlanContext {
            announce_skips: false,
            ..ALL_ON
        };
        assert_eq!(plan(&d, &quiet), vec![Resync]);
        let stale = decision(Outcome::Skip, Rule::Fresh);
        assert_eq!(plan(&stale, &ALL_ON), vec![Announce]);
        let off = decision(Outcome::Skip, Rule::Enabled);
        assert!(plan(&off, &ALL_ON).is_empty());
    }

    #[test]
    fn dry_runs_and_resolutions_page_only_when_the_service_says_so() {
        use StepName::*;
        let dry = decision(Outcome::DryRun, Rule::DryRun);
        assert_eq!(plan(&dry, &ALL_ON), vec![Announce]);
        let loud = PlanContext {
            page_on_dry_run: true,
            resolve_on_recovery: true,
            ..ALL_ON
        };
        assert_eq!(plan(&dry, &loud), vec![Page, Announce, Followup]);
        let resolved = decision(Outcome::Resolution, Rule::NotResolved);
        assert_eq!(plan(&resolved, &ALL_ON), vec![Announce]);
        assert_eq!(plan(&resolved, &loud), vec![Page, Announce, Followup]);
    }

    #[test]
    fn an_unmapped_alert_has_no_steps_unless_a_person_must_map_it() {
        use StepName::*;
        let mut d = decision(Outcome::Resolution, Rule::NotResolved);
        d.service = None;
        assert!(plan(&d, &ALL_ON).is_empty());
        let mut d = decision(Outcome::Skip, Rule::Mapped);
        d.service = None;
        assert!(plan(&d, &ALL_ON).is_empty());
        let mut d = decision(Outcome::Escalate, Rule::Mapped);
        d.service = None;
        assert_eq!(plan(&d, &ALL_ON), vec![Page, Announce, Followup]);
    }
}
