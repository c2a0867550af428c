//! When everything breaks at once: many services' alerts together are
//! worked side by side (one run per service), each service's domains are
//! re-aliased side by side, and a domain whose write failed is retried
//! alone.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use backstop::app::Application;
use backstop::clock::now_ms;
use backstop::sim::config::{Bases, Config, Fleet, DEMO};
use backstop::sim::sender::{self, CrashAlert};
use backstop::sim::{Faults, Provider, Served};

use crate::helpers::*;

/// Ten services on the simulator, every provider answering in 50 ms: the
/// runs overlap, so some service's alias write reaches Vercel before a
/// service that started rolling back earlier has even paged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_alerts_is_rolled_back_side_by_side() {
    let fleet = Fleet {
        services: 10,
        domains: 3,
    };
    let Some(f) = FleetApp::start(fleet, 50, |_| {}).await else {
        return;
    };
    f.fire_all().await;
    let (sim, fleet) = (&f.sim, &f.fleet);
    let w = sim.sim.world();
    assert_eq!(
        w.alias_writes.len(),
        fleet.services * fleet.domains,
        "one write per domain, no service twice"
    );
    assert_eq!(w.incidents.len(), fleet.services, "one page per service");
    assert_every_service_rolled_back(&w, fleet);
    // Per service: its first alias write, and its page.
    let first_write = |svc: &str| {
        w.alias_writes
            .iter()
            .filter(|a| a.domain.contains(svc))
            .map(|a| a.at_us)
            .min()
            .unwrap()
    };
    let pages: Vec<&Served> = w
        .served
        .iter()
        .filter(|s| s.provider == Provider::Pagerduty && s.path.ends_with("/v2/enqueue"))
        .collect();
    assert_eq!(pages.len(), fleet.services);
    let overlap = (0..fleet.services).any(|a| {
        let a_name = Fleet::name(a);
        let a_page = page_time(&w, &a_name);
        (0..fleet.services).any(|b| {
            let b_name = Fleet::name(b);
            a != b && first_write(&a_name) < first_write(&b_name) && first_write(&b_name) < a_page
        })
    });
    assert!(
        overlap,
        "the runs never overlapped: every page came before the next service's writes"
    );
}

/// When service `name`'s page reached PagerDuty (its incident's first event).
fn page_time(w: &backstop::sim::World, name: &str) -> i64 {
    let incident = w
        .incidents
        .values()
        .find(|i| i.key.contains(name))
        .expect("paged");
    incident.first_event_at_us
}

