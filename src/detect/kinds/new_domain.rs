//! `new_domain`: an identity calls a registrable domain it never called before
//! and that its app's egress allowlist does not cover.
//!
//! For each event with a `dst_host` the kind computes the registrable domain
//! (eTLD+1 from the Mozilla public suffix list compiled in by the `psl` crate:
//! `eu.api.example.co.uk` → `example.co.uk`, `x.y.github.io` → `y.github.io`).
//! IP-literal hosts are kept as the (canonical) address; hosts under a suffix
//! the list does not know keep their last two labels; a bare suffix or a single
//! label is kept whole.
//!
//! Skipped: hosts matching `ignore_domains`, private IP literals (with
//! `ignore_private_ips`), unregistered identities whose primary principal kind
//! is in `ignore_principal_kinds`, anonymous events, and hosts the app's
//! `egress_allowlist` allows. Allowlist entries and `ignore_domains` share one
//! syntax: `api.example.com` allows that host and any host whose registrable
//! domain is exactly the entry (so `example.com` allows its subdomains, while
//! `api.example.com` does not allow `files.example.com`); `*.example.com`
//! allows `example.com` and every subdomain. Comparison ignores case and a
//! trailing dot.
//!
//! While an identity is learning (`learning_period_secs` from its first event
//! here) each domain joins its known set silently. Afterwards a domain outside
//! the set raises a `new` finding and joins the set, so it alerts once.
//! The set holds at most `max_domains_per_identity` domains: when full it is
//! kept as it is and stops learning, so a domain outside it alerts each time
//! (the engine's suppression bounds how often) without being added.
//! Unregistered identities are baselined the same way, with no allowlist.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use psl::Psl;
use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::json;

use super::unregistered::{capitalize, describe_actor, point_window};
use crate::detect::alert::{EventRef, Evidence, Finding, sql_str};
use crate::detect::spec::{DetectorSpec, SpecError};
use crate::detect::{Context, Detector, IdentityMap, StateStore};
use crate::event::{IdentityStatus, NormalizedEvent, PrincipalKind};

/// Parameters of the kind (`[params]` of the detector file).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Host patterns never tracked nor alerted on (allowlist syntax: `name`
    /// or `*.name`). Default: names that never leave the network.
    #[serde(default = "default_ignore_domains")]
    ignore_domains: Vec<String>,
    /// Whether IP-literal hosts in loopback, private, shared (100.64/10),
    /// unspecified and IPv6 unique-local ranges are ignored. Link-local is kept.
    #[serde(default = "default_ignore_private_ips")]
    ignore_private_ips: bool,
    /// Primary principal kinds of unregistered identities that are not tracked.
    #[serde(default = "default_ignore_principal_kinds")]
    ignore_principal_kinds: Vec<PrincipalKind>,
    /// Most registrable domains remembered per identity (count); when full the
    /// set is kept and stops learning new domains.
    #[serde(default = "default_max_domains_per_identity")]
    max_domains_per_identity: usize,
}

fn default_ignore_domains() -> Vec<String> {
    [
        "localhost",
        "*.localhost",
        "*.local",
        "*.svc.cluster.local",
        "*.internal",
        "*.localdomain",
        "*.home.arpa",
    ]
    .map(String::from)
    .to_vec()
}

fn default_ignore_private_ips() -> bool {
    true
}

fn default_ignore_principal_kinds() -> Vec<PrincipalKind> {
    vec![PrincipalKind::SourceIp]
}

fn default_max_domains_per_identity() -> usize {
    500
}

impl Params {
    fn validate(&self, spec: &DetectorSpec) -> Result<(), SpecError> {
        if !(1..=100_000).contains(&self.max_domains_per_identity) {
            return Err(spec.error(
                "params.max_domains_per_identity",
                format!(
                    "is {}; must be 1 to 100000 domains",
                    self.max_domains_per_identity
                ),
            ));
        }
        if let Some(bad) = self
            .ignore_domains
            .iter()
            .find(|p| Pattern::parse(p).is_none())
        {
            return Err(spec.error(
                "params.ignore_domains",
                format!("`{bad}` is not a host name or `*.` followed by one"),
            ));
        }
        Ok(())
    }
}

