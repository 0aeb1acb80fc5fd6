//! Property tests: any input either validates or is refused with a clear, one-line error,
//! never a panic; and claims always follow the claim order.

use std::collections::BTreeSet;

use lanes::Config;
use lanes::model::{ChatInput, NewExecution};
use lanes::store::{Claim, Queue};
use proptest::prelude::*;
use serde_json::Value;

use crate::support::*;

/// Any JSON value, with object keys drawn mostly from the chat input's own fields so that
/// generated values reach the deeper checks.
fn json() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        Just("prompt".to_string()),
        Just("messages".to_string()),
        Just("role".to_string()),
        Just("content".to_string()),
        Just("model".to_string()),
        Just("system".to_string()),
        Just("max_tokens".to_string()),
        Just("temperature".to_string()),
        Just("stop".to_string()),
        Just("extra".to_string()),
        "[a-z_]{1,8}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        prop_oneof![
            Just("user".to_string()),
            Just("assistant".to_string()),
            Just("system".to_string()),
            ".{0,12}",
        ]
        .prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(key.clone(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A line of TOML-like config: known keys and sections with values of every type, and some
/// text that is not TOML at all.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("database_url"),
        Just("plugins_dir"),
        Just("fallback_limit"),
        Just("default_max_attempts"),
        Just("poll_interval_ms"),
        Just("lease_ms"),
        Just("retry.base_ms"),
        Just("retry.max_ms"),
        Just("sandbox.cpu_ms"),
        Just("sandbox.memory_mb"),
        Just("completer.max_batch"),
        Just("completer.backlog"),
        Just("engine.max_instances"),
        Just("providers.p.limit"),
        Just("providers.p.base_url"),
        Just("providers.p.component"),
        Just("providers.P-Bad.limit"),
        Just("unknown_key"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..5).prop_map(|n| n.to_string()),
        Just("4294967296".to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[ -~]{0,16}".prop_map(|s| format!("{s:?}")),
        Just("\"sqlite://x.db\"".to_string()),
        Just("\"http://[::1]:8080\"".to_string()),
        Just("[1, \"a\"]".to_string()),
        Just("{ a = 1 }".to_string()),
    ];
    let line = prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "[ -~]{0,20}",
    ];
    prop::collection::vec(line, 0..6).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_json_validates_or_is_refused_in_one_line(value in json()) {
        match ChatInput::from_value(value.clone()) {
            Ok(input) => {
                // What validates survives a round trip through its stored form.
                let stored = serde_json::to_value(&input).unwrap();
                prop_assert_eq!(ChatInput::from_value(stored).unwrap(), input);
            }
            Err(e) => {
                let text = e.to_string();
                prop_assert!(!text.is_empty() && !text.contains('\n'), "{}", text);
            }
        }
        // The same through the text form the CLI reads.
        if let Err(e) = ChatInput::parse(&value.to_string()) {
            prop_assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn any_config_text_loads_or_is_refused_naming_the_problem(text in config_text()) {
        if let Err(e) = Config::from_toml(&text) {
            let message = e.to_string();
            prop_assert!(message.starts_with("invalid config"), "{}", message);
            prop_assert!(!message.contains("default."), "{}", message);
        }
    }
}

proptest! {
    // Each case opens a fresh SQLite file: fewer cases, each a real queue.
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn claims_take_resumed_then_higher_priority_then_older_rows(
        rows in prop::collection::vec((-3i32..3, any::<bool>()), 1..24),
        takes in prop::collection::vec(1u32..6, 1..12),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let env = TestEnv::new();
            let queue = env.queue().await;
            let batch: Vec<NewExecution> = rows
                .iter()
                .map(|(priority, _)| NewExecution { tenant: None, cache: None,
                    provider: "order".into(),
                    input: ChatInput::prompt("x"),
                    priority: *priority,
                    max_attempts: 3,
                    route: None,
                    defer: Default::default(),
                })
                .collect();
            let ids = queue.submit_many(&batch).await.unwrap();
            let resumed: Vec<i64> = ids
                .iter()
                .zip(&rows)
                .filter(|(_, (_, resume))| *resume)
                .map(|(id, _)| *id)
                .collect();
            for id in &resumed {
                sqlx::query("UPDATE executions SET resume = 1 WHERE id = ?1")
                    .bind(id)
                    .execute(queue.pool())
                    .await
                    .unwrap();
            }
            // The order every claim must follow.
            let mut expected: Vec<(bool, i32, i64)> = ids
                .iter()
                .zip(&rows)
                .map(|(id, (priority, resume))| (*resume, *priority, *id))
                .collect();
            expected.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
            let mut remaining = expected.into_iter();
            for take in takes {
                let claimed = queue
                    .claim("order", Claim { tenants: &lanes::store::ROUND_ROBIN, owner: "w", max: take, limit: 1000, lease_ms: 60_000, budget: None, spend: None })
                    .await
                    .unwrap();
                let want: BTreeSet<i64> =
                    remaining.by_ref().take(take as usize).map(|(_, _, id)| id).collect();
                let got: BTreeSet<i64> = claimed.iter().map(|e| e.id).collect();
                assert_eq!(got, want, "claimed the next rows in claim order");
                // Within one claim, rows start by priority, then age.
                let starts: Vec<(i32, i64)> = claimed.iter().map(|e| (e.priority, e.id)).collect();
                let mut sorted = starts.clone();
                sorted.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                assert_eq!(starts, sorted);
            }
        });
    }
}
