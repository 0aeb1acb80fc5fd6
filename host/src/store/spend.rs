//! Daily spend caps: the parts of the rule both dialects share (see `docs/policies.md#spend-caps`).
//!
//! A claim of a capped provider, or of any provider while some tenant has a cap, runs in the
//! budget's transaction (see [`super::Queue::claim`]). It reads the day's `spend` rows, and:
//!
//! - takes nothing while the provider's spent and reserved USD reach its cap;
//! - leaves out the tenants whose spent and reserved USD reach theirs ([`Spend::excluded`]);
//! - takes no more rows than fit what is left of the provider's cap, by their estimates in
//!   claim order, the row that crosses the cap included ([`Spend::room`]): so the work in
//!   flight passes a cap by at most one row's estimate per claim (a tenant's, by what one
//!   claim takes of it);
//! - reserves each claimed row's estimate ([`Spend::estimate`]) for its provider and its
//!   tenant.
//!
//! An attempt's end settles its reservation with what it really cost
//! ([`super::Queue::settle_spend`]): the spend grows, the reservation goes, and when that
//! crosses 80% of a cap, or all of it, the fleet is told once ([`SpendNotice`]). A running
//! attempt is never stopped: a cap only holds back claims.

use std::collections::BTreeMap;
use std::sync::Arc;

/// The share of a cap spent when a warning is given.
pub const WARN_AT: f64 = 0.8;

/// Output tokens reserved for a request that sets no `max_tokens`.
pub const DEFAULT_OUTPUT_ESTIMATE: i64 = 1_000;

/// Sums of float USD that should reach a cap exactly (eight settles of $0.10 against $0.80)
/// fall short by rounding: a total within this of a cap reaches it.
const EPSILON_USD: f64 = 1e-9;

/// Whether `total` USD reaches `cap`.
pub fn reaches(total: f64, cap: f64) -> bool {
    total + EPSILON_USD >= cap
}

/// One claim's spend caps for its day.
#[derive(Debug, Clone, PartialEq)]
pub struct Spend {
    /// The UTC day the claim counts against: days since the Unix epoch, on the caps' clock
    /// ([`crate::clock`]).
    pub day: i64,
    /// The provider's `daily_usd`.
    pub provider_usd: Option<f64>,
    /// Each capped tenant's `daily_usd`.
    pub tenants: Arc<BTreeMap<String, f64>>,
    /// The prices a claimed row's estimate is taken at (the provider's configured model);
    /// `None`: no price, so rows reserve nothing and their cost is not known.
    pub price: Option<crate::costs::Price>,
}

/// What a cap's scope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpendScope {
    Provider,
    Tenant,
}

impl SpendScope {
    /// Its name in the `spend` table.
    pub fn as_str(self) -> &'static str {
        match self {
            SpendScope::Provider => "provider",
            SpendScope::Tenant => "tenant",
        }
    }

    /// Reads a stored scope.
    pub fn parse(s: &str) -> Option<SpendScope> {
        match s {
            "provider" => Some(SpendScope::Provider),
            "tenant" => Some(SpendScope::Tenant),
            _ => None,
        }
    }
}

/// One provider's or tenant's spend on a day.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SpendRow {
    pub scope: SpendScope,
    pub name: String,
    /// Settled: what ended attempts cost, in USD.
    pub spent_usd: f64,
    /// Reserved by running attempts, in USD.
    pub reserved_usd: f64,
}

/// A cap crossed by a settle, told once across the fleet.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SpendNotice {
    pub scope: SpendScope,
    pub name: String,
    pub spent_usd: f64,
    pub cap_usd: f64,
    /// All of the cap is spent; otherwise [`WARN_AT`] of it.
    pub reached: bool,
}

impl Spend {
    /// These caps for today, on the caps' clock (a `Policy` holds them with a `day` of 0).
    pub fn today(&self) -> Spend {
        Spend {
            day: crate::clock::day(),
            ..self.clone()
        }
    }

    /// Whether an attempt for `tenant` counts against a cap: the provider's or the
    /// tenant's. Only those reserve and settle.
    pub fn applies(&self, tenant: &str) -> bool {
        self.provider_usd.is_some() || self.tenants.contains_key(tenant)
    }