/// A host pattern of an allowlist or `ignore_domains`, lower case.
#[derive(Debug, Clone, PartialEq)]
enum Pattern {
    /// `name`: that host, or any host whose registrable domain is `name`.
    Exact(String),
    /// `*.name`: `name` and every subdomain.
    Subdomains(String),
}

impl Pattern {
    fn parse(raw: &str) -> Option<Pattern> {
        let (wild, name) = match raw.trim().strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw.trim()),
        };
        let name = clean_host(name)?.into_owned();
        Some(if wild {
            Pattern::Subdomains(name)
        } else {
            Pattern::Exact(name)
        })
    }

    fn matches(&self, host: &str, domain: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == host || name == domain,
            Pattern::Subdomains(name) => is_same_or_subdomain(host, name),
        }
    }
}

/// Whether a raw allowlist entry (as written in the registry) allows `host`,
/// whose registrable domain is `domain`. Both are clean, lower-case hosts.
fn entry_allows(entry: &str, host: &str, domain: &str) -> bool {
    let entry = entry.trim();
    let entry = entry.strip_suffix('.').unwrap_or(entry);
    match entry.strip_prefix("*.") {
        Some(name) => is_same_or_subdomain(host, name),
        None => entry.eq_ignore_ascii_case(host) || entry.eq_ignore_ascii_case(domain),
    }
}

/// `host` equals `name` or ends with `.name` (ASCII case ignored in `name`).
fn is_same_or_subdomain(host: &str, name: &str) -> bool {
    let (h, n) = (host.as_bytes(), name.as_bytes());
    if n.is_empty() || h.len() < n.len() {
        return false;
    }
    let split = h.len() - n.len();
    h[split..].eq_ignore_ascii_case(n) && (split == 0 || h[split - 1] == b'.')
}

/// A host fit for domain extraction: trimmed, without brackets or trailing
/// dot, lower case; `None` for empty or malformed names (empty labels, spaces,
/// URL punctuation, a colon outside an IPv6 literal).
fn clean_host(raw: &str) -> Option<Cow<'_, str>> {
    let host = raw.trim();
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > 253 {
        return None;
    }
    if host.contains(':') {
        return match host.parse::<IpAddr>() {
            Ok(_) => Some(lower(host)),
            Err(_) => None,
        };
    }
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') || !c.is_ascii();
    if host.starts_with('.')
        || host.contains("..")
        || !host
            .chars()
            .all(|c| fine(c) && !c.is_whitespace() && !c.is_control())
    {
        return None;
    }
    Some(lower(host))
}

fn lower(host: &str) -> Cow<'_, str> {
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}

/// The registrable domain of a clean host (see the module docs).
fn registrable(host: &str) -> Cow<'_, str> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Cow::Owned(ip.to_string());
    }
    match psl::List.domain(host.as_bytes()) {
        Some(domain) => std::str::from_utf8(domain.as_bytes())
            .map(Cow::Borrowed)
            .unwrap_or(Cow::Borrowed(host)),
        None => Cow::Borrowed(host),
    }
}