/// A domain whose alias write fails (past the client's own retries) is
/// retried alone by the next attempt; the other domain is written once.
#[tokio::test]
async fn a_failed_domain_is_retried_alone() {
    let Some(app) = spawn_app(Db::Sqlite).await else {
        return;
    };
    let (vercel, now) = serving_new_over_old(&app).await;
    // The second domain's writes fail five times: the client's four tries,
    // then once more, so the step's first attempt fails for it alone.
    vercel.fail_writes_for(DOMAINS[1], 5);
    let resp = app
        .post_sentry("metric_alert", &compact(&crash_alert("fl-1", now - MIN)))
        .await;
    assert_eq!(resp.status(), 202);
    app.engine.run_until_idle().await.unwrap();
    assert_eq!(vercel.serving(), ["dpl_old", "dpl_old"]);
    let writes = app.alias_writes().await;
    let to = |d: &str| writes.iter().filter(|(_, b)| b["alias"] == d).count();
    assert_eq!(
        to(DOMAINS[0]),
        1,
        "the domain that moved is not written again"
    );
    assert_eq!(
        to(DOMAINS[1]),
        6,
        "four client tries, then the step's retry (one fail, one success)"
    );
    let run = &app.store.list_runs(1).await.unwrap()[0];
    let d = app.store.run_detail(&run.id).await.unwrap();
    let output = d.output_of(StepName::Rollback).unwrap();
    assert_eq!(output["moved_in_attempt"][DOMAINS[0]], 1);
    assert_eq!(output["moved_in_attempt"][DOMAINS[1]], 2);
    assert!(!vercel.writes_fail.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_failed_rollback_records_which_domains_moved_and_which_did_not() {
    let Some(app) = spawn_app_with(Db::Sqlite, |s| {
        s.engine.rollback_deadline = Duration::from_secs(2);
    })
    .await
    else {
        return;
    };
    let (vercel, now) = serving_new_over_old(&app).await;
    // The second domain never takes the write: production is half moved.
    vercel.fail_writes_for(DOMAINS[1], 10_000);
    let resp = app
        .post_sentry("metric_alert", &compact(&crash_alert("fl-2", now - MIN)))
        .await;
    assert_eq!(resp.status(), 202);
    app.engine.run_until_idle().await.unwrap();
    assert_eq!(vercel.serving(), ["dpl_old", "dpl_new"]);
    let run = &app.store.list_runs(1).await.unwrap()[0];
    let d = app.store.run_detail(&run.id).await.unwrap();
    let step = d.step(StepName::Rollback).unwrap();
    assert_eq!(step.status, StepStatus::Failed);
    let output = step
        .output
        .as_ref()
        .expect("a failed rollback says what moved");
    assert_eq!(output["moved_in_attempt"][DOMAINS[0]], 1, "{output}");
    assert_eq!(
        output["not_moved"],
        serde_json::json!([DOMAINS[1]]),
        "{output}"
    );
}

/// The seeded history on a stateful Vercel fake serving `dpl_new`, with
/// `dpl_old` the known-good target; and now.
async fn serving_new_over_old(
    app: &TestApp,
) -> (
    std::sync::Arc<crate::helpers::vercel_fake::VercelState>,
    i64,
) {
    app.seed_history().await;
    let now = now_ms();
    let vercel = app
        .stateful_vercel(
            "dpl_new",
            &[
                ("dpl_old", "9be1c07", now - 180 * MIN),
                ("dpl_new", "3f2c1a9", now - 10 * MIN),
            ],
        )
        .await;
    (vercel, now)
}

/// A fleet of services on the simulator, every provider answering in
/// `latency_ms`, served by one instance on a fresh SQLite ledger.
struct FleetApp {
    fleet: Fleet,
    sim: backstop::sim::Running,
    store: backstop::ledger::Store,
    /// Each instance's webhook URL.
    urls: Vec<String>,
    _db: TestDatabase,
}

impl FleetApp {
    async fn start(fleet: Fleet, latency_ms: u64, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        Self::start_on(Db::Sqlite, 1, fleet, latency_ms, tweak).await
    }

    /// `instances` instances of Backstop on one ledger on `db`.
    async fn start_on(
        db: Db,
        instances: usize,
        fleet: Fleet,
        latency_ms: u64,
        tweak: impl FnOnce(&mut Config),
    ) -> Option<Self> {
        let db = TestDatabase::new(db).await?;
        let sim = fleet
            .world(&DEMO)
            .start(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        for p in [Provider::Vercel, Provider::Pagerduty, Provider::Slack] {
            let slow = Faults {
                latency_ms,
                ..Faults::default()
            };
            sim.sim.set_faults(p, slow);
        }
        let mut config = Config::new(
            DEMO,
            Bases::of(&sim),
            &db.url,
            SocketAddr::from(([127, 0, 0, 1], 0)),
        );
        config.more = fleet.services_toml();
        config.engine = "poll_interval = \"200ms\"".into();
        tweak(&mut config);
        let settings = config.settings().unwrap();
        let mut urls = Vec::new();
        let mut store = None;
        for _ in 0..instances {
            let app = Application::build(settings.clone()).await.unwrap();
            urls.push(format!("http://127.0.0.1:{}/webhooks/sentry", app.port()));
            store.get_or_insert_with(|| app.engine().store().clone());
            tokio::spawn(app.run_until(std::future::pending()));
        }
        let store = store?;
        fleet.seed(&store, Duration::from_secs(1800)).await.unwrap();
        Some(Self {
            fleet,
            sim,
            store,
            urls,
            _db: db,
        })
    }

    /// Every service's alert at once, then waits (bounded) for every run.
    async fn fire_all(&self) {
        self.send_all().await;
        self.until_finished().await;
    }

    /// Every service's alert at once, to every instance (as Sentry
    /// retrying to another replica would). Each alert is stored once: one
    /// `202`, the rest duplicates.
    async fn send_all(&self) {
        let http = reqwest::Client::new();
        let sends = (0..self.fleet.services).flat_map(|i| {
            let body = CrashAlert::critical(
                &Fleet::sentry_project(i),
                &format!("f{i}"),
                now_ms() - 30_000,
            )
            .body();
            let http = http.clone();
            self.urls.iter().map(move |url| {
                let (http, url, body) = (http.clone(), url.clone(), body.clone());
                async move {
                    let status =
                        sender::deliver(&http, &url, DEMO.sentry_secret, "metric_alert", &body)
                            .await
                            .unwrap()
                            .0;
                    (i, status)
                }
            })
        });
        let statuses = futures_util::future::join_all(sends).await;
        for i in 0..self.fleet.services {
            let of: Vec<u16> = statuses
                .iter()
                .filter(|(s, _)| *s == i)
                .map(|(_, st)| *st)
                .collect();
            assert_eq!(
                of.iter().filter(|st| **st == 202).count(),
                1,
                "service {i}: one delivery stored, the rest duplicates: {of:?}"
            );
            assert!(of.iter().all(|st| *st == 202 || *st == 200), "{of:?}");
        }
    }

    /// Waits (bounded) until no run is left unfinished.
    async fn until_finished(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while self.store.count_unfinished_runs().await.unwrap() > 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the fleet's runs did not finish"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Twenty services at once against a Vercel that rate-limits a fifth of
/// its answers, with `vercel.max_in_flight = 4`: the process never has more
/// than four Vercel requests out, every 429 is waited out, and every
/// service ends verified on its known-good deployment, paged once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_caps_and_rate_limits_hold_under_a_fleet_incident() {
    let fleet = Fleet {
        services: 20,
        domains: 3,
    };
    let Some(f) = FleetApp::start(fleet, 20, |c| {
        *c = c.clone().with("vercel", "max_in_flight = 4");
        c.engine.push_str("\nrollback_deadline = \"60s\"");
    })
    .await
    else {
        return;
    };
    let limited = Faults {
        latency_ms: 20,
        rate_limit_rate: 0.2,
        ..Faults::default()
    };
    f.sim.sim.set_faults(Provider::Vercel, limited);
    f.fire_all().await;
    {
        let w = f.sim.sim.world();
        let max = w.max_in_flight.get(&Provider::Vercel).copied().unwrap_or(0);
        assert!(
            (1..=4).contains(&max),
            "at most 4 Vercel requests at once, saw {max}"
        );
        assert!(refused(&w) > 0, "Vercel rate-limited some requests");
        assert_every_service_rolled_back(&w, &f.fleet);
        assert_eq!(w.incidents.len(), f.fleet.services, "one page per service");
    }
    let runs = f.store.list_runs(100).await.unwrap();
    assert_eq!(runs.len(), f.fleet.services);
    assert!(
        runs.iter()
            .all(|r| r.status == backstop::ledger::RunStatus::Done),
        "no run failed: {:?}",
        runs.iter()
            .map(|r| (&r.service, r.status))
            .collect::<Vec<_>>()
    );
}

/// Three instances on one Postgres, ten services' alerts each delivered to
/// all three: every service is rolled back exactly once (one write per
/// domain), paged once and announced once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_roll_a_fleet_back_once_per_service() {
    let fleet = Fleet {
        services: 10,
        domains: 3,
    };
    let Some(f) = FleetApp::start_on(Db::Postgres, 3, fleet, 20, |_| {}).await else {
        return;
    };
    f.fire_all().await;
    let w = f.sim.sim.world();
    assert_eq!(
        w.alias_writes.len(),
        f.fleet.services * f.fleet.domains,
        "one write per domain: no service rolled back twice"
    );
    assert_every_service_rolled_back(&w, &f.fleet);
    assert_eq!(w.incidents.len(), f.fleet.services);
    assert!(
        w.incidents.values().all(|i| i.events == 1),
        "each paged once"
    );
    let cards = w.messages.iter().filter(|m| m.thread_ts.is_none()).count();
    assert_eq!(cards, f.fleet.services, "one card per service");
}

/// Vercel publishes a budget of alias creations per ten minutes per team
/// (120). Five services of three domains against a budget of nine, with
/// `engine.rate_limit_wait = 0s`: three services are moved whole, the other
/// two are not touched at all (not one domain of theirs moved, nothing
/// sent into the spent window), and they are paged at once "rollback
/// failed", saying until when Vercel's window is spent, instead of knocking
/// until their deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_vercels_alias_budget_services_move_whole_or_not_at_all_and_the_rest_are_paged() {
    // No hold past the deadline: what does not fit fails, and says why.
    let Some(f) = budget_fleet("rate_limit_wait = \"0s\"", 600_000).await else {
        return;
    };
    f.fire_all().await;
    let w = f.sim.sim.world();
    let (mut moved, mut untouched) = (Vec::new(), Vec::new());
    for i in 0..f.fleet.services {
        let [good, live] = Fleet::history(i, 0);
        let serving: Vec<&String> = f
            .fleet
            .domains_of(i)
            .iter()
            .map(|d| &w.aliases[d])
            .collect();
        if serving.iter().all(|s| **s == good.0) {
            moved.push(i);
        } else if serving.iter().all(|s| **s == live.0) {
            untouched.push(i);
        } else {
            panic!("service {i} is half moved: {serving:?}");
        }
    }
    assert_eq!(moved.len(), 3, "the budget moves three services whole");
    assert_eq!(refused(&w), 0, "nothing was sent into the spent window");
    assert_eq!(w.incidents.len(), f.fleet.services, "every service paged");
    for i in untouched {
        let incident = w
            .incidents
            .values()
            .find(|inc| inc.key.contains(&Fleet::name(i)))
            .expect("paged");
        let s = &incident.summary;
        assert!(
            s.contains("rollback failed — manual action needed")
                && s.contains("alias creation rate limit (9 a window) is spent until")
                && s.contains("asked to wait"),
            "{s}"
        );
    }
}

/// The same budget in a window of three seconds, with a rollback deadline
/// that outlasts it: the services that did not fit wait for the window to
/// reset and are then rolled back, whole; Vercel never answers 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_past_the_alias_budget_roll_back_when_the_window_resets_within_their_deadline() {
    let Some(f) = budget_fleet("rollback_deadline = \"30s\"", 3_000).await else {
        return;
    };
    f.fire_all().await;
    let w = f.sim.sim.world();
    assert_every_service_rolled_back(&w, &f.fleet);
    assert_eq!(
        w.alias_writes.len(),
        f.fleet.services * f.fleet.domains,
        "one write per domain"
    );
    assert_eq!(refused(&w), 0, "Vercel never had to refuse a call");
    assert_eq!(w.incidents.len(), f.fleet.services);
}

/// The same budget in a window of six seconds, past a rollback deadline
/// of two: the services that do not fit are *held*. Their on-call is paged
/// at once, under a key of its own, that the rollback waits for Vercel's
/// window and until when; when it resets they are rolled back, whole, paged
/// as usual, and the held page is resolved. Vercel never answers 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_past_the_alias_budget_are_held_paged_at_once_and_rolled_back_when_it_resets() {
    let Some(f) = held_fleet().await else {
        return;
    };
    f.fire_all().await;
    {
        let w = f.sim.sim.world();
        assert_every_service_rolled_back(&w, &f.fleet);
        assert_eq!(refused(&w), 0, "Vercel never had to refuse a call");
        let held: Vec<&backstop::sim::Incident> = w
            .incidents
            .values()
            .filter(|i| i.key.ends_with("/held"))
            .collect();
        assert_eq!(held.len(), 2, "the two services that did not fit were held");
        for incident in held {
            let svc = (0..f.fleet.services)
                .map(Fleet::name)
                .find(|n| incident.key.contains(n.as_str()))
                .unwrap();
            assert!(
                incident.summary.contains("rollback held until")
                    && incident
                        .summary
                        .contains("alias creation rate limit (9 a window) is spent")
                    && incident.summary.contains(&format!("backstop pause {svc}")),
                "{}",
                incident.summary
            );
            let first_write = w
                .alias_writes
                .iter()
                .filter(|a| a.domain.contains(svc.as_str()))
                .map(|a| a.at_us)
                .min()
                .unwrap();
            assert!(
                incident.first_event_at_us < first_write,
                "{svc}: paged that it was held before it was rolled back"
            );
            assert_eq!(
                incident.status, "resolved",
                "resolved once the held rollback went ahead"
            );
        }
        let rolled_back = w
            .incidents
            .values()
            .filter(|i| !i.key.ends_with("/held"))
            .count();
        assert_eq!(
            rolled_back, f.fleet.services,
            "every service paged as usual too"
        );
    }
    let runs = f.store.list_runs(10).await.unwrap();
    let mut noted = 0;
    for run in &runs {
        assert_eq!(run.status, backstop::ledger::RunStatus::Done);
        let notes = f.store.notes(&run.id).await.unwrap();
        noted += notes.iter().filter(|n| n.kind == "rollback-held").count();
    }
    assert_eq!(noted, 2, "runs show says which were held, and until when");
}

