//! Bearer tokens (DESIGN §11.2): their format, how they are stored (hashed, through Raft),
//! and the in-memory view every server keeps of them to check calls without a disk read.
//!
//! A token reads `xene_<id>_<secret>`. The store keeps only SHA-256 of the secret under
//! `/xene/tokens/<id>`; checking a call is a map lookup and a constant-time comparison.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio_util::sync::CancellationToken;
use xene_raft_store::{EventKind, KvReader, StoreError};

use crate::error::{Result, ServerError};
use crate::keys;
use crate::node::ClusterNode;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads only.
    Viewer,
    /// The agent API and nothing else: an agent's session credential.
    Agent,
    /// An agent join token: exchanged once for an agent credential, good for nothing else.
    Join,
}

impl Role {
    /// Whether a caller holding `self` may call something that requires `required`.
    pub fn allows(self, required: Role) -> bool {
        matches!((self, required), (Role::Admin, _) | (Role::Viewer, Role::Viewer) | (Role::Agent, Role::Agent))
    }
}

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub created_ms: u64,
    #[serde(default)]
    pub description: String,
    /// When the token stops working, in ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// How many more times a join token may be used, when limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
    #[serde(default)]
    pub revoked: bool,
    /// For an agent credential: the agent it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
}

impl TokenRecord {
    /// Why the token cannot be used at `now_ms`, if it cannot.
    pub fn unusable(&self, now_ms: u64) -> Option<String> {
        if self.revoked {
            return Some(format!("token {} was revoked", self.id));
        }
        if self.expires_ms.is_some_and(|at| now_ms >= at) {
            return Some(format!("token {} has expired; create a new one", self.id));
        }
        if self.uses_left == Some(0) {
            return Some(format!("token {} has been used up; create a new one", self.id));
        }
        None
    }

    /// The kind as the API shows it.
    pub fn kind(&self) -> &'static str {
        match self.role {
            Role::Admin => "admin",
            Role::Viewer => "viewer",
            Role::Agent => "agent-session",
            Role::Join => "agent",
        }
    }
}

/// A freshly minted token: the text to hand out once, and the record to store.
pub struct NewToken {
    pub text: String,
    pub record: TokenRecord,
}

/// Mints a token with a random ID and secret.
pub fn mint(role: Role, description: &str, now_ms: u64) -> NewToken {
    let mut rng = rand::rng();
    let mut id = [0u8; 6];
    let mut secret = [0u8; 24];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let secret = hex::encode(secret);
    let record = TokenRecord {
        id: id.clone(),
        role,
        secret_sha256: hex::encode(Sha256::digest(secret.as_bytes())),
        created_ms: now_ms,
        description: description.to_string(),
        expires_ms: None,
        uses_left: None,
        revoked: false,
        agent: None,
    };
    NewToken { text: format!("xene_{id}_{secret}"), record }
}

/// The caller a valid token identifies.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    /// For an agent credential: the agent.
    pub agent: Option<String>,
}

fn invalid() -> ServerError {
    ServerError::Unauthenticated("invalid token: check --token or XENE_TOKEN".into())
}

fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str> {
    let header = metadata
        .get("authorization")
        .ok_or_else(|| ServerError::Unauthenticated("missing bearer token: pass --token or set XENE_TOKEN".into()))?;
    let header =
        header.to_str().map_err(|_| ServerError::Unauthenticated("authorization metadata is not valid text".into()))?;
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    let token = match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token,
        _ => header,
    };
    Ok(token.trim())
}

/// Splits `xene_<id>_<secret>`.
fn split(text: &str) -> Result<(&str, &str)> {
    let rest = text.strip_prefix("xene_").ok_or_else(invalid)?;
    let (id, secret) = rest.split_once('_').ok_or_else(invalid)?;
    if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    Ok((id, secret))
}

/// Compares the secret with the stored hash in constant time.
fn verify(record: TokenRecord, secret: &str) -> Result<TokenRecord> {
    matches_secret(&record, secret).then_some(record).ok_or_else(invalid)
}

