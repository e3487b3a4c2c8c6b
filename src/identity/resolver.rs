//! Identity resolution: ties each event's actor to a registered micro-app, or marks it unregistered.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::registry::{App, Registry};
use crate::event::{
    Category, IdentityStatus, NormalizedEvent, Outcome, PrincipalKind, PrincipalRef,
    ResolvedIdentity,
};

/// Credentials issued at run time (STS access keys, Vault token accessors),
/// remembered with the app they were issued to; oldest forgotten first.
#[derive(Debug)]
struct IssuedCredentials {
    by_token: HashMap<String, Arc<str>>,
    order: VecDeque<String>,
    max: usize,
}

impl IssuedCredentials {
    fn new(max: usize) -> Self {
        IssuedCredentials {
            by_token: HashMap::new(),
            order: VecDeque::new(),
            max: max.max(1),
        }
    }

    fn insert(&mut self, token: &str, app_id: &str) {
        if let Some(existing) = self.by_token.get_mut(token) {
            *existing = Arc::from(app_id);
            return;
        }
        while self.by_token.len() >= self.max {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_token.remove(&old);
                }
                None => break,
            }
        }
        self.by_token.insert(token.to_string(), Arc::from(app_id));
        self.order.push_back(token.to_string());
    }

    fn get(&self, token: &str) -> Option<&Arc<str>> {
        self.by_token.get(token)
    }
}

/// Resolves actors against a registry. Holds the issued-credential memory, so
/// one resolver serves one stream of events in order.
#[derive(Debug)]
pub struct Resolver {
    issued: IssuedCredentials,
}

impl Resolver {
    pub fn new(issued_credentials_max: usize) -> Self {
        Resolver {
            issued: IssuedCredentials::new(issued_credentials_max),
        }
    }

    /// The remembered issued credentials (token, app id), oldest first, for snapshots.
    pub fn issued(&self) -> Vec<(String, String)> {
        self.issued
            .order
            .iter()
            .filter_map(|t| {
                self.issued
                    .by_token
                    .get(t)
                    .map(|a| (t.clone(), a.to_string()))
            })
            .collect()
    }

    /// Restores issued credentials saved by [`Resolver::issued`].
    pub fn restore_issued(&mut self, issued: Vec<(String, String)>) {
        for (token, app) in issued {
            self.issued.insert(&token, &app);
        }
    }

    /// How many issued credentials are remembered.
    pub fn issued_len(&self) -> usize {
        self.issued.by_token.len()
    }

    /// Fills in `event.identity` and learns credentials the event issued.
    ///
    /// The actor's forms are tried most specific first. A successful
    /// token-issuance event whose target (the role assumed) is registered
    /// belongs to that role's app, since the app is the one that receives the
    /// credential and its later uses are that app's; when the caller is another
    /// registered app, the identity says so in `assumed_by`. A failed issuance
    /// issued nothing: it belongs to its caller, whoever the target, and teaches
    /// no credential.
    pub fn resolve(&mut self, registry: &Registry, event: &mut NormalizedEvent) {
        event.actor.classify();
        let failed = event.outcome == Outcome::Failure;
        let caller = event
            .actor
            .refs
            .iter()
            .find_map(|r| self.match_ref(registry, r.kind, &r.value));
        let mut assumed_by = None;
        let mut resolved = None;
        if event.category == Category::TokenIssuance
            && !failed
            && let Some(target) = &event.target_principal
            && let Some(receiver) = self.match_ref(registry, PrincipalKind::RoleArn, target)
        {
            assumed_by = caller
                .as_ref()
                .filter(|(caller_app, _)| *caller_app != receiver.0)
                .map(|(caller_app, _)| format!("app:{caller_app}"));
            resolved = Some(receiver);
        }
        let resolved = resolved.or(caller);
        let resolved = resolved.or_else(|| {
            let token = event.token_id.as_ref()?;
            let app_id = self.issued.get(token)?;
            Some((
                app_id.to_string(),
                PrincipalRef::new(PrincipalKind::AccessKey, token.clone()),
            ))
        });

        let identity = match resolved {
            Some((app_id, matched)) => {
                if let Some(issued) = &event.issued_token_id
                    && !failed
                {
                    self.issued.insert(issued, &app_id);
                }
                ResolvedIdentity {
                    status: IdentityStatus::Registered,
                    key: format!("app:{app_id}"),
                    app_id: Some(app_id),
                    matched: Some(matched),
                    assumed_by,
                }
            }
            None => match event.actor.refs.first() {
                Some(primary) => ResolvedIdentity {
                    status: IdentityStatus::Unregistered,
                    app_id: None,
                    key: format!("{}:{}", primary.kind.as_str(), primary.value),
                    matched: None,
                    assumed_by: None,
                },
                None => ResolvedIdentity {
                    status: IdentityStatus::Anonymous,
                    app_id: None,
                    key: "anonymous".to_string(),
                    matched: None,
                    assumed_by: None,
                },
            },
        };
        event.identity = Some(identity);
    }

