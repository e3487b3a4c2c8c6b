//! Vendor-format record builders for the generator, shaped like the real samples in `tests/fixtures/vendor/`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::{Family, GatewayVendor, GeneratedRecord, Rng, SecretsVendor, SimApp, SsoVendor};

/// Writes vendor records; keeps the ids it hands out deterministic.
pub struct RecordWriter {
    rng: Rng,
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn record(family: Family, time: DateTime<Utc>, key: &str, value: &Value) -> GeneratedRecord {
    GeneratedRecord {
        family,
        time,
        key: key.to_string(),
        payload: serde_json::to_vec(value).unwrap_or_default(),
        malformed: false,
    }
}

impl RecordWriter {
    pub fn new(seed: u64) -> Self {
        RecordWriter {
            rng: Rng::new(seed ^ 0x7265_636f_7264),
        }
    }

    fn uuid(&mut self) -> String {
        let h = self.rng.hex(32);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    fn access_key(&mut self, app: &SimApp, hour: i64) -> String {
        // One STS key per app per hour, so the key used is the one last issued.
        let tag: String = app
            .id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(8)
            .collect();
        format!(
            "ASIA{}{:08}",
            tag.to_ascii_uppercase(),
            hour.rem_euclid(100_000_000)
        )
    }

    /// An OAuth token grant (Okta) or a service-principal sign-in (Entra).
    pub fn sso_token(
        &mut self,
        app: &SimApp,
        t: DateTime<Utc>,
        ip: &str,
        country: &str,
        _foreign: bool,
    ) -> GeneratedRecord {
        let value = match app.sso {
            SsoVendor::Okta => json!({
                "uuid": self.uuid(),
                "published": rfc3339(t),
                "eventType": "app.oauth2.as.token.grant.access_token",
                "version": "0",
                "severity": "INFO",
                "displayMessage": "OAuth2 access token is granted",
                "actor": {"id": app.client_id, "type": "PublicClientApp", "alternateId": app.client_id, "displayName": app.id},
                "client": {"ipAddress": ip, "userAgent": {"rawUserAgent": "python-requests/2.32"},
                           "geographicalContext": {"country": country}},
                "outcome": {"result": "SUCCESS"},
                "target": [{"id": format!("AT.{}", self.rng.hex(20)), "type": "access_token", "alternateId": "access token"}],
                "transaction": {"type": "WEB", "id": self.rng.hex(16)},
            }),
            SsoVendor::Entra => json!({
                "time": rfc3339(t),
                "resourceId": "/tenants/5f1c0000-0000-4000-8000-00000000aaaa/providers/Microsoft.aadiam",
                "operationName": "Sign-in activity",
                "category": "ServicePrincipalSignInLogs",
                "tenantId": "5f1c0000-0000-4000-8000-00000000aaaa",
                "resultType": "0",
                "callerIpAddress": ip,
                "correlationId": self.uuid(),
                "properties": {
                    "id": self.uuid(),
                    "createdDateTime": rfc3339(t),
                    "appId": app.client_id,
                    "servicePrincipalId": self.uuid(),
                    "servicePrincipalName": app.id,
                    "ipAddress": ip,
                    "location": {"countryOrRegion": country},
                    "resourceDisplayName": "Microsoft Graph",
                    "status": {"errorCode": 0},
                    "uniqueTokenIdentifier": self.rng.hex(22),
                    "clientCredentialType": "clientSecret"
                }
            }),
        };
        record(Family::Sso, t, &app.client_id, &value)
    }

    /// An employee signing in to the Okta dashboard or an SSO app (an Okta `User` actor).
    pub fn person_sign_in(
        &mut self,
        email: &str,
        t: DateTime<Utc>,
        ip: &str,
        country: &str,
    ) -> GeneratedRecord {
        let event_type = if self.rng.below(4) == 0 {
            "user.session.start"
        } else {
            "user.authentication.sso"
        };
        let value = json!({
            "uuid": self.uuid(),
            "published": rfc3339(t),
            "eventType": event_type,
            "version": "0",
            "severity": "INFO",
            "displayMessage": "User single sign on to app",
            "actor": {"id": format!("00u{}", self.rng.hex(17)), "type": "User", "alternateId": email, "displayName": email},
            "client": {"ipAddress": ip, "userAgent": {"rawUserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5)"},
                       "geographicalContext": {"country": country}},
            "outcome": {"result": "SUCCESS"},
            "transaction": {"type": "WEB", "id": self.rng.hex(16)},
        });
        record(Family::Sso, t, email, &value)
    }

    /// Cloud credentials (STS AssumeRole) or a Vault AppRole login.
    pub fn secrets_login(
        &mut self,
        app: &SimApp,
        t: DateTime<Utc>,
        region: &str,
        ip: &str,
    ) -> GeneratedRecord {
        let hour = t.timestamp() / 3600;
        let value = match app.secrets {
            SecretsVendor::Cloudtrail => json!({
                "eventVersion": "1.08",
                "userIdentity": {"type": "AWSService", "invokedBy": "ec2.amazonaws.com"},
                "eventTime": t.to_rfc3339_opts(SecondsFormat::Secs, true),
                "eventSource": "sts.amazonaws.com",
                "eventName": "AssumeRole",
                "awsRegion": region,
                "sourceIPAddress": "ec2.amazonaws.com",
                "userAgent": "ec2.amazonaws.com",
                "requestParameters": {"roleArn": app.role_arn, "roleSessionName": format!("i-{}", self.rng.hex(12))},
                "responseElements": {"credentials": {
                    "accessKeyId": self.access_key(app, hour),
                    "sessionToken": "IQoJb3JpZ2luX2VjEXAMPLE",
                    "expiration": "Nov 23, 2026, 1:00:00 PM"}},
                "eventID": self.uuid(),
                "readOnly": true,
                "eventType": "AwsApiCall",
                "recipientAccountId": app.account,
                "eventCategory": "Management",
            }),
            SecretsVendor::Vault => json!({
                "time": t.to_rfc3339_opts(SecondsFormat::Micros, true),
                "type": "response",
                "auth": {"token_type": "default"},
                "request": {"id": self.uuid(), "operation": "update", "mount_type": "approle",
                            "path": "auth/approle/login", "remote_address": ip, "namespace": {"id": "root"}},
                "response": {"auth": {
                    "client_token": format!("hmac-sha256:{}", self.rng.hex(64)),
                    "accessor": format!("hmac-sha256:{}", self.rng.hex(64)),
                    "display_name": "approle",
                    "policies": ["default", app.vault_role.clone()],
                    "metadata": {"role_name": app.vault_role},
                    "entity_id": "",
                    "token_type": "service",
                    "token_ttl": 3600}, "mount_type": "approle"},
            }),
        };
        record(Family::Secrets, t, &app.id, &value)
    }

    /// One secret read (CloudTrail GetSecretValue with the app's current STS key, or a Vault KV read).
    pub fn secret_read(
        &mut self,
        app: &SimApp,
        t: DateTime<Utc>,
        secret: &str,
        region: &str,
        ip: &str,
    ) -> GeneratedRecord {
        let value = match app.secrets {
            SecretsVendor::Cloudtrail => {
                let key = self.access_key(app, t.timestamp() / 3600);
                json!({
                    "eventVersion": "1.08",
                    "userIdentity": self.assumed_role(app, &key),
                    "eventTime": t.to_rfc3339_opts(SecondsFormat::Secs, true),
                    "eventSource": "secretsmanager.amazonaws.com",
                    "eventName": "GetSecretValue",
                    "awsRegion": region,
                    "sourceIPAddress": ip,
                    "userAgent": "Boto3/1.35.0",
                    "requestParameters": {"secretId": format!("arn:aws:secretsmanager:{}:{}:secret:{}", app.region, app.account, secret)},
                    "responseElements": null,
                    "eventID": self.uuid(),
                    "readOnly": true,
                    "eventType": "AwsApiCall",
                    "recipientAccountId": app.account,
                    "eventCategory": "Management",
                })
            }
            SecretsVendor::Vault => {
                self.vault_line(app, t, "read", &format!("secret/data/{secret}"), ip)
            }
        };
        record(Family::Secrets, t, &app.id, &value)
    }

    /// A secrets listing (enumeration).
    pub fn secret_list(
        &mut self,
        app: &SimApp,
        t: DateTime<Utc>,
        region: &str,
        ip: &str,
    ) -> GeneratedRecord {
        let value = match app.secrets {
            SecretsVendor::Cloudtrail => {
                let key = self.access_key(app, t.timestamp() / 3600);
                json!({
                    "eventVersion": "1.08",
                    "userIdentity": self.assumed_role(app, &key),
                    "eventTime": t.to_rfc3339_opts(SecondsFormat::Secs, true),
                    "eventSource": "secretsmanager.amazonaws.com",
                    "eventName": "ListSecrets",
                    "awsRegion": region,
                    "sourceIPAddress": ip,
                    "requestParameters": {"maxResults": 100},
                    "responseElements": null,
                    "eventID": self.uuid(),
                    "readOnly": true,
                    "eventType": "AwsApiCall",
                    "recipientAccountId": app.account,
                })
            }
            SecretsVendor::Vault => self.vault_line(app, t, "list", "secret/metadata/", ip),
        };
        record(Family::Secrets, t, &app.id, &value)
    }

    fn assumed_role(&mut self, app: &SimApp, key: &str) -> Value {
        json!({
            "type": "AssumedRole",
            "principalId": format!("AROA{}:i-0abc", self.rng.hex(12).to_ascii_uppercase()),
            "arn": format!("arn:aws:sts::{}:assumed-role/{}/i-0abc", app.account, app.id),
            "accountId": app.account,
            "accessKeyId": key,
            "sessionContext": {
                "sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLE", "arn": app.role_arn,
                                  "accountId": app.account, "userName": app.id},
                "attributes": {"creationDate": "2026-11-23T00:00:00Z", "mfaAuthenticated": "false"}
            }
        })
    }

