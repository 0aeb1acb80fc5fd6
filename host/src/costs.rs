//! The price table and the cost of one execution. Pure: no store, no daemon.
//!
//! **The table.** [`PriceTable::shipped`] is `host/prices.toml`, built into the binary: USD
//! per million tokens for each model (input, output, cache read, cache write) and the
//! model's batch discount, with the version (the date its prices were read) and, in its
//! header, where they came from. [`PriceTable::with_overrides`] lays the operator's
//! prices from config over it: one field of a shipped model, or a whole new model. A table
//! with overrides says so in its version (`"2026-12-06+config"`), so a stored cost names
//! the table that priced it.
//!
//! **Lookup** ([`PriceTable::lookup`]). A model name is looked for, in this order:
//!
//! 1. exactly as given, then with each leading `PREFIX/` taken off in turn
//!    (`openai/gpt-4o`, then `gpt-4o`; `openrouter/openai/gpt-4o`, then `openai/gpt-4o`,
//!    then `gpt-4o`). Any prefix goes: lanes names a model `PROVIDER/MODEL` with the
//!    operator's own provider names;
//! 2. then each of those names without a date suffix, `-YYYY-MM-DD` (OpenAI's snapshots)
//!    or `-YYYYMMDD` (Anthropic's): `gpt-4o-2024-08-06` is priced as `gpt-4o` when the
//!    table has no entry of its own for it. A dated entry always wins over its undated
//!    one (`gpt-4o-2024-05-13` has its own, older price).
//!
//! Names are compared as given (case counts). [`PriceTable::cost`] looks up the model the
//! provider reported first (it names the snapshot that ran), then the configured one.
//! A model found under neither is a [`NoPrice`] error, never a cost of 0; an operator who
//! wants a model free (a local Ollama model) sets its price to 0 in config.
//!
//! **Tokens** ([`Price::usd`]), as `docs/api.md` defines usage: "`input_tokens` is every
//! prompt token, cache reads and writes included; `output_tokens` every output token,
//! reasoning included." So:
//!
//! - cache reads cost `cache_read` (or `input` when the model has none), cache writes
//!   `cache_write` (or `input`), and the rest of `input_tokens` costs `input`;
//! - `output_tokens` costs `output`; `reasoning_tokens` are already in it and are not
//!   priced again;
//! - a batch call costs every one of those times `1 - batch_discount` (a model with no
//!   `batch_discount` gets none).
//!
//! Counts are trusted as reported. When the cache counts add up to more than
//! `input_tokens` (a provider breaking the contract), the uncached part is 0 and the cache
//! counts are still priced as given, so no reported token goes unpriced.
//!
//! Not modelled: long-context price tiers, flex and priority tiers, and Anthropic's
//! 1-hour cache writes (usage does not say which cache was written); the header of
//! `host/prices.toml` says so too.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::Usage;

/// `host/prices.toml`, the table lanes ships.
const SHIPPED: &str = include_str!("../prices.toml");

/// Tokens per unit of the table's prices.
const TOKENS_PER_PRICE_UNIT: f64 = 1_000_000.0;

/// One model's prices, in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    /// Uncached prompt tokens.
    pub input: f64,
    /// Output tokens, reasoning included.
    pub output: f64,
    /// Prompt tokens read from the prompt cache; `None` prices them as `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    /// Prompt tokens written to the prompt cache; `None` prices them as `input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// The fraction, in `[0, 1)`, taken off every price for a batch call; `None` is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_discount: Option<f64>,
}

