//! The micro-app registry: the inventory of apps, their owners and the identities they use.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use crate::event::PrincipalKind;

/// The registry file (YAML): `apps: [...]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryFile {
    pub apps: Vec<App>,
}

/// One registered micro-app.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// Stable id, used in alerts and as the identity key (`app:<id>`).
    pub id: String,
    /// Human name.
    pub name: String,
    /// Owner (person or mailbox) who answers for the app.
    pub owner: String,
    /// Escalation contact when the owner does not answer.
    #[serde(default)]
    pub escalation: Option<String>,
    /// Team that runs the app.
    #[serde(default)]
    pub team: Option<String>,
    /// Why the app exists and needs its access.
    #[serde(default)]
    pub justification: Option<String>,
    /// Data classes the app touches (e.g. `pii`, `financial`, `source_code`).
    #[serde(default)]
    pub data_classes: Vec<String>,
    /// Risk tier.
    pub risk_tier: RiskTier,
    /// Risk factors; their sum is the app's risk score.
    #[serde(default)]
    pub risk: RiskFactors,
    /// The identities the app acts as.
    #[serde(default)]
    pub identities: AppIdentities,
    /// Egress domains the app may call (a leading `*.` allows subdomains).
    #[serde(default)]
    pub egress_allowlist: Vec<String>,
    /// Regions the app may run in: cloud regions (`eu-west-1`) or ISO country codes (`DE`).
    #[serde(default)]
    pub allowed_regions: Vec<String>,
    /// When the app was registered.
    pub registered_on: NaiveDate,
    /// When the registration was last renewed (renewals are due every 90 days).
    #[serde(default)]
    pub renewed_on: Option<NaiveDate>,
}

/// Risk tiers, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskTier {
    Public,
    Internal,
    Restricted,
    Regulated,
}

impl RiskTier {
    pub fn as_str(self) -> &'static str {
        match self {
            RiskTier::Public => "public",
            RiskTier::Internal => "internal",
            RiskTier::Restricted => "restricted",
            RiskTier::Regulated => "regulated",
        }
    }
}

/// The usual micro-app risk heuristic: data class 0/1/3/5 + permission breadth
/// 0/2/5 + external connectivity 0/1/3 + known vulnerabilities 0/2/5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskFactors {
    #[serde(default)]
    pub data_class: u8,
    #[serde(default)]
    pub permission_breadth: u8,
    #[serde(default)]
    pub external_connectivity: u8,
    #[serde(default)]
    pub known_vulnerabilities: u8,
}

/// What a risk score means for the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskVerdict {
    Ok,
    /// 8 or more: needs a review.
    Review,
    /// 12 or more: should be blocked.
    Blocked,
}

impl RiskFactors {
    pub fn score(&self) -> u8 {
        self.data_class
            + self.permission_breadth
            + self.external_connectivity
            + self.known_vulnerabilities
    }

    pub fn verdict(&self) -> RiskVerdict {
        match self.score() {
            s if s >= 12 => RiskVerdict::Blocked,
            s if s >= 8 => RiskVerdict::Review,
            _ => RiskVerdict::Ok,
        }
    }

    fn validate(&self) -> Result<(), String> {
        let checks: [(&str, u8, &[u8]); 4] = [
            ("data_class", self.data_class, &[0, 1, 3, 5]),
            ("permission_breadth", self.permission_breadth, &[0, 2, 5]),
            (
                "external_connectivity",
                self.external_connectivity,
                &[0, 1, 3],
            ),
            (
                "known_vulnerabilities",
                self.known_vulnerabilities,
                &[0, 2, 5],
            ),
        ];
        for (name, value, allowed) in checks {
            if !allowed.contains(&value) {
                return Err(format!(
                    "risk.{name} is {value}; allowed values are {allowed:?}"
                ));
            }
        }
        Ok(())
    }
}