    /// The reservations of `claimed` (those with a capped provider or tenant): each row's
    /// id, tenant and estimate.
    pub(crate) fn reservations<'e>(
        &self,
        claimed: &'e [crate::model::Execution],
    ) -> Vec<(crate::model::ExecutionId, &'e str, f64)> {
        claimed
            .iter()
            .filter_map(|e| {
                let tenant = e.tenant.as_deref().unwrap_or("");
                self.applies(tenant)
                    .then(|| (e.id, tenant, self.estimate(&e.input)))
            })
            .collect()
    }

    /// Whether `scope`'s `name` has a cap, and which.
    pub fn cap(&self, scope: SpendScope, name: &str) -> Option<f64> {
        match scope {
            SpendScope::Provider => self.provider_usd,
            SpendScope::Tenant => self.tenants.get(name).copied(),
        }
    }

    /// The capped tenants whose spent and reserved USD (`totals`, by tenant) reach their
    /// caps, as the claim takes them: a JSON array, `None` when there are none.
    pub fn excluded<'a>(&self, totals: impl Iterator<Item = (&'a str, f64)>) -> Option<String> {
        let out: Vec<&str> = totals
            .filter(|(name, total)| {
                self.tenants
                    .get(*name)
                    .is_some_and(|cap| reaches(*total, *cap))
            })
            .map(|(name, _)| name)
            .collect();
        (!out.is_empty()).then(|| serde_json::json!(out).to_string())
    }

    /// The capped tenants' names, as a JSON array, to read their rows.
    pub fn tenant_names(&self) -> String {
        serde_json::json!(self.tenants.keys().collect::<Vec<_>>()).to_string()
    }

    /// How many of `candidates` (the next pending rows' estimates, in claim order) the
    /// provider's cap lets the claim take after `total` (spent and reserved): each while
    /// the total is under the cap, so the row that crosses it goes too.
    pub fn room(&self, mut total: f64, candidates: &[f64]) -> usize {
        let Some(cap) = self.provider_usd else {
            return candidates.len();
        };
        let mut fit = 0;
        for estimate in candidates {
            if reaches(total, cap) {
                break;
            }
            total += estimate;
            fit += 1;
        }
        fit
    }

    /// The USD reserved for an attempt of `input`: its text ÷ 4 as input tokens and its
    /// `max_tokens` (else [`DEFAULT_OUTPUT_ESTIMATE`]) as output tokens, at the provider's
    /// prices; 0 without a price.
    pub fn estimate(&self, input: &serde_json::Value) -> f64 {
        self.estimate_at(input, false)
    }

    /// [`Spend::estimate`], at the batch price when `batch` (the price table's
    /// `batch_discount`): what a line of a provider batch reserves.
    pub fn estimate_at(&self, input: &serde_json::Value, batch: bool) -> f64 {
        let max_tokens = input.get("max_tokens").and_then(serde_json::Value::as_i64);
        self.estimate_of(super::prompt_tokens(input), max_tokens, batch)
    }

    /// The estimate of a request of `input_tokens` that sets `max_tokens` (else
    /// [`DEFAULT_OUTPUT_ESTIMATE`] output tokens), at the batch price when `batch`.
    pub fn estimate_of(&self, input_tokens: i64, max_tokens: Option<i64>, batch: bool) -> f64 {
        let Some(price) = &self.price else {
            return 0.0;
        };
        let usage = crate::model::Usage {
            input_tokens: u32::try_from(input_tokens.max(0)).unwrap_or(u32::MAX),
            output_tokens: u32::try_from(
                max_tokens
                    .filter(|m| *m > 0)
                    .unwrap_or(DEFAULT_OUTPUT_ESTIMATE),
            )
            .unwrap_or(u32::MAX),
            ..Default::default()
        };
        price.usd(&usage, batch)
    }

    /// Which rows of a batch being opened (`(id, tenant, input bytes, max_tokens)`, oldest
    /// first) its caps let it send, by the day's `totals` (`(scope, name, spent +
    /// reserved)`, as [`Spend::read`] takes them) and the rows' estimates at the batch
    /// price (the whole input's bytes ÷ 4 as input tokens, a little over a live claim's
    /// estimate, which counts only the text: the inputs are not read here), as a claim
    /// takes rows ([`Spend::room`]): each while its provider and its tenant are under their
    /// caps, so the row that crosses a cap goes and none of that scope after it. Returns the
    /// rows kept that reserve (`(id, tenant, estimate)`, those [`Spend::applies`] to), and
    /// the ids left out (they wait for a later batch). A batch is one claim of many rows: a
    /// tenant's cap is held row by row here, not only by leaving out the tenants at theirs.
    pub(crate) fn batch_room<'r>(
        &self,
        totals: &[(String, String, f64)],
        rows: &'r [(crate::model::ExecutionId, String, i64, Option<i64>)],
    ) -> (
        Vec<(crate::model::ExecutionId, &'r str, f64)>,
        Vec<crate::model::ExecutionId>,
    ) {
        let mut provider_total = self.read(totals).provider_total;
        let mut tenant_totals: BTreeMap<&str, f64> = totals
            .iter()
            .filter(|(scope, _, _)| scope == SpendScope::Tenant.as_str())
            .map(|(_, name, total)| (name.as_str(), *total))
            .collect();
        let (mut kept, mut left) = (Vec::new(), Vec::new());
        for (id, tenant, bytes, max_tokens) in rows {
            let tenant = tenant.as_str();
            let provider_full = self
                .provider_usd
                .is_some_and(|cap| reaches(provider_total, cap));
            let tenant_cap = self.tenants.get(tenant).copied();
            let tenant_total = tenant_totals.get(tenant).copied().unwrap_or(0.0);
            if provider_full || tenant_cap.is_some_and(|cap| reaches(tenant_total, cap)) {
                left.push(*id);
                continue;
            }
            let usd = self.estimate_of(bytes / 4, *max_tokens, true);
            provider_total += usd;
            if tenant_cap.is_some() {
                tenant_totals.insert(tenant, tenant_total + usd);
            }
            if self.applies(tenant) {
                kept.push((*id, tenant, usd));
            }
        }
        (kept, left)
    }

    /// The notice a settle of a reservation of `day` brings, from the total it left
    /// (`(scope, name, spent, noticed, noticed_cap)`), with the level it marks: none for a
    /// day gone by. A level told of another cap (changed by a reload since) counts as none.
    pub(crate) fn notice_for<N: Into<i64>>(
        &self,
        day: i64,
        (scope, name, spent, noticed, noticed_cap): (String, String, f64, N, f64),
    ) -> Option<(i64, SpendNotice)> {
        if day != self.day {
            return None;
        }
        let scope = SpendScope::parse(&scope)?;
        let cap = self.cap(scope, &name)?;
        let noticed = if (noticed_cap - cap).abs() > EPSILON_USD {
            0
        } else {
            noticed.into()
        };
        self.notice(scope, &name, spent, noticed)
    }

    /// The changes of reserved USD that `rows` (`(day, provider, tenant, usd)`, a negative
    /// `usd` a release) make to the capped scopes of `provider`'s claims, summed by key
    /// and in key order (so that concurrent claims lock `spend` rows in one order).
    pub(crate) fn deltas<'a>(
        &self,
        provider: &str,
        rows: impl Iterator<Item = (i64, &'a str, &'a str, f64)>,
    ) -> Vec<(i64, &'static str, String, f64)> {
        let mut sums: BTreeMap<(i64, &'static str, String), f64> = BTreeMap::new();
        for (day, row_provider, tenant, usd) in rows {
            if self.provider_usd.is_some() && row_provider == provider {
                *sums
                    .entry((day, SpendScope::Provider.as_str(), provider.to_string()))
                    .or_default() += usd;
            }
            if self.tenants.contains_key(tenant) {
                *sums
                    .entry((day, SpendScope::Tenant.as_str(), tenant.to_string()))
                    .or_default() += usd;
            }
        }
        sums.into_iter()
            .map(|((day, scope, name), usd)| (day, scope, name, usd))
            .collect()
    }

    /// The level a settle brings `scope`'s `name` to (0 none, 1 warned, 2 reached) and,
    /// when it is past `noticed`, the notice to give.
    pub fn notice(
        &self,
        scope: SpendScope,
        name: &str,
        spent: f64,
        noticed: i64,
    ) -> Option<(i64, SpendNotice)> {
        let cap = self.cap(scope, name)?;
        let level = if reaches(spent, cap) {
            2
        } else if reaches(spent, cap * WARN_AT) {
            1
        } else {
            0
        };
        (level > noticed).then(|| {
            let notice = SpendNotice {
                scope,
                name: name.to_string(),
                spent_usd: spent,
                cap_usd: cap,
                reached: level == 2,
            };
            (level, notice)
        })
    }
}