/// A person pauses a held service while it waits: it is not rolled back
/// when the window resets; its rollback ends failed, saying who held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_paused_while_its_rollback_is_held_is_not_rolled_back() {
    let Some(f) = held_fleet().await else {
        return;
    };
    f.send_all().await;
    // The first service paged as held is paused by its on-call.
    let held = until_held(&f.sim.sim).await;
    let i = (0..f.fleet.services)
        .find(|i| held.contains(&format!("/{}/", Fleet::name(*i))))
        .unwrap();
    let name = Fleet::name(i);
    f.store
        .pause_by(&name, Some("fixing it by hand"), "<@U0ONCALL>")
        .await
        .unwrap();
    f.until_finished().await;
    {
        let w = f.sim.sim.world();
        for d in f.fleet.domains_of(i) {
            assert_eq!(
                w.aliases[&d],
                Fleet::history(i, 0)[1].0,
                "{d} was left alone"
            );
        }
    }
    let runs = f.store.list_runs(10).await.unwrap();
    let run = runs
        .iter()
        .find(|r| r.service.as_deref() == Some(name.as_str()))
        .unwrap();
    assert_eq!(run.status, backstop::ledger::RunStatus::Failed);
    let detail = f.store.run_detail(&run.id).await.unwrap();
    let error = detail
        .step(backstop::ledger::StepName::Rollback)
        .unwrap()
        .error
        .clone()
        .unwrap();
    assert!(
        error
            .message
            .contains("paused during the rollback's retries by <@U0ONCALL> (fixing it by hand)"),
        "{}",
        error.message
    );
}

