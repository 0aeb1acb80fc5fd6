//! Which `lanes:provider` versions a component may be built against: any 0.1.x up to the one
//! this host speaks. Released WIT is frozen and later 0.1.x versions only add items, so an
//! older 0.1.x component links against the newer host interfaces.

use wasmtime::Engine;

use crate::model::Capabilities;
use wasmtime::component::Component;

/// The `lanes:provider` version this host implements.
pub const HOST_WIT_VERSION: (u64, u64, u64) = (0, 1, 2);

/// What a component built against lanes:provider 0.1.x takes beyond text: nothing (its
/// messages are text, its request has no tools, formats, images or reasoning). WIT 0.2's
/// `info()` declares its own.
pub const CAPABILITIES_0_1: Capabilities = Capabilities::NONE;

/// The most a component this host loads may declare: what is assumed for a provider no
/// component serves here, and by the CLI, which loads none.
pub const HOST_CAPABILITIES: Capabilities = CAPABILITIES_0_1;

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

/// Checks every `lanes:provider` import and export of `component`. `Ok` when none or all
/// are compatible: the world check that follows reports a missing export.
pub fn check(component: &Component, engine: &Engine) -> Result<(), String> {
    let ty = component.component_type();
    let names = ty
        .imports(engine)
        .map(|(n, _)| n)
        .chain(ty.exports(engine).map(|(n, _)| n));
    let host = HOST_WIT_VERSION;
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
        if (v.0, v.1) != (host.0, host.1) {
            return Err(format!(
                "incompatible WIT version: built against lanes:provider@{} ({interface}); \
                 this host speaks lanes:provider@{}.{}.x",
                show(v),
                host.0,
                host.1
            ));
        }
        if v.2 > host.2 {
            return Err(format!(
                "built against lanes:provider@{}, newer than this host's {}; upgrade lanes",
                show(v),
                show(host)
            ));
        }
    }
    Ok(())
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