impl Price {
    /// What `usage` costs at these prices, in USD (see the module doc for how each kind of
    /// token is priced). `batch` applies the batch discount.
    pub fn usd(&self, usage: &Usage, batch: bool) -> f64 {
        let read = usage.cache_read_tokens.unwrap_or(0);
        let write = usage.cache_write_tokens.unwrap_or(0);
        // Counts come from providers: saturate rather than wrap or panic.
        let uncached = usage
            .input_tokens
            .saturating_sub(read.saturating_add(write));
        // f64::from(u32) is exact (f64 holds every integer below 2^53), and f64 is enough
        // for money that is reported, not accounted: its relative error is about 1e-16.
        let per_unit = f64::from(uncached) * self.input
            + f64::from(read) * self.cache_read.unwrap_or(self.input)
            + f64::from(write) * self.cache_write.unwrap_or(self.input)
            + f64::from(usage.output_tokens) * self.output;
        let factor = if batch {
            1.0 - self.batch_discount.unwrap_or(0.0)
        } else {
            1.0
        };
        per_unit / TOKENS_PER_PRICE_UNIT * factor
    }

    /// Every price finite and 0 or more; the discount in `[0, 1)`.
    fn validate(&self, model: &str) -> Result<(), PriceError> {
        let prices = [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        ];
        for (field, value) in prices {
            if let Some(value) = value
                && !(value.is_finite() && value >= 0.0)
            {
                return Err(PriceError::Invalid {
                    model: model.to_string(),
                    field,
                    value,
                    rule: "a price must be a finite number, 0 or more",
                });
            }
        }
        if let Some(value) = self.batch_discount
            && !(value.is_finite() && (0.0..1.0).contains(&value))
        {
            return Err(PriceError::Invalid {
                model: model.to_string(),
                field: "batch_discount",
                value,
                rule: "a discount must be at least 0 and below 1",
            });
        }
        Ok(())
    }
}

/// The operator's price for one model, from config: each field replaces the shipped
/// model's, and a model the shipped table lacks needs at least `input` and `output`.
/// USD per million tokens, as in [`Price`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceOverride {
    /// Uncached prompt tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<f64>,
    /// Output tokens, reasoning included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<f64>,
    /// Prompt tokens read from the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    /// Prompt tokens written to the prompt cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write: Option<f64>,
    /// The fraction, in `[0, 1)`, taken off every price for a batch call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_discount: Option<f64>,
}

/// A price the operator gave that lanes cannot use.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PriceError {
    /// A model the shipped table lacks, given without `input` or `output`.
    #[error(
        "price of model {model:?}: {field} is missing (a model the shipped price table lacks needs input and output)"
    )]
    Missing {
        /// The model's name as configured.
        model: String,
        /// `input` or `output`.
        field: &'static str,
    },
    /// A price below 0 or not finite, or a discount outside `[0, 1)`.
    #[error("price of model {model:?}: {field} is {value}, but {rule}")]
    Invalid {
        /// The model's name as configured.
        model: String,
        /// The field at fault.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What it must be.
        rule: &'static str,
    },
    /// A price given for a model with an empty name.
    #[error("a price is given for a model with an empty name")]
    EmptyName,
}

/// The price table: prices by model name, and the version that stored costs carry.
#[derive(Debug, Clone, PartialEq)]
pub struct PriceTable {
    version: String,
    models: BTreeMap<String, Price>,
}