/// Loopback, private, shared, unspecified and unique-local addresses.
fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_unspecified()
                || (a == 100 && (b & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_unique_local()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// A sorted set of domains kept in one string, each followed by `\n`: one byte
/// of overhead per domain instead of a heap allocation each. Saved as a JSON
/// list. Lookups binary-search the lines.
#[derive(Debug, Default, Clone, PartialEq)]
struct DomainSet {
    joined: String,
    len: u32,
}

impl DomainSet {
    /// `Ok(offset of its line)` or `Err(offset where it belongs)`.
    fn find(&self, domain: &str) -> Result<usize, usize> {
        let bytes = self.joined.as_bytes();
        let needle = domain.as_bytes();
        // `lo` and `hi` are always line starts (or the end).
        let (mut lo, mut hi) = (0, bytes.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let start = bytes[lo..mid]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(lo, |p| lo + p + 1);
            let end = start
                + bytes[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .unwrap_or(bytes.len() - start);
            match bytes[start..end].cmp(needle) {
                std::cmp::Ordering::Equal => return Ok(start),
                std::cmp::Ordering::Less => lo = end + 1,
                std::cmp::Ordering::Greater => hi = start,
            }
        }
        Err(lo)
    }

    fn contains(&self, domain: &str) -> bool {
        self.find(domain).is_ok()
    }

    /// Adds a domain (no `\n`, not empty); false if it was there already.
    fn insert(&mut self, domain: &str) -> bool {
        if domain.is_empty() || domain.contains('\n') {
            return false;
        }
        match self.find(domain) {
            Ok(_) => false,
            Err(at) => {
                self.joined.insert(at, '\n');
                self.joined.insert_str(at, domain);
                self.len += 1;
                true
            }
        }
    }

    fn len(&self) -> usize {
        self.len as usize
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        self.joined.split_terminator('\n')
    }
}

impl Serialize for DomainSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for DomainSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Domains;
        impl<'de> Visitor<'de> for Domains {
            type Value = DomainSet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of domains")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<DomainSet, A::Error> {
                let mut set = DomainSet::default();
                while let Some(domain) = seq.next_element::<Cow<'de, str>>()? {
                    set.insert(&domain);
                }
                Ok(set)
            }
        }
        d.deserialize_seq(Domains)
    }
}

/// What the kind remembers of one identity.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct State {
    /// Event time of the identity's first event here; learning runs from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_seen: Option<DateTime<Utc>>,
    /// Registrable domains called (learned, or alerted on and then added).
    domains: DomainSet,
}

struct NewDomain {
    params: Params,
    /// `ignore_domains`, parsed.
    ignore: Vec<Pattern>,
    state: IdentityMap<State>,
}

/// Builds one shard's instance of a `new_domain` detector.
pub fn build(spec: &DetectorSpec, max_identities: usize) -> Result<Box<dyn Detector>, SpecError> {
    let params: Params = spec.params()?;
    params.validate(spec)?;
    let ignore = params
        .ignore_domains
        .iter()
        .filter_map(|p| Pattern::parse(p))
        .collect();
    Ok(Box::new(NewDomain {
        params,
        ignore,
        state: IdentityMap::new(max_identities),
    }))
}

impl Detector for NewDomain {
    fn store(&self) -> &dyn StateStore {
        &self.state
    }

    fn store_mut(&mut self) -> &mut dyn StateStore {
        &mut self.state
    }

