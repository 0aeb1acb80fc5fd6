//! Which limit a provider runs under. The most specific source wins: a run-time limit
//! (`lanes limits set`), then config (`[providers.NAME] limit`), then the component's
//! default, then `fallback_limit` for a provider that nothing describes.

use serde::Serialize;

/// Where an effective limit came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitSource {
    Runtime,
    Config,
    Component,
    Fallback,
}

/// Every source of one provider's limit, and the one in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LimitView {
    pub provider: String,
    /// The component's `info()` default, when a component serves the provider.
    pub default: Option<u32>,
    pub configured: Option<u32>,
    pub runtime: Option<u32>,
    /// The adaptive limit, when the provider adapts: it caps the effective one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<u32>,
    pub effective: u32,
    pub source: LimitSource,
}

impl LimitView {
    /// Resolves the effective limit from its sources.
    pub fn resolve(
        provider: impl Into<String>,
        default: Option<u32>,
        configured: Option<u32>,
        runtime: Option<u32>,
        fallback: u32,
    ) -> Self {
        let (effective, source) = runtime
            .map(|l| (l, LimitSource::Runtime))
            .or(configured.map(|l| (l, LimitSource::Config)))
            .or(default.map(|l| (l, LimitSource::Component)))
            .unwrap_or((fallback, LimitSource::Fallback));
        LimitView {
            provider: provider.into(),
            default,
            configured,
            runtime,
            adaptive: None,
            effective,
            source,
        }
    }

    /// Caps the effective limit with an adaptive one.
    pub fn with_adaptive(mut self, adaptive: Option<u32>) -> Self {
        self.adaptive = adaptive;
        if let Some(a) = adaptive {
            self.effective = self.effective.min(a.max(1));
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn most_specific_source_wins() {
        assert_eq!(
            LimitView::resolve("a", Some(2), Some(3), Some(4), 1).effective,
            4
        );
        assert_eq!(
            LimitView::resolve("a", Some(2), Some(3), None, 1).source,
            LimitSource::Config
        );
        assert_eq!(LimitView::resolve("a", Some(2), None, None, 1).effective, 2);
        let unknown = LimitView::resolve("a", None, None, None, 7);
        assert_eq!(
            (unknown.effective, unknown.source),
            (7, LimitSource::Fallback)
        );
    }
}
