//! The exact-match response cache's rule: which submissions may be answered from it, and
//! the key they are answered by. The cache itself lives in the queue's database
//! (`Queue::submit` looks answers up, `Queue::settle_cache` stores them).
//!
//! Only a request that may repeat is cached: one with `temperature` 0 given explicitly, or
//! submitted with `cache: true`. An unset temperature means the provider's default, which
//! samples, so it is not cached; `cache: false` never is. The key covers the normalized
//! input (its `stream` left out: a streamed answer is the same answer), the provider, the
//! resolved model (the input's, else the provider's configured one) and the tenant, so one
//! tenant is never served another's answer.

use sha2::Digest;

use crate::config::Config;
use crate::model::{CacheRequest, NewExecution};

/// How `new` uses the response cache of its provider, `asked` being the submission's
/// `cache`: `None` when the provider has no cache or the request may not repeat.
pub fn plan(config: &Config, new: &NewExecution, asked: Option<bool>) -> Option<CacheRequest> {
    let provider = config.providers.get(&new.provider)?;
    let settings = provider.response_cache.as_ref()?;
    let wanted = asked.unwrap_or(new.input.temperature == Some(0.0));
    if !wanted {
        return None;
    }
    let model = new.input.model.as_deref().or(provider.model.as_deref());
    let mut input = new.input.clone();
    input.stream = None;
    // The resolved model is its own part of the key: a request that names the provider's
    // configured model is the same request as one that leaves it to the provider.
    input.model = None;
    let normalized = serde_json::to_string(&(
        &new.provider,
        model,
        new.tenant.as_deref().unwrap_or(""),
        &input,
    ))
    .ok()?;
    Some(CacheRequest {
        key: hex::encode(sha2::Sha256::digest(normalized.as_bytes())),
        ttl_ms: settings.ttl_ms(),
    })
}

/// A stored answer as a cache hit serves it: marked `cached`, at no cost and with no
/// tokens used (the answer's first execution keeps what it used).
pub fn as_hit(output: &str) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(output).ok()?;
    let object = value.as_object_mut()?;
    object.insert("cached".into(), serde_json::Value::Bool(true));
    object.insert(
        "usage".into(),
        serde_json::json!({"input_tokens": 0, "output_tokens": 0}),
    );
    let prices = object
        .get("cost")
        .and_then(|c| c.get("prices"))
        .cloned()
        .unwrap_or(serde_json::Value::String(String::new()));
    object.insert(
        "cost".into(),
        serde_json::json!({"usd": 0.0, "prices": prices}),
    );
    serde_json::to_string(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ProviderConfig, ResponseCacheConfig};
    use crate::model::ChatInput;

    fn config() -> Config {
        let mut c = Config::default();
        c.providers.insert(
            "p".into(),
            ProviderConfig {
                model: Some("m1".into()),
                response_cache: Some(ResponseCacheConfig {
                    ttl_secs: 60,
                    max_entries: 10,
                }),
                ..ProviderConfig::default()
            },
        );
        c.providers
            .insert("plain".into(), ProviderConfig::default());
        c
    }

    fn new(provider: &str, temperature: Option<f32>, tenant: Option<&str>) -> NewExecution {
        let mut input = ChatInput::prompt("hi");
        input.temperature = temperature;
        NewExecution {
            provider: provider.into(),
            input,
            priority: 0,
            max_attempts: 1,
            route: None,
            tenant: tenant.map(str::to_string),
            cache: None,
            defer: Default::default(),
        }
    }

    /// The cache stores answers as a hit serves them, and the transaction's path serves
    /// what it reads through `as_hit` again: a second pass must change nothing.
    #[test]
    fn a_hit_is_its_own_hit() {
        let answer = r#"{"text":"hi","usage":{"input_tokens":3,"output_tokens":2},
                         "cost":{"usd":0.25,"prices":"2026-11"},"model":"m"}"#;
        let once = as_hit(answer).unwrap();
        let value: serde_json::Value = serde_json::from_str(&once).unwrap();
        assert_eq!(value["cached"], true);
        assert_eq!(value["usage"]["input_tokens"], 0);
        assert_eq!(value["cost"]["usd"], 0.0);
        assert_eq!(value["cost"]["prices"], "2026-11");
        assert_eq!(value["text"], "hi");
        assert_eq!(as_hit(&once).as_deref(), Some(once.as_str()));
        assert_eq!(as_hit("[1]"), None, "not an answer");
    }

    #[test]
    fn only_requests_that_may_repeat_are_cached() {
        let c = config();
        assert!(plan(&c, &new("p", Some(0.0), None), None).is_some());
        assert!(
            plan(&c, &new("p", None, None), None).is_none(),
            "unset temperature"
        );
        assert!(plan(&c, &new("p", Some(0.7), None), None).is_none());
        assert!(plan(&c, &new("p", Some(0.7), None), Some(true)).is_some());
        assert!(plan(&c, &new("p", Some(0.0), None), Some(false)).is_none());
        assert!(
            plan(&c, &new("plain", Some(0.0), None), Some(true)).is_none(),
            "no cache"
        );
    }

    #[test]
    fn the_key_covers_tenant_model_and_input_but_not_streaming() {
        let c = config();
        let key = |n: &NewExecution| plan(&c, n, None).unwrap().key;
        let base = new("p", Some(0.0), Some("a"));
        assert_ne!(key(&base), key(&new("p", Some(0.0), Some("b"))));
        assert_ne!(key(&base), key(&new("p", Some(0.0), None)));
        let mut other_model = base.clone();
        other_model.input.model = Some("m2".into());
        assert_ne!(key(&base), key(&other_model));
        let mut same_model = base.clone();
        same_model.input.model = Some("m1".into());
        assert_eq!(
            key(&base),
            key(&same_model),
            "the configured model resolved"
        );
        let mut streamed = base.clone();
        streamed.input.stream = Some(true);
        assert_eq!(key(&base), key(&streamed));
        assert_eq!(plan(&c, &base, None).unwrap().ttl_ms, 60_000);
    }

    #[test]
    fn a_hit_is_marked_cached_at_no_cost() {
        let hit = as_hit(r#"{"text":"x","cost":{"usd":1.5,"prices":"v1","priced_as":"m"}}"#);
        let hit: serde_json::Value = serde_json::from_str(&hit.unwrap()).unwrap();
        assert_eq!(hit["cached"], true);
        assert_eq!(hit["usage"]["input_tokens"], 0);
        assert_eq!(hit["cost"], serde_json::json!({"usd": 0.0, "prices": "v1"}));
    }
}
