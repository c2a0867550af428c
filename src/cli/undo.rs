//! `backstop undo <run>`: the card's Undo button from a shell. Production
//! goes back on the deployment the run rolled back from, that deployment is
//! marked `overridden`, and the service is held. Asks for confirmation.

use std::io::{BufRead, Write};
use std::sync::Arc;

use anyhow::bail;

use crate::app;
use crate::config::Settings;
use crate::engine::{Asker, Engine};
use crate::ingest::slack::ClickAction;
use crate::ledger::{RunId, StepName};

/// Runs `backstop undo`.
pub async fn run(
    settings: Settings,
    run: &RunId,
    yes: bool,
    out: &mut dyn Write,
    input: &mut dyn BufRead,
) -> anyhow::Result<()> {
    let store = app::open_store(&settings).await?;
    let detail = store.run_detail(run).await?;
    let (Some(service), Some(from), Some(to)) = (
        detail.run.service.clone(),
        detail.run.rollback_from.clone(),
        detail.run.rollback_to.clone(),
    ) else {
        bail!("run {run} made no rollback: there is nothing to undo");
    };
    if !yes {
        write!(
            out,
            "Put {service}'s production back on {from}, replacing {to}, and hold {service}? Type `yes` to proceed: "
        )?;
        out.flush()?;
        let mut answer = String::new();
        input.read_line(&mut answer)?;
        if answer.trim() != "yes" {
            writeln!(out, "not confirmed: nothing was changed")?;
            return Ok(());
        }
    }
    let providers = app::providers(&settings)?;
    let engine = Engine::new(store.clone(), Arc::new(settings), providers)?;
    if let Some(refused) = engine.ask(run, ClickAction::Undo, &Asker::cli()).await? {
        bail!("{refused}");
    }
    engine.run_one(run).await?;
    let detail = store.run_detail(run).await?;
    match detail.step(StepName::Undo) {
        Some(step) => match (&step.output, &step.error) {
            (Some(o), _) if o.get("refused").is_some() => {
                bail!("undo refused: {}", o["refused"].as_str().unwrap_or("?"))
            }
            (Some(_), _) => writeln!(
                out,
                "production is back on {from}; {service} is held until `backstop resume {service}`"
            )?,
            (None, Some(e)) => bail!("undo failed: {}", e.message),
            (None, None) => bail!("undo did not finish; see `backstop runs show {run}`"),
        },
        None => bail!("undo was not recorded; see `backstop runs show {run}`"),
    }
    Ok(())
}
