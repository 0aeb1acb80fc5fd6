//! `lanes plugins new` embeds the templates, the guest SDK's sources and the WIT
//! (`include_dir!`, which cannot tell cargo what it read): rebuild when they change.

fn main() {
    for path in [
        "../plugins/templates",
        "../plugins/sdk/src",
        "../wit/provider.wit",
    ] {
        println!("cargo:rerun-if-changed={path}");
    }
}