/// The file's form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PriceFile {
    version: String,
    models: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The table lanes ships (`host/prices.toml`).
    pub fn shipped() -> PriceTable {
        // The file is built in and its tests parse and validate it, so this cannot fail in
        // a build whose tests pass.
        Self::parse(SHIPPED).expect("host/prices.toml is a valid price table")
    }

    /// The shipped table with the operator's prices laid over it, keyed by model name.
    /// A key that is exactly a shipped model's name changes the fields it gives; any other
    /// key adds a model (it must give `input` and `output`). The lookup rule applies to
    /// added names too, so `"openai/gpt-4o"` prices that name alone, ahead of `gpt-4o`.
    /// Unless `overrides` is empty, the version becomes `"<shipped version>+config"`.
    pub fn with_overrides(
        overrides: &BTreeMap<String, PriceOverride>,
    ) -> Result<PriceTable, PriceError> {
        let mut table = Self::shipped();
        table.apply(overrides)?;
        Ok(table)
    }

    /// The version stored with each cost this table prices.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The price of `model` and the name it was found under, by the rule in the module
    /// doc: exactly, then without provider prefixes, then without a date suffix.
    pub fn lookup(&self, model: &str) -> Option<(&str, &Price)> {
        let names = unprefixed(model);
        let exact = names.iter().copied();
        let undated = names.iter().filter_map(|name| undated(name));
        exact.chain(undated).find_map(|name| {
            self.models
                .get_key_value(name)
                .map(|(key, price)| (key.as_str(), price))
        })
    }

    /// What `usage` cost: priced by the model the provider reported if the table has it,
    /// else by the configured model; `batch` applies the model's batch discount. An empty
    /// name counts as none. A model found under neither name is [`NoPrice`].
    pub fn cost(
        &self,
        usage: &Usage,
        reported_model: Option<&str>,
        configured_model: Option<&str>,
        batch: bool,
    ) -> Result<Cost, NoPrice> {
        let mut tried: Vec<&str> = Vec::new();
        for name in [reported_model, configured_model].into_iter().flatten() {
            if name.is_empty() || tried.contains(&name) {
                continue;
            }
            if let Some((found, price)) = self.lookup(name) {
                return Ok(Cost {
                    usd: price.usd(usage, batch),
                    model: found.to_string(),
                    version: self.version.clone(),
                });
            }
            tried.push(name);
        }
        Err(NoPrice {
            tried: tried.into_iter().map(str::to_string).collect(),
            version: self.version.clone(),
        })
    }

    fn parse(text: &str) -> Result<PriceTable, String> {
        let file: PriceFile = toml::from_str(text).map_err(|e| e.to_string())?;
        for (model, price) in &file.models {
            if model.is_empty() {
                return Err(PriceError::EmptyName.to_string());
            }
            price.validate(model).map_err(|e| e.to_string())?;
        }
        Ok(PriceTable {
            version: file.version,
            models: file.models,
        })
    }

    fn apply(&mut self, overrides: &BTreeMap<String, PriceOverride>) -> Result<(), PriceError> {
        for (model, o) in overrides {
            if model.is_empty() {
                return Err(PriceError::EmptyName);
            }
            let price = match self.models.get(model) {
                Some(shipped) => Price {
                    input: o.input.unwrap_or(shipped.input),
                    output: o.output.unwrap_or(shipped.output),
                    cache_read: o.cache_read.or(shipped.cache_read),
                    cache_write: o.cache_write.or(shipped.cache_write),
                    batch_discount: o.batch_discount.or(shipped.batch_discount),
                },
                None => {
                    let missing = |field| PriceError::Missing {
                        model: model.clone(),
                        field,
                    };
                    Price {
                        input: o.input.ok_or_else(|| missing("input"))?,
                        output: o.output.ok_or_else(|| missing("output"))?,
                        cache_read: o.cache_read,
                        cache_write: o.cache_write,
                        batch_discount: o.batch_discount,
                    }
                }
            };
            price.validate(model)?;
            self.models.insert(model.clone(), price);
        }
        if !overrides.is_empty() {
            self.version = format!("{}+config", self.version);
        }
        Ok(())
    }
}

/// The cost of one execution, to store with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// USD.
    pub usd: f64,
    /// The table entry that priced it (which may differ from the model's name: `gpt-4o`
    /// for a reported `gpt-4o-2024-08-06`).
    pub model: String,
    /// The version of the table that priced it ([`PriceTable::version`]).
    pub version: String,
}

/// No price for an execution's model: the table has neither name. Never read as 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoPrice {
    /// The names looked up, reported first; empty when the execution named no model.
    pub tried: Vec<String>,
    /// The version of the table looked in.
    pub version: String,
}

impl fmt::Display for NoPrice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.tried.as_slice() {
            [] => write!(f, "no price: no model named")?,
            [first, rest @ ..] => {
                write!(f, "no price for model {first:?}")?;
                for name in rest {
                    write!(f, " or {name:?}")?;
                }
            }
        }
        write!(f, " (price table {})", self.version)
    }
}