/// One attempt's end, for [`super::Queue::settle_spend`].
#[derive(Debug, Clone, Copy)]
pub struct SpendEnd<'a> {
    pub id: crate::model::ExecutionId,
    pub provider: &'a str,
    /// `""`: none.
    pub tenant: &'a str,
    /// What the attempt cost: 0 when it failed, was put back, or its model has no price.
    pub usd: f64,
    /// The caps of its provider's claims, with today's day.
    pub caps: &'a Spend,
}

/// What a batch of ends adds to each capped `(day, scope, name)`: spent and released USD,
/// with the caps that scope is told of.
pub(crate) struct Settled<'a> {
    pub spent: f64,
    pub released: f64,
    pub caps: &'a Spend,
}

/// Sums `ends`, each with the reservation it had (`open`, by execution), by capped scope, in
/// key order (the order the rows are locked in). An end without a reservation counts on its
/// caps' day.
pub(crate) fn settled<'a>(
    ends: &[SpendEnd<'a>],
    open: &BTreeMap<crate::model::ExecutionId, OpenReservation>,
) -> BTreeMap<(i64, &'static str, String), Settled<'a>> {
    let mut sums: BTreeMap<(i64, &'static str, String), Settled<'a>> = BTreeMap::new();
    for end in ends {
        let (day, released) = open
            .get(&end.id)
            .map_or((end.caps.day, 0.0), |o| (o.day, o.usd));
        for (scope, name) in [
            (SpendScope::Provider, end.provider),
            (SpendScope::Tenant, end.tenant),
        ] {
            if end.caps.cap(scope, name).is_none() {
                continue;
            }
            let sum = sums
                .entry((day, scope.as_str(), name.to_string()))
                .or_insert(Settled {
                    spent: 0.0,
                    released: 0.0,
                    caps: end.caps,
                });
            sum.spent += end.usd;
            sum.released += released;
        }
    }
    sums
}

/// What the day's spend lets a claim do (see [`Spend::read`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CapRead {
    /// The provider's spent and reserved USD.
    pub provider_total: f64,
    /// The tenants to leave out, as [`Spend::excluded`] gives them.
    pub excluded: Option<String>,
    /// The provider's cap is reached: the claim takes nothing.
    pub full: bool,
}

impl Spend {
    /// Reads the day's `(scope, name, spent + reserved)` rows of the provider and the capped
    /// tenants.
    pub(crate) fn read(&self, rows: &[(String, String, f64)]) -> CapRead {
        let provider_total = rows
            .iter()
            .find(|(scope, _, _)| scope == SpendScope::Provider.as_str())
            .map_or(0.0, |r| r.2);
        CapRead {
            provider_total,
            excluded: self.excluded(
                rows.iter()
                    .filter(|(scope, _, _)| scope == SpendScope::Tenant.as_str())
                    .map(|(_, name, total)| (name.as_str(), *total)),
            ),
            full: self
                .provider_usd
                .is_some_and(|cap| reaches(provider_total, cap)),
        }
    }
}

/// Whether [`room`] weighs the estimates of the rows a claim would take (found by a dry
/// run of the claim): under a token budget or a provider's spend cap. Otherwise it counts
/// requests only, and rows of no estimate stand in for them.
pub(crate) fn weighs_estimates(claim: &super::Claim<'_>) -> bool {
    claim.budget.is_some_and(|b| b.tpm.is_some())
        || claim.spend.is_some_and(|s| s.provider_usd.is_some())
}

/// The room of a budgeted claim that needs no dry run: none when the minute's requests are
/// spent, else, when it weighs no estimates (see [`weighs_estimates`]), what `rpm` leaves
/// ([`room`] with rows of no estimate standing in). `None` otherwise: a claim without a
/// budget, or one that weighs estimates.
pub(crate) fn room_by_requests(
    claim: &super::Claim<'_>,
    used: (i64, i64),
    provider_total: f64,
) -> Option<u32> {
    let budget = claim.budget?;
    if budget.rpm.is_some_and(|rpm| used.0 >= i64::from(rpm)) {
        return Some(0);
    }
    if weighs_estimates(claim) {
        return None;
    }
    let rows = usize::try_from(claim.max).unwrap_or(usize::MAX);
    Some(room(
        claim,
        used,
        provider_total,
        std::iter::repeat_n(None, rows),
    ))
}

/// How many rows a claim with a budget or a provider's cap may take, given `inputs`, the
/// inputs of the rows the claim would take (a dry run of it): what the budget's window
/// (`used` requests and tokens) and the day's cap (`provider_total` spent and reserved)
/// leave, by the rows' estimates taken costliest first. The claim then takes that many
/// of the same rows in its own order (shared among tenants), which reserve no more than
/// the costliest would: so a claim passes a cap by at most one row's estimate, whatever
/// its order.
pub(crate) fn room<'a>(
    claim: &super::Claim<'_>,
    used: (i64, i64),
    provider_total: f64,
    inputs: impl Iterator<Item = Option<&'a str>>,
) -> u32 {
    // A row whose input cannot be read estimates as an empty request (the claim fails it).
    let inputs: Vec<serde_json::Value> = inputs
        .map(|i| {
            i.and_then(|i| serde_json::from_str(i).ok())
                .unwrap_or_default()
        })
        .collect();
    let mut room = claim.max;
    if let Some(budget) = claim.budget {
        let mut estimates: Vec<i64> = inputs.iter().map(super::estimate_tokens).collect();
        estimates.sort_unstable_by(|a, b| b.cmp(a));
        let fit = budget.room(used.0, used.1, &estimates);
        room = room.min(u32::try_from(fit).unwrap_or(0));
    }
    if let Some(spend) = claim.spend {
        let mut estimates: Vec<f64> = inputs.iter().map(|i| spend.estimate(i)).collect();
        estimates.sort_unstable_by(|a, b| b.total_cmp(a));
        let fit = spend.room(provider_total, &estimates);
        room = room.min(u32::try_from(fit).unwrap_or(0));
    }
    room
}

