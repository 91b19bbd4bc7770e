//! The attack suite: one file per road from a local user, an operator or a
//! network peer to more than it may have. Each test fails on a server
//! without the guard it names, and each attack is judged by its effect.

mod agent_reports;
mod audit;
mod connections;
mod env_names;
mod paths;
mod postgres;
mod user_data;
