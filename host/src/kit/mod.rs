//! The plugin author kit: `lanes plugins new` writes a provider project from a template
//! (`templates.rs`), and `lanes plugins test` runs a component against a scripted server
//! (`conformance.rs`, `server.rs`).

pub mod conformance;
pub mod server;
pub mod templates;