impl std::error::Error for NoPrice {}

/// `model`, then `model` with each leading `PREFIX/` taken off in turn, longest first.
/// A name ending in `/` gives no empty remainder.
fn unprefixed(model: &str) -> Vec<&str> {
    std::iter::once(model)
        .chain(
            model
                .match_indices('/')
                .filter_map(|(i, _)| model.get(i + 1..)),
        )
        .filter(|name| !name.is_empty())
        .collect()
}

/// `name` without its date suffix, `-YYYY-MM-DD` or `-YYYYMMDD`, if it has one and
/// something is left before it.
fn undated(name: &str) -> Option<&str> {
    let split = |len: usize| {
        let at = name.len().checked_sub(len)?;
        let (base, suffix) = (name.get(..at)?, name.get(at..)?);
        (!base.is_empty()).then_some((base, suffix.as_bytes()))
    };
    if let Some((base, s)) = split(11)
        && s[0] == b'-'
        && s[5] == b'-'
        && s[8] == b'-'
        && is_date(&s[1..5], &s[6..8], &s[9..11])
    {
        return Some(base);
    }
    if let Some((base, s)) = split(9)
        && s[0] == b'-'
        && is_date(&s[1..5], &s[5..7], &s[7..9])
    {
        return Some(base);
    }
    None
}

