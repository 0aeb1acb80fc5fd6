//! Files the crate embeds through macros that cannot tell cargo what they read: the
//! templates, the guest SDK's sources and the WIT (`include_dir!`, for `lanes plugins new`),
//! and the migrations (`sqlx::migrate!`). Rebuild when they change.

fn main() {
    for path in [
        "../plugins/templates",
        "../plugins/sdk/src",
        "../wit/provider.wit",
        "../migrations",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