    fn observe(&mut self, event: &NormalizedEvent, cx: &Context<'_>, out: &mut Vec<Finding>) {
        let Some(identity) = event.identity.as_ref() else {
            return;
        };
        match identity.status {
            IdentityStatus::Anonymous => return,
            IdentityStatus::Unregistered => {
                let ignored = event
                    .actor
                    .refs
                    .first()
                    .is_some_and(|r| self.params.ignore_principal_kinds.contains(&r.kind));
                if ignored {
                    return;
                }
            }
            IdentityStatus::Registered => {}
        }
        let Some(host) = event.dst_host.as_deref().and_then(clean_host) else {
            return;
        };
        let ip = host.parse::<IpAddr>().ok();
        if self.params.ignore_private_ips && ip.is_some_and(is_private) {
            return;
        }
        let domain = registrable(&host);
        if self.ignore.iter().any(|p| p.matches(&host, &domain)) {
            return;
        }

        let t = event.time;
        let state = self.state.entry(&identity.key, t);
        let first_seen = state.first_seen.map_or(t, |f| f.min(t));
        state.first_seen = Some(first_seen);
        let app = identity
            .app_id
            .as_deref()
            .and_then(|id| cx.registry.app(id));
        let allowlist: &[String] = app.map_or(&[], |a| a.egress_allowlist.as_slice());
        if allowlist.iter().any(|e| entry_allows(e, &host, &domain)) {
            return;
        }
        if state.domains.contains(&domain) {
            return;
        }
        let full = state.domains.len() >= self.params.max_domains_per_identity;
        if cx.learning(first_seen, t) {
            if !full {
                state.domains.insert(&domain);
            }
            return;
        }

        let known_sample: Vec<&str> = state.domains.iter().take(10).collect();
        let called = if *host == *domain {
            host.to_string()
        } else {
            format!("{host} (domain {domain})")
        };
        let policy = match app {
            Some(_) if !allowlist.is_empty() => "outside its egress allowlist",
            Some(_) => "and its registration declares no egress allowlist",
            None => "and, being unregistered, it has no egress allowlist",
        };
        let summary = format!(
            "{} called {called} for the first time since it was first seen at {}, {policy} — \
             check for data exfiltration or an unreviewed new integration.",
            capitalize(&describe_actor(event, identity, cx)),
            first_seen.format("%Y-%m-%d %H:%M UTC"),
        );
        let mut observed = json!({ "domain": domain, "host": host });
        if let Some(port) = event.dst_port {
            observed["port"] = json!(port);
        }
        if let Some(bytes) = event.bytes_out {
            observed["bytes_out"] = json!(bytes);
        }
        let mut details = serde_json::Map::new();
        details.insert("first_seen".into(), json!(first_seen));
        details.insert(
            "learning_period_secs".into(),
            json!(cx.spec.learning_period_secs),
        );
        details.insert("known_domains_full".into(), json!(full));
        details.insert("registered".into(), json!(app.is_some()));
        details.insert("category".into(), json!(event.category.as_str()));
        details.insert("product".into(), json!(event.product.as_str()));
        if let Some(method) = &event.http_method {
            details.insert("http_method".into(), json!(method));
        }
        let sql_filter = if ip.is_some() || (*host == *domain && !host.contains('.')) {
            format!("dst_host = {}", sql_str(&host))
        } else {
            format!(
                "(dst_host = {} OR dst_host LIKE {})",
                sql_str(&domain),
                sql_str(&format!("%.{domain}"))
            )
        };
        let (window_start, window_end) = point_window(t);
        let finding = Finding {
            identity: identity.key.clone(),
            app_id: identity.app_id.clone(),
            score: if allowlist.is_empty() { 75.0 } else { 90.0 },
            window_start,
            window_end,
            summary,
            evidence: Evidence {
                observed,
                baseline: json!({
                    "known_domains": state.domains.len(),
                    "known_sample": known_sample,
                    "allowlist": allowlist,
                }),
                details,
                samples: vec![EventRef::of(event)],
            },
            sql_filter,
            raise: 0,
            variant: "new",
        };
        if !full {
            state.domains.insert(&domain);
        }
        out.push(finding);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::kinds::testing::{self, at, drive, resolve};
    use crate::event::{Category, Product, ResolvedIdentity};
    use crate::identity::Registry;

    const HOUR: i64 = 3600;

    fn registry() -> Registry {
        let yaml = r#"
apps:
  - id: invoice-bot
    name: Invoice bot
    owner: alice@example.com
    risk_tier: restricted
    identities:
      gateway_consumers: [invoice-bot]
    egress_allowlist: [api.stripe.com, "*.slack.com", "Example.ORG"]
    registered_on: 2026-11-01
  - id: report-bot
    name: Report bot
    owner: bob@example.com
    risk_tier: internal
    identities:
      gateway_consumers: [report-bot]
    registered_on: 2026-11-01
"#;
        testing::registry(yaml)
    }

    fn spec() -> DetectorSpec {
        testing::spec("new_egress_domain.toml")
    }

    /// An egress request by gateway consumer `consumer` (registered when the registry knows it).
    fn call(secs: i64, consumer: &str, host: &str, r: &Registry) -> NormalizedEvent {
        let mut e = NormalizedEvent::new(at(secs), Product::Kong, Category::EgressRequest, "POST");
        e.actor.push(PrincipalKind::GatewayConsumer, consumer);
        e.actor.push(PrincipalKind::SourceIp, "10.20.0.5");
        e.dst_host = Some(host.to_string());
        e.dst_port = Some(443);
        e.identity = Some(resolve(&e.actor, r));
        e
    }

    /// Twelve hours of learning for invoice-bot: two domains of its own plus allowlisted ones.
    fn learning(r: &Registry) -> Vec<NormalizedEvent> {
        let mut events = Vec::new();
        for h in 0..12 {
            events.push(call(h * HOUR, "invoice-bot", "api.openai.com", r));
            events.push(call(
                h * HOUR + 60,
                "invoice-bot",
                "eu.api.example.co.uk",
                r,
            ));
            events.push(call(h * HOUR + 120, "invoice-bot", "api.stripe.com", r));
        }
        events
    }

    #[test]
    fn default_file_parses_and_builds() {
        let spec = spec();
        assert_eq!(spec.kind, crate::detect::Kind::NewDomain);
        assert_eq!(
            spec.filter.categories,
            vec![Category::EgressRequest, Category::ApiCall]
        );
        let params: Params = spec.params().unwrap();
        assert_eq!(params.max_domains_per_identity, 500);
        assert!(params.ignore_private_ips);
        assert!(
            params
                .ignore_domains
                .iter()
                .any(|d| d == "*.svc.cluster.local")
        );
        assert!(!build(&spec, 10).unwrap().windowed());
    }

    #[test]
    fn bad_params_name_their_key() {
        let mut s = spec();
        s.params
            .insert("max_domains_per_identity".into(), toml::Value::Integer(0));
        assert_eq!(
            build(&s, 10).err().unwrap().key,
            "params.max_domains_per_identity"
        );
        let mut s = spec();
        s.params.insert(
            "ignore_domains".into(),
            toml::Value::Array(vec![toml::Value::String("*foo.com".into())]),
        );
        assert_eq!(build(&s, 10).err().unwrap().key, "params.ignore_domains");
        let mut s = spec();
        s.params
            .insert("max_domains".into(), toml::Value::Integer(5));
        assert_eq!(build(&s, 10).err().unwrap().key, "params");
    }

    #[test]
    fn registrable_domains() {
        let cases = [
            ("paste.exfil-drop.net", "exfil-drop.net"),
            ("eu.api.example.co.uk", "example.co.uk"),
            ("api.example.co.uk", "example.co.uk"),
            ("a.b.user.github.io", "user.github.io"),
            ("example.com", "example.com"),
            ("co.uk", "co.uk"),
            ("intranet", "intranet"),
            ("x.build.corp-zone-zz", "build.corp-zone-zz"),
            ("10.1.2.3", "10.1.2.3"),
            ("2001:db8:0:0::1", "2001:db8::1"),
        ];
        for (host, want) in cases {
            assert_eq!(registrable(host), want, "{host}");
        }
        assert_eq!(
            clean_host("API.Example.com.").as_deref(),
            Some("api.example.com")
        );
        assert_eq!(clean_host("[::1]").as_deref(), Some("::1"));
        for bad in ["", ".", "a..b", ".a.com", "a b.com", "host:443", "a/b"] {
            assert_eq!(clean_host(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn patterns_and_allowlist_entries() {
        assert!(entry_allows(
            "api.stripe.com",
            "api.stripe.com",
            "stripe.com"
        ));
        assert!(!entry_allows(
            "api.stripe.com",
            "files.stripe.com",
            "stripe.com"
        ));
        assert!(entry_allows("stripe.com", "files.stripe.com", "stripe.com"));
        assert!(entry_allows("*.slack.com", "hooks.slack.com", "slack.com"));
        assert!(entry_allows("*.slack.com", "slack.com", "slack.com"));
        assert!(entry_allows("*.Slack.com.", "a.b.slack.com", "slack.com"));
        assert!(!entry_allows("*.slack.com", "notslack.com", "notslack.com"));
        assert!(!entry_allows(
            "*.slack.com",
            "slack.com.evil.net",
            "evil.net"
        ));
        let p = Pattern::parse("*.svc.cluster.local").unwrap();
        assert!(p.matches("db.prod.svc.cluster.local", "cluster.local"));
        assert!(!p.matches("cluster.local", "cluster.local"));
        assert_eq!(Pattern::parse("*.*.x"), None);
        assert_eq!(Pattern::parse("*"), None);
    }

    #[test]
    fn domain_set_is_sorted_and_searchable() {
        let mut set = DomainSet::default();
        for d in [
            "m.com", "a.com", "z.org", "m.com", "b.net", "aa.com", "a.co",
        ] {
            set.insert(d);
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            vec!["a.co", "a.com", "aa.com", "b.net", "m.com", "z.org"]
        );
        assert_eq!(set.len(), 6);
        for d in ["a.co", "a.com", "aa.com", "b.net", "m.com", "z.org"] {
            assert!(set.contains(d), "{d}");
        }
        for d in ["", "a", "a.c", "b.com", "zz.org", "m.co"] {
            assert!(!set.contains(d), "{d}");
        }
        assert!(!set.insert("bad\nname"));
        let json = serde_json::to_value(&set).unwrap();
        let back: DomainSet = serde_json::from_value(json!(["z.org", "a.co", "z.org"])).unwrap();
        assert_eq!(back.iter().collect::<Vec<_>>(), vec!["a.co", "z.org"]);
        assert_eq!(serde_json::from_value::<DomainSet>(json).unwrap(), set);
    }

    #[test]
    fn exfil_domain_after_learning_alerts_once() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 100).unwrap();
        assert!(drive(d.as_mut(), &spec, &r, &learning(&r)).is_empty());
        let after = 13 * HOUR;
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[
                call(after, "invoice-bot", "api.openai.com", &r),
                call(after + 10, "invoice-bot", "paste.exfil-drop.net", &r),
                call(after + 20, "invoice-bot", "paste.exfil-drop.net", &r),
                call(after + 30, "invoice-bot", "cdn.exfil-drop.net", &r),
            ],
        );
        assert_eq!(found.len(), 1, "{found:?}");
        let f = &found[0];
        assert_eq!((f.variant, f.identity.as_str()), ("new", "app:invoice-bot"));
        assert_eq!(f.app_id.as_deref(), Some("invoice-bot"));
        assert_eq!(f.score, 90.0, "outside a declared allowlist");
        assert_eq!(f.window_start, at(after + 10));
        assert_eq!(f.evidence.observed["domain"], "exfil-drop.net");
        assert_eq!(f.evidence.observed["host"], "paste.exfil-drop.net");
        assert_eq!(f.evidence.baseline["known_domains"], json!(2));
        assert_eq!(
            f.evidence.baseline["known_sample"],
            json!(["example.co.uk", "openai.com"])
        );
        assert_eq!(
            f.evidence.baseline["allowlist"],
            json!(["api.stripe.com", "*.slack.com", "Example.ORG"])
        );
        assert_eq!(
            f.sql_filter,
            "(dst_host = 'exfil-drop.net' OR dst_host LIKE '%.exfil-drop.net')"
        );
        assert!(f.summary.contains("paste.exfil-drop.net"), "{}", f.summary);
        assert!(f.summary.contains("Invoice bot"), "{}", f.summary);
        assert!(
            f.summary.contains("outside its egress allowlist"),
            "{}",
            f.summary
        );
        assert_eq!(f.evidence.samples.len(), 1);
    }

    #[test]
    fn allowlisted_internal_and_same_registrable_hosts_never_alert() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 100).unwrap();
        drive(d.as_mut(), &spec, &r, &learning(&r));
        let after = 13 * HOUR;
        let hosts = [
            "api.stripe.com",
            "hooks.slack.com",
            "slack.com",
            "files.example.org",
            "api.example.co.uk",
            "EU.API.Example.CO.UK.",
            "db.prod.svc.cluster.local",
            "metadata.google.internal",
            "localhost",
            "10.1.2.3",
            "[fd00::1]",
        ];
        let events: Vec<NormalizedEvent> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| call(after + i as i64, "invoice-bot", h, &r))
            .collect();
        let found = drive(d.as_mut(), &spec, &r, &events);
        assert!(found.is_empty(), "{found:?}");
        let saved = d.save();
        assert_eq!(saved.len(), 1);
        assert_eq!(
            saved[0].1["state"]["domains"],
            json!(["example.co.uk", "openai.com"]),
            "allowlisted and ignored hosts are not learned"
        );
        // Not allowlisted: `api.stripe.com` does not allow other stripe.com hosts.
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[call(after + 100, "invoice-bot", "files.stripe.com", &r)],
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].evidence.observed["domain"], "stripe.com");
    }

    #[test]
    fn learning_is_silent_and_per_identity() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 100).unwrap();
        // Unregistered consumer: no allowlist; learns its first 12 hours.
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[
                call(0, "shadow-gpt-agent", "api.openai.com", &r),
                call(HOUR, "shadow-gpt-agent", "pastebin.com", &r),
                call(11 * HOUR, "shadow-gpt-agent", "transfer.sh", &r),
                // report-bot's clock starts later: still learning at 13 h.
                call(10 * HOUR, "report-bot", "api.notion.com", &r),
                call(13 * HOUR, "report-bot", "api.airtable.com", &r),
                call(13 * HOUR, "shadow-gpt-agent", "pastebin.com", &r),
                call(
                    13 * HOUR + 1,
                    "shadow-gpt-agent",
                    "paste.exfil-drop.net",
                    &r,
                ),
                call(23 * HOUR, "report-bot", "api.hubspot.com", &r),
            ],
        );
        let got: Vec<(&str, &serde_json::Value)> = found
            .iter()
            .map(|f| (f.identity.as_str(), &f.evidence.observed["domain"]))
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "gateway_consumer:shadow-gpt-agent",
                    &json!("exfil-drop.net")
                ),
                ("app:report-bot", &json!("hubspot.com")),
            ]
        );
        assert_eq!(found[0].app_id, None);
        assert_eq!(found[0].score, 75.0);
        assert!(
            found[0].summary.contains("unregistered"),
            "{}",
            found[0].summary
        );
        assert!(
            found[1].summary.contains("declares no egress allowlist"),
            "{}",
            found[1].summary
        );
        assert_eq!(found[1].evidence.baseline["known_domains"], json!(2));
    }

    #[test]
    fn address_only_and_anonymous_actors_are_not_tracked() {
        let (r, spec) = (registry(), spec());
        let mut d = build(&spec, 100).unwrap();
        let mut proxy =
            NormalizedEvent::new(at(0), Product::Squid, Category::EgressRequest, "CONNECT");
        proxy.actor.push(PrincipalKind::SourceIp, "10.9.9.9");
        proxy.dst_host = Some("example.net".into());
        proxy.identity = Some(ResolvedIdentity {
            status: IdentityStatus::Unregistered,
            app_id: None,
            key: "source_ip:10.9.9.9".into(),
            matched: None,
            assumed_by: None,
        });
        let mut anonymous = proxy.clone();
        anonymous.actor = Default::default();
        anonymous.identity = Some(ResolvedIdentity {
            status: IdentityStatus::Anonymous,
            app_id: None,
            key: "anonymous".into(),
            matched: None,
            assumed_by: None,
        });
        let mut no_host = call(0, "report-bot", "x", &r);
        no_host.dst_host = None;
        assert!(drive(d.as_mut(), &spec, &r, &[proxy, anonymous, no_host]).is_empty());
        assert_eq!(d.tracked(), 0);
    }

    #[test]
    fn save_then_load_behaves_the_same() {
        let (r, spec) = (registry(), spec());
        let mut a = build(&spec, 100).unwrap();
        let mut before = learning(&r);
        before.push(call(0, "report-bot", "api.notion.com", &r));
        drive(a.as_mut(), &spec, &r, &before);
        let saved = a.save();
        assert_eq!(saved.len(), 2);
        let mut b = build(&spec, 100).unwrap();
        for (k, v) in saved.clone() {
            b.load(k, v).unwrap();
        }
        assert_eq!(b.save(), saved);
        let after: Vec<NormalizedEvent> = [
            ("invoice-bot", "api.openai.com"),
            ("invoice-bot", "paste.exfil-drop.net"),
            ("report-bot", "api.notion.com"),
            ("report-bot", "api.airtable.com"),
            ("invoice-bot", "paste.exfil-drop.net"),
        ]
        .iter()
        .enumerate()
        .map(|(i, (who, host))| call(13 * HOUR + i as i64, who, host, &r))
        .collect();
        let fa = drive(a.as_mut(), &spec, &r, &after);
        let fb = drive(b.as_mut(), &spec, &r, &after);
        assert_eq!(fa.len(), 2);
        assert_eq!(format!("{fa:?}"), format!("{fb:?}"));
        assert_eq!(a.save(), b.save());
        assert!(
            b.load("x".into(), json!({"seen": at(0), "state": {"domains": 5}}))
                .is_err()
        );
    }

    #[test]
    fn caps_are_respected_and_idle_state_is_small() {
        let r = registry();
        let mut spec = spec();
        spec.params
            .insert("max_domains_per_identity".into(), toml::Value::Integer(3));
        let mut d = build(&spec, 2).unwrap();
        let learn: Vec<NormalizedEvent> = ["a.com", "b.com", "c.com", "d.com", "e.com"]
            .iter()
            .enumerate()
            .map(|(i, h)| call(i as i64, "report-bot", h, &r))
            .collect();
        assert!(drive(d.as_mut(), &spec, &r, &learn).is_empty());
        let saved = d.save();
        assert_eq!(
            saved[0].1["state"]["domains"],
            json!(["a.com", "b.com", "c.com"])
        );
        // Full: d.com was never learned, so it alerts, is not added, and alerts again.
        let later = 13 * HOUR;
        let found = drive(
            d.as_mut(),
            &spec,
            &r,
            &[
                call(later, "report-bot", "a.com", &r),
                call(later + 1, "report-bot", "d.com", &r),
                call(later + 2, "report-bot", "d.com", &r),
            ],
        );
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].evidence.details["known_domains_full"], json!(true));
        assert_eq!(
            d.save()[0].1["state"]["domains"].as_array().unwrap().len(),
            3
        );

        // Identities are capped by max_identities.
        let many: Vec<NormalizedEvent> = (0..5)
            .map(|i| call(later + 10 + i, &format!("unknown-{i}"), "x.com", &r))
            .collect();
        drive(d.as_mut(), &spec, &r, &many);
        assert!(d.tracked() <= 2, "{}", d.tracked());
        let tracked = d.tracked();
        assert_eq!(d.evict_idle(at(later + 100)), tracked);

        // An identity with 40 typical domains stays under 2 KiB, saved and in memory.
        let spec = self::spec();
        let mut d = build(&spec, 10).unwrap();
        let hosts: Vec<String> = (0..40).map(|i| format!("api.vendor-{i:02}.com")).collect();
        let events: Vec<NormalizedEvent> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| call(i as i64, "report-bot", h, &r))
            .collect();
        drive(d.as_mut(), &spec, &r, &events);
        let saved = d.save();
        let json = saved[0].1.to_string();
        assert!(json.len() < 2048, "{} bytes: {json}", json.len());
        let mut state = State::default();
        for h in &hosts {
            state.domains.insert(registrable(h).as_ref());
        }
        let heap = state.domains.joined.capacity();
        assert!(
            heap + std::mem::size_of::<State>() < 2048,
            "{heap} bytes of domains"
        );
    }
}