/// Four, two and two ASCII digits that read as a date (a month 1 to 12, a day 1 to 31).
fn is_date(year: &[u8], month: &[u8], day: &[u8]) -> bool {
    let number = |digits: &[u8]| {
        digits.iter().try_fold(0u32, |n, d| {
            d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0'))
        })
    };
    number(year).is_some()
        && number(month).is_some_and(|m| (1..=12).contains(&m))
        && number(day).is_some_and(|d| (1..=31).contains(&d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Close enough for money in f64.
    fn assert_usd(actual: f64, expected: f64) {
        assert!(
            (actual - expected).abs() < 1e-12,
            "cost {actual} is not {expected}"
        );
    }

    fn usage(input: u32, output: u32) -> Usage {
        Usage {
            input_tokens: input,
            output_tokens: output,
            ..Usage::default()
        }
    }

    fn cost_of(table: &PriceTable, model: &str, usage: &Usage, batch: bool) -> Cost {
        table.cost(usage, Some(model), None, batch).unwrap()
    }

    #[test]
    fn the_shipped_table_parses_and_every_entry_is_valid() {
        let table = PriceTable::shipped();
        assert_eq!(table.version(), "2026-12-06");
        assert!(
            (30..=60).contains(&table.models.len()),
            "{} models",
            table.models.len()
        );
        for (model, price) in &table.models {
            price.validate(model).unwrap();
            assert!(!model.is_empty());
            assert!(price.input > 0.0 && price.output > 0.0, "{model} is free");
            for cache in [price.cache_read, price.cache_write].into_iter().flatten() {
                assert!(cache >= 0.0, "{model}");
            }
            if let Some(d) = price.batch_discount {
                assert!((0.0..1.0).contains(&d), "{model}");
            }
            // Every shipped name is found as itself.
            assert_eq!(table.lookup(model).unwrap().0, model);
        }
    }

    #[test]
    fn input_and_output_tokens_cost_their_prices() {
        let table = PriceTable::shipped();
        // gpt-4o: $2.50 in, $10 out per million.
        let cost = cost_of(&table, "gpt-4o", &usage(1_000_000, 0), false);
        assert_usd(cost.usd, 2.5);
        let cost = cost_of(&table, "gpt-4o", &usage(0, 1_000_000), false);
        assert_usd(cost.usd, 10.0);
        let cost = cost_of(&table, "gpt-4o", &usage(2006, 12), false);
        assert_usd(cost.usd, (2006.0 * 2.5 + 12.0 * 10.0) / 1e6);
        assert_eq!(cost.model, "gpt-4o");
        assert_eq!(cost.version, "2026-12-06");
    }

    #[test]
    fn cache_reads_are_part_of_input_and_cost_the_cache_read_price() {
        let table = PriceTable::shipped();
        // docs/api.md's example: 2006 in, 1920 of them read from the cache.
        let u = Usage {
            cache_read_tokens: Some(1920),
            ..usage(2006, 12)
        };
        let cost = cost_of(&table, "gpt-4o", &u, false);
        assert_usd(cost.usd, (86.0 * 2.5 + 1920.0 * 1.25 + 12.0 * 10.0) / 1e6);
    }

    #[test]
    fn cache_writes_are_part_of_input_and_cost_the_cache_write_price() {
        let table = PriceTable::shipped();
        // claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 cache write, $15 out.
        let u = Usage {
            cache_read_tokens: Some(1000),
            cache_write_tokens: Some(4000),
            ..usage(10_000, 500)
        };
        let cost = cost_of(&table, "claude-sonnet-4-5", &u, false);
        let expected = (5000.0 * 3.0 + 1000.0 * 0.3 + 4000.0 * 3.75 + 500.0 * 15.0) / 1e6;
        assert_usd(cost.usd, expected);
    }

    #[test]
    fn a_model_without_cache_prices_prices_its_cache_tokens_as_input() {
        let table = PriceTable::shipped();
        // gpt-4o-2024-05-13 has no cache prices; gpt-4o has a cache-read price only.
        let u = Usage {
            cache_read_tokens: Some(600),
            cache_write_tokens: Some(300),
            ..usage(1000, 0)
        };
        assert_usd(
            cost_of(&table, "gpt-4o-2024-05-13", &u, false).usd,
            1000.0 * 5.0 / 1e6,
        );
        assert_usd(
            cost_of(&table, "gpt-4o", &u, false).usd,
            (100.0 * 2.5 + 600.0 * 1.25 + 300.0 * 2.5) / 1e6,
        );
    }

    #[test]
    fn reasoning_tokens_are_part_of_output_and_not_priced_twice() {
        let table = PriceTable::shipped();
        let plain = cost_of(&table, "o3", &usage(100, 1000), false);
        let reasoning = Usage {
            reasoning_tokens: Some(800),
            ..usage(100, 1000)
        };
        let with = cost_of(&table, "o3", &reasoning, false);
        assert_usd(with.usd, plain.usd);
        assert_usd(with.usd, (100.0 * 2.0 + 1000.0 * 8.0) / 1e6);
    }

    #[test]
    fn a_batch_call_takes_the_discount_off_every_price() {
        let table = PriceTable::shipped();
        let u = Usage {
            cache_read_tokens: Some(1000),
            cache_write_tokens: Some(4000),
            ..usage(10_000, 500)
        };
        let full = cost_of(&table, "claude-sonnet-4-5", &u, false);
        let batch = cost_of(&table, "claude-sonnet-4-5", &u, true);
        assert_usd(batch.usd, full.usd * 0.5);

        // A model with no discount costs the same in a batch.
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "local".to_string(),
            PriceOverride {
                input: Some(1.0),
                output: Some(2.0),
                ..PriceOverride::default()
            },
        );
        let table = PriceTable::with_overrides(&overrides).unwrap();
        let u = usage(1_000_000, 1_000_000);
        assert_usd(cost_of(&table, "local", &u, true).usd, 3.0);
    }

    #[test]
    fn cache_counts_over_input_price_every_reported_token() {
        let table = PriceTable::shipped();
        let u = Usage {
            cache_read_tokens: Some(u32::MAX),
            cache_write_tokens: Some(u32::MAX),
            ..usage(10, u32::MAX)
        };
        let cost = cost_of(&table, "claude-sonnet-4-5", &u, false);
        let max = f64::from(u32::MAX);
        assert_usd(cost.usd, (max * 0.3 + max * 3.75 + max * 15.0) / 1e6);
        assert!(cost.usd.is_finite());
    }

    #[test]
    fn an_override_changes_one_field_of_a_shipped_model() {
        let mut overrides = BTreeMap::new();
        overrides.insert(
            "gpt-4o".to_string(),
            PriceOverride {
                output: Some(12.0),
                ..PriceOverride::default()
            },
        );
        let table = PriceTable::with_overrides(&overrides).unwrap();
        assert_eq!(table.version(), "2026-12-06+config");
        let price = table.lookup("gpt-4o").unwrap().1;
        assert_eq!(price.output, 12.0);
        assert_eq!(price.input, 2.5);
        assert_eq!(price.cache_read, Some(1.25));
        assert_eq!(price.batch_discount, Some(0.5));
        let cost = cost_of(&table, "gpt-4o", &usage(1_000_000, 1_000_000), false);
        assert_usd(cost.usd, 14.5);
        assert_eq!(cost.version, "2026-12-06+config");
        // The rest of the table is as shipped.
        assert_eq!(
            table.lookup("gpt-4o-mini"),
            PriceTable::shipped().lookup("gpt-4o-mini")
        );
    }

    #[test]
    fn no_overrides_keep_the_shipped_version() {
        let table = PriceTable::with_overrides(&BTreeMap::new()).unwrap();
        assert_eq!(table, PriceTable::shipped());
    }

    #[test]
    fn config_adds_a_new_model() {
        let overrides: BTreeMap<String, PriceOverride> = toml::from_str(
            r#"
            "llama3.2" = { input = 0, output = 0 }
            "my-model" = { input = 1, output = 4, cache_read = 0.1, batch_discount = 0.25 }
            "#,
        )
        .unwrap();
        let table = PriceTable::with_overrides(&overrides).unwrap();
        // A local model an operator prices at 0 costs 0: the operator said so.
        let cost = cost_of(&table, "llama3.2", &usage(1000, 1000), false);
        assert_eq!(cost.usd, 0.0);
        let u = Usage {
            cache_read_tokens: Some(500_000),
            ..usage(1_000_000, 1_000_000)
        };
        let cost = cost_of(&table, "my-model", &u, true);
        assert_usd(cost.usd, (0.5 * 1.0 + 0.5 * 0.1 + 4.0) * 0.75);
        assert_eq!(cost.model, "my-model");
    }

    #[test]
    fn a_new_model_must_give_input_and_output() {
        for (text, field) in [
            ("output = 4", "input"),
            ("input = 1", "output"),
            ("cache_read = 1", "input"),
        ] {
            let o: PriceOverride = toml::from_str(text).unwrap();
            let overrides = BTreeMap::from([("new-model".to_string(), o)]);
            let err = PriceTable::with_overrides(&overrides).unwrap_err();
            assert_eq!(
                err,
                PriceError::Missing {
                    model: "new-model".into(),
                    field
                }
            );
            let message = err.to_string();
            assert!(
                message.contains("\"new-model\"") && message.contains(field),
                "{message}"
            );
        }
    }

    #[test]
    fn bad_override_values_are_refused_naming_model_and_field() {
        for (o, field) in [
            (
                PriceOverride {
                    input: Some(-1.0),
                    ..PriceOverride::default()
                },
                "input",
            ),
            (
                PriceOverride {
                    cache_write: Some(f64::NAN),
                    ..PriceOverride::default()
                },
                "cache_write",
            ),
            (
                PriceOverride {
                    output: Some(f64::INFINITY),
                    ..PriceOverride::default()
                },
                "output",
            ),
            (
                PriceOverride {
                    batch_discount: Some(1.0),
                    ..PriceOverride::default()
                },
                "batch_discount",
            ),
            (
                PriceOverride {
                    batch_discount: Some(-0.1),
                    ..PriceOverride::default()
                },
                "batch_discount",
            ),
        ] {
            let overrides = BTreeMap::from([("gpt-4o".to_string(), o)]);
            let err = PriceTable::with_overrides(&overrides).unwrap_err();
            assert!(
                matches!(&err, PriceError::Invalid { model, field: f, .. } if model == "gpt-4o" && *f == field),
                "{err:?}"
            );
            assert!(err.to_string().contains("\"gpt-4o\""), "{err}");
        }
        let overrides = BTreeMap::from([(String::new(), PriceOverride::default())]);
        assert_eq!(
            PriceTable::with_overrides(&overrides).unwrap_err(),
            PriceError::EmptyName
        );
    }

    #[test]
    fn an_override_with_an_unknown_field_does_not_parse() {
        let err = toml::from_str::<PriceOverride>("input = 1\noutputs = 2").unwrap_err();
        assert!(err.to_string().contains("outputs"), "{err}");
    }

    #[test]
    fn a_missing_model_is_an_error_not_zero() {
        let table = PriceTable::shipped();
        let err = table
            .cost(&usage(100, 100), Some("llama3.2:latest"), None, false)
            .unwrap_err();
        assert_eq!(err.tried, ["llama3.2:latest"]);
        assert_eq!(
            err.to_string(),
            r#"no price for model "llama3.2:latest" (price table 2026-12-06)"#
        );

        let err = table
            .cost(&usage(1, 1), Some("x-1"), Some("y-2"), false)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"no price for model "x-1" or "y-2" (price table 2026-12-06)"#
        );

        // The same name twice is tried once; empty names are none.
        let err = table
            .cost(&usage(1, 1), Some("x"), Some("x"), false)
            .unwrap_err();
        assert_eq!(err.tried, ["x"]);
        let err = table.cost(&usage(1, 1), Some(""), None, false).unwrap_err();
        assert!(err.tried.is_empty());
        assert_eq!(
            err.to_string(),
            "no price: no model named (price table 2026-12-06)"
        );
    }

    #[test]
    fn the_reported_model_is_looked_up_before_the_configured_one() {
        let table = PriceTable::shipped();
        let u = usage(1_000_000, 0);
        let cost = table
            .cost(&u, Some("gpt-4o-mini"), Some("gpt-4o"), false)
            .unwrap();
        assert_eq!(cost.model, "gpt-4o-mini");
        assert_usd(cost.usd, 0.15);
        // A reported model without a price falls back to the configured one.
        let cost = table
            .cost(&u, Some("some-proxy-name"), Some("gpt-4o"), false)
            .unwrap();
        assert_eq!(cost.model, "gpt-4o");
        let cost = table.cost(&u, None, Some("gpt-4o"), false).unwrap();
        assert_eq!(cost.model, "gpt-4o");
    }

    #[test]
    fn provider_prefixes_are_taken_off() {
        let table = PriceTable::shipped();
        assert_eq!(table.lookup("openai/gpt-4o").unwrap().0, "gpt-4o");
        assert_eq!(
            table
                .lookup("anthropic/claude-sonnet-4-5-20250929")
                .unwrap()
                .0,
            "claude-sonnet-4-5-20250929"
        );
        assert_eq!(
            table.lookup("openrouter/openai/gpt-4.1-mini").unwrap().0,
            "gpt-4.1-mini"
        );
        assert_eq!(table.lookup("openai/").map(|f| f.0), None);
        assert_eq!(table.lookup("/").map(|f| f.0), None);

        // A configured prefixed name is its own entry, ahead of the bare one.
        let overrides = BTreeMap::from([(
            "eu/gpt-4o".to_string(),
            PriceOverride {
                input: Some(3.0),
                output: Some(11.0),
                ..PriceOverride::default()
            },
        )]);
        let table = PriceTable::with_overrides(&overrides).unwrap();
        assert_eq!(table.lookup("eu/gpt-4o").unwrap().0, "eu/gpt-4o");
        assert_eq!(table.lookup("us/gpt-4o").unwrap().0, "gpt-4o");
    }

    #[test]
    fn dated_snapshots_fall_back_to_the_undated_entry() {
        let table = PriceTable::shipped();
        // OpenAI's -YYYY-MM-DD.
        assert_eq!(table.lookup("gpt-4o-2024-08-06").unwrap().0, "gpt-4o");
        assert_eq!(table.lookup("gpt-5-2025-08-07").unwrap().0, "gpt-5");
        assert_eq!(
            table.lookup("gpt-5.4-mini-2026-03-17").unwrap().0,
            "gpt-5.4-mini"
        );
        assert_eq!(table.lookup("o3-2025-04-16").unwrap().0, "o3");
        // A dated entry of its own wins.
        let (found, price) = table.lookup("gpt-4o-2024-05-13").unwrap();
        assert_eq!(found, "gpt-4o-2024-05-13");
        assert_eq!(price.input, 5.0);
        // Anthropic's -YYYYMMDD: exact ids are listed; an unlisted snapshot falls back.
        assert_eq!(
            table.lookup("claude-sonnet-4-5-20250929").unwrap().0,
            "claude-sonnet-4-5-20250929"
        );
        assert_eq!(
            table.lookup("claude-opus-4-8-20261001").unwrap().0,
            "claude-opus-4-8"
        );
        // Both rules together.
        assert_eq!(
            table.lookup("openai/gpt-4.1-2025-04-14").unwrap().0,
            "gpt-4.1"
        );
        // Not dates: no fallback.
        assert_eq!(table.lookup("gpt-4o-2024-13-06").map(|f| f.0), None);
        assert_eq!(table.lookup("gpt-4o-20241"), None);
        assert_eq!(table.lookup("gpt-4o-x024-08-06"), None);
        assert_eq!(table.lookup("-2024-08-06"), None);
        // Names are compared as given.
        assert_eq!(table.lookup("GPT-4o"), None);
    }

    #[test]
    fn undated_handles_any_text() {
        assert_eq!(undated("a-2024-08-06"), Some("a"));
        assert_eq!(undated("a-20240806"), Some("a"));
        assert_eq!(undated("-20240806"), None);
        assert_eq!(undated("a-2024-00-06"), None);
        assert_eq!(undated("a-20240832"), None);
        // Multi-byte text near the end never splits a character.
        assert_eq!(undated("modèle-2024-08-0é"), None);
        assert_eq!(undated("ééééééééééé"), None);
        assert_eq!(undated(""), None);
        assert_eq!(unprefixed("a//b"), ["a//b", "/b", "b"]);
    }
}

