//! `hyperllamad` entry point: parse flags, load configuration, do the privileged set-up, then run
//! the async daemon. Exit codes are documented in `--help`.

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use hyperllamad::cli::{Cli, Internal};
use hyperllamad::config::{self, Config};
use hyperllamad::runner;
use hyperllamad::{daemon, logging};

const EXIT_RUNTIME: u8 = 1;
const EXIT_CONFIG: u8 = 3;
const EXIT_SETUP: u8 = 4;

fn main() -> ExitCode {
    let cli = Arc::new(Cli::parse());
    if let Some(Internal::Runner(args)) = &cli.command {
        return runner_main(args.clone());
    }
    let config_file = cli.config.clone().unwrap_or_else(|| config::default_config_file(cli.mode_hint()));
    let mut config = match Config::load(&config_file, cli.config.is_some()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("hyperllamad: configuration error: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    cli.apply(&mut config);
    if let Err(error) = config.validate() {
        eprintln!("hyperllamad: configuration error: {error}");
        return ExitCode::from(EXIT_CONFIG);
    }
    if cli.print_config {
        print!(
            "# effective configuration (files: {} + conf.d/*.toml, then flags)\n{}",
            config_file.display(),
            config.to_effective_toml()
        );
        return ExitCode::SUCCESS;
    }
    logging::init(config.daemon.log_format, &config.daemon.log_level);
    let prepared = match daemon::prepare(config, config_file) {
        Ok(prepared) => prepared,
        Err(error) => {
            tracing::error!(%error, "set-up failed");
            eprintln!("hyperllamad: {error}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    // Threads start only now, after privileges were dropped (uids and capabilities are per thread).
    let runtime =
        match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("hyperllamad").build() {
            Ok(runtime) => runtime,
            Err(error) => {
                eprintln!("hyperllamad: cannot start the async runtime: {error}");
                return ExitCode::from(EXIT_RUNTIME);
            }
        };
    match runtime.block_on(daemon::run(prepared, cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "hyperllamad failed");
            eprintln!("hyperllamad: {error}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// The runner process: one model, served on a private socket until the daemon stops it.
fn runner_main(args: runner::service::RunnerArgs) -> ExitCode {
    logging::init_runner();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("runner: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    match runtime.block_on(runner::service::run(args, runner::load_engine)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("runner: {error}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}
