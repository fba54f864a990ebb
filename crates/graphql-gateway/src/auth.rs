//! Who is calling: API keys and JWT bearer tokens, each carrying an owner.

use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::StartError;
use crate::config::AuthConfig;

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The owner whose data the caller sees; `None`: an operator key that
    /// sees every owner.
    pub owner: Option<Uuid>,
    /// Who acts (recorded when acknowledging alerts): the token's `sub`
    /// (a UUID, or a UUID derived from it), or the key's owner.
    pub actor: Uuid,
    /// For logs and rate limits: the key's name or the token's subject.
    pub name: String,
    /// When a token's `exp` passes (an API key does not expire): a
    /// WebSocket opened with it is closed then.
    pub expires: Option<chrono::DateTime<chrono::Utc>>,
}

impl Principal {
    pub fn scope(&self) -> iot_proto::Scope {
        match self.owner {
            None => iot_proto::Scope::Admin,
            Some(o) => iot_proto::Scope::Owner(o.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("no credentials: send Authorization: Bearer <jwt> or X-Api-Key: <key>")]
    Missing,
    #[error("unknown API key")]
    UnknownKey,
    #[error("JWT bearer tokens are not enabled")]
    JwtDisabled,
    #[error("invalid token: {0}")]
    BadToken(String),
}

struct KeyEntry {
    name: String,
    owner: Option<Uuid>,
}

pub struct Authenticator {
    /// By SHA-256 (hex) of the key.
    keys: HashMap<String, KeyEntry>,
    jwt: Option<Jwt>,
}

struct Jwt {
    keys: Vec<(DecodingKey, Validation)>,
    owner_claim: String,
}

/// Derives actor ids from non-UUID subjects.
const ACTOR_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2b1e_9a40_4b7e_8d3e_3c59_7a51_0001);

impl Authenticator {
    pub fn new(config: &AuthConfig) -> Result<Self, StartError> {
        let keys = config
            .api_keys
            .iter()
            .map(|k| {
                let owner = match k.owner.as_str() {
                    "*" => None,
                    o => Some(Uuid::parse_str(o).map_err(|_| StartError::ApiKeyOwner {
                        key: k.name.clone(),
                        owner: k.owner.clone(),
                    })?),
                };
                Ok((
                    k.sha256.to_ascii_lowercase(),
                    KeyEntry {
                        name: k.name.clone(),
                        owner,
                    },
                ))
            })
            .collect::<Result<_, StartError>>()?;
        let jwt = match &config.jwt {
            None => None,
            Some(j) => {
                // One validation per key: jsonwebtoken refuses a key whose
                // family differs from any algorithm listed.
                let validation = |alg: Algorithm| {
                    let mut v = Validation::new(alg);
                    // A configured issuer or audience must be present, not
                    // merely right when present.
                    let mut required = vec!["exp"];
                    if let Some(iss) = &j.issuer {
                        v.set_issuer(&[iss]);
                        required.push("iss");
                    }
                    match &j.audience {
                        Some(aud) => {
                            v.set_audience(&[aud]);
                            required.push("aud");
                        }
                        None => v.validate_aud = false,
                    }
                    v.set_required_spec_claims(&required);
                    v.validate_nbf = true;
                    v
                };
                let mut keys = Vec::new();
                if let Some(s) = &j.hs256_secret {
                    keys.push((
                        DecodingKey::from_secret(s.as_bytes()),
                        validation(Algorithm::HS256),
                    ));
                }
                if let Some(pem) = &j.rs256_public_key_pem {
                    keys.push((
                        DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(StartError::JwtKey)?,
                        validation(Algorithm::RS256),
                    ));
                }
                Some(Jwt {
                    keys,
                    owner_claim: j.owner_claim.clone(),
                })
            }
        };
        Ok(Self { keys, jwt })
    }

    /// The caller of a request with these headers.
    pub fn from_headers(&self, headers: &axum::http::HeaderMap) -> Result<Principal, AuthError> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        self.authenticate(get("authorization"), get("x-api-key"))
    }

    /// The caller of a WebSocket whose `connection_init` payload is
    /// `payload` (`{"Authorization": "Bearer ..."}` or `{"apiKey": "..."}`,
    /// keys case-insensitive), falling back to the upgrade request's headers.
    pub fn from_init_payload(
        &self,
        payload: &serde_json::Value,
        headers: Option<&Principal>,
    ) -> Result<Principal, AuthError> {
        let field = |want: &[&str]| {
            payload.as_object().and_then(|o| {
                o.iter()
                    .find(|(k, _)| want.iter().any(|w| k.eq_ignore_ascii_case(w)))
                    .and_then(|(_, v)| v.as_str())
            })
        };
        match (
            field(&["authorization"]),
            field(&["apikey", "x-api-key", "api_key"]),
        ) {
            (None, None) => headers.cloned().ok_or(AuthError::Missing),
            (auth, key) => self.authenticate(auth, key),
        }
    }

