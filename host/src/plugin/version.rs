//! Which `lanes:provider` versions a component may be built against: any 0.1.x up to 0.1.2
//! (text only), and any 0.2.x up to the one this host speaks. Released WIT is frozen and
//! later patch versions only add items, so an older component of a minor version links
//! against the newer host interfaces of that minor version.

use wasmtime::Engine;

use super::bindings::Generation;
use crate::model::{Capabilities, Capability};
use wasmtime::component::Component;

/// The `lanes:provider` version this host implements.
pub const HOST_WIT_VERSION: (u64, u64, u64) = (0, 2, 1);

/// The last 0.1 version, whose frozen text the host keeps loading.
pub const HOST_WIT_0_1: (u64, u64, u64) = (0, 1, 2);

/// What a component built against lanes:provider 0.1.x takes beyond text: nothing (its
/// messages are text, its request has no tools, formats, images or reasoning).
pub const CAPABILITIES_0_1: Capabilities = Capabilities::NONE;

/// What every 0.2 component takes beyond what its `info()` declares: `top_p` and `seed`,
/// which its request carries (a component whose API lacks one ignores it).
pub const CAPABILITIES_0_2: Capabilities = Capabilities::NONE.with(Capability::Sampling);

/// The most a component this host loads may declare: what is assumed for a provider no
/// component serves here, and by the CLI, which loads none.
pub const HOST_CAPABILITIES: Capabilities = Capabilities::ALL;

const PACKAGE: &str = "lanes:provider/";

fn parse(version: &str) -> Option<(u64, u64, u64)> {
    let mut parts = version.split('.');
    let v = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(v)
}

fn show((a, b, c): (u64, u64, u64)) -> String {
    format!("{a}.{b}.{c}")
}

/// Checks every `lanes:provider` import and export of `component`, and says which
/// generation it was built against. `Ok(None)` when it has none: the world check that
/// follows reports the missing export.
pub fn check(component: &Component, engine: &Engine) -> Result<Option<Generation>, String> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(n, _)| n)
        .chain(ty.exports(engine).map(|(n, _)| n));
    let host = HOST_WIT_VERSION;
    let speaks = format!(
        "this host speaks lanes:provider@0.1.x (up to {}) and @0.2.x (up to {})",
        show(HOST_WIT_0_1),
        show(host)
    );
    let mut found: Option<(Generation, (u64, u64, u64))> = None;
    for name in names {
        let Some(rest) = name.strip_prefix(PACKAGE) else {
            continue;
        };
        let Some((interface, version)) = rest.split_once('@') else {
            return Err(format!(
                "`{name}` has no version; build against lanes:provider@{}",
                show(host)
            ));
        };
        let Some(v) = parse(version) else {
            return Err(format!("`{name}` has an unsupported version `{version}`"));
        };
        let (generation, newest) = match (v.0, v.1) {
            (0, 1) => (Generation::V01, HOST_WIT_0_1),
            (0, 2) => (Generation::V02, host),
            _ => {
                return Err(format!(
                    "incompatible WIT version: built against lanes:provider@{} ({interface}); \
                     {speaks}",
                    show(v)
                ));
            }
        };
        if v.2 > newest.2 {
            return Err(format!(
                "built against lanes:provider@{}, newer than this host's {}; upgrade lanes",
                show(v),
                show(newest)
            ));
        }
        match found {
            Some((g, other)) if g != generation => {
                return Err(format!(
                    "mixes lanes:provider@{} and @{} ({interface}); build against one version",
                    show(other),
                    show(v)
                ));
            }
            _ => found = Some((generation, v)),
        }
    }
    Ok(found.map(|(g, _)| g))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse("0.1.0"), Some((0, 1, 0)));
        assert_eq!(parse("0.1"), None);
        assert_eq!(parse("0.1.0-rc1"), None);
    }
}