/// A settle's reservation, read back from `spend_open`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OpenReservation {
    #[sqlx(default)]
    pub execution_id: crate::model::ExecutionId,
    pub day: i64,
    pub provider: String,
    pub tenant: String,
    pub usd: f64,
}

/// Stored `(scope, name, spent, reserved)` rows as [`SpendRow`]s (a scope no version
/// writes is skipped).
pub(crate) fn rows(rows: Vec<(String, String, f64, f64)>) -> Vec<SpendRow> {
    rows.into_iter()
        .filter_map(|(scope, name, spent, reserved)| {
            Some(SpendRow {
                scope: SpendScope::parse(&scope)?,
                name,
                spent_usd: spent,
                reserved_usd: reserved,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> Spend {
        Spend {
            day: 1,
            provider_usd: Some(1.0),
            tenants: Arc::new(BTreeMap::from([("a".to_string(), 0.5)])),
            price: Some(crate::costs::Price {
                input: 1.0,
                output: 2.0,
                cache_read: None,
                cache_write: None,
                batch_discount: None,
            }),
        }
    }

    #[test]
    fn the_row_that_crosses_the_cap_goes_and_none_after_it() {
        let s = caps();
        assert_eq!(s.room(0.0, &[0.4, 0.4, 0.4, 0.4]), 3);
        assert_eq!(s.room(1.0, &[0.1]), 0);
        assert_eq!(s.room(0.99, &[5.0, 0.1]), 1);
    }

    #[test]
    fn a_claim_under_rpm_alone_needs_no_dry_run() {
        use crate::store::{Budget, Claim, ROUND_ROBIN};
        let claim = |budget, spend| Claim {
            owner: "w",
            max: 10,
            limit: 10,
            lease_ms: 1,
            budget,
            tenants: &ROUND_ROBIN,
            spend,
        };
        let rpm = |rpm| {
            Some(Budget {
                rpm: Some(rpm),
                tpm: None,
            })
        };
        assert_eq!(room_by_requests(&claim(rpm(4), None), (1, 0), 0.0), Some(3));
        assert_eq!(
            room_by_requests(&claim(rpm(40), None), (1, 0), 0.0),
            Some(10)
        );
        assert_eq!(room_by_requests(&claim(rpm(4), None), (4, 0), 0.0), Some(0));
        let tokens = Some(Budget {
            rpm: Some(4),
            tpm: Some(100),
        });
        assert_eq!(room_by_requests(&claim(tokens, None), (1, 0), 0.0), None);
        assert_eq!(room_by_requests(&claim(tokens, None), (4, 0), 0.0), Some(0));
        let caps = caps();
        assert_eq!(
            room_by_requests(&claim(rpm(4), Some(&caps)), (1, 0), 0.0),
            None
        );
        assert_eq!(room_by_requests(&claim(None, None), (0, 0), 0.0), None);
    }

    #[test]
    fn only_capped_tenants_at_their_cap_are_left_out() {
        let s = caps();
        let totals = [("a", 0.5), ("b", 100.0)];
        assert_eq!(s.excluded(totals.into_iter()).as_deref(), Some(r#"["a"]"#));
        assert_eq!(s.excluded([("a", 0.49)].into_iter()), None);
    }

    #[test]
    fn an_estimate_prices_the_prompt_and_max_tokens() {
        let s = caps();
        // 400 characters: 100 input tokens at $1/M, 50 output at $2/M.
        let input = serde_json::json!({"prompt": "x".repeat(400), "max_tokens": 50});
        assert!((s.estimate(&input) - (100.0 + 100.0) / 1e6).abs() < 1e-12);
        let unset = serde_json::json!({"prompt": "x".repeat(400)});
        assert!((s.estimate(&unset) - (100.0 + 2000.0) / 1e6).abs() < 1e-12);
        let free = Spend {
            price: None,
            ..caps()
        };
        assert_eq!(free.estimate(&input), 0.0);
    }

    #[test]
    fn a_batch_keeps_rows_while_its_provider_and_tenants_are_under_their_caps() {
        let mut s = caps();
        s.price = Some(crate::costs::Price {
            batch_discount: Some(0.5),
            ..s.price.unwrap()
        });
        // 400 bytes and max_tokens 50: $0.0002 live, $0.0001 at the batch price.
        let rows: Vec<(i64, String, i64, Option<i64>)> = (1..=6)
            .map(|id| {
                let tenant = if id % 2 == 0 { "a" } else { "b" };
                (id, tenant.to_string(), 400, Some(50))
            })
            .collect();
        // Tenant a at 0.49995 of 0.5: its first row crosses its cap, its next is left out.
        let totals = vec![
            ("provider".to_string(), "p".to_string(), 0.9),
            ("tenant".to_string(), "a".to_string(), 0.49995),
        ];
        let (kept, left) = s.batch_room(&totals, &rows);
        let kept: Vec<(i64, &str)> = kept.iter().map(|(id, t, _)| (*id, *t)).collect();
        assert_eq!(kept, [(1, "b"), (2, "a"), (3, "b"), (5, "b")]);
        assert_eq!(left, [4, 6]);
        // The provider at its cap: nothing goes.
        let full = vec![("provider".to_string(), "p".to_string(), 1.0)];
        let (kept, left) = s.batch_room(&full, &rows);
        assert!(kept.is_empty());
        assert_eq!(left.len(), 6);
        // No provider cap: rows of uncapped tenants go and reserve nothing.
        let tenants_only = Spend {
            provider_usd: None,
            ..s.clone()
        };
        let (kept, left) = tenants_only.batch_room(&[], &rows);
        assert_eq!(kept.len(), 3, "only tenant a's rows reserve");
        assert!(left.is_empty());
        assert!((kept[0].2 - 0.0001).abs() < 1e-12, "the batch price");
    }

    #[test]
    fn notices_come_once_per_level() {
        let s = caps();
        assert!(s.notice(SpendScope::Provider, "p", 0.7, 0).is_none());
        let (level, n) = s.notice(SpendScope::Provider, "p", 0.85, 0).unwrap();
        assert_eq!((level, n.reached), (1, false));
        assert!(s.notice(SpendScope::Provider, "p", 0.9, 1).is_none());
        let (level, n) = s
            .notice(SpendScope::Tenant, "a", 0.1 + 0.2 + 0.2, 1)
            .unwrap();
        assert_eq!((level, n.reached, n.cap_usd), (2, true, 0.5));
        assert!(s.notice(SpendScope::Tenant, "b", 99.0, 0).is_none());
        // Told of another cap: told again.
        let total = ("provider".to_string(), "p".to_string(), 0.85, 2, 5.0);
        assert!(s.notice_for(1, total.clone()).is_some());
        assert!(
            s.notice_for(2, total).is_none(),
            "a day gone by tells nothing"
        );
    }

    #[test]
    fn deltas_count_only_capped_scopes_in_key_order() {
        let s = caps();
        let rows = [(1, "p", "b", 0.2), (1, "p", "a", 0.1), (0, "q", "a", -0.1)];
        let d = s.deltas("p", rows.into_iter());
        let keys: Vec<(i64, &str, &str)> = d
            .iter()
            .map(|(day, scope, name, _)| (*day, *scope, name.as_str()))
            .collect();
        assert_eq!(
            keys,
            [(0, "tenant", "a"), (1, "provider", "p"), (1, "tenant", "a")]
        );
        assert!((d[1].3 - 0.3).abs() < 1e-12);
    }
}
