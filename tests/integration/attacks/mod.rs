//! Attacks on the service, each shown to fail by its effect.

mod user_data;
