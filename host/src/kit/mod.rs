//! The plugin author kit: `lanes plugins new` writes a provider project from a template
//! (`templates.rs`), and `lanes plugins test` runs a component against a scripted server
//! (`conformance.rs`, `server.rs`), with the checks of what a 0.2 component declares beyond
//! text in `features.rs`.

pub mod conformance;
pub mod features;
pub mod server;
pub mod templates;