/// Whether `secret` hashes to the record's hash, compared in constant time; the hex digest
/// is written on the stack, as this runs for every call.
fn matches_secret(record: &TokenRecord, secret: &str) -> bool {
    let mut digest = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(secret.as_bytes()), &mut digest).is_ok()
        && bool::from(digest.as_slice().ct_eq(record.secret_sha256.as_bytes()))
}

/// How long a token ID that was looked up and not found is refused without another lookup.
/// IDs are random and minted with their token, so no caller can hold the ID of a token about
/// to be created: the wait can only delay an ID that does not exist.
const MISS_TTL: Duration = Duration::from_secs(2);
/// Most token IDs remembered as missing; past it the expired ones go, and if none has
/// expired, all of them.
const MISSES_MAX: usize = 4_096;

/// Every server's view of the stored tokens, kept current by watching `/xene/tokens/`.
#[derive(Clone, Default)]
pub struct TokenCache {
    tokens: Arc<RwLock<HashMap<String, TokenRecord>>>,
    /// Token IDs looked up lately and not found, with when: calls that carry unknown IDs
    /// cost a linearizable read each (a round to the leader) but once per ID in `MISS_TTL`.
    misses: Arc<Mutex<HashMap<String, Instant>>>,
}

impl TokenCache {
    /// Checks the `authorization: Bearer …` metadata of a call and the role it needs. A token
    /// this server has not seen yet (created a moment ago through another server) is looked
    /// up once with a linearizable read before the call is refused.
    pub async fn authorize(
        &self,
        node: &ClusterNode,
        metadata: &tonic::metadata::MetadataMap,
        required: Role,
    ) -> Result<Caller> {
        let text = bearer(metadata)?;
        let (id, secret) = split(text)?;
        if let Some(answer) = self.check_cached(id, secret, required) {
            return answer;
        }
        let record = self.record_or_load(node, text).await?;
        self.admit(&record, required)
    }

    /// The stored record of a token whose text is valid (right ID and secret), whatever its
    /// state; callers check expiry, uses and revocation.
    pub async fn record_or_load(&self, node: &ClusterNode, text: &str) -> Result<TokenRecord> {
        let (id, secret) = split(text)?;
        if let Some(record) = self.known(id) {
            return verify(record, secret);
        }
        if self.missed_lately(id, Instant::now()) {
            return Err(invalid());
        }
        node.read_barrier().await?;
        let found = node.reader.range(keys::token(id).into_bytes(), false, 0).await?;
        // Not put in the cache: the watch does that in order, and a record read here may be
        // older than one the watch stored meanwhile (a revocation) or gone since.
        match found.kvs.first().and_then(|kv| serde_json::from_slice::<TokenRecord>(&kv.value).ok()) {
            Some(record) => verify(record, secret),
            None => {
                self.remember_miss(id, Instant::now());
                Err(invalid())
            }
        }
    }

    fn missed_lately(&self, id: &str, now: Instant) -> bool {
        let misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        misses.get(id).is_some_and(|at| now.duration_since(*at) < MISS_TTL)
    }

    fn remember_miss(&self, id: &str, now: Instant) {
        let mut misses = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        if misses.len() >= MISSES_MAX {
            misses.retain(|_, at| now.duration_since(*at) < MISS_TTL);
            if misses.len() >= MISSES_MAX {
                misses.clear();
            }
        }
        misses.insert(id.to_string(), now);
    }

    /// Checks a token against this server's view only (no lookup).
    pub fn check(&self, text: &str, required: Role) -> Result<Caller> {
        let (id, secret) = split(text)?;
        self.check_cached(id, secret, required).unwrap_or_else(|| Err(invalid()))
    }

    /// Checks a token whose ID the cache holds where it is stored, without copying its
    /// record (this runs for every call); `None` when the cache does not hold the ID.
    fn check_cached(&self, id: &str, secret: &str, required: Role) -> Option<Result<Caller>> {
        let tokens = self.tokens.read().unwrap_or_else(|p| p.into_inner());
        let record = tokens.get(id)?;
        Some(if matches_secret(record, secret) { self.admit(record, required) } else { Err(invalid()) })
    }