    fn authenticate(
        &self,
        authorization: Option<&str>,
        api_key: Option<&str>,
    ) -> Result<Principal, AuthError> {
        if let Some(key) = api_key {
            return self.api_key(key);
        }
        let Some(auth) = authorization else {
            return Err(AuthError::Missing);
        };
        let (scheme, value) = auth.split_once(' ').ok_or(AuthError::Missing)?;
        if scheme.eq_ignore_ascii_case("apikey") {
            self.api_key(value.trim())
        } else if scheme.eq_ignore_ascii_case("bearer") {
            self.bearer(value.trim())
        } else {
            Err(AuthError::Missing)
        }
    }

    fn api_key(&self, key: &str) -> Result<Principal, AuthError> {
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let k = self.keys.get(&hex).ok_or(AuthError::UnknownKey)?;
        Ok(Principal {
            owner: k.owner,
            actor: k.owner.unwrap_or(Uuid::nil()),
            name: format!("key:{}", k.name),
            expires: None,
        })
    }

    fn bearer(&self, token: &str) -> Result<Principal, AuthError> {
        let jwt = self.jwt.as_ref().ok_or(AuthError::JwtDisabled)?;
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::BadToken(e.to_string()))?;
        let (key, validation) = jwt
            .keys
            .iter()
            .find(|(_, v)| v.algorithms.contains(&header.alg))
            .ok_or_else(|| {
                AuthError::BadToken(format!("algorithm {:?} not accepted", header.alg))
            })?;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token, key, validation,
        )
        .map_err(|e| AuthError::BadToken(e.to_string()))?;
        let claims = data.claims;
        let owner = claims
            .get(&jwt.owner_claim)
            .and_then(|v| v.as_str())
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| {
                AuthError::BadToken(format!("claim {:?} must be an owner UUID", jwt.owner_claim))
            })?;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let actor =
            Uuid::parse_str(sub).unwrap_or_else(|_| Uuid::new_v5(&ACTOR_NAMESPACE, sub.as_bytes()));
        // `exp` is required and checked by the validation above.
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_i64)
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0));
        Ok(Principal {
            owner: Some(owner),
            actor,
            name: format!("jwt:{sub}"),
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiKey, JwtConfig};
    use jsonwebtoken::{EncodingKey, Header};

    fn sha(s: &str) -> String {
        Sha256::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn auth() -> Authenticator {
        Authenticator::new(&AuthConfig {
            api_keys: vec![ApiKey {
                name: "a".into(),
                sha256: sha("key-a"),
                owner: "00000000-0000-0000-0000-00000000000a".into(),
            }],
            jwt: Some(JwtConfig {
                hs256_secret: Some("s3cret".into()),
                issuer: Some("me".into()),
                ..Default::default()
            }),
        })
        .unwrap()
    }

    fn token(claims: serde_json::Value, secret: &str) -> String {
        jsonwebtoken::encode(
            &Header::default(),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn api_keys_and_tokens_carry_their_owner() {
        let a = auth();
        let p = a.authenticate(None, Some("key-a")).unwrap();
        assert_eq!(
            p.owner.unwrap().to_string(),
            "00000000-0000-0000-0000-00000000000a"
        );
        assert_eq!(a.authenticate(Some("ApiKey key-a"), None).unwrap(), p);
        assert_eq!(
            a.authenticate(None, Some("key-b")),
            Err(AuthError::UnknownKey)
        );
        assert_eq!(a.authenticate(None, None), Err(AuthError::Missing));

        let owner = Uuid::new_v4();
        let exp = chrono::Utc::now().timestamp() + 60;
        let good = token(
            serde_json::json!({"sub": "alice", "owner": owner.to_string(), "iss": "me", "exp": exp}),
            "s3cret",
        );
        let p = a
            .authenticate(Some(&format!("Bearer {good}")), None)
            .unwrap();
        assert_eq!(p.owner, Some(owner));
        assert_eq!(p.actor, Uuid::new_v5(&ACTOR_NAMESPACE, b"alice"));

        for bad in [
            token(
                serde_json::json!({"owner": owner.to_string(), "iss": "me", "exp": exp}),
                "wrong",
            ),
            token(
                serde_json::json!({"owner": owner.to_string(), "iss": "other", "exp": exp}),
                "s3cret",
            ),
            token(
                serde_json::json!({"owner": owner.to_string(), "iss": "me", "exp": 1000}),
                "s3cret",
            ),
            token(
                serde_json::json!({"owner": "nope", "iss": "me", "exp": exp}),
                "s3cret",
            ),
            token(
                serde_json::json!({"owner": owner.to_string(), "iss": "me"}),
                "s3cret",
            ),
            // A configured issuer must be there, not only right if there.
            token(
                serde_json::json!({"owner": owner.to_string(), "exp": exp}),
                "s3cret",
            ),
            // Not valid yet.
            token(
                serde_json::json!({"owner": owner.to_string(), "iss": "me", "exp": exp + 1200, "nbf": exp + 600}),
                "s3cret",
            ),
        ] {
            let got = a.authenticate(Some(&format!("Bearer {bad}")), None);
            assert!(matches!(got, Err(AuthError::BadToken(_))), "{got:?}");
        }
    }

    #[test]
    fn hs256_still_works_when_rs256_is_configured_too() {
        // Any RSA public key will do: no token here is signed with it.
        let pem = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1LfVLPHCozMxH2Mo
4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u
+qKhbwKfBstIs+bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyeh
kd3qqGElvW/VDL5AaWTg0nLVkjRo9z+40RQzuVaE8AkAFmxZzow3x+VJYKdjykkJ
0iT9wCS0DRTXu269V264Vf/3jvredZiKRkgwlL9xNAwxXFg0x/XFw005UWVRIkdg
cKWTjpBP2dPwVZ4WWC+9aGVd+Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbc
mwIDAQAB
-----END PUBLIC KEY-----";
        let a = Authenticator::new(&AuthConfig {
            api_keys: vec![],
            jwt: Some(JwtConfig {
                hs256_secret: Some("s3cret".into()),
                rs256_public_key_pem: Some(pem.into()),
                ..Default::default()
            }),
        })
        .unwrap();
        let owner = Uuid::new_v4();
        let exp = chrono::Utc::now().timestamp() + 60;
        let t = token(
            serde_json::json!({"sub": "bob", "owner": owner.to_string(), "exp": exp}),
            "s3cret",
        );
        let p = a.authenticate(Some(&format!("Bearer {t}")), None).unwrap();
        assert_eq!(p.owner, Some(owner));
    }

    #[test]
    fn rs256_tokens_signed_with_the_configured_key_are_accepted() {
        let a = Authenticator::new(&AuthConfig {
            api_keys: vec![],
            jwt: Some(JwtConfig {
                rs256_public_key_pem: Some(include_str!("testdata/rs256-test.pub.pem").into()),
                ..Default::default()
            }),
        })
        .unwrap();
        let rs256 = |claims: serde_json::Value, private_pem: &str| {
            jsonwebtoken::encode(
                &jsonwebtoken::Header::new(Algorithm::RS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).unwrap(),
            )
            .unwrap()
        };
        let owner = Uuid::new_v4();
        let exp = chrono::Utc::now().timestamp() + 60;
        let claims = serde_json::json!({"sub": "carol", "owner": owner.to_string(), "exp": exp});
        let t = rs256(claims.clone(), include_str!("testdata/rs256-test.key.pem"));
        let p = a.authenticate(Some(&format!("Bearer {t}")), None).unwrap();
        assert_eq!(p.owner, Some(owner));
        assert_eq!(p.actor, Uuid::new_v5(&ACTOR_NAMESPACE, b"carol"));
        for bad in [
            // Signed with another key.
            rs256(claims.clone(), include_str!("testdata/rs256-other.key.pem")),
            // Expired.
            rs256(
                serde_json::json!({"owner": owner.to_string(), "exp": 1000}),
                include_str!("testdata/rs256-test.key.pem"),
            ),
            // HS256 when only an RS256 key is configured.
            token(claims.clone(), "s3cret"),
        ] {
            let got = a.authenticate(Some(&format!("Bearer {bad}")), None);
            assert!(matches!(got, Err(AuthError::BadToken(_))), "{got:?}");
        }
    }

    #[test]
    fn websocket_init_payloads_authenticate() {
        let a = auth();
        let p = a
            .from_init_payload(&serde_json::json!({"apiKey": "key-a"}), None)
            .unwrap();
        assert_eq!(p.name, "key:a");
        assert_eq!(
            a.from_init_payload(&serde_json::json!({}), None),
            Err(AuthError::Missing)
        );
        assert_eq!(
            a.from_init_payload(&serde_json::json!({}), Some(&p))
                .unwrap(),
            p
        );
    }
}