/// How one provider's answers are priced: the table in force when it was bound, and its
/// configured model (`[providers.NAME] model`), the name tried after the reported one.
#[derive(Debug, Clone)]
pub struct Pricing {
    pub table: std::sync::Arc<PriceTable>,
    pub configured_model: Option<String>,
    /// `[providers.NAME] costs` (default true).
    pub enabled: bool,
}

impl Pricing {
    /// The cost stored with `output`: priced by its usage, or why it has no price; `None`
    /// when the provider's answers are not priced.
    pub fn price(
        &self,
        output: &crate::model::ChatOutput,
        batch: bool,
    ) -> Option<crate::model::Cost> {
        self.enabled.then(|| self.cost(output, batch))
    }

    /// The cost stored with `output`: priced by its usage, or why it has no price.
    pub fn cost(&self, output: &crate::model::ChatOutput, batch: bool) -> crate::model::Cost {
        match self.table.cost(
            &output.usage,
            Some(output.model.as_str()),
            self.configured_model.as_deref(),
            batch,
        ) {
            Ok(c) => crate::model::Cost {
                // A batch answer keeps what its discount saved against the live price.
                saved_usd: batch
                    .then(|| {
                        self.table
                            .cost(
                                &output.usage,
                                Some(output.model.as_str()),
                                self.configured_model.as_deref(),
                                false,
                            )
                            .ok()
                            .map(|live| (live.usd - c.usd).max(0.0))
                    })
                    .flatten(),
                usd: Some(c.usd),
                priced_as: Some(c.model),
                prices: c.version,
                unpriced: None,
            },
            Err(e) => crate::model::Cost {
                usd: None,
                priced_as: None,
                unpriced: Some(e.to_string()),
                prices: e.version,
                saved_usd: None,
            },
        }
    }
}