    fn admit(&self, record: &TokenRecord, required: Role) -> Result<Caller> {
        if let Some(reason) = record.unusable(crate::node::now_ms()) {
            return Err(ServerError::Unauthenticated(reason));
        }
        if !record.role.allows(required) {
            return Err(ServerError::PermissionDenied(format!(
                "token {} has role {:?}, this call needs {:?}",
                record.id, record.role, required
            )));
        }
        Ok(Caller { token_id: record.id.clone(), role: record.role, agent: record.agent.clone() })
    }

    fn known(&self, id: &str) -> Option<TokenRecord> {
        self.tokens.read().unwrap_or_else(|p| p.into_inner()).get(id).cloned()
    }

    /// Every stored token record.
    pub fn all(&self) -> Vec<TokenRecord> {
        let mut records: Vec<TokenRecord> =
            self.tokens.read().unwrap_or_else(|p| p.into_inner()).values().cloned().collect();
        records.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then_with(|| a.id.cmp(&b.id)));
        records
    }

    fn replace_all(&self, records: Vec<TokenRecord>) {
        let mut tokens = self.tokens.write().unwrap_or_else(|p| p.into_inner());
        tokens.clear();
        tokens.extend(records.into_iter().map(|r| (r.id.clone(), r)));
    }

    fn upsert(&self, record: TokenRecord) {
        self.misses.lock().unwrap_or_else(|p| p.into_inner()).remove(&record.id);
        self.tokens.write().unwrap_or_else(|p| p.into_inner()).insert(record.id.clone(), record);
    }

    fn remove(&self, id: &str) {
        self.tokens.write().unwrap_or_else(|p| p.into_inner()).remove(id);
    }

    /// Keeps the cache equal to the stored tokens until `stop`: lists them, then follows the
    /// watch; if the watch falls behind the window it lists again (level-triggered).
    pub async fn follow(self, reader: KvReader, stop: CancellationToken) {
        let prefix = keys::TOKENS.as_bytes().to_vec();
        loop {
            let listed = match reader.range(prefix.clone(), true, 0).await {
                Ok(listed) => listed,
                Err(e) => {
                    tracing::warn!(error = %e, "listing tokens failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            let records = listed.kvs.iter().filter_map(|kv| serde_json::from_slice::<TokenRecord>(&kv.value).ok());
            self.replace_all(records.collect());
            let mut watcher = match reader.watch(listed.revision + 1, prefix.clone()) {
                Ok(watcher) => watcher,
                Err(_) => continue,
            };
            loop {
                let events = tokio::select! {
                    _ = stop.cancelled() => return,
                    events = watcher.next() => events,
                };
                match events {
                    Ok(events) => {
                        for event in events {
                            let id = String::from_utf8_lossy(&event.kv.key[prefix.len()..]).into_owned();
                            match event.kind {
                                EventKind::Put => match serde_json::from_slice::<TokenRecord>(&event.kv.value) {
                                    Ok(record) => self.upsert(record),
                                    Err(e) => tracing::warn!(token = %id, error = %e, "unreadable token record"),
                                },
                                EventKind::Delete => self.remove(&id),
                            }
                        }
                    }
                    Err(StoreError::Compacted { .. }) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "token watch ended; listing again");
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_read_in_any_case() {
        for header in ["Bearer xene_1_a", "bearer xene_1_a", "BEARER  xene_1_a ", "xene_1_a"] {
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert("authorization", header.parse().expect("ascii"));
            assert_eq!(bearer(&metadata).expect("a token"), "xene_1_a", "{header:?}");
        }
    }

    #[test]
    fn a_cached_token_is_admitted_only_with_its_own_secret_and_a_role_that_allows_the_call() {
        let cache = TokenCache::default();
        let token = mint(Role::Viewer, "reader", 1);
        cache.upsert(token.record.clone());
        let caller = cache.check(&token.text, Role::Viewer).expect("its own secret");
        assert_eq!((caller.token_id.as_str(), caller.role), (token.record.id.as_str(), Role::Viewer));
        let (prefix, secret) = token.text.rsplit_once('_').expect("xene_<id>_<secret>");
        let mut other = secret.to_string();
        let last = if other.ends_with('a') { "b" } else { "a" };
        other.replace_range(other.len() - 1.., last);
        let wrong = format!("{prefix}_{other}");
        assert!(matches!(cache.check(&wrong, Role::Viewer), Err(ServerError::Unauthenticated(_))), "one character off");
        assert!(matches!(cache.check(&format!("{prefix}_"), Role::Viewer), Err(ServerError::Unauthenticated(_))));
        assert!(matches!(cache.check(&token.text, Role::Admin), Err(ServerError::PermissionDenied(_))));
    }

    #[test]
    fn an_unknown_id_is_remembered_for_a_while_and_forgotten_when_its_token_arrives() {
        let cache = TokenCache::default();
        let start = Instant::now();
        assert!(!cache.missed_lately("abc", start));
        cache.remember_miss("abc", start);
        assert!(cache.missed_lately("abc", start + MISS_TTL / 2));
        assert!(!cache.missed_lately("abc", start + MISS_TTL), "looked up again after the TTL");
        assert!(!cache.missed_lately("abd", start), "only that ID");

        // A token that the watch brings is no longer refused as missing.
        let token = mint(Role::Viewer, "late", 1);
        cache.remember_miss(&token.record.id, start);
        cache.upsert(token.record.clone());
        assert!(!cache.missed_lately(&token.record.id, start));
        assert!(cache.check(&token.text, Role::Viewer).is_ok());

        // Bounded: a flood of IDs keeps at most MISSES_MAX, the expired ones dropped first.
        for i in 0..MISSES_MAX {
            cache.remember_miss(&format!("{i:x}"), start);
        }
        let later = start + MISS_TTL;
        cache.remember_miss("fresh", later);
        let misses = cache.misses.lock().expect("lock");
        assert_eq!(misses.len(), 1, "every expired ID went");
        drop(misses);
        for i in 0..MISSES_MAX + 10 {
            cache.remember_miss(&format!("{i:x}"), later);
        }
        assert!(cache.misses.lock().expect("lock").len() <= MISSES_MAX);
    }

    #[test]
    fn minted_tokens_check_and_wrong_ones_do_not() {
        let cache = TokenCache::default();
        let admin = mint(Role::Admin, "first", 1);
        let viewer = mint(Role::Viewer, "ro", 1);
        cache.replace_all(vec![admin.record.clone(), viewer.record.clone()]);
        assert_eq!(cache.check(&admin.text, Role::Admin).expect("admin").role, Role::Admin);
        assert!(cache.check(&admin.text, Role::Viewer).is_ok(), "admin may read");
        assert!(cache.check(&viewer.text, Role::Viewer).is_ok());
        assert!(matches!(cache.check(&viewer.text, Role::Admin), Err(ServerError::PermissionDenied(_))));
        let mut wrong = admin.text.clone();
        wrong.pop();
        wrong.push('x');
        for bad in [wrong.as_str(), "", "xene_", "xene_nope_nope", "Bearer", "xene_abc"] {
            assert!(matches!(cache.check(bad, Role::Viewer), Err(ServerError::Unauthenticated(_))), "{bad:?}");
        }
        assert!(!Role::Agent.allows(Role::Viewer));
        assert!(!Role::Viewer.allows(Role::Agent));
        assert!(!Role::Join.allows(Role::Agent) && !Role::Join.allows(Role::Viewer));

        let mut expired = mint(Role::Viewer, "old", 1);
        expired.record.expires_ms = Some(5);
        let mut revoked = mint(Role::Viewer, "gone", 1);
        revoked.record.revoked = true;
        cache.replace_all(vec![expired.record.clone(), revoked.record.clone()]);
        let error = cache.check(&expired.text, Role::Viewer).expect_err("expired");
        assert!(error.to_string().contains("expired"), "{error}");
        let error = cache.check(&revoked.text, Role::Viewer).expect_err("revoked");
        assert!(error.to_string().contains("revoked"), "{error}");
    }
}
