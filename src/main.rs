//! `oncolens`: the command line, a thin shell over the library. Arguments become library
//! options in `cli::args`; each subcommand is a few lines in `cli::commands`.

mod cli;

use clap::Parser;
use cli::args::{Cli, Command, FeedbackCommand, GateCommand, ModelCommand, PacsCommand};
use cli::{admin, commands, feedback};

fn main() {
    // Progress and warnings of the library arrive through tracing: oncolens' own at info
    // (epoch lines, calibration, the server's address), other crates' at warn.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,oncolens=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(font) = &cli.font {
        oncolens::plot::prefer_font(font);
    }
    match cli.command {
        Command::Serve(a) => commands::serve(*a),
        Command::Train(a) => commands::train_model(a),
        Command::Evaluate(a) => commands::evaluate_model(a),
        Command::Calibrate(a) => commands::calibrate(a),
        Command::Quantize(a) => commands::quantize_model(a),
        Command::Export(a) => commands::export_model(a),
        Command::ImportWeights(a) => commands::import_weights(a),
        Command::Predict(a) => commands::predict(a),
        Command::Audit(a) => commands::audit_data(a),
        Command::Explain(a) => commands::explain(a),
        Command::Model { command } => match command {
            ModelCommand::Summary(a) => commands::model_summary(a),
            ModelCommand::List(a) => feedback::list(a),
            ModelCommand::Register(a) => feedback::register(a),
            ModelCommand::Promote(a) => feedback::promote(a),
            ModelCommand::Rollback(a) => feedback::rollback(a),
        },
        Command::Feedback {
            command: FeedbackCommand::Export(a),
        } => feedback::export(a),
        Command::Finetune(a) => feedback::finetune(a),
        Command::Gate { command } => match command {
            GateCommand::Evaluate(a) => commands::gate_evaluate(a),
            GateCommand::Train(a) => commands::gate_train(a),
            GateCommand::CrossValidate(a) => commands::gate_cross_validate(a),
        },
        Command::Deidentify(a) => commands::deidentify(a),
        Command::Pacs {
            command: PacsCommand::Watch(a),
        } => commands::pacs_watch(a),
        Command::User { command } => admin::user(command),
        Command::Token { command } => admin::token(command),
        Command::AuditLog { command } => admin::audit_log(command),
        Command::Key { command } => admin::key(command),
        Command::Purge(a) => admin::purge(a),
    }
}
