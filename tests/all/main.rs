//! The one integration test binary: a module per area. Every test uses real components built
//! from `plugins/` and its own SQLite file.

mod adapters;
mod api;
mod bad_input;
mod cache;
mod capacity;
mod cli;
mod clients;
mod clients_ts;
mod content;
mod costs;
mod crash;
mod dashboard;
mod events;
mod fleet;
mod front_door;
mod isolation;
mod kit;
mod limits;
mod live_limits;
mod mock;
mod operating;
mod plugins;
mod policies;
mod priority;
mod properties;
mod providers;
mod replay;
mod retries;
mod routes;
mod sandbox;
mod store;
mod streams;
mod support;
mod tenants;