    fn vault_line(
        &mut self,
        app: &SimApp,
        t: DateTime<Utc>,
        operation: &str,
        path: &str,
        ip: &str,
    ) -> Value {
        let accessor = format!("hmac-sha256:{}", self.rng.hex(64));
        json!({
            "time": t.to_rfc3339_opts(SecondsFormat::Micros, true),
            "type": "response",
            "auth": {"client_token": format!("hmac-sha256:{}", self.rng.hex(64)), "accessor": accessor,
                     "display_name": "approle", "policies": ["default", app.vault_role.clone()],
                     "metadata": {"role_name": app.vault_role}, "entity_id": "", "token_type": "service"},
            "request": {"id": self.uuid(), "operation": operation, "mount_type": "kv",
                        "client_token_accessor": accessor, "path": path, "remote_address": ip,
                        "namespace": {"id": "root"}},
            "response": {"mount_type": "kv", "data": {"data": format!("hmac-sha256:{}", self.rng.hex(64))}},
        })
    }

    /// An API call through the app's gateway or egress proxy to `domain`.
    pub fn gateway_call(
        &mut self,
        app: &SimApp,
        t: DateTime<Utc>,
        domain: &str,
        consumer: &str,
        ip: &str,
    ) -> GeneratedRecord {
        let status = if self.rng.below(100) < 2 { 502 } else { 200 };
        let (req, resp) = (200 + self.rng.below(4000), 300 + self.rng.below(40_000));
        let payload = match app.gateway {
            GatewayVendor::Kong => serde_json::to_vec(&json!({
                "request": {"method": "POST", "uri": "/v1/chat/completions", "url": format!("https://{domain}:443/v1/chat/completions"),
                            "size": req, "querystring": {}, "headers": {"host": domain, "x-request-id": self.uuid(), "user-agent": "httpx/0.27"}},
                "upstream_uri": "/v1/chat/completions",
                "response": {"status": status, "size": resp, "headers": {"content-type": "application/json"}},
                "tries": [{"ip": "104.18.7.192", "port": 443, "balancer_latency": 0}],
                "authenticated_entity": {"id": self.uuid()},
                "consumer": {"id": self.uuid(), "username": consumer, "created_at": 1_730_000_000},
                "route": {"id": self.uuid(), "name": "egress-llm", "paths": ["/v1"], "protocols": ["https"]},
                "service": {"id": self.uuid(), "name": "egress", "host": domain, "port": 443, "protocol": "https"},
                "latencies": {"kong": 2, "proxy": 180 + self.rng.below(400), "request": 190 + self.rng.below(400)},
                "client_ip": ip,
                "started_at": t.timestamp_millis(),
                "workspace": "0d8ab1e4-0000-4000-8000-000000000001"
            })),
            GatewayVendor::Envoy => serde_json::to_vec(&json!({
                "start_time": rfc3339(t),
                "method": "POST",
                "path": "/v1/messages",
                "protocol": "HTTP/1.1",
                "response_code": status,
                "response_flags": if status == 200 { "-" } else { "UF" },
                "bytes_received": req,
                "bytes_sent": resp,
                "duration": 150 + self.rng.below(500),
                "upstream_service_time": "140",
                "x_forwarded_for": null,
                "user_agent": "node-fetch/3.3",
                "request_id": self.uuid(),
                "authority": domain,
                "upstream_host": "104.18.7.192:443",
                "upstream_cluster": format!("outbound|443||{domain}"),
                "downstream_remote_address": format!("{ip}:{}", 30000 + self.rng.below(30000)),
                "downstream_peer_uri_san": format!("spiffe://cluster.local/ns/apps/sa/{}", consumer),
                "route_name": "allow_egress",
            })),
            GatewayVendor::Squid => {
                let line = format!(
                    "{}.{:03} {:6} {} TCP_TUNNEL/{} {} CONNECT {}:443 {} HIER_DIRECT/104.18.7.192 -",
                    t.timestamp(),
                    t.timestamp_subsec_millis(),
                    100 + self.rng.below(2000),
                    ip,
                    status,
                    resp,
                    domain,
                    consumer
                );
                Ok(line.into_bytes())
            }
        }
        .unwrap_or_default();
        GeneratedRecord {
            family: Family::Gateway,
            time: t,
            key: consumer.to_string(),
            payload,
            malformed: false,
        }
    }

