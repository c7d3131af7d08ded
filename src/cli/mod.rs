//! The command line: [`args`] turns flags into the library's option types, [`commands`] runs
//! each subcommand through the library and prints, [`output`] formats `predict`'s answers,
//! [`admin`] runs the accounts, tokens, audit trail, key and retention commands, [`feedback`]
//! the feedback export, fine-tuning and the model registry.

pub mod admin;
pub mod args;
pub mod commands;
pub mod feedback;
pub mod output;
