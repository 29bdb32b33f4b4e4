//! `empath-smtpd`: the ESMTP server of Empath. It accepts mail on the
//! listeners that the master passes down, and streams each message to
//! cleanup, answering 250 only once cleanup has made it durable.
//!
//! - [`parser`]: command lines to [`parser::Command`]s (pure);
//! - [`params`]: the ESMTP parameters of MAIL and RCPT, typed (pure);
//! - [`relay`]: who may send to which domains (pure);
//! - [`auth`]: AUTH users, passwords and the failure limit;
//! - [`tls`]: the STARTTLS certificates, reloadable;
//! - [`limits`]: connection limits, total and per client;
//! - [`anvil`]: the same limits and the AUTH failures, counted by
//!   empath-anvil for every smtpd process;
//! - [`data_decoder`]: the DATA stream, dot-unstuffed (pure);
//! - [`session`]: the SMTP state machine (pure);
//! - [`reply`]: every reply we send;
//! - [`lines`]: bounded command-line reading;
//! - [`connection`]: the I/O of one client, with timeouts;
//! - [`module_hooks`]: the plugin modules' calls during a session;
//! - [`mail_filters`]: the milters and authentication checks of a session;
//! - [`settings`]: per-listener settings from the config;
//! - [`listeners`]: the inherited sockets and the accept loop.

pub mod anvil;
pub mod auth;
pub mod connection;
pub mod data_decoder;
pub mod limits;
pub mod lines;
pub mod listeners;
pub mod local;
pub mod mail_filters;
pub mod module_hooks;
pub mod params;
pub mod parser;
pub mod relay;
pub mod reply;
pub mod session;
pub mod settings;
pub mod tls;
