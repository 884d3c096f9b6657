//! `hyperctl`: Ollama's commands and flags, plus HyperLlama administration, over the gRPC control
//! socket. Errors are one line; exit codes are listed in `--help`.

mod cli;
mod client;
mod commands;
mod error;
mod format;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::{admin, create, models, run, serve, status};
use crate::error::Result;

async fn execute(cli: &Cli) -> Result<()> {
    let print = |text: String| print!("{text}");
    match &cli.command {
        Command::Serve(args) => return serve::serve(&args.args),
        Command::Push(args) => return models::push(args),
        _ => {}
    }
    let mut client = client::connect(&cli.host).await?;
    match &cli.command {
        Command::Serve(_) | Command::Push(_) => unreachable!("handled above"),
        Command::Status { json } => print(status::status(&mut client, *json).await?),
        Command::Gpus => print(status::gpus(&mut client).await?),
        Command::List => print(models::list(&mut client).await?),
        Command::Ps => print(models::ps(&mut client).await?),
        Command::Show(args) => print(models::show(&mut client, args).await?),
        Command::Pull(args) => models::pull(&mut client, args).await?,
        Command::Cp { source, destination } => print(models::copy(&mut client, source, destination).await?),
        Command::Rm { models: names } => print(models::remove(&mut client, names).await?),
        Command::Stop { model } => models::stop(&mut client, model).await?,
        Command::Create(args) => create::create(&mut client, args).await?,
        Command::Run(args) => run::run(&mut client, args).await?,
        Command::Token(command) => print(admin::token(&mut client, command).await?),
        Command::Quota(command) => print(admin::quota(&mut client, command).await?),
        Command::Users => print(admin::users(&mut client).await?),
        Command::Endpoint { remove } => print(admin::endpoint(&mut client, *remove).await?),
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start: {error}");
            return ExitCode::from(error::exit::FAILURE);
        }
    };
    match runtime.block_on(execute(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("Error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn negative_keepalive_is_a_value_not_a_flag() {
        let cli = Cli::try_parse_from(["hyperctl", "run", "m", "--keepalive", "-1"]).unwrap();
        let Command::Run(args) = cli.command else { panic!("not run") };
        assert_eq!(args.keepalive.as_deref(), Some("-1"));
    }
}