    /// The app a single principal form belongs to, with the form that matched.
    fn match_ref(
        &self,
        registry: &Registry,
        kind: PrincipalKind,
        value: &str,
    ) -> Option<(String, PrincipalRef)> {
        let found = |app: &Arc<App>, kind, value: &str| {
            Some((app.id.clone(), PrincipalRef::new(kind, value)))
        };
        if let Some(app) = registry.lookup(kind, value) {
            return found(app, kind, value);
        }
        match kind {
            PrincipalKind::AccessKey | PrincipalKind::VaultAccessor => self
                .issued
                .get(value)
                .map(|app_id| (app_id.to_string(), PrincipalRef::new(kind, value))),
            PrincipalKind::RoleArn => {
                let role = role_arn_of_session(value)?;
                let app = registry.lookup(PrincipalKind::RoleArn, &role)?;
                found(app, kind, &role)
            }
            _ => None,
        }
    }
}

/// `arn:aws:sts::123:assumed-role/Name/session` → `arn:aws:iam::123:role/Name`.
pub fn role_arn_of_session(arn: &str) -> Option<String> {
    let rest = arn.strip_prefix("arn:")?;
    let mut parts = rest.splitn(5, ':');
    let partition = parts.next()?;
    let service = parts.next()?;
    let _region = parts.next()?;
    let account = parts.next()?;
    let resource = parts.next()?;
    if service != "sts" {
        return None;
    }
    let role = resource.strip_prefix("assumed-role/")?.split('/').next()?;
    if role.is_empty() {
        return None;
    }
    Some(format!("arn:{partition}:iam::{account}:role/{role}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Product;
    use chrono::Utc;

    const REGISTRY: &str = r#"
apps:
  - id: report-bot
    name: Report bot
    owner: ops@example.com
    risk_tier: internal
    registered_on: 2026-01-01
    identities:
      role_arns: ["arn:aws:iam::111122223333:role/report-bot"]
      vault_roles: [report-bot]
      oauth_client_ids: [0oa-report]
  - id: sync-bot
    name: Sync bot
    owner: ops@example.com
    risk_tier: internal
    registered_on: 2026-01-01
    identities:
      role_arns: ["arn:aws:iam::111122223333:role/sync-bot"]
"#;

    fn event(category: Category, refs: &[(PrincipalKind, &str)]) -> NormalizedEvent {
        let mut e = NormalizedEvent::new(Utc::now(), Product::Cloudtrail, category, "x");
        for (kind, value) in refs {
            e.actor.push(*kind, value);
        }
        e
    }

    /// An AssumeRole of `report-bot`'s role by `caller`, with the given outcome.
    fn assume_report_bot(caller: &str, outcome: Outcome) -> NormalizedEvent {
        let mut issue = event(Category::TokenIssuance, &[(PrincipalKind::RoleArn, caller)]);
        issue.target_principal = Some("arn:aws:iam::111122223333:role/report-bot".into());
        issue.issued_token_id = Some("ASIAEXAMPLE9".into());
        issue.outcome = outcome;
        issue
    }

    #[test]
    fn a_denied_assume_role_on_an_apps_role_is_the_callers_and_issues_nothing() {
        let registry = Registry::parse(REGISTRY, "r").unwrap();
        let mut resolver = Resolver::new(10);
        let attacker = "arn:aws:iam::999988887777:user/mallory";
        let mut denied = assume_report_bot(attacker, Outcome::Failure);
        resolver.resolve(&registry, &mut denied);
        let id = denied.identity.unwrap();
        assert_eq!(id.status, IdentityStatus::Unregistered);
        assert_eq!(id.key, format!("role_arn:{attacker}"));
        assert_eq!(
            resolver.issued_len(),
            0,
            "a failed issuance teaches no credential"
        );

        let mut call = event(
            Category::ApiCall,
            &[(PrincipalKind::AccessKey, "ASIAEXAMPLE9")],
        );
        resolver.resolve(&registry, &mut call);
        assert_eq!(call.identity.unwrap().status, IdentityStatus::Unregistered);
    }

    #[test]
    fn an_app_assuming_another_apps_role_is_visible_as_such() {
        let registry = Registry::parse(REGISTRY, "r").unwrap();
        let mut resolver = Resolver::new(10);
        let mut cross = assume_report_bot(
            "arn:aws:sts::111122223333:assumed-role/sync-bot/job-1",
            Outcome::Success,
        );
        resolver.resolve(&registry, &mut cross);
        let id = cross.identity.unwrap();
        assert_eq!(
            id.key, "app:report-bot",
            "the app that received the credential"
        );
        assert_eq!(id.assumed_by.as_deref(), Some("app:sync-bot"));

        let mut own = assume_report_bot("arn:aws:iam::111122223333:user/ci", Outcome::Success);
        resolver.resolve(&registry, &mut own);
        assert_eq!(own.identity.unwrap().assumed_by, None);
    }

    #[test]
    fn assumed_role_session_resolves_to_its_role_and_learns_issued_keys() {
        let registry = Registry::parse(REGISTRY, "r").unwrap();
        let mut resolver = Resolver::new(10);

        let mut issue = event(
            Category::TokenIssuance,
            &[(PrincipalKind::RoleArn, "arn:aws:iam::111122223333:user/ci")],
        );
        issue.target_principal = Some("arn:aws:iam::111122223333:role/report-bot".into());
        issue.issued_token_id = Some("ASIAEXAMPLE1".into());
        resolver.resolve(&registry, &mut issue);
        assert_eq!(issue.identity.as_ref().unwrap().key, "app:report-bot");

        let mut call = event(
            Category::ApiCall,
            &[(PrincipalKind::AccessKey, "ASIAEXAMPLE1")],
        );
        resolver.resolve(&registry, &mut call);
        let id = call.identity.unwrap();
        assert_eq!(id.status, IdentityStatus::Registered);
        assert_eq!(id.app_id.as_deref(), Some("report-bot"));

        let mut session = event(
            Category::ApiCall,
            &[(
                PrincipalKind::RoleArn,
                "arn:aws:sts::111122223333:assumed-role/report-bot/i-0abc",
            )],
        );
        resolver.resolve(&registry, &mut session);
        assert_eq!(session.identity.unwrap().key, "app:report-bot");
    }

    #[test]
    fn unknown_and_anonymous_keep_their_raw_form() {
        let registry = Registry::parse(REGISTRY, "r").unwrap();
        let mut resolver = Resolver::new(10);
        let mut e = event(
            Category::Authentication,
            &[
                (PrincipalKind::OauthClient, "0oa-shadow"),
                (PrincipalKind::SourceIp, "10.0.0.9"),
            ],
        );
        resolver.resolve(&registry, &mut e);
        let id = e.identity.unwrap();
        assert_eq!(id.status, IdentityStatus::Unregistered);
        assert_eq!(id.key, "oauth_client:0oa-shadow");
        let mut anon = event(Category::EgressRequest, &[]);
        resolver.resolve(&registry, &mut anon);
        assert_eq!(anon.identity.unwrap().status, IdentityStatus::Anonymous);
    }

    #[test]
    fn issued_memory_is_bounded() {
        let mut issued = IssuedCredentials::new(2);
        issued.insert("a", "x");
        issued.insert("b", "x");
        issued.insert("c", "y");
        assert!(issued.get("a").is_none());
        assert_eq!(issued.get("c").map(|s| s.as_ref()), Some("y"));
        assert_eq!(issued.by_token.len(), 2);
    }

    #[test]
    fn session_arn_forms() {
        assert_eq!(
            role_arn_of_session("arn:aws:sts::123:assumed-role/Admin/bob").as_deref(),
            Some("arn:aws:iam::123:role/Admin")
        );
        assert_eq!(role_arn_of_session("arn:aws:iam::123:role/Admin"), None);
        assert_eq!(role_arn_of_session("garbage"), None);
    }
}
