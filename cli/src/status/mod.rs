//! `meshless status`: every instance of a target asked for its admin view
//! (`meshless.admin.v1.Admin`), gathered into one report.
//!
//! - [`gather`]: resolve, ask every instance at once (each with a timeout), derive the groups
//!   per producer and the ejected instances per process.
//! - [`table`]: the report as aligned tables.
//! - [`json`]: the report as one JSON object.
//!
//! With `--watch` the report is drawn again every interval, in place (the screen cleared with
//! ANSI escapes; JSON is printed one object per line instead), until Ctrl-C. The target is
//! resolved again for every report, so instances that come and go show up.

mod gather;
mod json;
mod table;

use crate::args::StatusArgs;
use crate::error::Error;
use crate::resolve;
use crate::terminal::printable;

/// Runs `meshless status`.
pub(crate) async fn run(args: StatusArgs) -> Result<(), Error> {
    if !args.watch {
        let report = report(&args).await?;
        print(&args, &report)?;
        let errors = report.errors();
        return if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::new(format!(
                "{} of {} instances did not answer: {}",
                errors.len(),
                report.instances.len(),
                errors.join("; ")
            )))
        };
    }
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let drawn = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            drawn = report(&args) => drawn,
        };
        match drawn {
            Ok(report) => {
                if !args.json {
                    // Home, then clear the screen: the report is drawn in place.
                    print!("\x1b[H\x1b[2J");
                }
                print(&args, &report)?;
                if !args.json {
                    println!(
                        "\nevery {}; Ctrl-C to stop",
                        table::duration(
                            u64::try_from(args.interval.as_millis()).unwrap_or(u64::MAX)
                        )
                    );
                }
            }
            // A target that resolves to nothing for a while is worth watching too.
            Err(error) => eprintln!("error: {}", printable(&error.to_string())),
        }
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = tokio::time::sleep(args.interval) => {}
        }
    }
}

async fn report(args: &StatusArgs) -> Result<gather::Report, Error> {
    let resolved = resolve::resolve(&args.target, args.timeout).await?;
    let report = gather::gather(
        &args.target,
        &resolved.instances,
        args.timeout,
        &args.headers,
    )
    .await;
    if report.instances.iter().all(|i| i.status.is_err()) {
        return Err(Error::new(report.errors().join("; ")));
    }
    Ok(report)
}

fn print(args: &StatusArgs, report: &gather::Report) -> Result<(), Error> {
    use std::io::Write;
    let text = if args.json {
        // One object per line while watching; indented once.
        let value = json::render(report);
        let mut text = if args.watch {
            value.to_string()
        } else {
            serde_json::to_string_pretty(&value).unwrap_or_else(|_| value.to_string())
        };
        text.push('\n');
        text
    } else {
        table::render(report)
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|error| Error::new(format!("cannot write to stdout: {error}")))
}