/// Five services of three domains, a budget of nine alias creations per
/// six seconds, a rollback deadline of two, and held rollbacks allowed
/// 30 s past it.
async fn held_fleet() -> Option<FleetApp> {
    budget_fleet(
        "rollback_deadline = \"2s\"\nrate_limit_wait = \"30s\"",
        6_000,
    )
    .await
}

/// Five services of three domains against a budget of nine alias
/// creations per `window_ms`, with these `[engine]` lines.
async fn budget_fleet(engine: &str, window_ms: i64) -> Option<FleetApp> {
    let fleet = Fleet {
        services: 5,
        domains: 3,
    };
    let f = FleetApp::start(fleet, 20, |c| {
        c.engine.push('\n');
        c.engine.push_str(engine);
    })
    .await?;
    f.sim
        .sim
        .world()
        .vercel_limits
        .insert("alias creation".into(), (9, window_ms));
    Some(f)
}

/// Every domain of every service serves its known-good deployment.
fn assert_every_service_rolled_back(w: &backstop::sim::World, fleet: &Fleet) {
    for i in 0..fleet.services {
        for d in fleet.domains_of(i) {
            assert_eq!(
                w.aliases[&d],
                Fleet::history(i, 0)[0].0,
                "{d} is back on the known-good deployment"
            );
        }
    }
}