/// Every principal form an app acts as. Each value belongs to one app only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppIdentities {
    /// OAuth / OIDC client ids (Okta app client ids, Entra application ids, service principal ids).
    #[serde(default)]
    pub oauth_client_ids: Vec<String>,
    /// Cloud principal ARNs (IAM roles and users). Assumed-role sessions of a role match it.
    #[serde(default)]
    pub role_arns: Vec<String>,
    /// Long-lived cloud access key ids (keys issued by STS to the app's roles are learned).
    #[serde(default)]
    pub access_key_ids: Vec<String>,
    /// Vault roles (AppRole, Kubernetes, JWT role names).
    #[serde(default)]
    pub vault_roles: Vec<String>,
    /// Vault identity entity ids.
    #[serde(default)]
    pub vault_entities: Vec<String>,
    /// Vault token display names.
    #[serde(default)]
    pub vault_display_names: Vec<String>,
    /// Gateway consumers: Kong consumer usernames/ids, mesh workload ids (SPIFFE), proxy users.
    #[serde(default)]
    pub gateway_consumers: Vec<String>,
    /// User names the app signs in as (service accounts).
    #[serde(default)]
    pub users: Vec<String>,
}

impl AppIdentities {
    fn forms(&self) -> impl Iterator<Item = (PrincipalKind, &str)> {
        let lists: [(PrincipalKind, &Vec<String>); 8] = [
            (PrincipalKind::OauthClient, &self.oauth_client_ids),
            (PrincipalKind::RoleArn, &self.role_arns),
            (PrincipalKind::AccessKey, &self.access_key_ids),
            (PrincipalKind::VaultRole, &self.vault_roles),
            (PrincipalKind::VaultEntity, &self.vault_entities),
            (PrincipalKind::VaultDisplayName, &self.vault_display_names),
            (PrincipalKind::GatewayConsumer, &self.gateway_consumers),
            (PrincipalKind::User, &self.users),
        ];
        lists
            .into_iter()
            .flat_map(|(kind, values)| values.iter().map(move |v| (kind, v.as_str())))
    }
}

/// Why a registry file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read registry {path}: {message}")]
    Read { path: String, message: String },
    #[error("registry {path} is not valid: {message}")]
    Parse { path: String, message: String },
    #[error("registry {path}: app `{app}`: {message}")]
    Invalid {
        path: String,
        app: String,
        message: String,
    },
}

/// A loaded, validated registry with an index from principal to app.
#[derive(Debug, Default)]
pub struct Registry {
    apps: Vec<Arc<App>>,
    /// Principal value → the (form, app index) pairs it names; keyed by value alone so
    /// lookups borrow the event's string instead of allocating a key.
    by_principal: HashMap<String, Vec<(PrincipalKind, usize)>>,
    by_id: HashMap<String, usize>,
}