    /// A Secrets Manager read signed with an IAM user's long-lived access key (a person's credential).
    pub fn personal_key_call(
        &mut self,
        user_arn: &str,
        t: DateTime<Utc>,
        ip: &str,
        user_agent: &str,
    ) -> GeneratedRecord {
        let name = user_arn.rsplit('/').next().unwrap_or(user_arn);
        let tag: String = name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect::<String>()
            .to_ascii_uppercase();
        let value = json!({
            "eventVersion": "1.08",
            "userIdentity": {"type": "IAMUser", "principalId": format!("AIDA{tag}"),
                             "arn": user_arn, "accountId": "111122220000",
                             "accessKeyId": format!("AKIA{tag:0<16}"), "userName": name},
            "eventTime": t.to_rfc3339_opts(SecondsFormat::Secs, true),
            "eventSource": "secretsmanager.amazonaws.com",
            "eventName": "GetSecretValue",
            "awsRegion": "us-east-1",
            "sourceIPAddress": ip,
            "userAgent": user_agent,
            "requestParameters": {"secretId": "arn:aws:secretsmanager:us-east-1:111122220000:secret:team/reporting-db"},
            "responseElements": null,
            "eventID": self.uuid(),
            "readOnly": true,
            "eventType": "AwsApiCall",
            "recipientAccountId": "111122220000",
            "eventCategory": "Management",
        });
        record(Family::Secrets, t, name, &value)
    }