/// Vercel calls answered 429.
fn refused(w: &backstop::sim::World) -> usize {
    w.served
        .iter()
        .filter(|s| s.provider == Provider::Vercel && s.status == 429)
        .count()
}

/// After a hold the retry gets a whole rollback deadline again, not the few
/// seconds a step past its deadline is otherwise left: here Vercel has
/// grown slow by the time the window resets, and the retry's three round
/// trips take longer than those few seconds but less than the deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_after_a_hold_gets_a_whole_deadline_again() {
    let fleet = Fleet {
        services: 1,
        domains: 3,
    };
    let Some(f) = FleetApp::start(fleet, 20, |c| {
        c.engine
            .push_str("\nrollback_deadline = \"9s\"\nrate_limit_wait = \"60s\"");
    })
    .await
    else {
        return;
    };
    // The budget is spent for the next ten seconds.
    f.sim
        .sim
        .world()
        .vercel_limits
        .insert("alias creation".into(), (0, 10_000));
    f.send_all().await;
    until_held(&f.sim.sim).await;
    // Held. By the reset there is budget again, and Vercel is slow.
    {
        let mut w = f.sim.sim.world();
        w.vercel_limits
            .insert("alias creation".into(), (120, 600_000));
        w.vercel_windows.clear();
    }
    let slow = Faults {
        latency_ms: 2_300,
        ..Faults::default()
    };
    f.sim.sim.set_faults(Provider::Vercel, slow);
    f.until_finished().await;
    {
        let w = f.sim.sim.world();
        assert_every_service_rolled_back(&w, &f.fleet);
        let held = w
            .incidents
            .values()
            .find(|i| i.key.ends_with("/held"))
            .unwrap();
        assert_eq!(held.status, "resolved");
    }
    let run = &f.store.list_runs(1).await.unwrap()[0];
    let detail = f.store.run_detail(&run.id).await.unwrap();
    let rollback = detail.step(backstop::ledger::StepName::Rollback).unwrap();
    assert_eq!(
        rollback.status,
        StepStatus::Succeeded,
        "verified within the renewed deadline: {:?}",
        rollback.error
    );
    assert_eq!(run.status, backstop::ledger::RunStatus::Done);
}
