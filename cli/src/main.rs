//! `tessera`: the user's command line to the farm. Each command lives in its own module; this
//! file only parses the command line, runs the command and turns its error into a message and
//! an exit code (see [`error`]).

mod args;
mod error;
mod farm;
mod fetch;
mod info;
mod output;
mod progress;
mod setting_flags;
mod submit;
mod token;
mod up;
mod upscale;
mod watch;

use std::process::ExitCode;

use clap::Parser;
use tracing::Instrument;

use crate::args::{Cli, Command};
use crate::farm::{Address, Farm};
use tessera_proto::access::Access;

#[tokio::main]
async fn main() -> ExitCode {
    end_quietly_when_stdout_closes();
    let cli = Cli::parse();
    let json = cli.json;
    let telemetry = match tessera_telemetry::init("tessera-cli", cli.log_format) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // One span per command: the parent of every request it makes, so its trace holds the
    // coordinator's work for it.
    let span = tracing::info_span!("tessera", command = cli.command.name());
    let result = run(cli).instrument(span).await;
    // Exports the command's spans before the process ends.
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = error::exit_code(&e);
            report(&e, code, json);
            ExitCode::from(code)
        }
    }
}

/// Exit status of a command whose reader went away, as a shell reports one ended by SIGPIPE.
const EXIT_STDOUT_CLOSED: i32 = 128 + libc::SIGPIPE;

/// A reader that stops early (`tessera jobs | head`) ends this process quietly, the way it ends
/// `ls` or `grep`, instead of with a panic message for the print that found the pipe closed.
/// SIGPIPE itself stays ignored: its default action would also kill the command, without a
/// word, whenever a peer hangs up on a socket write (a coordinator dying under `tessera watch`).
fn end_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout")
            && message.contains(&std::io::Error::from_raw_os_error(libc::EPIPE).to_string())
        {
            std::process::exit(EXIT_STDOUT_CLOSED);
        }
        default(info);
    }));
}

/// Prints the error that ends the command on standard error: a line of text, or with `--json`
/// a JSON object (`error`, `exit_code`), so a script reading JSON can read failures too.
fn report(error: &anyhow::Error, code: u8, json: bool) {
    let message = format!("{error:#}");
    if json {
        eprintln!(
            "{}",
            serde_json::json!({"error": message, "exit_code": code})
        );
    } else {
        eprintln!("error: {}", output::shown(&message));
    }
}

/// Runs one command against the coordinator at `cli.coordinator`.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let access = Access::load(
        cli.token.clone(),
        cli.token_file.as_deref(),
        cli.tls_ca.clone(),
    )?;
    let address = Address {
        url: cli.coordinator.clone(),
        access,
    };
    let url = cli.coordinator.as_str();
    let json = cli.json;
    match &cli.command {
        Command::Up(args) => up::up(args, json).await?,
        Command::Token(args) => token::new_token(args, json)?,
        Command::Ping => {
            let version = Farm::connect(&address).await?.ping().await?;
            if json {
                output::print_json(&serde_json::json!({"coordinator": url, "version": version}));
            } else {
                println!("coordinator {url} answers, version {version}");
            }
        }
        Command::Submit(args) => {
            // Read the file before connecting, so a typo is reported as such.
            let spec = submit::spec(&args.prompts, &args.render, &args.job)?;
            let mut farm = Farm::connect(&address).await?;
            if args.dry_run {
                submit::dry_run(&mut farm, spec, json).await?;
            } else {
                let job = submit::submit(&mut farm, spec, json).await?;
                if args.job.watch {
                    watch::watch(&address, &job, json).await?;
                }
            }
        }
        Command::Watch(job) => watch::watch(&address, &job.job, json).await?,
        Command::Status(job) => {
            info::status(&mut Farm::connect(&address).await?, &job.job, json).await?
        }
        Command::Jobs => info::jobs(&mut Farm::connect(&address).await?, json).await?,
        Command::Cancel(job) => {
            let status = Farm::connect(&address).await?.cancel(&job.job).await?;
            info::show_job(&status, json)
        }
        Command::Priority(args) => {
            let mut farm = Farm::connect(&address).await?;
            info::show_job(&farm.set_priority(&args.job, args.priority).await?, json)
        }
        Command::Pause(job) => {
            let status = Farm::connect(&address).await?.pause(&job.job).await?;
            info::show_job(&status, json)
        }
        Command::Resume(job) => {
            let status = Farm::connect(&address).await?.resume(&job.job).await?;
            info::show_job(&status, json)
        }
        Command::Workers => info::workers(&mut Farm::connect(&address).await?, json).await?,
        Command::Fetch(args) => {
            fetch::fetch(
                &mut Farm::connect(&address).await?,
                &args.job,
                &args.output,
                json,
            )
            .await?
        }
        Command::Upscale(args) => {
            let pictures = upscale::read_pictures(&args.images)?;
            let mut farm = Farm::connect(&address).await?;
            let job = upscale::submit(&mut farm, &args.model, &args.job, pictures, json).await?;
            if args.job.watch {
                // Fetch what finished even when some pictures failed, then report the failure.
                let watched = watch::watch(&address, &job, json).await;
                fetch::fetch(
                    &mut Farm::connect(&address).await?,
                    &job,
                    &args.output,
                    json,
                )
                .await?;
                watched?;
            }
        }
    }
    Ok(())
}