impl Registry {
    pub fn load(path: &Path) -> Result<Registry, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|e| RegistryError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates registry YAML; `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Registry, RegistryError> {
        let file: RegistryFile = serde_yaml::from_str(text).map_err(|e| RegistryError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        Self::build(file, origin)
    }

    pub fn build(file: RegistryFile, origin: &str) -> Result<Registry, RegistryError> {
        let invalid = |app: &str, message: String| RegistryError::Invalid {
            path: origin.to_string(),
            app: app.to_string(),
            message,
        };
        let mut registry = Registry::default();
        for app in file.apps {
            if app.id.trim().is_empty() {
                return Err(invalid("", "id must not be empty".into()));
            }
            if app.owner.trim().is_empty() {
                return Err(invalid(&app.id, "owner must not be empty".into()));
            }
            app.risk.validate().map_err(|m| invalid(&app.id, m))?;
            if let Some(renewed) = app.renewed_on
                && renewed < app.registered_on
            {
                return Err(invalid(
                    &app.id,
                    "renewed_on is before registered_on".into(),
                ));
            }
            let index = registry.apps.len();
            if registry.by_id.insert(app.id.clone(), index).is_some() {
                return Err(invalid(&app.id, "id is used by two apps".into()));
            }
            for (kind, value) in app.identities.forms() {
                let value = value.trim();
                if value.is_empty() {
                    return Err(invalid(
                        &app.id,
                        format!("an empty {} identity", kind.as_str()),
                    ));
                }
                let entry = registry.by_principal.entry(value.to_string()).or_default();
                if let Some(&(_, other)) = entry.iter().find(|(k, _)| *k == kind) {
                    return Err(invalid(
                        &app.id,
                        format!(
                            "{} `{value}` also belongs to app `{}`",
                            kind.as_str(),
                            registry.apps[other].id
                        ),
                    ));
                }
                entry.push((kind, index));
            }
            registry.apps.push(Arc::new(app));
        }
        Ok(registry)
    }

    pub fn apps(&self) -> &[Arc<App>] {
        &self.apps
    }

    pub fn app(&self, id: &str) -> Option<&Arc<App>> {
        self.by_id.get(id).map(|&i| &self.apps[i])
    }

    /// The app a principal form belongs to.
    pub fn lookup(&self, kind: PrincipalKind, value: &str) -> Option<&Arc<App>> {
        let entries = self.by_principal.get(value)?;
        let &(_, index) = entries.iter().find(|(k, _)| *k == kind)?;
        Some(&self.apps[index])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
apps:
  - id: invoice-bot
    name: Invoice bot
    owner: alice@example.com
    escalation: finance-oncall@example.com
    team: finance
    data_classes: [financial, pii]
    risk_tier: restricted
    risk: { data_class: 3, permission_breadth: 2, external_connectivity: 3, known_vulnerabilities: 0 }
    identities:
      oauth_client_ids: [0oa1invoicebot]
      role_arns: ["arn:aws:iam::111122223333:role/invoice-bot"]
      gateway_consumers: [invoice-bot]
    egress_allowlist: [api.stripe.com, "*.slack.com"]
    allowed_regions: [eu-west-1, DE]
    registered_on: 2026-09-01
    renewed_on: 2026-10-01
  - id: hr-faq-agent
    name: HR FAQ agent
    owner: bob@example.com
    risk_tier: internal
    registered_on: 2026-01-10
"#;

    #[test]
    fn loads_and_indexes_every_form() {
        let r = Registry::parse(SAMPLE, "sample.yaml").unwrap();
        assert_eq!(r.apps().len(), 2);
        let app = r
            .lookup(PrincipalKind::OauthClient, "0oa1invoicebot")
            .unwrap();
        assert_eq!(app.id, "invoice-bot");
        assert_eq!(app.risk.score(), 8);
        assert_eq!(app.risk.verdict(), RiskVerdict::Review);
        assert!(
            r.lookup(
                PrincipalKind::RoleArn,
                "arn:aws:iam::111122223333:role/invoice-bot"
            )
            .is_some()
        );
        assert!(r.lookup(PrincipalKind::User, "0oa1invoicebot").is_none());
        assert_eq!(r.app("hr-faq-agent").unwrap().risk_tier, RiskTier::Internal);
    }

    #[test]
    fn refuses_bad_registries_with_the_app_named() {
        let dup = SAMPLE.replace("hr-faq-agent", "invoice-bot");
        let e = Registry::parse(&dup, "r.yaml").unwrap_err();
        assert!(e.to_string().contains("id is used by two apps"), "{e}");
        let shared = format!("{SAMPLE}    identities:\n      gateway_consumers: [invoice-bot]\n");
        let e = Registry::parse(&shared, "r.yaml").unwrap_err();
        assert!(
            e.to_string().contains("also belongs to app `invoice-bot`"),
            "{e}"
        );
        let risk = SAMPLE.replace("data_class: 3", "data_class: 4");
        let e = Registry::parse(&risk, "r.yaml").unwrap_err();
        assert!(e.to_string().contains("risk.data_class is 4"), "{e}");
        let e = Registry::parse("apps: [{id: x}]", "r.yaml").unwrap_err();
        assert!(
            e.to_string().starts_with("registry r.yaml is not valid"),
            "{e}"
        );
        let e = Registry::parse(&SAMPLE.replace("owner: bob", "ownr: bob"), "r.yaml").unwrap_err();
        assert!(e.to_string().contains("ownr"), "{e}");
    }
}