    /// An IAM access key created by a principal that is not the onboarding flow.
    pub fn create_access_key(
        &mut self,
        t: DateTime<Utc>,
        actor: &str,
        user: &str,
    ) -> GeneratedRecord {
        let value = json!({
            "eventVersion": "1.08",
            "userIdentity": {"type": "IAMUser", "principalId": "AIDAEXAMPLECONTRACTOR",
                             "arn": format!("arn:aws:iam::111122220000:user/{actor}"),
                             "accountId": "111122220000", "accessKeyId": "AKIAEXAMPLECONTRACT", "userName": actor},
            "eventTime": t.to_rfc3339_opts(SecondsFormat::Secs, true),
            "eventSource": "iam.amazonaws.com",
            "eventName": "CreateAccessKey",
            "awsRegion": "us-east-1",
            "sourceIPAddress": "198.51.100.23",
            "userAgent": "aws-cli/2.17.0",
            "requestParameters": {"userName": user},
            "responseElements": {"accessKey": {"accessKeyId": "AKIAEXAMPLESHADOW01", "status": "Active", "userName": user}},
            "eventID": self.uuid(),
            "readOnly": false,
            "eventType": "AwsApiCall",
            "recipientAccountId": "111122220000",
        });
        record(Family::Secrets, t, actor, &value)
    }

    /// A deliberately broken record of a random family.
    pub fn malformed(&mut self, rng: &mut Rng, t: DateTime<Utc>) -> GeneratedRecord {
        let family = Family::ALL[rng.below(3) as usize];
        let payload: Vec<u8> = match rng.below(4) {
            0 => br#"{"eventVersion":"1.08","eventTime":"2026-11-23T1"#.to_vec(),
            1 => br#"{"published":"not a time","eventType":"user.session.start","actor":{"id":"x","type":"User"}}"#.to_vec(),
            2 => b"GET /healthz HTTP/1.1 200 -".to_vec(),
            _ => vec![0xff, 0xfe, 0x00, 0x7b],
        };
        GeneratedRecord {
            family,
            time: t,
            key: "malformed".into(),
            payload,
            malformed: true,
        }
    }
}
