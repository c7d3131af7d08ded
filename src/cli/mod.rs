//! The command line: [`args`] turns flags into the library's option types, [`commands`] runs
//! each subcommand through the library and prints, [`output`] formats `predict`'s answers.

pub mod args;
pub mod commands;
pub mod output;
